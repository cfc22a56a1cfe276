"""A bucket with the pipeline attached, for tests: drop files, deliver events, read results."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from chalicelib import signing
from chalicelib.config import Settings
from chalicelib.notifications import ObjectChange
from chalicelib.pipeline import Pipeline
from chalicelib.store import Store

BUCKET = "snapshots"
REGION = "eu-west-2"
KEYS = signing.SigningKeys("AKIALONGTERMSIGNER01", "long-term-secret-key-of-the-signer")
NOW = datetime(2026, 11, 30, 18, 40, tzinfo=UTC)
WRITES = ("PutObject", "PutObjectTagging", "DeleteObject", "DeleteObjectTagging")


def create_bucket(s3: Any, bucket: str = BUCKET) -> None:
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})


@dataclass
class Harness:
    s3: Any
    settings: Settings
    keys: signing.SigningKeys = KEYS
    now: datetime = NOW
    calls: list[str] = field(default_factory=list)
    pipeline_client: Any = None  # the pipeline's own client, when it must differ from the user's

    def __post_init__(self) -> None:
        self.pipeline = Pipeline(
            Store(self.pipeline_client or self.s3, self.settings),
            self.settings,
            lambda: self.keys,
            lambda: self.now,
        )
        self.s3.meta.events.register(
            "before-call.s3.*", lambda model, **_: self.calls.append(model.name)
        )

    # --- acting as a user ---------------------------------------------------------

    def put(self, key: str, source: Path | bytes, tags: dict[str, str] | None = None) -> None:
        body = source.read_bytes() if isinstance(source, Path) else source
        extra = {"Tagging": urlencode(tags)} if tags else {}
        self.s3.put_object(Bucket=self.settings.bucket, Key=key, Body=body, **extra)

    def retag(self, key: str, tags: dict[str, str]) -> None:
        self.s3.put_object_tagging(
            Bucket=self.settings.bucket,
            Key=key,
            Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]},
        )

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.settings.bucket, Key=key)

    def deliver(self, *keys: str, event: str = "ObjectCreated:Put") -> None:
        self.pipeline.handle([ObjectChange(self.settings.bucket, key, event) for key in keys])

    def drop(self, key: str, source: Path | bytes, tags: dict[str, str] | None = None) -> None:
        self.put(key, source, tags)
        self.deliver(key)

    # --- reading results ----------------------------------------------------------

    def tags(self, key: str) -> dict[str, str]:
        found = self.s3.get_object_tagging(Bucket=self.settings.bucket, Key=key)
        return {tag["Key"]: tag["Value"] for tag in found["TagSet"]}

    def status(self, key: str) -> str | None:
        return self.tags(key).get("omi:status")

    def exists(self, key: str) -> bool:
        listed = self.s3.list_objects_v2(Bucket=self.settings.bucket, Prefix=key)
        return any(item["Key"] == key for item in listed.get("Contents", []))

    def manifest(self, name: str) -> dict[str, Any]:
        key = f"{self.settings.manifest_prefix}{name}.json"
        body = self.s3.get_object(Bucket=self.settings.bucket, Key=key)
        assert body["ContentType"] == "application/json"
        return json.loads(body["Body"].read().decode("utf-8"))

    def manifest_url(self, name: str) -> str:
        tags = self.tags(f"{self.settings.manifest_prefix}{name}.json")
        url = signing.url_from_tags(tags)
        assert url is not None
        return url

    def writes_during(self, action) -> list[str]:
        start = len(self.calls)
        action()
        return [call for call in self.calls[start:] if call in WRITES]
