"""Metrics and benchmark harness."""
