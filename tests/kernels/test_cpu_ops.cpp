// The CPU reference ops against independent, textbook formulations (double
// precision, dense layouts), on random and odd shapes. The CUDA op tests then
// compare against these.
#include <gtest/gtest.h>

#include <cmath>
#include <complex>
#include <random>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
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

// Paged attention over scattered blocks equals dense causal attention computed
// directly from the unpaged K/V, for MHA and several GQA ratios.
TEST(CpuOps, PagedAttentionEqualsDenseCausal) {
  for (auto [n_heads, n_kv] : {std::pair{4, 4}, {8, 4}, {8, 1}, {6, 2}}) {
    const int hd = 8, bs = 4, n_blocks = 16;
    const AttnShape shape{n_heads, n_kv, hd, bs};
    const std::vector<int> ctx{7, 1, 13};     // tokens in cache per sequence after the step
    const std::vector<int> n_new{3, 1, 13};   // new queries per sequence
    const std::vector<std::vector<int32_t>> tables{{5, 2}, {0}, {9, 3, 14, 1}};
    const int max_blocks = 4;
    std::vector<int32_t> q_start{0}, flat(3 * max_blocks, 0);
    for (int s = 0; s < 3; ++s) {
      q_start.push_back(q_start.back() + n_new[s]);
      std::copy(tables[s].begin(), tables[s].end(), flat.begin() + s * max_blocks);
    }
    const int n_q = q_start.back();
    const auto q = randn(n_q * n_heads * hd, 11);
    std::vector<std::vector<float>> dense_k(3), dense_v(3);
    std::vector<float> kc(n_blocks * bs * n_kv * hd, NAN), vc(kc.size(), NAN);  // unused slots poisoned
    for (int s = 0; s < 3; ++s) {
      dense_k[s] = randn(ctx[s] * n_kv * hd, 100 + s);
      dense_v[s] = randn(ctx[s] * n_kv * hd, 200 + s);
      std::vector<int32_t> slots(ctx[s]);
      for (int t = 0; t < ctx[s]; ++t) slots[t] = tables[s][t / bs] * bs + t % bs;
      kv_write(kc.data(), vc.data(), dense_k[s].data(), dense_v[s].data(), slots.data(), ctx[s], shape);
    }
    std::vector<float> out(n_q * n_heads * hd);
    const std::vector<int32_t> ctx32(ctx.begin(), ctx.end());
    const PagedBatch batch{3, q_start.data(), ctx32.data(), flat.data(), max_blocks};
    attention(out.data(), q.data(), kc.data(), vc.data(), batch, shape);
    ThreadPool pool(2);
    std::vector<float> threaded(out.size());
    attention(threaded.data(), q.data(), kc.data(), vc.data(), batch, shape, &pool);
    EXPECT_EQ(out, threaded);
    for (int s = 0; s < 3; ++s)
      for (int j = 0; j < n_new[s]; ++j) {
        const int pos = ctx[s] - n_new[s] + j;
        for (int h = 0; h < n_heads; ++h) {
          const int kvh = h / (n_heads / n_kv);
          const float* qh = &q[((q_start[s] + j) * n_heads + h) * hd];
          std::vector<double> p(pos + 1);
          double mx = -1e300, sum = 0;
          for (int t = 0; t <= pos; ++t) {
            double dot = 0;
            for (int d = 0; d < hd; ++d) dot += qh[d] * dense_k[s][(t * n_kv + kvh) * hd + d];
            p[t] = dot / std::sqrt(double(hd));
            mx = std::max(mx, p[t]);
          }
          for (double& v : p) sum += (v = std::exp(v - mx));
          for (int d = 0; d < hd; ++d) {
            double o = 0;
            for (int t = 0; t <= pos; ++t) o += p[t] / sum * dense_v[s][(t * n_kv + kvh) * hd + d];
            EXPECT_NEAR(out[((q_start[s] + j) * n_heads + h) * hd + d], o, 1e-5)
                << "heads " << n_heads << "/" << n_kv << " seq " << s << " q " << j;
          }
        }
      }
  }
}

}  // namespace
}  // namespace chatradio::kernels::cpu
