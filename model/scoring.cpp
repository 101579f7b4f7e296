#include "model/scoring.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "model/errors.h"

namespace chatradio::model {

double token_logprob(std::span<const float> logits, int32_t token) {
  const float mx = *std::max_element(logits.begin(), logits.end());
  double sum = 0.0;
  for (float l : logits) sum += std::exp(static_cast<double>(l) - mx);
  return static_cast<double>(logits[token]) - mx - std::log(sum);
}

double PerplexityResult::perplexity() const {
  return n_scored ? std::exp(nll_sum / static_cast<double>(n_scored)) : 0.0;
}

PerplexityResult perplexity(Backend& backend, std::span<const int32_t> tokens, int window, int chunk) {
  const LlamaConfig& cfg = backend.config();
  const int64_t pool = static_cast<int64_t>(backend.n_kv_blocks()) * backend.kv_block_size();
  if (window < 2 || window > cfg.max_position_embeddings || window > pool) {
    throw ModelError("perplexity window must be in [2, min(model positions " +
                     std::to_string(cfg.max_position_embeddings) + ", KV pool " + std::to_string(pool) +
                     ")], got " + std::to_string(window));
  }
  if (chunk < 1) throw ModelError("perplexity chunk must be >= 1");
  const int vocab = cfg.vocab_size;
  PerplexityResult r;
  std::vector<float> logits;  // [chunk, vocab]
  std::vector<int32_t> seq;   // one window: BOS + text tokens
  for (size_t begin = 0; begin < tokens.size(); begin += window - 1) {
    const size_t end = std::min(tokens.size(), begin + window - 1);
    seq.assign(1, cfg.bos_token_id);
    seq.insert(seq.end(), tokens.begin() + begin, tokens.begin() + end);
    Batch batch;
    batch.seqs.resize(1);
    SeqSlice& s = batch.seqs[0];
    s.all_logits = true;
    s.blocks.resize((seq.size() + backend.kv_block_size() - 1) / backend.kv_block_size());
    std::iota(s.blocks.begin(), s.blocks.end(), 0);
    // Row j of a chunk's logits predicts seq[start + j + 1]; the last row of
    // the window predicts nothing.
    for (size_t start = 0; start + 1 < seq.size(); start += chunk) {
      const size_t n = std::min<size_t>(chunk, seq.size() - 1 - start);
      s.tokens.assign(seq.begin() + start, seq.begin() + start + n);
      s.start_pos = static_cast<int32_t>(start);
      logits.resize(n * vocab);
      backend.forward(logits, batch);
      for (size_t j = 0; j < n; ++j) {
        r.nll_sum -= token_logprob(std::span<const float>(logits).subspan(j * vocab, vocab), seq[start + j + 1]);
        ++r.n_scored;
      }
    }
  }
  return r;
}

}  // namespace chatradio::model
