"""Benchmarks that report ratios against peers measured in the same run."""
