// The CUDA backend: the Llama forward pass of model/llama.cpp (CpuLlama) on the
// ops of kernels/cuda, with int4 linear weights, fp16 activations and an fp16
// paged KV cache on one GPU. docs/cuda.md, section "The CUDA backend
// (CudaLlama)", has the data flow, buffer sizes and the numerics.
//
// This header is CUDA-free (no cuda_runtime.h), so the engine and the server
// can include it without the CUDA include paths; the device state lives in
// CudaLlama::Impl (llama_cuda.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kernels/cpu/q4.h"
#include "model/backend.h"
#include "model/config.h"
#include "model/gptq.h"
#include "model/llama.h"

namespace chatradio::model {

// Sizes of everything the backend preallocates at construction: a step never
// calls cudaMalloc. A batch beyond these limits is rejected with a ModelError
// (the scheduler's token budget must stay within max_tokens).
struct CudaBackendOptions {
  int n_kv_blocks = 256;    // KV pool size in blocks (per layer, K and V each)
  int kv_block_size = 16;   // tokens per block
  int max_tokens = 512;     // new tokens per step, summed over the sequences
  int max_seqs = 64;        // sequences per step
  int max_logit_rows = 0;   // logit rows per step; 0: max_tokens (all_logits scoring)
  int device = 0;           // CUDA device ordinal
  // Pure-decode steps (one new token per sequence) replay a CUDA graph captured
  // once per padded batch size (cuda_graph_batch) instead of ~330 launches;
  // false runs every step eagerly (the reference: both give the same bits).
  bool cuda_graphs = true;
};

class CudaLlama final : public Backend {
 public:
  // Uploads `weights`, whose linears must all be int4 (load_llama_weights with
  // WeightFormat::kInt4, or a GPTQ checkpoint) and whose embedding is f16: the
  // exact quantized weights CpuLlama runs with the same LoadOptions. Throws
  // ModelError when no GPU is usable, memory runs out, or a shape is outside
  // what the kernels support (hidden size not a multiple of 32, head_dim not a
  // multiple of 8 or above 256, act-order GPTQ weights).
  CudaLlama(LlamaConfig cfg, LlamaWeights weights, const CudaBackendOptions& opts);
  // Loads a model directory through load_llama_weights with format forced to
  // WeightFormat::kInt4 (float checkpoints are quantized at load with
  // load.group_size, GPTQ ones are taken as stored).
  static std::unique_ptr<CudaLlama> load(const std::string& model_dir, const CudaBackendOptions& opts,
                                         LoadOptions load = {WeightFormat::kInt4, 128});
  // A model of shape `cfg` whose int4 weights, embedding and norms are random,
  // generated directly in device memory (seconds for a 7B shape, no host copy):
  // for benchmarks only. Groups of 128 inputs; hidden and intermediate sizes
  // must be multiples of 128.
  static std::unique_ptr<CudaLlama> synthetic(const LlamaConfig& cfg, const CudaBackendOptions& opts,
                                              uint64_t seed);
  // GPUs this process can use (0 when there is no driver or no device): lets a
  // server fall back to the CPU backend.
  static int device_count();
  ~CudaLlama() override;
  CudaLlama(const CudaLlama&) = delete;
  CudaLlama& operator=(const CudaLlama&) = delete;

  const LlamaConfig& config() const override { return cfg_; }
  int n_kv_blocks() const override { return opts_.n_kv_blocks; }
  int kv_block_size() const override { return opts_.kv_block_size; }
  // As CpuLlama::forward (same validation and messages): logits[rows, vocab]
  // float32 in host memory. Synchronous: returns once the logits are copied.
  // CUDA failures throw ModelError "CudaLlama: <op>: <cudaGetErrorString>"
  // once the work already queued has drained; after one, the KV cache contents
  // are undefined.
  void forward(std::span<float> logits, const Batch& batch) override;
  // Enqueued on the backend's stream (ordered with forward); errors of the
  // copy itself surface at the next forward.
  void copy_kv_block(int dst, int src) override;

  const CudaBackendOptions& options() const { return opts_; }
  size_t weight_bytes() const;  // device bytes of weights (int4 + scales, embedding, norms)
  size_t kv_bytes() const;      // device bytes of the KV pool
  size_t buffer_bytes() const;  // device bytes of activations and workspaces
  // Kernels of a pure-decode step of n_seqs sequences: the nodes of its CUDA
  // graph (captured now if it was not, whatever cuda_graphs says), which are
  // exactly the launches the eager path makes. For benchmarks.
  int decode_step_kernels(int n_seqs);

 private:
  struct Impl;
  CudaLlama(LlamaConfig cfg, const CudaBackendOptions& opts);  // device, stream, buffers; no weights
  void validate(const Batch& batch, size_t logits_size) const;

  LlamaConfig cfg_;
  CudaBackendOptions opts_;
  std::unique_ptr<Impl> impl_;
};

// ---- the per-step batch arrays (host side; public for tests, no GPU involved) -----

// Offsets (int32 elements) of the arrays in the block one step uploads; the
// block tables come last so a step copies only a prefix.
struct CudaBatchLayout {
  size_t positions = 0, slots = 0, rows = 0, q_start = 0, ctx = 0, tables = 0;
  // For up to max_tokens token rows, max_rows logit rows, max_seqs sequences.
  static CudaBatchLayout make(int max_tokens, int max_rows, int max_seqs);
};

// What flatten_batch wrote, i.e. the launch shape of the step.
struct CudaStepShape {
  int n_tokens = 0;      // token rows, padding included
  int n_seqs = 0;        // sequences, padding included
  int n_rows = 0;        // logit rows, padding included
  int table_stride = 0;  // block table columns
  int max_q_len = 0;     // >= every sequence's new-token count
  int max_ctx = 0;       // >= every ctx_len
  size_t elems = 0;      // int32 elements of the block to upload
};

// Writes the batch's arrays into meta (layout `at`): tokens, positions, KV
// slots (block · block_size + offset), logit row ids, q_start, ctx_len and the
// block tables. pad_to == 0: an eager step, tables with just the columns the
// step touches. pad_to >= n_seqs (a pure-decode batch): the step of a CUDA
// graph, padded to pad_to sequences with `table_stride` columns and max_ctx
// table_stride · block_size, so the kernels' grids depend on pad_to only.
// Padding sequences have no new token (q_start repeats the real row count,
// ctx_len 0); padding token rows hold token 0 at position 0 with slot −1 (the
// KV write skips them) and are their own logit rows. Every kernel computes a
// row alone, so the real rows come out bitwise as in the unpadded step.
CudaStepShape flatten_batch(int32_t* meta, const CudaBatchLayout& at, const Batch& batch, int block_size,
                            int table_stride, int pad_to);

// The padded batch size whose graph serves a decode step of n_seqs sequences:
// the next power of two, or `cap` (the most sequences a step may have) above
// the largest power of two <= cap. n_seqs must be in [1, cap].
int cuda_graph_batch(int n_seqs, int cap);

// ---- host-side weight conversion (public for tests; no GPU involved) -----------

// The device kernels take groups of 32, 64 or 128 inputs with in_features a
// multiple of the group. For a CPU int4 weight whose groups hold `q4_group`
// inputs (a multiple of 32) over k real inputs, returns the largest such group
// that divides q4_group and pads k no further than to a multiple of 32: the
// device tensor then has round_up(k, that group) inputs and every device group
// lies inside one CPU group (so its scale and zero are that group's, copied).
int cuda_int4_group(int q4_group, int k);

// Writes the int4 weight w (outputs [0, w.n), inputs [0, w.k)) as outputs
// [row0, row0 + w.n) of dst, GPTQ v1 tensors with dst.shape.in >= w.k inputs
// and groups of dst.shape.group that each lie inside one group of w. The
// dequantized values are exactly w's: scale · (q − zero). Inputs [w.k,
// dst.shape.in) of those outputs get their zero point's nibble, so they
// dequantize to 0 (to −scale for a zero point of 16; the backend's
// activations there are 0 anyway). Other outputs of dst are left alone. Throws ModelError naming `name` when w is
// act-order (permuted inputs), a zero point is 0 (not storable in GPTQ v1),
// or the shapes do not fit.
void gptq_put_q4(GptqTensors& dst, int row0, const kernels::cpu::Q4Matrix& w, const std::string& name);

// Zero-filled GPTQ v1 tensors of n outputs, k inputs, groups of `group`,
// g_idx empty (sequential groups): scale 0 makes every weight exactly 0, which
// the padding rows and columns of a device weight rely on.
GptqTensors gptq_zeros(int n, int k, int group);

}  // namespace chatradio::model
