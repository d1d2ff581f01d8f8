"""Benchmarks (not tests): ES-SSM layer and model speed and memory, the naive yardstick, baselines."""
