// Helpers shared by the checkpoint tests: temporary directories, raw file
// crafting (for hand-made broken safetensors) and error-message assertions.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "model/errors.h"
#include "tests/common/temp_dir.h"

namespace chatradio::testing {

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

// The bytes of a safetensors file with the given header text and data
// section; `claimed_len` overrides the length prefix to craft lies.
inline std::string st_bytes(const std::string& header, const std::string& data,
                            std::optional<uint64_t> claimed_len = std::nullopt) {
  return le64(claimed_len.value_or(header.size())) + header + data;
}

template <class T>
std::vector<uint8_t> as_bytes(const std::vector<T>& v) {
  std::vector<uint8_t> out(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(out.data(), v.data(), out.size());
  return out;
}

// Runs f, expects a ModelError, and returns its message (empty on failure).
inline std::string model_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const chatradio::model::ModelError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected ModelError, got another exception: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected ModelError, nothing was thrown";
  return {};
}

// Asserts the ModelError message names every one of `needles`.
#define EXPECT_MODEL_ERROR(stmt, ...)                                                   \
  do {                                                                                  \
    std::string msg_ = ::chatradio::testing::model_error([&] { stmt; });                \
    for (const std::string& needle_ : std::vector<std::string>{__VA_ARGS__})            \
      EXPECT_NE(msg_.find(needle_), std::string::npos)                                  \
          << "error message lacks \"" << needle_ << "\"\n  message: " << msg_;          \
  } while (0)

}  // namespace chatradio::testing
