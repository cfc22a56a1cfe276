"""What a person sees on a terminal besides log lines: progress bars."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

WIDTH = 30


def progress_bar(label: str, total: int) -> Callable[[int], None]:
    """A one-line bar on stderr; call it with the bytes done so far."""

    def show(done: int) -> None:
        share = min(done / max(total, 1), 1.0)
        filled = int(WIDTH * share)
        bar = "#" * filled + "." * (WIDTH - filled)
        sys.stderr.write(f"\r{label} [{bar}] {share:4.0%}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def counting(show: Callable[[int], None]) -> Callable[[int], None]:
    """Adapt a bar to callbacks that report increments, from several threads
    (boto3's transfers do)."""
    done = 0
    lock = threading.Lock()

    def add(amount: int) -> None:
        nonlocal done
        with lock:
            done += amount
            show(done)

    return add
