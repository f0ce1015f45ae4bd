"""The split belongs to the data and the teacher, never to the search; users may bring their own."""

import json

import numpy as np
import pytest
import torch

from n2n.config import load_config
from n2n.data import DataError, load_dataset
from n2n.models import ModelError, save_model
from n2n.search import prepare_run
from n2n.teachers import TeacherRecipe, cached_teacher, train_teacher

TINY = {"preset": "vgg1d", "width_mult": 0.25, "hidden": [32], "epochs": 6}


def test_the_search_seed_never_resplits_the_teachers_data():
    """seed=1 used to re-split MNIST-1D, so the teacher was 'evaluated' on samples it trained on."""
    teacher_metrics = json.loads((cached_teacher(TeacherRecipe(**TINY), log=lambda *_: None) / "metrics.json").read_text())
    for seed in (0, 1, 7):
        meta, (_, _, ds, _) = prepare_run(load_config(None, {"seed": seed, "teacher.recipe": TINY}), log=lambda *_: None)
        assert meta["split"] == teacher_metrics["split"] and meta["split"]["seed"] == 0
        assert meta["reference"]["accuracy"] == teacher_metrics["val_accuracy"]  # measured on its own split
        assert meta["teacher"]["test_accuracy"] == teacher_metrics["test_accuracy"]


def _npz_task(path, shift=0.0, n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = (rng.normal(size=(n, 1, 40)) + y[:, None, None] * 1.5 + shift).astype(np.float32)
    np.savez(path, x=x, y=y)
    return x, y


def test_a_teacher_refuses_data_other_than_its_own_and_names_both(tmp_path):
    _npz_task(tmp_path / "d.npz")
    recipe = TeacherRecipe(dataset=f"npz:{tmp_path / 'd.npz'}", arch="mlp", hidden=[16], epochs=2)
    train_teacher(recipe, out=tmp_path / "t", log=lambda *_: None)
    cfg = load_config(None, {"teacher.path": str(tmp_path / "t")})
    meta, _ = prepare_run(cfg, log=lambda *_: None)
    (tmp_path / "d.npz").rename(tmp_path / "moved.npz")  # a moved file is the same data
    moved = load_config(None, {"teacher.path": str(tmp_path / "t"), "teacher.dataset": f"npz:{tmp_path / 'moved.npz'}"})
    assert prepare_run(moved, log=lambda *_: None)[0]["split"]["fingerprint"] == meta["split"]["fingerprint"]
    recorded = (f"expected the data the teacher was trained on \\(npz:{tmp_path / 'd.npz'}: 300 samples, "
                f"train/val/test 210/45/45, fingerprint {meta['split']['fingerprint']}\\), found ")
    # what changed is named: the same file name with other samples, other labels, fewer rows
    x, y = _npz_task(tmp_path / "moved.npz", shift=0.1)
    with pytest.raises(DataError, match=recorded + "the same sizes but other data: its inputs \\(x\\) changed"):
        prepare_run(moved, log=lambda *_: None)
    np.savez(tmp_path / "moved.npz", x=_npz_task(tmp_path / "d.npz")[0], y=(y + 1) % 3)
    with pytest.raises(DataError, match=recorded + "the same sizes but other data: its labels \\(y\\) changed"):
        prepare_run(moved, log=lambda *_: None)
    np.savez(tmp_path / "moved.npz", x=x[:-20], y=y[:-20])
    with pytest.raises(DataError, match=recorded + "280 samples, train/val/test 196/42/42"):
        prepare_run(moved, log=lambda *_: None)


def test_the_teacher_cache_follows_the_contents_of_a_users_file(tmp_path):
    """The cache was keyed on the name "npz:PATH": after the file changed, every search failed the old
    teacher's fingerprint check, and no command retrained it."""
    _npz_task(tmp_path / "d.npz")
    recipe = TeacherRecipe(dataset=f"npz:{tmp_path / 'd.npz'}", arch="mlp", hidden=[16], epochs=1)
    first = cached_teacher(recipe, log=lambda *_: None)
    assert first.parent.name == "teachers" and first.name.startswith("npz-d.npz-mlp-")  # not tmp_path's folders
    assert cached_teacher(recipe, log=lambda *_: None) == first  # the same contents: the same teacher
    _npz_task(tmp_path / "d.npz", shift=0.1)  # the same path, other samples
    second = cached_teacher(recipe, log=lambda *_: None)
    assert second != first and (first / "model.safetensors").exists()  # the old teacher is kept
    cfg = load_config(None, {"teacher.recipe": {"dataset": recipe.dataset, "arch": "mlp", "hidden": [16], "epochs": 1}})
    meta, _ = prepare_run(cfg, log=lambda *_: None)
    assert meta["split"] == json.loads((second / "metrics.json").read_text())["split"]
    assert meta["split"]["fingerprint"] != json.loads((first / "metrics.json").read_text())["split"]["fingerprint"]


def test_a_teacher_that_records_no_input_standardisation_is_warned_about(tmp_path):
    """A user's model trained on raw inputs was measured on standardised ones, near chance, with nothing said."""
    from n2n.models import build_model, load_model
    from n2n.search import teacher_data

    _npz_task(tmp_path / "d.npz")
    hp = {"input_shape": [1, 40], "num_classes": 3, "hidden": [8]}
    for arch, warned in (({"family": "mlp", "hparams": hp}, True),
                         ({"family": "mlp", "hparams": hp, "input": {"scale": 1.0, "shift": 0.0, "shape": [1, 40]}}, False)):
        folder = tmp_path / f"t{int(warned)}"
        save_model(folder, build_model(arch), arch, {})
        logs = []
        ds = teacher_data(folder, {}, load_model(folder)[1], f"npz:{tmp_path / 'd.npz'}", log=logs.append)
        assert any("records no input standardisation" in m for m in logs) == warned
        if not warned:  # the recorded scale and shift are used as they are: the model sees raw inputs
            assert torch.equal(ds.x_train, torch.as_tensor(np.load(tmp_path / "d.npz")["x"])[ds.index["train"]])


def test_users_bring_their_own_split(tmp_path):
    x, y = _npz_task(tmp_path / "d.npz", n=90)
    np.savez(tmp_path / "sep.npz", x_train=x[:50], y_train=y[:50], x_val=x[50:70], y_val=y[50:70], x_test=x[70:],
             y_test=y[70:])
    sep = load_dataset(f"npz:{tmp_path / 'sep.npz'}", seed=5)  # a seed cannot re-split given data
    assert sep.sizes() == {"train": 50, "val": 20, "test": 20} and sep.split["seed"] is None
    assert [sep.index[k].tolist() for k in ("train", "val", "test")] == [list(range(50)), list(range(50, 70)), list(range(70, 90))]
    labels = np.array(["train"] * 50 + ["val"] * 20 + ["test"] * 20)[::-1]
    np.savez(tmp_path / "arr.npz", x=x, y=y, split=labels)
    arr = load_dataset(f"npz:{tmp_path / 'arr.npz'}")
    assert arr.index["test"].tolist() == list(range(20)) and arr.sizes() == sep.sizes()
    assert torch.equal(arr.y_test, torch.as_tensor(y[:20]))
    # a teacher trained on that split refuses the same samples split otherwise, or not split at all
    from n2n.data import load_split

    for other, found in ((dict(x=x, y=y, split=labels[::-1]), "which samples are train, val or test changed"),
                         (dict(x=x, y=y), "found 90 samples, train/val/test 62/13/15")):
        np.savez(tmp_path / "arr2.npz", **other)
        with pytest.raises(DataError, match=found):
            load_split(f"npz:{tmp_path / 'arr2.npz'}", arr.split)
    np.savez(tmp_path / "bad.npz", x=x, y=y, split=np.array(["train", "dev"] * 45))
    with pytest.raises(DataError, match="expected 'split' to give each of the 90 samples 'train', 'val' or 'test'"):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")


def test_a_teacher_without_a_split_or_far_from_its_own_figure_is_flagged(tmp_path, small_teacher):
    model, arch, val_acc = small_teacher
    save_model(tmp_path / "t", model, arch, {"dataset": "mnist1d", "val_accuracy": 0.5})  # no split recorded
    logs = []
    meta, _ = prepare_run(load_config(None, {"teacher.path": str(tmp_path / "t")}), log=logs.append)
    assert meta["split"]["seed"] == 0
    assert any("records no data split, so n2n uses split seed 0 of mnist1d" in m for m in logs)
    assert any(f"measures {val_acc:.4f} validation accuracy on this split, its metrics.json says 0.5000" in m for m in logs)
    # data that brings its own split is used as given: no warning that a seed split it (helper-27)
    from n2n.search import teacher_data

    x, y = np.random.default_rng(0).normal(size=(60, 1, 40)).astype(np.float32), np.arange(60) % 10
    np.savez(tmp_path / "own.npz", x_train=x[:40], y_train=y[:40], x_val=x[40:50], y_val=y[40:50], x_test=x[50:],
             y_test=y[50:])
    logs.clear()
    ds = teacher_data(tmp_path / "t", {}, arch, f"npz:{tmp_path / 'own.npz'}", log=logs.append)
    assert ds.split["seed"] is None and ds.sizes() == {"train": 40, "val": 10, "test": 10}
    assert not any("records no data split" in m for m in logs), logs


def test_inputs_are_standardised_as_the_teacher_was_on_any_thread_count(tmp_path):
    """torch's float32 mean over the training split changed in its last bits with the thread count,
    so a resume or export in a process with other threads distilled every student on other inputs
    (a kill-and-resume run and an uninterrupted one differed in most accuracies)."""
    from n2n.data import load_raw

    before = torch.get_num_threads()
    try:
        stats = []
        for threads in (1, 2, 3):  # MNIST-1D's 280,000 training values: large enough to be summed in parallel
            torch.set_num_threads(threads)
            stats.append(load_dataset("mnist1d").preprocess)
    finally:
        torch.set_num_threads(before)
    assert stats[0] == stats[1] == stats[2]
    train = load_raw("mnist1d")[0][load_dataset("mnist1d").index["train"]].astype(np.float64)
    assert stats[0]["shift"] == pytest.approx(-train.mean() / train.std(ddof=1), rel=1e-12)

    x, _ = _npz_task(tmp_path / "d.npz")
    npz = load_dataset(f"npz:{tmp_path / 'd.npz'}").preprocess

    # a search uses the standardisation recorded with the teacher (arch.json "input"), not its own
    recipe = TeacherRecipe(dataset=f"npz:{tmp_path / 'd.npz'}", arch="mlp", hidden=[16], epochs=1)
    train_teacher(recipe, out=tmp_path / "t", log=lambda *_: None)
    arch = json.loads((tmp_path / "t" / "arch.json").read_text())
    assert arch["input"] == npz
    arch["input"] = {**arch["input"], "scale": 0.5, "shift": 1.0}  # as if trained on other statistics
    (tmp_path / "t" / "arch.json").write_text(json.dumps(arch))
    meta, (_, _, ds, _) = prepare_run(load_config(None, {"teacher.path": str(tmp_path / "t")}), log=lambda *_: None)
    assert ds.preprocess == arch["input"]
    assert torch.allclose(ds.x_val, torch.as_tensor(x[ds.index["val"]]) * 0.5 + 1.0)
    # hand-written, without the shape n2n records: refused, not silently replaced by fresh numbers
    arch["input"] = {"scale": 0.5, "shift": 1.0}
    (tmp_path / "t" / "arch.json").write_text(json.dumps(arch))
    with pytest.raises(ModelError, match=r"arch.json: expected \"input\" to hold numbers scale and shift and a shape "
                                         r"of whole numbers >= 1, as n2n writes it; found \{'scale': 0.5, 'shift': 1.0\}"):
        prepare_run(load_config(None, {"teacher.path": str(tmp_path / "t")}), log=lambda *_: None)


def test_standardisation_is_summed_in_chunks_without_a_float64_copy():
    from n2n.data import _standardisation

    x = np.random.default_rng(0).normal(3.0, 2.0, size=(5000, 1, 40)).astype(np.float32)
    whole, chunked = _standardisation(x), _standardisation(x, chunk=777)  # 200,000 values, 258 chunks
    wide = x.astype(np.float64)
    assert whole["shape"] == chunked["shape"] == [1, 40]
    for s in (whole, chunked):
        assert s["scale"] == pytest.approx(1 / wide.std(ddof=1), rel=1e-12)
        assert s["shift"] == pytest.approx(-wide.mean() / wide.std(ddof=1), rel=1e-12)


def test_a_folder_that_lost_hidden_files_says_why():
    """A teacher trained before n2n skipped hidden files (.ipynb_checkpoints, ._x.png) counted them:
    its data is now refused, and the message says what changed and why, not just two fingerprints."""
    from n2n.data import _differences

    old = {"dataset": "folder:/d", "fingerprint": "a", "sizes": {"train": 71, "val": 15, "test": 16}}
    now = {"dataset": "folder:/d", "fingerprint": "b", "sizes": {"train": 70, "val": 15, "test": 15},
           "parts": {"x": "1", "y": "2", "split": "3"}}
    assert _differences(old, now) == ("100 samples, train/val/test 70/15/15, fingerprint b (n2n now skips hidden "
                                      "files and folders, names starting with '.': an earlier n2n counted them)")
    # a teacher of this n2n (its record has the parts' digests) lost images some other way: no such note;
    # a record damaged past reading (no dataset, sizes of another form) is still one line (helper-29)
    assert _differences({**old, "parts": now["parts"]}, now) == "100 samples, train/val/test 70/15/15, fingerprint b"
    from n2n.data import _described

    assert _described({"fingerprint": "a", "sizes": [1, 2]}) == "None: fingerprint a"
    assert _differences({**now, "parts": {"x": "1", "y": "9", "split": "8"}}, {**now, "fingerprint": "c"}) == (
        "the same sizes but other data: its labels (y), which samples are train, val or test changed (fingerprint c)")


def test_a_split_records_its_data_by_absolute_path(tmp_path, monkeypatch):
    """A split is read again from other folders (an export's metrics.json, a run's n2n.json): a text
    teacher's recorded `text:train.csv` as given, naming another file, or none, elsewhere."""
    _npz_task(tmp_path / "d.npz")
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("npz:d.npz")
    assert ds.split["dataset"] == f"npz:{tmp_path / 'd.npz'}"
    assert load_dataset("digits").split["dataset"] == "digits"  # built-in names stay names


def test_a_teacher_answering_the_classes_in_another_order_is_refused(tmp_path, small_teacher):
    """helper-92: a teacher that numbers the classes otherwise than the data (placeholder names beside
    string labels, numbered in sorted order) was measured far below chance with a warning, searched,
    and exported with the data's names on the wrong outputs."""
    import copy
    from types import SimpleNamespace

    from n2n.search import check_class_order

    model, arch, val_acc = small_teacher
    rotated = copy.deepcopy(model)
    last = [m for m in rotated.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # output i now answers what output i - 1 did
        last.weight.copy_(last.weight.roll(1, 0))
        last.bias.copy_(last.bias.roll(1, 0))
    save_model(tmp_path / "t", rotated, arch, {"dataset": "mnist1d"})
    with pytest.raises(DataError, match=rf"^mnist1d: the teacher scores 0\.0\d+ on its validation split, but "
                                        rf"{val_acc:.4f} with its outputs read in another order \(output 0 = 9, "
                                        rf"output 1 = 0, .* output 9 = 8\): it numbers the classes otherwise than the "
                                        rf"data\. Write the labels as the teacher's class ids$"):
        prepare_run(load_config(None, {"teacher.path": str(tmp_path / "t")}), log=lambda *_: None)
    # named classes, and what no reordering explains: left to the chance warning
    y = torch.arange(200) % 2
    ds = SimpleNamespace(y_val=y, num_classes=2, labels=["negative", "positive"])
    # (helper-94: naming id2label as a way out led to the refusal of names in another order)
    with pytest.raises(DataError, match=r"\(output 0 = positive, output 1 = negative\): .* \(string labels are "
                                        r"numbered in sorted order\)\. Write the labels as the teacher's class ids$"):
        check_class_order(1 - y, ds, "text:x.csv")
    # right, one class always, at chance (seeds where the best order clears chance by luck: helper-94),
    # or weak: not refused here
    weak = torch.where(torch.arange(200) % 20 < 7, y, 1 - y)  # 0.35 as they are, 0.65 reordered
    for predicted in (y, torch.zeros(200, dtype=torch.long), weak,
                      *(torch.randint(0, 2, (200,), generator=torch.Generator().manual_seed(s)) for s in range(50))):
        check_class_order(predicted, ds, "text:x.csv")
