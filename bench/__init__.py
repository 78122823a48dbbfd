"""Benchmarks that print their figures as JSON lines (never run as tests)."""
