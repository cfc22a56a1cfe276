"""Settings, read from the environment in one place.

``.chalice/config.json`` sets them per stage.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .convention import Defaults
from .inspection import Ceilings

MAX_URL_LIFETIME = 604800  # SigV4's limit: 7 days


@dataclass(frozen=True)
class Settings:
    bucket: str
    region: str | None = None  # the bucket's; None: not configured, runtime asks the store
    endpoint_url: str | None = None  # where the functions reach the bucket (None: AWS)
    public_endpoint_url: str | None = None  # what signed URLs name (None: AWS S3)
    addressing_style: str = "auto"  # path, virtual, or auto
    manifest_prefix: str = "manifests/"
    state_prefix: str = ".omi-state/"
    signing_secret: str | None = None  # Secrets Manager name holding long-term signing keys
    store_secret: str | None = None  # ... holding the store's own keys (a store outside AWS)
    url_lifetime: int = MAX_URL_LIFETIME
    renew_before: int = 48 * 3600
    temporary_credentials_lifetime: int = 3600
    pass_interval: int = 3600  # seconds between scheduled passes (or polls)
    tag_rounds: int = 24  # passes over which every object's tags are read once
    import_images: bool = False  # import every published OMI into OUTSCALE (spec section 9)
    outscale_secret: str | None = None  # Secrets Manager name holding the OUTSCALE API keys
    event_bus: str | None = None  # EventBridge bus the changes go to (None: log lines only)
    defaults: Defaults = field(default_factory=Defaults)
    ceilings: Ceilings = field(default_factory=Ceilings)

    @property
    def reserved_prefixes(self) -> tuple[str, ...]:
        return (self.manifest_prefix, self.state_prefix)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    return int(value) if value else default


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value not in ("", "true", "false"):
        raise ValueError(f"{name} must be true or false")
    return value == "true"


def configured_region(env: Mapping[str, str]) -> str | None:
    """The region configuration gives, in the order the AWS tools follow: ``OMI_REGION``,
    ``AWS_REGION``, ``AWS_DEFAULT_REGION``, then the profile's ``region``; None if none does."""
    for name in ("OMI_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"):
        if env.get(name):
            return env[name]
    return _profile_region(env)


def _profile_region(env: Mapping[str, str]) -> str | None:
    import botocore.session
    from botocore.exceptions import ProfileNotFound

    session = botocore.session.Session(profile=env.get("AWS_PROFILE") or None)
    if env.get("AWS_CONFIG_FILE"):
        session.set_config_variable("config_file", env["AWS_CONFIG_FILE"])
    try:
        return session.get_scoped_config().get("region") or None
    except ProfileNotFound:
        return None  # boto3 names the missing profile when it needs credentials


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``OMI_*`` environment variables; unset ones keep their defaults."""
    env = os.environ if env is None else env
    lifetime = _int(env, "OMI_URL_LIFETIME", MAX_URL_LIFETIME)
    if not 1 <= lifetime <= MAX_URL_LIFETIME:
        raise ValueError(f"OMI_URL_LIFETIME must be 1 to {MAX_URL_LIFETIME} seconds")
    defaults = Defaults(
        volume_type=env.get("OMI_DEFAULT_VOLUME_TYPE", "standard"),
        delete_on_termination=env.get("OMI_DEFAULT_DELETE_ON_TERMINATION", "true") == "true",
        architecture=env.get("OMI_DEFAULT_ARCHITECTURE", "x86_64"),
        product_types=tuple(env.get("OMI_DEFAULT_PRODUCT_TYPE", "0001").split()),
        description=env.get("OMI_DEFAULT_DESCRIPTION", ""),
        account=env.get("OMI_DEFAULT_ACCOUNT") or None,
    )
    return Settings(
        bucket=env.get("OMI_BUCKET", "omi-snapshots"),
        region=configured_region(env),
        endpoint_url=env.get("OMI_ENDPOINT_URL") or None,
        public_endpoint_url=env.get("OMI_PUBLIC_ENDPOINT_URL") or None,
        addressing_style=env.get("OMI_ADDRESSING_STYLE", "auto"),
        manifest_prefix=env.get("OMI_MANIFEST_PREFIX", "manifests/"),
        state_prefix=env.get("OMI_STATE_PREFIX", ".omi-state/"),
        signing_secret=env.get("OMI_SIGNING_SECRET") or None,
        store_secret=env.get("OMI_STORE_SECRET") or None,
        url_lifetime=lifetime,
        renew_before=_int(env, "OMI_RENEW_BEFORE", 48 * 3600),
        temporary_credentials_lifetime=_int(env, "OMI_TEMPORARY_CREDENTIALS_LIFETIME", 3600),
        pass_interval=max(1, _int(env, "OMI_PASS_INTERVAL", 3600)),
        tag_rounds=max(1, _int(env, "OMI_TAG_ROUNDS", 24)),
        import_images=_flag(env, "OMI_IMPORT"),
        outscale_secret=env.get("OMI_OUTSCALE_SECRET") or None,
        event_bus=env.get("OMI_EVENT_BUS") or None,
        defaults=defaults,
        ceilings=Ceilings(
            max_bytes=_int(env, "OMI_MAX_DECOMPRESSED_BYTES", Ceilings.max_bytes),
            max_seconds=float(env.get("OMI_MAX_SIZING_SECONDS") or Ceilings.max_seconds),
        ),
    )
