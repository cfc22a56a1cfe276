"""Pre-signed URLs: identical to botocore's, verified independently, stored in tags."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from unittest import mock

import boto3
import pytest
from botocore.config import Config

from chalicelib import signing
from tests import sigv4

NOW = datetime(2026, 11, 30, 18, 40, 0, tzinfo=UTC)
KEYS = signing.SigningKeys("AKIAEXAMPLEKEY123456", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
TEMP = signing.SigningKeys("ASIATEMPKEY", "secret", session_token="T" * 700)


def botocore_url(endpoint_url, region, bucket, key, addressing="path", token=None):
    client = boto3.client(
        "s3",
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=KEYS.access_key,
        aws_secret_access_key=KEYS.secret_key,
        aws_session_token=token,
        config=Config(signature_version="s3v4", s3={"addressing_style": addressing}),
    )
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        return client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=604800
        )


@pytest.mark.parametrize(
    "key",
    ["web-server/sda1.qcow2.gz", "my disks/a+b (1)/sda1.raw", "caf\u00e9/\u00fcber~x.qcow2"],
    ids=["plain", "space-plus-parens", "non-ascii"],
)
@pytest.mark.parametrize(
    ("endpoint", "style"),
    [
        ("https://oos.eu-west-2.outscale.com", "path"),
        ("http://127.0.0.1:5000", "path"),
        (None, "virtual"),
    ],
    ids=["oos", "local-port", "aws-virtual"],
)
def test_same_url_as_botocore(key, endpoint, style):
    public = signing.PublicEndpoint(endpoint, "eu-west-2", style)
    ours = signing.presign_get(KEYS, public, "snapshots", key, NOW, 604800)
    theirs = botocore_url(endpoint, "eu-west-2", "snapshots", key, style)
    assert ours == theirs
    sigv4.verify(ours, KEYS.secret_key, NOW)


def test_independent_verifier_rejects_tampering():
    public = signing.PublicEndpoint("https://oos.eu-west-2.outscale.com", "eu-west-2")
    url = signing.presign_get(KEYS, public, "b", "web/sda1.raw", NOW, 3600)
    with pytest.raises(AssertionError, match="signature"):
        sigv4.verify(url.replace("sda1", "sda2"), KEYS.secret_key)
    with pytest.raises(AssertionError, match="signature"):
        sigv4.verify(url, "another secret")
    with pytest.raises(AssertionError, match="expired"):
        sigv4.verify(url, KEYS.secret_key, NOW + timedelta(hours=2))


def test_tags_round_trip_and_are_tag_safe():
    public = signing.PublicEndpoint("https://oos.eu-west-2.outscale.com", "eu-west-2")
    url = signing.presign_get(KEYS, public, "b", "manifests/web-server.json", NOW, 604800)
    tags = signing.url_to_tags(url, NOW + timedelta(days=7))
    assert tags["omi:url"] == "https://oos.eu-west-2.outscale.com/b/manifests/web-server.json"
    assert tags["omi:expires"] == "2026-12-07T18:40:00Z"
    assert tags["X-Amz-Credential"] == "AKIAEXAMPLEKEY123456/20261130/eu-west-2/s3/aws4_request"
    assert list(tags)[2:] == [
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
    ]
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _.:/=+-@")
    assert all(set(value) <= allowed and len(value) <= 256 for value in tags.values())
    assert signing.url_from_tags(tags) == url


def test_short_session_token_is_split_and_rebuilt():
    keys = signing.SigningKeys("ASIAKEY", "secret", session_token="Ab+/=" * 60)  # 300 chars
    public = signing.PublicEndpoint("http://127.0.0.1:5000", "eu-west-2")
    url = signing.presign_get(keys, public, "b", "manifests/x.json", NOW, 3600)
    tags = signing.url_to_tags(url, NOW)
    assert len(tags["X-Amz-Security-Token"]) == 256
    assert len(tags["X-Amz-Security-Token.2"]) == 44
    assert signing.url_from_tags(tags) == url
    sigv4.verify(url, "secret")


def test_long_session_token_does_not_fit():
    public = signing.PublicEndpoint("http://127.0.0.1:5000", "eu-west-2")
    url = signing.presign_get(TEMP, public, "b", "manifests/x.json", NOW, 3600)
    with pytest.raises(signing.UrlDoesNotFit):
        signing.url_to_tags(url, NOW)


def test_expiry_is_the_earlier_of_lifetime_and_credentials():
    assert signing.expiry(NOW, 604800, KEYS) == (NOW + timedelta(days=7), None)
    dying = signing.SigningKeys("A", "s", "tok", expires_at=NOW + timedelta(hours=1))
    when, reason = signing.expiry(NOW, 604800, dying)
    assert when == NOW + timedelta(hours=1)
    assert "temporary credentials" in reason


def test_url_from_tags_without_url():
    assert signing.url_from_tags({"Name": "x"}) is None
