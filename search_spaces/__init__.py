"""What can change in a teacher, and how a student is built from it (torch only)."""

from .base import (
    DEFAULT_RATIOS,
    FEATURE_DIM,
    FEATURE_NAMES,
    INPLACE,
    UNIT_KINDS,
    SearchSpace,
    SpecError,
    StudentSpec,
    Unit,
    UnsupportedModel,
    changes_its_input,
    count_macs,
    count_params,
    output_gap,
    probe,
    probe_gap,
)
from .generic import GenericSpace, call_factory, load_factory, pruned_from_arch
from .resnet import ResNet, ResNetSpace, from_torchvision, resnet_arch
from .sequential import SequentialSpace, layers_to_module, module_to_layers
from .transformer import HFClassifier, TransformerSpace, encoder_from_arch, hf_expressible, is_hf_model

__all__ = [
    "DEFAULT_RATIOS", "FEATURE_DIM", "FEATURE_NAMES", "UNIT_KINDS", "SearchSpace", "SpecError",
    "StudentSpec", "Unit", "INPLACE", "changes_its_input", "count_macs", "count_params", "output_gap", "probe", "probe_gap", "SequentialSpace", "UnsupportedModel",
    "layers_to_module", "module_to_layers", "space_for", "build_student", "STUDENT_FAMILIES", "ResNet", "ResNetSpace", "from_torchvision",
    "resnet_arch", "GenericSpace", "call_factory", "load_factory", "pruned_from_arch", "HFClassifier", "TransformerSpace", "encoder_from_arch", "hf_expressible", "is_hf_model",
]


def build_student(arch: dict, factories=()):
    """Rebuild a student module from the JSON its family's `SearchSpace.arch` wrote (weights not
    loaded): each family's reader sits beside its writer. `factories`: the user factories a
    ``pruned`` arch may import (see `load_factory`)."""
    family = arch.get("family")
    if family == "sequential":
        return layers_to_module(arch["layers"])
    if family == "resnet":
        return ResNet(arch)
    if family == "hf-encoder":
        return encoder_from_arch(arch)
    if family == "pruned":
        return pruned_from_arch(arch, factories)
    raise UnsupportedModel(f"unknown student family {family!r}: expected one of {STUDENT_FAMILIES}")


STUDENT_FAMILIES = ("sequential", "resnet", "hf-encoder", "pruned")


def space_for(teacher, input_shape, ratios=None, uniform: bool = False, arch: dict | None = None) -> SearchSpace:
    """The search space that fits `teacher`'s structure (the only family-specific dispatch).

    `uniform` (transformers only) keeps one FFN width for all layers, so students stay loadable by
    a stock `from_pretrained`. `arch`: the teacher's arch.json; a ``module`` teacher's factory is
    what its students are rebuilt from."""
    from torch import nn

    if is_hf_model(teacher):
        return TransformerSpace(teacher, input_shape, ratios, uniform=uniform)
    if isinstance(teacher, ResNet):
        return ResNetSpace(teacher, input_shape, ratios)
    reason = None
    try:
        if hasattr(teacher, "layer1") and hasattr(teacher, "fc"):  # torchvision-style, converted
            return ResNetSpace(teacher, input_shape, ratios)
        if isinstance(teacher, nn.Sequential):
            return SequentialSpace(teacher, input_shape, ratios)
    except UnsupportedModel as e:  # layers or a layout that family cannot read exactly
        reason = str(e)
    # any other module: torch-pruning's dependency graph (see search_spaces/generic.py), which
    # slices the teacher's own modules, whatever their settings
    factory = {"factory": arch["factory"], "kwargs": arch.get("kwargs", {})} if arch and arch.get("family") == "module" else None
    try:
        space = GenericSpace(teacher, input_shape, ratios, factory=factory,
                             output_layer=(arch or {}).get("output_layer") if factory else None)
    except UnsupportedModel as e:
        raise UnsupportedModel(f"{reason}; nor can the generic space take it: {e}" if reason else str(e)) from None
    space.fallback = reason  # why its own family did not take it (None: it has none)
    return space
