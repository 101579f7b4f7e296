// Progress of a long byte-counted job (quantize, synth) on stderr. On a
// terminal: one self-overwriting line with the current item, done/total MB,
// MB/s and ETA. Otherwise (a log file, a pipe, CI) nothing until the end, so
// logs get one summary line instead of hundreds of updates.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace chatradio::cli {

class Progress {
 public:
  // Draws on `out` only when it is a terminal (isatty).
  explicit Progress(std::FILE* out);
  // `item` is what was just processed, `done` of `total` bytes are. Redraws
  // at most ~10 times a second: a terminal is slow next to a small tensor.
  void update(const std::string& item, uint64_t done, uint64_t total);
  // Clears the bar and prints `summary` as one line.
  void finish(const std::string& summary);
  // Clears the bar (on an error, before the message is printed).
  void clear();

  double elapsed_s() const;
  bool is_terminal() const { return tty_; }

 private:
  std::FILE* out_;
  bool tty_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

// "layers.3.mlp.up_proj" for "model.layers.3.mlp.up_proj.weight": the part
// of a tensor name worth a progress line's few columns.
std::string short_tensor_name(const std::string& name);

// "1234.5 MB" style sizes and "1:05" style durations, for summaries.
std::string format_mb(uint64_t bytes);
std::string format_duration(double seconds);

}  // namespace chatradio::cli
