"""The embedded S3-compatible server: moto's HTTP application in a thread, on loopback.

It can count the requests it serves, by service, caller and operation, which is
how the benchmarks measure what the pipeline costs.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

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


class RequestCounter:
    """WSGI middleware counting (access key, service, operation) of every request."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        auth = environ.get("HTTP_AUTHORIZATION", "") or environ.get("QUERY_STRING", "")
        found = CREDENTIAL.search(auth.replace("%2F", "/"))
        caller, service = found.groups() if found else ("anonymous", "unknown")
        method, query = environ["REQUEST_METHOD"], environ.get("QUERY_STRING", "")
        operation = s3_operation(method, query) if service == "s3" else "call"
        with self._lock:
            self.counts[(caller, service, operation)] += 1
        return self.app(environ, start_response)

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


class EmbeddedServer:
    """moto's HTTP server on ``127.0.0.1``; port 0 picks a free one."""

    def __init__(self, port: int = 0) -> None:
        from moto.moto_server.threaded_moto_server import MotoRequestHandler
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self.requests = RequestCounter(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(
            "127.0.0.1", port, self.requests, threaded=True, request_handler=MotoRequestHandler
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
