"""Benchmarks: run from a source checkout (``rerankq bench``, ``python -m bench.NAME``); not installed."""
