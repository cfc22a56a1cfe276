"""Which keys a host with no AWS signs with, and what it refuses: no S3, no AWS."""

from __future__ import annotations

import pytest

from chalicelib import signing

RESTRICTED = {
    "OMI_SIGNING_ACCESS_KEY_ID": "AKIARESTRICTED",
    "OMI_SIGNING_SECRET_ACCESS_KEY": "restricted-secret",
}
STORE_KEYS = {"AWS_ACCESS_KEY_ID": "AKIAOWNER", "AWS_SECRET_ACCESS_KEY": "owner-secret"}


def test_the_environment_keys_sign_for_seven_days_whatever_the_process_runs_with(monkeypatch):
    for name, value in STORE_KEYS.items():
        monkeypatch.setenv(name, value)
    keys = signing.load_keys(None, "eu-west-2", 3600, env=RESTRICTED)
    assert keys == signing.SigningKeys("AKIARESTRICTED", "restricted-secret")
    assert not keys.temporary


@pytest.mark.parametrize(
    ("given", "said"),
    [
        (
            {"OMI_SIGNING_ACCESS_KEY_ID": "AKIARESTRICTED"},
            "OMI_SIGNING_ACCESS_KEY_ID is set but OMI_SIGNING_SECRET_ACCESS_KEY is not - "
            "set both (the signing identity's keys)",
        ),
        (
            {"OMI_SIGNING_SECRET_ACCESS_KEY": "restricted-secret"},
            "OMI_SIGNING_SECRET_ACCESS_KEY is set but OMI_SIGNING_ACCESS_KEY_ID is not - "
            "set both (the signing identity's keys)",
        ),
    ],
)
def test_half_a_key_pair_is_refused_never_completed_with_the_store_keys(given, said):
    with pytest.raises(signing.SigningSetupError) as refused:
        signing.load_keys(None, "eu-west-2", 3600, env=STORE_KEYS | given)
    assert str(refused.value) == said


def test_a_host_without_a_signing_identity_is_refused():
    with pytest.raises(signing.SigningSetupError) as refused:
        signing.check_host_signing(STORE_KEYS)
    assert str(refused.value) == (
        "no signing identity - set OMI_SIGNING_ACCESS_KEY_ID and "
        "OMI_SIGNING_SECRET_ACCESS_KEY to keys that can only read the bucket, or "
        "OMI_SIGN_WITH_STORE_KEYS=true to sign with the store's own keys"
    )


@pytest.mark.parametrize(
    "enough",
    [
        RESTRICTED,
        {"OMI_SIGNING_SECRET": "omi-manifest/oos/signer"},
        {"OMI_SIGN_WITH_STORE_KEYS": "true"},
    ],
)
def test_a_signing_identity_or_the_explicit_opt_in_is_enough(enough):
    signing.check_host_signing(STORE_KEYS | enough)


def test_the_opt_in_must_say_true():
    with pytest.raises(signing.SigningSetupError):
        signing.check_host_signing(STORE_KEYS | {"OMI_SIGN_WITH_STORE_KEYS": "1"})


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_an_owner_only_keys_file_is_accepted(tmp_path, mode):
    keys_file = tmp_path / "env"
    keys_file.write_text("OMI_SIGNING_ACCESS_KEY_ID=AKIARESTRICTED\n")
    keys_file.chmod(mode)
    signing.check_host_signing(RESTRICTED | {"OMI_ENV_FILE": str(keys_file)})


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660])
def test_a_keys_file_others_can_read_or_change_is_refused(tmp_path, mode):
    keys_file = tmp_path / "env"
    keys_file.write_text("OMI_SIGNING_ACCESS_KEY_ID=AKIARESTRICTED\n")
    keys_file.chmod(mode)
    with pytest.raises(signing.SigningSetupError) as refused:
        signing.check_host_signing(RESTRICTED | {"OMI_ENV_FILE": str(keys_file)})
    assert str(refused.value) == (
        f"{keys_file} holds keys but other users can read or change it (mode {mode:04o}) "
        f"- chmod 600 {keys_file}"
    )
