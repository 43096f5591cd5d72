"""Benchmarks (``make bench``): never part of ``make test``; results in benchmarks/results.json."""
