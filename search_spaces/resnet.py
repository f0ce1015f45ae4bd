"""Residual networks (basic or bottleneck blocks, 1D or 2D) and their search space.

The module is described by plain data (``arch``: stem, then one dict per block with its widths), so a
student with fewer blocks or other widths is the same class with another arch, and round-trips
through JSON. A torchvision-style ResNet (attributes conv1/bn1/maxpool/layer1..N/fc, blocks with
conv1..conv3/bn1..bn3/downsample) converts to this class with identical outputs, without torchvision.

Units, in forward order:
- one *stream* unit per stage: the width of the residual stream that the stage's blocks add into.
  Everything meeting at those adds is one decision (shrinkable, never removable); the channels kept
  are the ones with the largest L1 norm summed over every layer that writes into the stream (the
  stem or the stage's projection shortcut, and each block's last conv).
- one *block* unit per residual block: removable when its shortcut is the identity (same width and
  stride 1: removal leaves shapes unchanged); shrinkable in its inner width(s), keeping the
  highest-L1 filters.
- the classifier (fixed).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .base import SearchSpace, StudentSpec, Unit, top_l1
from .base import UnsupportedModel, check_reproduces

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d}
_GAP = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}


def _convbn(dim, cin, cout, k, stride):
    return _CONV[dim](cin, cout, k, stride, k // 2, bias=False), _BN[dim](cout)


class Block(nn.Module):
    """Basic (two 3x3 convs) or bottleneck (1x1, 3x3, 1x1) residual block."""

    def __init__(self, dim: int, kind: str, cin: int, inner: list[int], cout: int, stride: int, downsample: bool):
        super().__init__()
        self.kind = kind
        if kind == "basic":
            self.conv1, self.bn1 = _convbn(dim, cin, inner[0], 3, stride)
            self.conv2, self.bn2 = _convbn(dim, inner[0], cout, 3, 1)
        else:
            self.conv1, self.bn1 = _convbn(dim, cin, inner[0], 1, 1)
            self.conv2, self.bn2 = _convbn(dim, inner[0], inner[1], 3, stride)
            self.conv3, self.bn3 = _convbn(dim, inner[1], cout, 1, 1)
        self.downsample = nn.Sequential(*_convbn(dim, cin, cout, 1, stride)) if downsample else None
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.kind == "bottleneck":
            out = self.bn3(self.conv3(self.relu(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)

    def last_conv(self) -> nn.Module:
        return self.conv2 if self.kind == "basic" else self.conv3


class ResNet(nn.Module):
    def __init__(self, arch: dict):
        super().__init__()
        self.arch = copy.deepcopy(arch)
        d, stem = arch["dim"], arch["stem"]
        self.conv1 = _CONV[d](arch["in_channels"], stem["width"], stem["kernel"], stem["stride"], stem["kernel"] // 2, bias=False)
        self.bn1 = _BN[d](stem["width"])
        self.relu = nn.ReLU()
        self.maxpool = _POOL[d](3, 2, 1) if stem.get("pool") else nn.Identity()
        self.blocks = nn.ModuleList(Block(d, b["kind"], b["in"], b["inner"], b["out"], b["stride"], b["downsample"])
                                    for b in arch["blocks"])
        self.avgpool = _GAP[d](1)
        width = arch["blocks"][-1]["out"] if arch["blocks"] else stem["width"]
        self.fc = nn.Linear(width, arch["num_classes"])

    def forward(self, x):  # x: (B, C, L) or (B, C, H, W)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for b in self.blocks:
            x = b(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))  # (B, classes)


PRESETS = {  # blocks per stage, block kind
    "resnet18": ([2, 2, 2, 2], "basic"),
    "resnet34": ([3, 4, 6, 3], "basic"),
    "resnet50": ([3, 4, 6, 3], "bottleneck"),
    "resnet10": ([1, 1, 1, 1], "basic"),
}


def resnet_arch(input_shape, num_classes: int, preset: str = "resnet18", width: int = 64, cifar_stem: bool = True) -> dict:
    """CIFAR-style (3x3 stem, no max-pool) or ImageNet-style (7x7 stride-2 stem + max-pool) ResNet."""
    if preset not in PRESETS:
        raise UnsupportedModel(f"unknown resnet preset {preset!r}: expected one of {sorted(PRESETS)}")
    depths, kind = PRESETS[preset]
    dim = len(input_shape) - 1
    expansion = 4 if kind == "bottleneck" else 1
    stem = {"width": width, "kernel": 3 if cifar_stem else 7, "stride": 1 if cifar_stem else 2, "pool": not cifar_stem}
    blocks, cin = [], width
    for s, n in enumerate(depths):
        planes = width * 2**s
        for i in range(n):
            stride = 2 if (s > 0 and i == 0) else 1
            cout = planes * expansion
            inner = [planes] if kind == "basic" else [planes, planes]
            blocks.append({"kind": kind, "in": cin, "inner": inner, "out": cout, "stride": stride,
                           "downsample": stride != 1 or cin != cout})
            cin = cout
    return {"family": "resnet", "dim": dim, "in_channels": input_shape[0], "num_classes": num_classes,
            "input_shape": list(input_shape), "stem": stem, "blocks": blocks}


def from_torchvision(model: nn.Module, input_shape) -> ResNet:
    """Convert a torchvision-style ResNet module (duck-typed: no torchvision import) to `ResNet`."""
    layers = [getattr(model, f"layer{i}") for i in range(1, 9) if hasattr(model, f"layer{i}")]
    if not (hasattr(model, "conv1") and hasattr(model, "fc") and layers):
        raise UnsupportedModel("expected a torchvision-style ResNet (conv1, bn1, layer1..N, fc)")
    c1 = model.conv1
    dim = c1.weight.dim() - 2
    pool = isinstance(getattr(model, "maxpool", None), (nn.MaxPool1d, nn.MaxPool2d))
    stem = {"width": c1.out_channels, "kernel": c1.kernel_size[0], "stride": c1.stride[0], "pool": pool}
    blocks = []
    for layer in layers:
        for b in layer:
            kind = "bottleneck" if hasattr(b, "conv3") else "basic"
            convs = [b.conv1, b.conv2] + ([b.conv3] if kind == "bottleneck" else [])
            stride = (b.conv1 if kind == "basic" else b.conv2).stride[0]
            if any(c.groups != 1 or c.dilation[0] != 1 for c in convs):
                raise UnsupportedModel("grouped or dilated convolutions (ResNeXt, dilated ResNet) are not supported")
            blocks.append({"kind": kind, "in": b.conv1.in_channels, "inner": [c.out_channels for c in convs[:-1]],
                           "out": convs[-1].out_channels, "stride": stride, "downsample": b.downsample is not None})
    arch = {"family": "resnet", "dim": dim, "in_channels": c1.in_channels, "num_classes": model.fc.out_features,
            "input_shape": list(input_shape), "stem": stem, "blocks": blocks}
    out = ResNet(arch)
    src = model.state_dict()
    mapped = {}
    for k, v in src.items():
        parts = k.split(".")
        if parts[0].startswith("layer") and parts[0][5:].isdigit():
            li, bi = int(parts[0][5:]) - 1, int(parts[1])
            idx = sum(len(layer) for layer in layers[:li]) + bi
            k = ".".join(["blocks", str(idx)] + parts[2:])
        mapped[k] = v
    out.load_state_dict(mapped, strict=True)
    # the reading assumes torchvision's layout (stem pool 3/2/1, padding k//2, average-pooled head)
    check_reproduces(model, lambda: out, input_shape, "n2n's reading of a torchvision-style ResNet")
    return out.eval()


def arch_params(arch: dict) -> int:
    d = arch["dim"]
    k = lambda n: n**d  # noqa: E731
    stem = arch["stem"]
    total = arch["in_channels"] * stem["width"] * k(stem["kernel"]) + 2 * stem["width"]
    for b in arch["blocks"]:
        widths = [b["in"], *b["inner"], b["out"]]
        kernels = [3, 3] if b["kind"] == "basic" else [1, 3, 1]
        for cin, cout, ks in zip(widths, widths[1:], kernels):
            total += cin * cout * k(ks) + 2 * cout
        if b["downsample"]:
            total += b["in"] * b["out"] + 2 * b["out"]
    width = arch["blocks"][-1]["out"] if arch["blocks"] else stem["width"]
    return total + width * arch["num_classes"] + arch["num_classes"]


def arch_flops(arch: dict) -> int:
    """Multiply-accumulates of one sample."""
    d = arch["dim"]
    size = list(arch["input_shape"][1:])
    out = lambda s, k, st: [(x + 2 * (k // 2) - k) // st + 1 for x in s]  # noqa: E731
    stem = arch["stem"]
    size = out(size, stem["kernel"], stem["stride"])
    total = math.prod(size) * arch["in_channels"] * stem["width"] * stem["kernel"] ** d
    if stem.get("pool"):
        size = [(x + 2 - 3) // 2 + 1 for x in size]
    for b in arch["blocks"]:
        widths = [b["in"], *b["inner"], b["out"]]
        kernels = [3, 3] if b["kind"] == "basic" else [1, 3, 1]
        strides = [b["stride"], 1] if b["kind"] == "basic" else [1, b["stride"], 1]
        in_size = size
        for cin, cout, ks, st in zip(widths, widths[1:], kernels, strides):
            size = out(size, ks, st)
            total += math.prod(size) * cin * cout * ks**d
        if b["downsample"]:
            total += math.prod(out(in_size, 1, b["stride"])) * b["in"] * b["out"]
    width = arch["blocks"][-1]["out"] if arch["blocks"] else stem["width"]
    return total + width * arch["num_classes"]


class ResNetSpace(SearchSpace):
    def __init__(self, teacher: nn.Module, input_shape, ratios=None):
        if not isinstance(teacher, ResNet):
            teacher = from_torchvision(teacher, input_shape)
        kwargs = {} if ratios is None else {"ratios": tuple(ratios)}
        super().__init__(teacher=teacher, input_shape=tuple(input_shape), **kwargs)
        arch = teacher.arch
        self.t_arch = arch
        # stages: runs of blocks between projection shortcuts; stage 0 starts at the stem
        self.stage_of: list[int] = []
        stage = 0
        for b in arch["blocks"]:
            if b["downsample"]:
                stage += 1
            self.stage_of.append(stage)
        n_stages = stage + 1
        self.units, self.unit_of_stream, self.unit_of_block = [], {}, {}
        total = arch_params(arch)

        def block_params(b):
            return arch_params({**arch, "blocks": [b], "stem": {**arch["stem"], "width": 0}, "num_classes": 0})

        for s in range(n_stages):
            first = next((i for i, st in enumerate(self.stage_of) if st == s), None)
            if s == 0:
                width, k, stride = arch["stem"]["width"], arch["stem"]["kernel"], arch["stem"]["stride"]
            else:
                width, k, stride = arch["blocks"][first]["out"], 1, arch["blocks"][first]["stride"]
            self.unit_of_stream[s] = len(self.units)
            self.units.append(Unit(name=f"stream{s}", kind="conv", width=width, params=0, removable=False,
                                   shrinkable=True, kernel=k, stride=stride, padding=0, skip_start=True,
                                   why_fixed="residual adds need the stream"))
            for i, b in enumerate(arch["blocks"]):
                if self.stage_of[i] != s:
                    continue
                self.unit_of_block[i] = len(self.units)
                identity = not b["downsample"]
                self.units.append(Unit(name=f"block{i}", kind="block", width=b["inner"][0], params=block_params(b),
                                       removable=identity, shrinkable=True, kernel=3, stride=b["stride"],
                                       padding=1, skip_start=True, skip_end=True,
                                       why_fixed="" if identity else "its shortcut is a projection"))
        width = arch["blocks"][-1]["out"] if arch["blocks"] else arch["stem"]["width"]
        self.units.append(Unit(name="fc", kind="linear", width=arch["num_classes"],
                               params=width * arch["num_classes"] + arch["num_classes"], removable=False,
                               shrinkable=False, why_fixed="it is the output layer"))
        # stream units own the params of the stem and projection convs: share of the remaining total
        rest = total - sum(u.params for u in self.units)
        for u in self.unit_of_stream.values():
            self.units[u] = Unit(**{**self.units[u].__dict__, "params": rest // n_stages})

    # -- architecture of a spec ---------------------------------------------------------------
    def _student_arch(self, spec: StudentSpec) -> dict:
        t = self.t_arch
        stream = {s: self.width_of(u, spec.ratios[u]) for s, u in self.unit_of_stream.items()}
        blocks, cin = [], stream[0]
        for i, b in enumerate(t["blocks"]):
            u = self.unit_of_block[i]
            if u in spec.removed:
                continue
            inner = [self._scale(w, spec.ratios[u]) for w in b["inner"]]
            cout = stream[self.stage_of[i]]
            blocks.append({**b, "in": cin, "inner": inner, "out": cout})
            cin = cout
        return {**t, "stem": {**t["stem"], "width": stream[0]}, "blocks": blocks}

    @staticmethod
    def _scale(width: int, ratio: float) -> int:
        return max(1, int(round(width * ratio)))

    def _check(self, spec: StudentSpec) -> str | None:
        return None  # only identity blocks are removable, so every well-formed spec keeps shapes

    def params(self, spec: StudentSpec) -> int:
        return arch_params(self._student_arch(spec))

    def flops(self, spec: StudentSpec) -> int:
        return arch_flops(self._student_arch(spec))

    def arch(self, spec: StudentSpec) -> dict:
        return self._student_arch(spec)

    # -- weights ----------------------------------------------------------------------------------
    def _stream_keep(self, spec: StudentSpec) -> dict[int, list[int]]:
        """Kept channels of each stage's stream, by L1 importance summed over its writers."""
        t: ResNet = self.teacher
        keep = {}
        for s, u in self.unit_of_stream.items():
            writers = [t.conv1] if s == 0 else []
            for i, b in enumerate(t.blocks):
                if self.stage_of[i] == s:
                    writers.append(b.last_conv())
                    if b.downsample is not None:
                        writers.append(b.downsample[0])
            score = sum(w.weight.detach().abs().flatten(1).sum(1) for w in writers)  # (width,)
            keep[s] = sorted(torch.topk(score, self.width_of(u, spec.ratios[u])).indices.tolist())
        return keep

    def _build(self, spec: StudentSpec, inherit: bool) -> nn.Module:
        student = ResNet(self._student_arch(spec))
        if not inherit:
            return student
        t: ResNet = self.teacher
        keep = self._stream_keep(spec)
        _copy_conv_bn(student.conv1, student.bn1, t.conv1, t.bn1, keep[0], list(range(t.conv1.in_channels)))
        cin = keep[0]
        kept_blocks = [i for i in range(len(t.blocks)) if self.unit_of_block[i] not in spec.removed]
        for sb, i in zip(student.blocks, kept_blocks):
            tb, out = t.blocks[i], keep[self.stage_of[i]]
            convs = ["conv1", "conv2"] + (["conv3"] if tb.kind == "bottleneck" else [])
            prev = cin
            for j, name in enumerate(convs):
                tconv, sconv = getattr(tb, name), getattr(sb, name)
                sel = out if j == len(convs) - 1 else top_l1(tconv.weight, sconv.out_channels, 0)
                _copy_conv_bn(sconv, getattr(sb, f"bn{j + 1}"), tconv, getattr(tb, f"bn{j + 1}"), sel, prev)
                prev = sel
            if tb.downsample is not None:
                _copy_conv_bn(sb.downsample[0], sb.downsample[1], tb.downsample[0], tb.downsample[1], out, cin)
            cin = out
        student.fc.weight.copy_(t.fc.weight[:, cin])
        student.fc.bias.copy_(t.fc.bias)
        return student


def _copy_conv_bn(sconv, sbn, tconv, tbn, out_sel: list[int], in_sel: list[int]):
    sconv.weight.copy_(tconv.weight.detach()[out_sel][:, in_sel])
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(sbn, name).copy_(getattr(tbn, name).detach()[out_sel])
    sbn.num_batches_tracked.copy_(tbn.num_batches_tracked)
