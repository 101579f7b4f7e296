#include "model/generate.h"

#include <numeric>
#include <string>

#include "model/errors.h"

namespace chatradio::model {

GenerateResult generate_one(Backend& backend, std::span<const int32_t> prompt, int max_new_tokens,
                            const SamplingParams& sampling,
                            const std::function<void(int32_t)>& on_token) {
  const LlamaConfig& cfg = backend.config();
  if (prompt.empty()) throw ModelError("generation needs at least one prompt token (e.g. BOS)");
  if (max_new_tokens < 0) throw ModelError("max_new_tokens must be >= 0");
  if (const std::string err = validate(sampling); !err.empty()) throw ModelError(err);
  // The last sampled token is never fed back, so the cache holds at most
  // prompt + max_new_tokens - 1 positions.
  const int64_t positions = static_cast<int64_t>(prompt.size()) + std::max(0, max_new_tokens - 1);
  if (positions > cfg.max_position_embeddings) {
    throw ModelError("prompt of " + std::to_string(prompt.size()) + " tokens plus " +
                     std::to_string(max_new_tokens) + " new tokens exceeds the model's context of " +
                     std::to_string(cfg.max_position_embeddings) + " positions");
  }
  const int64_t blocks_needed = (positions + backend.kv_block_size() - 1) / backend.kv_block_size();
  if (blocks_needed > backend.n_kv_blocks()) {
    throw ModelError("sequence needs " + std::to_string(blocks_needed) + " KV blocks; the pool has " +
                     std::to_string(backend.n_kv_blocks()));
  }

  GenerateResult result;
  if (max_new_tokens == 0) return result;
  Batch batch;
  batch.seqs.resize(1);
  SeqSlice& seq = batch.seqs[0];
  seq.blocks.resize(blocks_needed);
  std::iota(seq.blocks.begin(), seq.blocks.end(), 0);
  seq.tokens.assign(prompt.begin(), prompt.end());
  seq.start_pos = 0;

  std::vector<int32_t> history(prompt.begin(), prompt.end());
  std::vector<float> logits(cfg.vocab_size);  // [vocab]
  Sampler sampler(sampling);
  for (int i = 0; i < max_new_tokens; ++i) {
    backend.forward(logits, batch);
    const int32_t next = sampler.sample(logits, history);
    if (next == cfg.eos_token_id) {
      result.finish = FinishReason::kEos;
      return result;
    }
    result.tokens.push_back(next);
    history.push_back(next);
    if (on_token) on_token(next);
    seq.start_pos += static_cast<int32_t>(seq.tokens.size());
    seq.tokens.assign(1, next);
  }
  result.finish = FinishReason::kLength;
  return result;
}

}  // namespace chatradio::model
