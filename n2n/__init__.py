"""n2n: compress a trained PyTorch network into a smaller student by policy search (N2N learning)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time

__version__ = "0.1.0"


def load_student(folder):
    """Rebuild an exported student (model.safetensors + arch.json) with no pickle; eval mode."""
    from .models import load_model

    return load_model(folder)[0]
