"""Agents side by side on the default problem with a target: what student does each one find?

    python benchmarks/search_quality.py [--seeds 0 1 2] [--agents reinforce optuna random uniform]
                                        [--drop 1.0] [--removal 30] [--shrink 40]

Every search uses the same teacher, its split, the same distillation and the same finalist stage;
the student exported for each (the smallest finalist within `--drop` points of the teacher on
validation) is measured on the test split. `uniform` shrinks every layer by one ratio (shrink stage
only; it has one candidate per ratio, so it spends less of the budget). Writes
benchmarks/results/search_quality.json (one row per agent and seed, and the settings).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import ray

from n2n.config import load_config
from n2n.export import export_best
from n2n.runfolder import read_records
from n2n.search import run_search


def smallest_within(records: list[dict], teacher_acc: float, drop: float) -> int | None:
    """Parameters of the smallest candidate within `drop` points of the teacher (validation), if any."""
    return min((r["params"] for r in records if r["failure"] is None
                and (teacher_acc - r["accuracy"]) * 100 <= drop), default=None)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--agents", nargs="+", default=["reinforce", "optuna", "random", "uniform"])
    p.add_argument("--drop", type=float, default=1.0)
    p.add_argument("--removal", type=int, default=30)
    p.add_argument("--shrink", type=int, default=40)
    args = p.parse_args()
    ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    root = Path(tempfile.mkdtemp(prefix="n2n-quality-"))
    path = Path(__file__).parent / "results" / "search_quality.json"
    out = {"settings": vars(args), "rows": []}
    for seed in args.seeds:
        for agent in args.agents:
            over = {"seed": seed, "search.agent": agent, "target.max_accuracy_drop": args.drop,
                    "search.removal_budget": args.removal, "search.shrink_budget": args.shrink}
            if agent == "uniform":
                over["search.stages"] = ["shrink"]
            start = time.perf_counter()
            run = root / f"{agent}-{seed}"
            summary = run_search(load_config(None, over), run, log=lambda *_: None)
            wall = time.perf_counter() - start
            m = export_best(run, root / f"{agent}-{seed}-student", log=lambda *_: None)
            teacher = summary["teacher"]
            recs = [r for r in read_records(run) if r["stage"] != "finalists"]
            smallest = smallest_within(recs, teacher["val_accuracy"], args.drop)
            row = {"agent": agent, "seed": seed, "candidates": summary["candidates_evaluated"],
                   "wall_seconds": round(wall, 1), "exported_params": m["params"],
                   "exported_times_smaller": m["times_smaller"], "exported_val": m["val_accuracy"],
                   "exported_test": m["test_accuracy"], "teacher_test": teacher["test_accuracy"],
                   "test_drop_points": round((teacher["test_accuracy"] - m["test_accuracy"]) * 100, 2),
                   "chosen_because": m["chosen_because"],
                   "search_largest_within_drop_val": round(teacher["params"] / smallest, 2) if smallest else None}
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
            path.write_text(json.dumps(out, indent=2) + "\n")  # after every search: partial results survive
    ray.shutdown()


if __name__ == "__main__":
    main()
