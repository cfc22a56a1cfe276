"""``omi-manifest run``: the pipeline on this machine.

By default an embedded S3-compatible server with a bucket whose notifications
reach the same handler Lambda runs; or an existing store, with its
notifications, or polled by listing (``--poll``) where it sends none.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import ClientError

from .. import config, runtime, scheduler, signing
from ..cli import CommandError
from ..observability import logger, quiet_metrics
from ..overview import omi_statuses
from .delivery import EmbeddedPump, Handler, NotificationPump, Pump, chalice_handler
from .server import EmbeddedServer

PROJECT_DIR = str(Path(__file__).resolve().parents[2])
# The embedded server's bucket is created here, so its region is ours to choose.
LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "eu-west-2",
}
DEFAULT_BUCKET = "omi-snapshots"
FOLLOW_SECONDS = 300.0  # pending imports show within five minutes (spec section 9)
# How long stopping waits for an event being handled; the queue delivers it again later.
STOP_WAIT = 30.0


@dataclass
class RunOptions:
    endpoint_url: str | None = None
    bucket: str | None = None
    port: int = 5050
    poll: float | None = None
    once: bool = False
    schedule: float = 3600.0
    check_tags: bool = False
    workers: int = 1
    follow: float = FOLLOW_SECONDS  # seconds between checks of pending imports


class LocalRun:
    def __init__(self, options: RunOptions, say: Callable[[str], None] = print) -> None:
        self.options = options
        self.say = say
        self.server: EmbeddedServer | None = None
        self.stopping = threading.Event()

    def start(self) -> config.Settings:
        """Bring up the store (embedded unless given) and point the pipeline at it."""
        endpoint = self.options.endpoint_url
        quiet_metrics()
        if endpoint is None:
            for name, value in LOCAL_CREDENTIALS.items():
                os.environ.setdefault(name, value)
            self.server = EmbeddedServer(self.options.port)
            endpoint = self.server.start()
        else:
            signing.check_host_signing(os.environ)  # a real store: real URLs
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
        self.stopping.set()
        if self.server is not None:
            self.server.stop()

    def one_pass(self) -> scheduler.PassReport:
        """A pass; one that polls a store without events, or a ``--once`` pass, reads every
        object's tags, so that a tag change shows within one interval."""
        pipeline = runtime.pipeline()
        options = self.options
        every_tag = options.check_tags or options.poll is not None or options.once
        return scheduler.Pass(pipeline, pipeline.settings.renew_before, check_tags=every_tag).run()

    def errors(self) -> list[str]:
        pipeline = runtime.pipeline()
        return [f"{s.name}: {s.error}" for s in omi_statuses(pipeline) if s.state == "error"]

    def run(self) -> int:
        """Start and serve, stopping on Ctrl-C or SIGTERM (what service managers, CI runners
        and ``kill`` send; SIGINT is ignored in background jobs)."""
        signal.signal(signal.SIGTERM, self._stop_on_signal)
        return self.serve(self.start())

    def _stop_on_signal(self, signum: int, frame: object) -> None:
        if self.stopping.is_set():  # asked again while stopping: wait for nothing more
            os._exit(128 + signum)
        self.stopping.set()
        raise KeyboardInterrupt

    def serve(self, settings: config.Settings) -> int:
        """Until Ctrl-C or ``stopping`` (or one pass with ``once``); stops the store after."""
        try:
            if self.options.once:
                return self._once()
            if self.options.poll is not None:
                self._announce(settings)
                self._poll_forever(self.options.poll)
            else:
                pump, handler = self._connect(settings)
                self._announce(settings)
                self._deliver_forever(pump, handler)
        except KeyboardInterrupt:
            self.say("stopping")
        finally:
            self.stop()
        return 0

    def _once(self) -> int:
        """One pass; 1 when anything in it failed or any OMI is in error."""
        failed = self.one_pass().outcomes["failed"]
        if failed:
            self.say(f"failed: {failed} (see the lines above; the next pass tries again)")
        errors = self.errors()
        for line in errors:
            self.say(f"error: {line}")
        return 1 if errors or failed else 0

    def _poll_forever(self, interval: float) -> None:
        self.one_pass()
        self._keep_schedule(interval)

    def _keep_schedule(self, interval: float) -> None:
        """A pass every ``interval`` seconds (the first one is done), and pending imports
        checked at least every ``follow`` seconds in between, until ``stopping``."""
        due = time.monotonic() + interval
        while True:
            self.follow()
            if self.stopping.wait(min(self.options.follow, max(0.0, due - time.monotonic()))):
                return
            if time.monotonic() >= due:
                self.one_pass()
                due = time.monotonic() + interval

    def follow(self) -> None:
        """What the short schedule does on AWS; a failure is logged, the next check retries."""
        try:
            runtime.pipeline().follow_imports()
        except Exception:
            logger.exception("checking pending imports failed")

    def _connect(self, settings: config.Settings) -> tuple[Pump, Handler]:
        """Point the bucket's notifications at a queue this run drains."""
        if self.server is not None:
            return embedded_pump(self.server, settings), chalice_handler(PROJECT_DIR)
        pipeline = runtime.pipeline()
        pump = NotificationPump(pipeline.store.client, sqs_client(settings), settings.bucket)
        try:
            pump.connect()
        except ClientError as error:  # no SQS-style notifications (XML in the message)
            code = error.response.get("Error", {}).get("Code") or "an error"
            code = f"HTTP {code}" if code.isdigit() else code
            raise CommandError(
                f"{settings.endpoint_url} cannot send bucket notifications to a queue "
                f"({error.operation_name}: {code}) - run with --poll SECONDS to find changes "
                "by listing"
            ) from None
        return pump, chalice_handler(PROJECT_DIR)

    def _deliver_forever(self, pump: Pump, handler: Handler) -> None:
        """Events to the handler, ``workers`` at a time, while the pass keeps its schedule
        (as in Lambda, a pass and events run at the same time)."""
        self.one_pass()  # what was there before we started
        delivery = threading.Thread(
            target=pump.pump_concurrently,
            args=(handler, self.options.workers, self.stopping.is_set),
            daemon=True,
        )
        delivery.start()
        try:
            self._keep_schedule(self.options.schedule)
        finally:
            self.stopping.set()
            delivery.join(timeout=STOP_WAIT)

    def _announce(self, settings: config.Settings) -> None:
        """Where things are, and lines that work as printed in a new terminal."""
        tool = os.path.dirname(sys.executable)
        aws = shutil.which("aws", path=tool) or "aws"
        omi = shutil.which("omi-manifest", path=tool) or "omi-manifest"
        variables = LOCAL_CREDENTIALS if self.server else {}
        variables = {**variables, "AWS_DEFAULT_REGION": settings.region}
        env = "".join(f"{name}={value} " for name, value in variables.items())
        endpoint, bucket = settings.endpoint_url, settings.bucket
        mode = f"polling every {self.options.poll:g} s" if self.options.poll else "bucket events"
        workers = f", {self.options.workers} workers" if self.options.workers > 1 else ""
        where = " (embedded S3 server, in memory: gone when this stops)" if self.server else ""
        self.say(
            "\n".join(
                [
                    "omi-manifest is running (Ctrl-C to stop)",
                    f"  endpoint: {endpoint}{where}",
                    f"  bucket:   {bucket}",
                    f"  changes:  {mode}{workers}; re-sign and reconcile every "
                    f"{self.options.schedule:g} s",
                    "",
                    "In another terminal, upload a snapshot with its tags and wait for its URL:",
                    f"  {env}{omi} put --endpoint-url {endpoint} --wait disk.qcow2 "
                    f"s3://{bucket}/web-server/",
                    "or drop one with the AWS CLI:",
                    f"  {env}{aws} --endpoint-url {endpoint} "
                    f"s3 cp disk.qcow2 s3://{bucket}/app-server/sda1.qcow2",
                    "Then read the result:",
                    f"  {env}{omi} status --endpoint-url {endpoint} --bucket {bucket}",
                    "",
                    "Changes, one line each:",
                ]
            ),
        )


def embedded_pump(server: EmbeddedServer, settings: config.Settings) -> EmbeddedPump:
    """The embedded bucket's events, in this process; those of the pipeline's own
    records and manifests are dropped at the server."""
    server.skip_events_under(settings.bucket, settings.reserved_prefixes)
    return EmbeddedPump(server.deliver_in_process(settings.bucket))


def sqs_client(settings: config.Settings) -> object:
    import boto3

    return boto3.client("sqs", endpoint_url=settings.endpoint_url, region_name=settings.region)
