"""SigV4 pre-signed GET URLs, their expiry, and their storage in tags.

The signer is pure (keys, time and names in, URL out) so that a controlled
clock gives reproducible URLs; tests check it byte for byte against
botocore's and verify every signature with an implementation of their own.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote, urlsplit

from .convention import MAX_TAGS, TAG_VALUE_LIMIT

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "s3"
TOKEN_TAG = "X-Amz-Security-Token"
URL_TAG = "omi:url"
EXPIRES_TAG = "omi:expires"
PARAMS_BEFORE_TOKEN = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
)
SIGNATURE = "X-Amz-Signature"
DNS_BUCKET = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
# A host with no AWS (an OUTSCALE VM) gives the restricted signing identity's keys here.
SIGNING_KEY_VARIABLES = ("OMI_SIGNING_ACCESS_KEY_ID", "OMI_SIGNING_SECRET_ACCESS_KEY")
# "true": sign with the keys the process reaches the store with (the owner's), knowingly.
STORE_KEYS_OPT_IN = "OMI_SIGN_WITH_STORE_KEYS"
# The file the keys came from (the systemd unit's EnvironmentFile), to check its mode.
ENV_FILE_VARIABLE = "OMI_ENV_FILE"


class SigningSetupError(Exception):
    """Signing keys set up wrongly: the message is the one line the user reads."""


@dataclass(frozen=True)
class SigningKeys:
    """Credentials that sign URLs; temporary ones carry a token and die with it."""

    access_key: str
    secret_key: str
    session_token: str | None = None
    expires_at: datetime | None = None

    @property
    def temporary(self) -> bool:
        return self.session_token is not None


@dataclass(frozen=True)
class PublicEndpoint:
    """Where signed URLs point: AWS S3 or an S3-compatible store such as OUTSCALE OOS."""

    url: str | None  # None: AWS S3 in ``region``
    region: str
    addressing_style: str = "auto"

    def object_url(self, bucket: str, key: str) -> str:
        quoted = quote(key, safe="/~")
        if self.url is None:
            if self.addressing_style != "path" and DNS_BUCKET.fullmatch(bucket):
                return f"https://{bucket}.s3.{self.region}.amazonaws.com/{quoted}"
            return f"https://s3.{self.region}.amazonaws.com/{bucket}/{quoted}"
        base = self.url.rstrip("/")
        if self.addressing_style == "virtual":
            scheme, _, host = base.partition("://")
            return f"{scheme}://{bucket}.{host}/{quoted}"
        return f"{base}/{bucket}/{quoted}"


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def _encode(value: str) -> str:
    return quote(value, safe="-_.~")


def presign_get(
    keys: SigningKeys,
    endpoint: PublicEndpoint,
    bucket: str,
    key: str,
    now: datetime,
    expires_in: int,
) -> str:
    """A SigV4 query-string URL for ``GET`` of exactly ``bucket``/``key``."""
    url = endpoint.object_url(bucket, key)
    parts = urlsplit(url)
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    scope = f"{stamp[:8]}/{endpoint.region}/{SERVICE}/aws4_request"
    params = {
        "X-Amz-Algorithm": ALGORITHM,
        "X-Amz-Credential": f"{keys.access_key}/{scope}",
        "X-Amz-Date": stamp,
        "X-Amz-Expires": str(expires_in),
        "X-Amz-SignedHeaders": "host",
    }
    if keys.session_token:
        params[TOKEN_TAG] = keys.session_token
    query = "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(params.items()))
    canonical = f"GET\n{parts.path}\n{query}\nhost:{parts.netloc}\n\nhost\nUNSIGNED-PAYLOAD"
    to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    signing_key = _hmac(("AWS4" + keys.secret_key).encode(), stamp[:8])
    for part in (endpoint.region, SERVICE, "aws4_request"):
        signing_key = _hmac(signing_key, part)
    params[SIGNATURE] = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
    return url + "?" + "&".join(f"{k}={_encode(v)}" for k, v in params.items())


def expiry(now: datetime, lifetime: int, keys: SigningKeys) -> tuple[datetime, str | None]:
    """When the URLs stop working, and why it is earlier than ``lifetime`` if it is."""
    wanted = now + timedelta(seconds=lifetime)
    if keys.expires_at is not None and keys.expires_at < wanted:
        return keys.expires_at, (
            "signing with temporary credentials: the URLs die with them before the configured "
            "lifetime - configure the signing secret with long-term keys"
        )
    return wanted, None


def format_expiry(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class UrlDoesNotFit(Exception):
    """The URL cannot be stored in the tags an object may carry.

    It carries no part of the URL: a logged traceback must never show a signature or token.
    """


def url_to_tags(url: str, expires_at: datetime, room: int = MAX_TAGS) -> dict[str, str]:
    """Split a pre-signed URL into tag-safe tags (spec section 4)."""
    base, _, query = url.partition("?")
    params = dict(
        (unquote(k), unquote(v)) for k, v in (item.split("=", 1) for item in query.split("&"))
    )
    tags = {URL_TAG: base, EXPIRES_TAG: format_expiry(expires_at)}
    tags |= {name: params[name] for name in PARAMS_BEFORE_TOKEN}
    token = params.get(TOKEN_TAG)
    if token:
        pieces = [token[i : i + TAG_VALUE_LIMIT] for i in range(0, len(token), TAG_VALUE_LIMIT)]
        for index, piece in enumerate(pieces, start=1):
            tags[TOKEN_TAG if index == 1 else f"{TOKEN_TAG}.{index}"] = piece
    tags[SIGNATURE] = params[SIGNATURE]
    if len(tags) > room or any(len(v) > TAG_VALUE_LIMIT for v in tags.values()):
        raise UrlDoesNotFit(f"{len(tags)} tags needed, room for {room}") from None
    return tags


def is_url_tag(name: str) -> bool:
    """A tag the URL is stored in (as opposed to one of the user's)."""
    return name in (URL_TAG, EXPIRES_TAG) or name.startswith("X-Amz-")


def url_from_tags(tags: Mapping[str, str]) -> str | None:
    """The URL rebuilt from a manifest's tags, or None when they do not hold one."""
    if URL_TAG not in tags or SIGNATURE not in tags:
        return None
    params = [(name, tags[name]) for name in PARAMS_BEFORE_TOKEN]
    if TOKEN_TAG in tags:
        pieces = [tags[TOKEN_TAG]]
        index = 2
        while f"{TOKEN_TAG}.{index}" in tags:
            pieces.append(tags[f"{TOKEN_TAG}.{index}"])
            index += 1
        params.append((TOKEN_TAG, "".join(pieces)))
    params.append((SIGNATURE, tags[SIGNATURE]))
    return tags[URL_TAG] + "?" + "&".join(f"{k}={_encode(v)}" for k, v in params)


def environment_keys(env: Mapping[str, str]) -> SigningKeys | None:
    """The signing identity's long-term keys from ``OMI_SIGNING_ACCESS_KEY_ID`` and
    ``OMI_SIGNING_SECRET_ACCESS_KEY``; None when neither is set."""
    access_key, secret_key = (env.get(name, "") for name in SIGNING_KEY_VARIABLES)
    if not access_key and not secret_key:
        return None
    if not (access_key and secret_key):
        given, missing = SIGNING_KEY_VARIABLES if access_key else SIGNING_KEY_VARIABLES[::-1]
        raise SigningSetupError(
            f"{given} is set but {missing} is not - set both (the signing identity's keys)"
        )
    return SigningKeys(access_key, secret_key)


def check_keys_file(path: str) -> None:
    """Refuse a file of keys that users other than its owner may read or change."""
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        raise SigningSetupError(
            f"{path} holds keys but other users can read or change it (mode {mode:04o}) "
            f"- chmod 600 {path}"
        )


def check_host_signing(env: Mapping[str, str]) -> None:
    """Before a host signs on its own (``run`` against a store): its keys file is
    owner-only, and its URLs are signed by a signing identity, never with the store's
    own keys unless ``OMI_SIGN_WITH_STORE_KEYS=true`` says so."""
    if env.get(ENV_FILE_VARIABLE):
        check_keys_file(env[ENV_FILE_VARIABLE])
    if env.get("OMI_SIGNING_SECRET") or environment_keys(env) is not None:
        return
    if env.get(STORE_KEYS_OPT_IN) != "true":
        raise SigningSetupError(
            "no signing identity - set OMI_SIGNING_ACCESS_KEY_ID and "
            "OMI_SIGNING_SECRET_ACCESS_KEY to keys that can only read the bucket, or "
            f"{STORE_KEYS_OPT_IN}=true to sign with the store's own keys"
        )


def load_keys(
    secret_name: str | None,
    region: str,
    lifetime_of_temporary: int,
    env: Mapping[str, str] = os.environ,
) -> SigningKeys:
    """Long-term keys from the signing secret, else from ``OMI_SIGNING_ACCESS_KEY_ID`` and
    ``OMI_SIGNING_SECRET_ACCESS_KEY``, else this process's own credentials.

    The secret holds ``{"aws_access_key_id": …, "aws_secret_access_key": …}`` and is
    read through Powertools Parameters, which caches it between invocations.
    """
    if secret_name:
        from aws_lambda_powertools.utilities import parameters

        secret = parameters.get_secret(secret_name, transform="json", max_age=300)
        return SigningKeys(secret["aws_access_key_id"], secret["aws_secret_access_key"])
    from_environment = environment_keys(env)
    if from_environment is not None:
        return from_environment
    import boto3

    credentials = boto3.Session(region_name=region).get_credentials()
    if credentials is None:
        raise RuntimeError("no AWS credentials to sign with - configure the signing secret")
    frozen = credentials.get_frozen_credentials()
    expires_at = getattr(credentials, "_expiry_time", None)
    if frozen.token and expires_at is None:
        # Environment credentials say nothing of their end: assume a short life.
        expires_at = datetime.now(UTC) + timedelta(seconds=lifetime_of_temporary)
    return SigningKeys(frozen.access_key, frozen.secret_key, frozen.token, expires_at)
