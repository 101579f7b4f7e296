// Helpers for the libFuzzer targets in targets/ (see run.sh): the parsers
// under test read files, so each input is written to a scratch directory
// that lives for the process (one per fuzzer process, under TMPDIR); and
// targets that need real assets find ../shared from the source tree (the
// fuzzer runs in its build folder).
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace chatradio::fuzz {

// The process's scratch directory, created on first use.
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/chatradio-fuzz-XXXXXX";
    if (!::mkdtemp(pattern.data())) std::abort();
    return pattern;
  }();
  return dir;
}

// Writes bytes to scratch_dir()/name (replacing it) and returns the path.
inline std::string write_scratch(const std::string& name, const void* data, size_t size) {
  const std::string path = scratch_dir() + "/" + name;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  return path;
}

// `rel` under ../shared of the source tree this target was built from.
inline std::string shared_path(const std::string& rel) { return std::string(CHATRADIO_SOURCE_DIR) + "/../shared/" + rel; }

inline bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace chatradio::fuzz
