"""Many OMIs at once, several uploaders and several pipeline workers (scaled to CI)."""

from chalicelib.local.load import run_load

OMIS = 12  # `make bench` runs 200


def test_concurrent_uploads_all_publish_correct_manifests(live):
    result = run_load(live.s3, live.pump, live.handler, live.bucket, OMIS)
    assert result.problems == []
    assert result.snapshots > OMIS  # OMIs of several disks, whose last two land together
