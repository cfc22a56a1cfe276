"""The embedded S3-compatible server: moto's HTTP application in a thread, on loopback.

It keeps everything in memory: what is dropped into it is gone when it stops.
It counts the requests it serves, by service, caller and operation (and S3 writes
by key and status), which is how the benchmarks and tests measure what the pipeline
costs.

Where moto differs from S3 in what a pipeline can see, it is corrected here: events
are sent as S3 sends them, after the write (``events``); writes to one key are
atomic, so conditional writes are (``OneWriterPerKey``); and a listing costs its
page, not the bucket (``listing``).
"""

from __future__ import annotations

import errno
import logging
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from ..cli import CommandError
from . import events as s3_events
from .events import EventQueue, Events

CREDENTIAL = re.compile(r"Credential=([^/]+)/\d{8}/[^/]+/([^/]+)/aws4_request")


def s3_operation(method: str, query: str) -> str:
    """The S3 operation a request is, from its method and query string."""
    if "tagging" in query:
        return {"GET": "GetObjectTagging", "PUT": "PutObjectTagging"}.get(method, "DeleteTagging")
    if "list-type=2" in query or (method == "GET" and "prefix=" in query):
        return "ListObjectsV2"
    return {
        "GET": "GetObject",
        "HEAD": "HeadObject",
        "PUT": "PutObject",
        "DELETE": "DeleteObject",
        "POST": "Post",
    }.get(method, method)


WSGIApp = Callable[..., Iterable[bytes]]
WRITES = ("PUT", "POST", "DELETE")


def caller_and_service(environ: dict[str, Any]) -> tuple[str, str]:
    """The access key and service a request is signed for (header or pre-signed URL)."""
    auth = environ.get("HTTP_AUTHORIZATION", "") or environ.get("QUERY_STRING", "")
    found = CREDENTIAL.search(auth.replace("%2F", "/"))
    return found.groups() if found else ("anonymous", "unknown")


class EventsAfterTheRequest:
    """WSGI middleware: the events an S3 request causes are shaped as S3 sends them and
    sent once moto has finished it (see ``events``), so a notification is never read
    before its object's tags are stored."""

    def __init__(self, app: WSGIApp, events: Events) -> None:
        self.app = app
        self.events = events

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        caller, service = caller_and_service(environ)
        if service != "s3":
            return self.app(environ, start_response)
        operation = s3_operation(environ["REQUEST_METHOD"], environ.get("QUERY_STRING", ""))
        request = self.events.begin(caller, operation)
        try:
            return self.app(environ, start_response)  # moto's work is done on return
        finally:
            self.events.finish(request)


class OneWriterPerKey:
    """WSGI middleware: S3 writes to one key run one at a time.

    moto checks ``If-Match`` / ``If-None-Match`` and then writes, without a lock;
    under the threaded server two conditional PUTs could both succeed. Every write to
    the key waits its turn (an unconditional one too, or it could land between a
    conditional write's check and its write). Parts of a multipart upload do not.
    """

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if (
            environ["REQUEST_METHOD"] not in WRITES
            or path.strip("/").count("/") < 1  # a bucket, not a key
            or "partNumber=" in environ.get("QUERY_STRING", "")
            or caller_and_service(environ)[1] != "s3"
        ):
            return self.app(environ, start_response)
        lock = self._take(path)
        try:
            with lock:
                return self.app(environ, start_response)
        finally:
            self._release(path)

    def _take(self, path: str) -> threading.Lock:
        with self._guard:
            lock, users = self._locks.get(path, (threading.Lock(), 0))
            self._locks[path] = (lock, users + 1)
            return lock

    def _release(self, path: str) -> None:
        with self._guard:
            lock, users = self._locks[path]
            if users == 1:
                del self._locks[path]
            else:
                self._locks[path] = (lock, users - 1)


class RequestCounter:
    """WSGI middleware counting (access key, service, operation) of every request,
    and (operation, path, status) of every S3 write."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.writes: Counter[tuple[str, str, int]] = Counter()
        self.seconds: Counter[str] = Counter()  # time spent serving, by caller
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        caller, service = caller_and_service(environ)
        method, query = environ["REQUEST_METHOD"], environ.get("QUERY_STRING", "")
        operation = s3_operation(method, query) if service == "s3" else "call"
        with self._lock:
            self.counts[(caller, service, operation)] += 1
        path = environ.get("PATH_INFO", "")

        def counting_start_response(status: str, *args: Any) -> Any:
            if service == "s3" and method in WRITES:
                with self._lock:
                    self.writes[(operation, path, int(status.split()[0]))] += 1
            return start_response(status, *args)

        started = time.perf_counter()
        try:
            return self.app(environ, counting_start_response)
        finally:
            with self._lock:
                self.seconds[caller] += time.perf_counter() - started

    def written(self, operation: str, path_prefix: str, succeeded: bool = True) -> int:
        """How many ``operation`` requests under ``path_prefix`` (``/bucket/prefix``)
        succeeded (2xx), or with ``succeeded=False`` failed."""
        with self._lock:
            return sum(
                n
                for (op, path, status), n in self.writes.items()
                if op == operation
                and path.startswith(path_prefix)
                and (200 <= status < 300) == succeeded
            )

    def total(self, caller: str, service: str = "s3") -> int:
        with self._lock:
            return sum(n for (c, s, _), n in self.counts.items() if c == caller and s == service)

    def by_operation(self, caller: str, service: str = "s3") -> Counter[str]:
        with self._lock:
            return Counter(
                {op: n for (c, s, op), n in self.counts.items() if c == caller and s == service}
            )

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self.writes.clear()
            self.seconds.clear()


def service_dispatcher() -> WSGIApp:
    """moto's application for every service, each request sent to the service it is
    signed for. moto's own dispatcher works that out under one global lock, listing its
    modules on disk, per request: the server's requests would queue behind each other."""
    from moto.server import DomainDispatcherApplication, create_backend_app

    class SignedServiceDispatcher(DomainDispatcherApplication):
        def get_application(self, environ: dict[str, Any]) -> Any:
            service = caller_and_service(environ)[1]
            app = self.app_instances.get(service) if service in ("s3", "sqs") else None
            if app is None:  # the first request of the service, or another one
                app = super().get_application(environ)
            return app

    return SignedServiceDispatcher(create_backend_app)


class PortInUse(Exception):
    def __init__(self, port: int) -> None:
        super().__init__(f"port {port} is in use - choose another with --port (0 picks a free one)")


class NoEmbeddedServer(CommandError):
    def __init__(self) -> None:
        super().__init__(
            "no embedded S3 server in this install (moto is not installed: `make install` "
            "leaves it out) - give --endpoint-url and --bucket of your store, or run make setup"
        )


def _listening_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise PortInUse(port) from None
        raise
    sock.listen(128)
    return sock


class EmbeddedServer:
    """moto's HTTP server on ``127.0.0.1``; port 0 picks a free one."""

    def __init__(self, port: int = 0) -> None:
        try:
            from moto.moto_server.threaded_moto_server import MotoRequestHandler
            from werkzeug.serving import make_server

            from . import listing  # moto's, so imported only when a server is made
        except ModuleNotFoundError:  # `make install`: a host that only reaches real stores
            raise NoEmbeddedServer() from None

        s3_events.install()
        listing.install()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self.events = Events()
        moto = service_dispatcher()
        self.requests = RequestCounter(OneWriterPerKey(EventsAfterTheRequest(moto, self.events)))
        with _listening_socket(port) as sock:  # werkzeug would exit on a port in use
            self._server = make_server(
                "127.0.0.1",
                sock.getsockname()[1],
                self.requests,
                threaded=True,
                request_handler=MotoRequestHandler,
                fd=sock.fileno(),
            )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        host, bound = self._server.server_address[:2]
        self.url = f"http://{host}:{bound}"

    def start(self) -> str:
        self._thread.start()
        return self.url

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def skip_events_under(self, bucket: str, prefixes: Iterable[str]) -> None:
        """Drop (never queue) the events of keys under ``prefixes`` in ``bucket``: the
        pipeline's own records and manifests, whose events it would only ignore."""
        self.events.skip_under(bucket, prefixes)

    def deliver_in_process(self, bucket: str) -> EventQueue:
        """Send ``bucket``'s object events to a queue in this process (for
        ``delivery.EmbeddedPump``) instead of its notification configuration."""
        return self.events.deliver_in_process(bucket)
