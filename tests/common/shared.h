// Locating the test assets in ../shared (see shared/README.md).
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

namespace chatradio::testing {

inline std::string shared_path(const std::string& rel) {
  return std::string(CHATRADIO_SHARED_DIR) + "/" + rel;
}

// Skips the calling test (with the reason) when the asset is missing.
#define CHATRADIO_REQUIRE_SHARED(rel)                                                      \
  do {                                                                                     \
    if (!std::filesystem::exists(::chatradio::testing::shared_path(rel))) {               \
      GTEST_SKIP() << "test asset ../shared/" << (rel) << " not present; see shared/README.md"; \
    }                                                                                      \
  } while (0)

}  // namespace chatradio::testing
