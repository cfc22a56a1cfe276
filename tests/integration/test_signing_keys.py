"""Where signing keys come from: the signing secret, or this process's credentials."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import boto3
from moto import mock_aws

from chalicelib import signing


@mock_aws
def test_long_term_keys_from_the_signing_secret(monkeypatch):
    monkeypatch.setenv("AWS_SESSION_TOKEN", "a-lambda-session-token")
    boto3.client("secretsmanager", region_name="eu-west-2").create_secret(
        Name="omi-manifest/signer",
        SecretString=json.dumps(
            {"aws_access_key_id": "AKIASIGNER", "aws_secret_access_key": "signer-secret"}
        ),
    )
    keys = signing.load_keys("omi-manifest/signer", "eu-west-2", 3600)
    assert keys == signing.SigningKeys("AKIASIGNER", "signer-secret")
    assert not keys.temporary


def test_temporary_credentials_are_given_a_short_life(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ASIATEMP")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "temp-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token")
    before = datetime.now(UTC)
    keys = signing.load_keys(None, "eu-west-2", 3600)
    assert keys.temporary and keys.session_token == "token"
    assert before + timedelta(seconds=3590) < keys.expires_at < before + timedelta(seconds=3700)
    expires_at, reason = signing.expiry(before, 604800, keys)
    assert expires_at == keys.expires_at and "temporary credentials" in reason


def test_long_term_environment_keys_sign_for_seven_days(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIALONG")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "long-secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    keys = signing.load_keys(None, "eu-west-2", 3600)
    assert keys == signing.SigningKeys("AKIALONG", "long-secret")
