"""A store outside AWS (OOS) is reached with its own keys, read from a secret."""

from __future__ import annotations

import json

import boto3
from moto import mock_aws

from chalicelib import runtime
from chalicelib.config import Settings
from tests.harness import BUCKET, REGION, create_bucket


def credential_of_requests(client) -> list[str]:
    seen: list[str] = []

    def record(request, **_):
        seen.append(request.headers["Authorization"].decode().split("Credential=")[1][:9])

    client.meta.events.register("before-send.s3.*", record)
    client.list_objects_v2(Bucket=BUCKET)
    return seen


@mock_aws
def test_the_store_keys_come_from_the_store_secret(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAROLE0")
    boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="omi-manifest/oos/store",
        SecretString=json.dumps(
            {"aws_access_key_id": "AKIASTORE", "aws_secret_access_key": "store-secret"}
        ),
    )
    create_bucket(boto3.client("s3", region_name=REGION))
    settings = Settings(bucket=BUCKET, region=REGION, store_secret="omi-manifest/oos/store")
    assert credential_of_requests(runtime.s3_client(settings)) == ["AKIASTORE"]
    without = Settings(bucket=BUCKET, region=REGION)
    assert credential_of_requests(runtime.s3_client(without)) == ["AKIAROLE0"]
