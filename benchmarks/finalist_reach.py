"""Which finalists should a search distil longer: how far below the target, and how many?

    python benchmarks/finalist_reach.py RUN [RUN ...] [--name STEM] [--reach 2 3 4] [--k 3 5]
    python benchmarks/finalist_reach.py --from benchmarks/results/STEM.json   # the summary again

The finalists today are the `finalists.k` (3) smallest students of the search's accuracy/size front
within `reach` (2) points below the target (n2n.pick.finalists), distilled for `finalists.epochs`;
`n2n export` then ships the smallest that meets the target on validation (n2n.pick.choose; here
with no margin, as these results were recorded, so the rules are compared at one margin;
benchmarks/pick_margin.py compares margins). For
finished runs of benchmarks/search_quality.py this distils, once each and exactly as a finalist
trial does (n2n.trial.evaluate, the run's seed, one thread as a Tune worker has), every front member
that any rule of --reach x --k would pick and the run did not already distil; then applies each
rule's pick to the same figures and measures the pick's test accuracy. One finalist the run did
distil is distilled again as a check that these figures are the search's (`check`). Writes
benchmarks/results/STEM.json (default finalist_reach).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import time
from pathlib import Path

import torch

from envs import Reference, reward, within_drop
from n2n.models import build_model, load_weights
from n2n.pick import choose, finalists
from n2n.runfolder import read_records
from n2n.search import OpenRun, make_context
from n2n.storage import weights_of
from n2n.train import accuracy
from n2n.trial import evaluate
from search_spaces import StudentSpec

RESULTS = Path(__file__).parent / "results"


def analyse(run_dir: Path, reaches: list[float], ks: list[int]) -> dict:
    run = OpenRun.open(run_dir)
    cfg, ds, space = run.cfg, run.ds, run.space
    ctx = dataclasses.replace(make_context(run.meta, cfg, run_dir, (run.teacher, run.arch, run.ds), log=lambda *_: None),
                              latency=None)
    ref, rc, drop = Reference(**run.meta["reference"]), cfg.reward_config(), cfg.target.max_accuracy_drop
    records = read_records(run_dir)
    epochs = cfg.finalists.epochs
    done = {r["key"].removesuffix(f"@{epochs}ep"): r for r in records if r["stage"] == "finalists" and r["failure"] is None}
    rules = {f"reach {g:g}, k {k}": [r["key"] for r in finalists(records, k, drop, ref.accuracy, rc, reach=g)]
             for g, k in itertools.product(reaches, ks)}
    figures = {}  # search key -> the finalist's record (val accuracy, reward) and its test accuracy

    def distilled(r: dict) -> tuple[dict, torch.nn.Module, float]:
        start = time.perf_counter()
        ev, student = evaluate(space, StudentSpec.from_dict(r["spec"]), ctx, None, epochs)
        rec = {**r, "stage": "finalists", "key": f"{r['key']}@{epochs}ep", "accuracy": ev.accuracy,
               "reward": reward(ev, ref, rc), "failure": ev.failure}
        return rec, student, time.perf_counter() - start

    for key in dict.fromkeys(itertools.chain(*rules.values())):
        if key in done:
            rec = done[key]
            model = build_model(space.arch(StudentSpec.from_dict(rec["spec"])))
            model.load_state_dict(load_weights(weights_of(run_dir, rec["key"])), strict=True)
            seconds = None
        else:
            rec, model, seconds = distilled(next(r for r in records if r["key"] == key))
        figures[key] = {**rec, "test_accuracy": accuracy(model.eval(), ds.x_test, ds.y_test), "seconds": seconds,
                        "searched": key in done}
        print(f"  {key}: {rec['params']} params, val {rec['accuracy']:.4f}, test {figures[key]['test_accuracy']:.4f}"
              f"{'' if key in done else f' (distilled here, {seconds:.0f} s)'}", flush=True)
    check = None
    if done:  # the first finalist the search distilled, again here: the same figures?
        key, rec = next(iter(done.items()))
        again, _, _ = distilled(next(r for r in records if r["key"] == key))
        check = {"key": key, "search_val": rec["accuracy"], "here_val": again["accuracy"]}
    teacher = json.loads((run_dir / "summary.json").read_text())["teacher"]
    picks = {}
    for name, keys in rules.items():
        pool = [figures[k] for k in keys]
        chosen, why = choose(pool, cfg.target, rc, ref.accuracy, early_stop=False, where=str(run_dir), margin=0.0)
        picks[name] = {"finalists": len(keys), "key": chosen["key"], "params": chosen["params"],
                       "times_smaller": round(ref.params / chosen["params"], 2), "val": chosen["accuracy"],
                       "test": chosen["test_accuracy"], "why": why,
                       "test_drop_points": round((teacher["test_accuracy"] - chosen["test_accuracy"]) * 100, 2),
                       "met_on_test": within_drop(teacher["test_accuracy"], chosen["test_accuracy"], drop)}
    return {"run": run_dir.name, "teacher_params": ref.params, "teacher_val": ref.accuracy,
            "teacher_test": teacher["test_accuracy"], "drop": drop, "check": check,
            "figures": {k: {f: v[f] for f in ("params", "accuracy", "test_accuracy", "reward", "searched", "seconds")}
                        for k, v in figures.items()}, "picks": picks}


def summarise(runs: list[dict]) -> dict:
    """Per rule: picks that meet the target on test, their mean compression, the mean test drop,
    and the finalists distilled (their cost)."""
    out = {}
    for name in runs[0]["picks"]:
        picks = [r["picks"][name] for r in runs]
        out[name] = {"runs": len(picks), "met_on_test": sum(p["met_on_test"] for p in picks),
                     "mean_times_smaller": round(statistics.fmean(p["times_smaller"] for p in picks), 2),
                     # a pick that misses the target on test counts as 1x: what a user who needs it gets
                     "mean_times_smaller_met": round(statistics.fmean(p["times_smaller"] if p["met_on_test"] else 1.0
                                                                      for p in picks), 2),
                     "mean_test_drop": round(statistics.fmean(p["test_drop_points"] for p in picks), 2),
                     "finalists": sum(p["finalists"] for p in picks)}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path)
    p.add_argument("--reach", type=float, nargs="+", default=[2.0, 3.0, 4.0])
    p.add_argument("--k", type=int, nargs="+", default=[3, 5])
    p.add_argument("--name", default="finalist_reach")
    p.add_argument("--from", dest="source", type=Path, help="summarise a results JSON again; train nothing")
    args = p.parse_args()
    torch.set_num_threads(1)  # as a Tune worker with one CPU distils
    runs = json.loads(args.source.read_text())["runs"] if args.source else []
    path = RESULTS / f"{args.name}.json"
    for d in args.runs:
        print(d, flush=True)
        runs.append(analyse(d, args.reach, args.k))
        RESULTS.mkdir(exist_ok=True)
        path.write_text(json.dumps({"runs": runs, "summary": summarise(runs)}, indent=1) + "\n")
    print(json.dumps(summarise(runs), indent=1))


if __name__ == "__main__":
    main()
