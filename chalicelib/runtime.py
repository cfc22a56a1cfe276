"""The pipeline of this process, built once from the environment on first use.

Built lazily so that importing the app (every Lambda cold start) stays cheap.
"""

from __future__ import annotations

import os
from dataclasses import replace
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
# Tag writes are never retried by botocore: a retry would re-send a tag set read before it,
# dropping a tag the user wrote meanwhile. The store retries them by reading again.
NO_RETRIES = {"mode": "standard", "total_max_attempts": 1}
# GetBucketLocation's answers that are not region names.
LOCATIONS = {"": "us-east-1", "EU": "eu-west-1"}


def store_credentials(settings: config.Settings) -> dict[str, str]:
    """The store's own keys, from ``OMI_STORE_SECRET`` (a store outside AWS, such as OOS,
    whose keys the function's role cannot be); none: boto3's standard chain."""
    if not settings.store_secret:
        return {}
    # The same secret layout and cached read (Powertools Parameters) as the signing keys.
    keys = signing.load_keys(settings.store_secret, "", settings.temporary_credentials_lifetime)
    return {"aws_access_key_id": keys.access_key, "aws_secret_access_key": keys.secret_key}


def s3_client(
    settings: config.Settings, region: str | None = None, retries: dict[str, Any] = RETRIES
) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=region or settings.region,
        config=Config(signature_version="s3v4", retries=retries),
        **store_credentials(settings),
    )


def configured_principal() -> str:
    """Who this process is in S3 events (``userIdentity.principalId``) when it is told
    (``OMI_OWN_PRINCIPAL``: a local run knows its key), so that the echoes of its own
    tag writes cost nothing; "" otherwise."""
    return os.environ.get("OMI_OWN_PRINCIPAL", "")


def principal_from_sts() -> str:
    """On Lambda, the role session STS names (``AWS:<role id>:<function>``); "" elsewhere
    or when STS cannot tell, and echoes are then recognised by one read. Asked at the
    first tagging event that names a writer, so an invocation that sees none (the
    scheduled ones, uploads) makes no STS call."""
    if not os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        return ""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return "AWS:" + boto3.client("sts").get_caller_identity()["UserId"]
    except (BotoCoreError, ClientError):
        return ""


def bucket_region(client: Any, bucket: str) -> str:
    """The bucket's region as the store tells it (GetBucketLocation)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        found = client.get_bucket_location(Bucket=bucket).get("LocationConstraint") or ""
    except (ClientError, BotoCoreError) as error:
        raise RuntimeError(
            f"cannot tell the region of bucket {bucket}: none is configured and the store "
            f"did not say ({error}) - set OMI_REGION or AWS_DEFAULT_REGION"
        ) from None
    return LOCATIONS.get(found, found)


def with_region(settings: config.Settings, client: Any | None = None) -> config.Settings:
    """``settings`` with the bucket's region: configured, or else asked of the store once."""
    if settings.region:
        return settings
    # Any region can ask; us-east-1 is the one every S3 endpoint answers for.
    asking = client or s3_client(settings, region="us-east-1")
    return replace(settings, region=bucket_region(asking, settings.bucket))


def build_pipeline(
    settings: config.Settings, client: Any | None = None, tag_client: Any | None = None
) -> Pipeline:
    """The pipeline on ``client`` (tags written with ``tag_client``, which must not retry),
    or on clients made from the settings."""
    settings = with_region(settings, client)
    if client is None:
        client, tag_client = s3_client(settings), s3_client(settings, retries=NO_RETRIES)
    store = Store(client, settings, tag_client)

    def keys() -> signing.SigningKeys:
        return signing.load_keys(
            settings.signing_secret, settings.region, settings.temporary_credentials_lifetime
        )

    return Pipeline(store, settings, keys)


@cache
def pipeline() -> Pipeline:
    built = build_pipeline(config.load())
    return replace(built, own_principal=configured_principal(), find_principal=principal_from_sts)
