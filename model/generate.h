// Generation of one sequence alone on a backend: the CLI's path, and the
// reference the engine's batched outputs are compared against.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "model/backend.h"
#include "model/sampler.h"

namespace chatradio::model {

enum class FinishReason { kEos, kLength };

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids, EOS excluded
  FinishReason finish = FinishReason::kLength;
};

// Prefills `prompt` (must be non-empty; usually BOS first) and samples up to
// max_new_tokens, stopping at the model's EOS. The sequence uses KV blocks
// 0, 1, 2, ... of the backend's pool. Throws ModelError when the prompt plus
// max_new_tokens does not fit the model's positions or the KV pool (never a
// silent truncation). on_token, if set, sees each token as it is sampled.
GenerateResult generate_one(Backend& backend, std::span<const int32_t> prompt, int max_new_tokens,
                            const SamplingParams& sampling,
                            const std::function<void(int32_t)>& on_token = {});

}  // namespace chatradio::model
