"""``omi-manifest import NAME``: the two mistakes a user can make, each one line."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from chalicelib import cli
from tests.integration.test_interleavings import Scene

REGION = "eu-west-2"


@pytest.fixture
def bucket(monkeypatch):
    monkeypatch.setenv("OMI_REGION", REGION)
    monkeypatch.delenv("OMI_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("OMI_IMPORT", raising=False)
    with mock_aws():
        yield Scene(boto3.client("s3", region_name=REGION))


def import_command(bucket: Scene, capsys) -> tuple[int, str]:
    code = cli.main(["import", "web", "--bucket", bucket.bucket])
    return code, capsys.readouterr().err


def test_import_of_an_omi_not_published_says_there_is_nothing_to_import(bucket, samples, capsys):
    assert import_command(bucket, capsys) == (
        1,
        "omi-manifest: no published manifest for web - nothing to import\n",
    )


def test_import_where_it_is_off_says_how_to_turn_it_on(bucket, samples, capsys):
    bucket.put("web/sda1.qcow2", samples["qcow2"])
    worker = bucket.worker()
    worker.deliver("web/sda1.qcow2")
    assert bucket.status("web/sda1.qcow2") == "published: manifests/web.json"
    assert import_command(bucket, capsys) == (
        1,
        "omi-manifest: import is off for web - set OMI_IMPORT=true, or tag omi:import=true "
        "on one of its snapshots\n",
    )
