import boto3
import pytest
from moto import mock_aws

from chalicelib.config import Settings
from tests.harness import BUCKET, REGION, Harness, create_bucket

# The buckets of the interleaving tests (a Scene on moto, and on the embedded server),
# for every module here.
from tests.integration.test_interleavings import live, scene, served  # noqa: F401

PUBLIC = "https://oos.eu-west-2.outscale.com"


@pytest.fixture
def omi():
    """A bucket on moto with the pipeline attached, events delivered by the test."""
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        create_bucket(s3)
        yield Harness(s3, Settings(bucket=BUCKET, region=REGION, public_endpoint_url=PUBLIC))
