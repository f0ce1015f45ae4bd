"""How far below the target should finalists be picked from?

    python benchmarks/finalist_reach.py RUN [RUN ...] [--reach 2 3 4 5] [--name STEM]

The driver's finalists are the k smallest students of the accuracy/size Pareto front (validation
accuracy after the search's brief distillation) within `reach` points of the accuracy target: drop +
2 today. Brief distillation underrates students, so a wider reach offers smaller finalists, which may
or may not recover when distilled for `finalists.epochs`. For every finished run given (folders of
benchmarks/search_quality.py), each front student within drop + max(reach) that was not a finalist
is distilled exactly as a finalist is (n2n.trial.evaluate, `finalists.epochs` epochs; the run's
finalists keep their recorded figures), and its validation and test accuracy recorded. Then, per
reach, the finalists the driver would have chosen, the student `n2n export` would pick among them
(n2n.pick's rule: the smallest within the target on validation, else the best by reward) and
whether it meets the target on test. Writes benchmarks/results/STEM.json (default finalist_reach).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from envs import within_drop
from n2n.models import build_model, load_weights
from n2n.runfolder import read_records
from n2n.search import OpenRun, make_context
from n2n.train import accuracy
from n2n.trial import evaluate
from search_spaces import StudentSpec

RESULTS = Path(__file__).parent / "results"


def front(records: list[dict]) -> list[dict]:
    """The driver's Pareto front (smallest first, each more accurate than every smaller one)."""
    ok = [r for r in records if r["stage"] != "finalists" and r["failure"] is None and r["reward"] > -1]
    out, best = [], -1.0
    for r in sorted(ok, key=lambda r: (r["params"], -r["accuracy"])):
        if r["accuracy"] > best:
            out.append(r)
            best = r["accuracy"]
    return out


def analyse(run_dir: Path, reaches) -> dict:
    run = OpenRun.open(run_dir)
    cfg, ds, space = run.cfg, run.ds, run.space
    drop, k, ref = cfg.target.max_accuracy_drop, cfg.finalists.k, run.meta["reference"]
    t_val, t_test = ref["accuracy"], accuracy(run.teacher, ds.x_test, ds.y_test)
    records = read_records(run_dir)
    finals = {r["key"].split("@")[0]: r for r in records if r["stage"] == "finalists" and r["failure"] is None}
    ctx = None
    rows = []
    shown = front(records)
    needed = {r["key"] for reach in reaches
              for r in [r for r in shown if (t_val - r["accuracy"]) * 100 <= drop + reach][:k]}
    for r in shown:
        brief_drop = (t_val - r["accuracy"]) * 100
        if r["key"] not in needed:  # a finalist at no reach tried
            continue
        spec = StudentSpec.from_dict(r["spec"])
        f = finals.get(r["key"])  # a finalist's key is its student's key + "@10ep"
        if f is not None:  # distilled by the search already: its recorded figures and saved weights
            student = build_model(space.arch(spec))
            student.load_state_dict(load_weights(run_dir / "results" / f"{f['key']}.safetensors"), strict=True)
            val, source = f["accuracy"], "finalist"
        else:
            ctx = ctx or make_context(run.meta, cfg, run_dir, (run.teacher, run.arch, ds))
            ev, student = evaluate(space, spec, ctx, None, cfg.finalists.epochs)
            val, source = ev.accuracy, "distilled here"
        rows.append({"key": r["key"], "params": r["params"], "brief_val": r["accuracy"], "brief_drop": round(brief_drop, 2),
                     "reward": r["reward"], "val": val, "test": accuracy(student, ds.x_test, ds.y_test), "source": source})
        print(f"  {run_dir.name}: {r['params']:>7,} params, brief drop {brief_drop:5.2f}, after "
              f"{cfg.finalists.epochs} epochs val {val:.4f} test {rows[-1]['test']:.4f} ({source})", flush=True)
    return {"run": run_dir.name, "teacher_params": ref["params"], "teacher_val": t_val, "teacher_test": t_test,
            "drop": drop, "k": k, "front": rows}


def export_for(run: dict, reach: float) -> dict | None:
    """The finalists the driver chooses at `reach` (the k smallest within drop + reach; fewer only
    where the front has fewer, which the driver tops up by reward), and the one export picks: the smallest within the target on validation, else the best
    finalist by reward (outside the target: the most accurate)."""
    rows = run["front"]
    chosen = [r for r in rows if r["brief_drop"] <= run["drop"] + reach][: run["k"]]
    meeting = [r for r in chosen if within_drop(run["teacher_val"], r["val"], run["drop"])]
    if meeting:
        return min(meeting, key=lambda r: r["params"])
    return max(chosen, key=lambda r: r["val"]) if chosen else None


def summarise(runs: list[dict], reaches) -> dict:
    out = {}
    for reach in reaches:
        picks = [(r, export_for(r, reach)) for r in runs]
        out[str(reach)] = {
            "runs": len(runs),
            "met_on_test": sum(p is not None and within_drop(r["teacher_test"], p["test"], r["drop"]) for r, p in picks),
            "mean_times_smaller": round(statistics.mean(r["teacher_params"] / p["params"] for r, p in picks), 2),
            "per_run": [round(r["teacher_params"] / p["params"], 1) for r, p in picks],
            "test_drop": [round((r["teacher_test"] - p["test"]) * 100, 2) for r, p in picks]}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path)
    p.add_argument("--reach", type=float, nargs="+", default=[2.0, 3.0, 4.0, 5.0])
    p.add_argument("--name", default="finalist_reach")
    p.add_argument("--from", dest="source", type=Path, help="summarise a results JSON again; train nothing")
    args = p.parse_args()
    torch.set_num_threads(2)
    runs = json.loads(args.source.read_text())["runs"] if args.source else []
    for d in args.runs:
        runs.append(analyse(d, args.reach))
    summary = summarise(runs, args.reach)
    print(json.dumps(summary, indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
