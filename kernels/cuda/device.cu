// prepare_device (cuda_ops.h): the per-device set-up of the kernels, made once
// per device by the owner of the device (CudaLlama, the tests' fixture, the
// benchmarks) instead of on every launch, so a launch is exactly one driver
// call and stream capture (CUDA graphs) sees nothing but kernels.
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace chatradio::kernels::cuda {

cudaError_t prepare_device() {
  for (cudaError_t e : {detail::int4_gemm_set_attributes(), detail::attention_prefill_set_attributes()}) {
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace chatradio::kernels::cuda
