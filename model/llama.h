// The Llama architecture on the CPU ops: a paged KV cache pool and a batched
// forward pass over model::Batch. Linear weights are float32 (F16/BF16
// checkpoints convert at load) or int4 (GPTQ checkpoints, or float ones
// quantized at load); the float path is the reference every other backend is
// checked against.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kernels/cpu/q4.h"
#include "kernels/cpu/thread_pool.h"
#include "model/backend.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/safetensors.h"

namespace chatradio::model {

// y[m, out] = x[m, in] · Wᵀ with W[out, in], float or int4.
struct Linear {
  int out = 0, in = 0;
  std::vector<float> w;       // [out, in] when float
  kernels::cpu::Q4Matrix q4;  // when int4 (q4.n > 0)

  bool is_int4() const { return q4.n > 0; }
  void apply(float* y, const float* x, int m, kernels::cpu::ThreadPool* pool) const;
  size_t bytes() const;  // weight bytes streamed per apply
};

struct LayerWeights {
  std::vector<float> attn_norm;  // [hidden]
  Linear q, k, v, o;             // q,o: [hidden, hidden]; k,v: [kv_dim, hidden]
  std::vector<float> ffn_norm;   // [hidden]
  Linear gate, up, down;         // gate,up: [inter, hidden]; down: [hidden, inter]
};

// A read-only IEEE-half table, either owned or a view into a checkpoint's
// mapping that it keeps alive. The view matters for RSS: of a 7B model's 262 MB
// f16 embedding only the rows of tokens actually seen become resident.
class HalfTable {
 public:
  HalfTable() = default;
  explicit HalfTable(std::vector<uint16_t> owned);
  HalfTable(std::shared_ptr<const void> keep_alive, const uint16_t* data, size_t size)
      : keep_(std::move(keep_alive)), data_(data), size_(size) {}

  const uint16_t* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  bool operator==(const HalfTable& o) const;

 private:
  std::shared_ptr<const void> keep_;  // the owned vector, or the mapping
  const uint16_t* data_ = nullptr;
  size_t size_ = 0;
};

struct LlamaWeights {
  // Exactly one of the two is filled: int4 models keep the table in f16.
  std::vector<float> embed;  // [vocab, hidden]
  HalfTable embed_f16;       // [vocab, hidden] IEEE half
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;  // [hidden]
  Linear lm_head;                 // [vocab, hidden]; from embed when tied
  // Set when the load missed the weight cache and left writing it to the
  // owner (LoadOptions::write_cache_in_background): the key to write under.
  std::string unwritten_cache_key;

  size_t bytes() const;  // resident weight bytes
};

// The int4 linears of w by checkpoint name ("model.layers.0.self_attn.q_proj",
// "lm_head"): what a weight cache holds.
std::vector<std::pair<std::string, const kernels::cpu::Q4Matrix*>> int4_matrices(const LlamaWeights& w);

enum class WeightFormat {
  kAsStored,  // float checkpoints stay float32, GPTQ ones int4
  kInt4,      // float checkpoints are quantized to int4 at load (RTN, asymmetric)
};

// Where a load's time went (bench_cpu_e2e --timings). Tensors are loaded by
// tasks running on the loader threads; their time is summed per kind.
struct LoadStats {
  enum Kind {
    kRead,      // mapping a task's tensors in (waits for the disk when cold)
    kRepack,    // GPTQ tensors -> the kernel's int4 layout, with their checks
    kQuantize,  // float rows -> int4 (a GPTQ checkpoint's f16 lm_head; --quantize int4)
    kConvert,   // float conversions and finiteness checks (embedding, norms, float linears)
    kCached,    // int4 matrices taken from the weight cache: content hash and checks
    kKinds
  };
  int threads = 0;
  double open_s = 0;     // wall: mapping the files, validating their headers
  double tensors_s = 0;  // wall: the parallel pass over the tensors
  double finish_s = 0;   // wall: joining sliced matrices, the unused-tensor check
  double cpu_s[kKinds] = {};   // CPU seconds per kind, summed over threads
  double wall_s[kKinds] = {};  // wall seconds per kind, summed over threads
  // The weight cache: "off", "hit", or "miss" followed by why, and whether
  // it was written ("miss (no file); written 3.6 GB").
  std::string cache = "off";
  double cache_write_s = 0;  // wall: writing the cache after a miss
};

struct LoadOptions {
  WeightFormat format = WeightFormat::kAsStored;
  int group_size = 128;  // for kInt4
  // Threads that read, check, convert and repack tensors; the weights do not
  // depend on it, bit for bit. CpuLlama::load uses its backend's n_threads.
  int n_threads = 1;
  LoadStats* stats = nullptr;  // when set, filled with where the time went
  // Directory of the int4 weight cache (model/weight_cache.h); empty: none.
  // Int4 loads then map the cached layout when it matches the checkpoint,
  // and write it after building it otherwise (a failed write is reported in
  // stats->cache, never an error). Float loads ignore it.
  std::string weight_cache_dir = {};
  // CpuLlama::load only: after a miss, write the cache on a background thread
  // (lowest CPU priority) once the model is built instead of before
  // returning, and report the outcome ("written, N MiB" or "not written:
  // ...") to on_cache_written, from that thread. A server then becomes ready
  // without waiting for the write (7B on a VM: tens of seconds).
  bool write_cache_in_background = false;
  std::function<void(const std::string& outcome, double seconds)> on_cache_written = {};
};

// Reads a Hugging Face Llama directory: config.json and safetensors, float
// (F32/F16/BF16) or GPTQ int4 (quantize_config.json present). With int4
// weights the embedding table is kept in f16 and lm_head in int4 (quantized at
// load when the checkpoint stores it in float). Throws ModelError naming the
// file/tensor on any problem.
//
// The checkpoint must hold exactly the model the config describes: as many
// layers (check_layer_count, before any weight is read), no tensor the model
// does not use (check_all_tensors_used), and no NaN or Inf in any float
// weight or GPTQ scale; each is a ModelError naming the tensor.
//
// Int4 from a float checkpoint (kInt4) gives the same bits as loading what
// `chatradio quantize` writes from it: linears are quantized from the source
// values, while the embedding, a tied or untied lm_head and the norms go
// through F16 first, because that is how the quantized checkpoint stores them
// (docs/quantize.md).
LlamaWeights load_llama_weights(const LlamaConfig& cfg, const std::string& model_dir,
                                const LoadOptions& opts = {});

// Throws ModelError unless the checkpoint's layers (model.layers.N.*) number
// exactly cfg.num_hidden_layers: with fewer in the config the extra layers
// would be silently dropped, with more they would have no weights.
void check_layer_count(const LlamaConfig& cfg, const Checkpoint& ckpt);
// For a loader that has fetched every weight it needs through ckpt.get():
// throws ModelError naming the tensors it left unread. Returns the unread
// ones that are tolerated, buffers older transformers versions saved that
// hold no weights (model.layers.N.self_attn.rotary_emb.inv_freq).
std::vector<std::string> check_all_tensors_used(const Checkpoint& ckpt, const LlamaConfig& cfg);

struct CpuBackendOptions {
  int n_kv_blocks = 256;  // KV pool size in blocks
  int kv_block_size = 16;
  int n_threads = 1;      // including the calling thread
  KvDtype kv_dtype = KvDtype::kF16;
};

class CpuLlama final : public Backend {
 public:
  CpuLlama(LlamaConfig cfg, LlamaWeights weights, const CpuBackendOptions& opts);
  // Stops a weight cache write still running (its temporary file is removed).
  ~CpuLlama() override;
  // Loads a model directory (config.json + safetensors) with opts.n_threads
  // loader threads.
  static std::unique_ptr<CpuLlama> load(const std::string& model_dir, const CpuBackendOptions& opts,
                                        const LoadOptions& load = {});
  const LlamaWeights& weights() const { return w_; }

  const LlamaConfig& config() const override { return cfg_; }
  int n_kv_blocks() const override { return opts_.n_kv_blocks; }
  int kv_block_size() const override { return opts_.kv_block_size; }
  void forward(std::span<float> logits, const Batch& batch) override;
  void copy_kv_block(int dst, int src) override;

 private:
  LlamaConfig cfg_;
  LlamaWeights w_;
  CpuBackendOptions opts_;
  std::unique_ptr<kernels::cpu::ThreadPool> pool_;
  KvCache kv_;
  // The background weight cache write (LoadOptions::write_cache_in_background).
  std::atomic<bool> stop_cache_write_{false};
  std::thread cache_writer_;

  // Scratch reused across steps (capacity grows to the largest batch seen).
  struct Scratch {
    std::vector<float> x, h, q, k, v, att, gate, up;  // [n_tokens, *]
    std::vector<float> last;                          // [n_logit_rows, hidden]
    std::vector<int32_t> tokens, positions, slots;    // [n_tokens]
    std::vector<int32_t> q_start, ctx_len, tables;    // paged-attention arrays
  } s_;
};

}  // namespace chatradio::model
