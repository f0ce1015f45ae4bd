"""The search-space interface: units, student specs, and what every family must provide.

A *unit* is one decision point of a teacher (a conv layer, a residual block, an encoder layer...).
A *StudentSpec* says which units are removed and which width ratio each kept unit keeps. It is
plain data: it serialises to JSON and is what trials, checkpoints and exports carry.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

DEFAULT_RATIOS = (0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

# Unit kinds known to the policy's one-hot. New families append here; never reorder (saved
# policies depend on the column order).
UNIT_KINDS = ("conv", "linear", "pool", "block", "attention", "ffn", "layer")

FEATURE_NAMES = (
    *(f"kind_{k}" for k in UNIT_KINDS),
    "kernel",  # kernel / 7, clipped to 1
    "stride",  # (stride - 1) / 3, clipped to 1
    "padding",  # padding / 3, clipped to 1
    "width",  # width / widest unit of this teacher: relative, so policies transfer across widths
    "skip_start",
    "skip_end",
    "param_share",  # share of the teacher's parameters held by this unit
    "position",  # index / (n_units - 1): relative, so policies transfer across depths
    "removable",
    "shrinkable",
)
FEATURE_DIM = len(FEATURE_NAMES)


class SpecError(ValueError):
    """A spec that is malformed (wrong length, unknown ratio...), as opposed to merely invalid."""


@dataclass(frozen=True, kw_only=True)
class Unit:
    """One decision point of a teacher, with what a policy needs to know about it (by keyword)."""

    name: str
    kind: str
    width: int
    params: int
    removable: bool
    shrinkable: bool
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    skip_start: bool = False
    skip_end: bool = False
    why_fixed: str = ""  # why the unit may not be removed, when it may not
    parent: int | None = None  # a unit whose removal makes this one moot (a layer's FFN, say)


def changes_its_input(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether `model`'s forward writes into the tensor it is given (`x /= 16`): n2n passes slices of
    the data it keeps, so every figure after the first would be measured on altered data (helper-81:
    the teacher measured 0.9442, then 0.0967). Run on a copy of `x`, which is left as it was."""
    given = x.clone()
    with torch.no_grad():
        model(given)
    return not torch.equal(given, x)


INPLACE = ("its forward changes its input tensor in place (x /= 16, x.sub_(...)), so n2n's data would change "
           "under every figure it measures: make that step out of place (x = x / 16)")


class UnsupportedModel(ValueError):
    """The module holds a layer this search space cannot reason about."""


@dataclass(frozen=True)
class StudentSpec:
    """Which units are removed, and the width ratio of every unit (ignored for removed ones)."""

    removed: tuple[int, ...] = ()
    ratios: tuple[float, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "removed", tuple(sorted(set(int(i) for i in self.removed))))
        object.__setattr__(self, "ratios", tuple(float(r) for r in self.ratios))

    @classmethod
    def identity(cls, n_units: int) -> StudentSpec:
        return cls((), (1.0,) * n_units)

    def with_removed(self, removed) -> StudentSpec:
        return StudentSpec(tuple(removed), self.ratios)

    def with_ratios(self, ratios) -> StudentSpec:
        return StudentSpec(self.removed, tuple(ratios))

    def to_dict(self) -> dict:
        return {"removed": list(self.removed), "ratios": list(self.ratios)}

    @classmethod
    def from_dict(cls, d: dict) -> StudentSpec:
        if not isinstance(d, dict) or set(d) != {"removed", "ratios"}:
            raise SpecError(f"expected a spec with keys 'removed' and 'ratios', got {d!r}")
        return cls(tuple(d["removed"]), tuple(d["ratios"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> StudentSpec:
        return cls.from_dict(json.loads(text))


@dataclass(repr=False)
class SearchSpace(ABC):
    """What can change in one teacher, and how a student is built from it.

    Subclasses fill `units` and implement the abstract methods. `validate` never raises for an
    ordinary invalid spec: it returns the reason, so invalid candidates cost nothing.
    """

    teacher: nn.Module
    input_shape: tuple[int, ...]  # one sample, without the batch dimension
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    units: list[Unit] = field(init=False, default_factory=list)

    # -- what a family implements -------------------------------------------------------------
    @abstractmethod
    def _check(self, spec: StudentSpec) -> str | None:
        """Family-specific reasons a well-formed spec cannot build a working student."""

    def widths(self, spec: StudentSpec) -> list[int]:
        """Width of every unit in the student: 0 for absent units (`gone`), the ratio's width for
        shrinkable ones, the teacher's otherwise."""
        gone = self.gone(spec)
        return [0 if i in gone else self.width_of(i, spec.ratios[i]) if u.shrinkable else u.width
                for i, u in enumerate(self.units)]

    @abstractmethod
    def params(self, spec: StudentSpec) -> int:
        """The student's parameter count, predicted without building it."""

    @abstractmethod
    def flops(self, spec: StudentSpec) -> int:
        """The student's multiply-accumulates for one sample, predicted without building it."""

    @abstractmethod
    def _build(self, spec: StudentSpec, inherit: bool) -> nn.Module:
        """The student of a valid spec; with `inherit`, copy the teacher's weights into it."""

    @abstractmethod
    def arch(self, spec: StudentSpec) -> dict:
        """A JSON-able description that `n2n.models.build_model` turns back into the student."""

    # -- shared ---------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.n_units} units, {self.teacher_params():,} params)"

    @property
    def n_units(self) -> int:
        return len(self.units)

    def identity(self) -> StudentSpec:
        return StudentSpec.identity(self.n_units)

    def teacher_params(self) -> int:
        return self.params(self.identity())

    def width_of(self, unit: int, ratio: float) -> int:
        return max(1, int(round(self.units[unit].width * ratio)))

    @torch.no_grad()
    def build(self, spec: StudentSpec, inherit: bool = True, seed: int = 0) -> nn.Module:
        """The student module in eval mode; with `inherit` its weights come from the teacher, else
        it is freshly initialised from `seed` (the original N2N behaviour, for comparison)."""
        reason = self.validate(spec)
        if reason:
            raise ValueError(f"cannot build an invalid spec: {reason}")
        with torch.random.fork_rng(devices=[]):  # seeded, without reseeding the caller's RNG
            torch.manual_seed(seed)
            return self._build(spec, inherit).eval()

    def validate(self, spec: StudentSpec) -> str | None:
        """None when `spec` builds a working student, else the reason it does not."""
        return self.check_structure(spec) or self._check(spec)

    def check_structure(self, spec: StudentSpec) -> str | None:
        """`validate` without the family's own checks (which may build the student): the units and
        ratios the spec names exist and may be removed or shrunk."""
        if len(spec.ratios) != self.n_units:
            return f"expected {self.n_units} ratios (one per unit), got {len(spec.ratios)}"
        for i in spec.removed:
            if not 0 <= i < self.n_units:
                return f"removed unit {i} does not exist (units are 0..{self.n_units - 1})"
            if not self.units[i].removable:
                return f"unit {i} ({self.units[i].name}) may not be removed: {self.units[i].why_fixed}"
        for i, r in enumerate(spec.ratios):
            if not any(abs(r - a) < 1e-9 for a in self.ratios):
                return f"unit {i} has ratio {r}, expected one of {list(self.ratios)}"
            if r != 1.0 and not self.units[i].shrinkable and i not in spec.removed:
                return f"unit {i} ({self.units[i].name}) may not be shrunk"
        return None

    def hidden_states(self, model: nn.Module, x: torch.Tensor):
        """(logits, hidden states) of the teacher or a student, for hidden-state distillation
        (`hidden_map` pairs index the states). Only families with a `hidden_map` implement it."""
        raise NotImplementedError(f"{type(self).__name__} has no hidden-state distillation")

    def reconstruct(self, student: nn.Module, spec: StudentSpec, x: torch.Tensor) -> nn.Module:
        """A least-squares re-fit of the inherited student to the teacher's features on `x`
        (`distill.reconstruct`). Families without one return the student as inherited."""
        return student

    def export_extras(self, student: nn.Module, arch: dict, folder) -> list[str]:
        """Write family-specific forms of an exported student into `folder` (a Hugging Face
        folder, say); returns the names written. Most families have none."""
        return []

    def gone(self, spec: StudentSpec) -> set[int]:
        """Units absent from the student: removed ones and those inside them (`Unit.parent`)."""
        gone = set(spec.removed)
        for i, u in enumerate(self.units):
            p = u.parent
            while p is not None and i not in gone:
                if p in gone:
                    gone.add(i)
                p = self.units[p].parent
        return gone

    def key(self, spec: StudentSpec) -> str:
        """Canonical key: two specs that build the same student have the same key. Absent units are
        marked "x", not by a width of 0: a unit may have width 0 and still be there (a block of the
        generic space whose channels all belong to the stream)."""
        gone = self.gone(spec)
        return "-".join("x" if i in gone else str(w) for i, w in enumerate(self.widths(spec)))

    def legacy_key(self, spec: StudentSpec) -> str:
        """The key n2n gave `spec` before 2026-11-29 (662e342), absent units as width 0: runs of then
        name their candidates and weights files by it."""
        return "-".join(str(w) for w in self.widths(spec))

    def current_key(self, key: str, spec: StudentSpec) -> str:
        """`key`, a record's, in today's form: a run recorded before 662e342 gave `spec` its legacy key
        (helper-78: its resume trained such students again, under today's key, and export refused them);
        a finalist's "@Nep" kept."""
        base, at, epochs = key.partition("@")
        now = self.key(spec)
        return now + at + epochs if base != now and base == self.legacy_key(spec) else key

    def features(self) -> np.ndarray:
        """(n_units, FEATURE_DIM) float32 features, normalised to comparable ranges."""
        n = self.n_units
        widest = max(u.width for u in self.units) or 1
        total = sum(u.params for u in self.units) or 1
        rows = []
        for i, u in enumerate(self.units):
            onehot = [float(u.kind == k) for k in UNIT_KINDS]
            rows.append(
                onehot
                + [
                    min(u.kernel / 7, 1.0),
                    min((u.stride - 1) / 3, 1.0),
                    min(u.padding / 3, 1.0),
                    u.width / widest,
                    float(u.skip_start),
                    float(u.skip_end),
                    u.params / total,
                    i / max(n - 1, 1),
                    float(u.removable),
                    float(u.shrinkable),
                ]
            )
        return np.asarray(rows, dtype=np.float32)

    def hidden_map(self, spec: StudentSpec) -> list[tuple[int, int]] | None:
        """Pairs (student layer, teacher layer) whose hidden states may be distilled; None when the
        family has no such mapping (only transformers do)."""
        return None

    def describe(self, spec: StudentSpec) -> str:
        """Short human summary: removed units, and the widths of shrunk ones."""
        parts = []
        if spec.removed:
            parts.append("-" + ",".join(self.units[i].name for i in spec.removed))
        shrunk = [
            f"{u.name}:{w}"
            for i, (u, w) in enumerate(zip(self.units, self.widths(spec)))
            if w and w != u.width
        ]
        if shrunk:
            parts.append(" ".join(shrunk))
        return " ".join(parts) or "identity"


@torch.no_grad()
def check_reproduces(teacher: nn.Module, copy, input_shape, what: str, x: torch.Tensor | None = None) -> None:
    """Raise UnsupportedModel unless `copy()` (a family's reading of `teacher`, rebuilt) computes what
    the teacher computes, in eval mode on random inputs (or `x`: token ids, for a transformer). A
    layer setting the reading dropped would otherwise make every student inherit weights into another
    function, and export a network that is not the slimmed teacher; `space_for` then tries the generic
    space, which keeps the modules."""
    p = next(teacher.parameters())
    if x is None:
        x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)  # (2, *input_shape)
    x = x.to(p.device)
    was = [(m, m.training) for m in teacher.modules()]  # each as it was (a new wrapper's own flag is True)
    try:
        teacher.eval()
        with torch.random.fork_rng(devices=[]):  # building the copy leaves the caller's random stream as it was
            want, got = teacher(x), copy().eval().to(p.device)(x)  # (2, classes) each
        diff = output_gap(got, want)
    except Exception as e:  # a layer read wrongly enough that the copy does not even run
        raise UnsupportedModel(f"{what} cannot rebuild this network ({type(e).__name__}: {e})") from None
    finally:
        for m, training in was:
            m.training = training
    if diff is not None:
        raise UnsupportedModel(f"{what} does not reproduce this network: its copy's outputs differ by up to {diff:.3g}")


def probe_input(input_shape) -> torch.Tensor:
    """Two inputs of `input_shape` made without any random generator, (2, *input_shape): the same
    numbers on every machine and torch version."""
    n = 2 * math.prod(input_shape)
    return torch.sin(torch.arange(n, dtype=torch.float64) * 0.731).to(torch.float32).reshape(2, *input_shape)


@torch.no_grad()
def probe(model: nn.Module, input_shape) -> list[list[float]]:
    """`model`'s outputs on `probe_input`, (2, classes) as lists: a student rebuilt by the user's own
    code records them, so that a load computing anything else (the code changed since) is noticed."""
    return model.eval()(probe_input(input_shape)).tolist()


# Relative difference of two models' outputs still read as the same model: float noise (thread counts,
# CPUs, batch sizes move the last bits of float32 sums) stays far below it; an edit of the code that
# builds a model (a LeakyReLU's slope) does not (helper-67: one 12x past it passed a check 50x wider)
SAME_OUTPUTS = 1e-4


def output_gap(got: torch.Tensor, want: torch.Tensor, rtol: float = SAME_OUTPUTS) -> float | None:
    """The largest difference between two models' outputs, or None when it is within `rtol` of
    `want`'s scale (float noise: thread counts and CPUs move the last bits). Another shape is
    infinitely far; a NaN is never within."""
    gap = (got - want).abs().max().item() if got.shape == want.shape else float("inf")
    return None if gap <= rtol * (1.0 + want.abs().max().item()) else gap


def probe_gap(model: nn.Module, input_shape, recorded) -> float | None:
    """`output_gap` of `model`'s probe outputs from `recorded` (the saved model's)."""
    return output_gap(torch.tensor(probe(model, input_shape)), torch.tensor(recorded, dtype=torch.float32))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one sample's forward pass in `model`'s Conv and Linear modules, by
    hooks: what every family's `flops` counts. Normalisation, activations, pooling and additions are
    not multiply-accumulates; functional matmuls (``F.linear``, ``x @ w``, and so
    ``nn.MultiheadAttention``'s projections and products) are not seen by hooks."""
    total = 0

    def hook(m, inp, out):  # the whole output of one sample's pass: a model that squeezes the batch axis
        nonlocal total     # away gives a Linear (features,), whose out[0] was 1 number (helper-81: 28x under)
        if isinstance(m, nn.modules.conv._ConvNd) and m.transposed:  # each input position meets the kernel once
            total += inp[0].numel() * (m.out_channels // m.groups) * m.weight[0, 0].numel()
        elif isinstance(m, nn.modules.conv._ConvNd):
            total += out.numel() * (m.in_channels // m.groups) * m.weight[0, 0].numel()
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features

    was = model.training
    hooks = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        model.eval()(example[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return total


def top_l1(weight: torch.Tensor, k: int, dim: int = 0) -> list[int]:
    """Indices (sorted) of the k slices of `weight` along `dim` with the largest L1 norm."""
    other = [d for d in range(weight.dim()) if d != dim]
    norms = weight.detach().abs().sum(dim=other) if other else weight.detach().abs()
    return sorted(torch.topk(norms, k).indices.tolist())
