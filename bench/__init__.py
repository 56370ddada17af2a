"""Benchmarks: ``make bench`` (``python -m bench``) prints a table per section and writes bench/out/."""
