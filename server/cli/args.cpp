#include "server/cli/args.h"

#include <cerrno>
#include <cstdlib>

namespace chatradio::cli {

Args::Args(int argc, char** argv, const std::set<std::string>& valued,
           const std::set<std::string>& flags) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--", 0) != 0) throw UsageError("unexpected argument '" + a + "'");
    const std::string name = a.substr(2);
    if (flags.count(name)) {
      values_[name].push_back("");
    } else if (valued.count(name)) {
      if (i + 1 >= argc) throw UsageError("option --" + name + " needs a value");
      values_[name].push_back(argv[++i]);
    } else {
      throw UsageError("unknown option --" + name);
    }
  }
}

std::string Args::str(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) throw UsageError("missing required option --" + name);
  return it->second.back();
}

std::string Args::str(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second.back();
}

std::vector<std::string> Args::all(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

long long Args::integer(const std::string& name, long long fallback, long long lo, long long hi) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  const std::string& value = it->second.back();
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || errno == ERANGE || v < lo || v > hi) {
    throw UsageError("--" + name + " must be an integer in [" + std::to_string(lo) + ", " +
                     std::to_string(hi) + "], got '" + value + "'");
  }
  return v;
}

double Args::number(const std::string& name, double fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  const std::string& value = it->second.back();
  char* end = nullptr;
  const double v = std::strtod(value.c_str(), &end);
  if (value.empty() || *end != '\0') {
    throw UsageError("--" + name + " must be a number, got '" + value + "'");
  }
  return v;
}

model::KvDtype kv_dtype_arg(const Args& args) {
  const std::string v = args.str("kv-dtype", "f16");
  if (const auto d = model::parse_kv_dtype(v)) return *d;
  throw UsageError("--kv-dtype must be f16 or f32, got '" + v + "'");
}

}  // namespace chatradio::cli
