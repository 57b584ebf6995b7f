"""Benchmarks: `python -m bench [names] [--quick]` runs them and prints one summary line each."""
