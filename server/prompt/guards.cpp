#include "server/prompt/guards.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "server/prompt/validate.h"

namespace chatradio::prompt {

RepetitionDetector::RepetitionDetector(const RepetitionOptions& opts) : opts_(opts) {
  if (opts.max_period < 1 || opts.max_period > 1024) {
    throw std::invalid_argument("repetition max_period must be in [1, 1024] (got " +
                                std::to_string(opts.max_period) + ")");
  }
  if (opts.min_repeats < 2 || opts.min_repeats > 1024) {
    throw std::invalid_argument("repetition min_repeats must be in [2, 1024] (got " +
                                std::to_string(opts.min_repeats) + ")");
  }
  if (opts.min_span < 1 || opts.min_span > 1 << 20) {
    throw std::invalid_argument("repetition min_span must be in [1, 1048576] (got " +
                                std::to_string(opts.min_span) + ")");
  }
}

std::optional<Loop> RepetitionDetector::scan(std::span<const int32_t> g, bool measure) const {
  const int64_t n = static_cast<int64_t>(g.size());
  // Shortest period first: a loop of unit "ab" is also one of "abab", and the
  // shortest unit is the one to keep when trimming.
  for (int p = 1; p <= opts_.max_period; ++p) {
    const int64_t need = std::max<int64_t>(int64_t{opts_.min_repeats} * p, opts_.min_span);
    if (need > n) break;  // `need` never shrinks as p grows
    // The last `need` ids are p-periodic iff g[i] == g[i - p] for i in [n - need + p, n).
    int64_t i = n - 1;
    const int64_t lowest = n - need + p;
    while (i >= lowest && g[i] == g[i - p]) --i;
    if (i >= lowest) continue;  // a mismatch inside the needed span
    if (measure) {
      // The whole periodic tail, for trimming; runs once, when the loop is found.
      while (i >= p && g[i] == g[i - p]) --i;
    }
    const int64_t start = i + 1 - p;
    return Loop{p, static_cast<int>(start), static_cast<int>(n - start)};
  }
  return std::nullopt;
}

bool EmptyOutputPolicy::should_retry(std::string_view text, int attempts_done, bool sampled) const {
  return retry_on_empty && sampled && attempts_done <= max_retries && is_blank(text);
}

}  // namespace chatradio::prompt
