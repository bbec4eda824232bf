"""Benchmarks: each script measures against a baseline in the same run and prints the ratio.

Modules named ``_*.py`` are helpers that a benchmark starts in a subprocess; run on
their own without arguments they do nothing and exit 0.
"""
