// Helpers shared by the tests in tests/q4.
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "model/gptq.h"

namespace chatradio::model::q4test {

inline uint32_t u32(int32_t v) { return static_cast<uint32_t>(v); }

inline std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

// A desc_act checkpoint of W: AutoGPTQ quantizes the inputs in a permuted
// order, so the groups follow the permutation, and stores rows in the
// original order with g_idx naming each row's group.
struct ActOrder {
  GptqTensors plain;      // W' = W[:, order], ordinary groups
  GptqTensors act;        // the same values as an act-order checkpoint of W
  std::vector<int> rank;  // [in] position of input i in the quantization order
};

inline ActOrder make_act_order(int out, int in, int group, uint32_t seed) {
  ActOrder a;
  std::vector<int> order(in);  // [in] input at each quantization position
  for (int i = 0; i < in; ++i) order[i] = i;
  std::mt19937 g(seed);
  std::shuffle(order.begin(), order.end(), g);
  a.rank.resize(in);
  for (int j = 0; j < in; ++j) a.rank[order[j]] = j;
  const auto w = randn(static_cast<size_t>(out) * in, seed, 0.05f);
  std::vector<float> wp(w.size());  // [out, in] columns permuted
  for (int o = 0; o < out; ++o)
    for (int j = 0; j < in; ++j) wp[o * in + j] = w[o * in + order[j]];
  a.plain = gptq_quantize(wp.data(), out, in, group, false);
  a.act = a.plain;
  const int op = a.plain.shape.out_padded;
  std::fill(a.act.qweight.begin(), a.act.qweight.end(), 0);
  for (int i = 0; i < in; ++i) {
    const int j = a.rank[i];
    a.act.g_idx[i] = a.plain.g_idx[j];
    for (int o = 0; o < op; ++o) {
      const uint32_t q = (u32(a.plain.qweight[(j / 8) * op + o]) >> (4 * (j % 8))) & 15;
      int32_t& word = a.act.qweight[(i / 8) * op + o];
      word = static_cast<int32_t>(u32(word) | q << (4 * (i % 8)));
    }
  }
  return a;
}

}  // namespace chatradio::model::q4test
