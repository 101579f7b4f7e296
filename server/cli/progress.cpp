#include "server/cli/progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

namespace chatradio::cli {
namespace {

int terminal_width(std::FILE* out) {
  struct winsize ws {};
  if (::ioctl(::fileno(out), TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20) return ws.ws_col;
  return 80;
}

}  // namespace

std::string format_mb(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f MB", static_cast<double>(bytes) / 1e6);
  return buf;
}

std::string format_duration(double seconds) {
  const long s = std::lround(std::max(0.0, seconds));
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof(buf), "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%ld:%02ld", s / 60, s % 60);
  }
  return buf;
}

std::string short_tensor_name(const std::string& name) {
  std::string s = name;
  if (s.rfind("model.", 0) == 0) s.erase(0, 6);
  if (s.size() > 7 && s.compare(s.size() - 7, 7, ".weight") == 0) s.erase(s.size() - 7);
  return s;
}

Progress::Progress(std::FILE* out)
    : out_(out), tty_(::isatty(::fileno(out)) == 1), start_(std::chrono::steady_clock::now()) {}

double Progress::elapsed_s() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::update(const std::string& item, uint64_t done, uint64_t total) {
  if (!tty_) return;
  const auto now = std::chrono::steady_clock::now();
  if (drawn_ && done < total && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  const double secs = elapsed_s();
  const double frac = total ? std::min(1.0, static_cast<double>(done) / static_cast<double>(total)) : 1.0;
  const double rate = secs > 0 ? static_cast<double>(done) / secs : 0.0;  // bytes/s, averaged over the run
  const std::string eta = rate > 0 ? format_duration(static_cast<double>(total - std::min(done, total)) / rate) : "?";

  constexpr int kBar = 16;
  const int filled = static_cast<int>(frac * kBar);
  char stats[128];
  std::snprintf(stats, sizeof(stats), "] %3d%% %.0f/%.0f MB %.0f MB/s ETA %s  ", static_cast<int>(frac * 100),
                static_cast<double>(done) / 1e6, static_cast<double>(total) / 1e6, rate / 1e6, eta.c_str());
  std::string line(1, '[');
  line.append(filled, '#').append(kBar - filled, '-').append(stats);
  // The item name takes what is left of the line; its tail is the telling part.
  const int room = terminal_width(out_) - 1 - static_cast<int>(line.size());
  if (room > 3) {
    if (static_cast<int>(item.size()) <= room) {
      line += item;
    } else {
      line.append("...").append(item, item.size() - (room - 3));
    }
  }
  std::fprintf(out_, "\r\033[K%s", line.c_str());
  std::fflush(out_);
  drawn_ = true;
}

void Progress::clear() {
  if (!drawn_) return;
  std::fputs("\r\033[K", out_);
  drawn_ = false;
}

void Progress::finish(const std::string& summary) {
  clear();
  std::fprintf(out_, "%s\n", summary.c_str());
  std::fflush(out_);
}

}  // namespace chatradio::cli
