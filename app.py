"""Chalice wiring: bucket events and the schedule call into ``chalicelib``. Nothing else."""

from chalice import Chalice

app = Chalice(app_name="omi-manifest")
