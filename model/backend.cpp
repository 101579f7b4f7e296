#include "model/backend.h"

#include <string>

#include "model/errors.h"

namespace chatradio::model {

void validate_batch(const Batch& batch, const LlamaConfig& cfg, int n_kv_blocks, int kv_block_size,
                    size_t logits_size) {
  if (batch.seqs.empty()) throw ModelError("batch has no sequences");
  for (size_t i = 0; i < batch.seqs.size(); ++i) {
    const SeqSlice& s = batch.seqs[i];
    const std::string where = "batch sequence " + std::to_string(i) + ": ";
    if (s.tokens.empty()) throw ModelError(where + "no tokens to compute");
    if (s.start_pos < 0) throw ModelError(where + "negative start position");
    const int64_t end = static_cast<int64_t>(s.start_pos) + static_cast<int64_t>(s.tokens.size());
    if (end > cfg.max_position_embeddings) {
      throw ModelError(where + "position " + std::to_string(end - 1) + " beyond the model's " +
                       std::to_string(cfg.max_position_embeddings) + " positions");
    }
    const int64_t need = (end + kv_block_size - 1) / kv_block_size;
    if (static_cast<int64_t>(s.blocks.size()) < need) {
      throw ModelError(where + "needs " + std::to_string(need) + " KV blocks, has " +
                       std::to_string(s.blocks.size()));
    }
    for (int32_t b : s.blocks) {
      if (b < 0 || b >= n_kv_blocks) throw ModelError(where + "KV block id out of range");
    }
    for (int32_t t : s.tokens) {
      if (t < 0 || t >= cfg.vocab_size) {
        throw ModelError(where + "token id " + std::to_string(t) + " outside the vocabulary");
      }
    }
  }
  const size_t rows = static_cast<size_t>(batch.n_logit_rows());
  if (logits_size < rows * cfg.vocab_size) throw ModelError("logits buffer too small for the batch");
}

}  // namespace chatradio::model
