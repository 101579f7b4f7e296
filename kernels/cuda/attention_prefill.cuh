// Internal: the tensor-core prefill attention (attention_prefill.cu), launched
// by cuda::attention (attention.cu) for sequences with more than one new token.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/ops.h"

namespace chatradio::kernels::cuda::detail {

// Head dims with a tensor-core prefill kernel.
inline bool prefill_mma_supported(int head_dim) { return head_dim == 64 || head_dim == 128; }

// Rows of sequences with n_new > 1; other sequences' blocks exit at once.
// grid = (ceil(max_q_len / 64), n_heads, n_seqs).
cudaError_t attention_prefill_mma(__half* out, const __half* q, int64_t q_stride, const __half* k_cache,
                                  const __half* v_cache, const PagedBatch& batch, const AttnShape& shape,
                                  int max_q_len, cudaStream_t stream);

}  // namespace chatradio::kernels::cuda::detail
