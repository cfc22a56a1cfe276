"""s3rver (npm, pinned in package.json, installed by ``make setup``): an S3 server that shares
no code with AWS or moto, started on a free port with its own data folder.

What it checks, read in its source (``lib/middleware/authentication.js``): that the access
key exists (its one account is ``S3RVER``), that a query-string URL has not expired and asks
for at most 7 days; not SigV4 signatures (only SigV2 ones), so tests verify those with
``tests/sigv4.py``. It ignores tags sent with PutObject, keeps PutObjectTagging's, always
answers GetBucketLocation with an empty LocationConstraint (us-east-1) and sends no
notifications.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

PROJECT = Path(__file__).parents[2]
EXECUTABLE = PROJECT / "node_modules" / ".bin" / "s3rver"
ACCESS_KEY = "S3RVER"  # the only key s3rver knows
LISTENING = re.compile(r"listening on ([\d.]+):(\d+)")


class S3rver:
    """One s3rver process; ``url`` once started."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> str:
        if not EXECUTABLE.exists():
            raise RuntimeError(f"{EXECUTABLE} is missing - run make setup (it runs npm ci)")
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        errors = self.directory / "s3rver.log"
        with errors.open("w") as log:
            # Silent: after the line that tells its port it prints nothing to the pipe.
            self.process = subprocess.Popen(
                [str(EXECUTABLE), "--silent", "-d", str(data), "-a", "127.0.0.1", "-p", "0"],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        assert self.process.stdout is not None
        for line in self.process.stdout:  # ends if the process does
            found = LISTENING.search(line)
            if found:
                self.url = f"http://{found.group(1)}:{found.group(2)}"
                return self.url
        raise RuntimeError(f"s3rver did not start: {errors.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            assert self.process.stdout is not None
            self.process.stdout.close()
