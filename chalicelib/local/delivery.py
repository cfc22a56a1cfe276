"""Deliver a store's real bucket notifications to the same handler Lambda runs.

The bucket sends its notifications to an SQS queue (a real store's, or moto's on
the embedded server), or, on the embedded server, to a queue in this process; the
pump drains the queue and invokes the Chalice function with each event, as the
Lambda service would.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..observability import logger
from .events import EventQueue

IDLE_WAIT = 0.1
ATTEMPTS = 3  # as Lambda tries an asynchronous invocation: once, then twice more
RETRY_AFTER = 2  # seconds before a failed event is delivered again
OBJECT_EVENTS = ["s3:ObjectCreated:*", "s3:ObjectRemoved:*", "s3:ObjectTagging:*"]

Handler = Callable[[dict[str, Any]], None]


@dataclass
class Delivery:
    """One event taken from a queue: what it says, which attempt this is, and how to
    settle it (remove it, or let it come back after a delay)."""

    event: dict[str, Any]
    attempt: int
    done: Callable[[], None]
    retry_later: Callable[[float], None]


class Pump:
    """Takes events from a queue and invokes the handler with each, as Lambda does."""

    def __init__(self) -> None:
        self.delivered = 0
        self._lock = threading.Lock()

    def receive(self, most: int, wait_seconds: float) -> list[Delivery]:
        raise NotImplementedError

    def idle(self) -> None:
        """Wait a little when the queue is empty (an idle worker must not spin)."""
        time.sleep(IDLE_WAIT)

    def pump(self, handler: Handler, wait_seconds: int = 0) -> int:
        """Deliver every waiting notification, including those the deliveries cause.

        Returns how many were delivered; stops when the queue is empty.
        """
        before = self.delivered
        while self._deliver_batch(handler, 10, wait_seconds):
            wait_seconds = 0
        return self.delivered - before

    def pump_concurrently(
        self, handler: Handler, workers: int, finished: Callable[[], bool]
    ) -> int:
        """Deliver with ``workers`` threads at once, as Lambda runs concurrent invocations,
        until ``finished()`` holds and the queue is empty."""
        before = self.delivered

        def worker() -> None:
            while True:
                done = finished()
                if self._deliver_batch(handler, 1, 0):
                    continue
                if done:
                    return
                self.idle()

        threads = [threading.Thread(target=worker) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return self.delivered - before

    def _deliver_batch(self, handler: Handler, most: int, wait_seconds: float) -> int:
        """Receive up to ``most`` events, hand each S3 event to ``handler``; how many came.

        A failed invocation is delivered again, ``ATTEMPTS`` times in all, as Lambda retries
        it; then it is dropped with a warning, and the scheduled pass repairs its object.
        """
        batch = self.receive(most, wait_seconds)
        for delivery in batch:
            event = delivery.event
            if event.get("Records"):
                try:
                    handler(event)
                except Exception:
                    if delivery.attempt < ATTEMPTS:
                        delivery.retry_later(RETRY_AFTER)
                        continue
                    key = event["Records"][0].get("s3", {}).get("object", {}).get("key")
                    logger.warning(
                        f"event dropped after {ATTEMPTS} attempts; the next pass repairs it",
                        extra={"key": key},
                    )
                with self._lock:
                    self.delivered += 1
            delivery.done()
        return len(batch)


class NotificationPump(Pump):
    """Events from an SQS queue the bucket's notifications are pointed at."""

    def __init__(self, s3: Any, sqs: Any, bucket: str, queue: str = "omi-manifest-events") -> None:
        super().__init__()
        self.s3 = s3
        self.sqs = sqs
        self.bucket = bucket
        self.queue = queue
        self.queue_url: str | None = None

    def connect(self) -> None:
        """Create the queue and point the bucket's notifications at it."""
        self.queue_url = self.sqs.create_queue(QueueName=self.queue)["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self.s3.put_bucket_notification_configuration(
            Bucket=self.bucket,
            NotificationConfiguration={
                "QueueConfigurations": [{"QueueArn": arn, "Events": OBJECT_EVENTS}]
            },
        )

    def receive(self, most: int, wait_seconds: float) -> list[Delivery]:
        messages = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=most,
            WaitTimeSeconds=int(wait_seconds),
            AttributeNames=["ApproximateReceiveCount"],
        ).get("Messages", [])
        return [self._delivery(message) for message in messages]

    def _delivery(self, message: dict[str, Any]) -> Delivery:
        receipt = message["ReceiptHandle"]

        def done() -> None:
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt)

        def retry_later(seconds: float) -> None:
            self.sqs.change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=receipt, VisibilityTimeout=int(seconds)
            )

        attempt = int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1))
        return Delivery(json.loads(message["Body"]), attempt, done, retry_later)


class EmbeddedPump(Pump):
    """Events the embedded server puts in a queue in this process
    (``EmbeddedServer.deliver_in_process``): no HTTP, no SQS."""

    def __init__(self, queue: EventQueue) -> None:
        super().__init__()
        self.queue = queue

    def receive(self, most: int, wait_seconds: float) -> list[Delivery]:
        return [
            Delivery(event, attempt, _nothing, self._retry(event, attempt))
            for event, attempt in self.queue.receive(most, wait_seconds)
        ]

    def idle(self) -> None:
        self.queue.wait(IDLE_WAIT)  # wakes at once when an event arrives

    def _retry(self, event: dict[str, Any], attempt: int) -> Callable[[float], None]:
        return lambda seconds: self.queue.retry_later(event, attempt, seconds)


def _nothing() -> None:
    """An in-process event is removed from its queue when it is received."""


LOCAL_STAGE = "local"  # a stage with no settings: a local run takes its own


def chalice_handler(project_dir: str) -> Handler:
    """Invoke the app's ``on_object_event`` function the way Lambda does."""
    import sys

    from chalice.test import Client

    if project_dir not in sys.path:
        sys.path.insert(0, project_dir)
    from app import app

    client = Client(app, stage_name=LOCAL_STAGE, project_dir=project_dir)

    def invoke(event: dict[str, Any]) -> None:
        client.lambda_.invoke("on_object_event", event)

    return invoke
