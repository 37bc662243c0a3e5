"""Benchmarks: speed of each pipeline stage against its reference implementation."""
