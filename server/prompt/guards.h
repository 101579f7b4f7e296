// Guards on generation: a repetition detector to plug into
// engine::GenerateParams::stop, and the policy for outputs that come back empty.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

namespace chatradio::prompt {

struct RepetitionOptions {
  int max_period = 32;  // longest repeated unit looked for, in tokens (1..1024)
  int min_repeats = 3;  // times the unit must appear back to back, the first included (>= 2)
  int min_span = 12;    // tokens the loop must cover at least (>= 1)
};

struct Loop {
  int period = 0;  // tokens in the repeated unit (the shortest that fires)
  int start = 0;   // index where the periodic tail begins
  int length = 0;  // tokens from start to the end; length >= period * min_repeats
  // Index to cut at to keep exactly one copy of the unit.
  int keep_until() const { return start + period; }
};

// Fires when the tail of the generated ids is a loop: for some period p in
// [1, max_period], the last L ids satisfy g[i] == g[i - p] where
// L >= max(min_repeats * p, min_span). Only the tail matters, so calling it after
// every token sees a loop the moment it reaches that size.
//
// Cost per call: for each p, a backward scan that stops at the first mismatch or
// at the length needed, so at most max_period * max(min_repeats * max_period,
// min_span) comparisons (about 3,000 with the defaults) and normally a handful;
// no allocation. Stateless, so one detector may serve every request.
class RepetitionDetector {
 public:
  // Throws std::invalid_argument for options outside the ranges above.
  explicit RepetitionDetector(const RepetitionOptions& opts = {});

  bool repeating(std::span<const int32_t> generated) const { return scan(generated, false).has_value(); }
  // The loop with its whole periodic tail measured (start may lie before the
  // span repeating() looks at), or none.
  std::optional<Loop> find(std::span<const int32_t> generated) const { return scan(generated, true); }

  const RepetitionOptions& options() const { return opts_; }

 private:
  std::optional<Loop> scan(std::span<const int32_t> g, bool measure) const;

  RepetitionOptions opts_;
};

// What to do when a generation ends with no visible text (EOS first, or only
// whitespace): try again with another seed, a bounded number of times. Under
// greedy decoding a new seed changes nothing, so there is no retry then.
struct EmptyOutputPolicy {
  // The 64-bit golden-ratio increment (SplitMix64's gamma): attempt k uses
  // seed + k * kSeedStep (mod 2^64). Deterministic, so a request and its seed
  // reproduce the whole retry chain, and far from seed + 1, seed + 2, ... that a
  // client trying seeds by hand would use.
  static constexpr uint64_t kSeedStep = 0x9E3779B97F4A7C15ull;

  bool retry_on_empty = true;
  int max_retries = 1;

  // Whether to run another attempt after `attempts_done` attempts (>= 1, the
  // first included) whose last output decoded to `text` (EOS excluded):
  // retry_on_empty, a random sampler (`sampled`: temperature > 0), fewer than
  // max_retries retries so far, and `text` blank (validate.h is_blank()).
  bool should_retry(std::string_view text, int attempts_done, bool sampled) const;
  // The seed of attempt `attempt` (0 = the request's own seed).
  static uint64_t seed_for(uint64_t seed, int attempt) {
    return seed + static_cast<uint64_t>(attempt) * kSeedStep;
  }
};

}  // namespace chatradio::prompt
