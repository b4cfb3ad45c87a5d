"""Builders for tiny random models used by tests and benchmarks (no downloads needed)."""
