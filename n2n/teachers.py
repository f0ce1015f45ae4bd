"""The teacher zoo: train a teacher on a dataset and save it as a model folder, or load one."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from . import SEED_LIMIT
from . import data as data_mod
from .models import VGG_PRESETS, ModelError, build_model, check_hf_folder, device_for, load_model, save_model, vgg_dropped_pools
from .train import accuracy, chance_warning, train_classifier
from search_spaces import count_params

from .errors import ConfigError, RunError


TEACHER_FORMAT = 2


@dataclass
class TeacherRecipe:
    """Everything that determines a trained teacher; its hash names the cache entry."""

    dataset: str = "mnist1d"
    arch: str = "vgg"  # "vgg" | "mlp" | "resnet"
    preset: str = "vgg1d"  # vgg: n2n.models.VGG_PRESETS; resnet: resnet10/18/34/50
    width_mult: float = 1.0  # vgg: scales every width; resnet: first-stage width = 64 * width_mult
    hidden: list[int] = field(default_factory=lambda: [256])  # vgg: one classifier layer; mlp: all
    epochs: int = 30
    lr: float = 3e-3
    batch_size: int = 128
    seed: int = 0  # initialisation and batch order
    split_seed: int = 0  # the train/val/test split (recorded with the teacher; every search of it reuses it)

    def __post_init__(self):
        checks = [
            (self.arch in ("vgg", "mlp", "resnet"), "arch", "'vgg', 'mlp' or 'resnet'", self.arch),
            (self.epochs >= 1, "epochs", ">= 1", self.epochs),
            (0 < self.width_mult < math.inf, "width_mult", "a finite number > 0", self.width_mult),
            (0 < self.lr < math.inf, "lr", "a finite number > 0", self.lr),
            (self.batch_size >= 1, "batch_size", ">= 1", self.batch_size),
            (all(h >= 1 for h in self.hidden), "hidden", "widths >= 1", self.hidden),
        ]
        _refuse(checks)

    def check_new(self) -> None:
        """Checks added after runs were recorded with such recipes (read as they are): applied to a
        recipe about to train a teacher, not to one a run recorded."""
        # an MLP has no preset and a resnet no classifier widths: set, they were ignored, silently (helper-72)
        default = TeacherRecipe()
        _refuse([(self.arch != "vgg" or len(self.hidden) <= 1, "hidden", "one width for vgg (its one classifier layer)",
                  self.hidden),
                 (self.arch != "mlp" or self.preset == default.preset, "preset", "none for mlp (its widths are hidden)",
                  self.preset),
                 (self.arch != "mlp" or self.width_mult == default.width_mult, "width_mult",
                  f"{default.width_mult} for mlp (its widths are hidden)", self.width_mult),
                 (self.arch != "resnet" or self.hidden == default.hidden, "hidden", "none for resnet (its classifier is "
                  "one linear layer)", self.hidden),
                 (0 <= self.seed < SEED_LIMIT, "seed", f"0 to {SEED_LIMIT - 1}", self.seed),
                 (0 <= self.split_seed < SEED_LIMIT, "split_seed", f"0 to {SEED_LIMIT - 1}", self.split_seed),
                 # (helper-52: it failed later with advice for Python users)
                 (not self.dataset.startswith("text:"), "dataset", "numeric data (a text dataset's teacher is a Hugging "
                  "Face encoder: `n2n teacher train --hf CHECKPOINT --dataset text:PATH`, then teacher.path)", self.dataset)])

    def key(self) -> str:
        # FORMAT: what a cached teacher folder records (split fingerprints, input preprocessing); a
        # teacher cached by an n2n that recorded less is trained again rather than half-trusted
        return hashlib.sha1(json.dumps({**asdict(self), "format": TEACHER_FORMAT}, sort_keys=True).encode()).hexdigest()[:12]


def _refuse(checks) -> None:
    for ok, name, expected, got in checks:
        if not ok:  # the same recipe comes from YAML (teacher.recipe.*) and from `n2n teacher train --*`
            # (helper-72: batch_size named a --batch-size that `n2n teacher train` does not have)
            flag = "" if name == "batch_size" else f" (--{name.replace('_', '-')})"
            raise ConfigError(f"teacher.recipe.{name}{flag}: expected {expected}, got {got!r}")


def _diverged(e: FloatingPointError, lr: float, flag: str) -> ConfigError:
    return ConfigError(f"teacher training diverged: {e} (lr {lr:g}); lower {flag}. Nothing was saved")


def teacher_arch(recipe: TeacherRecipe, dataset: data_mod.Dataset) -> dict:
    if not torch.is_floating_point(torch.as_tensor(dataset.x_train[:1])):
        raise data_mod.DataError(f"{dataset.name}: integer 'x' is read as token ids, which only a transformer teacher "
                                 f"(--hf) takes; for --arch {recipe.arch} save x as floats (x.astype('float32'))")
    shape = list(dataset.input_shape)
    if recipe.arch == "vgg":
        hidden = recipe.hidden[0] if recipe.hidden else 0
        hp = {"input_shape": shape, "num_classes": dataset.num_classes, "preset": recipe.preset,
              "width_mult": recipe.width_mult, "hidden": hidden}
        return {"family": "vgg", "hparams": hp}
    if recipe.arch == "mlp":
        return {"family": "mlp", "hparams": {"input_shape": shape, "num_classes": dataset.num_classes,
                                             "hidden": list(recipe.hidden)}}
    if recipe.arch == "resnet":
        return {"family": "resnet", "hparams": {"input_shape": shape, "num_classes": dataset.num_classes,
                                                "preset": recipe.preset, "width": max(1, round(64 * recipe.width_mult))}}
    raise ConfigError(f"teacher.recipe.arch: expected 'vgg', 'mlp' or 'resnet', got {recipe.arch!r}")


def train_teacher(recipe: TeacherRecipe, out: Path | None = None, device: str = "auto", log=print,
                  overwrite: bool = False, warn_weak: bool = True) -> tuple:
    """Train a teacher from its recipe; save it to `out` when given (`overwrite` replaces only a
    model folder n2n wrote). Returns (model, arch, metrics). `warn_weak`: say when it is no better
    than always answering the most common class (a search says so itself, with its target)."""
    recipe.check_new()
    recipe = replace(recipe, dataset=data_mod.absolute(recipe.dataset))  # as it is recorded
    ds = data_mod.load_dataset(recipe.dataset, seed=recipe.split_seed)
    if warning := ds.unused_classes_warning():
        log(warning)
    arch = teacher_arch(recipe, ds)
    if recipe.arch == "vgg" and (dropped := vgg_dropped_pools(ds.input_shape, recipe.preset)):
        log(f"note: {recipe.preset} on inputs of shape {ds.input_shape}: {dropped} of its "
            f"{VGG_PRESETS[recipe.preset].count('M')} pools dropped (each would shrink the input below one sample)")
    if ds.preprocess:  # the folder is a deployable model too: it takes raw inputs via n2n.load_student
        arch["input"] = ds.preprocess
    torch.manual_seed(recipe.seed)
    model = build_model(arch)
    dev = device_for(device)
    name = recipe.arch if recipe.arch == "mlp" else f"{recipe.arch}/{recipe.preset}"  # an MLP has no preset
    log(f"training {name} teacher on {recipe.dataset} "
        f"({count_params(model):,} params, {recipe.epochs} epoch{'s' if recipe.epochs != 1 else ''}, {dev})")
    start = time.perf_counter()

    def on_epoch(epoch, loss):
        if (epoch + 1) % 5 == 0 or epoch + 1 == recipe.epochs:
            log(f"  epoch {epoch + 1}/{recipe.epochs}  loss {loss:.4f}  val acc {accuracy(model, ds.x_val, ds.y_val):.4f}")

    try:
        train_classifier(model, ds.x_train, ds.y_train, epochs=recipe.epochs, lr=recipe.lr,
                         batch_size=recipe.batch_size, seed=recipe.seed, device=dev, on_epoch=on_epoch)
    except FloatingPointError as e:
        raise _diverged(e, recipe.lr, "--lr (teacher.recipe.lr)") from None
    model.cpu()
    metrics = {
        "dataset": recipe.dataset,
        "params": count_params(model),
        "val_accuracy": accuracy(model, ds.x_val, ds.y_val),
        "test_accuracy": accuracy(model, ds.x_test, ds.y_test),
        "train_seconds": time.perf_counter() - start,
        "recipe": asdict(recipe),
        "split": ds.split,  # what val/test_accuracy were measured on; searches of this teacher reuse it
        # the same recipe trains another teacher on another thread count or device (float sums in
        # another order: the digits teacher tests 99.63% trained on 1 CPU thread, 98.89% on 2)
        "trained_on": {"device": str(dev), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
    }
    log(f"  teacher: val {metrics['val_accuracy']:.4f}  test {metrics['test_accuracy']:.4f}")
    if warn_weak and (warning := chance_warning(metrics["val_accuracy"], ds.y_val)):  # now, not at a first search (helper-49)
        log(warning)
    if out is not None:
        save_model(out, model, arch, metrics, overwrite=overwrite, log=log)
    return model, arch, metrics


def train_hf_teacher(checkpoint: Path, dataset: str, out: Path, *, epochs: int = 3, lr: float = 5e-5,
                     max_length: int = 128, batch_size: int = 32, seed: int = 0, split_seed: int = 0,
                     device: str = "auto", overwrite: bool = False, log=print) -> dict:
    """Fine-tune a local Hugging Face encoder checkpoint into a sequence classifier on `dataset`
    (``text:FILE``, tokenised with the checkpoint's tokenizer) and save a teacher folder: the Hugging
    Face files (config with label names, weights, tokenizer) plus metrics.json with the split."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from search_spaces import HFClassifier
    from search_spaces.transformer import check_model_type

    from .models import check_target, commit_folder, kept_message, new_folder, padding_mismatch, write_json

    for ok, what in ((epochs >= 1, f"--epochs: expected >= 1, got {epochs}"), (lr > 0, f"--lr: expected > 0, got {lr}"),
                     (batch_size >= 1, f"batch size: expected >= 1, got {batch_size}")):
        if not ok:
            raise ConfigError(what)
    check_target(out, overwrite)
    checkpoint = Path(checkpoint)
    from transformers import AutoConfig

    check_hf_folder(checkpoint)  # before transformers reads any of it
    try:
        hf_config = AutoConfig.from_pretrained(checkpoint, local_files_only=True, trust_remote_code=False)
        positions = hf_config.max_position_embeddings
    except (OSError, ValueError, AttributeError) as e:
        raise ModelError(f"{checkpoint}: not a Hugging Face encoder checkpoint ({str(e).splitlines()[0]})") from None
    check_model_type(hf_config.model_type, str(checkpoint))  # before minutes of training a teacher no search takes
    if not 2 <= max_length <= positions:
        raise ConfigError(f"--max-length: expected 2..{positions} (the checkpoint's positions), got {max_length}")
    tok = data_mod.tokenizer_for(checkpoint)
    ds = data_mod.load_dataset(dataset, seed=split_seed, tokenizer=tok, max_length=max_length)
    ids = ds.x_train
    if ids.dtype.is_floating_point or ids.ndim != 2 or int(ids.min()) < 0 or int(ids.max()) >= len(tok):
        # npz data goes in as it is: for an encoder it must be token ids of this tokenizer, (N, T)
        raise data_mod.DataError(f"{dataset}: --hf expects token ids of the checkpoint's tokenizer, integers in "
                                 f"0..{len(tok) - 1} of shape (N, T); found {ids.dtype} of shape "
                                 f"{tuple(ids.shape)} (training split) in 0..{ids.max().item():g}")
    if warning := ds.unused_classes_warning():
        log(warning)
    names = ds.labels or [str(i) for i in range(ds.num_classes)]
    theirs = [str(n) for i, n in sorted((hf_config.id2label or {}).items()) if str(n) != f"LABEL_{i}"]
    if ds.labels is None and theirs:
        # integer labels replace a classifier's names (helper-67: without a word); which id means which
        # class only the data's owner knows (helper-69: an SST-2 head's names on spam/ham ids would mislabel)
        log(f"{dataset} gives class ids, not names: the teacher's classes are {', '.join(names)}, not "
            f"{checkpoint.name}'s {', '.join(theirs)} (give the labels as names in the data to name them)")
    padding = {}  # the tokenizer pads the texts: its pad id is the one to mask (n2n.models.check_padding)
    if (why := padding_mismatch(hf_config, tok)) is not None:
        padding = {"pad_token_id": tok.pad_token_id}  # at construction: the embedding's padding_idx follows
        log(f"{checkpoint.name}: {why}; the teacher masks the tokenizer's padding, as pipeline() does, and its "
            f"config.json says so")
    hf_logging.set_verbosity_error()  # the new head is meant to start random here: no warning about it
    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)  # the new head's start: from the seed, not from whatever ran before in this process
    try:
        # a classifier of other labels gets a new head (helper-24: it was transformers' traceback)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            checkpoint, local_files_only=True, num_labels=ds.num_classes, id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)}, use_safetensors=True, ignore_mismatched_sizes=True,
            output_loading_info=True, trust_remote_code=False, dtype=torch.float32, **padding)
        changed = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or []]
        if changed and all("classifier" in k or "score" in k for k in changed):
            log(f"{checkpoint.name}'s classifier head has other outputs than the {ds.num_classes} classes of {dataset}: "
                f"it starts anew")
        elif changed:  # more than the head: say which
            log(f"{len(changed)} weights of {checkpoint.name} have other shapes than this model needs and start anew: "
                f"{', '.join(map(str, changed[:4]))}{' ...' if len(changed) > 4 else ''}")
    except (OSError, ValueError) as e:
        raise ModelError(f"{checkpoint}: not a loadable Hugging Face checkpoint ({str(e).splitlines()[0]})") from None
    from search_spaces.transformer import text_positions

    reads = text_positions(model)  # fewer than the config's positions in RoBERTa, whose start after its padding id
    if max_length > reads:  # (helper-42: the check against the config's alone let 514 through, a crash)
        raise ConfigError(f"--max-length: expected 2..{reads} (the tokens {checkpoint.name} reads), got {max_length}")
    clf = HFClassifier(model)
    dev = device_for(device)
    log(f"fine-tuning {checkpoint.name} into a {ds.num_classes}-class classifier on {dataset} "
        f"({count_params(clf):,} params, {ds.sizes()['train']} training texts, {epochs} epoch{'s' if epochs != 1 else ''}, {dev})")
    start = time.perf_counter()

    def on_epoch(epoch, loss):
        log(f"  epoch {epoch + 1}/{epochs}  loss {loss:.4f}  val acc {accuracy(clf, ds.x_val, ds.y_val):.4f}")

    try:
        train_classifier(clf, ds.x_train, ds.y_train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=dev,
                         on_epoch=on_epoch)
    except FloatingPointError as e:
        raise _diverged(e, lr, "--lr") from None
    clf.cpu()
    metrics = {"dataset": data_mod.absolute(dataset), "params": count_params(clf), "val_accuracy": accuracy(clf, ds.x_val, ds.y_val),
               "test_accuracy": accuracy(clf, ds.x_test, ds.y_test), "train_seconds": time.perf_counter() - start,
               "checkpoint": str(checkpoint.resolve()), "labels": names, "split": ds.split,
               "recipe": {"epochs": epochs, "lr": lr, "max_length": max_length, "batch_size": batch_size, "seed": seed}}
    tmp = new_folder(out, overwrite, log=log)
    try:
        clf.model.save_pretrained(tmp)
        data_mod.padding_right(tok, log, "the teacher")
        tok.save_pretrained(tmp)  # the teacher's tokenizer travels with it, and on to its students
        write_json(tmp / "metrics.json", metrics)
        kept = commit_folder(tmp, Path(out), overwrite)
    finally:
        if tmp.exists():  # (what it replaced, in that folder's mode: a read-only one is ours to delete now)
            os.chmod(tmp, 0o700)
            shutil.rmtree(tmp)
    if kept:
        log(kept_message(Path(out), kept))
    log(f"  teacher: val {metrics['val_accuracy']:.4f}  test {metrics['test_accuracy']:.4f} -> {out}")
    if warning := chance_warning(metrics["val_accuracy"], ds.y_val):
        log(warning)
    return metrics


def cached_teacher(recipe: TeacherRecipe, log=print) -> Path:
    """Folder of the teacher trained from `recipe`, training it on first use.

    A dataset read from the user's files (``npz:``, ``folder:``) keys the cache by its contents too:
    the same path holding other samples trains a new teacher, where the one cached for the old
    contents would refuse the new data at its fingerprint check, with no command to retrain it."""
    key, label = recipe.key(), recipe.dataset
    if ":" in recipe.dataset:
        x, y, parts = data_mod.load_raw(recipe.dataset)
        key = hashlib.sha1(f"{key}-{data_mod.fingerprint(x, y, parts or [])}".encode()).hexdigest()[:12]
        kind, path = recipe.dataset.split(":", 1)
        label = f"{kind}-{Path(path).name}"  # one folder name, not the user's path as nested folders
    label = re.sub(r"[^\w.-]", "_", label)
    folder = data_mod.cache_dir() / "teachers" / f"{label}-{recipe.arch}-{key}"
    if not (folder / "model.safetensors").exists():
        try:
            train_teacher(recipe, out=folder, log=log, warn_weak=False)  # the search warns itself (helper-52)
        except FileExistsError:  # another search cached it while this one trained: the same recipe
            if not (folder / "model.safetensors").exists():
                raise
            log(f"another process cached this teacher while this one trained it: using {folder}")
    _check_cached(folder, recipe)
    return folder


def _check_cached(folder: Path, recipe: TeacherRecipe) -> None:
    """The cache is keyed by recipe; a folder there trained from another (replaced by hand, or by
    `teacher train --out` into the cache) would be searched under this recipe's name."""
    def recorded(r: TeacherRecipe) -> str:  # train_teacher records a file dataset's path absolute
        return replace(r, dataset=data_mod.absolute(r.dataset)).key()

    stored = None
    try:
        stored = json.loads((folder / "metrics.json").read_text()).get("recipe")
        same = recorded(TeacherRecipe(**stored)) == recorded(recipe)
    except (OSError, ValueError, TypeError, AttributeError, RecursionError):
        same = False
    if not same:
        raise RunError(f"{folder}: the cached teacher was not trained from this recipe; its metrics.json records "
                       f"the recipe {stored}; move that folder aside and n2n trains the teacher again")


__all__ = ["TeacherRecipe", "train_teacher", "train_hf_teacher", "cached_teacher", "load_model", "teacher_arch"]
