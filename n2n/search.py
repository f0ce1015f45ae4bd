"""Run, resume and inspect searches under Ray Tune.

The run folder's layout and why n2n's own files are the source of truth: see n2n.runfolder. A search
or resume holds the run's lock for its whole life; a resume starts a fresh Tune experiment from the
search state in the run folder and never unpickles anything Tune wrote.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import reprlib
import shlex
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from agents import AgentOptionError
from envs import STAGES, Reference
from search_spaces import INPLACE, StudentSpec, changes_its_input, output_gap
from search_spaces.transformer import text_positions

from . import data as data_mod
from .config import Config, run_config
from .driver import SearchDriver, counted
from .errors import ConfigError, RunError
from .models import (ModelError, append_to, check_creatable, device_for, file_digest, load_model, load_weights,
                     kept_teacher, read_json, save_weights, weights_digest, write_json, written_by_n2n)
from .pick import RULES, far_below_said, meets_none, none_meets_said, points, rules_note, size_said
from .raysession import WATCH_MISSES, WATCH_SECONDS, check_address, cluster_watch, ray_session
from .runfolder import (HELD_FOR_DEATHS, HELD_FOR_UNSAVED, LOG, META, POLICY, PREV_STATE, RECORDS, RESULTS, STATE, TEACHER_LOGITS, TUNE,
                        RunLock, create_run, fallback, taken, load_states, moved, read_records, read_run, read_summary)
from .storage import Fetcher, RemoteResults, check_store, shown, store_location
from .teachers import cached_teacher
from .train import accuracy, chance_warning, predict
from .trial import Context

__all__ = ["run_search", "resume_search", "read_run"]


def _setdefault_env():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # machines may be offline
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # n2n keeps its own records (candidates.json); of Tune's per-trial loggers only the JSON one
    # is kept (Tune reads it back at the end), not CSV and TensorBoard.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # a trial's worker that dies is n2n's line (driver.WORKER_DIED: tried again, error.txt says why), not
    # Tune's traceback of it on stderr as well (its own trials catch the students' own errors)
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")


def make_driver(cfg: Config, space, meta: dict, run_dir: Path | None, log=print,
                agent_concurrency: int | None = None) -> SearchDriver:
    """The run's driver; `agent_concurrency`: the run's own trials at once where a resume runs another number."""
    budgets = {**{s: cfg.budget(s) for s in cfg.search.stages}, "finalists": cfg.finalists.k}
    stages = cfg.search.stages + (["finalists"] if cfg.finalists.k else [])
    try:
        return SearchDriver(space, Reference(**meta["reference"]), agent=cfg.search.agent, stages=stages,
                            budgets=budgets, seed=cfg.seed, reward_config=cfg.reward_config(),
                            agent_options=cfg.search.agent_options,
                            max_asks_per_candidate=cfg.search.max_asks_per_candidate, run_dir=run_dir,
                            teacher_info=meta["teacher"], log=log, finalist_epochs=cfg.finalists.epochs,
                            target=cfg.target, early_stop=cfg.early_stop.enabled, run_id=meta.get("run_id"),
                            concurrency=cfg.search.concurrency, agent_concurrency=agent_concurrency)
    except AgentOptionError as e:  # config load checks them too; this covers a driver built from code
        raise ConfigError(f"search.agent_options.{e}") from None


def resolve_teacher(cfg: Config, log=print, factories=()) -> tuple[Path, str]:
    """(teacher folder, dataset name) for a config; trains and caches the default teacher if needed."""
    if cfg.teacher.path:
        folder = Path(cfg.teacher.path).expanduser()  # as data paths and policy folders (helper-68)
        _, _, metrics = load_model(folder, factories)
        dataset = cfg.teacher.dataset or metrics.get("dataset")
        if not dataset:
            raise ConfigError(f"teacher.dataset: {folder}/metrics.json names no dataset; set teacher.dataset")
        return folder, data_mod.absolute(dataset)
    recipe = data_mod.absolute(cfg.teacher.recipe.dataset)
    if cfg.teacher.dataset and not _same_data(data_mod.absolute(cfg.teacher.dataset), recipe):
        # refused before the teacher trains (helper-68: a mistyped path was said after minutes of training,
        # and any other data than the recipe's is refused then anyway: the teacher was not trained on it)
        how = (f"text needs a Hugging Face encoder teacher: `n2n teacher train --hf CHECKPOINT --dataset "
               f"{cfg.teacher.dataset} --out DIR`, then teacher.path=DIR" if cfg.teacher.dataset.startswith("text:") else
               "to train one on it, set teacher.recipe.dataset instead")
        raise ConfigError(f"teacher.dataset: {cfg.teacher.dataset} is not the data the teacher n2n trains learns "
                          f"(teacher.recipe.dataset: {cfg.teacher.recipe.dataset}); {how} (teacher.dataset names the "
                          f"data of a teacher given by teacher.path)")
    return cached_teacher(cfg.teacher.recipe, log=log), recipe


def _same_data(a: str, b: str) -> bool:
    """Whether two absolute dataset names name the same data: `npz:./d.npz` is `npz:d.npz`, and a link
    the file it leads to."""
    (ka, _, pa), (kb, _, pb) = a.partition(":"), b.partition(":")
    if ka in ("npz", "folder", "text") and ka == kb and pa and pb:
        return os.path.realpath(pa) == os.path.realpath(pb)
    return a == b


def teacher_logits(run_dir: Path, teacher, x_train, log=print, keep: bool = True, digest: str | None = None):
    """The teacher's logits on the training split, (N_train, classes): the targets of every
    distillation in the run. Computed once and kept in RUN/teacher_logits.safetensors (`keep`), so
    that a resume, on another machine or with another thread count, distils on the very same numbers:
    a float sum's last bits depend on both, and they change which students come out ahead. `digest`:
    the kept file's, as n2n.json recorded it; a file that no longer has it is computed again."""
    path = Path(run_dir) / TEACHER_LOGITS
    if path.is_file() and digest is not None and file_digest(path) != digest:
        # edited rows past the ones check_outputs compares would poison every distillation unseen
        log(f"warning: {path} is not the file this run kept (its digest differs from n2n.json's); computing the "
            f"teacher's logits again")
    elif path.is_file():
        try:
            logits = load_weights(path)["logits"]
            if logits.ndim == 2 and len(logits) == len(x_train):
                return logits
            problem = f"logits of shape {tuple(logits.shape)} for {len(x_train)} training samples"
        except (ModelError, KeyError) as e:
            problem = str(e)
        log(f"warning: {path} is damaged ({problem}); computing the teacher's logits again")
    logits = predict(teacher, x_train)  # (N_train, classes)
    if keep:
        save_weights({"logits": logits}, path)
    return logits


def make_context(meta: dict, cfg: Config, run_dir: Path, loaded: tuple, factories=(), log=print) -> Context:
    """Teacher, data and the teacher's training-set logits (kept in the run folder) for every trial.
    `loaded`: (teacher, arch, dataset)."""
    teacher, arch, ds = loaded
    t_logits = teacher_logits(run_dir, teacher, ds.x_train, log, digest=meta.get("teacher_logits_digest"))  # (N, classes)
    digest = file_digest(Path(run_dir) / TEACHER_LOGITS)
    if digest != meta.get("teacher_logits_digest"):  # a new run, or logits computed again (under the run's lock)
        meta["teacher_logits_digest"] = digest  # what later resumes and exports check
        write_json(Path(run_dir) / META, meta)
    return Context(arch, {k: v.contiguous() for k, v in teacher.state_dict().items()}, tuple(meta["input_shape"]),
                   tuple(cfg.search.ratios), ds.x_train, ds.y_train, t_logits, ds.x_val, ds.y_val, cfg.distill,
                   Reference(**meta["reference"]), cfg.reward_config(), results_location(meta, run_dir), cfg.resources.device, cfg.seed,
                   cfg.search.uniform_widths, per_epoch=cfg.early_stop.enabled, factories=tuple(factories),
                   latency=cfg.latency if cfg.latency.repeats else None, preprocess=ds.preprocess,
                   run_id=None if meta.get("results_store") else meta.get("run_id"))


def results_location(meta: dict, run_dir: Path) -> str:
    """Where the run's trials leave their results: its storage URI, or its own results/ folder."""
    return meta.get("results_store") or str(run_dir / "results")


def check_forward(teacher, ds, where: str) -> None:
    """A teacher whose forward writes into its input (a user's module) is refused before anything
    measures it on the data (search_spaces.changes_its_input)."""
    if changes_its_input(teacher, ds.x_val[:2]):
        raise ModelError(f"{where}: the teacher cannot be measured as it is: {INPLACE}")


def check_labels(teacher, ds, dataset: str, exact: bool = False) -> None:
    """Labels must be outputs of the teacher: a label past its last output would be learned by no one.
    `exact`: the teacher must have one output per class (a classifier head made for this data)."""
    import torch

    with torch.no_grad():
        outputs = teacher(ds.x_val[:2]).shape[-1]
    if exact and outputs != ds.num_classes:
        raise data_mod.DataError(f"{dataset}: {ds.num_classes} classes, but the teacher's classifier has {outputs} "
                                 "outputs; fine-tune a teacher on this data (n2n teacher train --hf CHECKPOINT "
                                 f"--dataset {dataset})")
    if ds.num_classes > outputs:
        raise data_mod.DataError(f"{dataset}: labels go up to {ds.num_classes - 1}, but the teacher has only "
                                 f"{outputs} outputs (classes 0..{outputs - 1}); is this the teacher's dataset?")


def check_label_names(teacher, ds, dataset: str, log=print) -> None:
    """A Hugging Face teacher's class names (config.json's id2label) against the data's (string labels,
    numbered in sorted order): the same names in another order would score every class as another
    (helper-40: a teacher trained with positive=0 measured 6.7% on its own data, unsaid)."""
    names = getattr(getattr(teacher, "config", None), "id2label", None) or {}  # (HFClassifier.config)
    theirs = [str(names.get(i, names.get(str(i), ""))) for i in range(len(names))]
    if ds.labels is None or not theirs or all(n == f"LABEL_{i}" for i, n in enumerate(theirs)):
        return  # integer labels, or a head with transformers' placeholder names: nothing to compare
    ours = list(ds.labels)
    def plain(names):  # POSITIVE and positive are one class (helper-42: a common Hub style)
        return [n.strip().casefold() for n in names]

    if plain(theirs) == plain(ours):
        return
    if sorted(plain(theirs)) == sorted(plain(ours)):
        ids = ", ".join(f"{i} = {n}" for i, n in enumerate(theirs))
        raise data_mod.DataError(f"{dataset}: the data's classes, numbered in sorted order, are {ours}; the teacher's "
                                 f"(its config.json id2label) are {theirs}: every class would be scored as another. "
                                 f"Write the labels as the teacher's class ids ({ids})")
    log(f"warning: the teacher's class names (its config.json id2label) are {theirs}, the data's {ours}; class i of "
        f"the data is taken as the teacher's output i")


def hf_teacher_said(teacher, folder: Path, log) -> None:
    """A Hugging Face teacher's model type refused first, and its weights' dtype said where they are not
    float32 (helper-95: a bf16 teacher's students took twice its bytes per parameter, unsaid)."""
    import torch

    from search_spaces.transformer import check_model_type

    check_model_type(teacher.config.model_type, str(folder))
    saved = read_json(folder / "config.json")
    dtype = saved.get("dtype") or saved.get("torch_dtype")
    kind = getattr(torch, dtype, None) if isinstance(dtype, str) else None
    if isinstance(kind, torch.dtype) and kind != torch.float32:
        log(f"the teacher's weights are {dtype}: n2n measures, distils and exports in float32, so its students' files "
            f"hold 4 bytes per parameter, the teacher's {torch.empty(0, dtype=kind).element_size()} "
            f"(`student.to(torch.{dtype})` converts a loaded export)")


def check_class_order(predicted, ds, dataset: str) -> None:
    """Refuse a teacher whose outputs answer the data's classes in another order: near or below chance
    as they are, clearly above it read through the permutation its answers show (helper-92: placeholder
    names LABEL_i beside string labels, numbered in sorted order, scored a trained teacher far below
    chance with a warning, and export wrote the data's names onto the wrong outputs). Reordered, it must
    get right at least half of what it got wrong, so that no teacher near chance is refused by the luck
    of the best of its orders (helper-94: 0.6% of weak teachers were). `predicted`: (N,) output ids on
    the validation split."""
    import torch

    from .train import chance_warning

    y, k = ds.y_val, ds.num_classes
    plain = (predicted == y).float().mean().item()
    if not chance_warning(plain, y):
        return
    ours = predicted < k  # outputs past the data's classes answer none of them
    counts = torch.zeros(k, k, dtype=torch.long)  # (output, class)
    counts.index_put_((predicted[ours], y[ours]), torch.ones_like(y[ours]), accumulate=True)
    order = counts.argmax(1)  # (k,) the class each output mostly answers
    through = (ours & (order[predicted.clamp(max=k - 1)] == y)).float().mean().item()
    if sorted(order.tolist()) != list(range(k)) or chance_warning(through, y) or through - plain < (1 - plain) / 2:
        return  # no reordering explains it: the chance warning says the rest
    names = ds.labels or [str(i) for i in range(k)]
    said = ", ".join(f"output {i} = {names[c]}" for i, c in enumerate(order.tolist()) if c != i)
    raise data_mod.DataError(f"{dataset}: the teacher scores {plain:.4f} on its validation split, but {through:.4f} "
                             f"with its outputs read in another order ({said}): it numbers the classes otherwise than "
                             f"the data{' (string labels are numbered in sorted order)' if ds.labels else ''}. Write "
                             f"the labels as the teacher's class ids")


ACCURACY_GAP = 0.03  # a teacher measured this far from its own figure is probably not on its own split


def teacher_data(folder: Path, metrics: dict, arch: dict, dataset: str, log=print, max_length: int | None = None,
                 positions: int | None = None) -> data_mod.Dataset:
    """The split the teacher was trained and measured on (recorded in its metrics.json), standardised
    as it was (its arch.json "input"); never one that depends on the search's seed. Text is tokenised
    to the length the teacher records, else `max_length` (teacher.max_length), else 128, at most the
    teacher's `positions` (helper-40: 128 tokens into a 32-position teacher was a traceback)."""
    recorded = metrics.get("split") or {}
    if dataset.startswith("text:") and arch.get("family") not in ("hf-pretrained", "hf-encoder"):
        # (helper-67: a ResNet on text was told of a text length, then of a tokenizer it lacked)
        raise ConfigError(f"{dataset}: text is tokenised by the teacher's tokenizer, so it needs a Hugging Face "
                          f"encoder teacher (`n2n teacher train --hf CHECKPOINT --dataset {dataset}`); {folder} is a "
                          f"{arch.get('family')} teacher")
    if max_length is not None:
        if not dataset.startswith("text:"):
            raise ConfigError(f"teacher.max_length: applies to text: datasets, not {dataset}; expected null")
        if recorded.get("max_length", max_length) != max_length:
            raise ConfigError(f"teacher.max_length: the teacher records {recorded['max_length']} tokens per text, its "
                              f"figures were measured at that; expected null or {recorded['max_length']}, got {max_length}")
        if positions is not None and max_length > positions:
            raise ConfigError(f"teacher.max_length: expected 2..{positions} (the teacher's positions), got {max_length}")
    if dataset.startswith("text:") and "max_length" in recorded and positions is not None and not (
            isinstance(recorded["max_length"], int) and 2 <= recorded["max_length"] <= positions):
        # (helper-76: a received teacher's 2,000,000 took 7.3 GB in the tokenizer, then the process aborted)
        raise data_mod.DataError(f"{folder}/metrics.json: expected the split's max_length to be 2..{positions} (the "
                                 f"teacher's positions), found {recorded['max_length']!r}")
    if dataset.startswith("text:") and "max_length" not in recorded:
        length = max_length or min(128, positions or 128)
        if max_length:
            log(f"{folder} records no text length: texts are tokenised to {length} tokens (teacher.max_length)")
        else:
            why = "the default" if length == 128 else "the teacher's positions"
            log(f"{folder} records no text length: texts are tokenised to {length} tokens ({why}); set "
                f"teacher.max_length to the length it was trained at")
        recorded = {**recorded, "max_length": length}
    ds = data_mod.load_split(dataset, {"seed": 0, **recorded}, tokenizer=folder, preprocess=arch.get("input"))
    if not metrics.get("split") and ds.split["seed"] is not None:  # data that brings its own split: nothing to say
        log(f"warning: {folder} records no data split, so n2n uses split seed 0 of {dataset}; if the teacher "
            "was trained on other samples of it, every accuracy here is too high. Teachers from `n2n teacher "
            "train` record theirs; for your own, bring the split (npz: x_train, y_train, x_val, ...)")
    if ds.preprocess is not None and "input" not in arch:  # float inputs, a teacher that says nothing of them
        log(f"warning: {folder}/arch.json records no input standardisation (\"input\"), so float inputs are "
            "standardised with fresh training-split statistics; a model trained on raw inputs needs "
            "\"input\": {\"scale\": 1.0, \"shift\": 0.0, \"shape\": [...]} there, or it is measured near chance")
    if warning := ds.unused_classes_warning(training=False):
        log(warning)
    return ds


def check_teacher(meta: dict) -> None:
    """The teacher folder must hold the weights the run started with: every reward and figure of
    the run is relative to them."""
    folder = Path(meta["teacher_folder"])
    recorded, now = meta.get("teacher_digest"), weights_digest(folder)
    kept = kept_teacher(folder, recorded) if recorded and now != recorded else None
    if recorded and now is None and kept is None:
        # helper-24: a moved teacher read as changed weights ("now None")
        raise RunError(f"{folder}: the run's teacher is not there (moved or deleted?); a run names its teacher by "
                       f"this path: put the folder back there, or, for a copy of it elsewhere (a run from another "
                       f"machine), set \"teacher_folder\" in the run's n2n.json to that copy "
                       f"(its weights are checked to be the run's teacher's)")
    if recorded and now is None:  # gone, its weights found elsewhere (a replacement interrupted midway)
        raise RunError(f"{folder}: the run's teacher is not there; a folder with its weights is at {kept}: move it "
                       f"to {folder}")
    if recorded and now != recorded:
        fix = (f"`n2n teacher train --overwrite` kept it at {kept}: move {folder} aside, then {kept} to {folder}"
               if kept else "restore it")
        raise RunError(f"{folder}: the teacher's weights changed since this run started (digest "
                       f"{recorded}, now {now}); its figures are relative to the old teacher: {fix}, or start a new search")


def check_teacher_figures(meta: dict, teacher, ds: data_mod.Dataset, run_dir: Path) -> dict[str, float]:
    """n2n.json's teacher accuracies judge every candidate, the pick and the exported metrics.json:
    measured again (as the run measured them, on this machine's CPU), they must agree to within 2
    samples (float sums in another order can flip one), else the file was edited. Returns the
    figures measured ({"val": ..., "test": ...}): what an export writes and judges its student by."""
    measured = {}
    for part, recorded in (("val", meta["reference"]["accuracy"]), ("test", meta["teacher"]["test_accuracy"])):
        y = getattr(ds, f"y_{part}")
        now = measured[part] = accuracy(teacher, getattr(ds, f"x_{part}"), y)
        if abs(now - recorded) > 2 / len(y) + 1e-9:
            raise RunError(f"{run_dir}/n2n.json: records the teacher's {part} accuracy as {recorded:.4f}, the teacher "
                           f"measures {now:.4f} on the run's split; was n2n.json changed? Every figure of the run "
                           f"is judged against it: start a new search")
    return measured


def run_data(meta: dict, arch: dict) -> data_mod.Dataset:
    """The data of a run: the teacher's split, as recorded in n2n.json, standardised as the teacher
    (`arch`, its arch.json) was trained."""
    name = meta["dataset"]
    where = name.split(":", 1)[1] if ":" in name else None
    if where is not None and not Path(where).exists():  # helper-24: the loader's "expected a file" said no more
        raise RunError(f"{where}: the run's data ({name}) is not there (moved or deleted?); a run names its data by "
                       f"this path: put it back there (its fingerprint is checked, not its place)")
    return data_mod.load_split(name, meta.get("split") or {"seed": meta["config"].get("seed", 0)},
                               tokenizer=meta["teacher_folder"], preprocess=arch.get("input"))


def prepare_run(cfg: Config, factories=(), log=print) -> tuple[dict, tuple]:
    """Everything a new run needs, checked before anything is written: teacher, data, reference
    figures, agent options. Returns the metadata and (teacher, arch, dataset, space)."""
    cfg.policy_folder()  # a policy folder named but unusable: refused before a teacher is trained
    folder, dataset = resolve_teacher(cfg, log, factories)
    teacher, arch, metrics = load_model(folder, factories)
    if arch.get("family") == "hf-pretrained":  # before the data's messages (helper-95: they came first)
        hf_teacher_said(teacher, folder, log)
    if written_by_n2n(folder) == "export":  # replaceable by design: say so before the run depends on it
        log(f"warning: the teacher {folder} is an n2n export, which `n2n export --overwrite` replaces; this run "
            "would then refuse to resume or export (its teacher changed). Copy it elsewhere first to keep the run usable")
    positions = text_positions(teacher)  # transformers teachers; None for others
    ds = teacher_data(folder, metrics, arch, dataset, log, cfg.teacher.max_length, positions)
    shape = arch.get("input_shape") or arch.get("hparams", {}).get("input_shape") or ds.input_shape
    if tuple(shape) != ds.input_shape:
        raise ConfigError(f"teacher expects inputs of shape {tuple(shape)}, dataset {dataset} gives {ds.input_shape}")
    check_forward(teacher, ds, folder)  # before anything measures it on the data
    check_labels(teacher, ds, dataset, exact=arch.get("family") == "hf-pretrained")
    check_label_names(teacher, ds, dataset, log)
    space = cfg.space(teacher, ds.input_shape, arch)
    if getattr(space, "fallback", None):  # say why the teacher is not searched as its own family
        log(f"searching the teacher as a generic module (torch-pruning): {space.fallback}")
    policy = cfg.policy_folder(space)
    predicted = predict(teacher, ds.x_val).argmax(1)  # (N,)
    check_class_order(predicted, ds, dataset)
    val_acc, test_acc = (predicted == ds.y_val).float().mean().item(), accuracy(teacher, ds.x_test, ds.y_test)
    stored = metrics.get("val_accuracy")
    if isinstance(stored, (int, float)) and abs(val_acc - stored) > ACCURACY_GAP:
        log(f"warning: the teacher measures {val_acc:.4f} validation accuracy on this split, its metrics.json says "
            f"{stored:.4f}: is this the data and the split it was trained on?")
    if warning := chance_warning(val_acc, ds.y_val, cfg.target.max_accuracy_drop):
        log(warning)
    ref = Reference(space.teacher_params(), space.flops(space.identity()), val_acc)
    config = cfg.to_dict()
    if cfg.search.agent == "reinforce":  # what it starts from, concrete; the run loads its own copy (RUN/policy)
        config["search"]["agent_options"]["policy"] = None if policy is None else str(policy)
        why = cfg.fresh_because(space) if policy is None else None
        log(f"REINFORCE starts from {'the policy in ' + str(policy) if policy else 'a fresh policy'}"
            + (f" ({why})" if why else ""))
    meta = {"config": config, "teacher_folder": str(folder.resolve()), "dataset": dataset,
            "input_shape": list(ds.input_shape), "reference": asdict(ref), "split": ds.split,
            "teacher_digest": weights_digest(folder),
            "teacher": {"folder": str(folder.resolve()), "dataset": dataset, "test_accuracy": test_acc,
                        "units": space.n_units, "unit_names": [u.name for u in space.units]},
            "created": time.strftime("%Y-%m-%d %H:%M:%S"), "rules": RULES,
            "run_id": uuid.uuid4().hex}  # the run's search states carry it: one of another run is refused
    return meta, (teacher, arch, ds, space)


def policy_files(cfg: Config) -> dict[str, Path]:
    """The starting policy's files, to copy into the run folder (RUN/policy/STAGE/...): later stages
    and resumes load that copy, so the run does not depend on a folder that may change or go."""
    root = cfg.policy_folder()
    if root is None:
        return {}
    return {f"{POLICY}/{kind}/{name}": root / kind / name for kind in {STAGES[s] for s in cfg.search.stages}
            for name in ("policy.json", "policy.safetensors")}


def check_device(cfg: Config, resumed: bool) -> None:
    """Trials on this machine: a device its torch cannot use would fail every one of them."""
    try:
        device_for(cfg.resources.device)
    except ModelError as e:
        fix = ("resume on a machine that has it, or with --address on a cluster whose workers have it" if resumed
               else "set resources.device to auto or cpu")
        raise ConfigError(f"resources.device {cfg.resources.device}{' (recorded in this run)' if resumed else ''}: "
                          f"{str(e).split(': ', 1)[1]}; {fix}") from None


def check_resources(cfg: Config, remote: bool, resumed: bool = False) -> str | None:
    """A trial that asks for more CPUs or GPUs than any Ray node has waits forever, silently (Tune
    keeps it pending): refuse it on this machine; on a cluster (an autoscaler may add a node) the
    warning to log, once the run's log is open (helper-44: it was missing from n2n.log)."""
    import ray

    res = cfg.resources
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= res.cpus_per_trial and r.get("GPU", 0) >= res.gpus_per_trial for r in nodes):
        return None
    have = "; ".join(f"{r.get('CPU', 0):g} CPU, {r.get('GPU', 0):g} GPU" for r in nodes)
    msg = (f"resources: a trial asks for {res.cpus_per_trial:g} CPU and {res.gpus_per_trial:g} GPU, but no Ray node "
           f"has that (nodes: {have})")
    if remote:
        return f"warning: {msg}; trials wait until the cluster has such a node"
    if resumed:  # the run's config is not the user's to edit: say what this resume can change
        gpus_found = any(r.get("GPU", 0) >= res.gpus_per_trial for r in nodes)
        raise ConfigError(f"{msg}; " + ("resume with --cpus-per-trial N, N at most a node's CPUs" if gpus_found else
                                        "resume where a node has that many GPUs (--address for a cluster)"))
    raise ConfigError(f"{msg}; lower resources.cpus_per_trial or resources.gpus_per_trial (0 without a GPU)")


def _trainable(ctx: Context, cfg: Config):
    from ray import tune

    from .trial import run_trial

    res = {"cpu": cfg.resources.cpus_per_trial, "gpu": cfg.resources.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(run_trial, context=ctx), res)


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


class _NoTuneRestoreHint(logging.Filter):
    """Tune's advice on an interrupted run is not n2n's: it tells users to call Tuner.restore (with
    n2n it is `n2n resume`, which the interruption line says), announces the stop signal n2n already
    answers, and warns that the trials cut short have no metrics (n2n's records are its own)."""

    HIDDEN = ("Tuner.restore", "Stop signal received", "Failed to fetch metrics for")

    def filter(self, record):
        return not any(h in record.getMessage() for h in self.HIDDEN)


_TUNE_ADVICE = _NoTuneRestoreHint()


def _fit(run_dir: Path, ctx: Context, cfg: Config, driver: SearchDriver, log=print) -> None:
    """One Tune experiment (a session) under RUN/tune/session-N, driven by `driver`; then every
    result the run folder lacks is fetched from remote storage."""
    from ray import tune
    from ray.exceptions import OutOfMemoryError
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler

    from .searcher import N2NSearcher

    scheduler = None
    if cfg.early_stop.enabled:
        # max_t past the last epoch: ASHA stops a trial that reaches max_t, which would cut it off
        # before it saves its weights and final result.
        last = max(cfg.distill.epochs, cfg.finalists.epochs if cfg.finalists.k else 0)
        scheduler = ASHAScheduler(metric="reward", mode="max", time_attr="epoch", max_t=last + 1,
                                  grace_period=cfg.early_stop.grace_period,
                                  reduction_factor=cfg.early_stop.reduction_factor)
    tune_dir = run_dir / TUNE
    session = next_session(tune_dir)
    for name in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis"):
        logging.getLogger(name).addFilter(_TUNE_ADVICE)  # the same object: added once per process
    fetch = Fetcher(ctx.results_dir, run_dir, log)
    searcher = N2NSearcher(driver, fetch)
    tuner = tune.Tuner(
        _trainable(ctx, cfg),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1, scheduler=scheduler,
                                    max_concurrent_trials=cfg.search.concurrency, reuse_actors=True,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=session, storage_path=str(tune_dir), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1),
                                  callbacks=[JsonLoggerCallback()]),
    )
    try:
        tuner.fit()
    except Exception as e:
        oom = _cause(e, OutOfMemoryError)
        if searcher.error is not None:  # (what stopped the search first: helper-84, a full disk said as memory)
            raise searcher.error  # (Tune's own error kept as the context it came in)
        if oom is None:
            raise
        # Tune raises when Ray kills a trial's actor as it starts; everything recorded is saved, and
        # the trials in flight are issued again on resume: an interruption, not a traceback
        log(f"Ray killed trial workers, this machine running low on memory: {str(oom).split('. ')[0]}. "
            "Every candidate recorded is kept; free some memory, then resume"
            + (" (`--concurrency 1` runs fewer at once)" if cfg.search.concurrency > 1 else ""))
        return
    if searcher.error is not None:  # what stopped the search, now that no trial runs
        raise searcher.error
    fetch.sync(r["key"] for r in driver.records)


def next_session(tune_dir: Path) -> str:
    """A name under RUN/tune/ that no entry has: counting the sessions reused one after a gap (a
    deleted session-2), and Tune wrote through a link planted under that name, outside the run (helper-28)."""
    taken = [int(p.name[8:]) for p in tune_dir.glob("session-*") if p.name[8:].isascii() and p.name[8:].isdigit()]
    return f"session-{max(taken, default=0) + 1}"


def _cause(e: BaseException | None, kind: type) -> BaseException | None:
    """The first exception of `kind` in e's chain (raised from or during another), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, kind):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _allowed(factories) -> str:
    """' --allow-factory F' for each, quoted: the commands n2n prints are pasted as printed (helper-46)."""
    return "".join(f" --allow-factory {shlex.quote(f)}" for f in factories)


def resume_command(run_dir: Path, address: str | None, factories=()) -> str:
    """The command that continues this run: on its cluster, with the factories its teacher needs and
    the storage it records (see `check_resume_storage`)."""
    where = f" --address {shlex.quote(address)}" if address else ""
    storage = _recorded_storage(run_dir)
    if storage:  # (a URI with key:secret@ is named, not printed: the line goes to logs)
        storage = f" --storage {shlex.quote(storage) if shown(storage) == storage else 'URI'}"
    return f"n2n resume {shlex.quote(str(run_dir))}{where}{storage}{_allowed(factories)}"


def _recorded_storage(run_dir: Path) -> str:
    """The resources.storage run_dir's n2n.json records ("" for none, or where it cannot be read)."""
    try:
        storage = json.loads((Path(run_dir) / META).read_text())["config"]["resources"]["storage"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return storage if isinstance(storage, str) else ""


def storage_named(uri: str) -> str:
    """A storage URI as a command line may repeat it: "URI" where it holds a secret n2n does not echo."""
    return shlex.quote(uri) if shown(uri) == uri else "URI"


def check_resume_storage(run_dir: Path, recorded: dict, storage: str | None, flag: str = "--storage",
                         verb: str = "resume") -> None:
    """A resume reads and writes the trials' results where the run's n2n.json says: a run folder from
    someone else could name any folder or endpoint, and the user's credentials would sign the requests
    (helper-76: a received run wrote weights into a folder it named, and took a file found there for a
    trial's result). So the user names the storage (`--storage`), as `n2n export --fetch URI` does before
    it downloads (`flag`, `verb`; helper-97: a bare --fetch contacted whatever n2n.json named)."""
    theirs = (recorded.get("config") or {}).get("resources", {}).get("storage") or ""
    if not isinstance(theirs, str):
        raise RunError(f"{run_dir}: n2n.json's resources.storage is {type(theirs).__name__}, expected a URI")
    if theirs == (storage or ""):
        return
    if not theirs:
        raise RunError(f"{flag}: {run_dir} records no storage (its trials leave results in its own results/ "
                       f"folder); {verb} it without {flag}")
    given = f", not {shown(storage)}" if storage else ""
    does = "a resume reads and writes its trials' results there" if verb == "resume" else \
        "export downloads the results it lacks from there"
    raise RunError(f"{run_dir}: this run records resources.storage {shown(theirs)}{given}; {does}. "
                   f"{verb.capitalize()} it with `{flag} {storage_named(theirs)}` if that storage is yours (its n2n.json "
                   f"names it; a run folder from someone else may name any place)")


def _cluster_lost(run_dir: Path, address: str, factories, log):
    """What a search does when its cluster's head stops answering (n2n.raysession.cluster_watch): say
    how to continue, and end at once, as a kill would: every result so far is saved, and Ray's own
    shutdown would wait 60 s for a head that is gone, then end the process without this line."""
    def lost(gcs: str):
        try:
            log(f"the Ray cluster stopped answering: its head at {gcs} refused connections for about "
                f"{WATCH_SECONDS * WATCH_MISSES} s. The search stops here; once the cluster is back, continue it "
                f"with `{resume_command(run_dir, address, factories)}`")
        finally:
            os._exit(130)
    return lost


def _watched(run_dir: Path, address: str | None, factories, log):
    """n2n.raysession.cluster_watch for this run, saying first on a cluster how to continue: a cluster shut
    down gracefully ends the driver at once inside Ray (exit 1), where no later line can be added."""
    if address:
        log(f"every result is kept as it comes: should this search end early (Ray ends it itself when its cluster "
            f"is shut down), continue it with `{resume_command(run_dir, address, factories)}`")
    return cluster_watch(address, _cluster_lost(run_dir, address, factories, log))


def _finish(run_dir: Path, driver: SearchDriver, log=print, factories=(), address: str | None = None) -> dict:
    summary = driver.summary()
    # the commands this run needs, whole: a teacher of the user's own module loads only with its factory,
    # and a search on a cluster resumes there (helper-31: the hint's resume ran on this machine)
    allow = _allowed(factories)
    if summary["stage"] == "failed":
        again = f"; continue it with `{resume_command(run_dir, address, factories)}`" if any(h in summary["failure"] for h in (HELD_FOR_DEATHS, HELD_FOR_UNSAVED)) else ""
        log(f"search stopped: {summary['failure']}{again}")
    elif summary["stage"] != "done":
        log(f"search interrupted; continue it with `{resume_command(run_dir, address, factories)}`")
    elif summary["best"]:
        pick = summary["best"]  # the student `n2n export` will write, not merely the best brief-distillation reward
        # times_smaller as export prints it (rounded to 2 places; a :.1f of that rounded twice: 1.454 -> 1.4)
        rec = next(r for r in driver.records if r["key"] == pick["key"])  # its latency too (helper-69)
        sizes = size_said(driver.target, driver.reward_config, rec, driver.reference.flops)
        if meets_none(pick["chosen_because"]):  # (helper-62: export wrote it unasked, exit 0)
            student = f"{pick['params']:,} params ({pick['times_smaller']:.2f}x smaller{sizes}), val acc {pick['val_accuracy']:.4f}"
            log(f"{none_meets_said(pick['chosen_because'], student, driver.target.misses(rec, driver.reference.accuracy))}"
                f" -> `n2n export {shlex.quote(str(run_dir))} --out DIR --key {pick['key']}{allow}` exports it all the "
                "same; `n2n report` lists every candidate")
            return summary
        below = (driver.reference.accuracy - pick["val_accuracy"]) * 100
        if driver.target.max_accuracy_drop is None and (far := far_below_said(driver.target.has_limits(), below)):
            log(far)  # before the last line, which names the run and the command
        log(f"`n2n export` picks {pick['params']:,} params ({pick['times_smaller']:.2f}x smaller{sizes}), val acc "
            f"{pick['val_accuracy']:.4f}: {pick['chosen_because']} -> `n2n export {shlex.quote(str(run_dir))} --out DIR{allow}` "
            "(`--finetune-epochs 10` trains it longer first)")
    elif summary["best_by_reward"]:
        log("no candidate ran to the end (early stopping stopped every one before it saved weights); nothing to export")
    return summary


def stamped(msg: str) -> str:
    """A line of RUN/n2n.log: the time, then what was said."""
    return f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n"


def teed(log, run_dir: Path, earlier: list[str] | None = None):
    """`log`, and a copy of every line in RUN/n2n.log (with the time): the run keeps its own story.
    `earlier`: lines said before the log could be written (with their times), written first."""
    def both(msg: str):
        unwritten = None
        try:  # the run's copy first: after a hang-up the terminal is gone (helper-38: EIO), the run's log is not
            if not moved(run_dir):  # never into another run put at its name (helper-89); the driver says so
                with append_to(run_dir / LOG) as f:
                    f.write("".join(earlier or ()) + stamped(msg))
                if earlier:
                    earlier.clear()
        except OSError as e:  # ELOOP: a symlink planted there is never written through
            unwritten = e
        try:
            log(msg)
        except OSError:  # a closed terminal: the line is in n2n.log
            pass
        if unwritten is not None:
            raise RunError(f"{run_dir / 'n2n.log'}: cannot append to the run's log ({unwritten.strerror}); it must be "
                           "a plain file")
    return both


def notes(cfg: Config, space) -> list[str]:
    """What a new search's config does that its keys alone do not say."""
    said = []
    if cfg.distill.for_space(space).lr != cfg.distill.lr:  # helper-26: distill.lr alone seemed ignored
        said.append(f"transformer students distil at distill.transformer_lr {cfg.distill.transformer_lr:g} "
                    f"(distill.lr {cfg.distill.lr:g} is for other students)")
    if cfg.finalists.k and cfg.finalists.epochs <= cfg.distill.epochs:  # helper-22: accepted unsaid
        said.append(f"note: finalists.epochs {cfg.finalists.epochs} is no more than distill.epochs "
                    f"{cfg.distill.epochs}: finalists start again from the teacher's weights, so their figures, "
                    f"which export picks by, are no better than the stages'")
    said += _out_of_reach(cfg, space)
    if cfg.search.agent == "reinforce":  # a batch as large as a stage: accepted as typed, and nothing learnt
        batch = cfg.search.agent_options.get("batch_size", 10)
        short = [f"{s} ({cfg.budget(s)})" for s in cfg.search.stages if isinstance(batch, int) and cfg.budget(s) <= batch]
        if short:
            said.append(f"note: search.agent_options.batch_size {batch} is no less than the budget of {', '.join(short)}: "
                        f"REINFORCE updates its policy after a whole batch (each stage's agent its own), so there it "
                        f"may never update and sample only its starting policy")
    drop, margin = cfg.target.max_accuracy_drop, cfg.target.margin
    if drop and drop < 0.1:  # helper-91: 0.01 for "1%" was accepted as 0.01 points, unsaid
        said.append(f"note: target.max_accuracy_drop is in points of accuracy (1 for one percentage point); {drop:g} "
                    f"asks for a student within {drop:g} points of the teacher")
    if drop and margin > drop:  # helper-36: capped at the drop without a word (a drop of 0 spares nothing)
        said.append(f"note: target.margin {margin:g} is more than target.max_accuracy_drop {drop:g}; export spares "
                    f"at most the whole drop, {points(drop)} (a student at least as accurate as the teacher)")
    return said


def _out_of_reach(cfg: Config, space) -> list[str]:
    """Size limits below the smallest student shrinking alone builds (helper-47: max_params 50 spent the
    whole budget unsaid, and export then said no candidate met it)."""
    if cfg.target.max_params is None and cfg.target.max_flops is None:
        return []
    ratio = min(space.ratios)
    smallest = StudentSpec((), tuple(ratio if u.shrinkable else 1.0 for u in space.units))
    if space.validate(smallest):
        return []
    limits = [("max_params", "params", cfg.target.max_params, space.params),
              ("max_flops", "FLOPs", cfg.target.max_flops, space.flops)]
    lower = ("only removing layers goes lower, and the search may find no student within it" if "removal" in cfg.search.stages
             else "without a removal stage no student this search builds is within it")
    return [f"note: target.{key} {limit:,} is below the smallest student shrinking alone builds ({size(smallest):,} "
            f"{what}, every shrinkable unit at ratio {ratio:g}); {lower}" for key, what, limit, size in limits
            if limit is not None and limit < size(smallest)]


def _next_free(run_dir: Path) -> Path:
    """`run_dir`, or where it is taken NAME-2, NAME-3, ...: the first that is not."""
    taken_now = run_dir
    for n in itertools.count(2):
        if not (taken_now.exists() or taken_now.is_symlink()):
            return taken_now
        taken_now = run_dir.with_name(f"{run_dir.name}-{n}")


def _create(run_dir: Path, meta: dict, copies: dict, named: Callable[[Path], None] | None,
            base: Path | None = None) -> RunLock:
    """create_run; with `named`, at the next free name where `run_dir` was taken since it was checked
    (by another search started at the same time)."""
    first = base or run_dir
    while True:
        try:
            return create_run(run_dir, meta, copies=copies)
        except RunError:
            if named is None or not (run_dir.exists() or run_dir.is_symlink()):
                raise
            named(run_dir := _next_free(first))  # (NAME-3, not NAME-2-2: helper-84)


def run_search(cfg: Config, run_dir: Path, address: str | None = None, log=print, factories=(),
               named: Callable[[Path], None] | None = None) -> dict:
    """A new search in `run_dir` (which must not exist). `factories`: see `n2n.models.build_model`.
    With `named`, the run's name is n2n's own (the default, from the time): where it is taken, even by a
    search started in the same second, the run goes to NAME-2, NAME-3, ..., and `named(run_dir)` is told
    (helper-82: the second of two searches started at once was told to "choose another --name")."""
    _setdefault_env()
    if address:
        check_address(address)  # before a teacher is trained or anything written
    cfg.check_new()  # a Config made in Python, not through load_config
    if not address:  # trials on this machine: before a teacher is trained
        check_device(cfg, resumed=False)
    run_dir = Path(run_dir).resolve()
    check_creatable(run_dir)  # --runs-dir notes.txt/runs: refused before a teacher is trained
    base = run_dir  # the name n2n chose; NAME-2, NAME-3, ... where taken
    if named is not None:
        named(run_dir := _next_free(run_dir))
    if run_dir.exists():  # before training a teacher: the same check again at creation
        raise taken(run_dir)
    terminal, earlier = log, []  # lines said before the run folder exists, for its n2n.log too (helper-88)

    def log(msg: str):
        earlier.append(stamped(msg))
        terminal(msg)

    meta, (teacher, arch, ds, space) = prepare_run(cfg, factories, log)
    held = Path(meta["teacher_folder"]).resolve()
    if held in run_dir.parents:  # (helper-46) as export refuses an --out there: a teacher folder n2n can check
        raise ConfigError(f"{run_dir}: expected a run folder outside the teacher folder {held}, found it inside; "
                          f"choose another --runs-dir")
    cfg = run_config(meta["config"])  # as recorded: the starting policy made concrete
    if cfg.resources.storage:  # checked, like everything else, before the run folder exists
        meta["results_store"] = store_location(cfg.resources.storage, run_dir.name)
        try:  # what every later command checks: a name that makes another store is refused now
            check_store(meta["results_store"], cfg.resources.storage, "resources.storage")
        except RunError as e:
            raise ConfigError(f"--name {run_dir.name}: {e}") from None
        RemoteResults(meta["results_store"]).check(run_dir)
    with ray_session(address, log):
        short = check_resources(cfg, remote=bool(address))  # before the run folder exists
        lock = _create(run_dir, meta, policy_files(cfg), named, base)
        run_dir = lock.path.parent
        with lock:
            log = teed(terminal, run_dir, earlier)
            if short:
                log(short)
            ref = meta["reference"]
            log(f"teacher: {meta['teacher_folder']}")  # (helper-43: the default teacher's cache folder was said nowhere)
            log(f"teacher: {ref['params']:,} params, val acc {ref['accuracy']:.4f}, "
                f"test acc {meta['teacher']['test_accuracy']:.4f}, {space.n_units} units")
            for name, why in getattr(space, "untouched", {}).items():  # generic modules: say what stays as it is
                log(f"  left untouched: {name} ({why})")
            driver = make_driver(cfg, space, meta, run_dir, log)
            driver.save()
            ctx = make_context(meta, cfg, run_dir, (teacher, arch, ds), factories, log)
            plan = " and ".join(f"{s} {cfg.budget(s)}" for s in cfg.search.stages) + " candidates"
            if cfg.finalists.k:
                plan += (f", then {cfg.finalists.k} finalist{'s' if cfg.finalists.k != 1 else ''} at "
                         f"{cfg.finalists.epochs} epoch{'s' if cfg.finalists.epochs != 1 else ''}")
            log(f"search {run_dir.name}: agent {cfg.search.agent}; {plan}; {cfg.search.concurrency} trials at a time")
            log(cfg.target.said(cfg.reward.compression))
            for line in notes(cfg, space):
                log(line)
            with _watched(run_dir, address, factories, log):
                _fit(run_dir, ctx, cfg, driver, log)
    return _finish(run_dir, driver, log, factories, address)


def restore_driver(make, run_dir: Path, log=print) -> SearchDriver:
    """The driver of a run folder: its saved state (or the one before), else a fresh one from
    `make()` rebuilt from candidates.json; records on disk that the state lacks are taken in, never
    dropped, and no candidate with a result is trained again."""
    records = read_records(run_dir, from_state=True)
    # the saved state, else the one before it (read only then: helper-74), else none
    for name, state in itertools.chain(load_states(run_dir, log), [(None, None)]):
        driver = make()
        if state is None:
            if records:
                log(f"no usable search state; rebuilding it from {RECORDS} ({len(records)} candidates)")
            elif (any((run_dir / f).exists() for f in (STATE, PREV_STATE, RECORDS))
                  or (read_summary(run_dir) or {}).get("candidates_evaluated")):
                log(f"no usable search state and no candidate in {RECORDS}: the search starts from the beginning")
            else:  # (helper-71: a search interrupted while it started read as damaged)
                log("no candidate was evaluated before the search stopped: it starts from the beginning")
            driver.adopt(records)
            break
        try:  # (the records it takes in are told to the state's agent: part of what a state must bear)
            driver.load_state_dict(state)
            driver.adopt(records)
            break
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:  # RuntimeError: a
            log(f"{name} not usable ({e}){fallback(run_dir, name)}")                                # policy's tensors
    rescored = driver.rescore()  # before settle, whose stage ends and bases rank by reward
    if rescored:
        log(rescored)
    older = sum(bool(r.get("latency_ms")) and not r.get("latency_ratio") for r in driver.records)
    driver.forgive_deaths()  # students held as failures for their workers' deaths are tried again
    driver.retry_dead()  # before settle: a stage with a dead candidate to train again is not over
    driver.settle()
    if older and driver.stage is not None:  # (helper-38, helper-39) their passes are not kept, so they cannot be
        # timed alike again; a finished run trains nothing more, so there is no "from now on" (helper-65)
        log(f"{older} candidates were timed by an earlier n2n: the bare model on standardised inputs, ranked by the "
            f"ratio of medians; the candidates trained from now on are timed as they ship (the input standardisation "
            f"too) and ranked by the fastest passes, so their latencies and ratios do not compare exactly")
    return driver


@dataclass
class OpenRun:
    """A run folder opened once, for a resume or an export: its metadata and config, and the teacher,
    data (the teacher's split) and search space they name, each loaded once and checked."""

    path: Path
    meta: dict
    cfg: Config
    teacher: object
    arch: dict
    ds: data_mod.Dataset
    space: object

    @classmethod
    def open(cls, run_dir: Path, factories=()) -> OpenRun:
        meta = read_run(run_dir)
        check_teacher(meta)
        cfg = run_config(meta["config"])
        teacher, arch, _ = load_model(meta["teacher_folder"], factories)
        ds = run_data(meta, arch)
        # the data's shape, before the teacher runs on the recorded one (helper-76: [1, 400000000] in a
        # received n2n.json allocated 102 GB for a probe of the teacher)
        if tuple(meta["input_shape"]) != ds.input_shape:  # (a list of whole numbers: read_run)
            raise RunError(f"{run_dir}/n2n.json: expected the input shape of the run's data, "
                           f"{list(ds.input_shape)}, found {reprlib.repr(meta.get('input_shape'))}")
        check_forward(teacher, ds, meta["teacher_folder"])  # (its code may have changed since the run began)
        space = cfg.space(teacher, meta["input_shape"], arch)
        check_space(space, meta, run_dir)
        check_outputs(run_dir, teacher, ds, meta.get("teacher_logits_digest"), Path(meta["teacher_folder"]))
        # its class names too, which an export writes onto the student's outputs and only config.json holds
        # (helper-92: id2label swapped after the search exported a student whose pipeline() named every class
        # as the other, exit 0; a new search refused that folder)
        check_label_names(teacher, ds, meta["dataset"], log=lambda *_: None)
        return cls(Path(run_dir), meta, cfg, teacher, arch, ds, space)


def check_outputs(run_dir: Path, teacher, ds: data_mod.Dataset, digest: str | None = None,
                  folder: Path | None = None) -> None:
    """The teacher must compute what it computed when the run started, as its kept logits on the
    training split say. Its weights are checked by digest; this catches its code: a user module's
    factory edited since (a LeakyReLU made a ReLU loads the same weights into another network, with
    the same params and FLOPs), whose candidates would be rebuilt and exported as that other network.
    `digest`: the kept file's, as n2n.json recorded it. A file that no longer has it is still compared
    (helper-54: skipped, an edited module passed whenever the file had been touched), and a difference
    then names both causes (helper-53: edited rows were blamed on the teacher's code alone). `folder`: the
    teacher's, whose arch.json builds it too (an edited "input" was blamed on the code alone)."""
    built = f"{folder}/arch.json (its \"input\" standardisation, its layers) or the code" if folder else "the code"
    path = Path(run_dir) / TEACHER_LOGITS
    try:
        kept = load_weights(path)["logits"][:64]  # (64, classes)
    except (ModelError, KeyError):  # none kept (an old or damaged run): nothing to compare with
        return
    # as close as a student's load is held to its probe (n2n.models): the logits are computed on the CPU,
    # in float32 (helper-67: 5e-3, once allowed for TF32 on a GPU, passed an edit that a load then refused)
    gap = output_gap(predict(teacher, ds.x_train[: len(kept)]), kept)
    if gap is not None and digest is not None and file_digest(path) != digest:
        raise RunError(f"{path}: not the file this run kept (its digest differs from n2n.json's), and the teacher "
                       f"computes other outputs than it holds (up to {gap:.3g} apart on its first training samples): "
                       f"either that file was changed (restore it from a copy of the run), or what builds the teacher "
                       f"changed since ({built}: a module's factory, a library; restore it), or both")
    if gap is not None:
        raise RunError(f"{run_dir}: the teacher computes other outputs than when this run started (up to {gap:.3g} "
                       "apart on its first training samples) though its weights are the same, so what builds it "
                       f"changed since: {built} (a module's factory, a library); every candidate would be rebuilt as "
                       "another network: restore it, or start a new search")


def check_space(space, meta: dict, run_dir: Path) -> None:
    """The space this n2n builds for the run's teacher must be the one the run searched: another
    reading of the teacher (a family it now hands to the generic space, FLOPs counted otherwise)
    would resume the agent on other units, or score new candidates against other figures."""
    ref, units = meta["reference"], meta.get("teacher", {}).get("units")
    now = {"params": space.teacher_params(), "flops": space.flops(space.identity()), "units": space.n_units}
    was = {"params": ref.get("params"), "flops": ref.get("flops"), "units": units}
    diff = [f"{k} {was[k]:,} then, {now[k]:,} now" for k in now if was[k] is not None and was[k] != now[k]]
    # the units a spec's indices name, in order (helper-58: a generic teacher read otherwise by a later n2n
    # kept its count, and an old spec's ratios would have gone to other layers); runs made before: unchecked
    names = meta.get("teacher", {}).get("unit_names")
    now_names = [u.name for u in space.units]
    if not diff and isinstance(names, list) and names != now_names:
        i = next((i for i, (a, b) in enumerate(zip(names, now_names)) if a != b), min(len(names), len(now_names)))
        was_name = names[i] if i < len(names) else "none"
        if not (isinstance(was_name, str) and was_name.isprintable() and len(was_name) < 80):
            was_name = reprlib.repr(was_name)  # (a hand-edited n2n.json: no terminal escapes printed)
        diff = [f"unit {i} was {was_name}, is "
                f"{now_names[i] if i < len(now_names) else 'none'} now"]
    if diff:  # helper-32: an edited n2n.json had been blamed on the version alone
        raise RunError(f"{run_dir}: this n2n reads the run's teacher as another search space than the run did "
                       f"({type(space).__name__}: {'; '.join(diff)}): either n2n.json's figures were edited (restore "
                       f"them), or another n2n made the run (resume or export it with that one, or start a new search)")


def check_run_policy(run_dir: Path, cfg: Config, stages: list[str]) -> None:
    """The run's own copy of the policy it started from (RUN/policy), for `stages`: checked when a resume
    starts, not when its next stage does, after this session's trials (helper-63)."""
    policy = cfg.search.agent_options.get("policy")
    if cfg.search.agent != "reinforce" or policy is None:  # (None: a fresh start, or a run older than policies)
        return
    problem = cfg.policy_problem(run_dir / POLICY, stages)
    if problem:
        kind, problem = problem
        raise RunError(f"{run_dir / POLICY}: the run's own copy of the policy it started from is damaged "
                       f"({problem}); copy {kind}/ back from {policy} (n2n.json's search.agent_options.policy) "
                       "or from a copy of the run")


def check_results_writable(run_dir: Path) -> None:
    """RUN/results must take new files: the trials write their results there."""
    import tempfile

    try:
        tempfile.TemporaryFile(dir=run_dir / RESULTS).close()
    except OSError as e:
        raise RunError(f"{run_dir / RESULTS}: cannot be written ({e.strerror}), and the trials write their results "
                       f"there: make it writable, then resume") from None


def resume_search(run_dir: Path, address: str | None = None, log=print, factories=(),
                  concurrency: int | None = None, cpus_per_trial: float | None = None, storage: str | None = None) -> dict:
    """Continue any run folder with n2n.json, whatever state Tune's own files are in. `concurrency`
    and `cpus_per_trial`: for this resume instead of the run's own (a smaller machine than the one it
    started on). Not recorded: they change how fast trials run and the order they finish in, not what
    a candidate is or how it is trained (Ray gives a trial as many threads as CPUs: with
    latency.threads 0, latency is then measured on another number of threads). `storage`: the run's
    resources.storage, where it records one (`check_resume_storage`)."""
    _setdefault_env()
    if address:
        check_address(address)
    run_dir = Path(run_dir).resolve()
    recorded = read_run(run_dir)  # a clear error for a folder that is no run, before taking its lock
    check_resume_storage(run_dir, recorded, storage)
    if not address:  # trials on this machine (a cluster's workers cannot be checked from here)
        check_device(run_config(recorded["config"]), resumed=True)
    with RunLock(run_dir):
        log = teed(log, run_dir)
        run = OpenRun.open(run_dir, factories)
        cfg, meta = run.cfg, run.meta
        recorded_concurrency, recorded_cpus = cfg.search.concurrency, cfg.resources.cpus_per_trial
        cfg.search.concurrency = concurrency or recorded_concurrency
        cfg.resources.cpus_per_trial = cpus_per_trial or recorded_cpus
        # every stage's: a driver is made at its first stage, and the state restored onto it (helper-64: a
        # damaged copy of the stage under way made the state look unusable)
        check_run_policy(run_dir, cfg, cfg.search.stages)
        driver = restore_driver(lambda: make_driver(cfg, run.space, meta, run_dir, log, recorded_concurrency), run_dir,
                                log)
        if driver.failed:
            raise RunError(f"{run_dir}: this search stopped because {driver.failed}; fix the cause and start a new one")
        done = driver.stage is None and (read_summary(run_dir) or {}).get("stage") == "done"
        if not done or not (run_dir / RECORDS).exists():  # a finished run, recorded as finished, is read and not
            # written, but for a candidates.json lost since, which its state holds
            driver.save()
        Fetcher(results_location(meta, run_dir), run_dir, log).sync(r["key"] for r in driver.records)
        if driver.stage is None:
            log(f"{run_dir.name} has finished already")
            return _finish(run_dir, driver, log, factories, address)
        check_results_writable(run_dir)  # before trials train for minutes (helper-82: 55 s, then a stop)
        log(f"resuming {run_dir.name}: {counted(driver.records)} so far, stage {driver.stage}")
        log(f"{cfg.target.said(cfg.reward.compression)} (the run's own, in its n2n.json)")
        if note := rules_note(meta):
            log(note)
        if cfg.search.concurrency != recorded_concurrency:
            log(f"{cfg.search.concurrency} trials at a time for this resume (the run's own: {recorded_concurrency})")
        if cfg.resources.cpus_per_trial != recorded_cpus:
            log(f"{cfg.resources.cpus_per_trial:g} CPU per trial for this resume (the run's own: {recorded_cpus:g})")
        with ray_session(address, log):
            short = check_resources(cfg, remote=bool(address), resumed=True)
            if short:
                log(short)
            with _watched(run_dir, address, factories, log):
                _fit(run_dir, make_context(meta, cfg, run_dir, (run.teacher, run.arch, run.ds), factories, log),
                     cfg, driver, log)
    return _finish(run_dir, driver, log, factories, address)
