"""The other question users ask: the most accurate student of at most N parameters.

    python benchmarks/size_limit.py [--max-params 20000] [--seeds 0 1 2] [--agents reinforce-refine optuna uniform]
                                    [--dataset mnist1d] [--root DIR] [--name STEM]

Every search runs with `target: {max_accuracy_drop: null, max_params: N}` (inside the limit the
reward is 0.5 + 0.5 accuracy, and export ships the most accurate finalist within it) on the same
teacher, split, distillation and finalists; the agents are search_quality.py's variants (`uniform`:
every layer at one ratio, its one candidate per ratio). Per search it records the exported student
(params, validation and test accuracy, whether it is within the limit), the most accurate finalist
within the limit on test, and wall time. Writes benchmarks/results/size_limit.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import ray

from n2n.config import load_config
from n2n.models import build_model, load_weights
from n2n.runfolder import read_records
from n2n.search import OpenRun, run_search
from n2n.storage import weights_of
from n2n.train import accuracy
from search_spaces import StudentSpec

from search_quality import VARIANTS, export_or_nearest

# without the removal stage: removal cannot reach a tight limit alone, and at 3 epochs it prefers a
# student with layers gone and a few points lost to an accurate one with more to shrink
VARIANTS = {**VARIANTS,
            "reinforce-shrink-refine": {"search.agent_options": {"policy": "pretrained"}, "search.stages": ["shrink", "refine"],
                                        "search.shrink_budget": 50, "search.refine_budget": 20},
            "optuna-shrink": {"search.agent": "optuna", "search.stages": ["shrink"], "search.shrink_budget": 70}}


def _revision() -> str | None:
    """The commit measured: rows of different designs must not be averaged unawares (helper-35)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


REVISION = _revision()


def finalists_on_test(run_dir: Path, limit: int) -> list[dict]:
    """Every finalist within the limit with its test accuracy, from its saved weights."""
    run = OpenRun.open(run_dir)
    out = []
    for r in read_records(run_dir):
        if r["stage"] != "finalists" or r["failure"] is not None or r["params"] > limit:
            continue
        model = build_model(run.space.arch(StudentSpec.from_dict(r["spec"])))
        model.load_state_dict(load_weights(weights_of(run_dir, r["key"])), strict=True)
        out.append({"params": r["params"], "val": r["accuracy"],
                    "test": accuracy(model.eval(), run.ds.x_test, run.ds.y_test)})
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--max-params", type=int, default=20000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--agents", nargs="+", default=["reinforce-refine", "optuna", "uniform"], choices=list(VARIANTS))
    p.add_argument("--dataset", default="mnist1d", choices=["mnist1d", "digits"])
    p.add_argument("--root", help="where the run folders go (default: a new temp folder)")
    p.add_argument("--name", default="size_limit")
    args = p.parse_args()
    path = Path(__file__).parent / "results" / f"{args.name}.json"
    root = Path(args.root or tempfile.mkdtemp(prefix="n2n-limit-"))
    out = {"settings": {"max_params": args.max_params, "dataset": args.dataset}, "rows": []}
    if path.exists():  # other agents and seeds measured under the same settings stay; a rerun replaces its row
        old = json.loads(path.read_text())
        if old["settings"] != out["settings"]:
            raise SystemExit(f"{path} holds results under other settings ({old['settings']}); move it away first")
        out["rows"] = old["rows"]
        others = {r.get("revision") for r in old["rows"]} - {REVISION}
        if others:
            print(f"note: {path} holds rows measured at {sorted(map(str, others))}, this is {REVISION}", flush=True)
    ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    for seed in args.seeds:
        for agent in args.agents:
            run, student = root / f"{agent}-{seed}", root / f"{agent}-{seed}-student"
            over = {"seed": seed, "target.max_accuracy_drop": None, "target.max_params": args.max_params,
                    "search.stages": ["removal", "shrink"], "search.removal_budget": 30, "search.shrink_budget": 40,
                    "teacher.recipe.dataset": args.dataset, **VARIANTS[agent]}
            start = time.perf_counter()
            run_search(load_config(None, over), run, log=lambda *_: None)
            wall = round(time.perf_counter() - start, 1)
            m = export_or_nearest(run, student, log=lambda *_: None)
            finals = finalists_on_test(run, args.max_params)
            row = {"agent": agent, "seed": seed, "exported_params": m["params"], "exported_val": m["val_accuracy"],
                   "exported_test": m["test_accuracy"], "teacher_test": m["teacher"]["test_accuracy"],
                   "within_limit": m["target"]["limits_met"], "chosen_because": m["chosen_because"],
                   "best_finalist_test": max((f["test"] for f in finals), default=None), "finalists": finals,
                   "wall_seconds": wall, "revision": REVISION}
            out["rows"] = [r for r in out["rows"] if (r["agent"], r["seed"]) != (agent, seed)] + [row]
            out["means"] = {a: {k: round(statistics.fmean(r[k] for r in out["rows"] if r["agent"] == a), 4)
                                for k in ("exported_test", "exported_val", "exported_params", "wall_seconds")}
                            for a in dict.fromkeys(r["agent"] for r in out["rows"])}
            print(json.dumps({k: v for k, v in row.items() if k != "finalists"}), flush=True)
            path.write_text(json.dumps(out, indent=2) + "\n")  # after every search: partial results survive
    ray.shutdown()


if __name__ == "__main__":
    main()
