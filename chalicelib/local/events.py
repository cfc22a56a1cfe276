"""Bucket events from the embedded server, shaped as S3 sends them.

moto differs from S3 in ways a pipeline can see, and its queue is slow to fill:

- it sends ``ObjectTagging:Put`` for a ``PutObject`` that carries tags (S3 sends
  only ``ObjectCreated:Put``), and queues ``ObjectCreated`` before it stores those
  tags, so a fast consumer could read the new object untagged;
- its records carry no ``userIdentity``; S3 gives the principal of the writer;
- its SQS ``send_message`` recomputes every queue attribute (a scan of all
  messages, a clock read each) per message, so delivery slows as a backlog grows.

Here every event a request causes is recorded while moto works and sent only once
the request has finished (tags stored), from the request's own thread. Events for
keys under a bucket's skipped prefixes (the pipeline's own records and manifests)
are dropped, never queued. A bucket may deliver to an in-process ``EventQueue``
that a pump reads without any HTTP or SQS work.

The hook replaces moto's ``send_event`` once per process; requests that do not come
through an embedded server (moto's decorator in unit tests) keep moto's behaviour.
"""

from __future__ import annotations

import heapq
import itertools
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus

OBJECT_EVENT_FAMILIES = ("s3:ObjectCreated:", "s3:ObjectRemoved:", "s3:ObjectTagging:")
TAGGING_OPERATIONS = ("PutObjectTagging", "DeleteTagging")  # the only sources of tag events


def own_principal(access_key_id: str) -> str:
    """The ``userIdentity.principalId`` the embedded server writes for requests signed
    with ``access_key_id``: the pipeline compares it with a record's to know its own."""
    return f"AWS:{access_key_id}"


@dataclass
class Request:
    """One request in progress on an embedded server: who signed it, what it is, and the
    sends of the events it caused, made when it has finished."""

    events: Events
    caller: str
    operation: str
    sends: list[Callable[[], None]] = field(default_factory=list)


_current = threading.local()


def current_request() -> Request | None:
    return getattr(_current, "request", None)


class EventQueue:
    """Events of one bucket, in order, for a pump in the same process.

    ``receive`` hands out up to ``most`` events (each with its attempt number);
    ``retry_later`` makes one visible again after a delay, as an SQS visibility
    timeout would.
    """

    def __init__(self) -> None:
        self._ready: deque[tuple[dict[str, Any], int]] = deque()
        self._later: list[tuple[float, int, dict[str, Any], int]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()

    def put(self, event: dict[str, Any]) -> None:
        with self._changed:
            self._ready.append((event, 1))
            self._changed.notify()

    def retry_later(self, event: dict[str, Any], attempt: int, seconds: float) -> None:
        with self._changed:
            due = time.monotonic() + seconds
            heapq.heappush(self._later, (due, next(self._order), event, attempt + 1))

    def receive(self, most: int, wait_seconds: float = 0) -> list[tuple[dict[str, Any], int]]:
        """Up to ``most`` (event, attempt) pairs; waits up to ``wait_seconds`` for one."""
        deadline = time.monotonic() + wait_seconds
        with self._changed:
            while True:
                self._release_due()
                if self._ready:
                    count = min(most, len(self._ready))
                    return [self._ready.popleft() for _ in range(count)]
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                if self._later:
                    left = min(left, self._later[0][0] - time.monotonic())
                self._changed.wait(max(left, 0.001))

    def wait(self, seconds: float) -> None:
        """Until an event is ready or ``seconds`` have passed."""
        with self._changed:
            self._release_due()
            if not self._ready:
                self._changed.wait(seconds)

    def __len__(self) -> int:
        with self._changed:
            return len(self._ready) + len(self._later)

    def _release_due(self) -> None:
        now = time.monotonic()
        while self._later and self._later[0][0] <= now:
            _, _, event, attempt = heapq.heappop(self._later)
            self._ready.append((event, attempt))


class Events:
    """One embedded server's event rules: skipped prefixes and in-process queues, by
    bucket. Buckets without a queue here deliver to their notification configuration."""

    def __init__(self) -> None:
        self._skipped: dict[str, tuple[str, ...]] = {}
        self._queues: dict[str, EventQueue] = {}

    def skip_under(self, bucket: str, prefixes: Iterable[str]) -> None:
        self._skipped[bucket] = tuple(prefixes)

    def deliver_in_process(self, bucket: str) -> EventQueue:
        return self._queues.setdefault(bucket, EventQueue())

    def begin(self, caller: str, operation: str) -> Request:
        request = Request(self, caller, operation)
        _current.request = request
        return request

    def finish(self, request: Request) -> None:
        """Send what the request caused (its writes are stored by now)."""
        _current.request = None
        for send in request.sends:
            send()

    def record(
        self, request: Request, account_id: str, event_name: str, bucket: Any, key: Any
    ) -> None:
        """Called by moto, in the request's thread, for each event it would send now."""
        if not event_name.startswith(OBJECT_EVENT_FAMILIES):
            return
        if event_name.startswith("s3:ObjectTagging:") and request.operation not in (
            TAGGING_OPERATIONS
        ):
            return
        if key.name.startswith(self._skipped.get(bucket.name, ())):
            return
        principal = own_principal(request.caller)
        queue = self._queues.get(bucket.name)
        if queue is not None:
            body = _record(event_name, bucket, key, "embedded", principal)
            request.sends.append(lambda: queue.put(body))
            return
        configuration = bucket.notification_configuration
        for target in configuration.queue if configuration else ():
            if target.matches(event_name, key.name):
                body = _record(event_name, bucket, key, target.id, principal)
                request.sends.append(_to_sqs(account_id, target.arn, body))


def _record(
    event_name: str, bucket: Any, key: Any, configuration_id: str, principal: str
) -> dict[str, Any]:
    from moto.s3.notifications import _get_s3_event

    event = _get_s3_event(event_name, bucket, key, configuration_id)
    record = event["Records"][0]
    record["userIdentity"] = {"principalId": principal}
    record["s3"]["object"]["key"] = quote_plus(key.name, safe="/")  # moto encodes "/" too
    return event


def _to_sqs(account_id: str, arn: str, event: dict[str, Any]) -> Callable[[], None]:
    """Append to moto's queue directly: a standard queue needs none of the attribute
    and deduplication work ``send_message`` does per message."""

    def send() -> None:
        from moto.sqs.models import Message, sqs_backends

        region, name = arn.split(":")[3], arn.split(":")[-1]
        try:
            queue = sqs_backends[account_id][region].get_queue(name)
        except Exception:  # as S3: a notification to a missing queue is lost, not an error
            return
        message = Message(str(uuid.uuid4()), json.dumps(event))
        message.mark_sent(delay_seconds=int(queue.delay_seconds or 0))
        queue.add_message(message)

    return send


_installed = threading.Lock()


def install() -> None:
    """Route moto's S3 notifications through the embedded server that serves the request
    (once per process)."""
    from moto.s3 import notifications

    with _installed:
        if getattr(notifications.send_event, "embedded", False):
            return
        moto_send_event = notifications.send_event

        def send_event(account_id: str, event_name, bucket, key) -> None:
            request = current_request()
            if request is None:
                moto_send_event(account_id, event_name, bucket, key)
            else:
                request.events.record(request, account_id, str(event_name.value), bucket, key)

        send_event.embedded = True
        notifications.send_event = send_event
