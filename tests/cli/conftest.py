"""The command line as a user runs it: separate processes against moto's HTTP server."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import boto3
import pytest

BIN = Path(sys.executable).parent
PROJECT = Path(__file__).parents[2]
REGION = "eu-west-2"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def command_env(**extra: str) -> dict[str, str]:
    """The test store's keys, which also sign (``OMI_SIGN_WITH_STORE_KEYS``: the store is
    a throw-away one; tests/cli/test_signing_identity.py signs without them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMI_")}
    local = {
        "AWS_DEFAULT_REGION": REGION,
        "PYTHONUNBUFFERED": "1",
        "OMI_SIGN_WITH_STORE_KEYS": "true",
    }
    return env | CREDENTIALS | local | extra


@pytest.fixture(scope="session")
def moto_process():
    """moto's HTTP server as a process of its own."""
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=tied_to_this_process(),
    )
    url = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    try:
        wait_for(answering, what="moto_server")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def store(moto_process, request):
    """A fresh bucket on the moto process."""
    bucket = "cli-" + request.node.name.lower().replace("_", "-")[:40]
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_process,
        region_name=REGION,
        **{"aws_access_key_id": "testing", "aws_secret_access_key": "testing"},
    )
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.bucket = bucket
    s3.url = moto_process
    return s3


def omi(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "omi-manifest"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=command_env(),
        **kwargs,
    )


STOP_LIMIT = 60.0  # seconds a stopped command may take to finish what it was doing
LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: a forked child only calls it
PR_SET_PDEATHSIG = 1


def tied_to_this_process(ignore_sigint: bool = False):
    """For ``preexec_fn``: the child gets SIGTERM if the test process dies, however it dies
    (even SIGKILL), and optionally ignores SIGINT as under nohup or a CI runner."""

    def prepare() -> None:
        LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if ignore_sigint:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    return prepare


class Running:
    """``omi-manifest ARGS`` in a process group of its own, its output in pipes."""

    def __init__(self, *args: str, ignore_sigint: bool = False, **popen) -> None:
        self.process = subprocess.Popen(
            [str(BIN / "omi-manifest"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=command_env(),
            start_new_session=True,
            preexec_fn=tied_to_this_process(ignore_sigint),
            **popen,
        )
        self.output: tuple[str, str] | None = None

    def readline(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline()

    def stop(self) -> tuple[str, str]:
        """SIGTERM (Ctrl-C's SIGINT may be ignored where tests run), reading both pipes
        meanwhile so that a blocked write cannot keep it alive; its stdout and stderr."""
        if self.output is None:
            if self.process.poll() is None:
                self.process.terminate()
            try:
                self.output = self.process.communicate(timeout=STOP_LIMIT)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.output = self.process.communicate()
                raise AssertionError(f"still running {STOP_LIMIT:g} s after SIGTERM") from None
        return self.output


@contextmanager
def running(*args: str, **options) -> Iterator[Running]:
    """A command that is stopped however the test ends, with anything left in its group."""
    command = Running(*args, **options)
    try:
        yield command
    finally:
        try:
            command.stop()
        finally:
            with suppress(ProcessLookupError):
                os.killpg(command.process.pid, signal.SIGKILL)


def on_a_terminal(*args: str) -> tuple[int, bytes]:
    """Run a command with its stdout and stderr on a pseudo-terminal; its exit status and
    what the terminal showed (read while it runs, so a chatty command never blocks)."""
    import pty
    import threading

    leader, follower = pty.openpty()
    shown = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    process = subprocess.Popen(
        [str(BIN / "omi-manifest"), *args],
        stdout=follower,
        stderr=follower,
        env=command_env(),
    )
    status = process.wait(timeout=300)
    os.close(follower)
    reader.join(timeout=60)
    os.close(leader)
    return status, bytes(shown)


# The AWS CLI alone rebuilding a manifest URL from its tags, as the README shows it.
AWS_CLI_URL_QUERY = (
    "join(``, [TagSet[?Key==`omi:url`].Value|[0], "
    "`?X-Amz-Algorithm=`, TagSet[?Key==`X-Amz-Algorithm`].Value|[0], "
    "`&X-Amz-Credential=`, TagSet[?Key==`X-Amz-Credential`].Value|[0], "
    "`&X-Amz-Date=`, TagSet[?Key==`X-Amz-Date`].Value|[0], "
    "`&X-Amz-Expires=`, TagSet[?Key==`X-Amz-Expires`].Value|[0], "
    "`&X-Amz-SignedHeaders=`, TagSet[?Key==`X-Amz-SignedHeaders`].Value|[0], "
    "`&X-Amz-Signature=`, TagSet[?Key==`X-Amz-Signature`].Value|[0]])"
)
