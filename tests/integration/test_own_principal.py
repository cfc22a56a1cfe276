"""On Lambda the pipeline tells its own echoes by the principal S3 names in the event,
which STS gives; it asks STS once, at the first tagging event that names a writer, so
invocations that see none (uploads, the scheduled functions) make no STS call."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from chalicelib import runtime
from chalicelib.notifications import ObjectChange

REGION = "eu-west-2"


@pytest.fixture
def on_lambda(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "OMI_BUCKET": "snapshots",
        "OMI_REGION": REGION,
        "AWS_LAMBDA_FUNCTION_NAME": "omi-manifest-dev-on_object_event",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("OMI_OWN_PRINCIPAL", raising=False)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    runtime.pipeline.cache_clear()
    with mock_aws():
        yield
    runtime.pipeline.cache_clear()


def test_sts_is_asked_once_at_the_first_echo_and_own_echoes_cost_no_processing(
    on_lambda, monkeypatch
):
    asked: list[str] = []
    monkeypatch.setattr(
        runtime,
        "principal_from_sts",
        lambda real=runtime.principal_from_sts: asked.append("sts") or real(),
    )
    pipeline = runtime.pipeline()
    assert pipeline.own_principal == "" and asked == []  # building it asks nothing
    refreshed: list[str] = []
    monkeypatch.setattr(pipeline, "refresh", lambda key, hint=None: refreshed.append(key))
    me = "AWS:" + boto3.client("sts").get_caller_identity()["UserId"]

    pipeline.handle([ObjectChange("snapshots", "web/sda1.qcow2", "ObjectCreated:Put")])
    assert asked == []  # an upload's event names no need for it
    echo = ObjectChange("snapshots", "web/sda1.qcow2", "ObjectTagging:Put", principal=me)
    pipeline.handle([echo, echo])
    user = ObjectChange(
        "snapshots", "web/sda1.qcow2", "ObjectTagging:Put", principal="AWS:AIDAUSER"
    )
    pipeline.handle([user])
    assert asked == ["sts"]
    assert pipeline.own_principal == me
    assert refreshed == ["web/sda1.qcow2", "web/sda1.qcow2"]  # the upload, the user's tags


def test_no_sts_call_off_lambda(on_lambda, monkeypatch):
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME")
    assert runtime.principal_from_sts() == ""
    monkeypatch.setenv("OMI_OWN_PRINCIPAL", "AWS:AKIALOCAL")
    assert runtime.configured_principal() == "AWS:AKIALOCAL"
