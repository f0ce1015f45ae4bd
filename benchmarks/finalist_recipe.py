"""Does the finalists' longer distillation pick and ship better students with export's fine-tune recipe?

    python benchmarks/finalist_recipe.py RUN [RUN ...] [--name STEM]

For every finalist of the given finished runs (folders of benchmarks/search_quality.py), side by side
in one process: the finalist as the search trained it (its saved weights: the run's distillation
recipe, `finalists.epochs` epochs) and the same spec trained again from the teacher's weights for the
same epochs with export's fine-tune recipe (distillation + cross-entropy, cosine schedule). Per run,
each recipe's pick (the smallest finalist within the target on validation, as `n2n export` picks)
and its test accuracy against the teacher's. Writes benchmarks/results/STEM.json (default
finalist_recipe).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from envs import within_drop
from n2n.models import build_model, load_weights
from n2n.runfolder import read_records
from n2n.search import OpenRun
from n2n.storage import weights_of
from n2n.train import accuracy, distill, predict
from search_spaces import StudentSpec

RESULTS = Path(__file__).parent / "results"


def points(teacher: float, student: float) -> float:
    return round((teacher - student) * 100, 2)  # as `n2n export` shows it


def pick(rows: list[dict], teacher_val: float, drop: float, recipe: str) -> dict | None:
    """The smallest finalist within `drop` on validation, judged as n2n.pick judges it."""
    ok = [r for r in rows if within_drop(teacher_val, r[f"{recipe}_val"], drop)]
    return min(ok, key=lambda r: r["params"]) if ok else None


def analyse(run_dir: Path) -> dict:
    run = OpenRun.open(run_dir)
    cfg, ds, space = run.cfg, run.ds, run.space
    drop = cfg.target.max_accuracy_drop
    t_val, t_test = accuracy(run.teacher, ds.x_val, ds.y_val), accuracy(run.teacher, ds.x_test, ds.y_test)
    t_logits = predict(run.teacher, ds.x_train)  # (N_train, classes)
    recipe = dataclasses.replace(cfg.distill, epochs=cfg.finalists.epochs, ce_weight=max(cfg.distill.ce_weight, 1.0),
                                 schedule="cosine")  # what `n2n export --finetune-epochs` trains with
    rows = []
    for r in (r for r in read_records(run_dir) if r["stage"] == "finalists" and r["failure"] is None):
        spec = StudentSpec.from_dict(r["spec"])
        searched = build_model(space.arch(spec))
        searched.load_state_dict(load_weights(weights_of(run_dir, r["key"])), strict=True)
        start = time.perf_counter()
        student = space.build(spec, inherit=cfg.distill.inherit, seed=cfg.seed)
        if cfg.distill.reconstruct:
            student = space.reconstruct(student, spec, ds.x_train[: cfg.distill.reconstruct])
        distill(student, ds.x_train, ds.y_train, t_logits, ds.x_val, ds.y_val, recipe, seed=cfg.seed)
        rows.append({"key": r["key"], "params": r["params"], "search_val": r["accuracy"],
                     "search_test": accuracy(searched, ds.x_test, ds.y_test),
                     "finetune_val": accuracy(student, ds.x_val, ds.y_val),
                     "finetune_test": accuracy(student, ds.x_test, ds.y_test),
                     "finetune_seconds": round(time.perf_counter() - start, 1)})
    out = {"run": run_dir.name, "teacher_params": run.meta["reference"]["params"], "teacher_val": t_val,
           "teacher_test": t_test, "drop": drop, "finalists": rows}
    return out


def summarise(runs: list[dict], margins=(0.0, 0.1, 0.3, 0.5)) -> dict:
    """Per recipe and validation margin (pick the smallest finalist within drop - margin on
    validation): how many picks meet the target on test, and their mean compression (1x: no pick)."""
    out = {}
    for name in ("search", "finetune"):
        drops = [points(r["teacher_test"], f[f"{name}_test"]) for r in runs for f in r["finalists"]]
        out[name] = {"mean_finalist_test_drop": round(statistics.mean(drops), 3), "by_margin": {}}
        for m in margins:
            picks = [(r, pick(r["finalists"], r["teacher_val"], r["drop"] - m, name)) for r in runs]
            out[name]["by_margin"][str(m)] = {
                "runs": len(runs), "no_pick": sum(p is None for _, p in picks),
                "met_on_test": sum(p is not None and within_drop(r["teacher_test"], p[f"{name}_test"], r["drop"])
                                   for r, p in picks),
                "mean_times_smaller": round(statistics.mean(r["teacher_params"] / p["params"] if p else 1.0
                                                            for r, p in picks), 2)}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path)
    p.add_argument("--name", default="finalist_recipe")
    p.add_argument("--from", dest="source", type=Path, help="summarise a results JSON again; train nothing")
    args = p.parse_args()
    torch.set_num_threads(2)
    runs = json.loads(args.source.read_text())["runs"] if args.source else []
    for d in args.runs:
        runs.append(analyse(d))
        print(runs[-1]["run"], [(f["params"], f["search_test"], f["finetune_test"]) for f in runs[-1]["finalists"]],
              flush=True)
    summary = summarise(runs)
    print(json.dumps(summary, indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
