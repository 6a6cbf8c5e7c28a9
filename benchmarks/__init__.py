"""Benchmarks run by ``make bench``; each writes its figures into one JSON report."""
