"""Deliver a store's real bucket notifications to the same handler Lambda runs.

The bucket sends its notifications to an SQS queue (moto's, on the embedded
server); the pump drains the queue and invokes the Chalice function with each
message, as the Lambda service would.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

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
        delivered = 0
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds
            ).get("Messages", [])
            if not batch:
                return delivered
            for message in batch:
                event = json.loads(message["Body"])
                if event.get("Records"):
                    handler(event)
                    delivered += 1
                    self.delivered += 1
                self.sqs.delete_message(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
                )
            wait_seconds = 0


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
