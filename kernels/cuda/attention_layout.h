// Shared-memory and fragment index algebra of the tensor-core prefill
// (attention_prefill.cu), in one place so the tests can replay it on the host
// against the PTX definitions of ldmatrix and mma.sync (no GPU needed).
// Plain C++ (usable from .cpp files).
#pragma once

#include "kernels/cuda/int4_layout.h"  // CHATRADIO_HD

namespace chatradio::kernels::cuda::prefill {

constexpr int kBM = 64;  // query rows per block (4 warps × 16)
constexpr int kBN = 64;  // KV tokens per tile

// 16-byte chunk c (dims 8c..8c+7) of tile row r sits at uint4 index sw(r, c):
// XOR with r % 8 spreads the 8 rows an ldmatrix phase reads (same logical
// chunk) over 8 distinct bank groups. Needs HD / 8 >= 8 chunks per row.
template <int HD>
CHATRADIO_HD constexpr int sw(int r, int c) {
  return r * (HD / 8) + (c ^ (r & 7));
}

// ldmatrix.x4 row addresses (row, chunk) each lane supplies:
// Q as the A operand of k-step kk (matrices: rows 0-7 | 8-15 × dims 16kk.. | 16kk+8..).
CHATRADIO_HD constexpr int q_row(int warp, int lane) { return warp * 16 + lane % 16; }
CHATRADIO_HD constexpr int q_chunk(int lane, int kk) { return 2 * kk + lane / 16; }
// K as the B operand (tokens × dims, non-transposed): n-tiles 2np and 2np+1 of k-step kk.
CHATRADIO_HD constexpr int k_row(int lane, int np) { return np * 16 + lane % 8 + (lane / 16) * 8; }
CHATRADIO_HD constexpr int k_chunk(int lane, int kk) { return 2 * kk + (lane / 8) % 2; }
// V as the B operand of P·V (transposed load): tokens 16kk.., dim n-tiles 2dp and 2dp+1.
CHATRADIO_HD constexpr int v_row(int lane, int kk) { return kk * 16 + lane % 8 + ((lane / 8) % 2) * 8; }
CHATRADIO_HD constexpr int v_chunk(int lane, int dp) { return 2 * dp + lane / 16; }

// The S accumulator of n-tile nt (rows g / g+8 = hi 0 / 1) becomes register
// pa_reg(nt, hi) of the P A-fragment of k-step nt / 2.
CHATRADIO_HD constexpr int pa_reg(int nt, int hi) { return (nt % 2) * 2 + hi; }

}  // namespace chatradio::kernels::cuda::prefill
