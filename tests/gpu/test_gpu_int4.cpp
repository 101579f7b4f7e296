// int4 GPTQ weights: the host repack (checked without a GPU by emulating the
// kernels' register-level dataflow on the host), and the GEMV/GEMM against the
// CPU float matmul on the dequantised weights and against cuBLAS fp16 GEMM, at
// Llama-2-7B, stories-sized and odd shapes; plus batch invariance for M = 1..64.
#include <cublas_v2.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/int4_layout.h"
#include "tests/gpu/gpu_test_util.h"

namespace chatradio::gpu_test {
namespace {

namespace cuda = kernels::cuda;
namespace int4_layout = kernels::cuda::int4_layout;

// A random GPTQ v1 tensor set and its dequantisation W[n, k] (HF layout), each
// weight exactly fp16(scale · (q − (stored_zero + 1))) as the kernels produce it.
struct Gptq {
  int n, k, group;
  std::vector<int32_t> qweight, qzeros;
  std::vector<uint16_t> scales;
  std::vector<float> w;  // [n, k]

  Gptq(int n_, int k_, int group_, uint32_t seed) : n(n_), k(k_), group(group_) {
    std::mt19937 g(seed);
    qweight.resize(static_cast<size_t>(k / 8) * n);
    qzeros.resize(static_cast<size_t>(k / group) * (n / 8));
    scales.resize(static_cast<size_t>(k / group) * n);
    for (int32_t& v : qweight) v = static_cast<int32_t>(g());
    for (int32_t& v : qzeros) v = static_cast<int32_t>(g());
    std::uniform_real_distribution<float> sd(0.002f, 0.02f);
    for (uint16_t& s : scales) s = float_to_half(sd(g));
    w.resize(static_cast<size_t>(n) * k);
    for (int kk = 0; kk < k; ++kk) {
      for (int col = 0; col < n; ++col) {
        const int gi = kk / group;
        const uint32_t word = static_cast<uint32_t>(qweight[static_cast<size_t>(kk / 8) * n + col]);
        const uint32_t q = (word >> (4 * (kk % 8))) & 15u;
        const uint32_t z =
            ((static_cast<uint32_t>(qzeros[static_cast<size_t>(gi) * (n / 8) + col / 8]) >> (4 * (col % 8))) & 15u) + 1;
        const float s = half_to_float(scales[static_cast<size_t>(gi) * n + col]);
        w[static_cast<size_t>(col) * k + kk] = round_half(s * (static_cast<float>(q) - static_cast<float>(z)));
      }
    }
  }
  void repack(std::vector<uint32_t>& packed, std::vector<uint32_t>& sz) const {
    packed.assign(int4_layout::packed_words(n, k), 0xDEADBEEFu);
    sz.assign(int4_layout::sz_words(n, k, group), 0xDEADBEEFu);
    if (cuda::int4_repack_gptq(packed.data(), sz.data(), qweight.data(), qzeros.data(), scales.data(), nullptr, k, n,
                               group) != cudaSuccess)
      throw std::runtime_error("int4_repack_gptq rejected a valid shape");
  }
};

// ---- host emulation of the kernels' dataflow (no GPU needed) --------------------------

// dequant_pair<j> (int4_mma.cuh) on the host: both halves of the half2.
void dequant_pair_host(float (&out)[2], uint32_t w, int j, uint32_t szw) {
  const uint32_t v = ((w >> (4 * j)) & 0x000F000Fu) | 0x64006400u;
  const float s = half_to_float(static_cast<uint16_t>(szw & 0xffffu));
  const float z = half_to_float(static_cast<uint16_t>(szw >> 16));
  out[0] = round_half((half_to_float(static_cast<uint16_t>(v & 0xffffu)) - z) * s);
  out[1] = round_half((half_to_float(static_cast<uint16_t>(v >> 16)) - z) * s);
}

// What int4_gemv_kernel computes, lane by lane: the words each lane loads, the
// mma_quarter register choice, and mma.sync m16n8k16's fragment layout (PTX ISA:
// a0..a3 = (row g | g+8, k 2t | 8+2t), b0 = (k 2t, col g), b1 = (k 8+2t, col g)),
// summed in double. Agreement with a plain matmul proves the layout algebra.
std::vector<double> emulate_int4(const std::vector<float>& x, const std::vector<uint32_t>& packed,
                                 const std::vector<uint32_t>& sz, int m, int n, int k, int group) {
  const int kc = int4_layout::n_chunks(k);
  std::vector<double> out(static_cast<size_t>(m) * n, 0.0);
  auto xval = [&](int row, int kk) { return row < m && kk < k ? x[static_cast<size_t>(row) * k + kk] : 0.0f; };
  for (int un = 0; un < n / 8; ++un) {
    for (int uk = 0; uk < kc; ++uk) {
      for (int q = 0; q < 4; ++q) {
        float alo[32][8], ahi[32][8], b[32][4][2];  // per lane: 8 activations of rows g, g+8; 4 B half2
        for (int lane = 0; lane < 32; ++lane) {
          const int g = lane / 4, t = lane % 4;
          const int kk = uk * int4_layout::kUnitK + int4_layout::k_in_unit(t, q, 0);
          for (int o = 0; o < 8; ++o) {
            alo[lane][o] = xval(g, kk + o);
            ahi[lane][o] = xval(g + 8, kk + o);
          }
          const uint32_t w = packed[int4_layout::word_index(un, uk, kc, lane, q)];
          const uint32_t szw = sz[static_cast<size_t>(int4_layout::group_of(uk, q, group)) * n + un * 8 + g];
          for (int j = 0; j < 4; ++j) dequant_pair_host(b[lane][j], w, j, szw);
        }
        for (int h = 0; h < 2; ++h) {  // the two mma.sync of mma_quarter
          float A[16][16], B[16][8];
          for (int lane = 0; lane < 32; ++lane) {
            const int g = lane / 4, t = lane % 4;
            for (int e = 0; e < 2; ++e) {
              A[g][2 * t + e] = alo[lane][4 * h + e];          // a0: word 2h of a_lo
              A[g + 8][2 * t + e] = ahi[lane][4 * h + e];      // a1: word 2h of a_hi
              A[g][8 + 2 * t + e] = alo[lane][4 * h + 2 + e];  // a2: word 2h+1 of a_lo
              A[g + 8][8 + 2 * t + e] = ahi[lane][4 * h + 2 + e];
              B[2 * t + e][g] = b[lane][2 * h][e];          // b0 = dequant_pair<2h>
              B[8 + 2 * t + e][g] = b[lane][2 * h + 1][e];  // b1 = dequant_pair<2h+1>
            }
          }
          for (int r = 0; r < m && r < 16; ++r)
            for (int c = 0; c < 8; ++c) {
              double s = 0.0;
              for (int kk = 0; kk < 16; ++kk) s += double(A[r][kk]) * B[kk][c];
              out[static_cast<size_t>(r) * n + un * 8 + c] += s;
            }
        }
      }
    }
  }
  return out;
}

std::vector<double> matmul_double(const std::vector<float>& x, const std::vector<float>& w, int m, int n, int k) {
  std::vector<double> out(static_cast<size_t>(m) * n);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double s = 0.0;
      for (int p = 0; p < k; ++p) s += double(x[static_cast<size_t>(i) * k + p]) * w[static_cast<size_t>(j) * k + p];
      out[static_cast<size_t>(i) * n + j] = s;
    }
  return out;
}

TEST(Int4LayoutHost, RepackPlusKernelDataflowEqualsDequantisedMatmul) {
  struct Shape { int n, k, group, m; };
  for (const Shape s : {Shape{64, 384, 128, 16}, {24, 96, 32, 5}, {136, 320, 64, 1}, {8, 128, 32, 9}}) {
    const Gptq gq(s.n, s.k, s.group, 1000 + s.k);
    std::vector<uint32_t> packed, sz;
    gq.repack(packed, sz);
    const auto x = randn_h(static_cast<size_t>(s.m) * s.k, s.n);
    const auto got = emulate_int4(x, packed, sz, s.m, s.n, s.k, s.group);
    const auto want = matmul_double(x, gq.w, s.m, s.n, s.k);
    double worst = 0.0;
    for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::fabs(got[i] - want[i]));
    EXPECT_LT(worst, 1e-9) << "n " << s.n << " k " << s.k << " group " << s.group;
  }
}

TEST(Int4LayoutHost, RepackRejectsUnrepresentableShapes) {
  std::vector<uint32_t> p(4096), z(4096);
  std::vector<int32_t> qw(4096), qz(4096);
  std::vector<uint16_t> sc(4096);
  EXPECT_EQ(cuda::int4_repack_gptq(p.data(), z.data(), qw.data(), qz.data(), sc.data(), nullptr, 128, 12, 128),
            cudaErrorInvalidValue);  // n % 8
  EXPECT_EQ(cuda::int4_repack_gptq(p.data(), z.data(), qw.data(), qz.data(), sc.data(), nullptr, 96, 8, 64),
            cudaErrorInvalidValue);  // k % group
  EXPECT_EQ(cuda::int4_repack_gptq(p.data(), z.data(), qw.data(), qz.data(), sc.data(), nullptr, 128, 8, 16),
            cudaErrorInvalidValue);  // group
}

// g_idx: a sequential one (i / group, what a desc_act=false checkpoint may
// carry) repacks exactly as none; an act-order one is refused, never silently
// dequantised with the wrong groups' scales.
TEST(Int4LayoutHost, RepackRefusesActOrderGidx) {
  const Gptq gq(16, 256, 64, 3);
  std::vector<uint32_t> p0, z0;
  gq.repack(p0, z0);
  std::vector<int32_t> g_idx(gq.k);
  for (int i = 0; i < gq.k; ++i) g_idx[i] = i / gq.group;
  std::vector<uint32_t> p(p0.size()), z(z0.size());
  ASSERT_EQ(cuda::int4_repack_gptq(p.data(), z.data(), gq.qweight.data(), gq.qzeros.data(), gq.scales.data(),
                                   g_idx.data(), gq.k, gq.n, gq.group),
            cudaSuccess);
  EXPECT_TRUE(p == p0 && z == z0);
  std::swap(g_idx[5], g_idx[200]);  // two inputs of groups 0 and 3 trade places: act-order
  EXPECT_EQ(cuda::int4_repack_gptq(p.data(), z.data(), gq.qweight.data(), gq.qzeros.data(), gq.scales.data(),
                                   g_idx.data(), gq.k, gq.n, gq.group),
            cudaErrorInvalidValue);
}

// ---- on the GPU ------------------------------------------------------------------------------

struct DevWeight {
  DevBuf<uint32_t> packed, sz;
  cuda::Int4Weight w;
  explicit DevWeight(const Gptq& gq)
      : packed(int4_layout::packed_words(gq.n, gq.k)), sz(int4_layout::sz_words(gq.n, gq.k, gq.group)) {
    std::vector<uint32_t> p, s;
    gq.repack(p, s);
    packed.upload(p);
    sz.upload(s);
    w = cuda::Int4Weight{packed.get(), sz.get(), gq.n, gq.k, gq.group};
  }
};

// Llama-2-7B; stories260K-sized (its hidden 172 is no multiple of 8, which GPTQ's
// qzeros need: 176 stands in); odd (k not a multiple of 128, n not of 64).
struct MatShape { int n, k, group; };
const MatShape kShapes[] = {{4096, 4096, 128}, {11008, 4096, 128}, {4096, 11008, 128},
                            {64, 64, 32},       {176, 64, 64},
                            {136, 320, 64},     {24, 96, 32},       {8, 128, 32}};

class CudaInt4 : public GpuTest {
 protected:
  using Launcher = cudaError_t (*)(__half*, const __half*, const cuda::Int4Weight&, int, cudaStream_t);
  std::vector<uint16_t> run(Launcher f, const DevWeight& dw, const DevBuf<uint16_t>& x, int m) {
    DevBuf<uint16_t> out(static_cast<size_t>(m) * dw.w.n);
    out.poison();
    check(f(reinterpret_cast<__half*>(out.get()), reinterpret_cast<const __half*>(x.get()), dw.w, m, stream_),
          "int4 launch");
    sync();
    if (!out.guards_intact()) throw std::runtime_error("int4 kernel wrote outside its output");
    return out.download();
  }
  // The fp32-output overloads (lm_head logits).
  using LauncherF32 = cudaError_t (*)(float*, const __half*, const cuda::Int4Weight&, int, cudaStream_t);
  std::vector<float> run_f32(LauncherF32 f, const DevWeight& dw, const DevBuf<uint16_t>& x, int m) {
    DevBuf<float> out(static_cast<size_t>(m) * dw.w.n);
    out.poison();
    check(f(out.get(), reinterpret_cast<const __half*>(x.get()), dw.w, m, stream_), "int4 launch (fp32 out)");
    sync();
    if (!out.guards_intact()) throw std::runtime_error("int4 kernel wrote outside its output");
    return out.download();
  }
  void check_against_cpu(const MatShape& s);
};

void CudaInt4::check_against_cpu(const MatShape& s) {
  const Gptq gq(s.n, s.k, s.group, s.n + s.k);
  const DevWeight dw(gq);
  for (int m : {1, 3, 16, 17, 64, 200}) {
    if (static_cast<double>(m) * s.n * s.k > 3e9) continue;  // keep the CPU reference fast
    const auto x = randn_h(static_cast<size_t>(m) * s.k, m);
    const DevBuf<uint16_t> d_x(to_half(x));
    std::vector<float> ref(static_cast<size_t>(m) * s.n);
    kernels::cpu::matmul(ref.data(), x.data(), gq.w.data(), m, s.n, s.k);
    const std::string what = "n " + std::to_string(s.n) + " k " + std::to_string(s.k) + " g " +
                             std::to_string(s.group) + " m " + std::to_string(m);
    std::vector<std::pair<const char*, Launcher>> paths{{"gemm", cuda::int4_gemm}};
    if (m <= int4_layout::kGemvMaxM) paths.push_back({"gemv", cuda::int4_gemv});
    for (const auto& [name, f] : paths) {
      const ErrorStats st = compare(to_float(run(f, dw, d_x, m)), ref);
      EXPECT_EQ(st.nonfinite, 0u) << name << " " << what << ": " << st.str();
      EXPECT_LT(st.nmse, 1e-6) << name << " " << what << ": " << st.str();
      EXPECT_LE(st.max_abs, st.ref_max / 512 + 1e-4) << name << " " << what << ": " << st.str();
    }
  }
}

TEST_F(CudaInt4, GemvAndGemmMatchCpuAtLlama7bShapes) {
  for (int i = 0; i < 3; ++i) check_against_cpu(kShapes[i]);
}

// Small enough to run under compute-sanitizer (bench/gpu/device_check.sh).
TEST_F(CudaInt4, GemvAndGemmMatchCpuAtSmallAndOddShapes) {
  for (int i = 3; i < 8; ++i) check_against_cpu(kShapes[i]);
}

TEST_F(CudaInt4, MatchesCublasFp16GemmOnDequantisedWeights) {
  cublasHandle_t handle;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasSetStream(handle, stream_), CUBLAS_STATUS_SUCCESS);
  for (const MatShape s : {kShapes[0], kShapes[1], kShapes[2], kShapes[5]}) {
    const Gptq gq(s.n, s.k, s.group, 77 + s.n);
    const DevWeight dw(gq);
    const DevBuf<uint16_t> d_w(to_half(gq.w));
    for (int m : {1, 16, 64, 256}) {
      const auto x = randn_h(static_cast<size_t>(m) * s.k, 3 * m);
      const DevBuf<uint16_t> d_x(to_half(x));
      DevBuf<uint16_t> d_ref(static_cast<size_t>(m) * s.n);
      const float alpha = 1.0f, beta = 0.0f;
      // Column-major view: out^T[n, m] = W[n, k] (stored k-major: op T) · x^T[k, m].
      ASSERT_EQ(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, s.n, m, s.k, &alpha, d_w.get(), CUDA_R_16F, s.k,
                             d_x.get(), CUDA_R_16F, s.k, &beta, d_ref.get(), CUDA_R_16F, s.n, CUBLAS_COMPUTE_32F,
                             CUBLAS_GEMM_DEFAULT),
                CUBLAS_STATUS_SUCCESS);
      sync();
      const ErrorStats st = compare(to_float(run(cuda::int4_matmul, dw, d_x, m)), to_float(d_ref.download()));
      EXPECT_EQ(st.nonfinite, 0u) << "m " << m << " n " << s.n << ": " << st.str();
      EXPECT_LT(st.nmse, 1e-6) << "m " << m << " n " << s.n << ": " << st.str();
    }
  }
  cublasDestroy(handle);
}

// A row's output is bitwise the same for every M (GEMV up to 16, GEMM beyond),
// and GEMV and GEMM agree bitwise at the same M.
TEST_F(CudaInt4, RowsAreBitwiseInvariantForM1To64) {
  for (const MatShape s : {kShapes[0], kShapes[6]}) {
    const Gptq gq(s.n, s.k, s.group, 5 + s.k);
    const DevWeight dw(gq);
    const int max_m = 64;
    const DevBuf<uint16_t> d_x(to_half(randn_h(static_cast<size_t>(max_m) * s.k, 99)));
    const auto full = run(cuda::int4_matmul, dw, d_x, max_m);
    for (int m = 1; m <= max_m; ++m) {
      const auto part = run(cuda::int4_matmul, dw, d_x, m);
      ASSERT_TRUE(std::equal(part.begin(), part.end(), full.begin())) << "m " << m << " n " << s.n;
    }
    for (int m : {1, 8, 16}) {
      ASSERT_TRUE(run(cuda::int4_gemv, dw, d_x, m) == run(cuda::int4_gemm, dw, d_x, m)) << "gemv vs gemm m " << m;
    }
  }
}

// fp32 output (the lm_head's logits): the same accumulators, so rounding it to
// fp16 gives the fp16 output bitwise; rows are invariant in M and across the
// GEMV and GEMM, as for fp16; and it is no longer quantised to fp16 steps.
TEST_F(CudaInt4, Fp32OutputIsTheUnroundedFp16Output) {
  for (const MatShape s : {kShapes[0], kShapes[5], kShapes[7]}) {
    const Gptq gq(s.n, s.k, s.group, 41 + s.n);
    const DevWeight dw(gq);
    const int max_m = 40;
    const DevBuf<uint16_t> d_x(to_half(randn_h(static_cast<size_t>(max_m) * s.k, 7)));
    const std::vector<float> full = run_f32(cuda::int4_matmul, dw, d_x, max_m);
    const std::vector<uint16_t> half = run(cuda::int4_matmul, dw, d_x, max_m);
    size_t differing = 0, not_half = 0;
    for (size_t i = 0; i < full.size(); ++i) {
      differing += float_to_half(full[i]) != half[i];
      not_half += round_half(full[i]) != full[i];
    }
    EXPECT_EQ(differing, 0u) << "n " << s.n;
    EXPECT_GT(not_half, full.size() / 2) << "n " << s.n << ": fp32 outputs look fp16-rounded";
    for (int m : {1, 5, 16, 17, 33}) {
      const std::vector<float> part = run_f32(cuda::int4_matmul, dw, d_x, m);
      ASSERT_TRUE(std::equal(part.begin(), part.end(), full.begin())) << "m " << m << " n " << s.n;
      if (m <= int4_layout::kGemvMaxM) {
        ASSERT_TRUE(run_f32(cuda::int4_gemv, dw, d_x, m) == run_f32(cuda::int4_gemm, dw, d_x, m)) << "m " << m;
      }
    }
  }
}

}  // namespace
}  // namespace chatradio::gpu_test
