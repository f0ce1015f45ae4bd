"""Any other nn.Module, through torch-pruning's dependency graph.

Width decisions are torch-pruning *groups*: the output channels of a conv or linear layer together
with every layer coupled to them (next layers' inputs, BatchNorms, both sides of residual adds and
concatenations). One shrink unit per group; the channels kept are those with the largest L1
importance summed over the whole group. Removal decisions are *blocks*: submodules held in an
nn.Sequential / nn.ModuleList whose output has the shape of their input, replaced by nn.Identity.
The output layer (the last nn.Linear forward calls, or `output_layer`) is never touched. Modules no group or block
reaches are listed in `untouched` with the reason.

The student is the teacher's own class with some blocks replaced and some groups pruned, so it is
rebuilt from JSON as: the user's factory (``"package.module:function"``), the removed block names,
and torch-pruning's pruning history. Unlike the other families, parameter and FLOP counts come from
building the student (cached per spec): a traced graph has no closed form.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.util
import math
import os
import re
import site
import sys
import sysconfig

import torch
from torch import nn

from .base import INPLACE, SearchSpace, StudentSpec, Unit, UnsupportedModel, changes_its_input, count_macs, count_params


def _tp():
    try:
        import torch_pruning
    except ImportError:  # pragma: no cover - a declared dependency
        raise UnsupportedModel("pruning arbitrary modules needs the torch-pruning package") from None
    return torch_pruning


# Libraries, not model code: functions of theirs that a folder could name as its "factory" load pickles
# (torch:load, numpy:load, joblib:load, pandas:read_pickle), fetch and run code (torch.hub:load), or run
# n2n itself, with arguments the folder chooses (helper-97: an approved torch:load unpickled a payload).
# Refused whatever --allow-factory says; the standard library is too.
LIBRARIES = frozenset({
    "torch", "numpy", "scipy", "pandas", "sklearn", "joblib", "dill", "cloudpickle", "yaml", "ruamel", "h5py",
    "n2n", "agents", "envs", "search_spaces", "ray", "transformers", "huggingface_hub", "tokenizers", "safetensors",
    "optuna", "gymnasium", "onnx", "onnxruntime", "mnist1d", "matplotlib", "PIL", "IPython", "pytest", "_pytest",
    "pip", "setuptools", "pkg_resources", "fsspec", "s3fs", "boto3", "botocore", "pyarrow", "requests", "urllib3",
    "keras", "tensorflow", "jax", "dask", "cython", "Cython", "numba",
})


def _called_as(path: str, kwargs: dict | None) -> str:
    """How n2n would call the factory, every argument in full: they are the folder's, so an approval is
    of them too (helper-98: cut at 300 characters, a payload hid past the cut)."""
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) if isinstance(kwargs, dict) else \
        f"**{kwargs!r}" if kwargs else ""
    return f"{path.replace(':', '.')}({args})"


_FACTORY = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*", re.ASCII)


def _not_model_code(top: str) -> str | None:
    """Whose code a top-level module is where it cannot be a model factory of the user's, or None."""
    if top == "__main__":  # the program running n2n (helper-98: under the n2n script, n2n.cli:main)
        return "the program running n2n"
    if top in sys.stdlib_module_names:  # builtins too (helper-76: it offered --allow-factory os:system)
        return "Python's standard library"
    return f"the library {top!r}" if top in LIBRARIES else None


def _installed_at(top: str) -> str | None:
    """Where `top` lies among installed packages (site-packages, the standard library's folders), found
    without running any of its code; None for the user's own code (a folder, an editable install)."""
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    places = [spec.origin] if spec.origin not in (None, "built-in", "frozen") else list(spec.submodule_search_locations or [])
    paths = sysconfig.get_paths()
    roots = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")} | set(site.getsitepackages())
    roots |= {site.getusersitepackages()}
    for place in places:
        for root in filter(None, roots):
            if os.path.commonpath([os.path.abspath(place), os.path.abspath(root)]) == os.path.abspath(root):
                return place
    return None


def load_factory(path: str, allowed=(), kwargs: dict | None = None):
    """``"package.module:function"`` -> the function (the user's own code, imported like any module).

    A model folder is data: the factory it names is imported and called only when the user named that
    exact factory in `allowed` (``--allow-factory``), and nothing of it is imported before that check.
    A function of a library (LIBRARIES), of the standard library or of ``__main__`` is never called, nor
    one that its module only re-exports (``pylab:load`` is numpy's); for a function of another
    installed package n2n suggests no flag (a folder may name any of them, with arguments of its
    choosing: ``sympy:sympify`` evaluates one). `kwargs`: the folder's arguments, shown where refused."""
    if not isinstance(path, str) or not _FACTORY.fullmatch(path):  # (".torch:load" was a TypeError, helper-98)
        raise UnsupportedModel(f"factory: expected 'package.module:function' of Python names, got {path!r}")
    mod, _, fn = path.partition(":")
    top = mod.split(".")[0]
    if whose := _not_model_code(top):
        raise UnsupportedModel(f"this model folder names {path!r}, a function of {whose}, as the factory that builds "
                               f"its model, to be called as {_called_as(path, kwargs)}: a factory is model code of your "
                               f"own, and n2n calls no function of {whose} for a folder; the folder is not to be loaded")
    if path not in set(allowed):
        if installed := _installed_at(top):  # (helper-98: sympy:sympify, mako, stable_baselines3's load_from_pkl)
            raise UnsupportedModel(
                f"this model folder names the factory {path!r}, a function of the installed package {top!r} "
                f"({installed}), to be called as {_called_as(path, kwargs)}: a folder from someone else may name any "
                f"installed function, with arguments of its choosing, so n2n calls one only where you allowed it by "
                f"name, knowing it builds a model (README, Safety); the folder is not loaded")
        raise UnsupportedModel(
            f"this model folder names the factory {path!r}, which n2n would import and call as "
            f"{_called_as(path, kwargs)}; it does so only for a factory you name: pass --allow-factory {path} "
            f"(Python: factories=[{path!r}]) if you trust that code with those arguments")
    where = os.environ.get("N2N_FACTORY_PATH")  # the folder `n2n --allow-factory` ran in
    if where:
        _FolderFinder.allow(where, mod.split(".")[0])
    try:
        found = getattr(importlib.import_module(mod), fn)
    except ModuleNotFoundError as e:
        # a module the factory imports that lies in the folder, beside it, but is not part of it
        missing, top = (e.name or "").split(".")[0], mod.split(".")[0]
        beside = where and missing != top and any(os.path.exists(os.path.join(where, missing + end)) for end in (".py", ""))
        if beside:
            local = (f"; from {where} n2n imports only {top!r} itself (a package may import its own modules), so "
                     f"install what it imports (pip install -e .) or make it one package")
        elif e.name == top:  # (helper-49/51: a printed resume command, run from another folder)
            local = (f"; n2n looks for {top!r} in the folder the command runs in{f' ({where})' if where else ''} and "
                     f"among installed packages: run it from the folder that holds {top!r}, or install it")
        elif (e.name or "").startswith(top + "."):  # the package is there, its module is not
            local = f"; {top!r} was found, but it holds no module {e.name!r}"
        else:
            local = ""
        raise UnsupportedModel(f"factory {path!r} cannot be imported: {e}{local}") from None
    except (ImportError, AttributeError) as e:
        raise UnsupportedModel(f"factory {path!r} cannot be imported: {e}") from None
    # where it is defined, not where it is named: a re-export (pylab:load is numpy's load, a package of the
    # user's may `from torch import load`) is judged, and named, by its own module (helper-98)
    defined = getattr(found, "__module__", None)
    if not isinstance(defined, str) or defined.split(".")[0] != top:
        whose = _not_model_code(defined.split(".")[0]) if isinstance(defined, str) else None
        raise UnsupportedModel(f"factory {path!r} is {getattr(found, '__qualname__', fn)!r} of {defined!r}"
                               f"{f', {whose}' if whose else ''}, which {mod!r} only re-exports: n2n calls a factory "
                               f"only from the package that defines it; the folder is not loaded")
    return found


def call_factory(path: str, allowed=(), kwargs: dict | None = None) -> nn.Module:
    """The module the user's factory builds (see `load_factory`), checked to be one: a factory that
    returns its class, or a (model, extra) tuple, failed later in a traceback about load_state_dict."""
    model = load_factory(path, allowed, kwargs)(**(kwargs or {}))
    if not isinstance(model, nn.Module):
        what = f"the class {model.__name__}" if isinstance(model, type) else f"a {type(model).__name__}"
        raise UnsupportedModel(f"factory {path!r}: expected it to return a torch.nn.Module instance, it returned {what}"
                               f"{' (call the class in the factory)' if isinstance(model, type) else ''}")
    return model


class _FolderFinder:
    """Finds the factories' top-level modules, and nothing else, in the folder n2n ran in; last on
    sys.meta_path, so an installed package of the same name wins. The folder itself never goes on
    sys.path: there every module a library merely probes for (tabulate, psutil, ...) would be
    imported from whatever .py files lie in it."""

    _instance = None

    def __init__(self):
        self.names: dict[str, str] = {}  # top-level module name -> folder

    @classmethod
    def allow(cls, folder: str, name: str) -> None:
        if cls._instance is None or cls._instance not in sys.meta_path:
            cls._instance = cls()
            sys.meta_path.append(cls._instance)
        cls._instance.names[name] = folder

    def find_spec(self, fullname, path=None, target=None):
        folder = self.names.get(fullname)  # submodules come through their package's __path__
        if folder is None:
            return None
        from importlib.machinery import PathFinder

        return PathFinder.find_spec(fullname, [folder])

    def invalidate_caches(self):
        pass


def _shape_preserving_blocks(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Children of Sequential/ModuleList containers whose single tensor output has their input's shape."""
    shapes, hooks = {}, []
    candidates = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Sequential, nn.ModuleList)):
            for cname, child in m.named_children():
                full = f"{name}.{cname}" if name else cname
                if any(p.numel() for p in child.parameters()) and list(child.children()):
                    candidates[full] = child

    def hook(name):
        def f(mod, inp, out):
            if len(inp) == 1 and torch.is_tensor(inp[0]) and torch.is_tensor(out):
                shapes[name] = (tuple(inp[0].shape), tuple(out.shape))
        return f

    for name, m in candidates.items():
        hooks.append(m.register_forward_hook(hook(name)))
    with torch.no_grad():
        model(example)
    for h in hooks:
        h.remove()
    return [n for n in candidates if n in shapes and shapes[n][0] == shapes[n][1]]


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


class GenericSpace(SearchSpace):
    fallback: str | None = None  # why the teacher's own family did not take it (set by space_for)

    def __init__(self, teacher: nn.Module, input_shape, ratios=None, factory: dict | None = None,
                 output_layer: str | None = None):
        kwargs = {} if ratios is None else {"ratios": tuple(ratios)}
        super().__init__(teacher=teacher.eval(), input_shape=tuple(input_shape), **kwargs)
        tp = _tp()
        self.factory = factory  # {"factory": "pkg.mod:fn", "kwargs": {...}}: needed to export students
        self.example = _example(self.input_shape)  # (1, *input_shape)
        if changes_its_input(teacher, self.example):
            raise UnsupportedModel(f"{type(teacher).__name__}: {INPLACE}")
        names = {m: n for n, m in teacher.named_modules()}
        with torch.no_grad():
            self.teacher_out = teacher(self.example)  # what every student's outputs must be shaped as
        called = _forward_order(teacher, self.example)
        _check_training_mode(teacher, self.example, called)
        order = {n: i for i, n in enumerate(called)}
        self.output_layer = output_layer or _output_layer(teacher, called, self.example)
        layer = dict(teacher.named_modules()).get(self.output_layer) if isinstance(self.output_layer, str) else None
        if not isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd)):
            raise UnsupportedModel(f"output_layer: expected the name of the nn.Linear or conv layer that gives the "
                                   f"model's outputs, got {self.output_layer!r}, which is {type(layer).__name__ if layer is not None else 'no layer of it'}")
        try:
            dg = tp.DependencyGraph().build_dependency(teacher, self.example, verbose=False)
        except Exception as e:
            raise UnsupportedModel(f"torch-pruning could not trace {type(teacher).__name__}: {type(e).__name__}: {e}") from None
        ignored = [teacher.get_submodule(self.output_layer)]
        # a parameter a module holds itself (ConvNeXt's layer scale) is pruned with its group: its module is reached
        owners = {p: n for n, m in teacher.named_modules() for p in m.parameters(recurse=False)}
        self.blocks = _shape_preserving_blocks(teacher, self.example)
        groups = []  # (name: earliest member in forward order, root module name, member names)
        self.roots: dict[str, list[str]] = {}  # group root -> every conv/linear whose outputs it prunes
        grouped, held = {}, {}  # groups held out: their channels would be kept unlike the teacher's (helper-56)
        self.sliced: set[str] = set()  # roots of groups whose channels pass a slice that drops some: checked by a build
        tied = _tied(teacher)
        try:
            all_groups = list(dg.get_all_groups(ignored_layers=ignored, root_module_types=(nn.modules.conv._ConvNd, nn.Linear)))
        except Exception as e:  # (helper-81: a GRU's was an IndexError traceback from inside torch-pruning)
            raise UnsupportedModel(f"torch-pruning could not group the channels of {type(teacher).__name__}: "
                                   f"{type(e).__name__}: {e}") from None
        for g in all_groups:
            layers = {names[d.target.module] for d, _ in g if d.target.module in names}
            members = layers | {owners[d.target.module] for d, _ in g if d.target.module in owners}
            if why := _unfaithful(g, members, names, tied):  # pruned, it would compute something else
                for d, _ in g:  # the layers whose widths these are, said whatever else reaches them
                    if isinstance(d.target.module, (nn.modules.conv._ConvNd, nn.Linear)) and dg.is_out_channel_pruning_fn(d.handler):
                        grouped.setdefault(names[d.target.module], why)
                for m in sorted(members):
                    held.setdefault(m, why)
                continue
            split = sorted((m for m in members if _in_groups(teacher.get_submodule(m))), key=lambda n: (order.get(n, 1e9), n))
            if split:
                # torch-pruning keeps the same input channels in every group of a grouped conv and moves
                # channels between groups, and a GroupNorm's groups would mix channels the teacher normalised
                # apart (helper-58): the student would start from scrambled weights
                what = _in_groups(teacher.get_submodule(split[0]))
                for d, _ in g:
                    m = names.get(d.target.module)
                    if isinstance(d.target.module, (nn.modules.conv._ConvNd, nn.Linear)) and dg.is_out_channel_pruning_fn(d.handler):
                        grouped[m] = (f"a {what} {split[0]}: pruning does not keep its groups' channels apart; left at "
                                      f"full width" if m == split[0] else f"its outputs share channels with the {what} "
                                      f"{split[0]}, whose groups pruning does not keep apart; left at full width")
                for m in members - set(grouped):  # its BatchNorms, say (said only where no other group reaches them)
                    held.setdefault(m, f"its channels stay at full width with the {what} {split[0]}'s")
                continue
            first = min(layers, key=lambda n: order.get(n, 1e9))
            root = names[g[0].dep.target.module]
            if any(isinstance(d.target.module, tp.ops._SliceOp) and _cuts(d.target.module) for d, _ in g):
                self.sliced.add(root)  # faithful along positions (a Conv1d's causal trim), not always along channels
            self.roots[root] = sorted(
                {names[d.target.module] for d, _ in g if d.target.module in names and dg.is_out_channel_pruning_fn(d.handler)
                 and isinstance(d.target.module, (nn.modules.conv._ConvNd, nn.Linear))}, key=lambda n: order.get(n, 1e9))
            groups.append((first, root, members))
        touched = set().union(*(m for *_, m in groups)) if groups else set()
        # units in forward order: a block, then the groups that live inside it
        units, self.group_root, block_unit = [], {}, {}
        items = [(order.get(b, 1e9) - 0.5, "block", b, None, b) for b in self.blocks]
        items += [(order.get(first, 1e9), "group", root, members, first) for first, root, members in groups]
        for _, kind, name, members, label in sorted(items, key=lambda t: t[0]):
            if kind == "block":
                block_unit[name] = len(units)
                params = sum(p.numel() for p in teacher.get_submodule(name).parameters())
                units.append(Unit(name=name, kind="block", width=0, params=params, removable=True, shrinkable=False,
                                  skip_start=True, skip_end=True))
                continue
            # what the unit's features describe: the first layer, in forward order, whose outputs the group
            # prunes (helper-56: the group's root, an SE block's gate, made a 3x3 conv a 1-wide linear)
            root = teacher.get_submodule((self.roots[name] or [name])[0])
            conv = isinstance(root, nn.modules.conv._ConvNd)
            # a group is moot once a block holding all of its layers is removed
            parent = next((u for b, u in block_unit.items() if all(m == b or m.startswith(b + ".") for m in members)), None)
            self.group_root[len(units)] = name
            weights = sum(teacher.get_submodule(m).weight.numel() for m in members
                          if getattr(teacher.get_submodule(m), "weight", None) is not None)
            units.append(Unit(name=label, kind="conv" if conv else "linear",
                              width=_out_width(root), params=weights,
                              removable=False, shrinkable=True, kernel=root.kernel_size[0] if conv else 1,
                              stride=root.stride[0] if conv else 1,
                              why_fixed="only shape-preserving blocks are removable", parent=parent))
        out = teacher.get_submodule(self.output_layer)
        units.append(Unit(name=self.output_layer, kind="linear" if isinstance(out, nn.Linear) else "conv",
                          width=getattr(out, "out_features", None) or out.out_channels,
                          params=sum(p.numel() for p in out.parameters()), removable=False, shrinkable=False,
                          why_fixed="it is the output layer"))
        self.units = units
        # channels pruned together in each group: a GLU's chunk(2) prunes channel c with c + n/2 (2), so
        # its widths go in steps of 2; 1 for almost every group. (helper-81: asked for 6 fewer of 32, the
        # GLU lost 12, and a unit said 19 wide was built 6 wide.)
        self.step = {i: len(dg.get_pruning_group(*self._root_of(teacher, (self.roots[name] or [name])[0]), idxs=[0])[0][1])
                     for i, name in self.group_root.items()}  # (of the layer pruned: helper-84)
        self.untouched = {  # modules holding parameters that no decision reaches
            n or "<model>": f"{type(m).__name__}: no prunable group or removable block includes its "
                            f"{', '.join(k for k, _ in m.named_parameters(recurse=False))}"
            for n, m in teacher.named_modules()
            if any(True for _ in m.parameters(recurse=False)) and n not in touched and n != self.output_layer
            and not any(n == b or n.startswith(b + ".") for b in self.blocks)
        }
        self.untouched.update({m: why for m, why in held.items() if m in self.untouched})  # (not its generic reason)
        for n, m in teacher.named_modules():  # no group is rooted at a recurrent layer: its hidden size stays
            if isinstance(m, nn.RNNBase) and n in touched and not any(n == b or n.startswith(b + ".") for b in self.blocks):
                self.untouched[n] = (f"{type(m).__name__}: its hidden size ({m.hidden_size}) stays as the teacher's; only "
                                     f"its input width follows the layer before it")  # (helper-81: said nowhere)
        self.untouched.update(grouped)
        self.untouched[self.output_layer] = "the output layer"
        self._cache: dict[str, tuple[int, int]] = {}
        self._fix_unbuildable()

    def _fix_unbuildable(self):
        """A unit no ratio of which builds (a LayerNorm over (C, H, W) after it, a `view` with its width
        written in) is fixed, and said in `untouched` (helper-56: offered, every proposal of it was
        refused, and a stage ended early on known specs). One build per unit where the smallest ratio
        builds, as it does for most."""
        for i, u in enumerate(self.units):
            if not u.shrinkable:
                continue
            why = None
            for r in sorted(x for x in self.ratios if x != 1.0):
                why = self._check(self.identity().with_ratios([r if j == i else 1.0 for j in range(self.n_units)]))
                if why is None:
                    break
            if why is not None:
                what = "every width of it changes the model's outputs" if why.startswith(CHANGES_OUTPUTS) else \
                    "no width of it builds"
                self.units[i] = dataclasses.replace(u, shrinkable=False, why_fixed=f"{what} ({why})")
                self.untouched[u.name] = f"{what}: {why}"
            elif self.group_root[i] in self.sliced and self._silenced_gap(i, r) > 1e-5:
                # GhostNet's cat(...)[:, :oup], oup written in: a narrower input shifts what it keeps (helper-81)
                why = "its channels pass a slice written into forward (x[:, :n]), which pruning misaligns"
                self.units[i] = dataclasses.replace(u, shrinkable=False, why_fixed=why)
                self.untouched[u.name] = f"{why}; left at full width"

    @torch.no_grad()
    def _silenced_gap(self, i: int, ratio: float) -> float:
        """How far (relative to the outputs' scale, where above 1) the student shrunk in unit i alone is
        from the teacher with the channels it drops silenced (their layers' output weights and biases
        zeroed); about 0 where its kept channels carry the teacher's own meaning (helper-56's test of a
        scrambled student), inf where the outputs' shapes differ."""
        tp = _tp()
        student, history = self._prune(self.identity().with_ratios([ratio if j == i else 1.0 for j in range(self.n_units)]))
        name, _, idxs = history[0]
        silenced = copy.deepcopy(self.teacher)
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(silenced, self.example, verbose=False)
        root, fn = self._root_of(silenced, name)
        for dep, dropped in dg.get_pruning_group(root, fn, idxs=list(idxs)):
            if dg.is_out_channel_pruning_fn(dep.handler):
                for p in (getattr(dep.target.module, "weight", None), getattr(dep.target.module, "bias", None)):
                    if isinstance(p, torch.Tensor) and p.dim() >= 1:
                        p[[j for j in dropped if j < p.shape[0]]] = 0
        x = torch.randn(8, *self.input_shape, generator=torch.Generator().manual_seed(1))  # (8, *input_shape)
        want, got = silenced.eval()(x), student.eval()(x)
        if got.shape != want.shape:
            return math.inf
        return (got - want).abs().max().item() / max(1.0, want.abs().max().item())

    # -- building ----------------------------------------------------------------------------------
    def _root_of(self, model: nn.Module, layer: str) -> tuple[nn.Module, object]:
        """The layer, the torch-pruning function that prunes its outputs."""
        tp, root = _tp(), model.get_submodule(layer)
        return root, tp.prune_conv_out_channels if isinstance(root, nn.modules.conv._ConvNd) else tp.prune_linear_out_channels

    def width_of(self, unit: int, ratio: float) -> int:
        k = getattr(self, "step", {}).get(unit, 1)  # (none yet while the units are made)
        return super().width_of(unit, ratio) if k == 1 else k * max(1, int(round(self.units[unit].width * ratio / k)))

    @torch.enable_grad()  # torch-pruning traces through autograd
    def _prune(self, spec: StudentSpec) -> tuple[nn.Module, list]:
        tp = _tp()
        student = copy.deepcopy(self.teacher)
        gone = set(spec.removed)
        for i in sorted(gone):
            _set_module(student, self.units[i].name, nn.Identity())
        dg = tp.DependencyGraph().build_dependency(student, self.example, verbose=False)
        imp = tp.importance.GroupMagnitudeImportance(p=1, group_reduction="sum", normalizer=None)
        for i, name in self.group_root.items():
            u = self.units[i]
            if u.parent in gone or spec.ratios[i] == 1.0:
                continue
            # prune through a layer of the group that survived the block removals
            removed = [self.units[j].name + "." for j in gone]
            alive = next((n for n in self.roots[name] if not any(n.startswith(r) for r in removed)), None)
            if alive is None:  # every layer writing these channels was removed with its block
                continue
            root, fn = self._root_of(student, alive)
            n = _out_width(root)
            group = dg.get_pruning_group(root, fn, idxs=list(range(n)))
            scores = imp(group)  # (n,) summed over the coupled layers
            want = n - self.width_of(i, spec.ratios[i])  # channels to drop
            order = torch.argsort(scores).tolist()  # least important first
            drop = order[:want]
            if self.step[i] > 1:  # each takes its partners with it: the longest run of the least important
                lo, hi = 0, want  # whose channels, partners counted, are no more than `want` (a bisection:
                while lo < hi:    # one look per channel made wide layers' builds 3x slower, helper-84)
                    mid = (lo + hi + 1) // 2
                    lo, hi = (mid, hi) if len(dg.get_pruning_group(root, fn, idxs=order[:mid])[0][1]) <= want else (lo, mid - 1)
                drop = order[:lo]
            if drop:
                dg.get_pruning_group(root, fn, idxs=sorted(drop)).prune()
            if (built := _out_width(root)) != n - want:  # partners of uneven counts: no student of a width the key does not say
                raise ValueError(f"{alive} would be {built} wide, not the {n - want} asked (its channels are pruned "
                                 f"together in uneven groups)")
        return student, dg.pruning_history()

    def _counts(self, spec: StudentSpec) -> tuple[int, int]:
        key = self.key(spec)
        if key not in self._cache:
            student, _ = self._prune(spec)
            with torch.no_grad():
                out = student(self.example)
            if torch.is_tensor(out) and out.shape != self.teacher_out.shape:  # (helper-81: the model's real
                # classifier, a 1x1 conv, was shrunk to fewer classes while a Linear gate inside was kept as "output")
                raise _ChangesOutputs(f"{CHANGES_OUTPUTS} {tuple(out.shape)}, the teacher's {tuple(self.teacher_out.shape)}")
            # not torch-pruning's count_ops_and_params: it adds normalisation, activation and bias
            # operations, so its "FLOPs" were not the multiply-accumulates the other families count
            self._cache[key] = (count_params(student), count_macs(student, self.example))
        return self._cache[key]

    def _check(self, spec: StudentSpec) -> str | None:
        try:
            self._counts(spec)
        except _ChangesOutputs as e:
            return str(e)
        except Exception as e:  # torch-pruning could not apply this combination
            return f"torch-pruning cannot build this student: {e}"
        return None

    def params(self, spec: StudentSpec) -> int:
        return self._counts(spec)[0]

    def flops(self, spec: StudentSpec) -> int:
        return self._counts(spec)[1]

    def arch(self, spec: StudentSpec) -> dict:
        _, history = self._prune(spec)
        return {"family": "pruned", "input_shape": list(self.input_shape), "base": self.factory,
                "removed_blocks": [self.units[i].name for i in spec.removed],
                "history": [[n, bool(o), [int(i) for i in idx]] for n, o, idx in history]}

    def _build(self, spec: StudentSpec, inherit: bool) -> nn.Module:
        student, _ = self._prune(spec)
        if not inherit:
            for m in student.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        return student


CHANGES_OUTPUTS = "its student's outputs would have shape"


class _ChangesOutputs(Exception):
    """A student that builds but whose outputs are not the teacher's (fewer classes)."""


def pruned_from_arch(arch: dict, factories=()) -> nn.Module:
    """Rebuild a pruned student: the user's factory (only if named in `factories`), removed blocks,
    then the pruning history."""
    base = arch.get("base")
    if not base or "factory" not in base:
        raise UnsupportedModel("this student came from an in-memory teacher with no factory; it cannot be rebuilt from JSON")
    tp = _tp()
    model = call_factory(base["factory"], factories, base.get("kwargs", {})).eval()
    for name in arch["removed_blocks"]:
        _set_module(model, name, nn.Identity())
    with torch.enable_grad():
        example = _example(arch["input_shape"])  # (1, *input_shape)
        dg = tp.DependencyGraph().build_dependency(model, example, verbose=False)  # (a load leaves torch's RNG as it was)
        dg.load_pruning_history([tuple(h) for h in arch["history"]])
    return model


def _out_width(layer: nn.Module) -> int:
    """A conv's out_channels, a Linear's out_features."""
    return layer.out_channels if isinstance(layer, nn.modules.conv._ConvNd) else layer.out_features


def _tied(model: nn.Module) -> dict[str, str]:
    """Module name -> the other module whose parameter it shares (tied weights)."""
    seen, tied = {}, {}  # id(parameter) -> (module name, module)
    for name, m in model.named_modules(remove_duplicate=False):
        for p in m.parameters(recurse=False):
            other, holder = seen.setdefault(id(p), (name, m))
            if holder is not m:  # (one module registered twice is pruned once, as one)
                tied.setdefault(name, other)
                tied.setdefault(other, name)
    return tied


def _unfaithful(group, members: set[str], names: dict, tied: dict[str, str]) -> str | None:
    """Why pruning this group's channels would change what the kept channels compute, or None. Each
    was a student that built and trained from weights no longer meaning what they did (helper-81)."""
    for d, _ in group:
        for m in (d.source.module, d.target.module):
            if isinstance(m, nn.MultiheadAttention):  # torch-pruning keeps num_heads: each head gets fewer dims
                return (f"its channels are the embedding of the nn.MultiheadAttention {names.get(m, '?')}, which pruning "
                        "splits into heads anew, at another scale; left at full width")
    shared = sorted(m for m in members if m in tied)
    if shared:  # pruning one module replaces its parameter, so the two would no longer be one
        return f"{shared[0]} shares its weights with {tied[shared[0]]} (tied), which pruning would untie; left at full width"
    return None


def _cuts(op) -> bool:
    """Whether a slice torch-pruning traced drops anything (`x[:, :n]`, a crop), not `x[:, :]`."""
    sizes = tuple(getattr(op.grad_fn, "_saved_self_sym_sizes", None) or ())
    if not sizes:  # nothing to judge by: as if it cut
        return True
    dim = op.dim % len(sizes)
    return not (op.start in (0, None) and op.step == 1 and (op.end is None or op.end >= sizes[dim]))


def _example(input_shape) -> torch.Tensor:
    """The input the space traces and counts with, (1, *input_shape): from a generator of its own, so
    the same teacher gives the same space and the caller's random stream is left as it was."""
    return torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(0))


def _check_training_mode(model: nn.Module, example: torch.Tensor, called: list[str]) -> None:
    """Students are traced in eval mode and distilled in training mode: a forward that returns other
    outputs there, or calls layers it does not call in eval mode (an Inception-style auxiliary head),
    gave students whose every trial failed on shapes (helper-81). Run on a copy, so the teacher's
    BatchNorm statistics stay as they are."""
    two = example.repeat(2, *[1] * (example.dim() - 1))  # (2, *input_shape): BatchNorm's batch statistics
    given = two.clone()  # what the training-mode pass is given, compared after it (helper-83)
    trained, calls = copy.deepcopy(model).train(), []
    hooks = [m.register_forward_pre_hook(lambda mod, inp, name=name: calls.append(name))
             for name, m in trained.named_modules() if name]
    try:
        with torch.no_grad():
            want, out = model(two), trained(given)
    finally:
        for h in hooks:
            h.remove()
    if not torch.equal(given, two):
        raise UnsupportedModel(f"{type(model).__name__}: in training mode {INPLACE}")
    if torch.is_tensor(want) and not (torch.is_tensor(out) and out.shape == want.shape):
        got = f"a tensor of shape {tuple(out.shape)}" if torch.is_tensor(out) else f"a {type(out).__name__}"
        raise UnsupportedModel(f"{type(model).__name__}: in training mode its forward returns {got}, in eval mode "
                               f"logits of shape {tuple(want.shape)}; n2n distils students in training mode: return "
                               f"the same outputs in both (auxiliary outputs only when asked)")
    extra = [n for n in dict.fromkeys(calls) if n not in called and any(True for _ in trained.get_submodule(n).parameters())]
    if extra:
        raise UnsupportedModel(f"{type(model).__name__}: in training mode its forward also calls {', '.join(extra[:3])}, "
                               f"which it does not call in eval mode, where n2n traces which layers pruning couples; "
                               f"call the same layers in both modes")


def _in_groups(m: nn.Module) -> str | None:
    """What `m` is where it treats its channels in groups other than all of them or, for convolutions, one
    each (depthwise convolutions are pruned channel by channel), or None."""
    if isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups and not m.groups == m.in_channels == m.out_channels:
        return f"grouped convolution (groups={m.groups})"
    if isinstance(m, nn.GroupNorm) and m.num_groups > 1:  # (torch-pruning leaves num_groups as it was)
        return f"GroupNorm (num_groups={m.num_groups})"
    return None


def _output_layer(model: nn.Module, called: list[str], example: torch.Tensor) -> str:
    """The layer giving the model's outputs: of the nn.Linear layers as forward calls them, the last one
    as wide as the outputs (helper-56: the last one *registered*, a classifier made in __init__ before
    blocks holding Linears of their own, was taken for one of theirs and shrunk); then, for a layer
    whose weight forward uses directly (a cosine classifier), the last registered one (helper-58)."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        out = model(example)
        # a forward that gives other outputs unchanged (noise of its own) cannot tell which layers count
        # (helper-61: every unused Linear counted, as for outputs in a tuple)
        steady = _same(out, model(example))
    # one forward does not call holds the outputs only if its weight counts in them (helper-59: an unused
    # auxiliary head was taken over a 1x1-conv classifier, which was then shrunk)
    order = [n for n in reversed(called) if n in linears] + [n for n in reversed(linears) if n not in called
                                                             and steady and _counts_in(model, n, example, out)]
    if not order:
        raise UnsupportedModel("expected an nn.Linear output layer, found none; name the layer that gives the "
                               "outputs in arch.json (\"output_layer\": NAME)")
    width = out.shape[-1] if torch.is_tensor(out) and out.dim() >= 2 else None  # (1 output, squeezed: any)
    fits = [n for n in order if width is None or model.get_submodule(n).out_features == width]
    if not fits:
        raise UnsupportedModel(f"expected an nn.Linear giving the model's {width} outputs, found none ({order[0]}, "
                               f"the last called, gives {model.get_submodule(order[0]).out_features}); name the layer "
                               f"that gives them in arch.json (\"output_layer\": NAME)")
    return fits[0]


@torch.no_grad()
def _counts_in(model: nn.Module, name: str, example: torch.Tensor, out) -> bool:
    """Whether the outputs `out` change when layer `name`'s parameters do: all its float ones, as a
    weight_norm head computes its weight from two (helper-60), by noise of a generator of this function's
    own, so that a shift every logit shares cannot hide it."""
    params = [p for p in model.get_submodule(name).parameters() if p.is_floating_point()]
    kept = [p.clone() for p in params]
    gen = torch.Generator().manual_seed(0)
    try:
        for p in params:
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device))
        again = model(example)
    finally:
        for p, k in zip(params, kept):
            p.copy_(k)
    return not _same(out, again)


def _same(a, b) -> bool:
    """Equal outputs: tensors, or tuples, lists and dicts of them."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _forward_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Module names in the order their forward is called."""
    order, hooks = [], []
    for name, m in model.named_modules():
        if name:
            hooks.append(m.register_forward_pre_hook(lambda mod, inp, name=name: order.append(name)))
    with torch.no_grad():
        model(example)
    for h in hooks:
        h.remove()
    return list(dict.fromkeys(order))
