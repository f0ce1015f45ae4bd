"""n2n: compress a trained PyTorch network into a smaller student by policy search (N2N learning)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time

__version__ = "0.1.0"


def load_student(folder, factories=()):
    """Rebuild an exported student (model.safetensors + arch.json) with no pickle; eval mode.

    A student of your own module class names its factory (``"package.module:function"``) in
    arch.json; it is imported and called only if you list it in `factories`."""
    from .models import load_model

    return load_model(folder, factories)[0]
