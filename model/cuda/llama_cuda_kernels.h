// The few device helpers CudaLlama needs beyond kernels/cuda (internal to
// model/cuda: llama_cuda.cpp calls them, llama_cuda.cu defines them). Same
// conventions as kernels/cuda/cuda_ops.h: destination first, enqueue on
// `stream`, return the launch's cudaError_t. C++17 (nvcc compiles the .cu).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace chatradio::model::cuda_detail {

// Synthetic weights (CudaLlama::synthetic), a counter-based hash of (seed, index)
// so the contents do not depend on the launch shape:
// p[n] = random 32-bit words (any word is 8 valid int4 nibbles).
cudaError_t fill_random_u32(uint32_t* p, size_t n, uint64_t seed, cudaStream_t stream);
// p[n] = half2 {scale, 1024 + zero} scale/zero words with scale uniform in
// [scale_lo, scale_hi) and the given zero point (kernels/cuda/int4_layout.h).
cudaError_t fill_random_sz(uint32_t* p, size_t n, uint64_t seed, float scale_lo, float scale_hi, int zero,
                           cudaStream_t stream);
// p[n] = fp16 uniform in [center − amp, center + amp).
cudaError_t fill_random_half(__half* p, size_t n, uint64_t seed, float center, float amp, cudaStream_t stream);

}  // namespace chatradio::model::cuda_detail
