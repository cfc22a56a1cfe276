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

# Chalice sets the stage's environment variables before it imports this module.
BUCKET = os.environ.get("OMI_BUCKET", "omi-snapshots")
OBJECT_EVENTS = ["s3:ObjectCreated:*", "s3:ObjectRemoved:*", "s3:ObjectTagging:*"]
SCHEDULE = os.environ.get("OMI_SCHEDULE", "rate(1 hour)")
# Pending imports into OUTSCALE are read this often (spec section 9: within five minutes).
FOLLOW_SCHEDULE = os.environ.get("OMI_FOLLOW_SCHEDULE", "rate(5 minutes)")
# "false" for a store that sends no bucket events (OUTSCALE OOS): the schedule polls it.
BUCKET_EVENTS = os.environ.get("OMI_BUCKET_EVENTS", "true") != "false"

if BUCKET_EVENTS:

    @app.on_s3_event(bucket=BUCKET, events=OBJECT_EVENTS)
    def on_object_event(event):
        """Object created, removed or retagged: bring its OMI up to date."""
        runtime.pipeline().handle(object_changes(event.to_dict()))


@app.schedule(SCHEDULE)
def renew_and_reconcile(event):
    """Re-sign manifests before their URLs expire; repair what events missed (on a store
    without events, find every change: this is its polling)."""
    pipeline = runtime.pipeline()
    context = event.context
    scheduler.Pass(
        pipeline,
        pipeline.settings.renew_before,
        time_left=lambda: context.get_remaining_time_in_millis() / 1000,
    ).run()


@app.schedule(FOLLOW_SCHEDULE)
def follow_imports(event):
    """The state of pending imports, onto the manifests and snapshots (one list request
    when none is pending)."""
    runtime.pipeline().follow_imports()
