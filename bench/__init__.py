"""Benchmarks: ``make bench`` (``python -m bench``). Figures are printed beside a baseline."""
