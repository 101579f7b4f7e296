// GPTQ v1 4-bit checkpoints (the AutoGPTQ / vLLM / TGI layout), see
// docs/gptq-format.md. For a linear W[out, in] (HF layout) named P:
//   P.qweight int32 [in_p/8, out_p]   nibble j (low bits first) of word [r, c]
//                                     = q of input 8r+j, output c
//   P.qzeros  int32 [n_groups, out_p/8]  nibble j of word [g, c] = zero of
//                                     output 8c+j in group g, stored minus 1
//   P.scales  f16   [n_groups, out_p]
//   P.g_idx   int32 [in_p]            group of each input (i / group unless act-order)
//   W[o, i] = scales[g, o] * (q[i, o] - zero[g, o]),  g = g_idx[i].
// Odd dims: in_p = in rounded up to 8, out_p = out rounded up to 8; the
// padding is exact zero weights and ignored by readers (real dims come from
// config.json). n_groups = ceil(in_p / group); group = in_p for group_size -1.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/q4.h"
#include "model/safetensors.h"

namespace chatradio::model {

struct GptqShape {
  int in = 0, out = 0;       // real features (config.json)
  int group_size = 128;      // as configured: a positive multiple of 32, or -1 (one group)
  int group = 0;             // inputs per group in the stored tensors
  int in_padded = 0;         // in rounded up to 8
  int out_padded = 0;        // out rounded up to 8
  int n_groups = 0;          // ceil(in_padded / group)
};

// Computes the stored shapes. Throws ModelError for non-positive dims or a
// group_size other than -1 or a positive multiple of 32 (the CPU kernel lays
// groups on 32-input blocks).
GptqShape gptq_shape(int in, int out, int group_size);

// Owning tensors, as a quantizer writes them.
struct GptqTensors {
  GptqShape shape;
  std::vector<int32_t> qweight;  // [in_padded/8, out_padded]
  std::vector<int32_t> qzeros;   // [n_groups, out_padded/8]
  std::vector<uint16_t> scales;  // [n_groups, out_padded] f16 bits
  std::vector<int32_t> g_idx;    // [in_padded]
};

// Non-owning view of the same (checkpoint tensors are mmapped: the pointers
// may be unaligned, and are read through memcpy). g_idx may be null: i / group.
struct GptqView {
  std::string name;  // tensor prefix, for messages ("model.layers.0.mlp.down_proj")
  GptqShape shape;
  const void* qweight = nullptr;  // int32 [in_padded/8, out_padded]
  const void* qzeros = nullptr;   // int32 [n_groups, out_padded/8]
  const void* scales = nullptr;   // f16 [n_groups, out_padded]
  const void* g_idx = nullptr;    // int32 [in_padded] or null
};

GptqView gptq_view_of(const GptqTensors& t, const std::string& name = "gptq");

// Round-to-nearest quantization of w[out, in] (the GPTQ reference grid, no
// Hessian updates). Per group and output: asymmetric takes the range
// [min(w, 0), max(w, 0)], scale = range/15 rounded to f16, zero =
// round(-min/scale); a zero of 0 cannot be stored in v1 (stored zero-1 = -1),
// so that case uses zero 1 and scale = max/14. Symmetric: scale =
// 2*max|w|/15, zero 8. An all-zero group gets scale 2/15, zero 8. Every
// element then satisfies |w - deq| <= scale/2 (up to the f16 rounding of the
// scale), and zeros, including all padding, dequantize to exactly 0.
GptqTensors gptq_quantize(const float* w /*[out, in]*/, int out, int in, int group_size, bool sym);

// w[out, in] (real dims) = the dequantized weight, honouring g_idx.
void gptq_dequantize(float* w /*[out, in]*/, const GptqView& v);

// Validates the tensors of linear `name` against the expected shape: dtypes
// int32/int32/f16/int32, shapes, byte sizes, finite scales, g_idx values in
// [0, n_groups).
// g_idx may be null (absent from the checkpoint). Throws ModelError naming the
// tensor, the expected and the actual shape.
GptqView gptq_view(const std::string& name, const TensorView& qweight, const TensorView& qzeros,
                   const TensorView& scales, const TensorView* g_idx, const GptqShape& expected);

// True when g_idx is not i / group (desc_act / act-order checkpoints).
bool gptq_is_act_order(const GptqView& v);

// Repacks for the CPU int4 kernel. Act-order is supported (inputs are
// regrouped; the kernel gathers activations through the permutation) as long
// as every group but the last holds the same number of inputs, a multiple of
// 32 (true of AutoGPTQ output); otherwise a ModelError names the tensor.
kernels::cpu::Q4Matrix gptq_to_q4(const GptqView& v);

// Joins matrices of consecutive output columns (all but the last whole
// panels, sharing k, groups and input order) into one, bitwise what
// q4_append_columns gives one by one, with the room reserved up front so no
// reallocation copies the growing matrix.
kernels::cpu::Q4Matrix q4_join_columns(std::vector<kernels::cpu::Q4Matrix> parts);

}  // namespace chatradio::model
