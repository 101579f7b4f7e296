// Device helpers of CudaLlama (llama_cuda_kernels.h): the random fills of
// CudaLlama::synthetic. The model's math lives in kernels/cuda.
#include "model/cuda/llama_cuda_kernels.h"

namespace chatradio::model::cuda_detail {
namespace {

constexpr int kThreads = 256;

// splitmix64 of (seed, index): a counter-based generator, so the values depend
// only on the element's index and the seed, never on the grid.
__device__ uint64_t mix64(uint64_t seed, uint64_t i) {
  uint64_t x = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
__device__ float unit_float(uint64_t h) { return static_cast<float>(h >> 40) * (1.0f / 16777216.0f); }  // [0, 1)

__global__ void fill_u32_kernel(uint32_t* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    p[i] = static_cast<uint32_t>(mix64(seed, i));
  }
}

__global__ void fill_sz_kernel(uint32_t* p, size_t n, uint64_t seed, float lo, float hi, uint32_t zero_bits) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const __half s = __float2half_rn(lo + (hi - lo) * unit_float(mix64(seed, i)));
    p[i] = static_cast<uint32_t>(__half_as_ushort(s)) | (zero_bits << 16);
  }
}

__global__ void fill_half_kernel(__half* p, size_t n, uint64_t seed, float center, float amp) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    p[i] = __float2half_rn(center + amp * (2.0f * unit_float(mix64(seed, i)) - 1.0f));
  }
}

// Enough blocks to fill the GPU; the grid-stride loops cover any n.
int fill_blocks(size_t n) {
  const size_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < 4096 ? (b > 0 ? b : 1) : 4096);
}

}  // namespace

cudaError_t fill_random_u32(uint32_t* p, size_t n, uint64_t seed, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  fill_u32_kernel<<<fill_blocks(n), kThreads, 0, stream>>>(p, n, seed);
  return cudaGetLastError();
}

cudaError_t fill_random_sz(uint32_t* p, size_t n, uint64_t seed, float scale_lo, float scale_hi, int zero,
                           cudaStream_t stream) {
  if (zero < 0 || zero > 16 || !(scale_lo <= scale_hi)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  // The high half is the fp16 value 1024 + zero: exponent 10, mantissa = zero.
  const uint32_t zero_bits = 0x6400u + static_cast<uint32_t>(zero);
  fill_sz_kernel<<<fill_blocks(n), kThreads, 0, stream>>>(p, n, seed, scale_lo, scale_hi, zero_bits);
  return cudaGetLastError();
}

cudaError_t fill_random_half(__half* p, size_t n, uint64_t seed, float center, float amp, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  fill_half_kernel<<<fill_blocks(n), kThreads, 0, stream>>>(p, n, seed, center, amp);
  return cudaGetLastError();
}

}  // namespace chatradio::model::cuda_detail
