"""Sequential networks (VGG-style conv stacks, MLPs, any plain nn.Sequential of known layers).

The teacher is read into a *layer list*: JSON-able dicts, one per leaf layer. A unit starts at each
conv, linear or pooling layer and owns the BatchNorm/activation/dropout layers that follow it. The
student is the same layer list with units dropped and widths changed, so its architecture
round-trips through JSON with no reference to the teacher.

Weight inheritance:
- a kept layer copies its weights; a shrunk layer keeps its highest-L1-norm output channels and the
  next layer's input channels (and BatchNorm statistics) are sliced to match;
- after a removal, the next weight layer receives an activation it was not trained on: it keeps its
  most important input channels (by L1 norm) up to the surviving width, and any extra incoming
  channels get zero weights, so at initialisation they are ignored rather than noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import SearchSpace, StudentSpec, Unit, UnsupportedModel, check_reproduces, top_l1

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
}
ACTIVATION_SETTINGS = {"leaky_relu": {"negative_slope": 0.01}, "elu": {"alpha": 1.0}, "gelu": {"approximate": "none"}}
_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
_POOL = {(1, "max"): nn.MaxPool1d, (2, "max"): nn.MaxPool2d, (1, "avg"): nn.AvgPool1d, (2, "avg"): nn.AvgPool2d}
_GPOOL = {(1, "max"): nn.AdaptiveMaxPool1d, (2, "max"): nn.AdaptiveMaxPool2d, (1, "avg"): nn.AdaptiveAvgPool1d, (2, "avg"): nn.AdaptiveAvgPool2d}


def _int(v) -> int:
    """Conv/pool hyperparameters may be tuples; the sequential space needs them square."""
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise UnsupportedModel(f"expected a square kernel/stride/padding, got {tuple(v)}")
        return int(v[0])
    return int(v)


def layer_of(m: nn.Module, path: str) -> dict:
    """One leaf module as a plain dict."""
    for dim, cls in _CONV.items():
        if type(m) is cls:
            if m.groups != 1 or _int(m.dilation) != 1 or isinstance(m.padding, str):
                raise UnsupportedModel(f"{path}: grouped, dilated or string-padded convs are not supported")
            d = {"kind": "conv", "dim": dim, "in": m.in_channels, "out": m.out_channels,
                 "kernel": _int(m.kernel_size), "stride": _int(m.stride),
                 "padding": _int(m.padding), "bias": m.bias is not None}
            return {**d, "padding_mode": m.padding_mode} if m.padding_mode != "zeros" else d
    for dim, cls in _BN.items():
        if type(m) is cls:
            return {"kind": "bn", "dim": dim, "num": m.num_features, "eps": m.eps,
                    "momentum": m.momentum, "affine": m.affine}
    for (dim, op), cls in _POOL.items():
        if type(m) is cls:
            if getattr(m, "ceil_mode", False) or _int(getattr(m, "dilation", 1)) != 1:
                raise UnsupportedModel(f"{path}: ceil_mode or dilated pooling is not supported")
            if getattr(m, "divisor_override", None):
                raise UnsupportedModel(f"{path}: average pooling with divisor_override is not supported")
            stride = m.stride if m.stride is not None else m.kernel_size
            d = {"kind": "pool", "dim": dim, "op": op, "kernel": _int(m.kernel_size),
                 "stride": _int(stride), "padding": _int(m.padding)}
            return {**d, "count_include_pad": False} if not getattr(m, "count_include_pad", True) else d
    for (dim, op), cls in _GPOOL.items():
        if type(m) is cls:
            if _int(m.output_size) != 1:
                raise UnsupportedModel(f"{path}: adaptive pooling must have output size 1")
            return {"kind": "gpool", "dim": dim, "op": op}
    for name, cls in ACTIVATIONS.items():
        if type(m) is cls:
            # the settings that change what it computes, where they differ from the default
            kw = {k: getattr(m, k) for k, v in ACTIVATION_SETTINGS.get(name, {}).items() if getattr(m, k) != v}
            return {"kind": "act", "fn": name, **({"kwargs": kw} if kw else {})}
    if type(m) is nn.Flatten:
        return {"kind": "flatten"}
    if type(m) is nn.Linear:
        return {"kind": "linear", "in": m.in_features, "out": m.out_features, "bias": m.bias is not None}
    if type(m) is nn.Dropout:
        return {"kind": "dropout", "p": m.p}
    supported = "Conv1d/2d, BatchNorm1d/2d, Max/AvgPool, AdaptiveMax/AvgPool(1), Flatten, Linear, Dropout, " + ", ".join(ACTIVATIONS)
    raise UnsupportedModel(f"{path or 'model'}: {type(m).__name__} is not supported by the sequential search space (supported: {supported})")


def module_to_layers(model: nn.Module) -> list[dict]:
    """Flatten nested nn.Sequential containers into a layer list."""
    if not isinstance(model, nn.Sequential):
        raise UnsupportedModel(f"expected an nn.Sequential, got {type(model).__name__}")
    out: list[dict] = []

    def walk(seq: nn.Sequential, prefix: str):
        for name, child in seq.named_children():
            path = f"{prefix}{name}"
            if isinstance(child, nn.Sequential):
                walk(child, path + ".")
            else:
                out.append(layer_of(child, path))

    walk(model, "")
    return out


def _check_window(d: dict) -> None:
    """A conv's or pool's kernel, stride and padding as a module can have them: torch builds a conv of
    stride 0 or padding 100000 and fails (or fills the memory: 77 GB asked) only when it runs
    (helper-97: tracebacks from a received arch.json). Padding past the kernel adds only outputs that
    see nothing but zeros; a pool allows half its kernel."""
    kernel, stride, padding = d["kernel"], d["stride"], d["padding"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (kernel, stride, padding)):
        raise ValueError(f"{d['kind']} kernel, stride and padding: expected whole numbers, got {kernel!r}, {stride!r}, "
                         f"{padding!r}")
    most = kernel if d["kind"] == "conv" else kernel // 2
    if kernel < 1 or stride < 1 or not 0 <= padding <= most:
        raise ValueError(f"{d['kind']} kernel {kernel}, stride {stride}, padding {padding}: expected kernel and stride "
                         f"at least 1 and padding from 0 to {'the kernel' if d['kind'] == 'conv' else 'half the kernel'}")


def make_layer(d: dict) -> nn.Module:
    k = d["kind"]
    if k in ("conv", "pool"):
        _check_window(d)
    if k == "conv":
        return _CONV[d["dim"]](d["in"], d["out"], d["kernel"], d["stride"], d["padding"], bias=d["bias"],
                               padding_mode=d.get("padding_mode", "zeros"))
    if k == "bn":
        return _BN[d["dim"]](d["num"], eps=d["eps"], momentum=d["momentum"], affine=d["affine"])
    if k == "pool":
        extra = {"count_include_pad": False} if d.get("count_include_pad") is False else {}
        return _POOL[d["dim"], d["op"]](d["kernel"], d["stride"], d["padding"], **extra)
    if k == "gpool":
        return _GPOOL[d["dim"], d["op"]](1)
    if k == "act":
        return ACTIVATIONS[d["fn"]](**d.get("kwargs", {}))
    if k == "flatten":
        return nn.Flatten()
    if k == "linear":
        return nn.Linear(d["in"], d["out"], bias=d["bias"])
    if k == "dropout":
        return nn.Dropout(d["p"])
    raise ValueError(f"unknown layer kind {k!r}")


def layers_to_module(layers: list[dict]) -> nn.Sequential:
    return nn.Sequential(*(make_layer(d) for d in layers))


def layer_params(d: dict) -> int:
    k = d["kind"]
    if k == "conv":
        return d["in"] * d["out"] * d["kernel"] ** d["dim"] + (d["out"] if d["bias"] else 0)
    if k == "linear":
        return d["in"] * d["out"] + (d["out"] if d["bias"] else 0)
    if k == "bn":
        return 2 * d["num"] if d["affine"] else 0
    return 0


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


@dataclass
class _Walk:
    """The student's layer list plus, per kept weight layer, the teacher indices it took."""

    layers: list[dict]
    flops: int
    picks: list[tuple[int, list[int], list[int]]]  # (teacher layer index, out_sel, in_sel; -1 = zero)
    error: str | None = None


class SequentialSpace(SearchSpace):
    """Search space over a plain sequential network."""

    def __init__(self, teacher: nn.Module, input_shape, ratios=None):
        kwargs = {} if ratios is None else {"ratios": tuple(ratios)}
        super().__init__(teacher=teacher, input_shape=tuple(input_shape), **kwargs)
        self.layers = module_to_layers(teacher)
        self.modules = [m for m in _leaves(teacher)]
        if len(self.input_shape) - 1 not in (1, 2) and self.layers[0]["kind"] != "flatten":
            raise UnsupportedModel(f"expected an input shape (C, L) or (C, H, W), got {self.input_shape}")
        self._group_units()
        check_reproduces(teacher, lambda: self.build(self.identity()), self.input_shape, "the sequential search space")

    # -- units --------------------------------------------------------------------------------
    def _group_units(self):
        primary = {"conv", "linear", "pool"}
        self.unit_of: list[int | None] = []
        starts: list[int] = []
        for i, d in enumerate(self.layers):
            if d["kind"] in primary:
                starts.append(i)
                self.unit_of.append(len(starts) - 1)
            elif d["kind"] in {"bn", "act", "dropout"} and starts and self.unit_of[-1] is not None:
                self.unit_of.append(len(starts) - 1)
            else:
                self.unit_of.append(None)  # flatten / global pool / leading layers: always kept
        weight_layers = [i for i in starts if self.layers[i]["kind"] in {"conv", "linear"}]
        if not weight_layers or self.layers[weight_layers[-1]]["kind"] != "linear":
            raise UnsupportedModel("expected the network to end with a Linear output layer")
        self.output_layer = weight_layers[-1]
        # Spatial sizes matter when a Flatten feeds a Linear without a global pool first.
        gpool_at = next((i for i, d in enumerate(self.layers) if d["kind"] == "gpool"), None)
        flatten_at = next((i for i, d in enumerate(self.layers) if d["kind"] == "flatten"), None)
        spatial_fixed = flatten_at is not None and (gpool_at is None or gpool_at > flatten_at)
        shapes = self._teacher_shapes()
        units = []
        for u, i in enumerate(starts):
            d = self.layers[i]
            own = [j for j, uo in enumerate(self.unit_of) if uo == u]
            params = sum(layer_params(self.layers[j]) for j in own)
            resizes = shapes[i][1:] != shapes[i + 1][1:]
            name = f"{d['kind']}{i}"
            if i == self.output_layer:
                units.append(Unit(name=name, kind="linear", width=d["out"], params=params, removable=False,
                                  shrinkable=False, why_fixed="it is the output layer"))
            elif d["kind"] == "pool":
                # Removing a pool saves no parameters and multiplies the FLOPs of every later layer;
                # with Flatten->Linear it also breaks the classifier. N2N kept pools fixed too.
                why = ("it changes the spatial size the classifier expects" if spatial_fixed
                       else "it saves no parameters and multiplies the cost of every later layer")
                units.append(Unit(name=name, kind="pool", width=shapes[i][0], params=params, removable=False,
                                  shrinkable=False, kernel=d["kernel"], stride=d["stride"], padding=d["padding"],
                                  why_fixed=why))
            elif d["kind"] == "conv":
                why = "it changes the spatial size the classifier expects" if (resizes and spatial_fixed) else ""
                units.append(Unit(name=name, kind="conv", width=d["out"], params=params, removable=not why,
                                  shrinkable=True, kernel=d["kernel"], stride=d["stride"], padding=d["padding"],
                                  why_fixed=why))
            else:
                units.append(Unit(name=name, kind="linear", width=d["out"], params=params, removable=True, shrinkable=True))
        self.units = units
        self.starts = starts

    def _teacher_shapes(self) -> list[tuple]:
        """Activation shape (channels, *spatial) before each layer, plus the final one.

        Also records `teacher_block[i]`: how many features per channel layer i's input has (the
        spatial size when a Flatten came before it with no weight layer between, else 1)."""
        shape, block = tuple(self.input_shape), 1
        out, self.teacher_block = [shape], []
        for d in self.layers:
            self.teacher_block.append(block)
            if d["kind"] == "flatten":
                block = shape_spatial(shape)
            elif d["kind"] in {"conv", "linear"}:
                block = 1
            shape = _next_shape(d, shape)
            out.append(shape)
        return out

    # -- the walk shared by params/flops/build -------------------------------------------------
    def _walk(self, spec: StudentSpec, with_picks: bool) -> _Walk:
        removed = set(spec.removed)
        widths = self.widths(spec)
        shape = tuple(self.input_shape)  # (C, *spatial) of the current activation
        block = 1  # after a Flatten, each channel is a block of `block` features
        layers, picks, flops = [], [], 0
        src, src_sel = "input", list(range(shape[0]))  # who produced the current activation
        teacher_src = "input"  # who produced the activation the next teacher layer was trained on
        for i, d in enumerate(self.layers):
            u = self.unit_of[i]
            if d["kind"] in {"conv", "linear"}:
                expected, teacher_src = teacher_src, u
            if u is not None and u in removed:
                continue
            d, k = dict(d), d["kind"]
            if k in {"conv", "linear"}:
                out_w = widths[u]
                if with_picks:
                    w = self.modules[i].weight  # (out, in, *kernel) or (out, in)
                    out_sel = list(range(d["out"])) if out_w == d["out"] else top_l1(w, out_w, 0)
                    if src == expected:
                        in_sel = _expand(src_sel, block)
                    else:  # re-fit to an activation this layer was not trained on
                        unit = block if self.teacher_block[i] == block else 1
                        exp_in = d["in"] // unit
                        per_in = w.detach().abs().reshape(d["out"], exp_in, -1).sum(dim=(0, 2))  # (exp_in,)
                        have = shape[0] // unit
                        keep = min(have, exp_in)
                        top = sorted(torch.topk(per_in, keep).indices.tolist())
                        in_sel = _expand(top + [-1] * (have - keep), unit)
                    picks.append((i, out_sel, in_sel))
                    src_sel = out_sel
                src = u
                d["in"], d["out"] = shape[0], out_w
                nxt = _next_shape(d, shape)
                if min(nxt[1:], default=1) < 1:
                    return _Walk(layers, flops, picks, f"layer {i} ({k}) gets a spatial size of zero")
                flops += out_w * shape_spatial(nxt) * shape[0] * (d["kernel"] ** d["dim"] if k == "conv" else 1)
                block = 1
            elif k == "bn":
                d["num"] = shape[0]
                nxt = shape
            else:
                nxt = _next_shape(d, shape)
                if min(nxt[1:], default=1) < 1:
                    return _Walk(layers, flops, picks, f"layer {i} ({k}) gets a spatial size of zero")
                if k == "flatten":
                    block = shape_spatial(shape)
            shape = nxt
            layers.append(d)
        return _Walk(layers, flops, picks)

    # -- SearchSpace API ----------------------------------------------------------------------
    def _check(self, spec: StudentSpec) -> str | None:
        convs = [u for u, unit in enumerate(self.units) if unit.kind == "conv"]
        if convs and all(u in spec.removed for u in convs):
            return "every conv layer is removed; a student keeps at least one"
        walk = self._walk(spec, with_picks=False)
        if walk.error:
            return walk.error
        flat = _flatten_width(self.layers, self.input_shape)
        if flat is not None:
            student_flat = _flatten_width(walk.layers, self.input_shape)
            t_spatial, s_spatial = flat[1], student_flat[1]
            if t_spatial != s_spatial:
                return f"the classifier expects a spatial size of {t_spatial} after flattening, the student gives {s_spatial}"
        return None

    def params(self, spec: StudentSpec) -> int:
        return sum(layer_params(d) for d in self._walk(spec, with_picks=False).layers)

    def flops(self, spec: StudentSpec) -> int:
        return self._walk(spec, with_picks=False).flops

    def arch(self, spec: StudentSpec) -> dict:
        return {"family": "sequential", "input_shape": list(self.input_shape), "layers": self._walk(spec, False).layers}

    def _build(self, spec: StudentSpec, inherit: bool) -> nn.Module:
        walk = self._walk(spec, with_picks=inherit)
        student = layers_to_module(walk.layers)
        if not inherit:
            return student
        picks = {i: (o, s) for i, o, s in walk.picks}
        kept = [i for i in range(len(self.layers)) if self.unit_of[i] is None or self.unit_of[i] not in spec.removed]
        last_out: list[int] | None = None
        for new, (i, d) in zip(student, ((i, self.layers[i]) for i in kept)):
            old = self.modules[i]
            if d["kind"] in {"conv", "linear"}:
                out_sel, in_sel = picks[i]
                w = old.weight.detach()[out_sel]  # (out', in, *kernel) or (out', in)
                new.weight.copy_(_take_inputs(w, in_sel))
                if old.bias is not None:
                    new.bias.copy_(old.bias.detach()[out_sel])
                last_out = out_sel
            elif d["kind"] == "bn":
                sel = last_out if last_out is not None and len(last_out) == new.num_features else list(range(new.num_features))
                for name in ("weight", "bias", "running_mean", "running_var"):
                    src = getattr(old, name)
                    if src is not None:
                        getattr(new, name).copy_(src.detach()[sel])
                new.num_batches_tracked.copy_(old.num_batches_tracked)
        return student


    @torch.no_grad()
    def reconstruct(self, student: nn.Sequential, spec: StudentSpec, x: torch.Tensor, ridge: float = 1e-3) -> nn.Sequential:
        """Least-squares re-fit of an inherited student's conv/linear layers, in order (ThiNet/AMC do
        this for channels): given what the student's earlier layers now compute on `x` (N, *input),
        each layer's weights are chosen so that its output matches the teacher's output of the same
        layer on the kept channels. After a removal, the next layer then reproduces what the teacher
        computed there as closely as a linear map of its new input can, instead of starting near chance."""
        walk = self._walk(spec, with_picks=True)
        out_sel = {i: o for i, o, _ in walk.picks}
        kept = [i for i in range(len(self.layers)) if self.unit_of[i] is None or self.unit_of[i] not in spec.removed]
        t_out, h = {}, x
        for i, m in enumerate(self.modules):  # the teacher's output of every weight layer on x
            h = m(h)
            if i in out_sel:
                t_out[i] = h
        s = x
        for new, i in zip(student, kept):
            if i in out_sel:
                _fit_layer(new, s, t_out[i][:, out_sel[i]], ridge)
            s = new(s)
        return student


def _fit_layer(layer: nn.Module, inp: torch.Tensor, target: torch.Tensor, ridge: float) -> None:
    """Ridge least squares: `layer`'s weights (and bias) so that layer(inp) ≈ target."""
    if isinstance(layer, nn.Linear):
        X, Y = inp, target  # (N, in), (N, out)
    else:  # conv: each output position is a linear map of its input patch
        k, st, p = layer.kernel_size, layer.stride, layer.padding
        if isinstance(layer, nn.Conv1d):  # as a 2D conv of height 1
            inp, k, st, p = inp.unsqueeze(2), (1, k[0]), (1, st[0]), (0, p[0])
            target = target.unsqueeze(2)
        cols = nn.functional.unfold(inp, k, padding=p, stride=st)  # (N, in*k, positions)
        X = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (N*positions, in*k)
        Y = target.flatten(2).transpose(1, 2).reshape(-1, target.shape[1])  # (N*positions, out)
    if layer.bias is not None:
        X = torch.cat([X, torch.ones(len(X), 1)], 1)
    X, Y = X.double(), Y.double()
    gram = X.T @ X  # (F, F)
    gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    W = torch.linalg.solve(gram, X.T @ Y).T.float()  # (out, F)
    if layer.bias is not None:
        W, b = W[:, :-1], W[:, -1]
        layer.bias.copy_(b)
    layer.weight.copy_(W.reshape(layer.weight.shape))


def shape_spatial(shape: tuple) -> int:
    return math.prod(shape[1:]) if len(shape) > 1 else 1


def _expand(sel: list[int], block: int) -> list[int]:
    """Channel indices to feature indices of a flattened (C, block) activation; -1 stays -1."""
    if block == 1:
        return sel
    return [c * block + j if c >= 0 else -1 for c in sel for j in range(block)]


def _take_inputs(w: torch.Tensor, in_sel: list[int]) -> torch.Tensor:
    """Columns `in_sel` of w along dim 1; -1 gives a zero column."""
    idx = torch.tensor([max(i, 0) for i in in_sel], dtype=torch.long)
    out = w.index_select(1, idx).clone()
    zero = torch.tensor([i < 0 for i in in_sel])
    out[:, zero] = 0
    return out


def _next_shape(d: dict, shape: tuple) -> tuple | None:
    k = d["kind"]
    if k == "conv":
        return (d["out"], *(_out_size(s, d["kernel"], d["stride"], d["padding"]) for s in shape[1:]))
    if k == "pool":
        return (shape[0], *(_out_size(s, d["kernel"], d["stride"], d["padding"]) for s in shape[1:]))
    if k == "gpool":
        return (shape[0], *(1 for _ in shape[1:]))
    if k == "flatten":
        return (math.prod(shape),)
    if k == "linear":
        return (d["out"],)
    return shape


def _flatten_width(layers: list[dict], input_shape) -> tuple[int, int] | None:
    """(channels, spatial) entering the first Flatten, or None if there is none."""
    shape = tuple(input_shape)
    for d in layers:
        if d["kind"] == "flatten":
            return shape[0], shape_spatial(shape)
        shape = _next_shape(d, shape)
    return None


def _leaves(model: nn.Sequential):
    for child in model.children():
        if isinstance(child, nn.Sequential):
            yield from _leaves(child)
        else:
            yield child
