"""The pipeline of this process, built once from the environment on first use.

Built lazily so that importing the app (every Lambda cold start) stays cheap.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from . import config, signing
from .pipeline import Pipeline
from .store import Store

# Standard mode retries throttling, 5xx and timeouts with jittered exponential backoff;
# 5 retries (6 attempts, at most about 20 s of waiting) ride out a brief S3 slowdown
# within a Lambda's time without hiding a real outage, which then fails the event so
# that Lambda retries it, and the scheduled pass repairs whatever is left.
RETRIES = {"mode": "standard", "max_attempts": 5}


def s3_client(settings: config.Settings) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        config=Config(signature_version="s3v4", retries=RETRIES),
    )


def build_pipeline(settings: config.Settings, client: Any | None = None) -> Pipeline:
    store = Store(client or s3_client(settings), settings)

    def keys() -> signing.SigningKeys:
        return signing.load_keys(
            settings.signing_secret, settings.region, settings.temporary_credentials_lifetime
        )

    return Pipeline(store, settings, keys)


@cache
def pipeline() -> Pipeline:
    return build_pipeline(config.load())
