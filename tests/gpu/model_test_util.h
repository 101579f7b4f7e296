// Helpers of test_gpu_model.cpp (a header only so that file stays readable):
// synthetic checkpoints, the two CPU references A and B built from the very
// weights the GPU uploads, row-wise error metrics, greedy decoding and teacher
// forcing. Included by test_gpu_model.cpp alone (tests/gpu/*.cpp other than it
// form test_gpu, which must not need chatradio_model).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "model/cuda/llama_cuda.h"
#include "model/errors.h"
#include "model/gptq.h"
#include "model/llama.h"
#include "model/safetensors.h"
#include "model/synth.h"
#include "tests/gpu/gpu_test_util.h"

namespace chatradio::gpu_test {

using model::Backend;
using model::Batch;
using model::CpuLlama;
using model::CudaLlama;
using model::LlamaConfig;
using model::LlamaWeights;
using model::SeqSlice;

// ---- synthetic checkpoints --------------------------------------------------------------

inline LlamaConfig small_config(int hidden, int heads, int kv_heads, int inter, int layers, int vocab, bool tied) {
  LlamaConfig c;
  c.hidden_size = hidden;
  c.intermediate_size = inter;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.vocab_size = vocab;
  c.max_position_embeddings = 512;
  c.rms_norm_eps = 1e-5f;
  c.tie_word_embeddings = tied;
  return c;
}

// head_dim 32 (SIMT prefill), odd intermediate (688: down padded to 704) and vocab
// (997: lm_head padded to 1000), tied embeddings.
LlamaConfig config_hd32() { return small_config(256, 8, 2, 688, 4, 997, true); }
// head_dim 128 (tensor-core prefill), intermediate 1376 (device groups of 32).
LlamaConfig config_hd128() { return small_config(512, 4, 2, 1376, 3, 2048, false); }

// Writes config.json and model.safetensors (float32) of random weights with unit
// gain (linear std 1/sqrt(in)) so activations and logits are O(1), not vanishing.
inline void write_model(const std::string& dir, const LlamaConfig& c, uint32_t seed) {
  std::filesystem::create_directories(dir);
  std::mt19937 g(seed);
  std::vector<std::pair<std::string, std::vector<int64_t>>> specs;
  const int d = c.hidden_size, kv = c.kv_dim(), ff = c.intermediate_size;
  specs.push_back({"model.embed_tokens.weight", {c.vocab_size, d}});
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    specs.push_back({p + "input_layernorm.weight", {d}});
    specs.push_back({p + "self_attn.q_proj.weight", {d, d}});
    specs.push_back({p + "self_attn.k_proj.weight", {kv, d}});
    specs.push_back({p + "self_attn.v_proj.weight", {kv, d}});
    specs.push_back({p + "self_attn.o_proj.weight", {d, d}});
    specs.push_back({p + "post_attention_layernorm.weight", {d}});
    specs.push_back({p + "mlp.gate_proj.weight", {ff, d}});
    specs.push_back({p + "mlp.up_proj.weight", {ff, d}});
    specs.push_back({p + "mlp.down_proj.weight", {d, ff}});
  }
  specs.push_back({"model.norm.weight", {d}});
  if (!c.tie_word_embeddings) specs.push_back({"lm_head.weight", {c.vocab_size, d}});
  std::vector<std::vector<float>> data;  // [tensor][numel]
  for (const auto& [name, shape] : specs) {
    size_t n = 1;
    for (int64_t s : shape) n *= static_cast<size_t>(s);
    std::vector<float> v(n);
    if (shape.size() == 1) {  // norms around 1
      std::normal_distribution<float> dist(1.0f, 0.1f);
      for (float& x : v) x = dist(g);
    } else {
      const bool embed = name == "model.embed_tokens.weight";
      std::normal_distribution<float> dist(0.0f, embed ? 1.0f : 1.0f / std::sqrt(static_cast<float>(shape[1])));
      for (float& x : v) x = dist(g);
    }
    data.push_back(std::move(v));
  }
  std::vector<model::TensorToWrite> tensors;
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto* bytes = reinterpret_cast<const uint8_t*>(data[i].data());
    tensors.push_back({specs[i].first, model::DType::F32, specs[i].second,
                       std::span<const uint8_t>(bytes, data[i].size() * sizeof(float))});
  }
  model::write_safetensors(dir + "/model.safetensors", tensors);
  model::write_file_atomically(dir + "/config.json", model::llama_config_json(c, std::nullopt));
}

// A temporary directory removed at scope exit.
struct TempDir {
  std::string path;
  explicit TempDir(const std::string& tag) {
    path = (std::filesystem::temp_directory_path() /
            ("chatradio_gpu_model_" + tag + "_" + std::to_string(std::random_device{}())))
               .string();
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

// ---- references ---------------------------------------------------------------------------

// The float weight [out, in] an int4 Linear stands for, through the same
// conversion the GPU upload uses (so B checks the upload path too).
inline std::vector<float> dequantize(const model::Linear& l) {
  const int g = model::cuda_int4_group(l.q4.group_blocks * 32, l.in);
  const int n_dev = (l.out + 7) / 8 * 8, k_dev = (l.in + g - 1) / g * g;
  model::GptqTensors t = model::gptq_zeros(n_dev, k_dev, g);
  model::gptq_put_q4(t, 0, l.q4, "test");
  std::vector<float> full(static_cast<size_t>(n_dev) * k_dev);
  model::gptq_dequantize(full.data(), model::gptq_view_of(t));
  std::vector<float> w(static_cast<size_t>(l.out) * l.in);
  for (int o = 0; o < l.out; ++o) {
    std::copy_n(full.begin() + static_cast<size_t>(o) * k_dev, l.in, w.begin() + static_cast<size_t>(o) * l.in);
  }
  return w;
}

model::Linear float_linear(const model::Linear& l) { return model::Linear{l.out, l.in, dequantize(l), {}}; }

inline LlamaWeights dequantized_weights(const LlamaWeights& q) {
  LlamaWeights f;
  f.embed_f16 = q.embed_f16;
  f.final_norm = q.final_norm;
  f.lm_head = float_linear(q.lm_head);
  for (const model::LayerWeights& L : q.layers) {
    model::LayerWeights F;
    F.attn_norm = L.attn_norm;
    F.ffn_norm = L.ffn_norm;
    F.q = float_linear(L.q);
    F.k = float_linear(L.k);
    F.v = float_linear(L.v);
    F.o = float_linear(L.o);
    F.gate = float_linear(L.gate);
    F.up = float_linear(L.up);
    F.down = float_linear(L.down);
    f.layers.push_back(std::move(F));
  }
  return f;
}

// The three backends of one model directory, all on the same int4 weights.
struct Trio {
  LlamaConfig cfg;
  std::unique_ptr<CpuLlama> cpu_int4;   // reference A
  std::unique_ptr<CpuLlama> cpu_exact;  // reference B
  std::unique_ptr<CudaLlama> gpu;       // null in host-only use
};

inline constexpr int kBlocks = 512, kBlockSize = 16;

inline Trio make_trio(const std::string& dir, bool with_gpu) {
  Trio t;
  t.cfg = model::load_llama_config(dir);
  const model::LoadOptions load{model::WeightFormat::kInt4, 128};
  t.cpu_int4 = CpuLlama::load(dir, {kBlocks, kBlockSize, 2}, load);
  t.cpu_exact = std::make_unique<CpuLlama>(t.cfg, dequantized_weights(t.cpu_int4->weights()),
                                           model::CpuBackendOptions{kBlocks, kBlockSize, 2});
  if (with_gpu) {
    model::CudaBackendOptions o;
    o.n_kv_blocks = kBlocks;
    o.kv_block_size = kBlockSize;
    o.max_tokens = 512;
    o.max_seqs = 64;
    t.gpu = std::make_unique<CudaLlama>(t.cfg, t.cpu_int4->weights(), o);  // a copy: A keeps its weights
  }
  return t;
}

inline std::vector<float> run(Backend& b, const Batch& batch) {
  std::vector<float> logits(static_cast<size_t>(batch.n_logit_rows()) * b.config().vocab_size);
  b.forward(logits, batch);
  return logits;
}

inline std::vector<int32_t> some_tokens(int n, int salt, int vocab) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = 3 + (i * 37 + salt * 101) % (vocab - 3);
  t[0] = 1;
  return t;
}

inline std::vector<int32_t> blocks_from(int first, int count) {
  std::vector<int32_t> b(count);
  std::iota(b.begin(), b.end(), first);
  return b;
}

// Row-wise metrics of logits [rows, vocab]: the worst NMSE and the worst
// max-abs relative to that row's largest reference logit.
struct RowErrors {
  double nmse = 0.0, rel_max = 0.0;
  size_t nonfinite = 0;
};
inline RowErrors row_errors(const std::vector<float>& out, const std::vector<float>& ref, int vocab) {
  RowErrors e;
  if (out.size() != ref.size()) {
    e.nonfinite = 1;
    return e;
  }
  for (size_t r = 0; r * vocab < ref.size(); ++r) {
    const std::vector<float> o(out.begin() + r * vocab, out.begin() + (r + 1) * vocab);
    const std::vector<float> f(ref.begin() + r * vocab, ref.begin() + (r + 1) * vocab);
    const ErrorStats s = compare(o, f);
    e.nmse = std::max(e.nmse, s.nmse);
    e.rel_max = std::max(e.rel_max, s.ref_max > 0 ? s.max_abs / s.ref_max : s.max_abs);
    e.nonfinite += s.nonfinite;
  }
  return e;
}

// A prompt prefilled with all logits, then `steps` greedy decode steps of
// reference `ref`'s tokens (teacher forcing: every backend sees the same ids).
inline std::vector<std::vector<float>> scripted_logits(Backend& b, Backend& ref, int prompt_len, int steps) {
  const int vocab = b.config().vocab_size;
  std::vector<int32_t> toks = some_tokens(prompt_len, 7, vocab);
  std::vector<std::vector<float>> out;
  Batch batch{{SeqSlice{toks, 0, blocks_from(0, 8), true}}};
  out.push_back(run(b, batch));
  std::vector<float> ref_logits = run(ref, batch);
  for (int s = 0; s < steps; ++s) {
    const auto row = ref_logits.end() - vocab;
    const int32_t next = static_cast<int32_t>(std::max_element(row, ref_logits.end()) - row);
    batch.seqs[0].start_pos += static_cast<int32_t>(batch.seqs[0].tokens.size());
    batch.seqs[0].tokens = {std::max(next, 3)};
    batch.seqs[0].all_logits = false;
    out.push_back(run(b, batch));
    ref_logits = run(ref, batch);
  }
  return out;
}

// Top-1 id and the gap to the runner-up of one logits row.
struct Top2 {
  int32_t id = 0;
  float gap = 0.0f, top = 0.0f;
};
inline Top2 top2(const float* row, int vocab) {
  Top2 t;
  float best = -INFINITY, second = -INFINITY;
  for (int i = 0; i < vocab; ++i) {
    if (row[i] > best) {
      second = best;
      best = row[i];
      t.id = i;
    } else if (row[i] > second) {
      second = row[i];
    }
  }
  t.gap = best - second;
  t.top = std::fabs(best);
  return t;
}

// Log-probability of `id` under one logits row (log-softmax in double).
inline double logprob(const float* row, int vocab, int id) {
  const double mx = *std::max_element(row, row + vocab);
  double sum = 0.0;
  for (int i = 0; i < vocab; ++i) sum += std::exp(row[i] - mx);
  return row[id] - mx - std::log(sum);
}

// Greedy ids of `b` from BOS on a single sequence, with each step's top-2.
inline std::vector<int32_t> greedy_ids(Backend& b, int steps, std::vector<Top2>* info) {
  const int vocab = b.config().vocab_size;
  std::vector<int32_t> ids{b.config().bos_token_id};
  Batch batch{{SeqSlice{ids, 0, blocks_from(0, 16), false}}};
  for (int i = 0; i < steps; ++i) {
    const std::vector<float> l = run(b, batch);
    const Top2 tt = top2(l.data(), vocab);
    if (info) info->push_back(tt);
    ids.push_back(tt.id);
    batch.seqs[0].start_pos += static_cast<int32_t>(batch.seqs[0].tokens.size());
    batch.seqs[0].tokens = {tt.id};
  }
  return ids;
}

// `b` against reference `ref`, both fed `ids` (teacher forcing): argmax
// disagreements (and how many are near-ties of ref: a top-2 gap below
// rel_tie_gap of the top logit), the worst row errors, and
// the worst difference in the log-probability of the next id.
struct Forced {
  int mismatches = 0, near_ties = 0;
  RowErrors worst;
  double logprob_diff = 0.0;
};
inline Forced teacher_forced(Backend& b, Backend& ref, const std::vector<int32_t>& ids, int vocab, double rel_tie_gap) {
  Forced f;
  Batch batch{{SeqSlice{{ids[0]}, 0, blocks_from(0, 16), false}}};
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    const std::vector<float> o = run(b, batch), r = run(ref, batch);
    const RowErrors e = row_errors(o, r, vocab);
    f.worst.nmse = std::max(f.worst.nmse, e.nmse);
    f.worst.rel_max = std::max(f.worst.rel_max, e.rel_max);
    f.worst.nonfinite += e.nonfinite;
    const Top2 to = top2(o.data(), vocab), tr = top2(r.data(), vocab);
    if (to.id != tr.id) {
      ++f.mismatches;
      f.near_ties += tr.gap < rel_tie_gap * tr.top;
    }
    f.logprob_diff =
        std::max(f.logprob_diff, std::fabs(logprob(o.data(), vocab, ids[i + 1]) - logprob(r.data(), vocab, ids[i + 1])));
    batch.seqs[0].start_pos += 1;
    batch.seqs[0].tokens = {ids[i + 1]};
  }
  return f;
}

}  // namespace chatradio::gpu_test
