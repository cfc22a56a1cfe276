"""Deterministic interleavings for tests of the pipeline under concurrency.

A worker is a pipeline built through ``runtime.build_pipeline`` on a boto3 client of its
own, instrumented with botocore hooks: it can be paused before (or after) a chosen S3
call until the test releases it, made to fail one chosen write, and it records the
writes it made so that the events they cause ("echoes") can be delivered as S3 would.
Nothing here reads the pipeline's state records: tests observe the bucket only.

Waits never sleep: they block on events, with a timeout so that a bug cannot hang CI.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from botocore.exceptions import ClientError

from chalicelib import runtime
from chalicelib.config import Settings
from chalicelib.local.server import CREDENTIAL, EmbeddedServer, s3_operation
from chalicelib.notifications import ObjectChange

TIMEOUT = 120.0  # a pause or a thread that takes this long is a hang, not a slow machine
WRITE_OPERATIONS = frozenset(
    {
        "PutObject",
        "PutObjectTagging",
        "DeleteObject",
        "DeleteObjects",
        "DeleteObjectTagging",
        "CopyObject",
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPartCopy",
        "CompleteMultipartUpload",
    }
)
# What S3 notifies for each write that succeeded.
ECHOES = {
    "PutObject": "ObjectCreated:Put",
    "CopyObject": "ObjectCreated:Copy",
    "CompleteMultipartUpload": "ObjectCreated:CompleteMultipartUpload",
    "PutObjectTagging": "ObjectTagging:Put",
    "DeleteObjectTagging": "ObjectTagging:Delete",
    "DeleteObject": "ObjectRemoved:Delete",
    "DeleteObjects": "ObjectRemoved:Delete",
}
SERVER_WRITES = WRITE_OPERATIONS | {"Multipart", "Post"}
ECHO_ROUNDS = 5  # rounds of echoes after which the pipeline is feeding itself: a loop


class Killed(BaseException):
    """The platform stopped the invocation (timeout, memory): nothing of ours catches it."""


class Stuck(AssertionError):
    """A thread or a pause point did not get where the test expected in time."""


@dataclass(frozen=True)
class Call:
    operation: str
    key: str | None


Match = Callable[[Call], bool]


def is_manifest_write(call: Call) -> bool:
    return call.operation == "PutObject" and (call.key or "").startswith("manifests/")


def on(operation: str | None = None, key: str | None = None) -> Match:
    """Calls of ``operation`` (any when None) on ``key`` (any when None)."""
    return lambda call: (
        (operation is None or call.operation == operation) and (key is None or call.key == key)
    )


class Pause:
    """Holds the ``occurrence``-th matching call (before it is sent, or after its answer)
    until :meth:`release`."""

    def __init__(self, match: Match, occurrence: int = 1, after: bool = False) -> None:
        self.match = match
        self.occurrence = occurrence
        self.after = after
        self.reached = False
        self.seen = 0
        self._signal = threading.Event()
        self._go = threading.Event()
        self._lock = threading.Lock()

    def check(self, call: Call) -> None:
        with self._lock:
            if not self.match(call):
                return
            self.seen += 1
            if self.seen != self.occurrence:
                return
            self.reached = True
        self._signal.set()
        if not self._go.wait(TIMEOUT):
            raise Stuck(f"paused at {call} and never released")

    def wait(self, worker: Background) -> bool:
        """Block until the worker reaches this point (True) or finishes without it (False)."""
        worker.on_finish(self._signal.set)
        if not self._signal.wait(TIMEOUT):
            raise Stuck("the worker neither reached the pause point nor finished")
        return self.reached

    def release(self) -> None:
        self._go.set()


def injected_error(operation: str) -> ClientError:
    body = {"Error": {"Code": "InternalError", "Message": "injected by the test"}}
    return ClientError(body, operation)


@dataclass
class Instrument:
    """Hooks on one boto3 client: pauses, one injected failure, and a record of calls."""

    clients: tuple[Any, ...]
    calls: list[Call] = field(default_factory=list)
    echoes: list[tuple[str, str]] = field(default_factory=list)  # (key, event) not yet delivered
    pauses: list[Pause] = field(default_factory=list)
    failing: list[Match] = field(default_factory=list)  # calls that fail, every time
    fail_write: int | None = None  # fail the n-th write call (from 1), once
    kill_at: int | None = None  # the invocation dies before its n-th S3 call (from 1)
    writes: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        for client in self.clients:
            client.meta.events.register("before-parameter-build.s3.*", self._before)
            client.meta.events.register("after-call.s3.*", self._after)

    def pause(self, match: Match, occurrence: int = 1, after: bool = False) -> Pause:
        point = Pause(match, occurrence, after)
        self.pauses.append(point)
        return point

    def _before(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any):
        call = Call(model.name, params.get("Key"))
        context["interleave.call"] = call
        context["interleave.keys"] = _keys(params)
        with self._lock:
            self.calls.append(call)
            if self.kill_at is not None and len(self.calls) >= self.kill_at:
                self.kill_at = None
                raise Killed(f"killed before {call}")
            failing = False
            if call.operation in WRITE_OPERATIONS:
                self.writes += 1
                failing = self.writes == self.fail_write
        failing = failing or any(match(call) for match in self.failing)
        for point in self.pauses:
            if not point.after:
                point.check(call)
        if failing:
            raise injected_error(call.operation)

    def _after(self, http_response: Any, model: Any, context: dict[str, Any], **_: Any) -> None:
        call = context.get("interleave.call")
        if call is None:
            return
        event = ECHOES.get(call.operation)
        if event and http_response.status_code < 300:
            with self._lock:
                self.echoes.extend((key, event) for key in context["interleave.keys"])
        for point in self.pauses:
            if point.after:
                point.check(call)

    def take_echoes(self) -> list[tuple[str, str]]:
        with self._lock:
            taken, self.echoes = self.echoes, []
        return taken

    def count(self, match: Match) -> int:
        with self._lock:
            return sum(1 for call in self.calls if match(call))


def _keys(params: dict[str, Any]) -> list[str]:
    if "Key" in params:
        return [params["Key"]]
    return [item["Key"] for item in params.get("Delete", {}).get("Objects", [])]


class Worker:
    """One pipeline (as one Lambda execution environment would have), on its own client."""

    def __init__(self, settings: Settings, client: Any, tag_client: Any | None = None) -> None:
        self.settings = settings
        tag_client = tag_client or runtime.s3_client(settings, retries=runtime.NO_RETRIES)
        self.hooks = Instrument((client, tag_client))
        self.pipeline = runtime.build_pipeline(settings, client, tag_client)

    def deliver(self, key: str, event: str = "ObjectCreated:Put") -> None:
        self.pipeline.handle([ObjectChange(self.settings.bucket, key, event)])

    def deliver_echoes(self, *others: Worker) -> int:
        """Deliver the events this worker's (and ``others``') writes caused, and those their
        processing causes, until there are none; how many were delivered."""
        workers = (self, *others)
        delivered = 0
        for _ in range(ECHO_ROUNDS):
            echoes = [echo for worker in workers for echo in worker.hooks.take_echoes()]
            if not echoes:
                return delivered
            for key, event in echoes:
                self.deliver(key, event)
                delivered += 1
        raise AssertionError(f"the pipeline's own writes still cause writes after {ECHO_ROUNDS}")


class Background:
    """A function run in a named thread; :meth:`join` re-raises what it raised."""

    def __init__(self, target: Callable[[], object], name: str) -> None:
        self.error: BaseException | None = None
        self._finished = False
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._target = target
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._target()
        except BaseException as error:  # handed to join()
            self.error = error
        finally:
            with self._lock:
                self._finished = True
                callbacks = list(self._callbacks)
            for callback in callbacks:
                callback()

    def on_finish(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._finished:
                self._callbacks.append(callback)
                return
        callback()

    def join(self) -> None:
        self.thread.join(TIMEOUT)
        if self.thread.is_alive():
            raise Stuck(f"thread {self.thread.name} did not finish")
        if self.error is not None:
            raise self.error


def paused_run(
    first: Callable[[], object],
    hooks: Instrument,
    at: Match,
    occurrence: int,
    meanwhile: Callable[[], object],
    after: bool = False,
) -> bool:
    """Run ``first`` until the ``occurrence``-th call matching ``at``, run ``meanwhile`` to
    its end, then let ``first`` finish. Returns whether the pause point was reached (when it
    was not, ``meanwhile`` ran after ``first``)."""
    point = hooks.pause(at, occurrence, after)
    worker = Background(first, "paused-worker")
    try:
        reached = point.wait(worker)
        meanwhile()
    finally:
        point.release()
        hooks.pauses.remove(point)
    worker.join()
    return reached


def twice_paused_run(
    first: Callable[[], object],
    hooks: Instrument,
    stops: list[tuple[Pause, Callable[[], object]]],
) -> None:
    """Run ``first``, and at each pause point in turn run its ``meanwhile`` to its end
    before letting ``first`` go on; every point must be reached."""
    worker = Background(first, "paused-worker")
    try:
        for point, meanwhile in stops:
            if not point.wait(worker):
                raise Stuck(f"{worker.thread.name} finished before a pause point")
            meanwhile()
            point.release()
    finally:
        for point, _ in stops:
            point.release()
            hooks.pauses.remove(point)
    worker.join()


# --- at the embedded server ----------------------------------------------------------


@dataclass(frozen=True)
class Request:
    caller: str
    operation: str
    method: str
    path: str  # decoded: /bucket/key
    query: str
    range: str | None


class RequestLog:
    """WSGI middleware recording every S3 request the embedded server serves."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.requests: list[Request] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        auth = environ.get("HTTP_AUTHORIZATION", "") or environ.get("QUERY_STRING", "")
        found = CREDENTIAL.search(auth.replace("%2F", "/"))
        if found and found.group(2) == "s3":
            method, query = environ["REQUEST_METHOD"], environ.get("QUERY_STRING", "")
            request = Request(
                caller=found.group(1),
                operation=_operation(method, query, environ),
                method=method,
                path=unquote(environ.get("PATH_INFO", "")),
                query=query,
                range=environ.get("HTTP_RANGE"),
            )
            with self._lock:
                self.requests.append(request)
        return self.app(environ, start_response)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def besides(self, user: str) -> list[Request]:
        """The requests of every caller but ``user``: the pipeline's, whatever identity
        its clients resolved."""
        with self._lock:
            return [r for r in self.requests if r.caller != user]

    def writes_besides(self, user: str) -> list[Request]:
        return [r for r in self.besides(user) if r.operation in SERVER_WRITES]


def _operation(method: str, query: str, environ: dict[str, Any]) -> str:
    if method == "PUT" and environ.get("HTTP_X_AMZ_COPY_SOURCE"):
        return "CopyObject"
    if method == "POST" and re.search(r"(^|&)delete(=|&|$)", query):
        return "DeleteObjects"
    if "uploads" in query or "uploadId" in query:
        return "Multipart"
    if method == "DELETE" and "tagging" in query:
        return "DeleteObjectTagging"
    return s3_operation(method, query)


def recording_server() -> tuple[EmbeddedServer, RequestLog]:
    """An embedded server whose every S3 request is recorded (caller, operation, key, range)."""
    server = EmbeddedServer()
    log = RequestLog(server.requests.app)
    server.requests.app = log
    server.start()
    return server, log


def bytes_served(requests: list[Request], size: int) -> int:
    """Bytes that ranged (or whole) GETs asked for, for an object of ``size`` bytes."""
    total = 0
    for request in requests:
        if request.method != "GET":
            continue
        found = re.fullmatch(r"bytes=(\d+)-(\d*)", request.range or "")
        if found is None:
            total += size
            continue
        first = int(found.group(1))
        last = int(found.group(2)) if found.group(2) else size - 1
        total += max(0, min(last, size - 1) - first + 1)
    return total
