"""The whole thing running: moto's HTTP server, real bucket notifications delivered
through SQS to the Chalice handler, exactly as ``omi-manifest run`` wires them."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from urllib.parse import urlencode
from urllib.request import urlopen

import boto3
import pytest

from chalicelib import runtime, signing
from chalicelib.local.delivery import NotificationPump, chalice_handler
from chalicelib.local.server import EmbeddedServer

PROJECT = str(Path(__file__).parents[2])
REGION = "eu-west-2"
SECRET = "e2e-secret-key-never-logged-0123456789"
_bucket_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def server():
    embedded = EmbeddedServer()
    yield embedded.start()
    embedded.stop()


class Live:
    """A bucket on the live server with the pipeline attached through notifications."""

    def __init__(self, url: str, bucket: str) -> None:
        self.url = url
        self.bucket = bucket
        session = boto3.Session(
            aws_access_key_id="AKIAE2ELONGTERM", aws_secret_access_key=SECRET, region_name=REGION
        )
        self.s3 = session.client("s3", endpoint_url=url)
        self.s3.create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        self.pump = NotificationPump(
            self.s3, session.client("sqs", endpoint_url=url), bucket, queue=f"{bucket}-events"
        )
        self.pump.connect()
        self.handler = chalice_handler(PROJECT)

    def drop(self, key: str, source: Path, tags: dict[str, str] | None = None) -> None:
        extra = {"Tagging": urlencode(tags)} if tags else {}
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=source.read_bytes(), **extra)
        self.settle()

    def settle(self) -> int:
        return self.pump.pump(self.handler)

    def tags(self, key: str) -> dict[str, str]:
        found = self.s3.get_object_tagging(Bucket=self.bucket, Key=key)["TagSet"]
        return {tag["Key"]: tag["Value"] for tag in found}

    def manifest_url(self, name: str) -> str:
        return signing.url_from_tags(self.tags(f"manifests/{name}.json"))

    @staticmethod
    def fetch(url: str) -> bytes:
        with urlopen(url, timeout=30) as response:
            return response.read()

    def fetch_manifest(self, name: str) -> dict:
        return json.loads(self.fetch(self.manifest_url(name)))


@pytest.fixture
def live(server, monkeypatch):
    bucket = f"e2e-{next(_bucket_numbers)}"
    for name, value in {
        "AWS_ACCESS_KEY_ID": "AKIAE2ELONGTERM",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": REGION,
        "OMI_BUCKET": bucket,
        "OMI_REGION": REGION,
        "OMI_ENDPOINT_URL": server,
        "OMI_PUBLIC_ENDPOINT_URL": server,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    runtime.pipeline.cache_clear()
    yield Live(server, bucket)
    runtime.pipeline.cache_clear()
