// What a backend executes in one step: a plain list of sequence slices with
// their KV block ids. The scheduler produces it (without touching tensors), a
// backend consumes it; this header is the whole contract between them.
#pragma once

#include <cstdint>
#include <vector>

namespace chatradio::model {

// One sequence's work in a step: compute `tokens` at positions
// [start_pos, start_pos + tokens.size()), with everything before start_pos
// already in the KV cache blocks listed first in `blocks`.
struct SeqSlice {
  std::vector<int32_t> tokens;  // new token ids, >= 1
  int32_t start_pos = 0;        // tokens already cached for this sequence
  std::vector<int32_t> blocks;  // KV block ids covering [0, start_pos + tokens.size())
  // Logits for the last new token only (generation), or for every new token
  // (teacher-forced scoring).
  bool all_logits = false;
};

struct Batch {
  std::vector<SeqSlice> seqs;

  int n_tokens() const {
    int n = 0;
    for (const auto& s : seqs) n += static_cast<int>(s.tokens.size());
    return n;
  }
  // Rows of logits the step returns, in sequence order.
  int n_logit_rows() const {
    int n = 0;
    for (const auto& s : seqs) n += s.all_logits ? static_cast<int>(s.tokens.size()) : 1;
    return n;
  }
};

}  // namespace chatradio::model
