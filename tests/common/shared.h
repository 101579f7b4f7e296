// Locating and reading the test assets in ../shared (see shared/README.md).
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace chatradio::testing {

inline std::string shared_path(const std::string& rel) {
  return std::string(CHATRADIO_SHARED_DIR) + "/" + rel;
}

// The whole contents of a file (empty when it cannot be read).
inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Skips the calling test (with the reason) when the asset is missing.
#define CHATRADIO_REQUIRE_SHARED(rel)                                                      \
  do {                                                                                     \
    if (!std::filesystem::exists(::chatradio::testing::shared_path(rel))) {               \
      GTEST_SKIP() << "test asset ../shared/" << (rel) << " not present; see shared/README.md"; \
    }                                                                                      \
  } while (0)

}  // namespace chatradio::testing
