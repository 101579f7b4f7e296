// Token sampling from logits: greedy, temperature, top-k, top-p and repetition
// penalty, with a seeded RNG of our own so the same seed gives the same tokens
// on every platform and standard library.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace chatradio::model {

struct SamplingParams {
  float temperature = 0.0f;         // 0 = greedy (argmax, lowest id on ties)
  int top_k = 0;                    // 0 = off
  float top_p = 1.0f;               // 1 = off
  float repetition_penalty = 1.0f;  // 1 = off; CTRL/HF style on tokens seen so far
  uint64_t seed = 0;
};

// Returns "" when valid, else a message naming the bad field and its range.
std::string validate(const SamplingParams& p);

// SplitMix64-seeded xoshiro256**: small, fast, and fully specified.
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next();
  // Uniform in [0, 1) with 53 random bits.
  double uniform();

 private:
  uint64_t s_[4];
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);

  // Picks the next token. `history` is every token of the sequence so far
  // (prompt and generated), used by the repetition penalty.
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history);

 private:
  SamplingParams p_;
  Rng rng_;
  // Scratch reused across calls: no per-token allocation once warm.
  std::vector<float> work_;     // [vocab] adjusted logits
  std::vector<int32_t> order_;  // [vocab] candidate ids
  std::vector<uint8_t> seen_;   // [vocab] repetition-penalty marks
};

}  // namespace chatradio::model
