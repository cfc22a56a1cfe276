"""``omi-manifest run``: the pipeline on this machine.

By default an embedded S3-compatible server with a bucket whose notifications
reach the same handler Lambda runs; or an existing store, with its
notifications, or polled by listing (``--poll``) where it sends none.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import config, runtime, scheduler
from ..overview import omi_statuses
from .delivery import NotificationPump, chalice_handler
from .server import EmbeddedServer

PROJECT_DIR = str(Path(__file__).resolve().parents[2])
# The embedded server's bucket is created here, so its region is ours to choose.
LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "eu-west-2",
}
DEFAULT_BUCKET = "omi-snapshots"


@dataclass
class RunOptions:
    endpoint_url: str | None = None
    bucket: str | None = None
    port: int = 5050
    poll: float | None = None
    once: bool = False
    schedule: float = 3600.0
    check_tags: bool = False


class LocalRun:
    def __init__(self, options: RunOptions, say: Callable[[str], None] = print) -> None:
        self.options = options
        self.say = say
        self.server: EmbeddedServer | None = None

    def start(self) -> config.Settings:
        """Bring up the store (embedded unless given) and point the pipeline at it."""
        endpoint = self.options.endpoint_url
        # CloudWatch metric lines mean nothing on a terminal.
        os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
        if endpoint is None:
            for name, value in LOCAL_CREDENTIALS.items():
                os.environ.setdefault(name, value)
            self.server = EmbeddedServer(self.options.port)
            endpoint = self.server.start()
        bucket = self.options.bucket or os.environ.get("OMI_BUCKET") or DEFAULT_BUCKET
        os.environ["OMI_BUCKET"] = bucket
        os.environ["OMI_ENDPOINT_URL"] = endpoint
        os.environ.setdefault("OMI_PUBLIC_ENDPOINT_URL", endpoint)
        runtime.pipeline.cache_clear()
        settings = runtime.pipeline().settings
        if self.server is not None:
            client = runtime.pipeline().store.client
            client.create_bucket(
                Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": settings.region}
            )
        return settings

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def one_pass(self) -> scheduler.PassReport:
        pipeline = runtime.pipeline()
        return scheduler.Pass(
            pipeline, pipeline.settings.renew_before, check_tags=self.options.check_tags
        ).run()

    def errors(self) -> list[str]:
        pipeline = runtime.pipeline()
        return [
            f"{s.name}: {s.error}"
            for s in omi_statuses(pipeline.store, pipeline.settings.defaults)
            if s.state == "error"
        ]

    def run(self) -> int:
        settings = self.start()
        try:
            if self.options.once:
                self.one_pass()
                errors = self.errors()
                for line in errors:
                    self.say(f"error: {line}")
                return 1 if errors else 0
            self._announce(settings)
            if self.options.poll is not None:
                self._poll_forever(self.options.poll)
            else:
                self._deliver_forever(settings)
        except KeyboardInterrupt:
            self.say("stopping")
        finally:
            self.stop()
        return 0

    def _poll_forever(self, interval: float) -> None:
        while True:
            self.one_pass()
            time.sleep(interval)

    def _deliver_forever(self, settings: config.Settings) -> None:
        pipeline = runtime.pipeline()
        sqs = sqs_client(settings)
        pump = NotificationPump(pipeline.store.client, sqs, settings.bucket)
        try:
            pump.connect()
        except Exception as error:  # the store has no SQS-style notifications
            raise SystemExit(
                f"omi-manifest: {settings.endpoint_url} sends no notifications ({error}) - "
                "use --poll SECONDS"
            ) from None
        handler = chalice_handler(PROJECT_DIR)
        self.one_pass()  # what was there before we started
        next_pass = time.monotonic() + self.options.schedule
        while True:
            pump.pump(handler, wait_seconds=1)
            if time.monotonic() >= next_pass:
                self.one_pass()
                next_pass = time.monotonic() + self.options.schedule

    def _announce(self, settings: config.Settings) -> None:
        aws = shutil.which("aws", path=os.path.dirname(sys.executable)) or "aws"
        credentials = (
            "AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing " if self.server else ""
        )
        mode = f"polling every {self.options.poll:g} s" if self.options.poll else "bucket events"
        self.say(
            "\n".join(
                [
                    "omi-manifest is running (Ctrl-C to stop)",
                    f"  endpoint: {settings.endpoint_url}",
                    f"  bucket:   {settings.bucket}",
                    f"  changes:  {mode}; re-sign and reconcile every {self.options.schedule:g} s",
                    "",
                    "Drop a snapshot in (another terminal):",
                    f"  {credentials}AWS_DEFAULT_REGION={settings.region} "
                    f"{aws} --endpoint-url {settings.endpoint_url} "
                    f"s3 cp disk.qcow2 s3://{settings.bucket}/web-server/sda1.qcow2",
                    "Then read the result:",
                    f"  omi-manifest status --endpoint-url {settings.endpoint_url} "
                    f"--bucket {settings.bucket}",
                ]
            ),
        )


def sqs_client(settings: config.Settings) -> object:
    import boto3

    return boto3.client("sqs", endpoint_url=settings.endpoint_url, region_name=settings.region)
