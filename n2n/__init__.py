"""n2n: compress a trained PyTorch network into a smaller student by policy search (N2N learning)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time

__version__ = "0.1.0"
SEED_LIMIT = 2**32  # seeds are 0 .. 2**32 - 1: numpy's RandomState (under Optuna) takes no more
MANY = 100_000  # the most candidates per stage, or trials at once, a config or command may ask for


def load_student(folder, factories=()):
    """Rebuild an exported student (or teacher) folder with no pickle; eval mode.

    The module takes the data set's raw inputs: the preprocessing the search used (standardisation
    with training-split statistics, recorded in arch.json) is part of it (`n2n.models.RawInput`).
    A student of your own module class names its factory (``"package.module:function"``) in
    arch.json; it is imported and called only if you list it in `factories` (a list of such names,
    or one)."""
    import warnings

    from .models import RawInput, load_model, model_changed_since

    if isinstance(factories, str):  # one name, not its characters (helper-67: then told to pass what it had)
        factories = (factories,)
    model, arch, _ = load_model(folder, factories)
    if changed := model_changed_since(folder):
        warnings.warn(changed.removeprefix("warning: "), stacklevel=2)
    if arch.get("input"):
        return RawInput(model, arch["input"]).eval()
    return model
