"""Each change of an OMI as an event: a log line always, and EventBridge where a bus is set.

Kinds (spec section 9): ``published``, ``withdrawn``, ``renewed``, ``rejected``,
``import-started``, ``imported``, ``import-failed``. On EventBridge an event has
``source`` ``omi-manifest``, ``detail-type`` = the kind, and a ``detail`` holding
``kind``, ``omi``, ``bucket``, ``manifest_key``, ``digest``, ``image_id``, ``state``,
``reason`` and ``expires`` (absent ones are null). The log line is the ``change``
line ``run`` prints (``web-server: imported ami-12345678``) with the same fields, so
``--log-format json`` and Lambda's logs carry them too.

Sending is best effort: the change is already written when it is announced, and failing
the invocation would not send it again (the retry finds nothing to do), so a refused or
failed ``PutEvents`` is logged and counted, never raised. No URL is ever in an event.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .observability import count, logger

SOURCE = "omi-manifest"
KINDS = (
    "published",
    "withdrawn",
    "renewed",
    "rejected",
    "import-started",
    "imported",
    "import-failed",
)
BATCH = 10  # PutEvents takes at most 10 entries


@dataclass(frozen=True)
class Event:
    kind: str
    omi: str
    bucket: str | None = None
    manifest_key: str | None = None
    digest: str | None = None
    image_id: str | None = None
    state: str | None = None  # the image's: pending, available, failed; or error
    reason: str | None = None  # an error's text, a failed import's StateComment
    expires: str | None = None  # the manifest URL's expiry (published, renewed)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown event kind {self.kind}")

    @property
    def change(self) -> str:
        """The one line a person reads: ``web-server: imported ami-12345678``."""
        words = [f"{self.omi}: {self.kind}"]
        if self.kind in ("published", "withdrawn", "renewed"):
            words.append(self.manifest_key or "")
            if self.expires:
                words.append(f"(expires {self.expires})")
        else:
            words.append(self.image_id or "")
        if self.reason:
            words.append(f"- {self.reason}")
        return " ".join(word for word in words if word)

    def detail(self) -> dict[str, Any]:
        return asdict(self)


class Announcer:
    """Logs every event; sends them to ``bus`` when one is configured.

    ``client`` makes the EventBridge client, once, on first use (boto3 is not imported
    when no bus is set).
    """

    def __init__(self, bus: str | None, client: Callable[[], Any] | None = None) -> None:
        self.bus = bus
        self._make_client = client or _events_client
        self._client: Any = None

    def announce(self, events: Sequence[Event], lines: bool = True) -> None:
        """``lines=False``: the change already has its console lines (a ``rejected`` OMI's
        are its snapshots' ``error:`` lines); the record is logged without a ``change``."""
        for event in events:
            shown = {"change": event.change} if lines else {}
            logger.info(
                f"omi {event.kind}",
                extra={"event": event.kind}
                | shown
                | {k: v for k, v in event.detail().items() if v is not None and k != "kind"},
            )
        if self.bus and events:
            self._send(events)

    def _send(self, events: Sequence[Event]) -> None:
        if self._client is None:
            self._client = self._make_client()
        for start in range(0, len(events), BATCH):
            batch = events[start : start + BATCH]
            entries = [
                {
                    "Source": SOURCE,
                    "DetailType": event.kind,
                    "Detail": json.dumps(event.detail()),
                    "EventBusName": self.bus,
                }
                for event in batch
            ]
            try:
                answer = self._client.put_events(Entries=entries)
            except Exception:
                logger.exception("events not sent", extra={"bus": self.bus, "events": len(batch)})
                count("EventsNotSent", len(batch))
                continue
            failed = answer.get("FailedEntryCount", 0)
            for event, entry in zip(batch, answer.get("Entries", []), strict=False):
                if "ErrorCode" in entry:
                    logger.error(
                        "event refused",
                        extra={"omi": event.omi, "event": event.kind, "error": entry["ErrorCode"]},
                    )
            count("EventsSent", len(batch) - failed)
            if failed:
                count("EventsNotSent", failed)


def _events_client() -> Any:
    import boto3

    return boto3.client("events")
