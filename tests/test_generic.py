"""Any other module, through torch-pruning: coupled widths, removable blocks, untouched modules."""

import json
import random
import re
import sys
import warnings

import pytest
import torch

from agents import make_agent, run
from envs import CompressionEnv, ProxyEvaluator
from helpers import random_spec, randomise_bn
from n2n.models import build_model, load_model, save_model
from search_spaces import GenericSpace, StudentSpec, count_params, pruned_from_arch, space_for

import custom_net
import n2n
from search_spaces import UnsupportedModel

warnings.filterwarnings("ignore", module="torch_pruning")
FACTORY = {"factory": "custom_net:make", "kwargs": {"width": 16}}
ALLOW = ["custom_net:make"]


@pytest.fixture(scope="module")
def space():
    torch.manual_seed(0)
    return GenericSpace(randomise_bn(custom_net.make(16)), (1, 40), factory=FACTORY)


def test_units_blocks_groups_and_untouched(space):
    names = [(u.name, u.kind, u.removable, u.shrinkable) for u in space.units]
    assert names[0] == ("stem", "conv", False, True)  # the residual stream: stem + every block's last conv
    assert [n for n, k, r, _ in names if k == "block"] == ["body.0", "body.1", "body.3"]
    assert all(r for n, k, r, _ in names if k == "block")
    inner = next(u for u in space.units if u.name == "body.0.a")
    assert space.units[inner.parent].name == "body.0"
    assert space.units[0].parent is None
    assert names[-1] == ("head", "linear", False, False)
    assert space.untouched == {"<model>": "MyNet: no prunable group or removable block includes its scale",
                               "head": "the output layer"}


def test_identity_random_specs_and_json_round_trip(space):
    x = torch.randn(4, 1, 40)
    assert torch.equal(space.build(space.identity())(x), space.teacher(x))
    assert space.teacher_params() == count_params(space.teacher)
    rng = random.Random(0)
    for _ in range(8):
        spec = random_spec(space, rng)
        assert space.validate(spec) is None
        student = space.build(spec)
        assert student(x).shape == (4, 10) and count_params(student) == space.params(spec)
        rebuilt = pruned_from_arch(json.loads(json.dumps(space.arch(spec))), ALLOW)
        rebuilt.load_state_dict(student.state_dict(), strict=True)
        assert torch.allclose(rebuilt.eval()(x), student(x), atol=1e-6)


def test_flops_are_multiply_accumulates_as_in_every_family():
    """torch-pruning's count added BatchNorm, ReLU, pooling and bias operations: 21,610 for this
    network, whose convs and linear layer do 17,440 multiply-accumulates (the sequential space's count)."""
    from torch import nn

    class Net(nn.Module):  # not a Sequential: the generic space takes it
        def __init__(self):
            super().__init__()
            self.f = nn.Sequential(nn.Conv1d(1, 16, 3, padding=1), nn.BatchNorm1d(16), nn.ReLU(), nn.MaxPool1d(2),
                                   nn.Conv1d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten())
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(self.f(x))

    net = Net().eval()
    space = space_for(net, (1, 40))
    by_hand = 16 * 40 * 1 * 3 + 16 * 20 * 16 * 3 + 16 * 10  # conv (40 positions), conv after the pool (20), linear
    assert isinstance(space, GenericSpace) and space.flops(space.identity()) == by_hand == 17_440
    flat = space_for(nn.Sequential(*net.f, net.fc).eval(), (1, 40))
    assert flat.flops(flat.identity()) == by_hand
    half = space.identity().with_ratios([0.5 if u.shrinkable else 1.0 for u in space.units])
    assert space.flops(half) == 8 * 40 * 3 + 8 * 20 * 8 * 3 + 8 * 10  # both convs at 8 channels
    from search_spaces import count_macs

    up = nn.ConvTranspose1d(4, 8, 4, stride=2, padding=1)  # 10 input positions, each meets 8 x 4 weights per channel
    assert count_macs(up, torch.randn(1, 4, 10)) == 10 * 4 * 8 * 4  # not the output's 20 positions


def test_coupled_widths_shrink_together(space):
    ratios = [0.5 if u.name == "stem" else 1.0 for u in space.units]
    student = space.build(StudentSpec((), ratios))
    assert student.stem.out_channels == 8
    assert all(student.body[i].b.out_channels == 8 and student.body[i].a.in_channels == 8 for i in (0, 1, 3))
    assert student.head.in_features == 8 + 8  # the concatenated branch input shrank, its output did not
    assert student.side.out_channels == 8 and student.side.in_channels == 8


def test_user_module_teacher_folder_and_student_export_round_trip(space, tmp_path):
    arch = {"family": "module", **FACTORY, "input_shape": [1, 40]}
    save_model(tmp_path / "t", space.teacher, arch, {"dataset": "mnist1d"})
    teacher, _, _ = load_model(tmp_path / "t", ALLOW)
    loaded = space_for(teacher, (1, 40), arch=arch)
    assert isinstance(loaded, GenericSpace) and loaded.factory == FACTORY
    spec = StudentSpec((loaded.units.index(next(u for u in loaded.units if u.name == "body.1")),),
                       [0.5 if u.shrinkable else 1.0 for u in loaded.units])
    student = loaded.build(spec)
    save_model(tmp_path / "s", student, loaded.arch(spec), {})
    again, _, _ = load_model(tmp_path / "s", ALLOW)
    x = torch.randn(2, 1, 40)
    assert torch.allclose(again(x), student(x), atol=1e-6)
    assert isinstance(build_model(loaded.arch(spec), ALLOW).body[1], torch.nn.Identity)
    # without the user naming the factory, neither folder loads
    for folder in ("t", "s"):
        with pytest.raises(UnsupportedModel, match="names the factory 'custom_net:make'.*--allow-factory custom_net:make"):
            load_model(tmp_path / folder)
    with pytest.raises(UnsupportedModel, match="--allow-factory custom_net:make"):
        n2n.load_student(tmp_path / "s", factories=["custom_net:other"])  # a different name is not enough


def test_a_factory_edited_after_the_fact_is_refused_not_built_as_another_network(tmp_path, monkeypatch):
    """helper-11: a LeakyReLU edited into a ReLU after a search, in a file the factory only imports
    (helper-13: a digest of the factory's own file missed that, and refused a comment edit). The same
    weights load into the edited network and no params or FLOPs count changes, so the run and its
    exports would silently be another function: what they compute is checked instead."""
    import textwrap
    from types import SimpleNamespace

    from n2n.errors import RunError
    from n2n.models import ModelError, save_weights
    from n2n.runfolder import TEACHER_LOGITS
    from n2n.search import check_outputs
    from n2n.train import predict
    from search_spaces import probe

    pkg = tmp_path / "edited_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .layers import make\n")
    (pkg / "layers.py").write_text(textwrap.dedent("""
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(nn.Sequential(nn.Conv1d(1, 8, 3, padding=1), nn.LeakyReLU(0.2)))
                self.head = nn.Linear(8, 10)

            def forward(self, x):  # (B, 1, L)
                return self.head(self.body(x).mean(-1))

        def make():
            return Net()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))

    def fresh(allow=("edited_pkg:make",)):  # what a new process sees: the files as they are now
        for name in ("edited_pkg", "edited_pkg.layers"):
            monkeypatch.delitem(sys.modules, name, raising=False)
        return build_model(arch, allow)

    arch = {"family": "module", "factory": "edited_pkg:make", "input_shape": [1, 40]}
    torch.manual_seed(0)
    teacher = fresh()
    space = space_for(teacher, (1, 40), arch=arch)
    spec = space.identity().with_ratios([0.5 if u.shrinkable else 1.0 for u in space.units])
    student = space.build(spec)
    save_model(tmp_path / "s", student, {**space.arch(spec), "probe": probe(student, (1, 40))}, {})
    run, ds = tmp_path / "run", SimpleNamespace(x_train=torch.randn(100, 1, 40))
    run.mkdir()
    save_weights({"logits": predict(teacher, ds.x_train)}, run / TEACHER_LOGITS)  # as a search keeps them

    layers = pkg / "layers.py"
    layers.write_text(layers.read_text().replace("return Net()", "return Net()  # a comment changes nothing"))
    again = fresh()
    again.load_state_dict(teacher.state_dict())
    check_outputs(run, again, ds)
    x = torch.randn(3, 1, 40)
    before = load_model(tmp_path / "s", ["edited_pkg:make"])[0](x)

    layers.write_text(layers.read_text().replace("nn.LeakyReLU(0.2)", "nn.ReLU()"))
    edited = fresh()
    edited.load_state_dict(teacher.state_dict())
    with pytest.raises(RunError, match="the teacher computes other outputs than when this run started .* though its "
                                       "weights are the same, so what builds it changed since: the code"):
        check_outputs(run, edited, ds)
    # the kept file touched too (its digest differs from n2n.json's): still compared, both causes named
    # (helper-54: skipped, and the edited module passed)
    with pytest.raises(RunError, match="either that file was changed .* or what builds the teacher changed since "
                                       r"\(the code: "):
        check_outputs(run, edited, ds, digest="0" * 16)
    check_outputs(run, again, ds, digest="0" * 16)  # the same outputs: nothing to refuse
    # a subtler edit, within the 5e-3 once allowed (helper-67: relu -> leaky_relu moved a teacher's logits
    # 0.06, 0.14 allowed, and the export's load later refused the student): refused as the load would
    layers.write_text(layers.read_text().replace("nn.ReLU()", "nn.LeakyReLU(0.195)"))
    subtle = fresh()
    subtle.load_state_dict(teacher.state_dict())
    kept, now = predict(teacher, ds.x_train[:64]), predict(subtle, ds.x_train[:64])  # (64, 10)
    scale = 1 + kept.abs().max().item()
    assert 1e-4 * scale < (now - kept).abs().max().item() < 5e-3 * scale
    with pytest.raises(RunError, match="the teacher computes other outputs than when this run started"):
        check_outputs(run, subtle, ds)
    layers.write_text(layers.read_text().replace("nn.LeakyReLU(0.195)", "nn.ReLU()"))
    fresh()
    with pytest.raises(ModelError, match=r"computes other outputs than when it was saved \(up to .* apart on n2n's "
                                         r"probe input\), so the code that builds it \(edited_pkg:make\) changed since"):
        load_model(tmp_path / "s", ["edited_pkg:make"])
    # a probe or input shape n2n never writes: one line, not a traceback (helper-57)
    folder_arch = json.loads((tmp_path / "s" / "arch.json").read_text())
    for edit in ({"probe": "x"}, {"input_shape": None}, {"input_shape": [1, True]}, {"probe": [[1.0]]}):
        (tmp_path / "s" / "arch.json").write_text(json.dumps({**folder_arch, **edit}))
        with pytest.raises(ModelError, match=r"arch.json: expected \"probe\" to hold two rows of outputs and "
                                             r"\"input_shape\" a list of whole numbers >= 1, as n2n writes them; found"):
            load_model(tmp_path / "s", ["edited_pkg:make"])
    # the escape the message names: the user accepts the edited network, and gets it
    del folder_arch["probe"]
    (tmp_path / "s" / "arch.json").write_text(json.dumps(folder_arch))
    after = load_model(tmp_path / "s", ["edited_pkg:make"])[0](x)
    assert not torch.allclose(before, after)  # what the check stood between: another function, same weights


def test_a_library_function_named_as_a_factory_is_never_called_even_when_allowed(tmp_path):
    """helper-97: a received folder named torch:load with its own kwargs (a pickle beside it,
    weights_only false); n2n's refusal advised --allow-factory torch:load, and that ran the payload."""
    import pickle

    from n2n.models import load_model
    from search_spaces.generic import UnsupportedModel

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save(Payload(), tmp_path / "payload.pt", pickle_module=pickle)
    folder = tmp_path / "evil"
    folder.mkdir()
    kwargs = {"f": str(tmp_path / "payload.pt"), "weights_only": False}
    (folder / "model.safetensors").write_bytes(b"not even read")
    for factory in ("torch:load", "torch.hub:load", "numpy:load", "n2n.cli:main", "joblib:load", "__main__:main"):
        (folder / "arch.json").write_text(json.dumps({"family": "module", "factory": factory, "kwargs": kwargs}))
        whose = "the program running n2n" if factory == "__main__:main" else \
            f"the library '{factory.split('.')[0].split(':')[0]}'"
        for allowed in ((), (factory,)):
            with pytest.raises(UnsupportedModel, match=rf"this model folder names '{re.escape(factory)}', a function of "
                                                       rf"{whose}, as the factory") as e:
                load_model(folder, allowed)
            assert "--allow-factory" not in str(e.value)
            # what it would be called with, shown (the folder chooses the arguments)
            assert f"to be called as {factory.replace(':', '.')}(f='{tmp_path}/payload.pt', weights_only=False)" in str(e.value)
    # helper-98: installed packages off the list (sympy:sympify evaluates its argument), re-exports (pylab:load
    # is numpy's load), and arguments long enough to hide a payload past a cut
    payload = "1+" * 200 + "__import__('os').system('touch " + str(marker) + "')"
    (folder / "arch.json").write_text(json.dumps({"family": "module", "factory": "sympy:sympify", "kwargs": {"a": payload}}))
    with pytest.raises(UnsupportedModel, match=r"names the factory 'sympy:sympify', a function of the installed package "
                                               r"'sympy' \(.*site-packages/sympy/__init__.py\), to be called as ") as e:
        load_model(folder)
    assert "--allow-factory" not in str(e.value) and payload in str(e.value)
    (folder / "arch.json").write_text(json.dumps({"family": "module", "factory": "pylab:load", "kwargs": kwargs}))
    with pytest.raises(UnsupportedModel, match=r"factory 'pylab:load' is 'load' of 'numpy', the library 'numpy', which "
                                               r"'pylab' only re-exports: n2n calls a factory only from the package that "
                                               r"defines it"):
        load_model(folder, ["pylab:load"])  # allowed, as a user following the message might
    for bad in (".torch:load", "torch :load", "torch:load()", "ｔorch:load"):  # (".torch:load" was a TypeError)
        (folder / "arch.json").write_text(json.dumps({"family": "module", "factory": bad}))
        with pytest.raises(UnsupportedModel, match=rf"factory: expected 'package.module:function' of Python names, got "
                                                   rf"{re.escape(repr(bad))}"):
            load_model(folder, [bad])
    assert not marker.exists()
    # a factory of the user's own still shows the arguments it would be called with
    (folder / "arch.json").write_text(json.dumps({"family": "module", "factory": "custom_net:make", "kwargs": {"width": 8}}))
    with pytest.raises(UnsupportedModel, match=r"names the factory 'custom_net:make', which n2n would import and call as "
                                               r"custom_net\.make\(width=8\); .* pass --allow-factory custom_net:make"):
        load_model(folder)


@pytest.mark.parametrize("family", ["module", "pruned"])
def test_a_model_folder_never_runs_a_factory_the_user_did_not_name(tmp_path, family, monkeypatch):
    """A hostile arch.json naming os:system: refused before anything is imported or called."""
    import os
    import subprocess

    marker = tmp_path / "pwned"
    calls = []
    monkeypatch.setattr(os, "system", lambda cmd: calls.append(cmd))
    factory = {"factory": "os:system", "kwargs": {"command": f"touch {marker}"}}
    arch = {"family": "module", **factory} if family == "module" else \
        {"family": "pruned", "input_shape": [1, 40], "base": factory, "removed_blocks": [], "history": []}
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "arch.json").write_text(json.dumps(arch))
    (folder / "model.safetensors").write_bytes(b"not even read")
    for load in (lambda: load_model(folder), lambda: n2n.load_student(folder, factories=["custom_net:make"])):
        # which folder (helper-68: a run's teacher), and no advice to allow it (helper-76: it offered
        # --allow-factory os:system "if you trust that code")
        with pytest.raises(UnsupportedModel, match=f"^{re.escape(str(folder))}: this model folder names 'os:system', a "
                                                   "function of Python's standard library, as the factory") as e:
            load()
        assert "--allow-factory" not in str(e.value)
    assert calls == [] and not marker.exists()
    # and through the CLI, as `n2n export` of a run whose teacher is that folder would load it
    r = subprocess.run([sys.executable, "-c", f"import n2n; n2n.load_student({str(folder)!r})"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "os:system" in r.stderr and not marker.exists()


def test_same_env_and_agents_search_a_user_module(space):
    proxy = ProxyEvaluator(space)
    for stage in ("removal", "shrink"):
        hist = run(make_agent("random", CompressionEnv(space, evaluator=None, stage=stage), seed=0), proxy, 8)
        assert len(hist) == 8 and max(r for _, r in hist) > 0


class _OneConv(torch.nn.Module):
    """A residual block whose only conv writes into the stream: no channel group of its own."""

    def __init__(self, c):
        super().__init__()
        self.conv = torch.nn.Conv1d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


class _Stream(torch.nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.stem = torch.nn.Conv1d(1, c, 3, padding=1)
        self.body = torch.nn.Sequential(_OneConv(c), _OneConv(c))
        self.head = torch.nn.Linear(c, 10)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean(-1))


def test_removing_a_block_without_a_group_of_its_own_has_its_own_key():
    """Such a block has width 0, so 'remove it' used to share the teacher's key (and cached result)."""
    torch.manual_seed(0)
    space = GenericSpace(_Stream(), (1, 16))
    blocks = [i for i, u in enumerate(space.units) if u.kind == "block"]
    assert len(blocks) == 2 and all(space.units[i].width == 0 for i in blocks)
    keys = {space.key(space.identity())}
    for i in blocks:
        spec = StudentSpec((i,), [1.0] * space.n_units)
        keys.add(space.key(spec))
        assert count_params(space.build(spec)) == space.params(spec) == space.teacher_params() - (8 * 8 * 3 + 8)
    assert len(keys) == 3  # the teacher and each removal: three different students, three keys


def test_a_module_teacher_searched_and_exported_from_the_command_line_loads_as_measured(tmp_path):
    """The whole user path for an own module (README "Your own module"): search, export, load outside
    n2n; the export records its outputs on n2n's probe input, so a later edit of the factory is
    refused where the student is loaded, not deployed as another network."""
    import os
    import subprocess
    from pathlib import Path

    from n2n.data import load_dataset, load_raw
    from n2n.train import accuracy

    (tmp_path / "usernet.py").write_text(Path(custom_net.__file__).read_text())
    sys.path.insert(0, str(tmp_path))
    try:
        import usernet

        torch.manual_seed(0)
        save_model(tmp_path / "t", usernet.make(8), {"family": "module", "factory": "usernet:make", "kwargs": {"width": 8},
                                                     "input_shape": [1, 40], "num_classes": 10}, {"dataset": "mnist1d"})
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("usernet", None)
    n2n_bin = str(Path(sys.executable).parent / "n2n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def cli(*args):
        return subprocess.run([n2n_bin, *args, "--allow-factory", "usernet:make"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)

    tiny = ["--set", "teacher.path=t", "--set", "teacher.dataset=mnist1d", "--set", "search.removal_budget=2",
            "--set", "search.shrink_budget=2", "--set", "search.refine_budget=1", "--set", "distill.epochs=1", "--set", "finalists.k=0",
            "--set", "latency.repeats=0", "--set", "target.max_accuracy_drop=null"]
    searched = cli("search", "--name", "r", *tiny)
    assert searched.returncode == 0, searched.stderr[-2000:]
    # the command it names works as it stands: it carries the factory (helper-27: it did not)
    assert f"-> `n2n export {tmp_path / 'runs' / 'r'} --out DIR --allow-factory usernet:make`" in searched.stdout
    exported = cli("export", "runs/r", "--out", "s")
    assert exported.returncode == 0, exported.stderr[-2000:]
    arch = json.loads((tmp_path / "s" / "arch.json").read_text())
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert arch["family"] == "pruned" and len(arch["probe"]) == 2 and len(arch["probe"][0]) == 10
    sys.path.insert(0, str(tmp_path))
    try:
        student = n2n.load_student(tmp_path / "s", factories=["usernet:make"])
        x, y, _ = load_raw("mnist1d")  # raw inputs, as a deployment has them (README "Exporting")
        val = load_dataset("mnist1d").index["val"]  # the teacher's split (seed 0)
        got = accuracy(student, torch.as_tensor(x[val]), torch.as_tensor(y[val]))
        assert got == pytest.approx(metrics["val_accuracy"], abs=1e-9)
        assert metrics["params"] == count_params(student)
        # one name as a string is that name (helper-67: its characters were the names allowed)
        one = n2n.load_student(tmp_path / "s", factories="usernet:make")
        assert torch.equal(one(torch.as_tensor(x[val])), student(torch.as_tensor(x[val])))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("usernet", None)
    # the factory edited after the export: loading refuses, export and resume refuse, nothing is written
    src = (tmp_path / "usernet.py").read_text()
    edited = src.replace("self.body(torch.relu(self.stem(x)))", "self.body(torch.tanh(self.stem(x)))")
    assert edited != src  # the stem: every student keeps it
    (tmp_path / "usernet.py").write_text(edited)
    again = cli("export", "runs/r", "--out", "s2")
    assert again.returncode == 2 and "changed since" in again.stderr and "Traceback" not in again.stderr
    assert "exporting" not in again.stdout  # refused before it says it began
    assert not (tmp_path / "s2").exists()
    refused = subprocess.run([sys.executable, "-c", "import n2n; n2n.load_student('s', factories=['usernet:make'])"],
                             cwd=tmp_path, env={**env, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True)
    assert refused.returncode != 0 and "computes other outputs than when it was saved" in refused.stderr


def test_a_factory_that_returns_no_module_is_a_clear_error(tmp_path, capsys):
    """helper-27: a factory returning its class, or a (model, extra) pair, ended in a traceback
    about load_state_dict; the README promises a one-line error."""
    from n2n import cli
    from n2n.models import save_model

    for name, said in (("make_class", "it returned the class MyNet (call the class in the factory)"),
                       ("make_pair", "it returned a tuple")):
        folder = tmp_path / name
        save_model(folder, custom_net.make(16), {"family": "module", "factory": f"custom_net:{name}",
                                                 "kwargs": {"width": 16}}, {})
        assert cli.main(["teacher", "show", str(folder), "--allow-factory", f"custom_net:{name}"]) == 2
        err = capsys.readouterr().err
        assert f"factory 'custom_net:{name}': expected it to return a torch.nn.Module instance, {said}" in err, err
        assert "Traceback" not in err


def test_weights_strict_loading_accepts_still_load(tmp_path):
    """helper-29: a pre-check of keys and shapes refused what strict loading accepts: a BatchNorm's
    num_batches_tracked missing from a converted checkpoint (loading fills it in)."""
    from safetensors.torch import load_file, save_file

    from n2n.models import load_model, save_model

    model = custom_net.make(16)
    save_model(tmp_path / "t", model, {"family": "module", "factory": "custom_net:make", "kwargs": {"width": 16}}, {})
    weights = load_file(str(tmp_path / "t" / "model.safetensors"))
    dropped = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}
    assert len(dropped) < len(weights)
    save_file(dropped, str(tmp_path / "t" / "model.safetensors"))
    loaded, _, _ = load_model(tmp_path / "t", factories=ALLOW)
    assert torch.equal(loaded.stem.weight, model.stem.weight)


class _SE(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(c, c // 4), torch.nn.Linear(c // 4, c)

    def forward(self, x):  # (N, c, H, W) gated per channel
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))[:, :, None, None]


class _HeadFirst(torch.nn.Module):
    """Squeeze-and-excitation, its classifier made before the blocks that hold Linears of their own."""

    def __init__(self, w=16):
        super().__init__()
        nn = torch.nn
        self.classifier = nn.Linear(w, 10)
        self.conv1 = nn.Sequential(nn.Conv2d(1, w, 3, 1, 1), nn.BatchNorm2d(w), nn.ReLU())
        self.se1 = _SE(w)
        self.conv2 = nn.Sequential(nn.Conv2d(w, w, 3, 2, 1), nn.BatchNorm2d(w), nn.ReLU())
        self.se2 = _SE(w)

    def forward(self, x):
        return self.classifier(self.se2(self.conv2(self.se1(self.conv1(x)))).mean((2, 3)))


class _Grouped(torch.nn.Module):
    """MobileNet-like: a depthwise conv (pruned channel by channel) and a grouped one (not prunable)."""

    def __init__(self, w=16):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, 1, 1), nn.BatchNorm2d(w), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(w, w, 3, 1, 1, groups=w, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(w, 2 * w, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU())
        self.grp = nn.Sequential(nn.Conv2d(2 * w, 2 * w, 3, 2, 1, groups=4, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU())
        self.pw2 = nn.Sequential(nn.Conv2d(2 * w, 2 * w, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU())
        self.fc = nn.Linear(2 * w, 10)

    def forward(self, x):
        return self.fc(self.pw2(self.grp(self.pw(self.dw(self.stem(x))))).mean((2, 3)))


def _starts_as_the_teacher(space, i, ratio=0.5):
    """The student shrunk in unit i computes what the teacher computes with the dropped channels
    silenced: the channels it keeps carry the teacher's own weights (helper-56's check, which the
    space itself now runs on units whose channels pass a slice)."""
    return space._silenced_gap(i, ratio) <= 1e-5


def test_the_output_layer_is_the_last_linear_called_and_a_unit_describes_its_first_layer():
    """helper-56: the last Linear *registered* was taken for the output layer: a classifier made before
    the SE blocks became a shrink unit (every candidate shrinking it failed: 9 logits for 10 classes)
    and an SE gate was the output layer. A unit's kind, kernel and stride were its group's root's: an
    SE gate's, so two 3x3 convs read as 1-wide linears to the policy."""
    torch.manual_seed(0)
    space = GenericSpace(randomise_bn(_HeadFirst()), (1, 8, 8))
    assert space.output_layer == "classifier" and space.untouched == {"classifier": "the output layer"}
    assert [(u.name, u.kind, u.kernel, u.stride, u.width, u.shrinkable) for u in space.units] == [
        ("conv1.0", "conv", 3, 1, 16, True), ("se1.fc1", "linear", 1, 1, 4, True), ("conv2.0", "conv", 3, 2, 16, True),
        ("se2.fc1", "linear", 1, 1, 4, True), ("classifier", "linear", 1, 1, 10, False)]
    for i, u in enumerate(space.units[:-1]):
        assert space.validate(space.identity().with_ratios([0.5 if j == i else 1.0 for j in range(space.n_units)])) is None
        assert _starts_as_the_teacher(space, i), u.name

    class FullyConv(torch.nn.Module):  # no Linear: a 1x1 conv classifier, named in arch.json
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, 1, 1), torch.nn.ReLU())
            self.cls = torch.nn.Conv2d(16, 10, 1)

        def forward(self, x):
            return self.cls(self.body(x)).mean((2, 3))

    with pytest.raises(UnsupportedModel, match=r"expected an nn.Linear output layer, found none; name the layer that "
                                               r'gives the outputs in arch.json \("output_layer": NAME\)'):
        GenericSpace(FullyConv(), (1, 8, 8))
    # helper-58: heads forward does not call last, or at all, or whose output is squeezed to nothing
    class Heads(torch.nn.Module):
        def __init__(self, how):
            super().__init__()
            self.how, self.c1 = how, torch.nn.Conv2d(1, 16, 3, 1, 1)
            self.se, self.head = _SE(16), torch.nn.Linear(16, 1 if how == "squeezed" else 10)

        def forward(self, x):
            h = torch.relu(self.c1(x))
            if self.how == "cosine":  # the head's weight used directly
                v = h.mean((2, 3))
                return 10 * torch.nn.functional.linear(torch.nn.functional.normalize(v),
                                                       torch.nn.functional.normalize(self.head.weight))
            if self.how == "twice":  # deep supervision: the head first, an SE block's Linears after
                early = self.head(h.mean((2, 3)))
                return early + self.head(self.se(h).mean((2, 3)))
            return self.head(h.mean((2, 3))).squeeze()  # (1, 1) -> one number
    for how in ("cosine", "twice", "squeezed"):
        assert GenericSpace(Heads(how), (1, 8, 8)).output_layer == "head", how
    normed = Heads("cosine")  # its weight computed from two parameters (helper-60: refused)
    normed.head = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(16, 10, bias=False))
    before = {k: v.clone() for k, v in normed.state_dict().items()}
    assert GenericSpace(normed, (1, 8, 8)).output_layer == "head"
    assert all(torch.equal(v, before[k]) for k, v in normed.state_dict().items())  # the teacher as it was

    class UnusedAux(FullyConv):  # a Linear forward never uses is no output layer (helper-59: taken, and
        def __init__(self):      # the 1x1-conv classifier shrunk)
            super().__init__()
            self.aux = torch.nn.Linear(16, 10)

    with pytest.raises(UnsupportedModel, match="expected an nn.Linear output layer, found none"):
        GenericSpace(UnusedAux(), (1, 8, 8))

    class Wrapped(UnusedAux):  # outputs in a tuple, a dict, or noisy; a quantised-style parameter (helper-61)
        def __init__(self, how):
            super().__init__()
            self.how = how
            self.aux.register_parameter("scale", torch.nn.Parameter(torch.zeros(10, dtype=torch.int8),
                                                                    requires_grad=False))

        def forward(self, x):
            y = super().forward(x)
            return {"tuple": (y,), "dict": {"logits": y}, "noisy": torch.nn.functional.dropout(y, 0.5, True)}[self.how]
    for how in ("tuple", "dict", "noisy"):
        with pytest.raises(UnsupportedModel, match="expected an nn.Linear output layer, found none"):
            GenericSpace(Wrapped(how), (1, 8, 8))
    named = space_for(FullyConv(), (1, 8, 8), arch={"family": "module", "factory": "x:y", "output_layer": "cls"})
    assert [(u.name, u.kind, u.width, u.shrinkable) for u in named.units] == [("body.0", "conv", 16, True),
                                                                            ("cls", "conv", 10, False)]
    with pytest.raises(UnsupportedModel, match="output_layer: expected the name of the nn.Linear or conv layer that "
                                               "gives the model's outputs, got 'body.1', which is ReLU"):
        space_for(FullyConv(), (1, 8, 8), arch={"family": "module", "factory": "x:y", "output_layer": "body.1"})


def test_channels_that_meet_a_grouped_convolution_are_left_whole_not_scrambled():
    """helper-56: torch-pruning keeps the same input channels in every group of a grouped conv and
    moves channels between groups, so a student shrunk there started from scrambled weights (its
    outputs 5-8 apart from the teacher's with those channels silenced), silently. Those channels are
    left at full width now, and said so; a depthwise conv is still pruned, channel by channel."""
    torch.manual_seed(0)
    space = GenericSpace(randomise_bn(_Grouped()), (1, 8, 8))
    assert [u.name for u in space.units if u.shrinkable] == ["stem.0", "pw2.0"]  # stem.0's group holds dw.0
    assert space.untouched["grp.0"].startswith("a grouped convolution (groups=4) grp.0: pruning does not keep")
    assert space.untouched["pw.0"].startswith("its outputs share channels with the grouped convolution (groups=4) grp.0")
    assert space.untouched["pw.1"] == space.untouched["grp.1"] == ("its channels stay at full width with the grouped "
                                                                    "convolution (groups=4) grp.0's")  # its BatchNorms
    for i, u in enumerate(space.units):
        if u.shrinkable:
            assert _starts_as_the_teacher(space, i), u.name
    # GroupNorm alike (helper-58: at ratio 0.5 channels of different groups were normalised together);
    # one group of all channels is pruned as a LayerNorm is
    nn = torch.nn

    class Normed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1), nn.GroupNorm(4, 16), nn.ReLU())
            self.b = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1), nn.GroupNorm(1, 16), nn.ReLU())
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(self.b(self.a(x)).mean((2, 3)))

    torch.manual_seed(0)
    normed = GenericSpace(Normed(), (1, 8, 8))
    assert [u.name for u in normed.units if u.shrinkable] == ["b.0"]
    assert normed.untouched["a.0"] == ("its outputs share channels with the GroupNorm (num_groups=4) a.1, whose groups "
                                       "pruning does not keep apart; left at full width")


def test_a_unit_no_width_of_which_builds_is_fixed_and_said_not_offered():
    """helper-56: a LayerNorm over (C, H, W) after a conv, or a `view` with its width written in, made a
    unit every proposal of which torch-pruning refused; the search kept proposing them and a stage ended
    early on known specs. Such a unit is fixed at construction, with the reason."""
    nn = torch.nn

    class LayerNormed(nn.Module):
        def __init__(self, w=8):
            super().__init__()
            self.c1, self.ln = nn.Conv2d(1, w, 3, 1, 1), nn.LayerNorm([w, 8, 8])
            self.c2, self.fc = nn.Conv2d(w, w, 3, 2, 1), nn.Linear(w * 16, 10)

        def forward(self, x):
            return self.fc(torch.flatten(torch.relu(self.c2(torch.relu(self.ln(self.c1(x))))), 1))

    torch.manual_seed(0)
    space = GenericSpace(LayerNormed(), (1, 8, 8))
    c1 = next(u for u in space.units if u.name == "c1")
    assert not c1.shrinkable and c1.why_fixed.startswith("no width of it builds (torch-pruning cannot build this student")
    assert space.untouched["c1"].startswith("no width of it builds: torch-pruning cannot build this student")
    assert [u.name for u in space.units if u.shrinkable] == ["c2"]
    assert space.validate(space.identity().with_ratios([0.25 if u.name == "c2" else 1.0 for u in space.units])) is None


def test_making_the_space_leaves_the_callers_random_stream_as_it_was_and_reads_the_same_every_time(space):
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    again = GenericSpace(space.teacher, (1, 40), factory=FACTORY)
    assert torch.equal(torch.rand(3), want)  # (it drew its example input from torch's global generator)
    torch.manual_seed(7)
    assert torch.equal(GenericSpace(space.teacher, (1, 40), factory=FACTORY).example, again.example)


def test_channels_whose_pruning_would_change_what_the_kept_ones_compute_are_left_whole():
    """helper-81: shrinking through nn.MultiheadAttention re-split the embedding into heads (and changed
    their scale), 21% of argmaxes flipped with the dropped channels silenced; a GhostNet slice
    `cat(...)[:, :oup]` built at one ratio with the next layer's inputs shifted by one; tied weights
    were untied, a student larger than its teacher. Those channels stay whole, and say why."""
    nn = torch.nn

    class Attn(nn.Module):
        def __init__(self, d=32):
            super().__init__()
            self.stem = nn.Linear(8, 16)
            self.embed = nn.Linear(16, d)
            self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
            self.head = nn.Linear(d, 10)

        def forward(self, x):  # (B, 1, 8, 8): 8 rows as tokens
            t = self.embed(torch.relu(self.stem(x.flatten(1, 2))))  # (B, 8, d)
            return self.head((t + self.attn(t, t, t, need_weights=False)[0]).mean(1))

    class Ghost(nn.Module):  # GhostNet's module with an odd width: the slice drops the last cheap channel
        def __init__(self, oup=15):
            super().__init__()
            self.oup, half = oup, (oup + 1) // 2
            self.primary = nn.Sequential(nn.Conv2d(1, half, 1), nn.ReLU())
            self.cheap = nn.Sequential(nn.Conv2d(half, half, 3, padding=1, groups=half), nn.ReLU())
            self.after = nn.Sequential(nn.Conv2d(oup, 16, 3, padding=1), nn.ReLU())
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            x1 = self.primary(x)
            y = torch.cat([x1, self.cheap(x1)], 1)[:, :self.oup]  # (B, oup, 8, 8)
            return self.head(self.after(y).mean((2, 3)))

    torch.manual_seed(0)
    attn = GenericSpace(Attn(), (1, 8, 8))
    assert not any(u.shrinkable for u in attn.units if u.name == "embed")
    assert attn.untouched["embed"] == ("its channels are the embedding of the nn.MultiheadAttention attn, which pruning "
                                       "splits into heads anew, at another scale; left at full width")
    assert [u.name for u in attn.units if u.shrinkable] == ["stem"] and _starts_as_the_teacher(attn, 0)
    ghost = GenericSpace(Ghost(), (1, 8, 8))
    assert ghost.untouched["primary.0"] == ("its channels pass a slice written into forward (x[:, :n]), which pruning "
                                            "misaligns; left at full width")
    assert [u.name for u in ghost.units if u.shrinkable] == ["after.0"]

    class Crop(nn.Module):  # a crop of positions, and a slice that keeps every channel: channels pass as they are
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3), nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.b(torch.relu(self.a(x))[:, :8, 1:-1, 1:-1]).mean((2, 3)))

    class Causal(nn.Module):  # a temporal conv net's causal trim x[:, :, :-2] after each Conv1d (helper-83)
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.fc = nn.Conv1d(1, 16, 3, padding=2), nn.Conv1d(16, 16, 3, padding=2), nn.Linear(16, 10)

        def forward(self, x):
            x = torch.relu(self.c1(x)[:, :, :-2])
            return self.fc(torch.relu(self.c2(x)[:, :, :-2]).mean(-1))

    crop = GenericSpace(Crop(), (1, 8, 8))
    assert [u.name for u in crop.units if u.shrinkable] == ["a", "b"] and _starts_as_the_teacher(crop, 0)
    causal = GenericSpace(Causal(), (1, 40))
    assert [u.name for u in causal.units if u.shrinkable] == ["c1", "c2"]
    assert _starts_as_the_teacher(causal, 0) and _starts_as_the_teacher(causal, 1)
    tied = GenericSpace(custom_net.make_tied(), (1, 40))
    assert tied.untouched["h1"] == "h1 shares its weights with h2 (tied), which pruning would untie; left at full width"
    assert tied.untouched["h2"] == "h2 shares its weights with h1 (tied), which pruning would untie; left at full width"
    assert [u.name for u in tied.units if u.shrinkable] == ["out.0"]  # (inp: its outputs are h1's inputs)
    spec = tied.identity().with_ratios([0.5 if u.shrinkable else 1.0 for u in tied.units])
    student = tied.build(spec)
    assert student.h1.weight is student.h2.weight and count_params(student) == tied.params(spec) < tied.teacher_params()


def test_a_tied_teacher_and_its_students_save_each_weight_once_and_load_tied(tmp_path):
    """helper-81: safetensors' save_file refuses tensors that share memory, and a file saved once per
    tensor (save_model's way) was refused on load as '1 tensors missing from the file (h2.weight)'."""
    from safetensors.torch import load_file

    torch.manual_seed(0)
    teacher = custom_net.make_tied()
    arch = {"family": "module", "factory": "custom_net:make_tied", "kwargs": {}, "input_shape": [1, 40]}
    save_model(tmp_path / "t", teacher, arch, {})
    assert "h2.weight" not in load_file(str(tmp_path / "t" / "model.safetensors"))  # stored once, under h1
    loaded, _, _ = load_model(tmp_path / "t", ["custom_net:make_tied"])
    assert loaded.h1.weight is loaded.h2.weight and torch.equal(loaded.h2.weight, teacher.h1.weight)
    x = torch.randn(4, 1, 40)
    assert torch.equal(loaded(x), teacher.eval()(x))
    space = GenericSpace(loaded, (1, 40), factory={"factory": "custom_net:make_tied", "kwargs": {}})
    spec = space.identity().with_ratios([0.5 if u.shrinkable else 1.0 for u in space.units])
    student = space.build(spec)
    save_model(tmp_path / "s", student, space.arch(spec), {})
    again = n2n.load_student(tmp_path / "s", factories=["custom_net:make_tied"])
    assert again.h1.weight is again.h2.weight and torch.equal(again(x), student.eval()(x))
    # a weight tied as another's transpose (two views of one storage) is saved apart, as it was before
    from n2n.models import load_weights, save_weights

    w = torch.randn(3, 5)
    save_weights({"enc": w, "dec": w.t()}, tmp_path / "views.safetensors")
    views = load_weights(tmp_path / "views.safetensors")
    assert torch.equal(views["enc"], w) and torch.equal(views["dec"], w.t())
    # a tensor really missing is still refused, by name
    from safetensors.torch import save_file

    kept = load_file(str(tmp_path / "t" / "model.safetensors"))
    save_file({k: v for k, v in kept.items() if k != "inp.bias"}, str(tmp_path / "t" / "model.safetensors"))
    with pytest.raises(n2n.models.ModelError, match=r"1 tensors missing from the file \(inp.bias\)"):
        load_model(tmp_path / "t", ["custom_net:make_tied"])


def test_modules_n2n_cannot_measure_or_distil_as_traced_are_refused_in_one_line():
    """helper-81: a forward that divides its input in place (x /= 16) divided n2n's own split at each
    measurement (the teacher measured 0.9442, then 0.0967); a head called only in training mode made
    every trial fail on shapes; an all-convolutional classifier with a Linear gate inside had its
    real classifier shrunk to fewer classes; a GRU's grouping was a torch-pruning traceback."""
    from n2n.search import check_forward
    from search_spaces import changes_its_input

    nn = torch.nn

    class Pixels(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 8, 3, padding=1)
            self.head = nn.Linear(8, 10)

        def forward(self, x):
            x /= 16.0
            return self.head(torch.relu(self.c(x)).mean((2, 3)))

    class Aux(Pixels):
        def __init__(self):
            super().__init__()
            self.aux = nn.Linear(8, 10)

        def forward(self, x):
            a = torch.relu(self.c(x)).mean((2, 3))
            return (self.head(a), self.aux(a)) if self.training else self.head(a)

    class ConvHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(1, 10, 3, padding=1)
            self.se1, self.se2 = nn.Linear(10, 4), nn.Linear(4, 10)
            self.c2, self.cls = nn.Conv2d(10, 32, 3, padding=1), nn.Conv2d(32, 10, 1)

        def forward(self, x):
            x = torch.relu(self.c1(x))
            x = x * torch.sigmoid(self.se2(torch.relu(self.se1(x.mean((2, 3))))))[:, :, None, None]
            return self.cls(torch.relu(self.c2(x))).mean((2, 3))

    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.rnn, self.head = nn.Linear(8, 16), nn.GRU(16, 32, batch_first=True), nn.Linear(32, 10)

        def forward(self, x):
            return self.head(self.rnn(torch.relu(self.proj(x.flatten(1, 2))))[0][:, -1])

    torch.manual_seed(0)
    x = torch.rand(4, 1, 8, 8) * 16
    data = x.clone()
    assert changes_its_input(Pixels(), x) and torch.equal(x, data)  # found on a copy; x as it was
    assert not changes_its_input(Aux().eval(), x)
    with pytest.raises(UnsupportedModel, match=r"^Pixels: its forward changes its input tensor in place \(x /= 16"):
        GenericSpace(Pixels(), (1, 8, 8))

    class Split:  # what check_forward reads of a dataset
        x_val = x

    with pytest.raises(n2n.models.ModelError, match=r"^digits.npz: the teacher cannot be measured as it is: its forward "
                                                     r"changes its input tensor in place"):
        check_forward(Pixels().eval(), Split, "digits.npz")
    assert torch.equal(x, data)
    class Halves(Pixels):  # in place in training mode only (helper-83)
        def forward(self, x):
            if self.training:
                x.mul_(0.5)
            return self.head(torch.relu(self.c(x)).mean((2, 3)))

    with pytest.raises(UnsupportedModel, match=r"^Halves: in training mode its forward changes its input tensor in place"):
        GenericSpace(Halves(), (1, 8, 8))
    with pytest.raises(UnsupportedModel, match=r"^Aux: in training mode its forward returns a tuple, in eval mode "
                                               r"logits of shape \(2, 10\); n2n distils students in training mode"):
        GenericSpace(Aux(), (1, 8, 8))
    heads = GenericSpace(ConvHead(), (1, 8, 8))
    cls = next(u for u in heads.units if u.name == "cls")
    assert not cls.shrinkable and re.fullmatch(r"every width of it changes the model's outputs \(its student's outputs would have shape "
                                               r"\(1, \d\), the teacher's \(1, 10\)\)", cls.why_fixed)
    for spec in (heads.identity(), heads.identity().with_ratios([0.5 if u.shrinkable else 1.0 for u in heads.units])):
        assert heads.build(spec)(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    try:
        GenericSpace(Recurrent(), (1, 8, 8))
    except UnsupportedModel as e:  # torch-pruning's own failure, said in one line
        assert str(e).startswith("torch-pruning could not group the channels of Recurrent: IndexError")


def test_a_model_that_squeezes_the_batch_axis_has_its_linear_layers_counted_whole():
    """helper-81: counted on one sample, `.squeeze()` after pooling gave Linear layers unbatched
    outputs, of which out[0] is one number: 96 multiply-adds instead of 2,688."""
    nn = torch.nn

    class Squeezed(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 32, 3, padding=1)
            self.fc, self.head = nn.Linear(32, 64), nn.Linear(64, 10)

        def forward(self, x):
            x = nn.functional.adaptive_avg_pool2d(torch.relu(self.c(x)), 1).squeeze()
            return self.head(torch.relu(self.fc(x)))

    torch.manual_seed(0)
    space = GenericSpace(Squeezed(), (1, 8, 8))
    assert space.flops(space.identity()) == 32 * 64 * 9 + 32 * 64 + 64 * 10 == 21_120


def test_a_glu_unit_s_widths_are_the_widths_it_is_built_with():
    """helper-81: a GLU's chunk(2) prunes channel c with its partner c + n/2, so a unit asked for 6 fewer
    of 32 channels lost 12: its key and every line said conv 26 wide (19 at ratio 0.6) where the student
    was built 20 (6) wide, and ratio 0.5 built a layer of no channels. Such a unit's widths go in steps
    of its partners, and the least important pairs go."""

    class Gated(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = torch.nn.Conv1d(1, 32, 3, padding=1), torch.nn.Conv1d(16, 16, 3, padding=1)
            self.fc = torch.nn.Linear(16, 10)

        def forward(self, x):  # (B, 1, 40)
            a, b = self.c1(x).chunk(2, dim=1)  # (B, 16, 40) each
            return self.fc(self.c2(a * torch.sigmoid(b)).mean(-1))  # (B, 10)

    torch.manual_seed(0)
    space = GenericSpace(Gated(), (1, 40))
    assert [u.name for u in space.units] == ["c1", "c2", "fc"] and space.step == {0: 2, 1: 1}
    for ratio in space.ratios:
        spec = space.identity().with_ratios([ratio, ratio, 1.0])
        student = space.build(spec)
        assert space.widths(spec)[:2] == [student.c1.out_channels, student.c2.out_channels], ratio
        assert student.c2.in_channels == student.c1.out_channels // 2
        assert space.params(spec) == sum(p.numel() for p in student.parameters())
    assert [space.width_of(0, r) for r in (0.25, 0.6, 0.8, 0.9)] == [8, 20, 26, 28]
    assert _starts_as_the_teacher(space, 0, 0.6) and _starts_as_the_teacher(space, 0, 0.25)

    class SideFirst(Gated):  # a side conv added to the GLU, registered first: torch-pruning's group root
        def __init__(self):
            super().__init__()
            self.side = torch.nn.Conv1d(1, 16, 3, padding=1)
            self.add_module("c1", self._modules.pop("c1"))  # (registered after side)

        def forward(self, x):  # (B, 1, 40)
            a, b = self.c1(x).chunk(2, dim=1)  # (B, 16, 40) each
            return self.fc(self.c2(a * torch.sigmoid(b) + self.side(x)).mean(-1))  # (B, 10)

    space = GenericSpace(SideFirst(), (1, 40))
    assert space.units[0].name == "c1" and space.step[0] == 2  # (helper-84: read off the side conv, 1)
    student = space.build(space.identity().with_ratios([0.6, 1.0, 1.0]))
    assert (space.widths(space.identity().with_ratios([0.6, 1.0, 1.0]))[0], student.c1.out_channels,
            student.side.out_channels) == (20, 20, 10)


def test_a_recurrent_layer_s_hidden_size_is_said_to_stay():
    """helper-81: an LSTM's inputs followed the conv before it, its hidden size stayed the teacher's, and
    nothing said so (it held parameters a group reached, so `untouched` passed it over)."""

    class Recurrent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.rnn = torch.nn.Conv1d(1, 16, 3, padding=1), torch.nn.LSTM(16, 24, batch_first=True)
            self.fc = torch.nn.Linear(24, 10)

        def forward(self, x):  # (B, 1, 40)
            out, _ = self.rnn(self.conv(x).transpose(1, 2))  # (B, 40, 24)
            return self.fc(out[:, -1])  # (B, 10)

    torch.manual_seed(0)
    space = GenericSpace(Recurrent(), (1, 40))
    assert space.untouched == {"rnn": "LSTM: its hidden size (24) stays as the teacher's; only its input width follows "
                                      "the layer before it", "fc": "the output layer"}
    student = space.build(space.identity().with_ratios([0.5, 1.0]))
    assert (student.rnn.input_size, student.rnn.hidden_size) == (8, 24)
