"""``run`` against a store, as the systemd unit runs it on an OUTSCALE VM: the URLs are
signed by the restricted identity from its keys file, never with the store's own keys
unless told to. moto's server stands in for OOS (it checks no signature: tests/sigv4.py
does)."""

from __future__ import annotations

import json
import subprocess
from urllib.request import urlopen

from chalicelib import signing
from chalicelib.local.samples import qcow2_image
from tests import sigv4
from tests.cli.conftest import BIN, CREDENTIALS, command_env

GIB = 1 << 30
RESTRICTED_KEY = "AKIARESTRICTEDSIGNER"
RESTRICTED_SECRET = "restricted-signer-secret"


def keys_file(folder, mode: int = 0o600):
    """The unit's EnvironmentFile, as docs/outscale.md has the user write it."""
    path = folder / "env"
    path.write_text(
        f"OMI_SIGNING_ACCESS_KEY_ID={RESTRICTED_KEY}\n"
        f"OMI_SIGNING_SECRET_ACCESS_KEY={RESTRICTED_SECRET}\n"
    )
    path.chmod(mode)
    return path


def as_the_unit_runs(path, store) -> dict[str, str]:
    """systemd's environment for the service: the file's variables and OMI_ENV_FILE."""
    read = dict(line.split("=", 1) for line in path.read_text().splitlines())
    env = command_env(**read, OMI_ENV_FILE=str(path), OMI_BUCKET=store.bucket)
    env.pop("OMI_SIGN_WITH_STORE_KEYS", None)
    return env | {"OMI_ENDPOINT_URL": store.url}


def run_once(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "omi-manifest"), "run", "--once"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


def test_urls_are_signed_by_the_restricted_identity_from_the_keys_file(store, tmp_path):
    store.put_object(Bucket=store.bucket, Key="web-server/sda1.qcow2", Body=qcow2_image(GIB))
    done = run_once(as_the_unit_runs(keys_file(tmp_path), store))
    assert done.returncode == 0, done.stdout + done.stderr
    tags = store.get_object_tagging(Bucket=store.bucket, Key="manifests/web-server.json")
    url = signing.url_from_tags({t["Key"]: t["Value"] for t in tags["TagSet"]})
    assert sigv4.verify(url, RESTRICTED_SECRET)["access_key"] == RESTRICTED_KEY
    with urlopen(url, timeout=30) as response:
        manifest = json.load(response)
    (snapshot,) = manifest["Image"]["Snapshots"]
    snapshot_url = snapshot["PreSignedUrl"]
    assert sigv4.verify(snapshot_url, RESTRICTED_SECRET)["access_key"] == RESTRICTED_KEY
    assert CREDENTIALS["AWS_ACCESS_KEY_ID"] not in url + snapshot_url


def test_a_keys_file_others_can_read_stops_the_service_in_one_line(store, tmp_path):
    path = keys_file(tmp_path, mode=0o644)
    done = run_once(as_the_unit_runs(path, store))
    assert done.returncode == 1
    assert done.stderr == (
        f"omi-manifest: {path} holds keys but other users can read or change it "
        f"(mode 0644) - chmod 600 {path}\n"
    )


def test_without_a_signing_identity_it_refuses_the_store_keys_unless_told(store):
    store.put_object(Bucket=store.bucket, Key="web-server/sda1.qcow2", Body=qcow2_image(GIB))
    env = command_env(OMI_BUCKET=store.bucket, OMI_ENDPOINT_URL=store.url)
    env.pop("OMI_SIGN_WITH_STORE_KEYS", None)
    refused = run_once(env)
    assert refused.returncode == 1
    assert refused.stderr == (
        "omi-manifest: no signing identity - set OMI_SIGNING_ACCESS_KEY_ID and "
        "OMI_SIGNING_SECRET_ACCESS_KEY to keys that can only read the bucket, or "
        "OMI_SIGN_WITH_STORE_KEYS=true to sign with the store's own keys\n"
    )
    assert "Contents" not in store.list_objects_v2(Bucket=store.bucket, Prefix="manifests/")
    told = run_once(env | {"OMI_SIGN_WITH_STORE_KEYS": "true"})
    assert told.returncode == 0, told.stdout + told.stderr
    tags = store.get_object_tagging(Bucket=store.bucket, Key="manifests/web-server.json")
    url = signing.url_from_tags({t["Key"]: t["Value"] for t in tags["TagSet"]})
    assert sigv4.verify(url, CREDENTIALS["AWS_SECRET_ACCESS_KEY"])["access_key"] == "testing"
