// The element-wise and row-wise CUDA ops against the CPU reference: embedding,
// (add +) RMSNorm, RoPE + paged KV write, SwiGLU, argmax. Inputs are drawn in
// fp16, the reference runs in float on the same values, outputs are compared by
// NMSE and max-abs, checked for NaN/Inf (outputs are poisoned first) and for
// writes outside the buffers (canary guards).
#include <cuda_fp16.h>

#include <algorithm>
#include <numeric>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cuda/cuda_ops.h"
#include "tests/gpu/gpu_test_util.h"

namespace chatradio::gpu_test {
namespace {

namespace cuda = kernels::cuda;
namespace cpu = kernels::cpu;
using kernels::AttnShape;
using kernels::RopeParams;

// fp16 outputs: each element carries at most half an ulp of fp16 rounding
// (2^-11 relative) on top of float-level differences.
void expect_close(const std::vector<float>& out, const std::vector<float>& ref, double nmse_tol,
                  const std::string& what) {
  const ErrorStats s = compare(out, ref);
  EXPECT_EQ(s.nonfinite, 0u) << what << ": " << s.str();
  EXPECT_LT(s.nmse, nmse_tol) << what << ": " << s.str();
  EXPECT_LE(s.max_abs, s.ref_max * 1.0 / 512 + 1e-6) << what << ": " << s.str();
}

TEST(HalfConversionHost, MatchesCudaFp16HostFunctions) {
  // Runs without a GPU: our test-side conversions agree with cuda_fp16.h's host code.
  std::mt19937 g(3);
  std::vector<float> vals{0.0f, -0.0f, 1.0f, 65504.0f, 65519.0f, 65520.0f, 1e-8f, 5.96e-8f, 6.1e-5f,
                          3.0e-5f, -2.5f, 1.0009765625f, 1.00048828125f, INFINITY, -INFINITY};
  std::uniform_real_distribution<float> u(-70000.0f, 70000.0f);
  std::normal_distribution<float> n(0.0f, 1e-3f);
  for (int i = 0; i < 20000; ++i) vals.push_back(i % 2 ? u(g) : n(g));
  for (float f : vals) {
    const __half h = __float2half_rn(f);
    uint16_t bits;
    std::memcpy(&bits, &h, 2);
    ASSERT_EQ(float_to_half(f), bits) << "value " << f;
    EXPECT_EQ(half_to_float(bits), __half2float(h)) << "bits " << bits;
  }
  EXPECT_TRUE(std::isnan(half_to_float(float_to_half(NAN))));
}

class CudaOps : public GpuTest {};

TEST_F(CudaOps, EmbeddingGathersRowsExactly) {
  for (auto [vocab, dim] : {std::pair{1000, 4096}, {512, 64}, {37, 13}, {5, 1}}) {
    const auto table = to_half(randn_h(static_cast<size_t>(vocab) * dim, dim));
    std::vector<int32_t> ids{3, 0, vocab - 1, 3, vocab / 2};
    DevBuf<uint16_t> d_table(table);
    DevBuf<int32_t> d_ids(ids);
    DevBuf<uint16_t> d_out(ids.size() * dim);
    d_out.poison();
    ASSERT_EQ(cuda::embedding(reinterpret_cast<__half*>(d_out.get()), reinterpret_cast<const __half*>(d_table.get()),
                              d_ids.get(), static_cast<int>(ids.size()), dim, stream_),
              cudaSuccess);
    sync();
    const auto out = d_out.download();
    for (size_t t = 0; t < ids.size(); ++t)
      for (int i = 0; i < dim; ++i)
        ASSERT_EQ(out[t * dim + i], table[static_cast<size_t>(ids[t]) * dim + i]) << "dim " << dim << " t " << t;
    EXPECT_TRUE(d_out.guards_intact());
  }
}

TEST_F(CudaOps, RmsNormAndAddRmsNormMatchCpu) {
  const float eps = 1e-5f;
  for (int dim : {4096, 64, 173, 1, 11008, 7}) {
    const int rows = 5;
    const size_t n = static_cast<size_t>(rows) * dim;
    const auto x = randn_h(n, dim), res = randn_h(n, dim + 1, 2.0f), w = randn_h(dim, dim + 2, 0.5f);
    DevBuf<uint16_t> d_x(to_half(x)), d_res(to_half(res)), d_w(to_half(w)), d_out(n);
    auto H = [](DevBuf<uint16_t>& b) { return reinterpret_cast<__half*>(b.get()); };

    // Plain RMSNorm, then in place (out aliases x).
    std::vector<float> ref(n);
    cpu::rmsnorm(ref.data(), x.data(), w.data(), rows, dim, eps);
    d_out.poison();
    ASSERT_EQ(cuda::rmsnorm(H(d_out), H(d_x), H(d_w), rows, dim, eps, stream_), cudaSuccess);
    sync();
    const auto out = to_float(d_out.download());
    expect_close(out, ref, 1e-6, "rmsnorm dim " + std::to_string(dim));
    DevBuf<uint16_t> d_inplace(to_half(x));
    ASSERT_EQ(cuda::rmsnorm(H(d_inplace), H(d_inplace), H(d_w), rows, dim, eps, stream_), cudaSuccess);
    sync();
    EXPECT_TRUE(to_float(d_inplace.download()) == out) << "in-place differs, dim " << dim;

    // Residual add fused: residual is updated (rounded to fp16), out normalises it.
    std::vector<float> res_ref(n);
    for (size_t i = 0; i < n; ++i) res_ref[i] = round_half(res[i] + x[i]);
    cpu::rmsnorm(ref.data(), res_ref.data(), w.data(), rows, dim, eps);
    d_out.poison();
    ASSERT_EQ(cuda::add_rmsnorm(H(d_out), H(d_res), H(d_x), H(d_w), rows, dim, eps, stream_), cudaSuccess);
    sync();
    const auto res_out = to_float(d_res.download());
    size_t res_mismatch = 0;
    for (size_t i = 0; i < n; ++i) res_mismatch += res_out[i] != res_ref[i];
    EXPECT_EQ(res_mismatch, 0u) << "residual, dim " << dim;
    expect_close(to_float(d_out.download()), ref, 1e-6, "add_rmsnorm dim " + std::to_string(dim));
    EXPECT_TRUE(d_out.guards_intact() && d_res.guards_intact() && d_x.guards_intact());
  }
}

struct RopeCase {
  int n_heads, n_kv_heads, head_dim, block_size;
  bool fused_qkv;
};

TEST_F(CudaOps, RopeKvWriteMatchesCpuRopeAndKvWrite) {
  for (const RopeCase c : {RopeCase{32, 32, 128, 16, true}, {8, 4, 8, 16, false}, {6, 2, 24, 8, true},
                           {3, 1, 10, 4, false}}) {
    const AttnShape shape{c.n_heads, c.n_kv_heads, c.head_dim, c.block_size};
    const RopeParams rp{c.head_dim, 10000.0f};
    const int n_tokens = 7, n_blocks = 6, hd = c.head_dim;
    const int qw = c.n_heads * hd, kw = c.n_kv_heads * hd;
    const int64_t q_stride = c.fused_qkv ? qw + 2 * kw : qw, kv_stride = c.fused_qkv ? qw + 2 * kw : kw;
    const std::vector<int32_t> pos{0, 1, 17, 511, 4095, 3, 2048};
    const std::vector<int32_t> slots{5, 0, n_blocks * c.block_size - 1, -1, 9, c.block_size, 2};
    // Token rows (fused: [q | k | v] per row; else three buffers).
    const auto q = randn_h(static_cast<size_t>(n_tokens) * q_stride, 1 + hd);
    const auto k = randn_h(static_cast<size_t>(n_tokens) * kv_stride, 2 + hd);
    const auto v = randn_h(static_cast<size_t>(n_tokens) * kv_stride, 3 + hd);
    const size_t cache_n = static_cast<size_t>(n_blocks) * c.block_size * kw;
    const auto kc0 = randn_h(cache_n, 4), vc0 = randn_h(cache_n, 5);  // stale contents must survive

    // Reference on dense copies.
    std::vector<float> qd(static_cast<size_t>(n_tokens) * qw), kd(static_cast<size_t>(n_tokens) * kw),
        vd(static_cast<size_t>(n_tokens) * kw);
    const size_t k_off = c.fused_qkv ? qw : 0, v_off = c.fused_qkv ? qw + kw : 0;
    for (int t = 0; t < n_tokens; ++t) {
      std::copy_n(&q[t * q_stride], qw, &qd[static_cast<size_t>(t) * qw]);
      std::copy_n((c.fused_qkv ? &q[t * q_stride] : &k[t * kv_stride]) + k_off, kw, &kd[static_cast<size_t>(t) * kw]);
      std::copy_n((c.fused_qkv ? &q[t * q_stride] : &v[t * kv_stride]) + v_off, kw, &vd[static_cast<size_t>(t) * kw]);
    }
    cpu::rope(qd.data(), pos.data(), n_tokens, c.n_heads, rp);
    cpu::rope(kd.data(), pos.data(), n_tokens, c.n_kv_heads, rp);
    std::vector<float> kc_ref = kc0, vc_ref = vc0;
    for (int t = 0; t < n_tokens; ++t) {
      if (slots[t] < 0) continue;
      std::copy_n(&kd[static_cast<size_t>(t) * kw], kw, &kc_ref[static_cast<size_t>(slots[t]) * kw]);
      std::copy_n(&vd[static_cast<size_t>(t) * kw], kw, &vc_ref[static_cast<size_t>(slots[t]) * kw]);
    }

    DevBuf<uint16_t> d_q(to_half(q)), d_k(to_half(k)), d_v(to_half(v)), d_kc(to_half(kc0)), d_vc(to_half(vc0));
    DevBuf<int32_t> d_pos(pos), d_slots(slots);
    auto* qp = reinterpret_cast<__half*>(d_q.get());
    const __half* kp = c.fused_qkv ? qp + qw : reinterpret_cast<const __half*>(d_k.get());
    const __half* vp = c.fused_qkv ? qp + qw + kw : reinterpret_cast<const __half*>(d_v.get());
    ASSERT_EQ(cuda::rope_kv_write(qp, reinterpret_cast<__half*>(d_kc.get()), reinterpret_cast<__half*>(d_vc.get()), kp,
                                  vp, d_pos.get(), d_slots.get(), n_tokens, q_stride, kv_stride, shape, rp, stream_),
              cudaSuccess);
    sync();
    const auto q_out = to_float(d_q.download());
    std::vector<float> q_got(qd.size());
    for (int t = 0; t < n_tokens; ++t) std::copy_n(&q_out[t * q_stride], qw, &q_got[static_cast<size_t>(t) * qw]);
    const std::string what = "rope hd " + std::to_string(hd);
    expect_close(q_got, qd, 1e-6, what + " q");
    expect_close(to_float(d_kc.download()), kc_ref, 1e-6, what + " k cache");
    const auto vc_out = to_float(d_vc.download());
    EXPECT_TRUE(vc_out == vc_ref) << what << ": v cache must be an exact copy, other slots untouched";
    if (c.fused_qkv) {  // the K and V parts of the fused rows are inputs: unchanged
      for (int t = 0; t < n_tokens; ++t)
        for (int i = qw; i < q_stride; ++i) ASSERT_EQ(q_out[t * q_stride + i], q[t * q_stride + i]);
    }
    EXPECT_TRUE(d_q.guards_intact() && d_kc.guards_intact() && d_vc.guards_intact());
  }
}

TEST_F(CudaOps, SwigluFlatAndFusedMatchCpu) {
  for (int n : {11008, 172, 13, 8}) {
    const int rows = 3;
    const size_t total = static_cast<size_t>(rows) * n;
    const auto gate = randn_h(total, n, 3.0f), up = randn_h(total, n + 1);
    std::vector<float> ref(total);
    cpu::swiglu(ref.data(), gate.data(), up.data(), static_cast<int>(total));

    DevBuf<uint16_t> d_g(to_half(gate)), d_u(to_half(up)), d_out(total);
    d_out.poison();
    ASSERT_EQ(cuda::swiglu(reinterpret_cast<__half*>(d_out.get()), reinterpret_cast<const __half*>(d_g.get()),
                           reinterpret_cast<const __half*>(d_u.get()), static_cast<int>(total), stream_),
              cudaSuccess);
    sync();
    expect_close(to_float(d_out.download()), ref, 1e-6, "swiglu n " + std::to_string(n));

    std::vector<float> gu(2 * total);  // [rows, 2n] = [gate | up]
    for (int r = 0; r < rows; ++r) {
      std::copy_n(&gate[static_cast<size_t>(r) * n], n, &gu[static_cast<size_t>(r) * 2 * n]);
      std::copy_n(&up[static_cast<size_t>(r) * n], n, &gu[static_cast<size_t>(r) * 2 * n + n]);
    }
    DevBuf<uint16_t> d_gu(to_half(gu));
    d_out.poison();
    ASSERT_EQ(cuda::swiglu_fused(reinterpret_cast<__half*>(d_out.get()), reinterpret_cast<const __half*>(d_gu.get()),
                                 rows, n, stream_),
              cudaSuccess);
    sync();
    expect_close(to_float(d_out.download()), ref, 1e-6, "swiglu_fused n " + std::to_string(n));
    EXPECT_TRUE(d_out.guards_intact());
  }
}

TEST_F(CudaOps, ArgmaxPicksFirstMaximumAndIgnoresNan) {
  const int vocab = 32000, rows = 6;
  std::vector<float> logits(static_cast<size_t>(rows) * vocab);
  std::mt19937 g(11);
  std::normal_distribution<float> d(0.0f, 3.0f);
  for (float& x : logits) x = d(g);
  float* r3 = &logits[3 * static_cast<size_t>(vocab)];
  r3[100] = 50.0f;  // tie: the lower index wins
  r3[5000] = 50.0f;
  float* r4 = &logits[4 * static_cast<size_t>(vocab)];
  r4[7] = NAN;
  r4[31999] = 60.0f;
  r4[20] = -INFINITY;
  std::fill_n(&logits[5 * static_cast<size_t>(vocab)], vocab, -INFINITY);
  std::vector<int32_t> want(rows);
  for (int r = 0; r < rows; ++r) {
    const float* row = &logits[static_cast<size_t>(r) * vocab];
    int best = -1;
    for (int i = 0; i < vocab; ++i)
      if (!std::isnan(row[i]) && (best < 0 || row[i] > row[best])) best = i;
    want[r] = best;
  }
  EXPECT_EQ(want[3], 100);
  EXPECT_EQ(want[4], 31999);
  EXPECT_EQ(want[5], 0);

  DevBuf<float> d_logits(logits);
  DevBuf<int32_t> d_ids(rows);
  d_ids.poison();
  ASSERT_EQ(cuda::argmax(d_ids.get(), d_logits.get(), rows, vocab, stream_), cudaSuccess);
  sync();
  EXPECT_TRUE(d_ids.download() == want);
  EXPECT_TRUE(d_ids.guards_intact());
}

TEST_F(CudaOps, LaunchersRejectBadShapes) {
  EXPECT_EQ(cuda::rmsnorm(nullptr, nullptr, nullptr, 1, 0, 1e-5f, stream_), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::argmax(nullptr, nullptr, 1, 0, stream_), cudaErrorInvalidValue);
  const AttnShape odd{4, 3, 64, 16};  // 4 % 3 != 0
  EXPECT_EQ(cuda::attention(nullptr, nullptr, 256, nullptr, nullptr, kernels::PagedBatch{}, odd,
                            cuda::AttnDims{1, 1, 16}, nullptr, 0, stream_),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::swiglu(nullptr, nullptr, nullptr, 0, stream_), cudaSuccess);  // empty is fine
}

}  // namespace
}  // namespace chatradio::gpu_test
