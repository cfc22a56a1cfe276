"""The logger and metrics, created once and imported wherever they are needed.

Logs are JSON (Powertools); metrics are CloudWatch EMF lines in the same stream.
Nothing here ever receives a URL signature or a secret: callers log names,
keys and counts only.
"""

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

SERVICE = "omi-manifest"
NAMESPACE = "OmiManifest"

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)


def count(name: str, value: int = 1) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
