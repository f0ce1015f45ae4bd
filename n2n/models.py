"""Model families, and saving/loading models as safetensors + JSON (never pickles).

A saved model is a folder: ``model.safetensors`` (weights and buffers), ``arch.json`` (family and
hyperparameters, enough to rebuild the module) and ``metrics.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from search_spaces.resnet import ResNet, resnet_arch
from search_spaces.sequential import layers_to_module

# vgg presets: numbers are conv widths, "M" a 2x max-pool. Pools that would shrink the input below
# one sample are dropped, so the same preset runs on 8x8 digits and length-40 MNIST-1D.
VGG_PRESETS = {
    "vgg1d": [64, 64, "M", 128, 128, "M", 256, 256, "M", 256, 256],
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
    "small": [16, 16, "M", 32, 32],
}


class ModelError(ValueError):
    """A model folder or architecture that cannot be loaded; the message says why."""


def vgg_layers(input_shape, num_classes: int, preset: str = "vgg1d", width_mult: float = 1.0,
               hidden: int = 256, dropout: float = 0.0) -> list[dict]:
    """Conv-BN-ReLU stages, global average pooling, and an MLP classifier."""
    if preset not in VGG_PRESETS:
        raise ModelError(f"unknown vgg preset {preset!r}: expected one of {sorted(VGG_PRESETS)}")
    dim = len(input_shape) - 1
    if dim not in (1, 2):
        raise ModelError(f"vgg expects inputs (C, L) or (C, H, W), got shape {tuple(input_shape)}")
    c, size = input_shape[0], min(input_shape[1:])
    layers: list[dict] = []
    for v in VGG_PRESETS[preset]:
        if v == "M":
            if size >= 2:
                layers.append({"kind": "pool", "dim": dim, "op": "max", "kernel": 2, "stride": 2, "padding": 0})
                size //= 2
            continue
        w = max(1, int(round(v * width_mult)))
        layers += [
            {"kind": "conv", "dim": dim, "in": c, "out": w, "kernel": 3, "stride": 1, "padding": 1, "bias": False},
            {"kind": "bn", "dim": dim, "num": w, "eps": 1e-5, "momentum": 0.1, "affine": True},
            {"kind": "act", "fn": "relu"},
        ]
        c = w
    layers += [{"kind": "gpool", "dim": dim, "op": "avg"}, {"kind": "flatten"}]
    if hidden:
        layers += [{"kind": "linear", "in": c, "out": hidden, "bias": True}, {"kind": "act", "fn": "relu"}]
        if dropout:
            layers.append({"kind": "dropout", "p": dropout})
        c = hidden
    layers.append({"kind": "linear", "in": c, "out": num_classes, "bias": True})
    return layers


def mlp_layers(input_shape, num_classes: int, hidden=(256, 256)) -> list[dict]:
    n_in = 1
    for s in input_shape:
        n_in *= s
    layers: list[dict] = [{"kind": "flatten"}]
    for h in hidden:
        layers += [{"kind": "linear", "in": n_in, "out": h, "bias": True}, {"kind": "act", "fn": "relu"}]
        n_in = h
    layers.append({"kind": "linear", "in": n_in, "out": num_classes, "bias": True})
    return layers


def build_model(arch: dict) -> nn.Module:
    """Rebuild a module from its ``arch.json`` content (weights not loaded)."""
    family = arch.get("family")
    try:
        if family == "vgg":
            return layers_to_module(vgg_layers(**arch["hparams"]))
        if family == "mlp":
            return layers_to_module(mlp_layers(**arch["hparams"]))
        if family == "sequential":
            return layers_to_module(arch["layers"])
        if family == "module":  # the user's own class: {"factory": "pkg.mod:fn", "kwargs": {...}}
            from search_spaces import load_factory

            model = load_factory(arch["factory"])(**arch.get("kwargs", {}))
            model.n2n_factory = {"factory": arch["factory"], "kwargs": arch.get("kwargs", {})}
            return model
        if family == "pruned":
            from search_spaces import pruned_from_arch

            return pruned_from_arch(arch)
        if family == "hf-pretrained":
            return load_hf_classifier(Path(arch["path"]))
        if family == "hf-encoder":
            from search_spaces import encoder_from_arch

            return encoder_from_arch(arch)
        if family == "resnet":
            if "hparams" in arch:  # a teacher recipe: preset + width
                return ResNet(resnet_arch(**arch["hparams"]))
            return ResNet(arch)  # a full per-block description (students)
    except (KeyError, TypeError) as e:
        raise ModelError(f"arch of family {family!r} is malformed: {e}") from None
    raise ModelError(f"unknown model family {family!r}: expected 'vgg', 'mlp', 'sequential', 'resnet', "
                     "'hf-encoder', 'module' or 'pruned'")


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temp file, then rename), so a crash never leaves half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def save_model(folder, model: nn.Module, arch: dict, metrics: dict, extra: dict | None = None,
               overwrite: bool = False) -> Path:
    """Save a model folder. Written to a temp folder first, then moved, so a crash leaves nothing."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} already exists; pass overwrite to replace it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    write_json(tmp / "arch.json", arch)
    write_json(tmp / "metrics.json", metrics)
    for name, obj in (extra or {}).items():
        write_json(tmp / name, obj)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def load_hf_classifier(folder: Path, trust_remote_code: bool = False) -> nn.Module:
    """A local Hugging Face ...ForSequenceClassification folder, as ids -> logits (no download)."""
    from transformers import AutoModelForSequenceClassification

    from search_spaces import HFClassifier

    try:
        model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True,
                                                                   trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"{folder}: not a loadable Hugging Face classifier folder ({str(e).splitlines()[0]})") from None
    return HFClassifier(model.eval()).eval()


def load_model(folder) -> tuple[nn.Module, dict, dict]:
    """(module in eval mode, arch, metrics) from a saved folder; strict weight loading.

    A Hugging Face folder (config.json, no arch.json) loads through `from_pretrained` with
    ``local_files_only`` and without remote code."""
    folder = Path(folder)
    if (folder / "config.json").is_file() and not (folder / "arch.json").is_file():
        metrics_path = folder / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        return load_hf_classifier(folder), {"family": "hf-pretrained", "path": str(folder.resolve())}, metrics
    for name in ("model.safetensors", "arch.json"):
        if not (folder / name).is_file():
            raise ModelError(f"{folder}: expected a model folder with {name}, found none")
    arch = json.loads((folder / "arch.json").read_text())
    model = build_model(arch)
    try:
        model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    except RuntimeError as e:
        raise ModelError(f"{folder}: weights do not match arch.json ({str(e).splitlines()[0]})") from None
    metrics_path = folder / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return model.eval(), arch, metrics


def device_for(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
