"""Tests that start processes leave none behind, even run as from a background shell,
``nohup`` or a CI runner: with SIGINT ignored, so that Ctrl-C's signal stops nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from tests.cli.conftest import PROJECT

MARK = "LEFTOVER_MARK"  # an environment variable every process a test starts inherits


def marked(mark: str) -> list[int]:
    """Processes whose environment carries ``mark``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if f"{MARK}={mark}".encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def test_no_process_left_after_a_test_run_with_sigint_ignored():
    mark = uuid.uuid4().hex
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/cli/test_commands.py::test_run_poll_finds_new_files_and_stops_cleanly",
        ],
        cwd=PROJECT,
        env=os.environ | {MARK: mark},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert marked(mark) == []
