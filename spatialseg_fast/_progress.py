"""A minimal progress bar on stderr (no dependency): count, rate, elapsed and remaining time."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, desc: str = "", unit: str = "", enabled: bool = True, stream=None):
        self.total, self.desc, self.unit, self.enabled = max(int(total), 1), desc, unit, enabled
        self.stream = stream or sys.stderr
        self.done = 0
        self.postfix = ""
        self.start = time.perf_counter()
        self._last = 0.0
        if enabled:
            self._draw()

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.done = min(self.done + n, self.total)
        if postfix is not None:
            self.postfix = postfix
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.2 or self.done == self.total):
            self._last = now
            self._draw()

    def _draw(self) -> None:
        elapsed = time.perf_counter() - self.start
        frac = self.done / self.total
        bar = "#" * int(24 * frac) + "." * (24 - int(24 * frac))
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = f"{left:5.1f}s left" if left == left else "       "
        extra = f"  {self.postfix}" if self.postfix else ""
        self.stream.write(f"\r{self.desc} [{bar}] {self.done}/{self.total} {self.unit} {elapsed:6.1f}s {eta}{extra}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
