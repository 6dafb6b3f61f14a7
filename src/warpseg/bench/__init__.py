"""Benchmarks on the shared dev data: every method, the same pairs, one table per run."""
from warpseg.bench.run import run_benchmark

__all__ = ["run_benchmark"]
