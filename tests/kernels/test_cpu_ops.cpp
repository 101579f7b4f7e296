// The CPU reference ops against independent, textbook formulations (double
// precision, dense layouts), on random and odd shapes. The CUDA op tests then
// compare against these.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/swiglu_paths.h"
#include "kernels/cpu/thread_pool.h"

namespace chatradio::kernels::cpu {
namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

TEST(CpuOps, Embedding) {
  const int vocab = 11, dim = 7;
  const auto table = randn(vocab * dim, 1);
  const std::vector<int32_t> ids{3, 0, 10, 3};
  std::vector<float> out(ids.size() * dim);
  embedding(out.data(), table.data(), ids.data(), 4, dim);
  for (int t = 0; t < 4; ++t)
    for (int i = 0; i < dim; ++i) EXPECT_EQ(out[t * dim + i], table[ids[t] * dim + i]);
}

TEST(CpuOps, RmsNormOddShapesAndInPlace) {
  for (int dim : {1, 3, 64, 173, 4096}) {
    const int rows = 3;
    const auto x = randn(rows * dim, dim), w = randn(dim, dim + 1);
    std::vector<float> out(x.size());
    rmsnorm(out.data(), x.data(), w.data(), rows, dim, 1e-5f);
    for (int r = 0; r < rows; ++r) {
      double ss = 0;
      for (int i = 0; i < dim; ++i) ss += double(x[r * dim + i]) * x[r * dim + i];
      const double inv = 1.0 / std::sqrt(ss / dim + 1e-5);
      for (int i = 0; i < dim; ++i) EXPECT_NEAR(out[r * dim + i], x[r * dim + i] * inv * w[i], 1e-4);
    }
    std::vector<float> inplace = x;
    rmsnorm(inplace.data(), inplace.data(), w.data(), rows, dim, 1e-5f);
    EXPECT_EQ(inplace, out);
  }
}

TEST(CpuOps, MatmulOddShapes) {
  for (auto [m, n, k] : {std::tuple{1, 1, 1}, {3, 5, 7}, {2, 172, 64}, {5, 64, 172}, {1, 33, 1000}}) {
    const auto x = randn(m * k, m + n), w = randn(n * k, k);
    std::vector<float> out(m * n);
    matmul(out.data(), x.data(), w.data(), m, n, k);
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        double s = 0;
        for (int p = 0; p < k; ++p) s += double(x[i * k + p]) * w[j * k + p];
        EXPECT_NEAR(out[i * n + j], s, 1e-4 * std::sqrt(double(k)) + 1e-5);
      }
  }
}

TEST(CpuOps, ThreadedMatmulIsBitwiseTheSameForAnyM) {
  ThreadPool pool(2);
  const int n = 173, k = 301;
  const auto x = randn(9 * k, 5), w = randn(n * k, 6);
  std::vector<float> all(9 * n), one(n), threaded(9 * n);
  matmul(all.data(), x.data(), w.data(), 9, n, k);
  matmul(threaded.data(), x.data(), w.data(), 9, n, k, &pool);
  EXPECT_EQ(all, threaded);
  for (int i = 0; i < 9; ++i) {
    matmul(one.data(), x.data() + i * k, w.data(), 1, n, k, &pool);
    EXPECT_TRUE(std::equal(one.begin(), one.end(), all.begin() + i * n)) << "row " << i;
  }
}

TEST(CpuOps, RopeIsAComplexRotationOfHalves) {
  const int n_tokens = 4, n_heads = 3, hd = 10;
  const auto x = randn(n_tokens * n_heads * hd, 7);
  const std::vector<int32_t> pos{0, 1, 17, 511};
  std::vector<float> y = x;
  rope(y.data(), pos.data(), n_tokens, n_heads, RopeParams{hd, 10000.0f});
  for (int t = 0; t < n_tokens; ++t)
    for (int h = 0; h < n_heads; ++h)
      for (int i = 0; i < hd / 2; ++i) {
        const float* v = &x[(t * n_heads + h) * hd];
        const double ang = pos[t] * std::pow(10000.0, -2.0 * i / hd);
        const std::complex<double> z = std::complex<double>(v[i], v[i + hd / 2]) * std::polar(1.0, ang);
        const float* r = &y[(t * n_heads + h) * hd];
        EXPECT_NEAR(r[i], z.real(), 1e-3);
        EXPECT_NEAR(r[i + hd / 2], z.imag(), 1e-3);
      }
}

TEST(CpuOps, SwigluAndAdd) {
  const auto g = randn(37, 1), u = randn(37, 2);
  std::vector<float> out(37), sum(37);
  swiglu(out.data(), g.data(), u.data(), 37);
  add(sum.data(), g.data(), u.data(), 37);
  for (int i = 0; i < 37; ++i) {
    EXPECT_NEAR(out[i], g[i] / (1 + std::exp(-double(g[i]))) * u[i], 1e-6);
    EXPECT_EQ(sum[i], g[i] + u[i]);
  }
}

// The SwiGLU paths give the same bits as the scalar one, threaded or not, at
// prefill sizes and on the edges of exp's range; all are close to the textbook
// formula in double.
TEST(CpuOps, SwigluPathsAndThreadsAreBitwiseEqual) {
  const int n = 100003;  // odd: scalar tails inside every thread's range
  auto g = randn(n, 3, 4.0f);
  const auto u = randn(n, 4);
  for (float v : {0.0f, -0.0f, 86.9f, 87.1f, 88.0f, 88.5f, 100.0f, -86.9f, -87.1f, -88.5f, -200.0f, 1e-30f}) {
    g.push_back(v);
  }
  g.push_back(INFINITY);  // (-inf gives NaN, as the textbook formula does in floats)
  std::vector<float> up(g.size(), 1.5f);
  std::copy(u.begin(), u.end(), up.begin());
  const int64_t m = static_cast<int64_t>(g.size());
  std::vector<float> scalar(m), simd(m), threaded(m);
  detail::swiglu_scalar(scalar.data(), g.data(), up.data(), 0, m);
  if (cpu_isa_supported(CpuIsa::Avx2)) {
    detail::swiglu_avx2(simd.data(), g.data(), up.data(), 0, m);
    EXPECT_EQ(std::memcmp(simd.data(), scalar.data(), sizeof(float) * m), 0);
  }
  ThreadPool pool(3);
  swiglu(threaded.data(), g.data(), up.data(), static_cast<int>(m), &pool);
  EXPECT_EQ(std::memcmp(threaded.data(), scalar.data(), sizeof(float) * m), 0);
  for (int64_t i = 0; i < m; ++i) {
    const double gi = g[i];
    const double want = std::isinf(gi) ? INFINITY * up[i] : gi / (1 + std::exp(-gi)) * up[i];
    if (std::isinf(want)) {
      EXPECT_EQ(scalar[i], want) << gi;
    } else {
      EXPECT_NEAR(scalar[i], want, 1e-6 * std::max(1.0, std::abs(want))) << gi;
    }
  }
}

// One paged-attention case: sequences with their cache lengths and new-query
// counts, scattered over a block pool in a shuffled order.
struct AttnCase {
  AttnShape shape;
  std::vector<int> ctx, n_new;
  uint32_t seed;
};

// Paged attention over scattered blocks equals dense causal attention computed
// directly from the unpaged K/V (double precision; for a half cache, from the
// half-rounded K/V); every ISA path and thread count gives the same bits as
// the scalar path, for a float and for a half cache.
void check_attention(const AttnCase& c) {
  const AttnShape& shape = c.shape;
  const int hd = shape.head_dim, bs = shape.block_size, n_kv = shape.n_kv_heads, n_heads = shape.n_heads;
  const int n_seqs = static_cast<int>(c.ctx.size());
  std::vector<std::vector<int32_t>> tables(n_seqs);
  int n_blocks = 0, max_blocks = 1;
  for (int s = 0; s < n_seqs; ++s) {
    const int nb = (c.ctx[s] + bs - 1) / bs;
    for (int i = 0; i < nb; ++i) tables[s].push_back(n_blocks++);
    max_blocks = std::max(max_blocks, nb);
  }
  std::mt19937 g(c.seed);
  std::vector<int32_t> ids(n_blocks);
  for (int i = 0; i < n_blocks; ++i) ids[i] = i;
  std::shuffle(ids.begin(), ids.end(), g);
  std::vector<int32_t> q_start{0}, flat(n_seqs * max_blocks, 0);
  for (int s = 0; s < n_seqs; ++s) {
    for (int32_t& b : tables[s]) b = ids[b];
    q_start.push_back(q_start.back() + c.n_new[s]);
    std::copy(tables[s].begin(), tables[s].end(), flat.begin() + s * max_blocks);
  }
  const int n_q = q_start.back();
  const auto q = randn(n_q * n_heads * hd, c.seed + 1);
  std::vector<std::vector<float>> dense_k(n_seqs), dense_v(n_seqs);
  const size_t cache_size = static_cast<size_t>(n_blocks) * bs * n_kv * hd;
  std::vector<float> kc(cache_size, NAN), vc(cache_size, NAN);  // unused slots poisoned
  std::vector<uint16_t> kh(cache_size, 0x7E00), vh(cache_size, 0x7E00);
  for (int s = 0; s < n_seqs; ++s) {
    dense_k[s] = randn(c.ctx[s] * n_kv * hd, c.seed + 100 + s);
    dense_v[s] = randn(c.ctx[s] * n_kv * hd, c.seed + 200 + s);
    std::vector<int32_t> slots(c.ctx[s]);
    for (int t = 0; t < c.ctx[s]; ++t) slots[t] = tables[s][t / bs] * bs + t % bs;
    kv_write(kc.data(), vc.data(), dense_k[s].data(), dense_v[s].data(), slots.data(), c.ctx[s], shape);
    kv_write(kh.data(), vh.data(), dense_k[s].data(), dense_v[s].data(), slots.data(), c.ctx[s], shape);
  }
  const std::vector<int32_t> ctx32(c.ctx.begin(), c.ctx.end());
  const PagedBatch batch{n_seqs, q_start.data(), ctx32.data(), flat.data(), max_blocks};
  ThreadPool pool(3);
  for (bool half : {false, true}) {
    const std::string what = std::string(half ? "half" : "float") + " cache, head_dim " + std::to_string(hd) +
                             " block " + std::to_string(bs);
    auto run = [&](float* out, ThreadPool* p, CpuIsa isa) {
      if (half) {
        attention(out, q.data(), kh.data(), vh.data(), batch, shape, p, isa);
      } else {
        attention(out, q.data(), kc.data(), vc.data(), batch, shape, p, isa);
      }
    };
    std::vector<float> out(n_q * n_heads * hd);
    run(out.data(), nullptr, CpuIsa::Scalar);
    for (CpuIsa isa : {CpuIsa::Scalar, CpuIsa::Avx2, CpuIsa::Avx512Vnni}) {
      if (!cpu_isa_supported(isa)) continue;
      std::vector<float> threaded(out.size());
      run(threaded.data(), &pool, isa);
      EXPECT_EQ(out, threaded) << cpu_isa_name(isa) << ", " << what;
    }
    auto stored = [&](float x) { return half ? half_to_float(float_to_half(x)) : x; };
    for (int s = 0; s < n_seqs; ++s)
      for (int j = 0; j < c.n_new[s]; ++j) {
        const int pos = c.ctx[s] - c.n_new[s] + j;
        for (int h = 0; h < n_heads; ++h) {
          const int kvh = h / (n_heads / n_kv);
          const float* qh = &q[((q_start[s] + j) * n_heads + h) * hd];
          std::vector<double> p(pos + 1);
          double mx = -1e300, sum = 0;
          for (int t = 0; t <= pos; ++t) {
            double dot = 0;
            for (int d = 0; d < hd; ++d) dot += qh[d] * stored(dense_k[s][(t * n_kv + kvh) * hd + d]);
            p[t] = dot / std::sqrt(double(hd));
            mx = std::max(mx, p[t]);
          }
          for (double& v : p) sum += (v = std::exp(v - mx));
          for (int d = 0; d < hd; ++d) {
            double o = 0;
            for (int t = 0; t <= pos; ++t) o += p[t] / sum * stored(dense_v[s][(t * n_kv + kvh) * hd + d]);
            ASSERT_NEAR(out[((q_start[s] + j) * n_heads + h) * hd + d], o, 2e-5)
                << "heads " << n_heads << "/" << n_kv << ", " << what << ", seq " << s << " q " << j;
          }
        }
      }
  }
}

// The bulk float -> half conversion (F16C where present) equals the scalar
// one on random values, ties, subnormals, overflow and infinities.
TEST(CpuOps, FloatsToHalvesEqualsScalarConversion) {
  std::vector<float> x = randn(1000, 7, 100.0f);
  for (float v : {0.0f, -0.0f, 65504.0f, 65519.0f, 65520.0f, 1e9f, -1e9f, INFINITY, -INFINITY,
                  std::ldexp(1.0f, -25), std::ldexp(1.5f, -25), std::ldexp(1.0f, -14), 6.1e-5f, 1.0009765625f}) {
    x.push_back(v);
  }
  for (int e = -30; e < 17; ++e) x.push_back(std::ldexp(1.0f + 1.0f / 2048, e));  // exact ties
  std::vector<uint16_t> h(x.size() + 3);
  floats_to_halves(h.data(), x.data(), static_cast<int64_t>(x.size()));
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(h[i], float_to_half(x[i])) << x[i];
}

TEST(CpuOps, PagedAttentionEqualsDenseCausal) {
  for (auto [n_heads, n_kv] : {std::pair{4, 4}, {8, 4}, {8, 1}, {6, 2}}) {
    check_attention({{n_heads, n_kv, 8, 4}, {7, 1, 13}, {3, 1, 13}, 11});
  }
}

// Head dims on and off the SIMD widths (12 and 20 take the scalar path
// everywhere), block sizes 1 .. 16, decode rows and long prefills.
TEST(CpuOps, PagedAttentionOddShapesAllPaths) {
  uint32_t seed = 500;
  for (int hd : {8, 12, 16, 20, 24, 64, 72, 128, 136}) {
    for (int bs : {1, 3, 16}) {
      check_attention({{4, 2, hd, bs}, {1, 9, 70, 33}, {1, 9, 5, 1}, seed++});
    }
  }
  check_attention({{2, 1, 64, 16}, {300}, {300}, seed++});
}

}  // namespace
}  // namespace chatradio::kernels::cpu
