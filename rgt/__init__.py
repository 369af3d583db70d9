"""remote-gpu-trainer: run long GPU jobs on rented GPUs, keep the results, stop the meter."""

__version__ = "0.1.0"
