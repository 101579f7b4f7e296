// Int4 weight-only matmul for the CPU backend: the kernel-side weight layout,
// its construction from GPTQ v1 tensors, and the op.
//
// Math. A GPTQ weight is w[o, i] = s[g, o] * (q[i, o] - z[g, o]), q in 0..15,
// g = g_idx[i]. Decode is memory-bound (7B: 3.6 GB of nibbles per token), so
// like other fast CPU engines we quantize each activation row to int8 per
// block of 32 inputs (x ≈ d_b * xq, |xq| <= 127) and run integer dot products:
//
//   y[o] = Σ_g [ Σ_{b in g} (s_g * d_b) * Σ_{i in b} q_i * xq_i ]  -  (s_g * z_g) * X_g
//   X_g  = Σ_{b in g} d_b * Σ_{i in b} xq_i        (per activation row and group)
//
// Integer parts are exact (|Σ q*xq| < 2^16), so every ISA path computes the
// same integers; the float steps per output element are a fixed sequence of
// correctly rounded ops (cvt, mul, fma per block; one fma per group), written
// identically in every path and compiled with -ffp-contract=off. Hence:
//  - batch invariance: an output element's bits depend only on its own
//    activation row and weight column, never on m, the other rows, the thread
//    count or the tile it was computed in;
//  - the scalar, AVX2 and AVX-512 VNNI paths produce bitwise identical output.
//
// Layout (Q4Matrix). Output columns are interleaved in panels of 8 so one
// 256-bit integer lane holds one column: a lane's 4 bytes are 4 consecutive
// inputs of that column, and a broadcast of 4 activation bytes feeds all 8
// columns at once (no horizontal sums, each panel one contiguous stream).
// Per panel and block of 32 inputs, 128 bytes: byte j*32 + 4c + t (j 0..3,
// column c 0..7, t 0..3) holds input 4j+t of column c in its low nibble and
// input 16+4j+t in its high nibble; one AND and one shift+AND give two u8
// vectors, "quad j" and "quad j+4". Scales (f16) and zero points (u8, the real
// zero 0..16, v1 offset already removed) are per panel, group and column.
// Inputs may be permuted (GPTQ act-order): kernel position p reads input
// perm[p]; groups are then contiguous runs of blocks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu/half.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/thread_pool.h"

namespace chatradio::kernels::cpu {

inline constexpr int kQ4BlockInputs = 32;  // inputs per int8 activation block
inline constexpr int kQ4PanelCols = 8;     // output columns per interleaved panel
inline constexpr int kQ4BlockBytes = 128;  // nibbles of one block of one panel

// One cache line, so std::vector gives 64-byte aligned nibble storage.
struct alignas(64) Q4Line {
  uint8_t bytes[64];
};

struct Q4Matrix {
  int n = 0;             // output features (real)
  int k = 0;             // input features (real) = row length of x
  int n_panels = 0;      // ceil(n / 8)
  int k_blocks = 0;      // blocks of 32 kernel positions (padded)
  int group_blocks = 0;  // blocks per scale group; the last group may be shorter
  int n_groups = 0;      // ceil(k_blocks / group_blocks)
  std::vector<Q4Line> qs;        // [n_panels, k_blocks, 128 bytes] nibbles
  std::vector<uint16_t> scales;  // [n_panels, n_groups, 8] f16
  std::vector<uint8_t> zeros;    // [n_panels, n_groups, 8] zero point 0..16
  std::vector<int32_t> perm;     // [k_blocks * 32] input of each position, -1 = padding;
                                 // empty when position p is input p (p < k) and padding beyond

  // A matrix read from a weight cache (model/weight_cache.h) owns none of
  // the arrays above: they stay empty and these point into the mapped file,
  // which `keep` holds open. Mapping a cached layout is what lets a restart
  // skip the repack and the anonymous memory it would fill.
  struct Borrowed {
    std::shared_ptr<const void> keep;
    const uint8_t* qs = nullptr;       // [n_panels, k_blocks, 128]
    const uint16_t* scales = nullptr;  // [n_panels, n_groups, 8]
    const uint8_t* zeros = nullptr;    // [n_panels, n_groups, 8]
    const int32_t* perm = nullptr;     // [k_blocks * 32], or null for the identity
  } borrowed;

  bool is_borrowed() const { return borrowed.keep != nullptr; }
  const uint8_t* nibbles() const {
    return is_borrowed() ? borrowed.qs : reinterpret_cast<const uint8_t*>(qs.data());
  }
  const uint16_t* scale_data() const { return is_borrowed() ? borrowed.scales : scales.data(); }
  const uint8_t* zero_data() const { return is_borrowed() ? borrowed.zeros : zeros.data(); }
  // Null when position p is input p.
  const int32_t* perm_data() const {
    return is_borrowed() ? borrowed.perm : (perm.empty() ? nullptr : perm.data());
  }
  size_t nibble_bytes() const { return static_cast<size_t>(n_panels) * k_blocks * kQ4BlockBytes; }
  size_t param_count() const { return static_cast<size_t>(n_panels) * n_groups * kQ4PanelCols; }  // scales, zeros
  // Bytes a matmul streams from memory (nibbles + scales + zeros).
  size_t weight_bytes() const;
};

// Raw GPTQ v1 tensors of one linear W[n, k] (HF layout), as stored: little
// endian, possibly unaligned (mmapped). Stored dims may exceed the real ones
// (padding); only inputs < k and outputs < n are read.
struct Q4GptqSource {
  const void* qweight = nullptr;  // int32 [k_stored / 8, n_stored]; nibble j of word r = input 8r+j
  const void* qzeros = nullptr;   // int32 [n_groups, n_stored / 8]; nibble j = zero of column 8c+j, minus 1
  const void* scales = nullptr;   // f16   [n_groups, n_stored]
  const void* g_idx = nullptr;    // int32 [k_stored]; group of each input
  int k_stored = 0, n_stored = 0, n_groups = 0;
  int k = 0, n = 0;  // real dims
};

// Repacks GPTQ tensors into the kernel layout, honouring g_idx (act-order):
// inputs are ordered by (group, index). Throws std::invalid_argument when the
// tensors are inconsistent or the groups cannot be laid on 32-input blocks
// (with more than one group, every group but the last must hold the same
// number of inputs, a multiple of 32).
Q4Matrix q4_from_gptq(const Q4GptqSource& src);

// Appends src's output columns after dst's, so a large matrix can be built a
// slice of output rows at a time (the loader quantizes a 7B lm_head in pieces
// instead of holding it in float). dst.n must be a multiple of 8 (whole
// panels), both must share k, the group layout and the input order, and
// neither may be borrowed. Throws std::invalid_argument otherwise. An empty
// dst takes src as is.
void q4_append_columns(Q4Matrix& dst, const Q4Matrix& src);

// out[m, n] = x[m, k] · Wᵀ with W the dequantized int4 weight. out must not
// alias x. pool may be null (serial; then scratch is allocated per call).
// Multi-threaded over output panels; m = 1 (decode) .. hundreds (prefill).
void matmul_q4(float* out, const float* x, const Q4Matrix& w, int m, ThreadPool* pool);
// Same, on an explicit path (all paths give the same bits; tests, benches); throws std::invalid_argument
// when the path is not supported here.
void matmul_q4(float* out, const float* x, const Q4Matrix& w, int m, ThreadPool* pool, CpuIsa isa);

// The activation quantization the kernels use, exposed as the exact reference
// for tests: xq[k_blocks*32], d[k_blocks] (x ≈ d * xq per block),
// gsum[n_groups] (X_g above). Gathers through w.perm; padding reads as 0.
void q4_quantize_row(int8_t* xq, float* d, float* gsum, const float* x, const Q4Matrix& w);

namespace detail {

// Plain-pointer views passed to the per-ISA translation units, which are
// compiled with ISA flags and therefore must not instantiate any inline or
// template code from shared headers (the linker could keep their AVX copy).
struct Q4WeightsRef {
  const uint8_t* qs;       // [n_panels, k_blocks, 128]
  const uint16_t* scales;  // [n_panels, n_groups, 8]
  const uint8_t* zeros;    // [n_panels, n_groups, 8]
  const int32_t* perm;     // [k_blocks * 32] or null (identity)
  int n, k, n_panels, k_blocks, group_blocks, n_groups;
};

struct Q4ActsRef {
  const int8_t* xq;   // [m, q_stride]
  const float* d;     // [m, k_blocks]
  const float* gsum;  // [m, n_groups]
  int64_t q_stride;   // bytes per row of xq (k_blocks * 32)
  int row_chunk;      // rows per GEMM cache block (a multiple of 4): those int8
                      // rows stay in L2 while a thread's panels stream past
};

// Quantizes activation rows [r0, r1) of x[m, k] into xq/d/gsum (row strides
// as in Q4ActsRef).
using Q4QuantFn = void (*)(int8_t* xq, float* d, float* gsum, const float* x, const Q4WeightsRef& w,
                           int r0, int r1);
// out[m, ldo] columns of panels [p0, p1) for all m rows.
using Q4GemmFn = void (*)(float* out, int64_t ldo, const Q4ActsRef& a, int m, const Q4WeightsRef& w,
                          int p0, int p1);

void q4_quant_scalar(int8_t* xq, float* d, float* gsum, const float* x, const Q4WeightsRef& w, int r0,
                     int r1);
void q4_gemm_scalar(float* out, int64_t ldo, const Q4ActsRef& a, int m, const Q4WeightsRef& w, int p0,
                    int p1);
void q4_quant_avx2(int8_t* xq, float* d, float* gsum, const float* x, const Q4WeightsRef& w, int r0,
                   int r1);
void q4_gemm_avx2(float* out, int64_t ldo, const Q4ActsRef& a, int m, const Q4WeightsRef& w, int p0,
                  int p1);
void q4_gemm_avx512vnni(float* out, int64_t ldo, const Q4ActsRef& a, int m, const Q4WeightsRef& w,
                        int p0, int p1);

}  // namespace detail
}  // namespace chatradio::kernels::cpu
