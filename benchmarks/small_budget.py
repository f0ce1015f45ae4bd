"""Searches at a tiny budget, where a removal stage may hold no student near the target: what does the
export ship? Run once per code version to compare rules side by side (the figures, not the wall time).

    PYTHONPATH=CODE python benchmarks/small_budget.py CONFIG --seeds 0 1 2 --root DIR --out RESULT.json

CONFIG is a search config (its teacher, budgets, distillation); each seed runs `n2n search` then
`n2n export` (the default pick) and records the exported student's params, x smaller, validation and
test drop below the teacher (points), whether the 1-point target holds on test, and the log lines
that say where the shrink stage started.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

from n2n.config import load_config
from search_quality import export_or_nearest
from n2n.search import run_search


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__import__("n2n").__file__).parent).stdout.strip()
    rows = []
    for seed in args.seeds:
        said: list[str] = []
        run = args.root / f"seed{seed}"
        run_search(load_config(args.config, {"seed": seed}), run, log=said.append)
        m = export_or_nearest(run, args.root / f"seed{seed}-student", log=said.append)
        t = m["target"]
        rows.append({"seed": seed, "params": m["params"], "times_smaller": m["times_smaller"],
                     "val_drop": t["val_drop_points"], "test_drop": t["test_drop_points"], "met_on_test": t["met_on_test"],
                     "shrink_start": [s for s in said if s.startswith("stage shrink")]})
        print(json.dumps(rows[-1]), flush=True)
    out = {"code": code, "config": Path(args.config).read_text(), "rows": rows,
           "mean": {k: statistics.mean(r[k] for r in rows) for k in ("times_smaller", "val_drop", "test_drop")},
           "met_on_test": sum(r["met_on_test"] for r in rows)}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["mean"]), out["met_on_test"], "of", len(rows), "within the target on test")


if __name__ == "__main__":
    main()
