// Teacher-forced log-probabilities: the math under `chatradio perplexity` and
// the Score RPC.
#pragma once

#include <cstdint>
#include <span>

#include "model/backend.h"

namespace chatradio::model {

// log softmax(logits)[token], computed in double with the max subtracted.
double token_logprob(std::span<const float> logits, int32_t token);

struct PerplexityResult {
  double nll_sum = 0.0;   // -Σ log p(token | everything before it in its window)
  int64_t n_scored = 0;   // tokens scored
  double perplexity() const;
};

// Scores `tokens` (text ids without BOS) in windows: each window is BOS plus
// up to (window - 1) tokens, all of which are scored, so long texts are covered
// without any token being dropped. window <= the model's positions and the KV
// pool (blocks 0.. of the backend are used). Prefill runs in chunks of at most
// `chunk` tokens to bound scratch memory.
PerplexityResult perplexity(Backend& backend, std::span<const int32_t> tokens, int window, int chunk = 256);

}  // namespace chatradio::model
