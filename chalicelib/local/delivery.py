"""Deliver a store's real bucket notifications to the same handler Lambda runs.

The bucket sends its notifications to an SQS queue (moto's, on the embedded
server); the pump drains the queue and invokes the Chalice function with each
message, as the Lambda service would.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from ..observability import logger

IDLE_WAIT = 0.1
ATTEMPTS = 3  # as Lambda tries an asynchronous invocation: once, then twice more
RETRY_AFTER = 2  # seconds before a failed event is delivered again
OBJECT_EVENTS = ["s3:ObjectCreated:*", "s3:ObjectRemoved:*", "s3:ObjectTagging:*"]

Handler = Callable[[dict[str, Any]], None]


class NotificationPump:
    def __init__(self, s3: Any, sqs: Any, bucket: str, queue: str = "omi-manifest-events") -> None:
        self.s3 = s3
        self.sqs = sqs
        self.bucket = bucket
        self.queue = queue
        self.queue_url: str | None = None
        self.delivered = 0
        self._lock = threading.Lock()

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
                time.sleep(IDLE_WAIT)  # an idle worker must not hammer the queue

        threads = [threading.Thread(target=worker) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return self.delivered - before

    def _deliver_batch(self, handler: Handler, most: int, wait_seconds: int) -> int:
        """Receive up to ``most`` messages, hand each S3 event to ``handler``; how many came.

        A failed invocation is delivered again, ``ATTEMPTS`` times in all, as Lambda retries
        it; then it is dropped with a warning, and the scheduled pass repairs its object.
        """
        batch = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=most,
            WaitTimeSeconds=wait_seconds,
            AttributeNames=["ApproximateReceiveCount"],
        ).get("Messages", [])
        for message in batch:
            event = json.loads(message["Body"])
            receipt = message["ReceiptHandle"]
            if event.get("Records"):
                try:
                    handler(event)
                except Exception:
                    attempt = int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1))
                    if attempt < ATTEMPTS:
                        self.sqs.change_message_visibility(
                            QueueUrl=self.queue_url,
                            ReceiptHandle=receipt,
                            VisibilityTimeout=RETRY_AFTER,
                        )
                        continue
                    key = event["Records"][0].get("s3", {}).get("object", {}).get("key")
                    logger.warning(
                        f"event dropped after {ATTEMPTS} attempts; the next pass repairs it",
                        extra={"key": key},
                    )
                with self._lock:
                    self.delivered += 1
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt)
        return len(batch)


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
