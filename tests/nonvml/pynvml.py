"""Stands in for nvidia-ml-py in test daemons: the import fails, so the node is GPU-less.

tests/harness.py puts this folder first on a daemon's PYTHONPATH unless the test asks for
the machine's real GPUs, so that tests describe GPUs by declaring them and give the same
results on a machine with NVIDIA GPUs as on one without.
"""

raise ImportError("NVML hidden from this test daemon (tests/nonvml)")
