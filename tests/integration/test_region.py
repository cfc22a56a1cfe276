"""The region URLs are signed for: the standard AWS chain, else the store's answer."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from moto import mock_aws

from chalicelib import config, runtime, signing
from chalicelib.notifications import ObjectChange

SECRET = "region-test-secret"
REGION_VARIABLES = ("OMI_REGION", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE")


@pytest.fixture
def no_region(tmp_path, monkeypatch):
    """An environment that names no region, with an AWS config file the test may fill."""
    for name in REGION_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name in ("OMI_ENDPOINT_URL", "OMI_PUBLIC_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    config_file = tmp_path / "aws-config"
    config_file.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config_file))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAREGIONTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("OMI_BUCKET", "regional")
    return config_file


def scopes_after_publishing(sample: Path) -> set[str]:
    """Publish one OMI through the pipeline built from the environment; every region its
    URLs are signed for, in the manifest and in the manifest's URL tags."""
    pipeline = runtime.build_pipeline(config.load())
    s3 = pipeline.store.client
    s3.put_object(Bucket="regional", Key="web/sda1.qcow2", Body=sample.read_bytes())
    pipeline.handle([ObjectChange("regional", "web/sda1.qcow2", "ObjectCreated:Put")])
    body = s3.get_object(Bucket="regional", Key="manifests/web.json")["Body"].read()
    tagging = s3.get_object_tagging(Bucket="regional", Key="manifests/web.json")["TagSet"]
    tags = {tag["Key"]: tag["Value"] for tag in tagging}
    urls = [s["PreSignedUrl"] for s in json.loads(body)["Image"]["Snapshots"]]
    urls.append(signing.url_from_tags(tags))
    credentials = [parse_qs(urlsplit(url).query)["X-Amz-Credential"][0] for url in urls]
    return {credential.split("/")[2] for credential in [*credentials, tags["X-Amz-Credential"]]}


@mock_aws
def test_aws_default_region_alone_signs_for_us_east_1(no_region, monkeypatch, samples):
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="regional")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert scopes_after_publishing(samples["qcow2"]) == {"us-east-1"}


@mock_aws
def test_no_region_configured_asks_the_store(no_region, samples):
    boto3.client("s3", region_name="ap-northeast-1").create_bucket(
        Bucket="regional", CreateBucketConfiguration={"LocationConstraint": "ap-northeast-1"}
    )
    assert scopes_after_publishing(samples["qcow2"]) == {"ap-northeast-1"}


@mock_aws
def test_a_bucket_with_no_location_constraint_is_in_us_east_1(no_region):
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="regional")
    assert runtime.build_pipeline(config.load()).settings.region == "us-east-1"


@mock_aws
def test_no_region_and_no_bucket_says_what_to_set(no_region):
    with pytest.raises(RuntimeError) as refused:
        runtime.build_pipeline(config.load())
    message = str(refused.value)
    assert message.startswith("cannot tell the region of bucket regional: none is configured")
    assert message.endswith("- set OMI_REGION or AWS_DEFAULT_REGION")


def test_the_standard_order(no_region):
    assert config.configured_region({"AWS_CONFIG_FILE": str(no_region)}) is None
    chain = {
        "OMI_REGION": "eu-west-2",
        "AWS_REGION": "us-east-2",
        "AWS_DEFAULT_REGION": "ap-northeast-1",
        "AWS_CONFIG_FILE": str(no_region),
    }
    assert config.configured_region(chain) == "eu-west-2"
    del chain["OMI_REGION"]
    assert config.configured_region(chain) == "us-east-2"
    del chain["AWS_REGION"]
    assert config.configured_region(chain) == "ap-northeast-1"


def test_the_profile_region(no_region):
    no_region.write_text(
        "[default]\nregion = us-east-2\n[profile oos]\nregion = cloudgouv-eu-west-1\n"
    )
    env = {"AWS_CONFIG_FILE": str(no_region)}
    assert config.configured_region(env) == "us-east-2"
    assert config.configured_region(env | {"AWS_PROFILE": "oos"}) == "cloudgouv-eu-west-1"
    assert config.load(env | {"AWS_PROFILE": "oos"}).region == "cloudgouv-eu-west-1"
    assert config.configured_region(env | {"AWS_PROFILE": "missing"}) is None
