// Host-side repack of GPTQ v1 int4 tensors into our layout (int4_layout.h).
// Runs once per weight at load; plain loops, no device access. A .cu only
// because this folder's library compiles *.cu.
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/int4_layout.h"

namespace chatradio::kernels::cuda {

cudaError_t int4_repack_gptq(uint32_t* packed, uint32_t* sz, const int32_t* qweight, const int32_t* qzeros,
                             const uint16_t* scales, const int32_t* g_idx, int k, int n, int group) {
  using namespace int4_layout;
  if (packed == nullptr || sz == nullptr || qweight == nullptr || qzeros == nullptr || scales == nullptr ||
      k <= 0 || n <= 0 || n % 8 != 0 || !(group == 32 || group == 64 || group == 128) || k % group != 0) {
    return cudaErrorInvalidValue;
  }
  // The layout indexes scales by i / group: any other g_idx (act-order) would be
  // dequantised with the wrong scales, silently.
  if (g_idx != nullptr) {
    for (int i = 0; i < k; ++i) {
      if (g_idx[i] != i / group) return cudaErrorInvalidValue;
    }
  }
  const int kc_count = n_chunks(k);
  const int n_units = n / kUnitN;
  const int n_groups = k / group, n_groups_pad = k_pad(k) / group;

  for (int un = 0; un < n_units; ++un) {
    for (int uk = 0; uk < kc_count; ++uk) {
      for (int lane = 0; lane < 32; ++lane) {
        const int g = lane / 4, t = lane % 4;
        const int col = un * kUnitN + g;
        for (int q = 0; q < 4; ++q) {
          // The word's 8 inputs are one aligned GPTQ int32 (8 nibbles along k).
          const int k0 = uk * kUnitK + k_in_unit(t, q, 0);
          uint32_t out = 0;
          if (k0 < k) {
            const uint32_t src = static_cast<uint32_t>(qweight[static_cast<size_t>(k0 / 8) * n + col]);
            for (int p = 0; p < 8; ++p) {
              const int o = k_in_unit(t, q, p) - k_in_unit(t, q, 0);  // 0..7 inside the int32
              out |= ((src >> (4 * o)) & 0xFu) << (4 * p);
            }
          }
          packed[word_index(un, uk, kc_count, lane, q)] = out;
        }
      }
    }
  }

  for (int gi = 0; gi < n_groups_pad; ++gi) {
    for (int col = 0; col < n; ++col) {
      uint32_t s_bits = 0, z_bits = 0x6400;  // padding groups: scale 0, zero 1024 → weight 0
      if (gi < n_groups) {
        s_bits = scales[static_cast<size_t>(gi) * n + col];
        const uint32_t zq = static_cast<uint32_t>(qzeros[static_cast<size_t>(gi) * (n / 8) + col / 8]);
        const uint32_t zero = ((zq >> (4 * (col % 8))) & 0xFu) + 1;  // GPTQ v1 stores zero - 1
        // 1024 + zero (1..16) is exact in fp16: exponent of 1024, mantissa = zero.
        z_bits = 0x6400u + zero;
      }
      sz[static_cast<size_t>(gi) * n + col] = s_bits | (z_bits << 16);
    }
  }
  return cudaSuccess;
}

}  // namespace chatradio::kernels::cuda
