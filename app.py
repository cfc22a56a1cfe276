"""Chalice wiring: bucket events and the schedule call into ``chalicelib``. Nothing else."""

import os

from chalice import Chalice, ConvertToMiddleware

from chalicelib import runtime, scheduler
from chalicelib.notifications import object_changes
from chalicelib.observability import logger, metrics

# Chalice would set the "omi-manifest" logger, which Powertools uses, to ERROR.
app = Chalice(app_name="omi-manifest", configure_logs=False)
app.register_middleware(ConvertToMiddleware(logger.inject_lambda_context))
app.register_middleware(ConvertToMiddleware(metrics.log_metrics))

BUCKET = os.environ.get("OMI_BUCKET", "omi-snapshots")
OBJECT_EVENTS = ["s3:ObjectCreated:*", "s3:ObjectRemoved:*", "s3:ObjectTagging:*"]
SCHEDULE = os.environ.get("OMI_SCHEDULE", "rate(1 hour)")


@app.on_s3_event(bucket=BUCKET, events=OBJECT_EVENTS)
def on_object_event(event):
    """Object created, removed or retagged: bring its OMI up to date."""
    runtime.pipeline().handle(object_changes(event.to_dict()))


@app.schedule(SCHEDULE)
def renew_and_reconcile(event):
    """Re-sign manifests before their URLs expire; repair what events missed."""
    pipeline = runtime.pipeline()
    context = event.context
    scheduler.Pass(
        pipeline,
        pipeline.settings.renew_before,
        time_left=lambda: context.get_remaining_time_in_millis() / 1000,
    ).run()
