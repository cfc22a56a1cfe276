"""The progress bar a person sees on a terminal: bytes, rate, time left, few redraws."""

from __future__ import annotations

import io

from chalicelib.local.console import ProgressBar

MIB = 1 << 20


def test_redraws_at_most_four_times_a_second_and_ends_its_line():
    now = [0.0]
    shown = io.StringIO()
    bar = ProgressBar("web/sda1.raw", 16 * MIB, stream=shown, clock=lambda: now[0])
    for step in range(2048):  # boto3 reports every 8 KiB: 2048 calls over 2.047 s
        now[0] = step / 1000
        bar.add(8192)
    bar.close()
    lines = shown.getvalue().split("\r")[1:]
    assert len(lines) == 10  # at 0, 0.25 ... 2.0 s, and the final one
    assert lines[4] == (
        f"web/sda1.raw [{'#' * 14}{'.' * 16}]  49%  7.8 MiB of 16.0 MiB  7.8 MiB/s  0:01 left\x1b[K"
    )
    assert lines[-1] == (
        f"web/sda1.raw [{'#' * 30}] 100%  16.0 MiB of 16.0 MiB  7.8 MiB/s  in 0:02\x1b[K\n"
    )


def test_a_bar_never_drawn_prints_nothing():
    shown = io.StringIO()
    ProgressBar("sizing raw.gz", 100, stream=shown).close()
    assert shown.getvalue() == ""
