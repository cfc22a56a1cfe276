"""What a person sees on a terminal besides log lines: progress bars.

Drawn by hand rather than with a progress library: one line with a bar, bytes, rate and
time left is all the command line needs, and the command line then needs nothing beyond
what the pipeline installs.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

WIDTH = 30
REDRAW_INTERVAL = 0.25  # seconds: at most four redraws a second, however often it is told
CLEAR_TO_END = "\x1b[K"


def human_size(count: float) -> str:
    """``16.0 MiB``: bytes in the largest binary unit that keeps the number above 1."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds + 0.5), 60)
    return f"{minutes}:{seconds:02d}"


class ProgressBar:
    """One line on stderr: ``label [####....]  45%  7.2 MiB of 16.0 MiB  3.1 MiB/s  0:03 left``.

    Call it with the bytes done so far, or ``add`` increments (from several threads, as
    boto3's transfers report them); ``close`` draws the final state and ends the line, so
    that whatever is printed next starts on a line of its own.
    """

    def __init__(
        self,
        label: str,
        total: int,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.clock = clock
        self.started = clock()
        self.drawn_at: float | None = None
        self.done = 0
        self.lock = threading.Lock()

    def __call__(self, done: int) -> None:
        with self.lock:
            self.done = done
            self._maybe_draw()

    def add(self, amount: int) -> None:
        with self.lock:
            self.done += amount
            self._maybe_draw()

    def close(self) -> None:
        with self.lock:
            if self.drawn_at is not None or self.done:
                self._draw(self.clock(), final=True)
                self.stream.write("\n")
                self.stream.flush()

    def _maybe_draw(self) -> None:
        now = self.clock()
        if self.drawn_at is None or now - self.drawn_at >= REDRAW_INTERVAL:
            self._draw(now)

    def _draw(self, now: float, final: bool = False) -> None:
        self.drawn_at = now
        share = min(self.done / max(self.total, 1), 1.0)
        filled = int(WIDTH * share)
        bar = "#" * filled + "." * (WIDTH - filled)
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if final:
            timing = f"in {_duration(elapsed)}"
        elif rate > 0:
            timing = f"{_duration(max(self.total - self.done, 0) / rate)} left"
        else:
            timing = "-:-- left"
        amounts = f"{human_size(self.done)} of {human_size(self.total)}  {human_size(rate)}/s"
        self.stream.write(f"\r{self.label} [{bar}] {share:4.0%}  {amounts}  {timing}{CLEAR_TO_END}")
        self.stream.flush()
