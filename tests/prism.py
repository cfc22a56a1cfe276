"""Stoplight Prism (npm, pinned in package.json, installed by ``make setup``) serving the
OUTSCALE API description that ships inside ``osc-sdk-python``.

``prism mock`` validates each request against the official schema and answers with the
description's examples; ``prism proxy`` validates requests and responses and forwards them
to an upstream (our stateful fake). Both report what does not match in the ``sl-violations``
response header, a JSON list whose items' ``location`` starts with ``request`` or
``response``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import osc_sdk_python

PROJECT = Path(__file__).parents[1]
EXECUTABLE = PROJECT / "node_modules" / ".bin" / "prism"
SPEC = Path(osc_sdk_python.__file__).parent / "resources" / "outscale.yaml"
STARTUP_SECONDS = 120  # loading the 1 MB description takes seconds on a busy machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Prism:
    """One prism process (``mock`` or ``proxy UPSTREAM``); ``url`` once started."""

    def __init__(self, directory: Path, mode: str, upstream: str | None = None) -> None:
        self.directory, self.mode, self.upstream = directory, mode, upstream
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log = directory / f"prism-{mode}.log"

    def launch(self) -> None:
        """Starts the process; ``wait`` then waits until it answers (several can start at once)."""
        if not EXECUTABLE.exists():
            raise RuntimeError(f"{EXECUTABLE} is missing - run make setup (it runs npm ci)")
        if not SPEC.exists():
            raise RuntimeError(f"{SPEC} is missing - is osc-sdk-python installed?")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        command = [str(EXECUTABLE), self.mode, str(SPEC)]
        if self.upstream:
            command.append(self.upstream)
        command += ["-h", "127.0.0.1", "-p", str(port)]
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def wait(self) -> str:
        deadline = time.monotonic() + STARTUP_SECONDS
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prism {self.mode} exited: {self.log.read_text()[-2000:]}")
            if self._answers():
                return self.url
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"prism {self.mode} did not answer: {self.log.read_text()[-2000:]}")

    def _answers(self) -> bool:
        request = urllib.request.Request(
            f"{self.url}/ReadImages",
            data=b"{}",
            headers={"Content-Type": "application/json", "Authorization": "ready?"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=5):
                return True
        except urllib.error.HTTPError:
            return True  # an answer, whatever its status
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def violations(header: str | None, location: str) -> list[dict]:
    """The ``sl-violations`` items about the ``request`` or the ``response``."""
    if not header:
        return []
    return [item for item in json.loads(header) if item.get("location", [None])[0] == location]
