"""Benchmark workloads; each runs inside a fresh child process started by bench/run.py."""
