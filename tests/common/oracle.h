// Running a python oracle script (Debian's /usr/bin/python3 with the reference
// library) and reading what it writes: the conformance tests of tests/text and
// tests/tokenizer compare our code against such scripts.
//
// A script is called as `python3 <script> --shared <shared/> --out <dir> ...`
// and exits 3 or 4 (saying why on stderr) when its library or a test asset is
// missing; the test then skips. Its outputs use "<len>\n<bytes>\n" blobs.
#pragma once

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <istream>
#include <string>

#include "tests/common/shared.h"
#include "tests/common/temp_dir.h"

namespace chatradio::testing {

inline constexpr const char* kOraclePython = "/usr/bin/python3";

// A file the oracle wrote holding one line (a path): its text without the
// trailing newlines.
inline std::string slurp_line(const std::string& path) {
  std::string s = slurp(path);
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

// Reads "<n>\n".
inline size_t read_count(std::istream& in) {
  size_t n = 0;
  in >> n;
  in.get();
  return n;
}

// Reads "<len>\n<bytes>\n".
inline std::string read_blob(std::istream& in) {
  const size_t n = read_count(in);
  std::string s(n, '\0');
  in.read(s.data(), static_cast<std::streamsize>(n));
  in.get();
  return s;
}

// How a run of an oracle script went: both empty when it ran.
struct OracleRun {
  std::string skip;   // why the oracle is unavailable
  std::string error;  // the oracle itself failed
  bool ok() const { return skip.empty() && error.empty(); }
};

// Runs `python3 <source dir>/<script> --shared <shared dir> --out <out_dir> <args>`,
// the script's stderr going to <out_dir>/stderr.txt. `install_hint` follows
// "<python> not found" in the skip reason when there is no python3.
inline OracleRun run_oracle_script(const std::string& script, const std::string& out_dir, const std::string& args,
                                   const std::string& install_hint) {
  OracleRun run;
  if (!std::filesystem::exists(kOraclePython)) {
    run.skip = std::string(kOraclePython) + " not found" + install_hint;
    return run;
  }
  const std::string script_path = std::string(CHATRADIO_SOURCE_DIR) + "/" + script;
  const std::string err = out_dir + "/stderr.txt";
  const std::string cmd = std::string(kOraclePython) + " '" + script_path + "' --shared '" + CHATRADIO_SHARED_DIR +
                          "' --out '" + out_dir + "' " + args + " 2>'" + err + "'";
  const int status = std::system(cmd.c_str());
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (code == 3 || code == 4) {
    run.skip = slurp(err);  // the python library or a test asset missing; the script says which
  } else if (code != 0) {
    run.error = std::filesystem::path(script).filename().string() + " exited with " + std::to_string(code) + ": " +
                slurp(err);
  }
  return run;
}

}  // namespace chatradio::testing
