"""Fault injection for S3 calls: throttling, 500s, timeouts, at a chosen request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError
from moto.core.botocore_stubber import MockRawResponse

from chalicelib.runtime import RETRIES

ATTEMPTS = RETRIES["max_attempts"] + 1  # botocore's max_attempts counts the retries only
ERRORS = {
    "throttle": (503, "SlowDown", "Please reduce your request rate."),
    "server": (500, "InternalError", "We encountered an internal error."),
}


@dataclass
class Faults:
    """Fail the requests whose numbers fall in ``window`` (counting from 0)."""

    kind: str = "throttle"
    window: range = field(default_factory=lambda: range(0))
    calls: int = 0
    injected: int = 0

    def attach(self, client: Any) -> None:
        # First, so that it runs before moto answers the request.
        client.meta.events.register_first("before-send.s3", self.before_send)

    def fail_at(self, index: int, persistent: bool) -> None:
        """Fail request ``index``; persistently means on every retry of that call too."""
        self.window = range(index, index + (ATTEMPTS if persistent else 1))

    def stop(self) -> None:
        self.window = range(0)

    def before_send(self, request: Any, **_: Any) -> AWSResponse | None:
        number = self.calls
        self.calls += 1
        if number not in self.window:
            return None
        self.injected += 1
        if self.kind == "timeout":
            raise ReadTimeoutError(endpoint_url=request.url)
        status, code, message = ERRORS[self.kind]
        body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        return AWSResponse(request.url, status, {}, MockRawResponse(body))
