"""Benchmarks against PyTorch's built-ins: ``python -m benchmarks.run`` (see run.py)."""
