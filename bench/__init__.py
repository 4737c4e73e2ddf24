"""Benchmarks, FLOP counting and GPU probes: tools run beside the pack, never shipped to ComfyUI users.

Run from the repository root: ``python -m bench --help`` (see bench/RESULTS.md).
"""
