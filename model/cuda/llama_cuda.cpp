#include "model/cuda/llama_cuda.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/int4_layout.h"
#include "model/cuda/llama_cuda_kernels.h"
#include "model/errors.h"
#include "model/safetensors.h"

namespace chatradio::model {

namespace kc = kernels::cuda;
namespace int4_layout = kernels::cuda::int4_layout;

namespace {

int round_up(int v, int m) { return (v + m - 1) / m * m; }

// CUDA failures become ModelError "CudaLlama: <op>[ (layer l)]: <reason>". The
// message is built only on failure: the forward pass checks every launch.
void check(cudaError_t e, const char* op, int layer = -1) {
  if (e == cudaSuccess) return;
  std::string what = std::string("CudaLlama: ") + op;
  if (layer >= 0) what += " (layer " + std::to_string(layer) + ")";
  throw ModelError(what + ": " + cudaGetErrorString(e));
}

// One cudaMalloc, freed with the object (move-only).
class DeviceMem {
 public:
  DeviceMem(size_t bytes, const std::string& what) : bytes_(bytes) {
    const cudaError_t e = cudaMalloc(&p_, std::max<size_t>(bytes, 256));
    if (e != cudaSuccess) {
      cudaGetLastError();  // out-of-memory is not sticky; leave no error behind
      throw ModelError("CudaLlama: cudaMalloc of " + std::to_string(bytes) + " bytes for " + what + ": " +
                       cudaGetErrorString(e));
    }
  }
  DeviceMem(DeviceMem&& o) noexcept : p_(std::exchange(o.p_, nullptr)), bytes_(o.bytes_) {}
  DeviceMem& operator=(DeviceMem&&) = delete;
  DeviceMem(const DeviceMem&) = delete;
  ~DeviceMem() {
    if (p_ != nullptr) cudaFree(p_);
  }
  void* get() const { return p_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// Extracts the 16 low (shift 0) or high (shift 4) nibbles of 4 bytes in byte
// order: the inverse of the CPU layout's nibble spread (kernels/cpu/q4.h).
uint32_t nibbles_of(uint32_t bytes4, int shift) {
  const uint32_t u = bytes4 >> shift;
  return (u & 0xFu) | ((u >> 4) & 0xF0u) | ((u >> 8) & 0xF00u) | ((u >> 12) & 0xF000u);
}

int q4_group_of(const kernels::cpu::Q4Matrix& w) { return w.group_blocks * kernels::cpu::kQ4BlockInputs; }

}  // namespace

// ---- host-side weight conversion --------------------------------------------------

int cuda_int4_group(int q4_group, int k) {
  for (int g : {128, 64, 32}) {
    if (q4_group % g == 0 && round_up(k, g) == round_up(k, 32)) return g;
  }
  throw ModelError("CudaLlama: int4 groups of " + std::to_string(q4_group) +
                   " inputs cannot be split into groups of 32, 64 or 128");
}

GptqTensors gptq_zeros(int n, int k, int group) {
  GptqTensors t;
  t.shape = gptq_shape(k, n, group);
  if (n % 8 != 0 || k % group != 0) {
    throw ModelError("CudaLlama: device int4 tensor [" + std::to_string(n) + ", " + std::to_string(k) +
                     "] must have n % 8 == 0 and k % group == 0 (group " + std::to_string(group) + ")");
  }
  const GptqShape& s = t.shape;
  t.qweight.assign(static_cast<size_t>(s.in_padded / 8) * s.out_padded, 0);
  t.qzeros.assign(static_cast<size_t>(s.n_groups) * (s.out_padded / 8), 0);
  t.scales.assign(static_cast<size_t>(s.n_groups) * s.out_padded, 0);
  return t;
}

void gptq_put_q4(GptqTensors& dst, int row0, const kernels::cpu::Q4Matrix& w, const std::string& name) {
  using kernels::cpu::kQ4BlockBytes;
  using kernels::cpu::kQ4BlockInputs;
  const GptqShape& s = dst.shape;
  const int q4_group = q4_group_of(w);
  if (w.perm_data()) {
    throw ModelError(name + ": act-order (desc_act) int4 weights are not supported by the CUDA backend");
  }
  if (w.n <= 0 || w.k <= 0 || row0 < 0 || row0 + w.n > s.out || w.k > s.in || s.in != s.in_padded ||
      s.out != s.out_padded || s.group % kQ4BlockInputs != 0 || s.in % s.group != 0 || q4_group % s.group != 0) {
    throw ModelError(name + ": int4 weight [" + std::to_string(w.n) + ", " + std::to_string(w.k) + "] (groups of " +
                     std::to_string(q4_group) + ") does not fit a device tensor [" + std::to_string(s.out) + ", " +
                     std::to_string(s.in) + "] with groups of " + std::to_string(s.group) + " at row " +
                     std::to_string(row0));
  }
  const int ld = s.out;                        // row stride of qweight and scales
  const int n_blocks = s.in / kQ4BlockInputs;  // 32-input blocks of the device tensor
  const int full_blocks = w.k / kQ4BlockInputs;  // blocks with only real inputs
  const uint8_t* qs = w.nibbles();
  std::vector<int> zero_of_group(s.n_groups);  // [n_groups] of the output being written
  for (int o = 0; o < w.n; ++o) {
    const int p = o / kernels::cpu::kQ4PanelCols, c = o % kernels::cpu::kQ4PanelCols, od = row0 + o;
    for (int gi = 0; gi < s.n_groups; ++gi) {
      // A device group made only of padding inputs takes the last CPU group.
      const int j = std::min((gi * s.group / kQ4BlockInputs) / w.group_blocks, w.n_groups - 1);
      const size_t at = (static_cast<size_t>(p) * w.n_groups + j) * kernels::cpu::kQ4PanelCols + c;
      const int zero = w.zero_data()[at];
      if (zero < 1 || zero > 16) {
        throw ModelError(name + ": zero point " + std::to_string(zero) + " of output " + std::to_string(o) +
                         " cannot be stored as GPTQ v1 (1..16)");
      }
      zero_of_group[gi] = zero;
      dst.scales[static_cast<size_t>(gi) * ld + od] = w.scale_data()[at];
      int32_t& zw = dst.qzeros[static_cast<size_t>(gi) * (ld / 8) + od / 8];
      const int sh = 4 * (od % 8);
      zw = static_cast<int32_t>((static_cast<uint32_t>(zw) & ~(0xFu << sh)) |
                                (static_cast<uint32_t>(zero - 1) << sh));
    }
    const uint8_t* panel = qs + static_cast<size_t>(p) * w.k_blocks * kQ4BlockBytes;
    for (int b = 0; b < n_blocks; ++b) {
      uint32_t words[4];  // GPTQ words of inputs 32b + 8r .. +7, nibble m = input 8r + m
      if (b < full_blocks) {
        // Byte 32j + 4c + t of a CPU block holds input 4j+t (low nibble) and
        // 16+4j+t (high) of column c: one 32-bit load per quad j.
        uint32_t u[4];
        const uint8_t* block = panel + static_cast<size_t>(b) * kQ4BlockBytes;
        for (int j = 0; j < 4; ++j) std::memcpy(&u[j], block + 32 * j + 4 * c, 4);
        words[0] = nibbles_of(u[0], 0) | nibbles_of(u[1], 0) << 16;
        words[1] = nibbles_of(u[2], 0) | nibbles_of(u[3], 0) << 16;
        words[2] = nibbles_of(u[0], 4) | nibbles_of(u[1], 4) << 16;
        words[3] = nibbles_of(u[2], 4) | nibbles_of(u[3], 4) << 16;
      } else {
        for (uint32_t& x : words) x = 0;
        for (int r = 0; r < kQ4BlockInputs; ++r) {
          const int i = b * kQ4BlockInputs + r;
          uint32_t q;
          if (i < w.k) {
            const uint8_t byte = panel[static_cast<size_t>(b) * kQ4BlockBytes + ((r % 16) / 4) * 32 + 4 * c + r % 4];
            q = r >= 16 ? byte >> 4 : byte & 0xFu;
          } else {
            q = static_cast<uint32_t>(std::min(zero_of_group[i / s.group], 15));  // dequantizes to 0
          }
          words[r / 8] |= q << (4 * (r % 8));
        }
      }
      for (int r = 0; r < 4; ++r) {
        dst.qweight[static_cast<size_t>(4 * b + r) * ld + od] = static_cast<int32_t>(words[r]);
      }
    }
  }
}

// ---- device state ------------------------------------------------------------------

struct CudaLlama::Impl {
  struct Layer {
    const __half* attn_norm = nullptr;  // [hidden]
    const __half* ffn_norm = nullptr;   // [hidden]
    kc::Int4Weight qkv;      // [hidden + 2·kv_dim, hidden]: q rows, then k, then v
    kc::Int4Weight o;        // [hidden, hidden]
    kc::Int4Weight gate_up;  // [2·ff_dev, hidden]: gate rows [0, ff_dev), up rows [ff_dev, 2·ff_dev)
    kc::Int4Weight down;     // [hidden, ff_dev]
  };

  int device = 0;
  cudaStream_t stream = nullptr;
  std::vector<DeviceMem> mem;  // every device allocation
  size_t weight_bytes = 0, kv_bytes = 0, buffer_bytes = 0;

  // Weights.
  const __half* embed = nullptr;  // [vocab, hidden]
  std::vector<Layer> layers;
  const __half* final_norm = nullptr;  // [hidden]
  kc::Int4Weight lm_head;              // [vocab_dev, hidden]
  int ff_dev = 0;     // intermediate size padded to the down GEMM's group (padding is exact zeros)
  int vocab_dev = 0;  // vocab rounded up to 8 lm_head outputs

  // KV cache: one allocation [layers, 2 (K, V), n_blocks, block_size, n_kv_heads, head_dim].
  __half* kv = nullptr;
  size_t pool_elems = 0;   // one pool: n_blocks · block_size · kv_dim
  size_t block_elems = 0;  // one block of one pool: block_size · kv_dim

  // Activations, preallocated for max_tokens rows (T) and max_logit_rows (R).
  __half* x = nullptr;        // [T, hidden] residual stream
  __half* h = nullptr;        // [T, hidden] normed input of the next GEMM, or a GEMM's output
  __half* qkv = nullptr;      // [T, hidden + 2·kv_dim]
  __half* att = nullptr;      // [T, hidden] attention output
  __half* gate_up = nullptr;  // [T, 2·ff_dev]
  __half* act = nullptr;      // [T, ff_dev] silu(gate)·up
  __half* last = nullptr;     // [R, hidden] normed rows that get logits
  float* logits = nullptr;    // [R, vocab_dev] fp32, straight from the lm_head GEMM
  void* attn_ws = nullptr;    // attention_workspace_bytes(shape, max_seqs, max_blocks·block_size)
  size_t attn_ws_bytes = 0;

  // Batch arrays (int32): one pinned host block and its device mirror, uploaded
  // with one copy per step (flatten_batch, CudaBatchLayout).
  int32_t* meta_host = nullptr;
  int32_t* meta_dev = nullptr;
  CudaBatchLayout at;
  int max_rows = 0;        // R
  int block_size = 0;      // KV tokens per block
  int max_blocks_cap = 0;  // table columns: ceil(max_position_embeddings / block_size)
  int graph_cap = 0;       // the largest decode batch a graph serves: min(max_seqs, T, R)

  // Decode graphs by padded batch size, captured at first use. Their kernels'
  // arguments are the fixed buffers above; the batch's values reach them
  // through meta_dev, uploaded before each replay.
  struct DecodeGraph {
    cudaGraphExec_t exec = nullptr;
    int nodes = 0;  // kernels per step (docs, benchmarks)
  };
  std::map<int, DecodeGraph> graphs;

  ~Impl() {
    cudaSetDevice(device);  // frees below must address this backend's device
    if (stream != nullptr) cudaStreamSynchronize(stream);
    for (const auto& [size, g] : graphs) cudaGraphExecDestroy(g.exec);
    if (meta_host != nullptr) cudaFreeHost(meta_host);
    mem.clear();
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  template <class T>
  T* alloc(size_t n, const std::string& what, size_t* counter) {
    mem.emplace_back(n * sizeof(T), what);
    *counter += n * sizeof(T);
    return static_cast<T*>(mem.back().get());
  }

  // Weights travel on the backend's own stream, so they are ordered with every
  // later step (a legacy-stream cudaMemcpy is not ordered with a non-blocking
  // stream), and the copy is waited for, so the host buffer may go at once.
  void upload_bytes(void* dst, const void* src, size_t bytes, const char* what) {
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream), what);
    check(cudaStreamSynchronize(stream), what);
  }
  const __half* upload_half(std::span<const uint16_t> host, const std::string& what) {
    __half* d = alloc<__half>(host.size(), what, &weight_bytes);
    upload_bytes(d, host.data(), host.size() * sizeof(uint16_t), "cudaMemcpyAsync weights");
    return d;
  }
  const __half* upload_norm(const std::vector<float>& w, const std::string& what) {
    std::vector<uint16_t> h(w.size());
    for (size_t i = 0; i < w.size(); ++i) h[i] = f32_to_f16(w[i]);
    return upload_half(h, what);
  }

  kc::Int4Weight alloc_int4(int n, int k, int group, const std::string& what) {
    kc::Int4Weight w;
    w.n = n;
    w.k = k;
    w.group = group;
    w.packed = alloc<uint32_t>(int4_layout::packed_words(n, k), what, &weight_bytes);
    w.sz = alloc<uint32_t>(int4_layout::sz_words(n, k, group), what + " scales", &weight_bytes);
    return w;
  }

  // Repacks GPTQ v1 host tensors into the device layout and uploads them.
  kc::Int4Weight upload_int4(const GptqTensors& t, const std::string& what) {
    const GptqShape& s = t.shape;
    std::vector<uint32_t> packed(int4_layout::packed_words(s.out, s.in));  // our layout
    std::vector<uint32_t> sz(int4_layout::sz_words(s.out, s.in, s.group));  // [k_pad/group, n]
    if (kc::int4_repack_gptq(packed.data(), sz.data(), t.qweight.data(), t.qzeros.data(), t.scales.data(),
                             t.g_idx.empty() ? nullptr : t.g_idx.data(), s.in, s.out, s.group) != cudaSuccess) {
      throw ModelError("CudaLlama: " + what + ": int4 repack rejected [" + std::to_string(s.out) + ", " +
                       std::to_string(s.in) + "] with groups of " + std::to_string(s.group) +
                       (t.g_idx.empty() ? "" : " (or an act-order g_idx)"));
    }
    kc::Int4Weight w = alloc_int4(s.out, s.in, s.group, what);
    upload_bytes(const_cast<uint32_t*>(w.packed), packed.data(), packed.size() * 4, "cudaMemcpyAsync int4 weights");
    upload_bytes(const_cast<uint32_t*>(w.sz), sz.data(), sz.size() * 4, "cudaMemcpyAsync int4 scales");
    return w;
  }

  // One device int4 tensor holding several CPU int4 linears stacked along the
  // outputs at the given rows (fused QKV, fused gate|up), n_dev × k_dev inputs.
  kc::Int4Weight upload_fused(int n_dev, int k_dev, int group,
                              const std::vector<std::pair<const Linear*, int>>& parts, const std::string& what) {
    GptqTensors t = gptq_zeros(n_dev, k_dev, group);
    for (const auto& [lin, row0] : parts) gptq_put_q4(t, row0, lin->q4, what);
    return upload_int4(t, what);
  }

  void upload(const LlamaConfig& cfg, LlamaWeights& w);
  void fill_synthetic(const LlamaConfig& cfg, uint64_t seed);
  void allocate_runtime(const LlamaConfig& cfg, const CudaBackendOptions& opts);

  // Enqueues one step whose arrays are in meta_dev (launch shape `s`) on the
  // stream: embedding, the layers, lm_head into `logits`. Kernels only, so it
  // can be captured into a graph.
  void enqueue_step(const LlamaConfig& cfg, const CudaStepShape& s);
  // The instantiated graph of a decode step padded to `size` sequences.
  const DecodeGraph& decode_graph(const LlamaConfig& cfg, int size);
};

namespace {

void require_int4(const Linear& l, const std::string& name) {
  if (!l.is_int4()) {
    throw ModelError("CudaLlama: " + name + " is not int4; load the model with WeightFormat::kInt4");
  }
}

// The device group of linears reading `k` inputs: the largest that suits all of them.
int group_for(const std::vector<const Linear*>& ls, int k) {
  int g = 128;
  for (const Linear* l : ls) g = std::min(g, cuda_int4_group(q4_group_of(l->q4), k));
  return g;
}

}  // namespace

void CudaLlama::Impl::upload(const LlamaConfig& cfg, LlamaWeights& w) {
  const int d = cfg.hidden_size, kvd = cfg.kv_dim(), ff = cfg.intermediate_size, vocab = cfg.vocab_size;
  if (w.embed_f16.size() != static_cast<size_t>(vocab) * d) {
    throw ModelError("CudaLlama: the embedding must be f16 [vocab, hidden] (load with WeightFormat::kInt4)");
  }
  if (w.layers.size() != static_cast<size_t>(cfg.num_hidden_layers)) {
    throw ModelError("CudaLlama: layer count mismatch");
  }
  require_int4(w.lm_head, "lm_head");
  std::vector<const Linear*> downs;
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& L = w.layers[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const std::pair<const Linear*, const char*> named[] = {{&L.q, "self_attn.q_proj"}, {&L.k, "self_attn.k_proj"},
                                                           {&L.v, "self_attn.v_proj"}, {&L.o, "self_attn.o_proj"},
                                                           {&L.gate, "mlp.gate_proj"}, {&L.up, "mlp.up_proj"},
                                                           {&L.down, "mlp.down_proj"}};
    for (const auto& [lin, nm] : named) require_int4(*lin, p + nm);
    downs.push_back(&L.down);
  }
  // One padded intermediate size for every layer (the activation buffers' row stride).
  const int g_ff = group_for(downs, ff);
  ff_dev = round_up(ff, g_ff);
  vocab_dev = round_up(vocab, 8);

  embed = upload_half({w.embed_f16.data(), w.embed_f16.size()}, "embedding");
  w.embed_f16 = {};
  layers.resize(w.layers.size());
  for (size_t l = 0; l < w.layers.size(); ++l) {
    LayerWeights& L = w.layers[l];
    Layer& D = layers[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    D.attn_norm = upload_norm(L.attn_norm, p + "input_layernorm");
    D.ffn_norm = upload_norm(L.ffn_norm, p + "post_attention_layernorm");
    D.qkv = upload_fused(d + 2 * kvd, d, group_for({&L.q, &L.k, &L.v}, d), {{&L.q, 0}, {&L.k, d}, {&L.v, d + kvd}},
                         p + "self_attn.qkv_proj");
    D.o = upload_fused(d, d, group_for({&L.o}, d), {{&L.o, 0}}, p + "self_attn.o_proj");
    D.gate_up = upload_fused(2 * ff_dev, d, group_for({&L.gate, &L.up}, d), {{&L.gate, 0}, {&L.up, ff_dev}},
                             p + "mlp.gate_up_proj");
    D.down = upload_fused(d, ff_dev, g_ff, {{&L.down, 0}}, p + "mlp.down_proj");
    L = LayerWeights{};  // the host copy is no longer needed: keep peak host memory at one layer
  }
  final_norm = upload_norm(w.final_norm, "model.norm");
  lm_head = upload_fused(vocab_dev, d, group_for({&w.lm_head}, d), {{&w.lm_head, 0}}, "lm_head");
  w = LlamaWeights{};
}

void CudaLlama::Impl::fill_synthetic(const LlamaConfig& cfg, uint64_t seed) {
  const int d = cfg.hidden_size, kvd = cfg.kv_dim(), ff = cfg.intermediate_size, vocab = cfg.vocab_size;
  if (d % 128 != 0 || ff % 128 != 0) {
    throw ModelError("CudaLlama::synthetic: hidden and intermediate sizes must be multiples of 128");
  }
  constexpr int kGroup = 128;
  ff_dev = ff;
  vocab_dev = round_up(vocab, 8);
  uint64_t tensor = 0;  // each tensor its own stream of random values
  auto next_seed = [&] { return seed * 0x100000001B3ull + ++tensor; };
  auto half_tensor = [&](size_t n, float center, float amp, const std::string& what) {
    __half* p = alloc<__half>(n, what, &weight_bytes);
    check(cuda_detail::fill_random_half(p, n, next_seed(), center, amp, stream), "fill_random_half");
    return p;
  };
  // Nibbles uniform in 0..15 around zero point 8 with scales near 0.004: weights
  // of std ~0.018, about a trained 7B's, so activations stay in fp16 range.
  auto int4_tensor = [&](int n, int k, const std::string& what) {
    kc::Int4Weight w = alloc_int4(n, k, kGroup, what);
    check(cuda_detail::fill_random_u32(const_cast<uint32_t*>(w.packed), int4_layout::packed_words(n, k), next_seed(),
                                       stream),
          "fill_random_u32");
    check(cuda_detail::fill_random_sz(const_cast<uint32_t*>(w.sz), int4_layout::sz_words(n, k, kGroup), next_seed(),
                                      0.003f, 0.005f, 8, stream),
          "fill_random_sz");
    return w;
  };
  embed = half_tensor(static_cast<size_t>(vocab) * d, 0.0f, 0.05f, "embedding");
  layers.resize(cfg.num_hidden_layers);
  for (Layer& D : layers) {
    D.attn_norm = half_tensor(d, 1.0f, 0.1f, "attn_norm");
    D.ffn_norm = half_tensor(d, 1.0f, 0.1f, "ffn_norm");
    D.qkv = int4_tensor(d + 2 * kvd, d, "qkv_proj");
    D.o = int4_tensor(d, d, "o_proj");
    D.gate_up = int4_tensor(2 * ff, d, "gate_up_proj");
    D.down = int4_tensor(d, ff, "down_proj");
  }
  final_norm = half_tensor(d, 1.0f, 0.1f, "final_norm");
  lm_head = int4_tensor(vocab_dev, d, "lm_head");
  check(cudaStreamSynchronize(stream), "synthetic weights (synchronize)");
}

void CudaLlama::Impl::allocate_runtime(const LlamaConfig& cfg, const CudaBackendOptions& opts) {
  const int d = cfg.hidden_size, kvd = cfg.kv_dim();
  const size_t T = opts.max_tokens, S = opts.max_seqs;
  max_rows = opts.max_logit_rows > 0 ? std::min(opts.max_logit_rows, opts.max_tokens) : opts.max_tokens;
  const size_t R = max_rows;
  block_size = opts.kv_block_size;
  max_blocks_cap = (cfg.max_position_embeddings + opts.kv_block_size - 1) / opts.kv_block_size;

  block_elems = static_cast<size_t>(opts.kv_block_size) * kvd;
  pool_elems = static_cast<size_t>(opts.n_kv_blocks) * block_elems;
  kv = alloc<__half>(2 * static_cast<size_t>(cfg.num_hidden_layers) * pool_elems, "KV cache", &kv_bytes);
  // Zeroed once so that no byte of the pool is ever NaN garbage (attention never
  // reads past a sequence's context, but a debugger or a benchmark might).
  check(cudaMemsetAsync(kv, 0, kv_bytes, stream), "cudaMemsetAsync KV cache");

  x = alloc<__half>(T * d, "x", &buffer_bytes);
  h = alloc<__half>(T * d, "h", &buffer_bytes);
  qkv = alloc<__half>(T * (d + 2 * kvd), "qkv", &buffer_bytes);
  att = alloc<__half>(T * d, "att", &buffer_bytes);
  gate_up = alloc<__half>(T * 2 * ff_dev, "gate_up", &buffer_bytes);
  act = alloc<__half>(T * ff_dev, "act", &buffer_bytes);
  last = alloc<__half>(R * d, "last", &buffer_bytes);
  logits = alloc<float>(R * vocab_dev, "logits", &buffer_bytes);
  const kernels::AttnShape shape{cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim(),
                                 opts.kv_block_size};
  attn_ws_bytes = kc::attention_workspace_bytes(shape, opts.max_seqs, max_blocks_cap * opts.kv_block_size);
  attn_ws = alloc<unsigned char>(attn_ws_bytes, "attention workspace", &buffer_bytes);

  graph_cap = std::min({opts.max_seqs, opts.max_tokens, max_rows});
  at = CudaBatchLayout::make(opts.max_tokens, max_rows, opts.max_seqs);
  const size_t meta = at.tables + S * max_blocks_cap;  // int32 elements
  meta_dev = alloc<int32_t>(meta, "batch arrays", &buffer_bytes);
  check(cudaMallocHost(reinterpret_cast<void**>(&meta_host), meta * sizeof(int32_t)), "cudaMallocHost batch arrays");
  check(cudaStreamSynchronize(stream), "allocate (synchronize)");
}

// ---- CudaLlama -----------------------------------------------------------------------

CudaLlama::CudaLlama(LlamaConfig cfg, const CudaBackendOptions& opts) : cfg_(cfg), opts_(opts) {
  if (opts_.n_kv_blocks <= 0 || opts_.kv_block_size <= 0 || opts_.max_tokens <= 0 || opts_.max_seqs <= 0) {
    throw ModelError("CudaLlama: KV blocks, block size, max_tokens and max_seqs must be positive");
  }
  const int d = cfg_.hidden_size, nh = cfg_.num_attention_heads, nkv = cfg_.num_key_value_heads;
  if (d <= 0 || nh <= 0 || nkv <= 0 || d % nh != 0 || nh % nkv != 0 || cfg_.num_hidden_layers <= 0 ||
      cfg_.intermediate_size <= 0 || cfg_.vocab_size <= 0 || cfg_.max_position_embeddings <= 0) {
    throw ModelError("CudaLlama: inconsistent model config");
  }
  const int hd = cfg_.head_dim();
  if (d % 32 != 0) throw ModelError("CudaLlama: hidden_size must be a multiple of 32, is " + std::to_string(d));
  if (hd % 8 != 0 || hd > 256) {
    throw ModelError("CudaLlama: head_dim must be a multiple of 8 and at most 256, is " + std::to_string(hd));
  }
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    cudaGetLastError();  // clear the "no device" error
    throw ModelError(std::string("CudaLlama: no CUDA GPU present (") +
                     (e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount returned 0") + ")");
  }
  if (opts_.device < 0 || opts_.device >= count) {
    throw ModelError("CudaLlama: device " + std::to_string(opts_.device) + " not present (" + std::to_string(count) +
                     " GPUs)");
  }
  impl_ = std::make_unique<Impl>();
  impl_->device = opts_.device;
  check(cudaSetDevice(opts_.device), "cudaSetDevice");
  check(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking), "cudaStreamCreate");
  check(kc::prepare_device(), "prepare_device");
}

CudaLlama::CudaLlama(LlamaConfig cfg, LlamaWeights weights, const CudaBackendOptions& opts) : CudaLlama(cfg, opts) {
  impl_->upload(cfg_, weights);
  impl_->allocate_runtime(cfg_, opts_);
}

CudaLlama::~CudaLlama() = default;

std::unique_ptr<CudaLlama> CudaLlama::load(const std::string& model_dir, const CudaBackendOptions& opts,
                                           LoadOptions load) {
  load.format = WeightFormat::kInt4;
  LlamaConfig cfg = load_llama_config(model_dir);
  LlamaWeights w = load_llama_weights(cfg, model_dir, load);
  return std::make_unique<CudaLlama>(cfg, std::move(w), opts);
}

std::unique_ptr<CudaLlama> CudaLlama::synthetic(const LlamaConfig& cfg, const CudaBackendOptions& opts, uint64_t seed) {
  std::unique_ptr<CudaLlama> m(new CudaLlama(cfg, opts));
  m->impl_->fill_synthetic(m->cfg_, seed);
  m->impl_->allocate_runtime(m->cfg_, m->opts_);
  return m;
}

int CudaLlama::device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the "no device" error
    return 0;
  }
  return count;
}

size_t CudaLlama::weight_bytes() const { return impl_->weight_bytes; }
size_t CudaLlama::kv_bytes() const { return impl_->kv_bytes; }
size_t CudaLlama::buffer_bytes() const { return impl_->buffer_bytes; }

// The checks every backend makes, plus this backend's capacities.
void CudaLlama::validate(const Batch& batch, size_t logits_size) const {
  validate_batch(batch, cfg_, opts_.n_kv_blocks, opts_.kv_block_size, logits_size);
  const size_t rows = static_cast<size_t>(batch.n_logit_rows());
  const int n = batch.n_tokens();
  if (n > opts_.max_tokens || static_cast<int>(batch.seqs.size()) > opts_.max_seqs ||
      static_cast<int>(rows) > impl_->max_rows) {
    throw ModelError("batch of " + std::to_string(n) + " tokens, " + std::to_string(batch.seqs.size()) +
                     " sequences, " + std::to_string(rows) + " logit rows exceeds the CUDA backend's capacity (" +
                     std::to_string(opts_.max_tokens) + ", " + std::to_string(opts_.max_seqs) + ", " +
                     std::to_string(impl_->max_rows) + ")");
  }
}

void CudaLlama::forward(std::span<float> logits, const Batch& batch) {
  validate(batch, logits.size());
  Impl& m = *impl_;
  check(cudaSetDevice(m.device), "cudaSetDevice");  // the calling thread may not be the constructing one
  bool decode = opts_.cuda_graphs;
  for (const SeqSlice& sq : batch.seqs) decode = decode && sq.tokens.size() == 1;
  const int n_seqs = static_cast<int>(batch.seqs.size());
  // The previous step's upload has completed (forward ends with a stream
  // synchronize, also on failure), so the pinned block may be rewritten.
  const CudaStepShape s =
      decode ? flatten_batch(m.meta_host, m.at, batch, opts_.kv_block_size, m.max_blocks_cap,
                             cuda_graph_batch(n_seqs, m.graph_cap))
             : flatten_batch(m.meta_host, m.at, batch, opts_.kv_block_size, 0, 0);
  try {
    const cudaGraphExec_t graph = decode ? m.decode_graph(cfg_, s.n_seqs).exec : nullptr;  // captured at first use
    check(cudaMemcpyAsync(m.meta_dev, m.meta_host, s.elems * sizeof(int32_t), cudaMemcpyHostToDevice, m.stream),
          "cudaMemcpyAsync batch arrays");
    if (decode) {
      check(cudaGraphLaunch(graph, m.stream), "cudaGraphLaunch decode");
    } else {
      m.enqueue_step(cfg_, s);
    }
    // Real rows only: they come first, padding rows after them.
    const int vocab = cfg_.vocab_size, rows = batch.n_logit_rows();
    check(cudaMemcpy2DAsync(logits.data(), vocab * sizeof(float), m.logits, m.vocab_dev * sizeof(float),
                            vocab * sizeof(float), rows, cudaMemcpyDeviceToHost, m.stream),
          "cudaMemcpy2DAsync logits");
    check(cudaStreamSynchronize(m.stream), "forward (cudaStreamSynchronize)");
  } catch (...) {
    // Work queued before the failure may still read the pinned batch block,
    // which the next forward rewrites: let it drain (its own error, if any, is
    // the one already being reported).
    cudaStreamSynchronize(m.stream);
    cudaGetLastError();
    throw;
  }
}

int CudaLlama::decode_step_kernels(int n_seqs) {
  if (n_seqs < 1 || n_seqs > impl_->graph_cap) {
    throw ModelError("decode_step_kernels: " + std::to_string(n_seqs) + " sequences outside [1, " +
                     std::to_string(impl_->graph_cap) + "]");
  }
  check(cudaSetDevice(impl_->device), "cudaSetDevice");
  return impl_->decode_graph(cfg_, cuda_graph_batch(n_seqs, impl_->graph_cap)).nodes;
}

void CudaLlama::Impl::enqueue_step(const LlamaConfig& cfg, const CudaStepShape& s) {
  const int d = cfg.hidden_size, kvd = cfg.kv_dim(), n = s.n_tokens;
  const float eps = cfg.rms_norm_eps;
  const int32_t* d_tokens = meta_dev;
  const int32_t* d_positions = meta_dev + at.positions;
  const int32_t* d_slots = meta_dev + at.slots;
  const int32_t* d_rows = meta_dev + at.rows;
  const kernels::PagedBatch paged{s.n_seqs, meta_dev + at.q_start, meta_dev + at.ctx, meta_dev + at.tables,
                                  s.table_stride};
  const kc::AttnDims dims{n, s.max_q_len, s.max_ctx};
  const kernels::AttnShape shape{cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim(), block_size};
  const kernels::RopeParams rope{cfg.head_dim(), cfg.rope_theta};
  const int64_t qkv_ld = d + 2 * kvd;  // fused QKV row: [q | k | v]

  check(kc::embedding(x, embed, d_tokens, n, d, stream), "embedding");
  check(kc::rmsnorm(h, x, layers[0].attn_norm, n, d, eps, stream), "rmsnorm", 0);
  const int n_layers = static_cast<int>(layers.size());
  for (int l = 0; l < n_layers; ++l) {
    const Layer& L = layers[l];
    __half* k_cache = kv + (2 * static_cast<size_t>(l)) * pool_elems;  // [n_blocks, bs, n_kv_heads, hd]
    __half* v_cache = k_cache + pool_elems;
    check(kc::int4_matmul(qkv, h, L.qkv, n, stream), "int4_matmul qkv", l);
    check(kc::rope_kv_write(qkv, k_cache, v_cache, qkv + d, qkv + d + kvd, d_positions, d_slots, n, qkv_ld, qkv_ld,
                            shape, rope, stream),
          "rope_kv_write", l);
    check(kc::attention(att, qkv, qkv_ld, k_cache, v_cache, paged, shape, dims, attn_ws, attn_ws_bytes, stream),
          "attention", l);
    check(kc::int4_matmul(h, att, L.o, n, stream), "int4_matmul o", l);
    check(kc::add_rmsnorm(h, x, h, L.ffn_norm, n, d, eps, stream), "add_rmsnorm attn", l);
    check(kc::int4_matmul(gate_up, h, L.gate_up, n, stream), "int4_matmul gate_up", l);
    check(kc::swiglu_fused(act, gate_up, n, ff_dev, stream), "swiglu_fused", l);
    check(kc::int4_matmul(h, act, L.down, n, stream), "int4_matmul down", l);
    // x += down; h = norm(x) with the next layer's input norm, or the final norm.
    const __half* next_norm = l + 1 < n_layers ? layers[l + 1].attn_norm : final_norm;
    check(kc::add_rmsnorm(h, x, h, next_norm, n, d, eps, stream), "add_rmsnorm ffn", l);
  }
  // Only the rows that need logits go through lm_head (a gather of h's rows),
  // which writes fp32: fp16 logits would flip near-tie greedy choices.
  check(kc::embedding(last, h, d_rows, s.n_rows, d, stream), "gather logit rows");
  check(kc::int4_matmul(logits, last, lm_head, s.n_rows, stream), "int4_matmul lm_head");
}

const CudaLlama::Impl::DecodeGraph& CudaLlama::Impl::decode_graph(const LlamaConfig& cfg, int size) {
  if (const auto it = graphs.find(size); it != graphs.end()) return it->second;
  // The launch shape of every decode step padded to `size` (flatten_batch's
  // graph form): only the sizes matter here, not the values.
  CudaStepShape s;
  s.n_tokens = s.n_seqs = s.n_rows = size;
  s.table_stride = max_blocks_cap;
  s.max_q_len = 1;
  s.max_ctx = max_blocks_cap * block_size;
  check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  cudaGraph_t graph = nullptr;
  try {
    enqueue_step(cfg, s);
  } catch (const ModelError&) {
    cudaStreamEndCapture(stream, &graph);  // leaves capture mode; the partial graph is dropped
    if (graph != nullptr) cudaGraphDestroy(graph);
    throw;
  }
  check(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
  DecodeGraph g;
  size_t nodes = 0;
  cudaError_t e = cudaGraphGetNodes(graph, nullptr, &nodes);
  if (e == cudaSuccess) e = cudaGraphInstantiate(&g.exec, graph, 0);
  cudaGraphDestroy(graph);
  check(e, "cudaGraphInstantiate");
  g.nodes = static_cast<int>(nodes);
  return graphs.emplace(size, g).first->second;
}

// ---- per-step batch arrays ---------------------------------------------------------

CudaBatchLayout CudaBatchLayout::make(int max_tokens, int max_rows, int max_seqs) {
  const size_t T = max_tokens, R = max_rows, S = max_seqs;
  CudaBatchLayout at;
  at.positions = T;  // tokens at 0
  at.slots = 2 * T;
  at.rows = 3 * T;
  at.q_start = 3 * T + R;
  at.ctx = at.q_start + S + 1;
  at.tables = at.ctx + S;
  return at;
}

CudaStepShape flatten_batch(int32_t* meta, const CudaBatchLayout& at, const Batch& batch, int block_size,
                            int table_stride, int pad_to) {
  int32_t* tokens = meta;                    // [n]
  int32_t* positions = meta + at.positions;  // [n]
  int32_t* slots = meta + at.slots;          // [n] block · block_size + offset
  int32_t* row_ids = meta + at.rows;         // [rows] token rows that get logits
  int32_t* q_start = meta + at.q_start;      // [n_seqs + 1]
  int32_t* ctx_len = meta + at.ctx;          // [n_seqs]
  int32_t* tables = meta + at.tables;        // [n_seqs, table_stride]
  const int n_real = static_cast<int>(batch.seqs.size());
  CudaStepShape s;
  s.n_seqs = std::max(n_real, pad_to);
  int max_blocks = 1;
  for (const SeqSlice& sq : batch.seqs) {
    const int end = sq.start_pos + static_cast<int>(sq.tokens.size());
    max_blocks = std::max(max_blocks, (end + block_size - 1) / block_size);  // the blocks the step can touch
    s.max_q_len = std::max(s.max_q_len, static_cast<int>(sq.tokens.size()));
    s.max_ctx = std::max(s.max_ctx, end);
  }
  s.table_stride = pad_to > 0 ? table_stride : max_blocks;
  if (pad_to > 0) s.max_ctx = table_stride * block_size;  // the grid must not depend on the batch
  int row = 0;
  for (int i = 0; i < n_real; ++i) {
    const SeqSlice& sq = batch.seqs[i];
    q_start[i] = row;
    for (size_t j = 0; j < sq.tokens.size(); ++j, ++row) {
      const int pos = sq.start_pos + static_cast<int>(j);
      tokens[row] = sq.tokens[j];
      positions[row] = pos;
      slots[row] = sq.blocks[pos / block_size] * block_size + pos % block_size;
      if (sq.all_logits || j + 1 == sq.tokens.size()) row_ids[s.n_rows++] = row;
    }
    ctx_len[i] = sq.start_pos + static_cast<int>(sq.tokens.size());
    const int used = (ctx_len[i] + block_size - 1) / block_size;
    int32_t* trow = tables + static_cast<size_t>(i) * s.table_stride;
    std::copy_n(sq.blocks.begin(), used, trow);
    std::fill(trow + used, trow + s.table_stride, 0);
  }
  s.n_tokens = row;
  for (int i = n_real; i < s.n_seqs; ++i, ++s.n_tokens) {  // padding: one empty sequence, one inert row each
    q_start[i] = row;
    ctx_len[i] = 0;
    std::fill_n(tables + static_cast<size_t>(i) * s.table_stride, s.table_stride, 0);
    tokens[s.n_tokens] = 0;
    positions[s.n_tokens] = 0;
    slots[s.n_tokens] = -1;
    row_ids[s.n_rows++] = s.n_tokens;
  }
  q_start[s.n_seqs] = row;
  s.elems = at.tables + static_cast<size_t>(s.n_seqs) * s.table_stride;
  return s;
}

int cuda_graph_batch(int n_seqs, int cap) {
  int p = 1;
  while (p < n_seqs) p *= 2;
  return std::min(p, cap);
}

void CudaLlama::copy_kv_block(int dst, int src) {
  if (dst < 0 || src < 0 || dst >= opts_.n_kv_blocks || src >= opts_.n_kv_blocks) {
    throw ModelError("copy_kv_block: block id out of range");
  }
  if (dst == src) return;
  Impl& m = *impl_;
  check(cudaSetDevice(m.device), "cudaSetDevice");
  const size_t bytes = m.block_elems * sizeof(__half);
  for (size_t pool = 0; pool < 2 * m.layers.size(); ++pool) {  // K and V of every layer
    __half* base = m.kv + pool * m.pool_elems;
    check(cudaMemcpyAsync(base + static_cast<size_t>(dst) * m.block_elems,
                          base + static_cast<size_t>(src) * m.block_elems, bytes, cudaMemcpyDeviceToDevice, m.stream),
          "copy_kv_block (cudaMemcpyAsync)");
  }
}

}  // namespace chatradio::model
