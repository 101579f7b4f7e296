// CudaLlama (model/cuda) against the CPU backend on the same int4 weights:
// stories260K greedy decoding, logits of synthetic models (head_dim 32 on the
// SIMT prefill, head_dim 128 on the tensor-core prefill), bitwise batch
// invariance of decoding and of chunked prefill, batch validation and KV block
// copies. Without a GPU every CudaModel test skips; the CudaLlamaHost tests
// (weight conversion, CPU reference calibration, the no-GPU error) run anywhere.
//
// Two CPU references, both from the very LlamaWeights the GPU uploads:
//  A. CpuLlama int4 (WeightFormat::kInt4): what the brief asks to match. Its
//     matmul quantizes activations to int8 per 32 inputs (kernels/cpu/q4.h),
//     the GPU keeps fp16 activations: the two differ by that rounding.
//  B. CpuLlama float on the dequantized int4 weights: the GPU's math up to fp16
//     storage of activations, weights and logits, hence a much tighter bound.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "model/cuda/llama_cuda.h"
#include "model/errors.h"
#include "model/gptq.h"
#include "model/llama.h"
#include "tests/gpu/model_test_util.h"

namespace chatradio::gpu_test {
namespace {

// ---- tolerances (docs/cuda.md, "The CUDA backend") ------------------------------------
// Calibrated on the host (no GPU yet): a host emulation of the GPU's fp16
// storage points (every activation, weight and norm rounded to fp16, float math
// in between; logits are fp32 since the lm_head writes fp32) differs from B by
// NMSE 1.5e-6..6.5e-6 and a max-abs of 0.07%..0.37% of the largest logit
// (synthetic models, stories260K prefill); A differs from B by NMSE
// 1.5e-4..6.5e-4 and 1%..3.3% (the worst of 200 stories260K decode steps
// included). The bounds leave ~3x (B) and ~4.5x (A) for the GPU's other
// accumulation orders and its fp16 P in attention.
// Per logits row: NMSE, and max-abs relative to the row's largest |reference|.
constexpr double kNmseExact = 2e-5;
constexpr double kRelMaxExact = 1e-2;
constexpr double kNmseCpuInt4 = 3e-3;
constexpr double kRelMaxCpuInt4 = 1e-1;
// Greedy ids may differ only where the reference's top two logits are this close
// (relative to the top logit): a near-tie that the int8 activations of A (or
// the fp16 ones of the GPU) can flip. On stories260K, A and B part at id 42
// (free-running) and, teacher-forced over 200 steps, disagree at 2 steps, both
// near-ties by this bound.
// (The GPU used to write fp16 logits, steps of 1/64 at |logit| 16..32, which
// alone flip gaps of that size: 2% was needed then.)
constexpr double kRelTieGap = 5e-3;
// The chosen token's log-probability, GPU vs A, over 200 teacher-forced
// stories260K steps (Score's figure): A vs B measure 0.124
// (CudaLlamaHost.CpuReferencesAgreeOnStoriesLogprobs prints it). Against B, the
// GPU differs only by fp16 storage: a third of that bound.
constexpr double kLogprobCpuInt4 = 0.3;

std::string shared_dir() { return CHATRADIO_SHARED_DIR; }

// ---- host-only tests ----------------------------------------------------------------------

TEST(CudaLlamaHost, DeviceGroupChoice) {
  EXPECT_EQ(model::cuda_int4_group(128, 4096), 128);
  EXPECT_EQ(model::cuda_int4_group(128, 11008), 128);
  EXPECT_EQ(model::cuda_int4_group(64, 64), 64);      // stories260K hidden: one CPU group of 64
  EXPECT_EQ(model::cuda_int4_group(128, 172), 64);    // stories260K down: padded to 192, not 256
  EXPECT_EQ(model::cuda_int4_group(128, 688), 64);    // 704
  EXPECT_EQ(model::cuda_int4_group(128, 1376), 32);   // 1376 = 43 · 32
  EXPECT_EQ(model::cuda_int4_group(4096, 4096), 128); // group_size -1
  EXPECT_EQ(model::cuda_int4_group(96, 192), 32);
}

// The upload's GPTQ tensors dequantize to exactly the CPU int4 weights; padding
// rows are zero, padding inputs dequantize to 0 (zero point <= 15), act-order is refused.
TEST(CudaLlamaHost, Q4ToGptqIsExact) {
  for (const auto& [n, k, group] : {std::tuple{20, 172, 128}, std::tuple{24, 256, 64}, std::tuple{13, 64, 128}}) {
    std::mt19937 g(static_cast<uint32_t>(n * 1000 + k));
    std::normal_distribution<float> dist(0.0f, 0.05f);
    std::vector<float> w(static_cast<size_t>(n) * k);
    for (float& x : w) x = dist(g);
    const model::GptqTensors src = model::gptq_quantize(w.data(), n, k, group, false);
    const kernels::cpu::Q4Matrix q4 = model::gptq_to_q4(model::gptq_view_of(src));
    std::vector<float> ref(w.size());
    model::gptq_dequantize(ref.data(), model::gptq_view_of(src));

    const int gd = model::cuda_int4_group(q4.group_blocks * 32, k);
    const int n8 = (n + 7) / 8 * 8, k_dev = (k + gd - 1) / gd * gd;
    model::GptqTensors dst = model::gptq_zeros(2 * n8, k_dev, gd);  // two copies stacked, as in a fused weight
    model::gptq_put_q4(dst, 0, q4, "a");
    model::gptq_put_q4(dst, n8, q4, "b");
    std::vector<float> got(static_cast<size_t>(2 * n8) * k_dev);
    model::gptq_dequantize(got.data(), model::gptq_view_of(dst));
    size_t bad = 0, pad_nonzero = 0;
    for (int copy = 0; copy < 2; ++copy) {
      for (int o = 0; o < n8; ++o) {
        for (int i = 0; i < k_dev; ++i) {
          const float v = got[static_cast<size_t>(copy * n8 + o) * k_dev + i];
          if (o < n && i < k) {
            bad += v != ref[static_cast<size_t>(o) * k + i];
          } else if (o >= n) {
            bad += v != 0.0f;  // padding rows: scale 0
          } else {
            pad_nonzero += v != 0.0f;  // padding inputs: 0 unless the zero point is 16
          }
        }
      }
    }
    EXPECT_EQ(bad, 0u) << "n " << n << " k " << k << " group " << group;
    // gptq_quantize's zero points are 1..15 (a range always includes 0), never 16.
    EXPECT_EQ(pad_nonzero, 0u) << "n " << n << " k " << k;
  }
  // Act-order (permuted inputs) cannot be expressed in the device layout.
  std::vector<float> w(static_cast<size_t>(8) * 256, 0.01f);
  model::GptqTensors src = model::gptq_quantize(w.data(), 8, 256, 128, false);
  src.g_idx.resize(256);
  for (int i = 0; i < 256; ++i) src.g_idx[i] = i % 2;
  const kernels::cpu::Q4Matrix q4 = model::gptq_to_q4(model::gptq_view_of(src));
  ASSERT_FALSE(q4.perm.empty());
  model::GptqTensors dst = model::gptq_zeros(8, 256, 128);
  bool threw = false;
  try {
    model::gptq_put_q4(dst, 0, q4, "act_order");
  } catch (const model::ModelError& e) {
    threw = std::string(e.what()).find("act-order") != std::string::npos;
  }
  EXPECT_TRUE(threw);
}

// Calibrates the tolerance against reference A: the two CPU references alone
// must already agree well inside it (else the GPU bound would be vacuous or flaky).
TEST(CudaLlamaHost, CpuReferencesAgree) {
  for (const LlamaConfig& cfg : {config_hd32(), config_hd128()}) {
    TempDir dir("calib");
    write_model(dir.path, cfg, 11);
    Trio t = make_trio(dir.path, false);
    const auto a = scripted_logits(*t.cpu_int4, *t.cpu_int4, 37, 4);
    const auto b = scripted_logits(*t.cpu_exact, *t.cpu_int4, 37, 4);
    for (size_t s = 0; s < a.size(); ++s) {
      const RowErrors e = row_errors(a[s], b[s], cfg.vocab_size);
      std::printf("A vs B, hidden %d, step %zu: nmse %.3g, rel max %.3g\n", cfg.hidden_size, s, e.nmse, e.rel_max);
      EXPECT_LT(e.nmse, kNmseCpuInt4 / 4);
      EXPECT_LT(e.rel_max, kRelMaxCpuInt4 / 2);
    }
  }
}

// The stories260K figures the GPU test is held to, measured between the two CPU
// references: A's and B's teacher-forced argmax may differ only at near-ties,
// and the chosen token's log-probability differs by well under kLogprobCpuInt4.
TEST(CudaLlamaHost, CpuReferencesAgreeOnStoriesLogprobs) {
  const std::string dir = shared_dir() + "/models/stories260K";
  if (!std::filesystem::exists(dir + "/model.safetensors")) GTEST_SKIP() << dir << " not present";
  Trio t = make_trio(dir, false);
  const std::vector<int32_t> a = greedy_ids(*t.cpu_int4, 200, nullptr);
  const std::vector<int32_t> b = greedy_ids(*t.cpu_exact, 200, nullptr);
  size_t same = 0;
  while (same < a.size() && a[same] == b[same]) ++same;
  const Forced f = teacher_forced(*t.cpu_exact, *t.cpu_int4, a, t.cfg.vocab_size, kRelTieGap);
  std::printf("stories260K A vs B: greedy equal for %zu of %zu ids; teacher-forced argmax differs at %d steps (%d "
              "near-ties), worst nmse %.3g rel %.3g, logprob %.3g\n",
              same, a.size(), f.mismatches, f.near_ties, f.worst.nmse, f.worst.rel_max, f.logprob_diff);
  EXPECT_EQ(f.mismatches, f.near_ties);
  EXPECT_LT(f.logprob_diff, kLogprobCpuInt4 / 2);
}

// The per-step arrays: an eager step carries just the blocks it touches; a
// graph step is padded to its size with inert rows and empty sequences, and its
// tables and max_ctx do not depend on the batch.
TEST(CudaLlamaHost, FlattenBatchPadsDecodeStepsForGraphs) {
  const model::CudaBatchLayout at = model::CudaBatchLayout::make(64, 64, 16);
  std::vector<int32_t> meta(at.tables + 16 * 10, -7);
  const Batch decode{{SeqSlice{{11}, 20, {4, 5}, false}, SeqSlice{{12}, 3, {9}, false}, SeqSlice{{13}, 0, {2}, true}}};
  const model::CudaStepShape e = model::flatten_batch(meta.data(), at, decode, 16, 10, 0);
  EXPECT_EQ(e.n_tokens, 3);
  EXPECT_EQ(e.n_seqs, 3);
  EXPECT_EQ(e.n_rows, 3);
  EXPECT_EQ(e.table_stride, 2);  // sequence 0 reaches position 20: 2 blocks of 16
  EXPECT_EQ(e.max_q_len, 1);
  EXPECT_EQ(e.max_ctx, 21);
  EXPECT_EQ(e.elems, at.tables + 3 * 2);
  EXPECT_EQ(meta[at.slots + 0], 5 * 16 + 4);
  EXPECT_EQ(meta[at.slots + 1], 9 * 16 + 3);
  EXPECT_EQ(meta[at.tables + 2], 9);
  EXPECT_EQ(meta[at.tables + 3], 0);

  std::fill(meta.begin(), meta.end(), -7);
  const model::CudaStepShape g = model::flatten_batch(meta.data(), at, decode, 16, 10, model::cuda_graph_batch(3, 16));
  EXPECT_EQ(g.n_seqs, 4);
  EXPECT_EQ(g.n_tokens, 4);
  EXPECT_EQ(g.n_rows, 4);
  EXPECT_EQ(g.table_stride, 10);
  EXPECT_EQ(g.max_ctx, 160);
  EXPECT_EQ(g.elems, at.tables + 4 * 10);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(meta[i], decode.seqs[i].tokens[0]);
    EXPECT_EQ(meta[at.q_start + i], i);
    EXPECT_EQ(meta[at.rows + i], i);
  }
  EXPECT_EQ(meta[at.ctx + 0], 21);
  EXPECT_EQ(meta[at.tables + 10 + 0], 9);  // row stride 10
  // The padding row: token 0 at position 0, no KV write, its own logit row; the
  // padding sequence: no new token, no context.
  EXPECT_EQ(meta[3], 0);
  EXPECT_EQ(meta[at.positions + 3], 0);
  EXPECT_EQ(meta[at.slots + 3], -1);
  EXPECT_EQ(meta[at.rows + 3], 3);
  EXPECT_EQ(meta[at.q_start + 3], 3);
  EXPECT_EQ(meta[at.q_start + 4], 3);
  EXPECT_EQ(meta[at.ctx + 3], 0);
  EXPECT_EQ(meta[at.tables + 30], 0);

  EXPECT_EQ(model::cuda_graph_batch(1, 64), 1);
  EXPECT_EQ(model::cuda_graph_batch(3, 64), 4);
  EXPECT_EQ(model::cuda_graph_batch(17, 64), 32);
  EXPECT_EQ(model::cuda_graph_batch(64, 64), 64);
  EXPECT_EQ(model::cuda_graph_batch(33, 48), 48);
  EXPECT_EQ(model::cuda_graph_batch(5, 6), 6);
}

TEST(CudaLlamaHost, NoGpuIsAModelError) {
  int n = 0;
  if (cudaGetDeviceCount(&n) == cudaSuccess && n > 0) GTEST_SKIP() << "a GPU is present";
  cudaGetLastError();
  bool threw = false;
  try {
    CudaLlama::synthetic(config_hd32(), {}, 1);
  } catch (const model::ModelError& e) {
    threw = std::string(e.what()).find("no CUDA GPU") != std::string::npos;
  }
  EXPECT_TRUE(threw);
}

// ---- GPU tests ------------------------------------------------------------------------------

class CudaModel : public GpuTest {};

TEST_F(CudaModel, SyntheticLogitsMatchCpu) {
  for (const LlamaConfig& cfg : {config_hd32(), config_hd128()}) {
    TempDir dir("logits");
    write_model(dir.path, cfg, 5);
    Trio t = make_trio(dir.path, true);
    const auto a = scripted_logits(*t.cpu_int4, *t.cpu_int4, 37, 6);
    const auto b = scripted_logits(*t.cpu_exact, *t.cpu_int4, 37, 6);
    const auto g = scripted_logits(*t.gpu, *t.cpu_int4, 37, 6);
    for (size_t s = 0; s < g.size(); ++s) {
      const RowErrors eb = row_errors(g[s], b[s], cfg.vocab_size);
      const RowErrors ea = row_errors(g[s], a[s], cfg.vocab_size);
      std::printf("head_dim %d step %zu: vs exact nmse %.3g rel %.3g | vs cpu int4 nmse %.3g rel %.3g\n",
                  cfg.head_dim(), s, eb.nmse, eb.rel_max, ea.nmse, ea.rel_max);
      EXPECT_EQ(eb.nonfinite, 0u);
      EXPECT_LT(eb.nmse, kNmseExact) << "head_dim " << cfg.head_dim() << " step " << s;
      EXPECT_LT(eb.rel_max, kRelMaxExact) << "head_dim " << cfg.head_dim() << " step " << s;
      EXPECT_LT(ea.nmse, kNmseCpuInt4) << "head_dim " << cfg.head_dim() << " step " << s;
      EXPECT_LT(ea.rel_max, kRelMaxCpuInt4) << "head_dim " << cfg.head_dim() << " step " << s;
    }
  }
}

// Greedy decoding from BOS for 200 tokens on the real stories260K (int4): the
// GPU's free-running ids equal the CPU int4 backend's (A) up to a first
// divergence, which must sit at a near-tie of A's logits (A and B part at id
// 42); with A's ids fed back (teacher forcing) the GPU's argmax equals
// A's and B's at every step that is not a near-tie of that reference, and the
// chosen token's log-probability (Score's figure) stays within kLogprobCpuInt4
// of A's.
TEST_F(CudaModel, StoriesGreedyMatchesCpuInt4) {
  const std::string dir = shared_dir() + "/models/stories260K";
  if (!std::filesystem::exists(dir + "/model.safetensors")) GTEST_SKIP() << dir << " not present";
  Trio t = make_trio(dir, true);
  const int vocab = t.cfg.vocab_size, steps = 200;
  std::vector<Top2> cpu_info;
  const std::vector<int32_t> cpu = greedy_ids(*t.cpu_int4, steps, &cpu_info);
  const std::vector<int32_t> gpu = greedy_ids(*t.gpu, steps, nullptr);
  size_t same = 0;
  while (same < cpu.size() && cpu[same] == gpu[same]) ++same;
  std::printf("stories260K greedy: GPU equals CPU int4 for %zu of %zu ids\n", same, cpu.size());
  if (same < cpu.size()) {
    const Top2& at = cpu_info[same - 1];  // the CPU logits that chose id `same`
    EXPECT_LT(at.gap, kRelTieGap * at.top) << "GPU diverged at id " << same << " where the CPU's top-2 gap is "
                                           << at.gap << " (not a near-tie)";
  }
  // llama2.c's float-model ids: informational (int4 rounding may legitimately diverge).
  std::ifstream f(dir + "/expected_greedy_bos_200.ids");
  const std::vector<int32_t> expected{std::istream_iterator<int32_t>(f), std::istream_iterator<int32_t>()};
  size_t same_f = 0;
  while (same_f < expected.size() && same_f < gpu.size() && expected[same_f] == gpu[same_f]) ++same_f;
  std::printf("stories260K greedy: GPU int4 equals llama2.c float for %zu of %zu ids\n", same_f, expected.size());

  const Forced fa = teacher_forced(*t.gpu, *t.cpu_int4, cpu, vocab, kRelTieGap);
  const Forced fb = teacher_forced(*t.gpu, *t.cpu_exact, cpu, vocab, kRelTieGap);
  std::printf("stories260K teacher-forced: argmax differs from A at %d steps (%d near-ties), from B at %d (%d); "
              "worst vs A nmse %.3g rel %.3g logprob %.3g, vs B nmse %.3g rel %.3g logprob %.3g\n",
              fa.mismatches, fa.near_ties, fb.mismatches, fb.near_ties, fa.worst.nmse, fa.worst.rel_max,
              fa.logprob_diff, fb.worst.nmse, fb.worst.rel_max, fb.logprob_diff);
  EXPECT_EQ(fa.worst.nonfinite + fb.worst.nonfinite, 0u);
  EXPECT_EQ(fa.mismatches, fa.near_ties);
  EXPECT_EQ(fb.mismatches, fb.near_ties);
  EXPECT_LE(fa.mismatches, steps / 20);
  EXPECT_LE(fb.mismatches, steps / 40);
  EXPECT_LT(fa.worst.nmse, kNmseCpuInt4);
  EXPECT_LT(fa.worst.rel_max, kRelMaxCpuInt4);
  EXPECT_LT(fa.logprob_diff, kLogprobCpuInt4);
  EXPECT_LT(fb.worst.nmse, kNmseExact);
  EXPECT_LT(fb.worst.rel_max, kRelMaxExact);
  EXPECT_LT(fb.logprob_diff, kLogprobCpuInt4 / 3);
}

// CUDA graphs (decode steps replayed per padded batch size) against the eager
// path, bitwise, on the same weights: decode batches of 1..40 sequences of
// mixed contexts (padding 3 → 4, 9 → 16, 17 → 32, 33 → 64), the same graph
// replayed with other sequences, a mixed prefill + decode batch (eager in both)
// and a decode batch right after it.
TEST_F(CudaModel, GraphReplayEqualsEagerBitwise) {
  for (const LlamaConfig& cfg : {config_hd32(), config_hd128()}) {
    TempDir dir("graph");
    write_model(dir.path, cfg, 17);
    Trio t = make_trio(dir.path, true);
    model::CudaBackendOptions o = t.gpu->options();
    ASSERT_TRUE(o.cuda_graphs);
    o.cuda_graphs = false;
    CudaLlama eager(t.cfg, t.cpu_int4->weights(), o);
    const int vocab = cfg.vocab_size, n_seqs = 40;
    std::vector<SeqSlice> seqs(n_seqs);
    Batch prefill;
    for (int s = 0; s < n_seqs; ++s) {
      const int len = 2 + (s * 11) % 37;
      seqs[s] = SeqSlice{some_tokens(len, s, vocab), 0, blocks_from(4 * s, 4), false};
      prefill.seqs.push_back(seqs[s]);
    }
    ASSERT_TRUE(run(*t.gpu, prefill) == run(eager, prefill));
    for (SeqSlice& s : seqs) {
      s.start_pos = static_cast<int32_t>(s.tokens.size());
      s.tokens = {3 + s.start_pos % (vocab - 3)};
    }
    int step = 0;
    auto decode = [&](const std::vector<int>& which) {
      Batch b;
      for (int i : which) b.seqs.push_back(seqs[i]);
      const std::vector<float> g = run(*t.gpu, b), e = run(eager, b);
      EXPECT_TRUE(g == e) << "head_dim " << cfg.head_dim() << ", step " << step << ", " << which.size()
                          << " sequences";
      for (int i : which) {  // the next token of each sequence: the same in both backends
        seqs[i].start_pos += 1;
        seqs[i].tokens = {3 + (seqs[i].start_pos * 7 + i) % (vocab - 3)};
      }
      ++step;
    };
    std::vector<int> all(n_seqs);
    std::iota(all.begin(), all.end(), 0);
    decode({5});
    decode({0, 7, 3});
    decode({1, 2, 4, 6, 8, 9, 10, 11, 12});
    decode({12, 11, 10, 9, 8, 6, 4, 2, 1});  // the 16-graph again, other order
    decode(std::vector<int>(all.begin(), all.begin() + 17));
    decode(std::vector<int>(all.begin() + 7, all.end()));
    decode(all);
    // Prefill + decode in one batch runs eagerly in both; decoding resumes after it.
    Batch mixed{{SeqSlice{some_tokens(9, 99, vocab), 0, blocks_from(200, 1), true}, seqs[3]}};
    EXPECT_TRUE(run(*t.gpu, mixed) == run(eager, mixed)) << "head_dim " << cfg.head_dim() << ", mixed batch";
    seqs[3].start_pos += 1;
    decode({3, 4});
    // One graph per padded size (1, 4, 16, 32, 64, 2), each a whole decode step.
    const int kernels = t.gpu->decode_step_kernels(1);
    std::printf("graph: head_dim %d, %d kernels per decode step (%d layers)\n", cfg.head_dim(), kernels,
                cfg.num_hidden_layers);
    EXPECT_EQ(kernels, t.gpu->decode_step_kernels(64));
    EXPECT_GE(kernels, 10 * cfg.num_hidden_layers);
  }
}

// A sequence's decode logits are bitwise the same alone and inside batches of
// 2..64 decoding sequences (GEMV for m <= 16, GEMM above; decode attention per
// sequence), in any order.
TEST_F(CudaModel, BatchInvariantDecode) {
  for (const LlamaConfig& cfg : {config_hd32(), config_hd128()}) {
    TempDir dir("inv");
    write_model(dir.path, cfg, 9);
    Trio t = make_trio(dir.path, true);
    CudaLlama& gpu = *t.gpu;
    const int vocab = cfg.vocab_size, n_seqs = 64;
    std::vector<SeqSlice> decode(n_seqs);
    for (int s = 0; s < n_seqs; ++s) {
      const int len = 5 + (s * 7) % 29;  // >= 2: prefilled on the prefill path
      const std::vector<int32_t> blocks = blocks_from(4 * s, 4);
      run(gpu, Batch{{SeqSlice{some_tokens(len, s, vocab), 0, blocks, false}}});
      decode[s] = SeqSlice{{3 + (s * 13) % (vocab - 3)}, len, blocks, false};
    }
    std::vector<std::vector<float>> alone(n_seqs);
    for (int s = 0; s < n_seqs; ++s) alone[s] = run(gpu, Batch{{decode[s]}});
    for (int size : {2, 3, 8, 16, 17, 33, 64}) {
      for (bool reversed : {false, true}) {
        Batch b;
        for (int s = 0; s < size; ++s) b.seqs.push_back(decode[reversed ? size - 1 - s : s]);
        const std::vector<float> all = run(gpu, b);
        int differing = 0;
        for (int r = 0; r < size; ++r) {
          const int s = reversed ? size - 1 - r : r;
          differing += !std::equal(alone[s].begin(), alone[s].end(), all.begin() + static_cast<size_t>(r) * vocab);
        }
        EXPECT_EQ(differing, 0) << "head_dim " << cfg.head_dim() << ", batch of " << size
                                << (reversed ? " (reversed)" : "");
      }
    }
  }
}

// Prefilling in chunks of >= 2 tokens (other blocks, chunks alone or next to
// decoding sequences) gives the one-shot prefill's logits bitwise.
TEST_F(CudaModel, ChunkedPrefillEqualsOneShot) {
  for (const LlamaConfig& cfg : {config_hd32(), config_hd128()}) {
    TempDir dir("chunk");
    write_model(dir.path, cfg, 13);
    Trio t = make_trio(dir.path, true);
    CudaLlama& gpu = *t.gpu;
    const int vocab = cfg.vocab_size;
    const std::vector<int32_t> toks = some_tokens(40, 1, vocab);
    const std::vector<float> ref = run(gpu, Batch{{SeqSlice{toks, 0, {0, 1, 2}, true}}});
    // Two decoding bystanders in their own blocks.
    const std::vector<int32_t> by_a = some_tokens(9, 2, vocab), by_b = some_tokens(20, 3, vocab);
    run(gpu, Batch{{SeqSlice{by_a, 0, {40}, false}, SeqSlice{by_b, 0, {41, 42}, false}}});
    for (bool with_bystanders : {false, true}) {
      const std::vector<int32_t> blocks =
          with_bystanders ? std::vector<int32_t>{20, 7, 31} : std::vector<int32_t>{9, 4, 30};
      std::vector<float> got;
      int pos = 0;
      for (int chunk : {16, 7, 17}) {
        Batch b{{SeqSlice{std::vector<int32_t>(toks.begin() + pos, toks.begin() + pos + chunk), pos, blocks, true}}};
        if (with_bystanders) {
          b.seqs.insert(b.seqs.begin(), SeqSlice{{5}, 9, {40}, false});
          b.seqs.push_back(SeqSlice{{6}, 20, {41, 42}, false});
        }
        const std::vector<float> part = run(gpu, b);
        const size_t skip = with_bystanders ? vocab : 0;  // the first bystander's row
        got.insert(got.end(), part.begin() + skip, part.begin() + skip + static_cast<size_t>(chunk) * vocab);
        pos += chunk;
      }
      ASSERT_EQ(got.size(), ref.size());
      size_t differing = 0;
      for (size_t i = 0; i < ref.size(); ++i) differing += got[i] != ref[i];
      EXPECT_EQ(differing, 0u) << "head_dim " << cfg.head_dim() << (with_bystanders ? " with bystanders" : "");
    }
  }
}

TEST_F(CudaModel, MalformedBatchIsRejectedWithAMessage) {
  TempDir dir("bad");
  write_model(dir.path, config_hd32(), 3);
  Trio t = make_trio(dir.path, true);
  const int vocab = t.cfg.vocab_size;
  std::vector<float> logits(static_cast<size_t>(vocab) * 600);
  auto expect_error = [&](const Batch& b, const std::string& needle) {
    std::string what = "(no error)";
    try {
      t.gpu->forward(logits, b);
    } catch (const model::ModelError& e) {
      what = e.what();
    }
    EXPECT_TRUE(what.find(needle) != std::string::npos) << "expected '" << needle << "', got " << what;
  };
  expect_error(Batch{{SeqSlice{{1, vocab}, 0, {0}, false}}}, "outside the vocabulary");
  expect_error(Batch{{SeqSlice{some_tokens(17, 1, vocab), 0, {0}, false}}}, "needs 2 KV blocks");
  expect_error(Batch{{SeqSlice{{1}, 0, {kBlocks}, false}}}, "KV block id out of range");
  expect_error(Batch{}, "no sequences");
  expect_error(Batch{{SeqSlice{{1}, 511, blocks_from(0, 32), false}, SeqSlice{{1}, 512, blocks_from(0, 33), false}}},
               "beyond the model's");
  expect_error(Batch{{SeqSlice{some_tokens(513, 1, vocab), 0, blocks_from(0, 33), false}}}, "beyond the model's");
  Batch too_many;  // 65 sequences > max_seqs 64
  for (int s = 0; s < 65; ++s) too_many.seqs.push_back(SeqSlice{{1}, 0, {s}, false});
  expect_error(too_many, "capacity");
  // The backend still works after the rejections.
  const std::vector<float> ok = run(*t.gpu, Batch{{SeqSlice{some_tokens(5, 1, vocab), 0, {0}, false}}});
  EXPECT_EQ(ok.size(), static_cast<size_t>(vocab));
}

// copy_kv_block (copy-on-write of shared prefixes): decoding over copied blocks
// gives the logits of decoding over the originals.
TEST_F(CudaModel, CopyKvBlockCopiesEveryLayer) {
  TempDir dir("copy");
  write_model(dir.path, config_hd128(), 4);
  Trio t = make_trio(dir.path, true);
  const int vocab = t.cfg.vocab_size;
  run(*t.gpu, Batch{{SeqSlice{some_tokens(20, 5, vocab), 0, {0, 1}, false}}});
  const std::vector<float> ref = run(*t.gpu, Batch{{SeqSlice{{7}, 20, {0, 1}, false}}});
  t.gpu->copy_kv_block(10, 0);
  t.gpu->copy_kv_block(11, 1);
  const std::vector<float> got = run(*t.gpu, Batch{{SeqSlice{{7}, 20, {10, 11}, false}}});
  EXPECT_TRUE(got == ref);
  bool threw = false;
  try {
    t.gpu->copy_kv_block(kBlocks, 0);
  } catch (const model::ModelError&) {
    threw = true;
  }
  EXPECT_TRUE(threw);
}

}  // namespace
}  // namespace chatradio::gpu_test
