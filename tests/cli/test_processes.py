"""Tests that start processes leave none behind, even run as from a background shell,
``nohup`` or a CI runner: with SIGINT ignored, so that Ctrl-C's signal stops nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from tests.cli.conftest import PROJECT, wait_for

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


POLL_TEST = "tests/cli/test_commands.py::test_run_poll_finds_new_files_and_stops_cleanly"


def start_test_run(mark: str, **options) -> subprocess.Popen[str]:
    """A pytest run of a test that starts moto's server and ``omi-manifest run``, with SIGINT
    ignored; every process it starts inherits ``mark``."""
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", POLL_TEST],
        cwd=PROJECT,
        env=os.environ | {MARK: mark},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **options,
    )


def test_no_process_left_after_a_test_run_with_sigint_ignored():
    mark = uuid.uuid4().hex
    with start_test_run(mark) as tests:
        output, _ = tests.communicate(timeout=600)
    assert tests.returncode == 0, output[-3000:]
    assert marked(mark) == []


def test_no_process_left_when_a_test_run_is_stopped_midway():
    """A CI time limit or ``kill`` stops the test run with SIGTERM while `omi-manifest run`
    and moto's server are running: both stop with it."""
    mark = uuid.uuid4().hex
    with start_test_run(mark) as tests:
        wait_for(lambda: len(marked(mark)) >= 3, what="pytest, moto and omi-manifest run")
        tests.terminate()
        tests.communicate(timeout=600)
    wait_for(lambda: marked(mark) == [], what="every process to stop", timeout=120)
