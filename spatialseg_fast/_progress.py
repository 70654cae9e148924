"""A minimal progress bar on stderr (no dependency): count, rate, elapsed and remaining time.

On a terminal the bar redraws in place (``\r``); when the stream is not a terminal (a log file, a
pipe, a batch job's output) it writes a plain line every ``LOG_EVERY_S`` seconds and one at the
end instead, so logs hold readable lines rather than hundreds of carriage-return frames."""
from __future__ import annotations

import sys
import time


LOG_EVERY_S = 15.0


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    def __init__(self, total: int, desc: str = "", unit: str = "", enabled: bool = True, stream=None):
        self.total, self.desc, self.unit, self.enabled = max(int(total), 1), desc, unit, enabled
        self.stream = stream or sys.stderr
        self.done = 0
        self.postfix = ""
        self.start = time.perf_counter()
        self._last = 0.0
        self.tty = _is_terminal(self.stream)
        self._logged = self.start
        if enabled and self.tty:
            self._draw()

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.done = min(self.done + n, self.total)
        if postfix is not None:
            self.postfix = postfix
        now = time.perf_counter()
        if not self.enabled:
            return
        if not self.tty:
            if now - self._logged >= LOG_EVERY_S:
                self._logged = now
                self.stream.write(self._line() + "\n")
                self.stream.flush()
            return
        if now - self._last > 0.2 or self.done == self.total:
            self._last = now
            self._draw()

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.start
        frac = self.done / self.total
        bar = "#" * int(24 * frac) + "." * (24 - int(24 * frac))
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = f"{left:5.1f}s left" if left == left else "       "
        extra = f"  {self.postfix}" if self.postfix else ""
        return f"{self.desc} [{bar}] {self.done}/{self.total} {self.unit} {elapsed:6.1f}s {eta}{extra}"

    def _draw(self) -> None:
        self.stream.write("\r" + self._line())
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write(("\r" if self.tty else "") + self._line() + "\n")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
