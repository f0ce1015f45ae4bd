"""Where a trial's time goes, and how throughput scales with concurrent trials.

For a fixed set of candidates (seeded random removal + shrink specs of a half-width vgg1d teacher on
MNIST-1D), runs the real trainable under Ray Tune twice, side by side in one process: one trial at a
time, then two at a time, on the same machine. Reports
- train_fraction: time inside distillation steps / trial wall time (trial function start to end);
- speedup_2_vs_1: candidates per minute with 2 concurrent trials over 1.
Writes benchmarks/results/overhead.json.

    python benchmarks/overhead.py [--candidates 12] [--epochs 3]
"""

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

import numpy as np
import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--candidates", type=int, default=12)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()

    import ray
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from envs import Reference, RewardConfig
    from n2n.data import load_dataset
    from n2n.search import trial_dirname
    from n2n.teachers import TeacherRecipe, cached_teacher
    from n2n.models import load_model
    from n2n.train import DistillConfig, accuracy, predict
    from n2n.storage import stem
    from n2n.trial import Context, run_trial
    from search_spaces import StudentSpec, space_for

    folder = cached_teacher(TeacherRecipe(width_mult=0.5, hidden=[128], epochs=10))
    teacher, arch, _ = load_model(folder)
    ds = load_dataset("mnist1d")
    space = space_for(teacher, ds.input_shape)
    rng = np.random.default_rng(0)
    specs, keys = [], set()
    while len(specs) < args.candidates:
        removed = [i for i, u in enumerate(space.units) if u.removable and rng.random() < 0.3]
        ratios = [float(rng.choice(space.ratios)) if u.shrinkable else 1.0 for u in space.units]
        spec = StudentSpec(removed, ratios)
        if space.validate(spec) is None and space.key(spec) not in keys:
            keys.add(space.key(spec))
            specs.append({"spec": spec.to_dict(), "key": space.key(spec), "stage": "bench"})
    ref = Reference(space.teacher_params(), space.flops(space.identity()), accuracy(teacher, ds.x_val, ds.y_val))
    tmp = Path(tempfile.mkdtemp(prefix="n2n-bench-"))
    base = Context(arch, teacher.state_dict(), ds.input_shape, space.ratios, ds.x_train, ds.y_train,
                   predict(teacher, ds.x_train), ds.x_val, ds.y_val, DistillConfig(epochs=args.epochs), ref,
                   RewardConfig(), "", "cpu", 0)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")

    def trainable(config, context):
        run_trial(config["cand"], context)

    out = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "torch": torch.__version__,
           "ray": ray.__version__, "candidates": args.candidates, "distill_epochs": args.epochs}
    for conc in (1, 2):
        results = tmp / f"results-{conc}"
        results.mkdir()
        ctx = replace(base, results_dir=str(results))
        start = time.perf_counter()
        grid = tune.Tuner(
            tune.with_resources(tune.with_parameters(trainable, context=ctx), {"cpu": 1}),
            param_space={"cand": tune.grid_search(specs)},
            tune_config=tune.TuneConfig(max_concurrent_trials=conc, reuse_actors=True,
                                        trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(name=f"bench-{conc}", storage_path=str(tmp), verbose=0,
                                      callbacks=[JsonLoggerCallback()]),
        ).fit()
        wall = time.perf_counter() - start
        rows = [json.loads((results / f"{stem(s['key'])}.json").read_text()) for s in specs]
        assert len(grid) == len(specs) and not grid.errors
        train = sum(r["train_seconds"] for r in rows)
        trial_wall = sum(r["ended"] - r["started"] for r in rows)
        out[f"concurrency_{conc}"] = {"wall_seconds": round(wall, 2), "candidates_per_minute": round(60 * len(specs) / wall, 2),
                                      "train_fraction": round(train / trial_wall, 4),
                                      "train_fraction_of_search_wall": round(train / (wall * conc), 4)}
        print(conc, out[f"concurrency_{conc}"], flush=True)
    out["train_fraction"] = out["concurrency_2"]["train_fraction"]
    out["speedup_2_vs_1"] = round(out["concurrency_2"]["candidates_per_minute"] / out["concurrency_1"]["candidates_per_minute"], 3)
    path = Path(__file__).parent / "results" / "overhead.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
