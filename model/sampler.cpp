#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace chatradio::model {

std::string validate(const SamplingParams& p) {
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature)) {
    return "temperature must be a finite number >= 0 (0 = greedy)";
  }
  if (p.top_k < 0) return "top_k must be >= 0 (0 = off)";
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) return "top_p must be in (0, 1]";
  if (!(p.repetition_penalty > 0.0f) || !std::isfinite(p.repetition_penalty)) {
    return "repetition_penalty must be a finite number > 0 (1 = off)";
  }
  return "";
}

namespace {
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

Rng::Rng(uint64_t seed) {
  for (uint64_t& s : s_) s = splitmix64(seed);
}

uint64_t Rng::next() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Rng::uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

Sampler::Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) {}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  const int vocab = static_cast<int>(logits.size());
  work_.assign(logits.begin(), logits.end());
  if (p_.repetition_penalty != 1.0f) {
    // Each distinct seen token is penalised once (HF semantics), whatever its count.
    seen_.assign(vocab, 0);
    for (int32_t t : history) {
      if (t < 0 || t >= vocab || seen_[t]) continue;
      seen_[t] = 1;
      float& l = work_[t];
      l = l > 0 ? l / p_.repetition_penalty : l * p_.repetition_penalty;
    }
  }
  if (p_.temperature == 0.0f) {
    return static_cast<int32_t>(std::max_element(work_.begin(), work_.end()) - work_.begin());
  }

  // Candidates sorted by logit (descending, ties by lower id so the order is total).
  order_.resize(vocab);
  std::iota(order_.begin(), order_.end(), 0);
  int n = vocab;
  auto by_logit = [&](int32_t a, int32_t b) { return work_[a] > work_[b] || (work_[a] == work_[b] && a < b); };
  if (p_.top_k > 0 && p_.top_k < vocab) {
    n = p_.top_k;
    std::partial_sort(order_.begin(), order_.begin() + n, order_.end(), by_logit);
  } else {
    std::sort(order_.begin(), order_.end(), by_logit);
  }

  // Softmax over the candidates at the temperature, in double for stable sums.
  const double mx = work_[order_[0]];
  double total = 0.0;
  for (int i = 0; i < n; ++i) {
    const double e = std::exp((work_[order_[i]] - mx) / p_.temperature);
    work_[order_[i]] = static_cast<float>(e);
    total += e;
  }
  // Top-p: keep the smallest prefix whose mass reaches top_p (at least one token).
  if (p_.top_p < 1.0f) {
    double cum = 0.0;
    int keep = 0;
    while (keep < n) {
      cum += work_[order_[keep]] / total;
      ++keep;
      if (cum >= p_.top_p) break;
    }
    n = keep;
    total = 0.0;
    for (int i = 0; i < n; ++i) total += work_[order_[i]];
  }
  const double r = rng_.uniform() * total;
  double cum = 0.0;
  for (int i = 0; i < n; ++i) {
    cum += work_[order_[i]];
    if (r < cum) return order_[i];
  }
  return order_[n - 1];  // r rounding past the last bucket
}

}  // namespace chatradio::model
