"""remote-gpu-trainer: run long GPU jobs on rented GPUs without losing results or a running meter."""

__version__ = "0.1.0"
