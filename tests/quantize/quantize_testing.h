// Helpers shared by the tests in tests/quantize.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "model/llama.h"
#include "model/safetensors.h"
#include "tests/checkpoint/helpers.h"
#include "tests/common/shared.h"

namespace chatradio::qtest {

using testing::read_file;
using testing::TempDir;

// Logits[len(tokens), vocab] of one sequence prefilled in one step.
inline std::vector<float> prompt_logits(model::CpuLlama& m, const std::vector<int32_t>& tokens) {
  model::Batch b;
  model::SeqSlice s;
  s.tokens = tokens;
  s.all_logits = true;
  for (int i = 0; i * m.kv_block_size() < static_cast<int>(tokens.size()); ++i) s.blocks.push_back(i);
  b.seqs.push_back(s);
  std::vector<float> logits(tokens.size() * static_cast<size_t>(m.config().vocab_size));
  m.forward(logits, b);
  return logits;
}

// Every tensor of a checkpoint directory: name -> (dtype, shape, bytes).
struct StoredTensor {
  model::DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
  bool operator==(const StoredTensor&) const = default;
};
inline std::map<std::string, StoredTensor> all_tensors(const std::string& dir) {
  const model::Checkpoint ck(dir);
  std::map<std::string, StoredTensor> out;
  for (const std::string& n : ck.names()) {
    const model::TensorView& v = ck.get(n);
    out[n] = {v.dtype, v.shape, std::vector<uint8_t>(v.data, v.data + v.nbytes)};
  }
  return out;
}

// Exit status of a shell command (std::system).
inline int exit_code(const std::string& cmd) {
  const int st = std::system(cmd.c_str());
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

inline std::string chatradio_binary() { return std::string(CHATRADIO_BINARY_DIR) + "/server/chatradio"; }

}  // namespace chatradio::qtest
