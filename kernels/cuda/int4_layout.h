// Our int4 weight layout ("cr4"), shared by the host repack (int4_repack.cu),
// the GEMV/GEMM kernels and the tests' host emulation, so the index algebra
// lives in exactly one place. Plain C++ (usable from .cpp files).
//
// W[n, k] (HF linear layout: out_features n, in_features k) is cut into units
// of 8 outputs × 128 inputs. One unit is 512 bytes: 32 lanes × 16 bytes, and
// lane (g = lane/4, t = lane%4) holds exactly its mma.sync m16n8k16 B-fragment
// nibbles for output n = 8·unit_n + g across the unit's 8 k-steps. So the GEMV
// reads a unit with one coalesced 128-bit load per lane and the GEMM copies
// units to shared memory unchanged.
//
// Inside a unit, lane t's word q (q = 0..3) holds the 8 consecutive inputs
//   k = 128·unit_k + 32q + 8t + o,  o = 0..7,
// with input offset o at nibble position p (bits 4p..4p+3) where
//   o = 2·(p & 3) + (p >> 2)   (even offsets in the low half-word, odd in the high),
// so (word >> 4j) & 0x000F000F isolates offsets (2j, 2j+1) as the two halves of
// a half2, and OR-ing 0x6400 turns each nibble v into the fp16 value 1024 + v.
// The matching activation fragment is the 16-byte load x[m, 128·unit_k + 32q + 8t ..+7]:
// the k-slot → input mapping is a permutation inside each 32-input quarter, applied
// identically to both operands, so the dot product is unchanged.
//
// Units are stored n-major, k-minor: unit (un, uk) starts at 32-bit word
// ((un · KC + uk) · 32 + lane) · 4, KC = k_pad / 128. K is zero-padded to a multiple
// of 128 (padding nibbles 0, padding groups scale 0), so any k ≡ 0 mod group works.
//
// Scales and zeros: sz[gi, n] (uint32 = half2 {scale, 1024 + zero}) for
// gi < k_pad / group, where zero = stored_qzero + 1 (GPTQ v1). The kernels compute
// w = fp16((1024 + q) − (1024 + zero)) · scale: the subtraction is exact and the
// product is rounded once, so a dequantised weight is exactly fp16(scale · (q − zero)).
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define CHATRADIO_HD __host__ __device__
#else
#define CHATRADIO_HD
#endif

namespace chatradio::kernels::cuda::int4_layout {

constexpr int kUnitN = 8;     // outputs per unit
constexpr int kUnitK = 128;   // inputs per unit ("chunk")
constexpr int kSlices = 4;    // chunk uk accumulates into slice uk % kSlices (see docs/cuda.md)
constexpr int kGemvMaxM = 16; // int4_matmul uses the GEMV up to this many rows

CHATRADIO_HD constexpr int k_pad(int k) { return (k + kUnitK - 1) / kUnitK * kUnitK; }
CHATRADIO_HD constexpr int n_chunks(int k) { return k_pad(k) / kUnitK; }

// Input offset (0..127) inside a unit of lane t's word q, nibble position p.
CHATRADIO_HD constexpr int k_in_unit(int t, int q, int p) { return 32 * q + 8 * t + 2 * (p & 3) + (p >> 2); }

// Index (in 32-bit words) of lane `lane`'s word q of unit (un, uk).
CHATRADIO_HD constexpr size_t word_index(int un, int uk, int kc_count, int lane, int q) {
  return ((static_cast<size_t>(un) * kc_count + uk) * 32 + lane) * 4 + q;
}

// Group of the inputs a lane's word q covers in chunk uk (groups are 32, 64 or
// 128 inputs, so a 32-input quarter never straddles two groups).
CHATRADIO_HD constexpr int group_of(int uk, int q, int group) { return (uk * kUnitK + 32 * q) / group; }

inline size_t packed_words(int n, int k) { return static_cast<size_t>(n) * k_pad(k) / 8; }
inline size_t sz_words(int n, int k, int group) { return static_cast<size_t>(k_pad(k) / group) * n; }

}  // namespace chatradio::kernels::cuda::int4_layout
