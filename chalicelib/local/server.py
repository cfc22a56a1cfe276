"""The embedded S3-compatible server: moto's HTTP application in a thread, on loopback.

It keeps everything in memory: what is dropped into it is gone when it stops.
It counts the requests it serves, by service, caller and operation (and S3 writes
by key), which is how the benchmarks and tests measure what the pipeline costs.

One difference from S3 is corrected here: moto queues an object's "created"
notification before it stores the tags sent with the object, so a fast consumer
could read the object untagged, which S3 never shows. The server holds back the
answer to a queue request until the S3 writes in progress when it was answered
have finished.
"""

from __future__ import annotations

import errno
import logging
import re
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from ..cli import CommandError

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


class EventsAfterWrites:
    """WSGI middleware: a queue answer waits for the S3 writes in progress to finish,
    so a notification is never read before its object's tags are stored."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self._changed = threading.Condition()
        self._writing: set[int] = set()
        self._next = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        service = caller_and_service(environ)[1]
        if service == "s3" and environ["REQUEST_METHOD"] in WRITES:
            with self._changed:
                token, self._next = self._next, self._next + 1
                self._writing.add(token)
            try:
                return self.app(environ, start_response)  # moto's work is done on return
            finally:
                with self._changed:
                    self._writing.discard(token)
                    self._changed.notify_all()
        answer = self.app(environ, start_response)
        if service == "sqs":
            with self._changed:
                pending = set(self._writing)
                self._changed.wait_for(lambda: not pending & self._writing)
        return answer


class RequestCounter:
    """WSGI middleware counting (access key, service, operation) of every request,
    and (operation, path) of every S3 write."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.writes: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        caller, service = caller_and_service(environ)
        method, query = environ["REQUEST_METHOD"], environ.get("QUERY_STRING", "")
        operation = s3_operation(method, query) if service == "s3" else "call"
        with self._lock:
            self.counts[(caller, service, operation)] += 1
            if service == "s3" and method in WRITES:
                self.writes[(operation, environ.get("PATH_INFO", ""))] += 1
        return self.app(environ, start_response)

    def written(self, operation: str, path_prefix: str) -> int:
        """How many ``operation`` requests wrote under ``path_prefix`` (``/bucket/prefix``)."""
        with self._lock:
            return sum(
                n
                for (op, path), n in self.writes.items()
                if op == operation and path.startswith(path_prefix)
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
            from moto.server import DomainDispatcherApplication, create_backend_app
            from werkzeug.serving import make_server
        except ModuleNotFoundError:  # `make install`: a host that only reaches real stores
            raise NoEmbeddedServer() from None

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self.requests = RequestCounter(
            EventsAfterWrites(DomainDispatcherApplication(create_backend_app))
        )
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
