import json
import re
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import n2n
from n2n.config import load_config
from n2n.data import load_dataset
from n2n.errors import ConfigError
from n2n.models import ModelError, build_model, load_model, save_model
from n2n.teachers import TeacherRecipe, train_teacher
from n2n.train import accuracy
from search_spaces import count_params


def test_save_load_round_trip_gives_identical_outputs(small_teacher, mnist1d, tmp_path):
    model, arch, val_acc = small_teacher
    save_model(tmp_path / "t", model, arch, {"val_accuracy": val_acc})
    loaded, arch2, metrics = load_model(tmp_path / "t")
    assert arch2 == arch and metrics["val_accuracy"] == val_acc
    x = mnist1d.x_val[:64]
    assert torch.equal(loaded(x), model.eval()(x))
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["arch.json", "metrics.json", "model.safetensors"]


def test_save_never_overwrites_unless_asked(small_teacher, tmp_path):
    model, arch, _ = small_teacher
    save_model(tmp_path / "t", model, arch, {"n": 1, "recipe": {}})
    with pytest.raises(FileExistsError):
        save_model(tmp_path / "t", model, arch, {"n": 2, "recipe": {}})
    assert json.loads((tmp_path / "t" / "metrics.json").read_text()) == {"n": 1, "recipe": {}}
    save_model(tmp_path / "t", model, arch, {"n": 3, "recipe": {}}, overwrite=True)  # an earlier n2n teacher
    assert json.loads((tmp_path / "t" / "metrics.json").read_text()) == {"n": 3, "recipe": {}}
    save_model(tmp_path / "mine", model, arch, {"n": 4})  # no recipe: not a teacher n2n trained
    with pytest.raises(FileExistsError, match="is not an earlier n2n teacher"):
        save_model(tmp_path / "mine", model, arch, {"n": 5}, overwrite=True)


def test_load_errors_are_clear(tmp_path, small_teacher):
    with pytest.raises(ModelError, match="expected a model folder with model.safetensors"):
        load_model(tmp_path)
    with pytest.raises(ModelError, match=r"expected a model folder, found nothing there \(a relative path is read "
                                         r"from the folder the command runs in, "):  # helper-51
        load_model(Path("no/such/teacher"))
    model, arch, _ = small_teacher
    save_model(tmp_path / "t", model, arch, {})
    bad = dict(arch, hparams=dict(arch["hparams"], width_mult=0.5))
    (tmp_path / "t" / "arch.json").write_text(json.dumps(bad))
    # what differs is named (torch's message was cut to "Error(s) in loading state_dict for Sequential:")
    with pytest.raises(ModelError, match=r"weights do not match arch.json: \d+ tensors of another shape \(0.weight: "
                                         r"the file holds \[\d+, 1, 3\], the model built from arch.json takes \[\d+, 1, 3\]"):
        load_model(tmp_path / "t")
    with pytest.raises(ModelError, match="unknown model family 'resnet9'"):
        build_model({"family": "resnet9"})


def test_training_is_seeded_and_learns_digits():
    recipe = TeacherRecipe(dataset="digits", arch="mlp", hidden=[64], epochs=6, lr=3e-3, seed=3)
    m1, arch, metrics = train_teacher(recipe, log=lambda *_: None)
    m2, _, metrics2 = train_teacher(recipe, log=lambda *_: None)
    assert metrics["val_accuracy"] == metrics2["val_accuracy"]
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert metrics["val_accuracy"] > 0.85 and metrics["params"] == count_params(m1) == 64 * 64 + 64 + 64 * 10 + 10


def test_cli_teacher_train_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "teacher"
    cmd = [sys.executable, "-m", "n2n.cli", "teacher", "train", "--dataset", "digits", "--preset", "small",
           "--width-mult", "0.5", "--hidden", "16", "--epochs", "6", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "digits" and 0.5 < metrics["test_accuracy"] <= 1.0
    # what else decides the weights, recorded: the thread count sets the order of float sums
    assert metrics["trained_on"] == {"device": "cpu", "torch_threads": 1, "torch": torch.__version__}
    before = (out / "model.safetensors").read_bytes()
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 2
    assert "already exists" in again.stderr and "Traceback" not in again.stderr
    assert (out / "model.safetensors").read_bytes() == before
    bad = subprocess.run(cmd[:-2] + ["--out", str(tmp_path / "x"), "--dataset", "npz:/nope.npz"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "expected a file at /nope.npz" in bad.stderr and "Traceback" not in bad.stderr


def test_teacher_train_refuses_flags_its_teacher_would_ignore(tmp_path, capsys):
    """helper-72: `--max-length` without --hf, `--preset`/`--width-mult` with --arch mlp and `--hidden`
    with a resnet were ignored without a word, as were --arch and its flags beside --hf."""
    from n2n import cli

    out = tmp_path / "t"
    cases = [(["--dataset", "digits", "--max-length", "16"],
              "--max-length: not used without --hf (tokens per text of a Hugging Face teacher)"),
             (["--dataset", "text:r.csv", "--hf", str(tmp_path), "--preset", "small"],
              "--preset: not used with --hf (the checkpoint is the architecture)"),
             (["--dataset", "text:r.csv", "--hf", str(tmp_path), "--arch", "vgg"], "--arch: not used with --hf"),
             (["--dataset", "digits", "--arch", "mlp", "--preset", "small"],
              "teacher.recipe.preset (--preset): expected none for mlp (its widths are hidden), got 'small'"),
             (["--dataset", "digits", "--arch", "mlp", "--width-mult", "2"],
              "teacher.recipe.width_mult (--width-mult): expected 1.0 for mlp"),
             (["--dataset", "digits", "--arch", "resnet", "--preset", "resnet10", "--hidden", "64"],
              "teacher.recipe.hidden (--hidden): expected none for resnet"),
             # given at the recipe's default, which the recipe cannot tell from left out
             (["--dataset", "digits", "--arch", "mlp", "--preset", "vgg1d"],
              "--preset: not used with --arch mlp (its widths are --hidden)"),
             (["--dataset", "digits", "--arch", "mlp", "--width-mult", "1"], "--width-mult: not used with --arch mlp"),
             (["--dataset", "digits", "--arch", "resnet", "--hidden", "256"],
              "--hidden: not used with --arch resnet (its classifier is one linear layer)")]
    for flags, message in cases:
        assert cli.main(["teacher", "train", *flags, "--epochs", "1", "--out", str(out)]) == 2, flags
        assert f"n2n: error: {message}" in capsys.readouterr().err
        assert not out.exists()
    with pytest.raises(ConfigError, match=r"^teacher.recipe.preset \(--preset\): expected none for mlp"):
        load_config(None, {"teacher.recipe": {"arch": "mlp", "preset": "vgg11", "hidden": [8]}})
    # what they leave out is the recipe's default, as before
    assert load_config(None, {"teacher.recipe": {"arch": "mlp", "hidden": [8]}}).teacher.recipe.preset == "vgg1d"


def test_resnet_teacher_from_a_recipe_round_trips(tmp_path):
    recipe = TeacherRecipe(dataset="digits", arch="resnet", preset="resnet10", width_mult=0.125, epochs=2)
    model, arch, metrics = train_teacher(recipe, out=tmp_path / "r", log=lambda *_: None)
    assert {k: v for k, v in arch.items() if k != "input"} == {
        "family": "resnet", "hparams": {"input_shape": [1, 8, 8], "num_classes": 10, "preset": "resnet10", "width": 8}}
    loaded, _, _ = load_model(tmp_path / "r")
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(loaded(x), model.eval()(x))
    assert metrics["params"] == count_params(loaded)
    # the folder is a deployable model: on scikit-learn's raw images (0..16, no channel axis) it scores
    # exactly what metrics.json says, because it carries the standardisation n2n trained it with
    from sklearn.datasets import load_digits

    raw, ds = load_digits(), load_dataset("digits")
    assert metrics["split"] == ds.split and arch["input"]["shape"] == [1, 8, 8]
    deployed = n2n.load_student(tmp_path / "r")
    for part in ("val", "test"):
        i = ds.index[part]
        got = accuracy(deployed, torch.as_tensor(raw.images[i]), torch.as_tensor(raw.target[i]))
        assert got == metrics[f"{part}_accuracy"] and count_params(deployed) == metrics["params"]
    one = raw.images[ds.index["test"][0]]  # one raw image, no batch axis: said so, not a conv's weight error
    with pytest.raises(ValueError, match=r"expected a batch of inputs of shape \(N, 1, 8, 8\) or \(N, 8, 8\), "
                                         r"got \(8, 8\); one sample x is x\[None\]"):
        deployed(torch.as_tensor(one))
    assert deployed(torch.as_tensor(one)[None]).shape == (1, 10)
    # helper-21: .half() / .double() failed whatever the input (the inputs were always float32)
    x = torch.as_tensor(raw.images[ds.index["test"]])
    full = deployed(x)
    for dtype, tol in ((torch.float64, 1e-4), (torch.bfloat16, 0.25)):
        other = n2n.load_student(tmp_path / "r").to(dtype)(x)
        assert other.dtype == dtype and (other.float() - full).abs().max() < tol
        assert (other.argmax(1) == full.argmax(1)).float().mean() > 0.95


def test_teacher_show_and_a_preset_adapted_to_small_inputs_says_so(tmp_path):
    logs = []
    recipe = TeacherRecipe(dataset="digits", preset="vgg11", width_mult=0.125, hidden=[8], epochs=1)
    _, _, metrics = train_teacher(recipe, out=tmp_path / "t", log=logs.append)
    assert any("vgg11 on inputs of shape (1, 8, 8): 2 of its 5 pools dropped" in m for m in logs)
    n2n_bin = str(Path(sys.executable).parent / "n2n")
    shown = subprocess.run([n2n_bin, "teacher", "show", str(tmp_path / "t")], capture_output=True, text=True)
    rows = dict(line.split(": ", 1) for line in shown.stdout.strip().splitlines())
    rows = {k.strip(): v for k, v in rows.items()}
    assert shown.returncode == 0 and rows["params"] == f"{metrics['params']:,}" and rows["family"] == "vgg"
    assert rows["val accuracy"] == f"{metrics['val_accuracy']:.4f}" and rows["split"].startswith("seed 0, sizes")
    # the architecture as the search sees it, unit by unit (helper-43: only `family: vgg` was shown)
    assert re.fullmatch(r"\d+ \(name kind width\): conv0 conv 8, .* linear 10", rows["units"]), rows["units"]
    # measured on the recorded split, not read from metrics.json: an edit shows beside it (helper-25)
    edited = {**metrics, "val_accuracy": 0.9999, "test_accuracy": 0.9998}
    (tmp_path / "t" / "metrics.json").write_text(json.dumps(edited))
    shown = subprocess.run([n2n_bin, "teacher", "show", str(tmp_path / "t")], capture_output=True, text=True)
    rows = {k.strip(): v for k, v in (line.split(": ", 1) for line in shown.stdout.strip().splitlines())}
    assert rows["val accuracy"] == f"{metrics['val_accuracy']:.4f} (metrics.json records 0.9999)"
    assert rows["test accuracy"] == f"{metrics['test_accuracy']:.4f} (metrics.json records 0.9998)"
    # a teacher of your own records its split, which names its data: measured on it (helper-87: "not measured:
    # no split recorded", above the split it showed, where metrics.json had no "dataset" beside it)
    (tmp_path / "t" / "metrics.json").write_text(json.dumps({"split": metrics["split"]}))
    shown = subprocess.run([n2n_bin, "teacher", "show", str(tmp_path / "t")], capture_output=True, text=True)
    rows = {k.strip(): v for k, v in (line.split(": ", 1) for line in shown.stdout.strip().splitlines())}
    assert rows["val accuracy"] == f"{metrics['val_accuracy']:.4f}" and rows["dataset"] == "digits", shown.stdout


def test_a_module_teacher_imports_its_factory_from_the_working_directory(tmp_path):
    """Like `python -m`, without PYTHONPATH; and only when the user names the factory."""
    (tmp_path / "mynet.py").write_text("import torch\ndef make(width=4):\n"
                                       "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, width), "
                                       "torch.nn.ReLU(), torch.nn.Linear(width, 3))\n")
    import importlib.util

    spec = importlib.util.spec_from_file_location("mynet", tmp_path / "mynet.py")
    mynet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mynet)
    save_model(tmp_path / "t", mynet.make(), {"family": "module", "factory": "mynet:make", "kwargs": {"width": 4},
                                               "input_shape": [8]}, {})
    n2n_bin = str(Path(sys.executable).parent / "n2n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ok = subprocess.run([n2n_bin, "teacher", "show", "t", "--allow-factory", "mynet:make"], cwd=tmp_path, env=env,
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "params: 51" in ok.stdout, ok.stderr
    # the working directory comes after the installed packages: a stray file named like one of them
    # (yaml.py, imported once the config is read) is not run
    (tmp_path / "yaml.py").write_text("import pathlib\npathlib.Path('PWNED').write_text('ran')\n")
    shadow = subprocess.run([n2n_bin, "search", "--allow-factory", "mynet:make", "--set", "foo=1"], cwd=tmp_path,
                            env=env, capture_output=True, text=True)
    assert shadow.returncode == 2 and "foo: unknown key" in shadow.stderr and not (tmp_path / "PWNED").exists()
    refused = subprocess.run([n2n_bin, "teacher", "show", "t"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "--allow-factory mynet:make" in refused.stderr


def test_allowing_a_factory_imports_that_module_alone_from_the_working_folder(tmp_path, monkeypatch):
    """helper-22: --allow-factory put the working folder on sys.path (here and in every Ray worker),
    so each optional module a library probes for (tabulate, gmpy2, psutil...) ran from any .py lying
    there. Only the factory's own top-level module is found there now, after the installed packages."""
    import importlib.util

    from search_spaces import UnsupportedModel
    from search_spaces.generic import load_factory

    (tmp_path / "mynet2.py").write_text("import torch\ndef make():\n    return torch.nn.Linear(2, 2)\n")
    (tmp_path / "tabulate_probe.py").write_text("import pathlib\npathlib.Path('PWNED').write_text('ran')\n")
    (tmp_path / "uses_sibling.py").write_text("import mynet_helpers\ndef make():\n    return None\n")
    (tmp_path / "mynet_helpers.py").write_text("")
    monkeypatch.setenv("N2N_FACTORY_PATH", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    make = load_factory("mynet2:make", ["mynet2:make"])
    assert make().in_features == 2 and str(tmp_path) not in sys.path
    assert importlib.util.find_spec("tabulate_probe") is None and not (tmp_path / "PWNED").exists()
    with pytest.raises(UnsupportedModel, match=rf"No module named 'mynet_helpers'; from {tmp_path} n2n imports only "
                                               r"'uses_sibling' itself"):
        load_factory("uses_sibling:make", ["uses_sibling:make"])
    # a factory that is not there at all: where n2n looked (helper-49/51: a resume command run from elsewhere)
    with pytest.raises(UnsupportedModel, match=rf"cannot be imported: No module named 'nosuch'; n2n looks for 'nosuch' "
                                               rf"in the folder the command runs in \({tmp_path}\) and among installed "
                                               rf"packages: run it from the folder that holds 'nosuch', or install it$"):
        load_factory("nosuch.models:make", ["nosuch.models:make"])
    (tmp_path / "pkgx").mkdir()  # the package there, its module not (helper-52: told to run from where it was run)
    (tmp_path / "pkgx" / "__init__.py").write_text("")
    with pytest.raises(UnsupportedModel, match=r"No module named 'pkgx.models'; 'pkgx' was found, but it holds no "
                                               r"module 'pkgx.models'$"):
        load_factory("pkgx.models:make", ["pkgx.models:make"])
    # a missing third-party module gets no such hint (helper-23)
    (tmp_path / "needs_dep.py").write_text("import not_installed_anywhere\ndef make():\n    return None\n")
    with pytest.raises(UnsupportedModel, match=r"No module named 'not_installed_anywhere'$"):
        load_factory("needs_dep:make", ["needs_dep:make"])
    for name in ("mynet2", "uses_sibling", "pkgx"):
        sys.modules.pop(name, None)


def test_a_relative_dataset_path_is_recorded_absolute(tmp_path, monkeypatch):
    """helper-12: `--dataset npz:dg.npz` was recorded as typed, so the teacher, the runs searched from
    it and their exports failed from any other directory ("expected a file at dg.npz")."""
    import numpy as np

    from n2n.config import load_config
    from n2n.data import absolute, load_dataset
    from n2n.search import resolve_teacher

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a" / "dg.npz", x=rng.normal(size=(60, 1, 8)).astype(np.float32), y=np.arange(60) % 3)
    monkeypatch.chdir(tmp_path / "a")
    recipe = TeacherRecipe(dataset="npz:dg.npz", arch="mlp", hidden=[8], epochs=1)
    _, _, metrics = train_teacher(recipe, out=tmp_path / "t", log=lambda *_: None)
    where = f"npz:{tmp_path / 'a' / 'dg.npz'}"
    assert metrics["dataset"] == metrics["recipe"]["dataset"] == where
    monkeypatch.chdir(tmp_path / "b")  # where a run, a resume or an export may be started
    cfg = load_config(None, {"teacher.path": str(tmp_path / "t")})
    assert resolve_teacher(cfg, log=lambda *_: None) == (tmp_path / "t", where)
    assert load_dataset(where).split["fingerprint"] == metrics["split"]["fingerprint"]
    assert absolute("npz:../a/dg.npz") == f"npz:{tmp_path / 'b' / '..' / 'a' / 'dg.npz'}"  # not normalised:
    assert absolute("digits") == "digits" and absolute(where) == where                  # b may be a symlink
    assert absolute("folder:~/imgs") == f"folder:{Path.home() / 'imgs'}"


def test_a_teacher_whose_training_diverges_is_not_saved(tmp_path):
    """helper-14: `--lr 1e9` printed "loss nan", saved NaN weights and exited 0; a search of that
    teacher then failed minutes later without naming it."""
    from n2n.errors import ConfigError

    recipe = TeacherRecipe(dataset="digits", preset="small", width_mult=0.25, hidden=[8], epochs=2, lr=1e9)
    with pytest.raises(ConfigError, match=r"teacher training diverged: the training loss became (nan|inf) in epoch 1 "
                                          r"\(lr 1e\+09\); lower --lr \(teacher.recipe.lr\). Nothing was saved"):
        train_teacher(recipe, out=tmp_path / "t", log=lambda *_: None)
    assert not (tmp_path / "t").exists()


def test_the_teacher_cache_holds_only_what_its_recipe_trained(tmp_path, monkeypatch):
    """helper-22: a folder put at a recipe's cache key (`teacher train --out` into the cache, with
    --overwrite) was searched under that recipe's name: a vgg search ran on a 610-parameter MLP. Two
    searches that trained the same teacher at once: the second died after training it."""
    import shutil

    from n2n import teachers
    from n2n.data import DataError
    from n2n.errors import RunError
    from n2n.teachers import cached_teacher

    monkeypatch.setenv("N2N_CACHE", str(tmp_path / "cache"))
    recipe = TeacherRecipe(dataset="digits", arch="mlp", hidden=[8], epochs=1)
    folder = cached_teacher(recipe, log=lambda *_: None)
    assert cached_teacher(recipe, log=lambda *_: None) == folder  # a hit: nothing trained
    kept = tmp_path / "kept"
    shutil.copytree(folder, kept)
    metrics = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({**metrics, "recipe": {**metrics["recipe"], "hidden": [64]}}))
    with pytest.raises(RunError, match=rf"{folder}: the cached teacher was not trained from this recipe; its "
                                       r"metrics.json records the recipe .*'hidden': \[64\].*; move that folder aside"):
        cached_teacher(recipe, log=lambda *_: None)
    shutil.rmtree(folder)
    said = []

    def raced(recipe, out, log, **_):  # another search commits the same teacher first
        shutil.copytree(kept, out)
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")

    monkeypatch.setattr(teachers, "train_teacher", raced)
    assert cached_teacher(recipe, log=said.append) == folder
    assert said == [f"another process cached this teacher while this one trained it: using {folder}"]
    # a file dataset named by a relative path is recorded absolute: still the same recipe (helper-23)
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(60, 6)).astype(np.float32), y=np.arange(60) % 3)
    monkeypatch.setattr(teachers, "train_teacher", train_teacher)
    relative = TeacherRecipe(dataset="npz:d.npz", arch="mlp", hidden=[4], epochs=1)
    first = cached_teacher(relative, log=lambda *_: None)
    assert cached_teacher(relative, log=lambda *_: None) == first
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("N2N_CACHE", str(tmp_path / "file"))
    with pytest.raises(DataError, match=r"N2N_CACHE: expected a folder for n2n's cache, .*file is a file"):
        cached_teacher(recipe, log=lambda *_: None)


def test_a_teacher_trained_to_no_better_than_the_most_common_class_is_warned_of_at_once(tmp_path):
    """helper-49: `teacher train` saved a teacher at 32% of three classes without a word; only the
    first search of it warned."""
    said = []
    recipe = TeacherRecipe(dataset="digits", preset="small", width_mult=0.25, hidden=[8], epochs=1, lr=1e-12)
    _, _, metrics = train_teacher(recipe, out=tmp_path / "t", log=said.append)
    assert metrics["val_accuracy"] < 0.2 and (tmp_path / "t" / "model.safetensors").exists()  # saved, as asked
    assert any(m.startswith(f"warning: the teacher's validation accuracy {metrics['val_accuracy']:.4f} is not clearly "
                            f"better than always answering the most common class") for m in said), said
    good = TeacherRecipe(dataset="digits", preset="small", width_mult=0.5, hidden=[16], epochs=6)
    said.clear()
    _, _, metrics = train_teacher(good, out=tmp_path / "g", log=said.append)
    assert metrics["val_accuracy"] > 0.3 and not any("most common class" in m for m in said)
