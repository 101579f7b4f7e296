// matmul_q4 on every ISA path this CPU has, against
//  - an exact reference of the same math: the activation rows quantized by
//    q4_quantize_row, integer dot products, then Σ s*d*(Σ q*xq - z*Σ xq) in
//    double (tolerance: the kernel's float rounding only), and
//  - a float reference over the dequantized weights, within the error the
//    int8 activation quantization allows (|x - d*xq| <= d/2 per element);
// plus bitwise equality of all paths, and batch invariance: a row's output
// bits do not depend on m, the other rows, or the thread count.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/q4.h"
#include "model/gptq.h"
#include "tests/q4/q4_testing.h"

namespace chatradio::model {
namespace {

using kernels::cpu::half_to_float;
using kernels::cpu::matmul_q4;
using kernels::cpu::CpuIsa;
using kernels::cpu::Q4Matrix;
using kernels::cpu::ThreadPool;
using q4test::randn;
using q4test::u32;

std::vector<CpuIsa> supported_isas() {
  std::vector<CpuIsa> v;
  for (CpuIsa isa : {CpuIsa::Scalar, CpuIsa::Avx2, CpuIsa::Avx512Vnni}) {
    if (kernels::cpu::cpu_isa_supported(isa)) v.push_back(isa);
  }
  return v;
}

// Checks out[m, n] against both references for weights t (as repacked in w).
void check_refs(const std::vector<float>& out, const std::vector<float>& x, const GptqTensors& t,
                const Q4Matrix& w, int m) {
  const GptqShape& s = t.shape;
  const int n = s.out, k = s.in, op = s.out_padded;
  std::vector<float> wd(static_cast<size_t>(n) * k);  // [n, k] dequantized
  gptq_dequantize(wd.data(), gptq_view_of(t));
  const int kb = w.k_blocks;
  std::vector<int8_t> xq(static_cast<size_t>(kb) * 32);  // [kb*32]
  std::vector<float> d(kb), gsum(w.n_groups);
  for (int r = 0; r < m; ++r) {
    const float* xr = x.data() + static_cast<size_t>(r) * k;
    kernels::cpu::q4_quantize_row(xq.data(), d.data(), gsum.data(), xr, w);
    // Per input: its kernel position (block), from the kernel's permutation.
    std::vector<int> block_of(k, -1);  // [k]
    for (int p = 0; p < kb * 32; ++p) {
      const int i = w.perm.empty() ? (p < k ? p : -1) : w.perm[p];
      if (i >= 0) block_of[i] = p / 32;
    }
    std::vector<int> xq_of(k);  // [k] int8 activation of input i
    for (int p = 0; p < kb * 32; ++p) {
      const int i = w.perm.empty() ? (p < k ? p : -1) : w.perm[p];
      if (i >= 0) xq_of[i] = xq[p];
    }
    for (int o = 0; o < n; ++o) {
      double exact = 0, mag = 0, fref = 0, fmag = 0, qerr = 0;
      for (int i = 0; i < k; ++i) {
        const int g = t.g_idx[i];
        const double sc = half_to_float(t.scales[g * op + o]);
        const int z = static_cast<int>((u32(t.qzeros[g * (op / 8) + o / 8]) >> (4 * (o % 8))) & 15) + 1;
        const int q = static_cast<int>((u32(t.qweight[(i / 8) * op + o]) >> (4 * (i % 8))) & 15);
        const double db = d[block_of[i]];
        exact += sc * db * (q - z) * xq_of[i];
        mag += std::fabs(sc) * db * (q + z) * std::abs(xq_of[i]);
        const double wv = wd[static_cast<size_t>(o) * k + i];
        fref += wv * xr[i];
        fmag += std::fabs(wv * xr[i]);
        qerr += std::fabs(wv) * db / 2;
      }
      const double y = out[static_cast<size_t>(r) * n + o];
      // The kernel rounds once per block and per group (fma, products).
      const double tol = (kb + w.n_groups + 8) * 1.2e-7 * mag + 1e-30;
      ASSERT_NEAR(y, exact, tol) << "row " << r << " col " << o << " (exact int reference)";
      ASSERT_NEAR(y, fref, 1.001 * qerr + tol + 1e-6 * fmag) << "row " << r << " col " << o << " (float reference)";
    }
  }
}

struct Shape {
  int n, k, group;
  bool sym;
};

std::string name(const Shape& s, int m) {
  return "n=" + std::to_string(s.n) + " k=" + std::to_string(s.k) + " group=" + std::to_string(s.group) +
         " sym=" + std::to_string(s.sym) + " m=" + std::to_string(m);
}

void run_case(const Shape& sh, const std::vector<int>& ms, ThreadPool* pool, uint32_t seed) {
  const auto wf = randn(static_cast<size_t>(sh.n) * sh.k, seed, 0.05f);
  const GptqTensors t = gptq_quantize(wf.data(), sh.n, sh.k, sh.group, sh.sym);
  const Q4Matrix w = gptq_to_q4(gptq_view_of(t));
  for (int m : ms) {
    SCOPED_TRACE(name(sh, m));
    auto x = randn(static_cast<size_t>(m) * sh.k, seed + m, 1.0f);
    for (int i = 0; i < sh.k && m > 1; i += 5) x[sh.k + i] *= 30.0f;  // an outlier-heavy row
    std::vector<float> ref(static_cast<size_t>(m) * sh.n);
    matmul_q4(ref.data(), x.data(), w, m, pool, CpuIsa::Scalar);
    check_refs(ref, x, t, w, m);
    for (CpuIsa isa : supported_isas()) {
      std::vector<float> out(ref.size(), -1.0f);
      matmul_q4(out.data(), x.data(), w, m, pool, isa);
      ASSERT_EQ(std::memcmp(out.data(), ref.data(), ref.size() * sizeof(float)), 0)
          << kernels::cpu::cpu_isa_name(isa) << " differs from scalar";
    }
  }
}

TEST(MatmulQ4, ReportsPaths) {
  std::string have;
  for (CpuIsa isa : supported_isas()) have += std::string(kernels::cpu::cpu_isa_name(isa)) + " ";
  std::printf("q4 paths here: %s(default %s)\n", have.c_str(), cpu_isa_name(kernels::cpu::cpu_default_isa()));
  EXPECT_TRUE(kernels::cpu::cpu_isa_supported(CpuIsa::Scalar));
}

TEST(MatmulQ4, OddShapesAllGroupSizes) {
  ThreadPool pool(2);
  const Shape shapes[] = {{172, 64, 128, false}, {64, 172, 32, false}, {64, 172, 64, true}, {64, 172, -1, false},
                          {1, 1, 32, false},     {7, 13, 32, true},    {13, 7, -1, false},  {33, 100, 64, false},
                          {9, 96, 32, true}};
  uint32_t seed = 1;
  for (const Shape& s : shapes) run_case(s, {1, 2, 3, 7, 16, 33}, &pool, seed++);
}

TEST(MatmulQ4, RandomShapesManyRows) {
  ThreadPool pool(2);
  std::mt19937 g(42);
  const int groups[] = {32, 64, 128, -1};
  for (int c = 0; c < 6; ++c) {
    const Shape s{1 + static_cast<int>(g() % 300), 1 + static_cast<int>(g() % 600), groups[g() % 4], g() % 2 == 0};
    run_case(s, {1, 3, 16, 128}, &pool, 100 + c);
  }
  run_case({256, 512, 128, false}, {1, 7, 128}, &pool, 7);
}

TEST(MatmulQ4, RandomRawGptqTensorsIncludingZero16) {
  // Tensors not produced by our quantizer: any nibble, any zero 1..16, scales
  // of both signs and a subnormal.
  const int n = 40, k = 192;
  const GptqShape s = gptq_shape(k, n, 64);
  GptqTensors t;
  t.shape = s;
  std::mt19937 g(3);
  t.qweight.resize(static_cast<size_t>(k / 8) * n);
  for (auto& v : t.qweight) v = static_cast<int32_t>(g());
  t.qzeros.resize(static_cast<size_t>(s.n_groups) * (n / 8));
  for (auto& v : t.qzeros) v = static_cast<int32_t>(g());
  t.qzeros[0] = static_cast<int32_t>(0xFFFFFFFFu);  // zero 16 everywhere in group 0, columns 0..7
  t.scales.resize(static_cast<size_t>(s.n_groups) * n);
  std::uniform_real_distribution<float> u(-0.02f, 0.02f);
  for (auto& v : t.scales) v = kernels::cpu::float_to_half(u(g));
  t.scales[5] = 0x0003;
  t.g_idx.resize(k);
  for (int i = 0; i < k; ++i) t.g_idx[i] = i / 64;
  const Q4Matrix w = gptq_to_q4(gptq_view_of(t));
  ThreadPool pool(2);
  for (int m : {1, 5, 16}) {
    const auto x = randn(static_cast<size_t>(m) * k, 77 + m);
    std::vector<float> ref(static_cast<size_t>(m) * n);
    matmul_q4(ref.data(), x.data(), w, m, &pool, CpuIsa::Scalar);
    check_refs(ref, x, t, w, m);
    for (CpuIsa isa : supported_isas()) {
      std::vector<float> out(ref.size());
      matmul_q4(out.data(), x.data(), w, m, &pool, isa);
      ASSERT_EQ(std::memcmp(out.data(), ref.data(), ref.size() * sizeof(float)), 0) << cpu_isa_name(isa);
    }
  }
}

TEST(MatmulQ4, ActOrder) {
  const int n = 48, k = 256;
  const q4test::ActOrder a = q4test::make_act_order(n, k, 64, 5);
  const Q4Matrix w = gptq_to_q4(gptq_view_of(a.act));
  ASSERT_FALSE(w.perm.empty());
  ThreadPool pool(2);
  for (int m : {1, 4, 33}) {
    const auto x = randn(static_cast<size_t>(m) * k, 9 + m);
    std::vector<float> ref(static_cast<size_t>(m) * n);
    matmul_q4(ref.data(), x.data(), w, m, &pool, CpuIsa::Scalar);
    check_refs(ref, x, a.act, w, m);
    for (CpuIsa isa : supported_isas()) {
      std::vector<float> out(ref.size());
      matmul_q4(out.data(), x.data(), w, m, &pool, isa);
      ASSERT_EQ(std::memcmp(out.data(), ref.data(), ref.size() * sizeof(float)), 0) << cpu_isa_name(isa);
    }
  }
}

TEST(MatmulQ4, DefaultPathAndNullPool) {
  const auto wf = randn(100 * 96, 1, 0.05f);
  const GptqTensors t = gptq_quantize(wf.data(), 100, 96, 32, false);
  const Q4Matrix w = gptq_to_q4(gptq_view_of(t));
  const auto x = randn(3 * 96, 2);
  std::vector<float> a(300), b(300);
  matmul_q4(a.data(), x.data(), w, 3, nullptr);
  ThreadPool pool(3);
  matmul_q4(b.data(), x.data(), w, 3, &pool, kernels::cpu::cpu_default_isa());
  EXPECT_EQ(a, b);
  check_refs(a, x, t, w, 3);
}

// Batch invariance: a row alone (m = 1), inside small batches with other
// neighbours, and inside a 512-row batch, on 1..4 threads: identical bits.
TEST(MatmulQ4, BatchInvariantBitwise) {
  const Shape shapes[] = {{200, 300, 64, false}, {512, 1024, 128, false}, {64, 172, 32, true}};
  for (const Shape& sh : shapes) {
    SCOPED_TRACE(name(sh, 0));
    const auto wf = randn(static_cast<size_t>(sh.n) * sh.k, 21, 0.05f);
    const Q4Matrix w = gptq_to_q4(gptq_view_of(gptq_quantize(wf.data(), sh.n, sh.k, sh.group, sh.sym)));
    const int big = 512;
    const auto x = randn(static_cast<size_t>(big) * sh.k, 22);
    for (CpuIsa isa : supported_isas()) {
      SCOPED_TRACE(cpu_isa_name(isa));
      ThreadPool pool1(1);
      std::vector<float> full(static_cast<size_t>(big) * sh.n);  // [512, n] reference
      matmul_q4(full.data(), x.data(), w, big, &pool1, isa);
      for (int threads : {1, 2, 3, 4}) {
        ThreadPool pool(threads);
        std::vector<float> again(full.size());
        matmul_q4(again.data(), x.data(), w, big, &pool, isa);
        ASSERT_EQ(std::memcmp(again.data(), full.data(), full.size() * sizeof(float)), 0) << threads << " threads";
        // Windows of various m at various offsets (so rows land in every tile slot).
        for (int m : {1, 2, 3, 5, 7, 16, 33, 128}) {
          for (int r0 : {0, 1, 6, big - m}) {
            std::vector<float> part(static_cast<size_t>(m) * sh.n);
            matmul_q4(part.data(), x.data() + static_cast<size_t>(r0) * sh.k, w, m, &pool, isa);
            ASSERT_EQ(std::memcmp(part.data(), full.data() + static_cast<size_t>(r0) * sh.n,
                                  part.size() * sizeof(float)),
                      0)
                << "m=" << m << " r0=" << r0 << " threads=" << threads;
          }
        }
      }
      // The same row with different neighbours.
      std::vector<float> xs(static_cast<size_t>(3) * sh.k);
      std::copy(x.begin() + 10 * sh.k, x.begin() + 11 * sh.k, xs.begin() + sh.k);
      for (int trial = 0; trial < 3; ++trial) {
        const auto noise = randn(sh.k, 300 + trial, 10.0f);
        std::copy(noise.begin(), noise.end(), xs.begin());
        std::copy(noise.begin(), noise.end(), xs.begin() + 2 * sh.k);
        std::vector<float> o(static_cast<size_t>(3) * sh.n);
        ThreadPool pool(2);
        matmul_q4(o.data(), xs.data(), w, 3, &pool, isa);
        ASSERT_EQ(std::memcmp(o.data() + sh.n, full.data() + static_cast<size_t>(10) * sh.n, sh.n * sizeof(float)), 0);
      }
    }
  }
}

// The SIMD paths tile the prefill GEMM over several rows and several panels
// at once, with row and panel remainders, in row chunks (cache blocks): every
// m from 1 to 67, panel counts odd and even with a partial last panel, k of
// one to many groups (groups of 1, 2, 3 and 4 blocks, or one group), and k
// long enough that 67 rows span two row chunks — serial and threaded, bit for
// bit equal to the scalar path.
TEST(MatmulQ4, TiledPathsEqualScalarEveryM) {
  const Shape shapes[] = {{8, 64, 32, false},    {24, 256, 64, false}, {13, 200, 64, true},
                          {45, 384, 128, false}, {40, 96, -1, false},  {27, 4192, 96, false},
                          {16, 4608, -1, true}};
  ThreadPool pool(2);
  uint32_t seed = 500;
  for (const Shape& sh : shapes) {
    const auto wf = randn(static_cast<size_t>(sh.n) * sh.k, seed++, 0.05f);
    const Q4Matrix w = gptq_to_q4(gptq_view_of(gptq_quantize(wf.data(), sh.n, sh.k, sh.group, sh.sym)));
    const int max_m = 67;
    const auto x = randn(static_cast<size_t>(max_m) * sh.k, seed++);
    for (int m = 1; m <= max_m; ++m) {
      SCOPED_TRACE(name(sh, m));
      std::vector<float> ref(static_cast<size_t>(m) * sh.n);
      matmul_q4(ref.data(), x.data(), w, m, nullptr, CpuIsa::Scalar);
      for (CpuIsa isa : supported_isas()) {
        for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
          std::vector<float> out(ref.size(), -1.0f);
          matmul_q4(out.data(), x.data(), w, m, p, isa);
          ASSERT_EQ(std::memcmp(out.data(), ref.data(), ref.size() * sizeof(float)), 0)
              << cpu_isa_name(isa) << (p ? " threaded" : " serial");
        }
      }
    }
  }
}

// CHATRADIO_CPU_ISA is read once per process, so each case runs in a fresh
// child ("threadsafe" death tests re-execute the binary).
TEST(MatmulQ4, EnvironmentForcesPath) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        setenv("CHATRADIO_CPU_ISA", "scalar", 1);
        std::exit(static_cast<int>(kernels::cpu::cpu_default_isa()));
      },
      ::testing::ExitedWithCode(static_cast<int>(CpuIsa::Scalar)), "");
  CpuIsa best = CpuIsa::Scalar;
  for (CpuIsa isa : supported_isas()) best = isa;
  EXPECT_EXIT(
      {
        setenv("CHATRADIO_CPU_ISA", "sse9", 1);
        std::exit(static_cast<int>(kernels::cpu::cpu_default_isa()));
      },
      ::testing::ExitedWithCode(static_cast<int>(best)), "unknown CHATRADIO_CPU_ISA=sse9");
}

TEST(MatmulQ4, UnsupportedPathThrows) {
  for (CpuIsa isa : {CpuIsa::Avx2, CpuIsa::Avx512Vnni}) {
    if (kernels::cpu::cpu_isa_supported(isa)) continue;
    const Q4Matrix w = gptq_to_q4(gptq_view_of(gptq_quantize(randn(64, 1).data(), 8, 8, 32, false)));
    float x[8] = {}, y[8];
    EXPECT_THROW(matmul_q4(y, x, w, 1, nullptr, isa), std::invalid_argument);
  }
}

}  // namespace
}  // namespace chatradio::model
