"""What can change in a teacher, and how a student is built from it (torch only)."""

from .base import (
    DEFAULT_RATIOS,
    FEATURE_DIM,
    FEATURE_NAMES,
    UNIT_KINDS,
    SearchSpace,
    SpecError,
    StudentSpec,
    Unit,
    count_params,
)
from .sequential import SequentialSpace, UnsupportedModel, layers_to_module, module_to_layers

__all__ = [
    "DEFAULT_RATIOS", "FEATURE_DIM", "FEATURE_NAMES", "UNIT_KINDS", "SearchSpace", "SpecError",
    "StudentSpec", "Unit", "count_params", "SequentialSpace", "UnsupportedModel",
    "layers_to_module", "module_to_layers", "space_for",
]


def space_for(teacher, input_shape, ratios=None) -> SearchSpace:
    """The search space that fits `teacher`'s structure."""
    return SequentialSpace(teacher, input_shape, ratios)
