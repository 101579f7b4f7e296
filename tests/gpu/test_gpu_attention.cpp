// Paged GQA attention on the GPU against cpu::attention: decode rows (split-KV
// + combine), tensor-core prefill (head_dim 64/128) and the SIMT prefill path
// (other head dims), mixed in one batch, at Llama-2-7B, stories260K and odd
// shapes; plus batch invariance (a sequence alone vs. in a batch) and chunked
// prefill invariance, which must hold bitwise.
#include <cuda_fp16.h>

#include <algorithm>
#include <numeric>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cuda/attention_layout.h"
#include "kernels/cuda/cuda_ops.h"
#include "tests/gpu/gpu_test_util.h"

namespace chatradio::gpu_test {
namespace {

namespace cuda = kernels::cuda;
using kernels::AttnShape;
using kernels::PagedBatch;

struct Seq {
  int n_new = 0, ctx = 0;
  std::vector<int32_t> blocks;  // covers ctx tokens
  std::vector<float> q;         // [n_new, n_heads * head_dim], fp16-rounded
};

// One layer's KV pool, identical on host (float) and device (fp16).
class Pool {
 public:
  Pool(const AttnShape& s, int n_blocks, uint32_t seed)
      : shape(s), n_blocks(n_blocks),
        k(randn_h(static_cast<size_t>(n_blocks) * s.block_size * s.n_kv_heads * s.head_dim, seed)),
        v(randn_h(k.size(), seed + 1)), d_k(to_half(k)), d_v(to_half(v)), order(n_blocks) {
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), std::mt19937(seed + 2));  // scattered pages
  }
  // A sequence with its own blocks (taken in shuffled order) and random queries.
  Seq make_seq(int n_new, int ctx, uint32_t seed) {
    Seq s;
    s.n_new = n_new;
    s.ctx = ctx;
    const int nb = (ctx + shape.block_size - 1) / shape.block_size;
    if (next + nb > n_blocks) throw std::runtime_error("pool too small");
    s.blocks.assign(order.begin() + next, order.begin() + next + nb);
    next += nb;
    s.q = randn_h(static_cast<size_t>(n_new) * shape.n_heads * shape.head_dim, seed);
    return s;
  }

  AttnShape shape;
  int n_blocks;
  std::vector<float> k, v;
  DevBuf<uint16_t> d_k, d_v;

 private:
  std::vector<int> order;
  int next = 0;
};

struct Flat {
  std::vector<int32_t> q_start{0}, ctx_len, tables;
  int max_blocks = 0, n_q = 0, max_q_len = 0, max_ctx = 0;
};
Flat flatten(const std::vector<Seq>& seqs) {
  Flat f;
  for (const Seq& s : seqs) f.max_blocks = std::max<int>(f.max_blocks, static_cast<int>(s.blocks.size()));
  for (const Seq& s : seqs) {
    f.q_start.push_back(f.q_start.back() + s.n_new);
    f.ctx_len.push_back(s.ctx);
    std::vector<int32_t> row(f.max_blocks, 0);
    std::copy(s.blocks.begin(), s.blocks.end(), row.begin());
    f.tables.insert(f.tables.end(), row.begin(), row.end());
    f.max_q_len = std::max(f.max_q_len, s.n_new);
    f.max_ctx = std::max(f.max_ctx, s.ctx);
  }
  f.n_q = f.q_start.back();
  return f;
}

std::vector<float> run_cpu(const Pool& pool, const std::vector<Seq>& seqs) {
  const Flat f = flatten(seqs);
  const int width = pool.shape.n_heads * pool.shape.head_dim;
  std::vector<float> q, out(static_cast<size_t>(f.n_q) * width);
  for (const Seq& s : seqs) q.insert(q.end(), s.q.begin(), s.q.end());
  const PagedBatch b{static_cast<int>(seqs.size()), f.q_start.data(), f.ctx_len.data(), f.tables.data(), f.max_blocks};
  kernels::cpu::attention(out.data(), q.data(), pool.k.data(), pool.v.data(), b, pool.shape);
  return out;
}

// Runs cuda::attention; q rows are laid out with `q_stride` (extra columns hold
// junk, as in a fused QKV buffer). AttnDims gets n_q + surplus_rows query rows
// (an upper bound, which the launcher allows); q and out have that many rows.
// Returns the raw fp16 output bits, surplus rows included.
std::vector<uint16_t> run_gpu(Pool& pool, const std::vector<Seq>& seqs, cudaStream_t stream, int64_t q_stride = 0,
                              int max_ctx_override = 0, int surplus_rows = 0) {
  const Flat f = flatten(seqs);
  const AttnShape& sh = pool.shape;
  const int width = sh.n_heads * sh.head_dim;
  const int n_q = f.n_q + surplus_rows;
  if (q_stride == 0) q_stride = width;
  std::vector<float> q(static_cast<size_t>(n_q) * q_stride, 1e4f);  // junk outside the q columns
  int row = 0;
  for (const Seq& s : seqs)
    for (int j = 0; j < s.n_new; ++j, ++row)
      std::copy_n(&s.q[static_cast<size_t>(j) * width], width, &q[row * q_stride]);
  DevBuf<uint16_t> d_q(to_half(q)), d_out(static_cast<size_t>(n_q) * width);
  DevBuf<int32_t> d_qs(f.q_start), d_ctx(f.ctx_len), d_tab(f.tables);
  const cuda::AttnDims dims{n_q, f.max_q_len, max_ctx_override ? max_ctx_override : f.max_ctx};
  const size_t ws_bytes = cuda::attention_workspace_bytes(sh, static_cast<int>(seqs.size()), dims.max_ctx);
  DevBuf<unsigned char> d_ws(std::max<size_t>(ws_bytes, 16));
  d_ws.poison();
  d_out.poison();
  const PagedBatch b{static_cast<int>(seqs.size()), d_qs.get(), d_ctx.get(), d_tab.get(), f.max_blocks};
  auto H = [](const DevBuf<uint16_t>& buf) { return reinterpret_cast<__half*>(buf.get()); };
  check(cuda::attention(H(d_out), H(d_q), q_stride, H(pool.d_k), H(pool.d_v), b, sh, dims, d_ws.get(), ws_bytes,
                        stream),
        "cuda::attention");
  check(cudaStreamSynchronize(stream), "attention sync");
  if (!d_out.guards_intact() || !d_ws.guards_intact() || !pool.d_k.guards_intact())
    throw std::runtime_error("attention wrote outside its buffers");
  return d_out.download();
}

struct Case {
  int n_heads, n_kv_heads, head_dim, block_size;
};

// ---- host replay of the tensor-core prefill's fragment plumbing (no GPU) ----------------

struct Reg {  // a 32-bit register holding two halves (low half first)
  float lo = 0.0f, hi = 0.0f;
};

// ldmatrix.x4 as the PTX ISA defines it: lanes 8i..8i+7 supply the row addresses
// of matrix i; lane L receives from matrix i row L/4, halves 2(L%4) and 2(L%4)+1,
// or with .trans the halves at column L/4 of rows 2(L%4) and 2(L%4)+1. Also
// checks that each matrix's 8 rows fall in 8 distinct 16-byte bank groups.
void ldsm_x4(Reg (&out)[32][4], const std::vector<float>& smem, const int (&addr)[32], bool trans,
             bool& conflict) {
  for (int i = 0; i < 4; ++i) {
    unsigned groups = 0;
    for (int r = 0; r < 8; ++r) groups |= 1u << (addr[8 * i + r] % 8);
    conflict |= groups != 0xffu;
  }
  for (int L = 0; L < 32; ++L) {
    for (int i = 0; i < 4; ++i) {
      if (!trans) {
        const float* row = &smem[static_cast<size_t>(addr[8 * i + L / 4]) * 8];
        out[L][i] = {row[2 * (L % 4)], row[2 * (L % 4) + 1]};
      } else {
        out[L][i] = {smem[static_cast<size_t>(addr[8 * i + 2 * (L % 4)]) * 8 + L / 4],
                     smem[static_cast<size_t>(addr[8 * i + 2 * (L % 4) + 1]) * 8 + L / 4]};
      }
    }
  }
}

// mma.sync m16n8k16 with the PTX fragment layout, accumulated in double.
void mma_host(double (&c)[32][4], const Reg (&a)[32][4], const Reg (&b)[32][2]) {
  double A[16][16], B[16][8];
  for (int L = 0; L < 32; ++L) {
    const int g = L / 4, t = L % 4;
    for (int r = 0; r < 4; ++r) {  // a0..a3: rows g | g+8, k 2t | 8+2t
      A[g + 8 * (r % 2)][2 * t + 8 * (r / 2)] = a[L][r].lo;
      A[g + 8 * (r % 2)][2 * t + 8 * (r / 2) + 1] = a[L][r].hi;
    }
    for (int r = 0; r < 2; ++r) {  // b0, b1: k 2t | 8+2t, column g
      B[2 * t + 8 * r][g] = b[L][r].lo;
      B[2 * t + 8 * r + 1][g] = b[L][r].hi;
    }
  }
  for (int L = 0; L < 32; ++L) {
    const int g = L / 4, t = L % 4;
    for (int e = 0; e < 4; ++e) {
      double s = 0.0;
      for (int k = 0; k < 16; ++k) s += A[g + 8 * (e / 2)][k] * B[k][2 * t + e % 2];
      c[L][e] += s;
    }
  }
}

template <int HD>
void replay_prefill_fragments() {
  namespace pf = kernels::cuda::prefill;
  constexpr int BM = pf::kBM, BN = pf::kBN, CH = HD / 8;
  const auto Q = randn_h(BM * HD, 1), K = randn_h(BN * HD, 2), V = randn_h(BN * HD, 3);
  auto place = [](const std::vector<float>& src) {  // a row-major tile into swizzled smem
    std::vector<float> sm(src.size());
    for (int r = 0; r < static_cast<int>(src.size()) / HD; ++r)
      for (int d = 0; d < HD; ++d) sm[static_cast<size_t>(pf::sw<HD>(r, d / 8)) * 8 + d % 8] = src[r * HD + d];
    return sm;
  };
  const auto Qs = place(Q), Ks = place(K), Vs = place(V);
  bool conflict = false;
  int addr[32];
  for (int warp = 0; warp < BM / 16; ++warp) {
    static Reg qf[CH / 2][32][4];
    for (int kk = 0; kk < HD / 16; ++kk) {
      for (int L = 0; L < 32; ++L) addr[L] = pf::sw<HD>(pf::q_row(warp, L), pf::q_chunk(L, kk));
      ldsm_x4(qf[kk], Qs, addr, false, conflict);
    }
    double s[BN / 8][32][4] = {};
    for (int kk = 0; kk < HD / 16; ++kk) {
      for (int np = 0; np < BN / 16; ++np) {
        Reg b[32][4], b0[32][2], b1[32][2];
        for (int L = 0; L < 32; ++L) addr[L] = pf::sw<HD>(pf::k_row(L, np), pf::k_chunk(L, kk));
        ldsm_x4(b, Ks, addr, false, conflict);
        for (int L = 0; L < 32; ++L) {
          b0[L][0] = b[L][0], b0[L][1] = b[L][1], b1[L][0] = b[L][2], b1[L][1] = b[L][3];
        }
        mma_host(s[2 * np], qf[kk], b0);
        mma_host(s[2 * np + 1], qf[kk], b1);
      }
    }
    // S fragment (nt, lane, e) is S[row g | g+8][token nt*8 + 2t + e%2]; P := fp16(S).
    std::vector<double> P(16 * BN);
    double worst = 0.0;
    for (int L = 0; L < 32; ++L)
      for (int nt = 0; nt < BN / 8; ++nt)
        for (int e = 0; e < 4; ++e) {
          const int r = L / 4 + 8 * (e / 2), tok = nt * 8 + 2 * (L % 4) + e % 2;
          double want = 0.0;
          for (int d = 0; d < HD; ++d) want += double(Q[(warp * 16 + r) * HD + d]) * K[tok * HD + d];
          worst = std::max(worst, std::fabs(s[nt][L][e] - want));
          P[r * BN + tok] = round_half(static_cast<float>(s[nt][L][e]));
        }
    EXPECT_LT(worst, 1e-9) << "S = Q·Kᵀ, HD " << HD << " warp " << warp;
    static Reg pa[BN / 16][32][4];
    for (int L = 0; L < 32; ++L)
      for (int nt = 0; nt < BN / 8; ++nt)
        for (int hi = 0; hi < 2; ++hi)
          pa[nt / 2][L][pf::pa_reg(nt, hi)] = {round_half(static_cast<float>(s[nt][L][2 * hi])),
                                               round_half(static_cast<float>(s[nt][L][2 * hi + 1]))};
    static double o[CH][32][4];
    for (auto& x : o)
      for (auto& y : x)
        for (double& z : y) z = 0.0;
    for (int kk = 0; kk < BN / 16; ++kk) {
      for (int dp = 0; dp < HD / 16; ++dp) {
        Reg b[32][4], b0[32][2], b1[32][2];
        for (int L = 0; L < 32; ++L) addr[L] = pf::sw<HD>(pf::v_row(L, kk), pf::v_chunk(L, dp));
        ldsm_x4(b, Vs, addr, true, conflict);
        for (int L = 0; L < 32; ++L) {
          b0[L][0] = b[L][0], b0[L][1] = b[L][1], b1[L][0] = b[L][2], b1[L][1] = b[L][3];
        }
        mma_host(o[2 * dp], pa[kk], b0);
        mma_host(o[2 * dp + 1], pa[kk], b1);
      }
    }
    worst = 0.0;
    for (int L = 0; L < 32; ++L)
      for (int dt = 0; dt < CH; ++dt)
        for (int e = 0; e < 4; ++e) {
          const int r = L / 4 + 8 * (e / 2), d = dt * 8 + 2 * (L % 4) + e % 2;
          double want = 0.0;
          for (int tok = 0; tok < BN; ++tok) want += P[r * BN + tok] * V[tok * HD + d];
          worst = std::max(worst, std::fabs(o[dt][L][e] - want));
        }
    EXPECT_LT(worst, 1e-9) << "O = P·V, HD " << HD << " warp " << warp;
  }
  EXPECT_FALSE(conflict) << "an ldmatrix phase hits one bank group twice, HD " << HD;
}

TEST(AttentionLayoutHost, PrefillFragmentsComputeQKtAndPV) {
  replay_prefill_fragments<64>();
  replay_prefill_fragments<128>();
}

class CudaAttention : public GpuTest {
 protected:
  // Decode rows (1 new token; 1, 2 and 4 splits), a fresh prefill, a chunked
  // continuation and a long prefill, all in one batch.
  void check_mixed(const Case& c, bool fused_q) {
    const AttnShape sh{c.n_heads, c.n_kv_heads, c.head_dim, c.block_size};
    Pool pool(sh, 2600 / c.block_size + 16, 100 + c.head_dim);
    std::vector<Seq> seqs;
    const int shapes[][2] = {{1, 1}, {1, 300}, {70, 70}, {1, 1000}, {5, 600}, {130, 200}, {1, 257}};
    uint32_t seed = 7;
    for (const auto& s : shapes) seqs.push_back(pool.make_seq(s[0], s[1], seed++));
    const int64_t stride = fused_q ? static_cast<int64_t>(c.n_heads + 2 * c.n_kv_heads) * c.head_dim : 0;
    const auto got = to_float(run_gpu(pool, seqs, stream_, stride));
    const auto ref = run_cpu(pool, seqs);
    const ErrorStats s = compare(got, ref);
    const std::string what = "heads " + std::to_string(c.n_heads) + "/" + std::to_string(c.n_kv_heads) + " hd " +
                             std::to_string(c.head_dim) + " bs " + std::to_string(c.block_size);
    EXPECT_EQ(s.nonfinite, 0u) << what << ": " << s.str();
    EXPECT_LT(s.nmse, 2e-5) << what << ": " << s.str();
    EXPECT_LT(s.max_abs, 1.5e-2) << what << ": " << s.str();
  }
};

TEST_F(CudaAttention, Llama7bShapesMatchCpu) { check_mixed({32, 32, 128, 16}, true); }
TEST_F(CudaAttention, GqaHeadDim128MatchesCpu) { check_mixed({32, 8, 128, 16}, false); }
TEST_F(CudaAttention, GqaHeadDim64MatchesCpu) { check_mixed({12, 2, 64, 32}, false); }
TEST_F(CudaAttention, Stories260kShapesMatchCpu) { check_mixed({8, 4, 8, 16}, false); }
TEST_F(CudaAttention, OddShapesMatchCpu) { check_mixed({6, 1, 24, 7}, true); }

// A sequence's rows are bitwise the same alone and inside a mixed batch, and a
// decode row does not depend on the max_ctx bound (grid and workspace sizes).
TEST_F(CudaAttention, RowsAreBatchInvariant) {
  for (const Case c : {Case{32, 8, 128, 16}, Case{8, 4, 8, 16}}) {
    const AttnShape sh{c.n_heads, c.n_kv_heads, c.head_dim, c.block_size};
    Pool pool(sh, 200, 9);
    const Seq dec = pool.make_seq(1, 700, 1), pre = pool.make_seq(40, 90, 2);
    const Seq other1 = pool.make_seq(1, 33, 3), other2 = pool.make_seq(64, 64, 4);
    const int width = c.n_heads * c.head_dim;
    const auto batch = run_gpu(pool, {other1, dec, other2, pre}, stream_);
    const auto alone_dec = run_gpu(pool, {dec}, stream_);
    const auto alone_dec_big = run_gpu(pool, {dec}, stream_, 0, 4096);
    const auto alone_pre = run_gpu(pool, {pre}, stream_);
    const size_t dec_row = static_cast<size_t>(other1.n_new) * width;
    const size_t pre_row = static_cast<size_t>(other1.n_new + dec.n_new + other2.n_new) * width;
    EXPECT_TRUE(std::equal(alone_dec.begin(), alone_dec.end(), batch.begin() + dec_row))
        << "decode row, hd " << c.head_dim;
    EXPECT_TRUE(alone_dec_big == alone_dec) << "decode row vs max_ctx, hd " << c.head_dim;
    EXPECT_TRUE(std::equal(alone_pre.begin(), alone_pre.end(), batch.begin() + pre_row))
        << "prefill rows, hd " << c.head_dim;
  }
}

// AttnDims::n_q may exceed the real row count (an upper bound): surplus rows
// write nothing (their out rows stay poisoned) and read nothing past the batch
// (guards), on every path: SIMT prefill (hd 24, 8), tensor-core prefill (hd
// 128) and decode; the real rows are bitwise those of an exact n_q.
TEST_F(CudaAttention, UpperBoundRowCountWritesNoSurplusRows) {
  for (const Case c : {Case{6, 1, 24, 7}, Case{8, 4, 8, 16}, Case{32, 8, 128, 16}}) {
    const AttnShape sh{c.n_heads, c.n_kv_heads, c.head_dim, c.block_size};
    Pool pool(sh, 64, 31);
    // The last sequence is a prefill: a surplus row used to be mapped to it.
    const std::vector<Seq> seqs{pool.make_seq(1, 50, 1), pool.make_seq(30, 45, 2)};
    const int width = c.n_heads * c.head_dim, real = 31, surplus = 17;
    const auto exact = run_gpu(pool, seqs, stream_);
    const auto bound = run_gpu(pool, seqs, stream_, 0, 0, surplus);
    ASSERT_EQ(bound.size(), static_cast<size_t>(real + surplus) * width);
    EXPECT_TRUE(std::equal(exact.begin(), exact.end(), bound.begin())) << "hd " << c.head_dim;
    const size_t written = static_cast<size_t>(
        std::count_if(bound.begin() + static_cast<size_t>(real) * width, bound.end(), [](uint16_t h) { return h != 0xFFFF; }));
    EXPECT_EQ(written, 0u) << "hd " << c.head_dim << ": surplus rows were written";
  }
}

// Prefilling 200 tokens at once or as a 123-token prefix then a 77-token chunk
// gives the same bits for the chunk's rows (the cache holds all 200 either way).
TEST_F(CudaAttention, ChunkedPrefillIsBitwiseInvariant) {
  for (const Case c : {Case{32, 32, 128, 16}, Case{12, 2, 64, 32}, Case{8, 4, 8, 16}}) {
    const AttnShape sh{c.n_heads, c.n_kv_heads, c.head_dim, c.block_size};
    Pool pool(sh, 64, 21);
    const Seq full = pool.make_seq(200, 200, 5);
    Seq chunk = full;
    chunk.n_new = 77;
    const size_t width = static_cast<size_t>(c.n_heads) * c.head_dim;
    chunk.q.assign(full.q.end() - 77 * width, full.q.end());
    const auto a = run_gpu(pool, {full}, stream_);
    const auto b = run_gpu(pool, {chunk}, stream_);
    EXPECT_TRUE(std::equal(b.begin(), b.end(), a.end() - 77 * width)) << "hd " << c.head_dim;
    Seq head = full;  // and the first 123 rows as their own chunk (ctx 123)
    head.n_new = head.ctx = 123;
    head.q.resize(123 * width);
    const auto h = run_gpu(pool, {head}, stream_);
    EXPECT_TRUE(std::equal(h.begin(), h.end(), a.begin())) << "hd " << c.head_dim;
  }
}

}  // namespace
}  // namespace chatradio::gpu_test
