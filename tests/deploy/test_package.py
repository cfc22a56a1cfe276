"""``chalice package --pkg-format terraform``: what would be deployed, read back and checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).parents[2]
STAGE = "prod"
CONFIG = json.loads((PROJECT / ".chalice" / "config.json").read_text())
BUCKET = CONFIG["stages"][STAGE]["environment_variables"]["OMI_BUCKET"]
SECRET = CONFIG["stages"][STAGE]["environment_variables"]["OMI_SIGNING_SECRET"]


@pytest.fixture(scope="module")
def terraform(tmp_path_factory):
    out = tmp_path_factory.mktemp("package") / "out"
    env = os.environ | {"OMI_BUCKET": BUCKET, "AWS_DEFAULT_REGION": "eu-west-2"}
    subprocess.run(
        [
            str(Path(sys.executable).parent / "chalice"),
            "package",
            "--pkg-format",
            "terraform",
            "--stage",
            STAGE,
            str(out),
        ],
        cwd=PROJECT,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return json.loads((out / "chalice.tf.json").read_text())["resource"]


def test_two_functions_sized_for_raw_gz(terraform):
    functions = terraform["aws_lambda_function"]
    assert set(functions) == {"on_object_event", "renew_and_reconcile"}
    assert functions["on_object_event"]["memory_size"] == 1769
    assert all(f["timeout"] == 900 for f in functions.values())
    assert all(f["runtime"] == "python3.11" for f in functions.values())
    variables = functions["on_object_event"]["environment"]["variables"]
    assert variables["OMI_BUCKET"] == BUCKET and variables["OMI_SIGNING_SECRET"] == SECRET


def test_bucket_notification_events_and_filters(terraform):
    (notification,) = terraform["aws_s3_bucket_notification"].values()
    assert notification["bucket"] == BUCKET
    (target,) = notification["lambda_function"]
    assert target["events"] == ["s3:ObjectCreated:*", "s3:ObjectRemoved:*", "s3:ObjectTagging:*"]
    # No key filter: a file with any name becomes a snapshot through its omi: tags.
    assert "filter_prefix" not in target and "filter_suffix" not in target
    assert "on_object_event" in target["lambda_function_arn"]


def test_hourly_schedule(terraform):
    (rule,) = terraform["aws_cloudwatch_event_rule"].values()
    assert rule["schedule_expression"] == "rate(1 hour)"


def allowed_wildcard(resource: str) -> bool:
    return resource.startswith(f"arn:aws:s3:::{BUCKET}/") or (
        resource.endswith(":log-stream:*") and "/aws/lambda/omi-manifest-prod-" in resource
    )


def test_policy_is_least_privilege(terraform):
    for role in terraform["aws_iam_role_policy"].values():
        statements = json.loads(role["policy"])["Statement"]
        actions = {a for s in statements for a in s["Action"]}
        assert actions == {
            "s3:ListBucket",
            "s3:GetObject",
            "s3:GetObjectTagging",
            "s3:PutObjectTagging",
            "s3:PutObject",
            "s3:DeleteObject",
            "secretsmanager:GetSecretValue",
            "logs:CreateLogGroup",
            "logs:CreateLogStream",
            "logs:PutLogEvents",
        }
        for statement in statements:
            assert statement["Effect"] == "Allow"
            for resource in statement["Resource"]:
                assert "*" not in resource or allowed_wildcard(resource), resource
            if set(statement["Action"]) & {"s3:PutObject", "s3:DeleteObject"}:
                assert statement["Resource"] == [
                    f"arn:aws:s3:::{BUCKET}/manifests/*",
                    f"arn:aws:s3:::{BUCKET}/.omi-state/*",
                ]
            if "secretsmanager:GetSecretValue" in statement["Action"]:
                (secret,) = statement["Resource"]
                assert secret.endswith(f":secret:{SECRET}-??????")
