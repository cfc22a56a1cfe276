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


def package(stage: str, out: Path) -> dict:
    """The resources ``chalice package`` writes for ``stage``; the shell names no bucket:
    Chalice applies the stage's variables before it imports ``app.py``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMI_")}
    subprocess.run(
        [
            str(Path(sys.executable).parent / "chalice"),
            "package",
            "--pkg-format",
            "terraform",
            "--stage",
            stage,
            str(out),
        ],
        cwd=PROJECT,
        env=env | {"AWS_DEFAULT_REGION": "eu-west-2"},
        check=True,
        capture_output=True,
        timeout=600,
    )
    return json.loads((out / "chalice.tf.json").read_text())["resource"]


@pytest.fixture(scope="module")
def terraform(tmp_path_factory):
    return package(STAGE, tmp_path_factory.mktemp("package") / "out")


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


# --- a store without events (OUTSCALE OOS): the schedule polls it ----------------------

OOS = CONFIG["stages"]["oos"]["environment_variables"]


@pytest.fixture(scope="module")
def oos(tmp_path_factory):
    return package("oos", tmp_path_factory.mktemp("package-oos") / "out")


def test_oos_one_polling_function_and_no_bucket_notification(oos):
    assert "aws_s3_bucket_notification" not in oos
    (function,) = oos["aws_lambda_function"].values()
    assert function["handler"] == "app.renew_and_reconcile"
    # It inspects too (a raw.gz streams through it): a full vCPU, and one pass at a time.
    assert function["memory_size"] == 1769 and function["timeout"] == 900
    assert function["reserved_concurrent_executions"] == 1
    (rule,) = oos["aws_cloudwatch_event_rule"].values()
    assert rule["schedule_expression"] == "rate(5 minutes)"


def test_oos_endpoint_region_and_secrets_in_the_environment(oos):
    (function,) = oos["aws_lambda_function"].values()
    variables = function["environment"]["variables"]
    assert variables["OMI_ENDPOINT_URL"] == "https://oos.eu-west-2.outscale.com"
    assert variables["OMI_PUBLIC_ENDPOINT_URL"] == "https://oos.eu-west-2.outscale.com"
    assert variables["OMI_REGION"] == "eu-west-2"
    assert variables["OMI_BUCKET"] == OOS["OMI_BUCKET"]
    assert variables["OMI_SIGNING_SECRET"] == "omi-manifest/oos/signer"
    assert variables["OMI_STORE_SECRET"] == "omi-manifest/oos/store"


def test_oos_policy_grants_only_the_secrets_and_logs(oos):
    (role,) = oos["aws_iam_role_policy"].values()
    statements = json.loads(role["policy"])["Statement"]
    granted = {(a, r) for s in statements for a in s["Action"] for r in s["Resource"]}
    assert {action for action, _ in granted} == {
        "secretsmanager:GetSecretValue",
        "logs:CreateLogGroup",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    }
    secrets = sorted(r for a, r in granted if a == "secretsmanager:GetSecretValue")
    assert [r.split(":secret:")[1] for r in secrets] == [
        f"{OOS['OMI_SIGNING_SECRET']}-??????",
        f"{OOS['OMI_STORE_SECRET']}-??????",
    ]
    assert all(statement["Effect"] == "Allow" for statement in statements)
    for action, resource in granted:
        if action.startswith("logs:"):
            assert "/aws/lambda/omi-manifest-oos-renew_and_reconcile" in resource
            assert "*" not in resource or resource.endswith(":log-stream:*")
