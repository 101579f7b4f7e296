// A small "--name value" / "--flag" parser shared by the CLI subcommands, so
// every command reports bad usage the same way (UsageError -> exit code 2).
#pragma once

#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "model/kv_cache.h"

namespace chatradio::cli {

class UsageError : public std::runtime_error {
 public:
  explicit UsageError(const std::string& what) : std::runtime_error(what) {}
};

class Args {
 public:
  // `valued` options take a value, `flags` do not; anything else is an error.
  Args(int argc, char** argv, const std::set<std::string>& valued, const std::set<std::string>& flags);

  bool has(const std::string& name) const { return values_.count(name) > 0; }
  std::string str(const std::string& name) const;  // throws UsageError when missing
  std::string str(const std::string& name, const std::string& fallback) const;
  // Every value of an option given more than once, in command-line order
  // (str() returns the last); empty when absent.
  std::vector<std::string> all(const std::string& name) const;
  long long integer(const std::string& name, long long fallback, long long lo, long long hi) const;
  double number(const std::string& name, double fallback) const;

 private:
  std::map<std::string, std::vector<std::string>> values_;
};

// --kv-dtype f16|f32 (default f16), shared by the commands that run a model.
model::KvDtype kv_dtype_arg(const Args& args);

}  // namespace chatradio::cli
