// GPU kernel benchmarks: int4 GEMV bandwidth against the measured device copy
// bandwidth, int4 GEMM TFLOP/s against cuBLAS fp16 (M = 1..256 and 1024), paged
// attention decode and prefill times, RMSNorm / add+RMSNorm bandwidth, at
// Llama-2-7B shapes. Usage: bench_kernels OUT.json
//
// Method (docs/cuda.md): inputs are random (never zeros), weights rotate over
// enough copies to exceed L2, every figure is the median of 7 timed repetitions
// (CUDA events around a batch of launches) after a warm-up. OUT.json is
// rewritten after every section, so a run cut short keeps what it measured.
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_ops.h"

namespace {

namespace cuda = chatradio::kernels::cuda;
namespace int4_layout = chatradio::kernels::cuda::int4_layout;
using chatradio::kernels::AttnShape;
using chatradio::kernels::PagedBatch;

#define CK(call)                                                                                 \
  do {                                                                                           \
    const cudaError_t e_ = (call);                                                               \
    if (e_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

// Device memory freed at scope exit.
struct Dev {
  void* p = nullptr;
  explicit Dev(size_t bytes) { CK(cudaMalloc(&p, std::max<size_t>(bytes, 256))); }
  ~Dev() { cudaFree(p); }
  template <class T>
  T* as() const { return static_cast<T*>(p); }
};

__device__ uint32_t hash32(uint64_t i, uint32_t seed) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull + seed;
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return static_cast<uint32_t>(x);
}
// Uniform-ish fp16 values in [-scale, scale).
__global__ void fill_half(__half* p, size_t n, uint32_t seed, float scale) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    p[i] = __float2half(scale * (static_cast<float>(hash32(i, seed) >> 8) / 8388608.0f - 1.0f));
}
__global__ void fill_u32(uint32_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    p[i] = hash32(i, seed);
}
// sz words: scale in [0.002, 0.02), zero 1..16 (as 1024 + zero).
__global__ void fill_sz(uint32_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const uint32_t h = hash32(i, seed);
    const __half s = __float2half(0.002f + 0.018f * static_cast<float>(h >> 16) / 65536.0f);
    p[i] = static_cast<uint32_t>(__half_as_ushort(s)) | ((0x6400u + 1u + (h & 15u)) << 16);
  }
}
void fill(__half* p, size_t n, uint32_t seed, float scale = 1.0f) {
  fill_half<<<1024, 256>>>(p, n, seed, scale);
  CK(cudaGetLastError());
}

// Median milliseconds per call of fn over 7 repetitions of `iters` calls.
double time_ms(const std::function<void(int)>& fn, int iters) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) fn(i);
  CK(cudaDeviceSynchronize());
  std::vector<double> t;
  int call = 0;
  for (int r = 0; r < 7; ++r) {
    CK(cudaEventRecord(a));
    for (int i = 0; i < iters; ++i) fn(call++);
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms = 0.0f;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms / iters);
  }
  CK(cudaGetLastError());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct Json {
  std::ostringstream os;
  bool first = true;
  void item(const std::string& s) {
    os << (first ? "" : ",\n    ") << s;
    first = false;
  }
};
std::string num(double v) {
  std::ostringstream os;
  os.precision(6);
  os << (std::isfinite(v) ? v : -1.0);
  return os.str();
}

// A set of rotating int4 weight copies (so the GEMV streams from HBM, not L2).
struct Int4Set {
  int n, k, group = 128;
  int copies;
  std::unique_ptr<Dev> packed, sz;
  size_t pw, zw;
  Int4Set(int n_, int k_, size_t min_bytes) : n(n_), k(k_) {
    pw = int4_layout::packed_words(n, k);
    zw = int4_layout::sz_words(n, k, group);
    copies = static_cast<int>(std::max<size_t>(2, (min_bytes + pw * 4 - 1) / (pw * 4)));
    packed = std::make_unique<Dev>(pw * 4 * copies);
    sz = std::make_unique<Dev>(zw * 4 * copies);
    fill_u32<<<1024, 256>>>(packed->as<uint32_t>(), pw * copies, 17u + n);
    fill_sz<<<1024, 256>>>(sz->as<uint32_t>(), zw * copies, 29u + k);
    CK(cudaGetLastError());
  }
  cuda::Int4Weight w(int i) const {
    return {packed->as<uint32_t>() + pw * (i % copies), sz->as<uint32_t>() + zw * (i % copies), n, k, group};
  }
  double bytes() const { return 4.0 * (pw + zw); }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s OUT.json\n", argv[0]);
    return 2;
  }
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
    FILE* out = std::fopen(argv[1], "w");
    if (out == nullptr) {
      std::perror(argv[1]);
      return 2;
    }
    std::fprintf(out, "{\"error\": \"no CUDA GPU present\"}\n");
    std::fclose(out);
    std::puts("no CUDA GPU present: nothing measured");
    return 0;
  }
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  CK(cuda::prepare_device());
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  const size_t l2_flush = std::max<size_t>(4 * static_cast<size_t>(prop.l2CacheSize), 256u << 20);

  // ---- copy bandwidth (bytes read + written) ----
  double copy_gbs = 0.0;
  {
    const size_t bytes = 1ull << 30;
    Dev a(bytes), b(bytes);
    CK(cudaMemset(a.p, 1, bytes));
    const double ms = time_ms([&](int) { CK(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice)); }, 5);
    copy_gbs = 2.0 * bytes / (ms * 1e6);
    std::printf("copy: %.0f GB/s (read + write)\n", copy_gbs);
  }

  Json gemv, gemm, attn, norms;
  // Everything measured so far, as OUT.json (called after each section).
  auto write_json = [&](bool complete) {
    FILE* f = std::fopen(argv[1], "w");
    if (f == nullptr) return;
    std::fprintf(f,
                 "{\n  \"device\": \"%s\", \"sms\": %d, \"l2_mb\": %d, \"complete\": %s,\n  \"copy_gb_per_s\": %s,\n"
                 "  \"int4_gemv\": [\n    %s\n  ],\n  \"int4_gemm_vs_cublas\": [\n    %s\n  ],\n"
                 "  \"attention\": [\n    %s\n  ],\n  \"norms\": [\n    %s\n  ]\n}\n",
                 prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, complete ? "true" : "false",
                 num(copy_gbs).c_str(), gemv.os.str().c_str(), gemm.os.str().c_str(), attn.os.str().c_str(),
                 norms.os.str().c_str());
    std::fclose(f);
  };
  write_json(false);
  cublasHandle_t blas;
  if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS) return 1;

  // ---- int4 GEMV at decode shapes (fused QKV, O, fused gate|up, down) ----
  const int shapes[][2] = {{12288, 4096}, {4096, 4096}, {22016, 4096}, {4096, 11008}};
  for (const auto& s : shapes) {
    const Int4Set set(s[0], s[1], l2_flush);
    for (int m : {1, 4, 16}) {
      Dev x(static_cast<size_t>(m) * s[1] * 2), y(static_cast<size_t>(m) * s[0] * 2);
      fill(x.as<__half>(), static_cast<size_t>(m) * s[1], 5);
      const double ms = time_ms(
          [&](int i) { CK(cuda::int4_gemv(y.as<__half>(), x.as<__half>(), set.w(i), m, nullptr)); }, 20);
      const double gbs = (set.bytes() + 2.0 * m * (s[0] + s[1])) / (ms * 1e6);
      std::printf("gemv n %5d k %5d m %2d: %8.2f us  %7.0f GB/s  %5.1f%% of copy\n", s[0], s[1], m, ms * 1e3, gbs,
                  100.0 * gbs / copy_gbs);
      gemv.item("{\"n\": " + std::to_string(s[0]) + ", \"k\": " + std::to_string(s[1]) + ", \"m\": " +
                std::to_string(m) + ", \"us\": " + num(ms * 1e3) + ", \"gb_per_s\": " + num(gbs) +
                ", \"pct_of_copy\": " + num(100.0 * gbs / copy_gbs) + "}");
    }
  }
  write_json(false);

  // ---- int4 GEMM (int4_matmul) vs cuBLAS fp16 ----
  const int gshapes[][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
  for (const auto& s : gshapes) {
    const int n = s[0], k = s[1];
    const Int4Set set(n, k, l2_flush);
    Dev w16(static_cast<size_t>(n) * k * 2);
    fill(w16.as<__half>(), static_cast<size_t>(n) * k, 3, 0.05f);
    for (int m : {1, 2, 4, 8, 16, 32, 64, 128, 256, 1024}) {
      Dev x(static_cast<size_t>(m) * k * 2), y(static_cast<size_t>(m) * n * 2);
      fill(x.as<__half>(), static_cast<size_t>(m) * k, 9);
      const int iters = m >= 256 ? 10 : 20;
      const double ms = time_ms(
          [&](int i) { CK(cuda::int4_matmul(y.as<__half>(), x.as<__half>(), set.w(i), m, nullptr)); }, iters);
      const float alpha = 1.0f, beta = 0.0f;
      const double ms_blas = time_ms(
          [&](int) {
            const cublasStatus_t st =
                cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w16.p, CUDA_R_16F, k, x.p, CUDA_R_16F, k,
                             &beta, y.p, CUDA_R_16F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
            if (st != CUBLAS_STATUS_SUCCESS) std::exit(1);
          },
          iters);
      const double flop = 2.0 * m * n * k;
      std::printf("gemm n %5d k %5d m %4d: int4 %8.2f us %6.1f TF/s | cublas fp16 %8.2f us %6.1f TF/s\n", n, k, m,
                  ms * 1e3, flop / (ms * 1e9), ms_blas * 1e3, flop / (ms_blas * 1e9));
      gemm.item("{\"n\": " + std::to_string(n) + ", \"k\": " + std::to_string(k) + ", \"m\": " + std::to_string(m) +
                ", \"int4_us\": " + num(ms * 1e3) + ", \"int4_tflops\": " + num(flop / (ms * 1e9)) +
                ", \"cublas_fp16_us\": " + num(ms_blas * 1e3) + ", \"cublas_tflops\": " + num(flop / (ms_blas * 1e9)) +
                ", \"path\": \"" + (m <= int4_layout::kGemvMaxM ? "gemv" : "gemm") + "\"}");
    }
    write_json(false);
  }

  // ---- attention (Llama-2-7B: 32 heads, head_dim 128, block 16) ----
  const AttnShape sh{32, 32, 128, 16};
  const int width = sh.n_heads * sh.head_dim;
  auto run_attn = [&](int n_seqs, int n_new, int ctx, const char* kind) {
    const int bps = (ctx + sh.block_size - 1) / sh.block_size;
    const size_t n_blocks = static_cast<size_t>(n_seqs) * bps;
    const size_t cache = n_blocks * sh.block_size * sh.n_kv_heads * sh.head_dim;
    Dev kc(cache * 2), vc(cache * 2), q(static_cast<size_t>(n_seqs) * n_new * width * 2),
        o(static_cast<size_t>(n_seqs) * n_new * width * 2);
    fill(kc.as<__half>(), cache, 1);
    fill(vc.as<__half>(), cache, 2);
    fill(q.as<__half>(), static_cast<size_t>(n_seqs) * n_new * width, 3);
    std::vector<int32_t> qs(n_seqs + 1), cl(n_seqs, ctx), tab(n_blocks);
    for (int i = 0; i <= n_seqs; ++i) qs[i] = i * n_new;
    for (size_t i = 0; i < n_blocks; ++i) tab[i] = static_cast<int32_t>((i * 7919) % n_blocks);  // scattered pages
    Dev d_qs(qs.size() * 4), d_cl(cl.size() * 4), d_tab(tab.size() * 4);
    CK(cudaMemcpy(d_qs.p, qs.data(), qs.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_cl.p, cl.data(), cl.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_tab.p, tab.data(), tab.size() * 4, cudaMemcpyHostToDevice));
    const PagedBatch b{n_seqs, d_qs.as<int32_t>(), d_cl.as<int32_t>(), d_tab.as<int32_t>(), bps};
    const cuda::AttnDims dims{n_seqs * n_new, n_new, ctx};
    const size_t ws = cuda::attention_workspace_bytes(sh, n_seqs, ctx);
    Dev d_ws(ws);
    const double ms = time_ms(
        [&](int) {
          CK(cuda::attention(o.as<__half>(), q.as<__half>(), width, kc.as<__half>(), vc.as<__half>(), b, sh, dims,
                             d_ws.p, ws, nullptr));
        },
        10);
    const double kv_bytes = 2.0 * n_seqs * ctx * sh.n_kv_heads * sh.head_dim * 2;
    // Causal pairs: each of the n_new rows sees ctx - n_new + j + 1 keys.
    const double pairs = static_cast<double>(n_seqs) * n_new * (ctx - n_new) + n_seqs * 0.5 * n_new * (n_new + 1.0);
    const double flop = 4.0 * pairs * sh.n_heads * sh.head_dim;
    std::printf("attention %-7s seqs %3d new %5d ctx %5d: %9.2f us  KV %6.0f GB/s  %6.1f TF/s\n", kind, n_seqs, n_new,
                ctx, ms * 1e3, kv_bytes / (ms * 1e6), flop / (ms * 1e9));
    attn.item(std::string("{\"kind\": \"") + kind + "\", \"seqs\": " + std::to_string(n_seqs) + ", \"new\": " +
              std::to_string(n_new) + ", \"ctx\": " + std::to_string(ctx) + ", \"us\": " + num(ms * 1e3) +
              ", \"kv_gb_per_s\": " + num(kv_bytes / (ms * 1e6)) + ", \"tflops\": " + num(flop / (ms * 1e9)) + "}");
  };
  for (int seqs : {1, 16, 64})
    for (int ctx : {512, 2048, 4096}) run_attn(seqs, 1, ctx, "decode");
  for (int ctx : {512, 2048}) run_attn(1, ctx, ctx, "prefill");
  run_attn(8, 512, 512, "prefill");
  cublasDestroy(blas);
  write_json(false);

  // ---- RMSNorm and the residual add + RMSNorm (hidden 4096) ----
  for (int rows : {1, 64, 512}) {
    const int dim = 4096;
    const size_t n = static_cast<size_t>(rows) * dim;
    Dev x(n * 2), res(n * 2), y(n * 2), wn(dim * 2);
    fill(x.as<__half>(), n, 11);
    fill(res.as<__half>(), n, 12);
    fill(wn.as<__half>(), dim, 13);
    const double ms_norm = time_ms(
        [&](int) { CK(cuda::rmsnorm(y.as<__half>(), x.as<__half>(), wn.as<__half>(), rows, dim, 1e-5f, nullptr)); },
        50);
    // add_rmsnorm grows the residual every call: refresh-free is fine for timing
    // (fp16 saturates to inf at worst, which costs the same).
    const double ms_add = time_ms(
        [&](int) {
          CK(cuda::add_rmsnorm(y.as<__half>(), res.as<__half>(), x.as<__half>(), wn.as<__half>(), rows, dim, 1e-5f,
                               nullptr));
        },
        50);
    const double bytes_norm = 2.0 * 2 * n, bytes_add = 2.0 * 4 * n;  // x, y | x, res in + out, y
    std::printf("rmsnorm rows %3d: %7.2f us %6.0f GB/s | add_rmsnorm %7.2f us %6.0f GB/s\n", rows, ms_norm * 1e3,
                bytes_norm / (ms_norm * 1e6), ms_add * 1e3, bytes_add / (ms_add * 1e6));
    norms.item("{\"rows\": " + std::to_string(rows) + ", \"dim\": " + std::to_string(dim) +
               ", \"rmsnorm_us\": " + num(ms_norm * 1e3) + ", \"rmsnorm_gb_per_s\": " +
               num(bytes_norm / (ms_norm * 1e6)) + ", \"add_rmsnorm_us\": " + num(ms_add * 1e3) +
               ", \"add_rmsnorm_gb_per_s\": " + num(bytes_add / (ms_add * 1e6)) + "}");
  }
  write_json(true);
  return 0;
}
