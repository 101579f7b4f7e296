"""A progress line with rate and ETA: redrawn in place on a terminal, a plain
line every 10% (or minute) otherwise, so logs of unattended runs stay short."""
import sys
import time
from typing import Optional, TextIO


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return "%dh%02dm" % (seconds // 3600, seconds % 3600 // 60)
    return "%dm%02ds" % (seconds // 60, seconds % 60) if seconds >= 60 else "%ds" % seconds


class Progress:
    def __init__(self, total: int, done: int = 0, out: Optional[TextIO] = None):
        self.total, self.done, self.start_done = total, done, done
        self.out = out or sys.stderr
        self.tty = hasattr(self.out, "isatty") and self.out.isatty()
        self.t0 = time.monotonic()
        self.last_draw = 0.0
        self.last_tenth = done * 10 // max(total, 1)

    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        new = self.done - self.start_done
        rate = new / elapsed if elapsed > 0 else 0.0
        left = self.total - self.done
        eta = _duration(left / rate) if rate > 0 else "?"
        width = 30
        filled = width * self.done // max(self.total, 1)
        return "[%s%s] %d/%d %3d%% %.2f reports/s ETA %s" % (
            "#" * filled, "." * (width - filled), self.done, self.total, 100 * self.done // max(self.total, 1),
            rate, eta)

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty:
            if now - self.last_draw >= 0.2 or self.done == self.total:
                self.out.write("\r" + self.line())
                self.out.flush()
                self.last_draw = now
            return
        tenth = self.done * 10 // max(self.total, 1)
        if tenth != self.last_tenth or now - self.last_draw >= 60:
            self.last_tenth, self.last_draw = tenth, now
            print(self.line(), file=self.out, flush=True)

    def note(self, message: str) -> None:
        """A message line that does not garble the bar on a terminal."""
        if self.tty:
            self.out.write("\r\033[K")
        print(message, file=self.out, flush=True)

    def close(self) -> None:
        if self.tty:
            self.out.write("\r" + self.line() + "\n")
            self.out.flush()
