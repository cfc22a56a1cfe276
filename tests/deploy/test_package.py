"""``make package`` (``chalice package --pkg-format terraform``, fitted): what would be
deployed, read back and checked."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import make_env

PROJECT = Path(__file__).parents[2]
STAGE = "prod"
CONFIG = json.loads((PROJECT / ".chalice" / "config.json").read_text())
BUCKET = CONFIG["stages"][STAGE]["environment_variables"]["OMI_BUCKET"]
SECRET = CONFIG["stages"][STAGE]["environment_variables"]["OMI_SIGNING_SECRET"]


def resources(directory: Path) -> dict:
    return json.loads((directory / "chalice.tf.json").read_text())["resource"]


@pytest.fixture(scope="module")
def terraform(packaged):
    return resources(packaged(STAGE))


def test_functions_sized_for_their_work(terraform):
    functions = terraform["aws_lambda_function"]
    assert set(functions) == {"on_object_event", "renew_and_reconcile", "follow_imports"}
    assert functions["on_object_event"]["memory_size"] == 1769
    assert functions["renew_and_reconcile"]["timeout"] == 900
    assert functions["on_object_event"]["timeout"] == 900
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


def schedules(stage: dict) -> dict[str, str]:
    """Each scheduled function's rule: {function: schedule expression}."""
    rules = stage["aws_cloudwatch_event_rule"]
    return {
        name.removesuffix("-event"): rule["schedule_expression"] for name, rule in rules.items()
    }


def test_hourly_pass_and_imports_followed_every_five_minutes(terraform):
    assert schedules(terraform) == {
        "renew_and_reconcile": "rate(1 hour)",
        "follow_imports": "rate(5 minutes)",
    }


def test_each_stage_names_its_own_schedule_rule(terraform, oos):
    """EventBridge rule names are unique per account and region: Chalice's Terraform
    names the rule ``renew_and_reconcile-event`` in every stage, so a second stage's
    apply would take over the first one's rule."""
    for name, stage in (("prod", terraform), ("oos", oos)):
        rules = stage["aws_cloudwatch_event_rule"]
        assert {rule["name"] for rule in rules.values()} == {
            f"omi-manifest-{name}-renew_and_reconcile-event",
            f"omi-manifest-{name}-follow_imports-event",
        }
        for target in stage["aws_cloudwatch_event_target"].values():
            assert target["rule"].startswith("${aws_cloudwatch_event_rule.")


@pytest.mark.parametrize("stage", ["dev", "prod", "oos"])
def test_each_stage_signs_for_the_region_of_its_policy(stage):
    """``OMI_REGION`` is set in every stage, and is the region its policy's ARNs name."""
    settings = CONFIG["stages"][stage]
    policy = (PROJECT / ".chalice" / settings["iam_policy_file"]).read_text()
    regions = set(re.findall(r"arn:aws:(?:secretsmanager|logs):([a-z0-9-]+):", policy))
    assert regions == {settings["environment_variables"]["OMI_REGION"]}


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
            "s3:DeleteObjectTagging",  # an object that stops being a snapshot loses its status
            "s3:PutObject",
            "s3:DeleteObject",
            "secretsmanager:GetSecretValue",
            "events:PutEvents",
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
                secrets = sorted(r.split(":secret:")[1] for r in statement["Resource"])
                assert secrets in (
                    [f"{SECRET}-??????"],
                    ["omi-manifest/prod/outscale-??????"],  # the OUTSCALE API keys (import)
                ), secrets


# --- a store without events (OUTSCALE OOS): the schedule polls it ----------------------

OOS = CONFIG["stages"]["oos"]["environment_variables"]


@pytest.fixture(scope="module")
def oos(packaged):
    return resources(packaged("oos"))


def test_oos_polling_function_and_no_bucket_notification(oos):
    assert "aws_s3_bucket_notification" not in oos
    assert set(oos["aws_lambda_function"]) == {"renew_and_reconcile", "follow_imports"}
    function = oos["aws_lambda_function"]["renew_and_reconcile"]
    assert function["handler"] == "app.renew_and_reconcile"
    # It inspects too (a raw.gz streams through it): a full vCPU, and one pass at a time.
    assert function["memory_size"] == 1769 and function["timeout"] == 900
    assert function["reserved_concurrent_executions"] == 1
    assert schedules(oos)["renew_and_reconcile"] == "rate(5 minutes)"


def test_oos_endpoint_region_and_secrets_in_the_environment(oos):
    function = oos["aws_lambda_function"]["renew_and_reconcile"]
    variables = function["environment"]["variables"]
    assert variables["OMI_ENDPOINT_URL"] == "https://oos.eu-west-2.outscale.com"
    assert variables["OMI_PUBLIC_ENDPOINT_URL"] == "https://oos.eu-west-2.outscale.com"
    assert variables["OMI_REGION"] == "eu-west-2"
    assert variables["OMI_BUCKET"] == OOS["OMI_BUCKET"]
    assert variables["OMI_SIGNING_SECRET"] == "omi-manifest/oos/signer"
    assert variables["OMI_STORE_SECRET"] == "omi-manifest/oos/store"


def test_oos_policy_grants_only_the_secrets_events_and_logs(oos):
    statements = [
        statement
        for role in oos["aws_iam_role_policy"].values()
        for statement in json.loads(role["policy"])["Statement"]
    ]
    granted = {(a, r) for s in statements for a in s["Action"] for r in s["Resource"]}
    assert {action for action, _ in granted} == {
        "secretsmanager:GetSecretValue",
        "events:PutEvents",
        "logs:CreateLogGroup",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    }
    secrets = sorted(r for a, r in granted if a == "secretsmanager:GetSecretValue")
    assert sorted({r.split(":secret:")[1] for r in secrets}) == sorted(
        [
            f"{OOS['OMI_OUTSCALE_SECRET']}-??????",
            f"{OOS['OMI_SIGNING_SECRET']}-??????",
            f"{OOS['OMI_STORE_SECRET']}-??????",
        ]
    )
    assert all(statement["Effect"] == "Allow" for statement in statements)
    for action, resource in granted:
        if action.startswith("logs:"):
            assert any(
                f"/aws/lambda/omi-manifest-oos-{function}" in resource
                for function in ("renew_and_reconcile", "follow_imports")
            ), resource
            assert "*" not in resource or resource.endswith(":log-stream:*")


def test_an_unknown_stage_is_named_with_the_known_ones(tmp_path):
    done = subprocess.run(
        ["make", "--no-print-directory", "package", "STAGE=staging", f"OUT={tmp_path}/out"],
        cwd=PROJECT,
        env=make_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode != 0
    known = "(dev, prod, oos, local)"
    assert f"package: no stage staging in .chalice/config.json {known}" in done.stderr
    assert not (tmp_path / "out").exists()
