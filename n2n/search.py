"""Run, resume and inspect searches under Ray Tune.

A run folder ``runs/NAME/`` holds n2n's own files: ``n2n.json`` (config, teacher folder, reference
figures), ``summary.json`` (kept current), ``candidates.json`` (every trained candidate),
``results/`` (per-candidate metrics and weights, written by the trials; on a cluster the runs folder
must be on shared storage) and ``tune/``, Ray Tune's experiment (trials, searcher snapshots).
Tune's experiment sits in its own folder because a restored Tune run re-uploads every top-level
.json of its folder from a stale staging copy, which would overwrite n2n's files.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

from envs import Reference

from . import data as data_mod
from .config import Config, from_dict
from .driver import SearchDriver
from .errors import ConfigError, RunError
from .models import load_model, write_json
from .teachers import cached_teacher
from .train import accuracy, predict
from .trial import Context


TUNE_DIR = "tune"  # Ray Tune's experiment, inside the run folder


def _setdefault_env():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # machines may be offline
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Snapshot experiment + searcher state often: an interrupted search loses at most this much
    # bookkeeping (finished candidates are never retrained either way, see n2n.trial).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # n2n keeps its own records (candidates.json); of Tune's per-trial loggers only the JSON one
    # is kept (Tune reads it back at the end), not CSV and TensorBoard.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


def read_run(run_dir: Path) -> dict:
    meta = run_dir / "n2n.json"
    if not meta.is_file():
        raise RunError(f"{run_dir}: expected a run folder made by `n2n search` (with n2n.json), found none")
    return json.loads(meta.read_text())


def build_driver(run_dir: Path, log=print) -> SearchDriver:
    """The driver of a run folder, rebuilt from n2n.json (used by the searcher, also after a resume)."""
    meta = read_run(run_dir)
    cfg = from_dict(Config, meta["config"])
    teacher, _, _ = load_model(meta["teacher_folder"])
    return make_driver(cfg, cfg.space(teacher, meta["input_shape"]), meta, run_dir, log)


def make_driver(cfg: Config, space, meta: dict, run_dir: Path | None, log=print) -> SearchDriver:
    budgets = {"removal": cfg.search.removal_budget, "shrink": cfg.search.shrink_budget}
    try:
        return SearchDriver(space, Reference(**meta["reference"]), agent=cfg.search.agent, stages=cfg.search.stages,
                            budgets=budgets, seed=cfg.seed, reward_config=cfg.reward,
                            agent_options=cfg.search.agent_options,
                            max_asks_per_candidate=cfg.search.max_asks_per_candidate, run_dir=run_dir,
                            teacher_info=meta["teacher"], log=log)
    except ValueError as e:  # e.g. an agent option the agent does not take
        raise ConfigError(f"search.agent_options: {e}") from None


def resolve_teacher(cfg: Config, log=print) -> tuple[Path, str]:
    """(teacher folder, dataset name) for a config; trains and caches the default teacher if needed."""
    if cfg.teacher.path:
        folder = Path(cfg.teacher.path)
        _, _, metrics = load_model(folder)
        dataset = cfg.teacher.dataset or metrics.get("dataset")
        if not dataset:
            raise ConfigError(f"teacher.dataset: {folder}/metrics.json names no dataset; set teacher.dataset")
        return folder, dataset
    return cached_teacher(cfg.teacher.recipe, log=log), cfg.teacher.dataset or cfg.teacher.recipe.dataset


def make_context(meta: dict, cfg: Config, run_dir: Path, loaded: tuple | None = None) -> Context:
    """Teacher, data and the teacher's training-set logits (computed once) for every trial.
    `loaded`: (teacher, arch, dataset) when the caller has them already."""
    teacher, arch, ds = loaded or (*load_model(meta["teacher_folder"])[:2],
                                   data_mod.load_dataset(meta["dataset"], seed=cfg.seed))
    t_logits = predict(teacher, ds.x_train)  # (N_train, classes)
    return Context(arch, {k: v.contiguous() for k, v in teacher.state_dict().items()}, tuple(meta["input_shape"]),
                   tuple(cfg.search.ratios), ds.x_train, ds.y_train, t_logits, ds.x_val, ds.y_val, cfg.distill,
                   Reference(**meta["reference"]), cfg.reward, str(run_dir / "results"), cfg.resources.device, cfg.seed,
                   cfg.search.uniform_widths, per_epoch=cfg.early_stop.enabled)


def new_run(cfg: Config, run_dir: Path, log=print) -> tuple[dict, tuple]:
    """Create the run folder and n2n.json: teacher, data check, reference figures.
    Returns the metadata and (teacher, arch, dataset), loaded once for the whole search."""
    if run_dir.exists():
        raise RunError(f"{run_dir} already exists; resume it with `n2n resume {run_dir}` or choose another --name")
    folder, dataset = resolve_teacher(cfg, log)
    teacher, arch, _ = load_model(folder)
    ds = data_mod.load_dataset(dataset, seed=cfg.seed)
    shape = arch.get("input_shape") or arch.get("hparams", {}).get("input_shape") or ds.input_shape
    if tuple(shape) != ds.input_shape:
        raise ConfigError(f"teacher expects inputs of shape {tuple(shape)}, dataset {dataset} gives {ds.input_shape}")
    space = cfg.space(teacher, ds.input_shape)
    val_acc, test_acc = accuracy(teacher, ds.x_val, ds.y_val), accuracy(teacher, ds.x_test, ds.y_test)
    ref = Reference(space.teacher_params(), space.flops(space.identity()), val_acc)
    meta = {"config": cfg.to_dict(), "teacher_folder": str(folder.resolve()), "dataset": dataset,
            "input_shape": list(ds.input_shape), "reference": asdict(ref),
            "teacher": {"folder": str(folder.resolve()), "dataset": dataset, "test_accuracy": test_acc,
                        "units": space.n_units},
            "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    make_driver(cfg, space, meta, None, log=lambda *_: None)  # bad agent options fail before anything is written
    (run_dir / "results").mkdir(parents=True)
    write_json(run_dir / "n2n.json", meta)
    log(f"teacher: {ref.params:,} params, val acc {val_acc:.4f}, test acc {test_acc:.4f}, {space.n_units} units")
    for name, why in getattr(space, "untouched", {}).items():  # generic modules: say what stays as it is
        log(f"  left untouched: {name} ({why})")
    return meta, (teacher, arch, ds)


def _init_ray(address: str | None, log=print):
    import ray

    if ray.is_initialized():
        return
    if address:
        log(f"connecting to Ray cluster at {address}")
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)


def _trainable(ctx: Context, cfg: Config):
    from ray import tune

    from .trial import run_trial

    res = {"cpu": cfg.resources.cpus_per_trial, "gpu": cfg.resources.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(run_trial, context=ctx), res)


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _tuner(run_dir: Path, ctx: Context, cfg: Config):
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler

    from .searcher import N2NSearcher

    scheduler = None
    if cfg.early_stop.enabled:
        # max_t past the last epoch: ASHA stops a trial that reaches max_t, which would cut it off
        # before it saves its weights and final result.
        scheduler = ASHAScheduler(metric="reward", mode="max", time_attr="epoch", max_t=cfg.distill.epochs + 1,
                                  grace_period=cfg.early_stop.grace_period,
                                  reduction_factor=cfg.early_stop.reduction_factor)
    return tune.Tuner(
        _trainable(ctx, cfg),
        tune_config=tune.TuneConfig(search_alg=N2NSearcher(run_dir), num_samples=-1, scheduler=scheduler,
                                    max_concurrent_trials=cfg.search.concurrency, reuse_actors=True,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=TUNE_DIR, storage_path=str(run_dir), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1),
                                  callbacks=[JsonLoggerCallback()]),
    )


def _finish(run_dir: Path, log=print) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    if summary.get("stage") != "done":
        log(f"search interrupted; continue it with `n2n resume {run_dir}`")
    elif summary.get("best"):
        b = summary["best"]
        log(f"best student: {b['params']:,} params ({b['times_smaller']}x smaller), val acc "
            f"{b['val_accuracy']:.4f}, reward {b['reward']:.3f} -> `n2n export {run_dir} --out DIR`")
    return summary


def run_search(cfg: Config, run_dir: Path, address: str | None = None, log=print) -> dict:
    _setdefault_env()
    run_dir = run_dir.resolve()
    meta, loaded = new_run(cfg, run_dir, log)
    ctx = make_context(meta, cfg, run_dir, loaded)
    _init_ray(address, log)
    log(f"search {run_dir.name}: agent {cfg.search.agent}, stages {cfg.search.stages}, "
        f"budgets removal {cfg.search.removal_budget} / shrink {cfg.search.shrink_budget}, "
        f"{cfg.search.concurrency} trials at a time")
    _tuner(run_dir, ctx, cfg).fit()
    return _finish(run_dir, log)


def resume_search(run_dir: Path, address: str | None = None, log=print) -> dict:
    from ray import tune

    _setdefault_env()
    run_dir = run_dir.resolve()
    meta = read_run(run_dir)
    if not (run_dir / TUNE_DIR / "tuner.pkl").exists():
        raise RunError(f"{run_dir}: the search never started under Ray Tune (no tuner.pkl); start a new one")
    cfg = from_dict(Config, meta["config"])
    os.environ["N2N_RUN_DIR"] = str(run_dir)
    ctx = make_context(meta, cfg, run_dir)
    _init_ray(address, log)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    log(f"resuming {run_dir.name}: {summary.get('candidates_evaluated', 0)} candidates so far")
    tuner = tune.Tuner.restore(str(run_dir / TUNE_DIR), trainable=_trainable(ctx, cfg), resume_unfinished=True,
                               resume_errored=True)
    tuner.fit()
    return _finish(run_dir, log)
