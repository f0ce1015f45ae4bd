"""One candidate on a Ray Tune worker: build the student, distil it briefly, report, save its weights.

Everything a trial needs that is large (teacher weights, data, the teacher's logits on the training
set) arrives once per search through Ray's object store (`tune.with_parameters`); the trial's own
config is only the spec. The teacher's logits are computed once per run on the driver and kept in the
run folder (n2n.search.teacher_logits), since the built-in data has no augmentation (with augmentation
the teacher would have to run on every batch).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import statistics
import time
import traceback
from dataclasses import dataclass

import torch

from envs import Evaluation, Reference, RewardConfig, compression, reward
from search_spaces import SearchSpace, StudentSpec

from .deploy import fastest_ratio, time_as_shipped
from .models import ModelError, build_model, device_for
from .runfolder import result_problem
from .storage import open_results, shown, stem
from .train import DistillConfig, HiddenTarget, distill


@dataclass
class Context:
    """What every trial of a search shares (placed in the object store once)."""

    teacher_arch: dict
    teacher_state: dict  # name -> tensor
    input_shape: tuple
    ratios: tuple
    x_train: torch.Tensor
    y_train: torch.Tensor
    t_logits: torch.Tensor  # (N_train, classes): the teacher's outputs, computed once
    x_val: torch.Tensor
    y_val: torch.Tensor
    distill: DistillConfig
    reference: Reference
    reward: RewardConfig
    results_dir: str  # where trials leave results: the run's results/ or a storage URI (n2n.storage)
    device: str = "auto"
    seed: int = 0
    uniform: bool = False  # transformers: one FFN width for all layers
    per_epoch: bool = False  # report after every epoch (early stopping reads it); else once at the end
    factories: tuple = ()  # user factories the user allowed (module teachers); see n2n.models.build_model
    latency: object = None  # n2n.config.LatencyConfig: how latency is measured (None: not measured)
    preprocess: dict | None = None  # the data set's standardisation (n2n.models.RawInput), timed with the models
    run_id: str | None = None  # n2n.json's: results/ is read and written only while its run folder is this run


_SPACES: dict[str, SearchSpace] = {}  # per worker process: actors are reused across trials


def space_of(ctx: Context) -> SearchSpace:
    key = ctx.results_dir  # one per search
    if key not in _SPACES:
        from search_spaces import space_for

        teacher = build_model(ctx.teacher_arch, ctx.factories)
        teacher.load_state_dict(ctx.teacher_state, strict=True)
        _SPACES.clear()
        _SPACES[key] = space_for(teacher.eval(), ctx.input_shape, ctx.ratios, uniform=ctx.uniform, arch=ctx.teacher_arch)
    return _SPACES[key]


_ON_DEVICE: dict[tuple, torch.nn.Module] = {}  # per worker process: the teacher's copy on an accelerator


def teacher_on(space: SearchSpace, ctx: Context, device: torch.device) -> torch.nn.Module:
    """The teacher on `device`, for timing and hidden-state targets. On an accelerator a copy: the
    space's own teacher stays on the CPU, where every student is built (sliced) from it."""
    if device.type == "cpu":
        return space.teacher
    key = (ctx.results_dir, str(device))
    if key not in _ON_DEVICE:
        _ON_DEVICE.clear()
        _ON_DEVICE[key] = copy.deepcopy(space.teacher).to(device).eval()
    return _ON_DEVICE[key]


def metrics_of(ev: Evaluation, ctx: Context, epoch: int) -> dict:
    return {**ev.to_dict(), "failed": ev.failure is not None, "failure": ev.failure or "",
            "reward": reward(ev, ctx.reference, ctx.reward), "compression": compression(ev, ctx.reference, ctx.reward),
            "epoch": epoch}


def evaluate(space: SearchSpace, spec: StudentSpec, ctx: Context, report=None,
             epochs: int | None = None) -> tuple[Evaluation, torch.nn.Module | None]:
    """Distil one candidate and measure it (for `epochs`, default the search's). `report(metrics)`
    is called after every epoch."""
    if epochs is not None:  # finalists: the same student, distilled longer
        ctx = dataclasses.replace(ctx, distill=dataclasses.replace(ctx.distill, epochs=epochs))
    start = time.perf_counter()
    params, flops = space.params(spec), space.flops(spec)
    try:
        student = space.build(spec, inherit=ctx.distill.inherit, seed=ctx.seed)
        if ctx.distill.reconstruct:  # start from the teacher's features, not only its weights
            student = space.reconstruct(student, spec, ctx.x_train[: ctx.distill.reconstruct])
    except Exception as e:  # a spec that validated but could not be built: a bug worth surfacing
        return Evaluation(0.0, params, flops, failure=f"build failed: {e}"), None

    device = device_for(ctx.device)
    teacher = teacher_on(space, ctx, device)
    latency = (None, None, None)
    if ctx.latency is not None:  # before distillation (the weights do not change the compute), so every
        lat = ctx.latency        # per-epoch report carries it too: early stopping can rank on it
        times = time_as_shipped(student.to(device), teacher, ctx.x_val, ctx.preprocess, batch_size=lat.batch_size,
                                threads=lat.threads, warmup=lat.warmup, repeats=lat.repeats)  # as export times them
        latency = (*map(statistics.median, times), fastest_ratio(*times))  # medians (ms), and the ratio

    def on_epoch(epoch, acc):
        ev = Evaluation(acc, params, flops, epoch + 1, time.perf_counter() - start, 0.0, None, *latency)
        report(metrics_of(ev, ctx, epoch + 1))

    hidden = None
    pairs = space.hidden_map(spec) if ctx.distill.hidden_weight else None
    if pairs:
        hidden = HiddenTarget(teacher, pairs, space.hidden_states)
    res = distill(student, ctx.x_train, ctx.y_train, ctx.t_logits, ctx.x_val, ctx.y_val, ctx.distill.for_space(space),
                  seed=ctx.seed, device=device, on_epoch=on_epoch if report else None, hidden=hidden)
    ev = Evaluation(res.val_accuracy, params, flops, res.epochs, time.perf_counter() - start, res.train_seconds,
                    res.failure, *(latency if res.failure is None else (None, None, None)))
    return ev, student.cpu()


def run_trial(config: dict, context: Context) -> None:
    """The Ray Tune trainable: config = {"spec": ..., "key": ..., "stage": ...}."""
    from ray import tune

    ctx = context
    results = open_results(ctx.results_dir, ctx.run_id)
    try:
        done = results.result(config["key"])
    except json.JSONDecodeError:  # a damaged result is no result: trained again, and written whole
        done = None
    except Exception as e:  # storage this worker cannot reach: say so in the record, not as a traceback
        tune.report(metrics_of(Evaluation(0.0, 0, 0, failure=f"results storage {shown(ctx.results_dir)}: {e}"[:300]), ctx, 0))
        return
    if done is not None and result_problem(done):  # one not as n2n writes it: the same (helper-76)
        done = None
    if done is not None:  # trained before an interruption: report the stored result, train nothing
        tune.report({**done, "cached": True})
        return
    import ray

    started = time.time()
    spec = StudentSpec.from_dict(config["spec"])
    try:
        space = space_of(ctx)
        ev, student = evaluate(space, spec, ctx, tune.report if ctx.per_epoch else None, config.get("epochs"))
    except Exception as e:
        if type(e).__module__.startswith("ray"):
            raise  # Tune's own control flow (a stopped trial), not a failure of the candidate
        # The reason reaches the run's records and progress line; the traceback stays in results/.
        with contextlib.suppress(Exception):  # best effort: the record carries the reason either way
            results.write_text(f"{stem(config['key'])}.traceback.txt", traceback.format_exc())
        ev, student = Evaluation(0.0, 0, 0, failure=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]), None
    final = metrics_of(ev, ctx, ev.epochs)
    runtime = ray.get_runtime_context()
    try:
        device = str(device_for(ctx.device))
    except ModelError:  # the failure above says why; the record names what was asked for
        device = ctx.device
    final.update(device=device, started=started, ended=time.time(), node=runtime.get_node_id(),
                 gpus=float(runtime.get_assigned_resources().get("GPU", 0.0)))
    try:
        final = results.save(config["key"], student.state_dict() if student is not None and ev.failure is None else None,
                             final)
    except Exception as e:  # trained, but nothing kept: a failure whose reason names the storage
        final.update(failed=True, failure=f"results storage {shown(ctx.results_dir)}: {e}"[:300])
    tune.report(final)

