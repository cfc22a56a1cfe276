"""An independent SigV4 query-string verifier, written from AWS's documentation.

It shares no code with ``chalicelib.signing`` nor with botocore: a URL it accepts was
signed with ``secret_key`` for exactly that method, host, path and time window.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit


def _uri_encode(text: str) -> str:
    # AWS: encode every byte except unreserved characters A-Z a-z 0-9 - . _ ~
    unreserved = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
    return "".join(
        ch if ch in unreserved else "".join(f"%{b:02X}" for b in ch.encode()) for ch in text
    )


def verify(url: str, secret_key: str, now: datetime | None = None) -> dict[str, str]:
    """Raise AssertionError unless ``url`` is a valid, unexpired SigV4 GET URL."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    params = dict(pairs)
    assert params["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    signature = params.pop("X-Amz-Signature")
    access_key, date, region, service, terminator = params["X-Amz-Credential"].split("/")
    assert service == "s3" and terminator == "aws4_request"
    stamp = params["X-Amz-Date"]
    assert stamp.startswith(date)
    signed_at = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    lifetime = int(params["X-Amz-Expires"])
    assert 1 <= lifetime <= 604800
    if now is not None:
        assert signed_at <= now < signed_at + timedelta(seconds=lifetime), "URL expired"
    assert params["X-Amz-SignedHeaders"] == "host"
    canonical_query = "&".join(
        f"{_uri_encode(k)}={_uri_encode(v)}" for k, v in sorted(params.items())
    )
    # The path as sent; S3 does not normalise or re-encode it.
    canonical_request = "\n".join(
        ["GET", parts.path, canonical_query, f"host:{parts.netloc}", "", "host", "UNSIGNED-PAYLOAD"]
    )
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            stamp,
            f"{date}/{region}/s3/aws4_request",
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, signature), "signature does not match"
    return {"access_key": access_key, "region": region, "path": parts.path}
