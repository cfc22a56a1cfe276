"""The logger and metrics, created once and imported wherever they are needed.

Logs are JSON (Powertools); metrics are CloudWatch EMF lines in the same stream.
On a person's terminal (the command line) ``use_console`` swaps the JSON for one
readable line per change the pipeline makes (records carrying a ``change`` field)
and per warning or error. Nothing here ever receives a URL signature or a
secret: callers log names, keys and counts only.
"""

from __future__ import annotations

import logging
import os
import time
import warnings

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter
from aws_lambda_powertools.metrics import MetricUnit

SERVICE = "omi-manifest"
NAMESPACE = "OmiManifest"
CONTEXT_FIELDS = ("omi", "key", "manifest", "bucket")  # what a warning is about

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)


class _Console:
    """Whether this process writes for a person: then no metric is even collected, since
    Powertools prints a raw EMF line every 100 values of one, disabled or not."""

    active = False


def count(name: str, value: int = 1) -> None:
    if not _Console.active:
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


class ConsoleFormatter(LambdaPowertoolsFormatter):
    """``04:12:33 web-server: published manifests/web-server.json (expires …)``.

    A Powertools formatter still, so that the Lambda context injection and
    ``append_keys`` keep working when the same handler runs locally.
    """

    def format(self, record: logging.LogRecord) -> str:
        moment = time.strftime("%H:%M:%S", time.localtime(record.created))
        change = getattr(record, "change", None)
        if change and record.levelno < logging.WARNING:
            return f"{moment} {change}"
        about = ", ".join(
            f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS if hasattr(record, name)
        )
        line = f"{moment} {record.levelname.lower()}: {record.getMessage()}"
        if about:
            line += f" ({about})"
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            line += f": {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        return line


def _for_a_person(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or bool(getattr(record, "change", None))


def use_console() -> None:
    """Readable lines for a terminal: changes, warnings and errors; no JSON, no metrics."""
    handler = logger.registered_handler
    handler.setFormatter(ConsoleFormatter())
    handler.addFilter(_for_a_person)
    _Console.active = True
    quiet_metrics()


def quiet_metrics() -> None:
    """CloudWatch metric lines, and Powertools' warning when there are none, mean nothing
    outside Lambda."""
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    warnings.filterwarnings("ignore", message="No application metrics to publish")
