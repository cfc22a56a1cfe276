"""The OUTSCALE API calls the import needs: CreateImage, ReadImages, CreateTags.

Requests are signed and sent by ``osc-sdk-python`` (its ``Call``: OUTSCALE's own
signature, its profile rules, its rate limiter), configured the SDK's way
(``OSC_ACCESS_KEY``, ``OSC_SECRET_KEY``, ``OSC_REGION``, ``OSC_ENDPOINT_API``, or
``~/.osc/config.json``) or, in a deployment, from the secret named by
``OMI_OUTSCALE_SECRET``. The SDK is imported only when a client is made, and its
``Gateway`` is not used: it parses the whole 1 MB API description on creation
(seconds of a Lambda's cold start) only to check parameters client-side, which
the contract tests do against the same description instead.

Retries are ours, not the SDK's (built with ``max_retries=0``): throttling (429
codes 24/25, 503 code 6: the request was refused, not run) is retried with
exponential backoff and jitter for every call, but a ``CreateImage`` whose
outcome is unknown (connection lost, 5xx) is never sent again blindly: it raises
``OutcomeUnknown`` and the caller looks for the image first. Nothing here logs a
request body: ``FileLocation`` is a pre-signed URL.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

SECRET_FIELDS = ("OSC_ACCESS_KEY", "OSC_SECRET_KEY", "OSC_REGION", "OSC_ENDPOINT_API")
CALLS_PER_SECOND = 5  # the SDK's own default, shared by every client of this process
THROTTLED = {429: ("24", "25"), 503: ("6",)}
ATTEMPTS = 6  # a throttled call waits about 30 s in all before it gives up
FIRST_DELAY, MAX_DELAY = 0.5, 16.0
PAGE_SIZE = 1000  # ReadImages' largest page


@dataclass(frozen=True)
class Image:
    """What ReadImages and CreateImage say of one OMI."""

    image_id: str
    name: str
    state: str  # pending, available or failed
    state_comment: str = ""
    file_location: str = ""
    created_at: datetime | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Image:
        comment = data.get("StateComment") or {}
        created = data.get("CreationDate")
        return cls(
            image_id=data["ImageId"],
            name=data.get("ImageName", ""),
            state=data.get("State", ""),
            state_comment=comment.get("StateMessage", "") if isinstance(comment, dict) else "",
            file_location=data.get("FileLocation", ""),
            created_at=datetime.fromisoformat(created.replace("Z", "+00:00")) if created else None,
            tags={tag["Key"]: tag["Value"] for tag in data.get("Tags", [])},
        )


class ApiError(Exception):
    """An answer of the OUTSCALE API that is not a success; never carries a request body."""

    def __init__(self, action: str, status: int | None, code: str = "", kind: str = ""):
        self.action, self.status, self.code, self.kind = action, status, code, kind
        super().__init__(f"{action} failed: HTTP {status} {kind} code {code}".strip())

    @property
    def throttled(self) -> bool:
        return self.code in THROTTLED.get(self.status or 0, ()) or self.status in (429, 503)

    @property
    def name_taken(self) -> bool:
        """OUTSCALE refuses an ImageName the account already uses (ResourceConflict)."""
        return self.kind == "ResourceConflict" or self.status == 409


class OutcomeUnknown(ApiError):
    """The call may or may not have run (connection lost, server error)."""


class OutscaleApi(Protocol):
    """What the importer needs; ``Outscale`` is the real one, tests may pass a fake."""

    def create_image(self, name: str, file_location: str) -> Image: ...

    def read_images(
        self, *, ids: Iterable[str] = (), names: Iterable[str] = (), tags: Iterable[str] = ()
    ) -> list[Image]: ...

    def create_tags(self, image_id: str, tags: Mapping[str, str]) -> None: ...


class _SharedLimiter:
    """The SDK's sliding-window limiter, made safe for the threads of ``run --workers``."""

    def __init__(self) -> None:
        from osc_sdk_python import RateLimiter

        self._limiter = RateLimiter(timedelta(seconds=1), CALLS_PER_SECOND)
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            self._limiter.acquire()


_limiter: _SharedLimiter | None = None
_limiter_lock = threading.Lock()


def _process_limiter() -> _SharedLimiter:
    global _limiter
    with _limiter_lock:
        if _limiter is None:
            _limiter = _SharedLimiter()
        return _limiter


class Outscale:
    """``OutscaleApi`` over the SDK, with throttling retried and calls rate-limited."""

    def __init__(
        self,
        call: Any,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.call = call  # osc_sdk_python.call.Call
        self._sleep = sleep
        self._jitter = jitter

    def create_image(self, name: str, file_location: str) -> Image:
        answer = self._send("CreateImage", {"ImageName": name, "FileLocation": file_location})
        return Image.from_api(answer["Image"])

    def read_images(
        self, *, ids: Iterable[str] = (), names: Iterable[str] = (), tags: Iterable[str] = ()
    ) -> list[Image]:
        filters = {
            key: list(values)
            for key, values in (("ImageIds", ids), ("ImageNames", names), ("Tags", tags))
            if values
        }
        images: list[Image] = []
        request: dict[str, Any] = {"Filters": filters, "ResultsPerPage": PAGE_SIZE}
        while True:
            answer = self._send("ReadImages", request)
            images += [Image.from_api(item) for item in answer.get("Images", [])]
            token = answer.get("NextPageToken")
            if not token:
                return images
            request = {**request, "NextPageToken": token}

    def create_tags(self, image_id: str, tags: Mapping[str, str]) -> None:
        self._send(
            "CreateTags",
            {"ResourceIds": [image_id], "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]},
        )

    def _send(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """One call, throttling retried; any call but CreateImage is safe to repeat, so
        only CreateImage turns a lost answer into ``OutcomeUnknown``."""
        import requests

        for attempt in range(ATTEMPTS):
            try:
                return self.call.api(action, **body)
            except requests.HTTPError as failure:
                error = _api_error(action, failure.response)
            except requests.RequestException:
                error = OutcomeUnknown(action, None, kind="connection lost")
            if not error.throttled:
                if action == "CreateImage" and (error.status is None or error.status >= 500):
                    raise OutcomeUnknown(action, error.status, error.code, error.kind) from None
                if error.status is not None and error.status < 500:
                    raise error from None
            if attempt + 1 < ATTEMPTS:
                delay = min(MAX_DELAY, FIRST_DELAY * 2**attempt)
                self._sleep(delay / 2 + self._jitter(0, delay / 2))
        raise error from None


def _api_error(action: str, response: Any) -> ApiError:
    """Code and type from OUTSCALE's ``{"Errors": [{"Code", "Type", "Details"}]}``."""
    status = response.status_code if response is not None else None
    try:
        first = (response.json().get("Errors") or [{}])[0]
    except (ValueError, AttributeError):
        first = {}
    return ApiError(action, status, str(first.get("Code", "")), str(first.get("Type", "")))


def profile_from_secret(secret_name: str) -> dict[str, Any]:
    """The SDK profile fields from a secret holding ``{"OSC_ACCESS_KEY": …, "OSC_SECRET_KEY":
    …}`` and optionally ``OSC_REGION`` and ``OSC_ENDPOINT_API``, read through Powertools
    Parameters (cached five minutes, as the signing secret is)."""
    from aws_lambda_powertools.utilities import parameters

    secret = parameters.get_secret(secret_name, transform="json", max_age=300)
    missing = [name for name in SECRET_FIELDS[:2] if not secret.get(name)]
    if missing:
        raise ValueError(f"secret {secret_name} lacks {' and '.join(missing)}")
    return dict(secret)


def connect(secret_name: str | None = None) -> Outscale:
    """A client configured from the secret when named, else the SDK's standard way."""
    from osc_sdk_python.call import Call
    from osc_sdk_python.credentials import Endpoint

    profile: dict[str, Any] = {}
    if secret_name:
        secret = profile_from_secret(secret_name)
        profile = {"access_key": secret["OSC_ACCESS_KEY"], "secret_key": secret["OSC_SECRET_KEY"]}
        if secret.get("OSC_REGION"):
            profile["region"] = secret["OSC_REGION"]
        if secret.get("OSC_ENDPOINT_API"):
            profile["endpoints"] = Endpoint(api=secret["OSC_ENDPOINT_API"])
    return Outscale(Call(limiter=_process_limiter(), max_retries=0, **profile))
