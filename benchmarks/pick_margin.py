"""How often the exported student misses the accuracy target on unseen data, and what `n2n export
--margin` buys: replayed on every search the search_quality benchmarks recorded.

    python benchmarks/pick_margin.py [--margins 0 0.25 0.5 1.0]

The export picks the smallest finalist within the target on validation, and of several finalists
the one whose validation figure its noise flattered most tends to be that one (the winner's curse).
Each results row holds every finalist's validation and test accuracy (`finalists_test`), so the pick
can be replayed with any margin, by n2n.pick.choose itself, without training anything.
Per margin: mean compression of the picks, how many are past the target on test, and the mean with
every miss counted as 1x (nothing delivered), each outcome once (rows with the same finalists of the
same teacher: a row copied into a later file, or a rerun that found the same finalists); the same per results file and agent variant
(`by_file_and_agent`: one code version's searches, compare its margins with each other). Writes
benchmarks/results/pick_margin.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from envs import RewardConfig, within_drop
from n2n.config import TargetConfig
from n2n.pick import choose

RESULTS = Path(__file__).parent / "results"
# The teachers of rows recorded before rows carried `teacher_val` and `teacher_params`, by their test
# accuracy (from their metrics.json): the MNIST-1D default teacher and the digits teacher trained on
# 2 threads. Rows of the digits teacher trained on 1 thread (test 0.99631) carry neither and are skipped.
KNOWN = {0.9906666874885559: (0.9919999837875366, 845514), 0.9889298677444458: (0.9962825179100037, 2394186)}


def replay(finalists: list[dict], teacher_val: float, drop: float, margin: float) -> dict:
    """The finalist `n2n export --margin` picks, by n2n.pick.choose itself. The rows keep no rewards:
    each finalist's validation accuracy stands in for it, which orders them as the target reward
    does where it matters (outside the target, the smallest miss ranks first)."""
    recs = [{"key": str(i), "params": f["params"], "accuracy": f["val"], "reward": f["val"], "failure": None,
             "stage": "finalists", "finalist": f} for i, f in enumerate(finalists)]
    chosen, _ = choose(recs, TargetConfig(max_accuracy_drop=drop), RewardConfig(kind="target", target_drop=drop),
                       teacher_val, early_stop=False, where="replay", margin=margin)
    return chosen["finalist"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0])
    args = p.parse_args()
    searches = []
    for path in sorted(RESULTS.glob("search_quality*.json")):
        data = json.loads(path.read_text())
        if "rows" not in data:  # another layout (search_quality_digits_tpe_order.json: arms of one agent)
            continue
        drop = data["settings"]["drop"]
        for row in data["rows"]:
            teacher = (row["teacher_val"], row["teacher_params"]) if "teacher_val" in row else KNOWN.get(row["teacher_test"])
            if row.get("finalists_test") and teacher:
                searches.append((path.name, row, drop, *teacher))
    # rows with the same finalists of the same teacher (a row copied into a later file beside new ones,
    # or a rerun that found the same finalists) count once in the totals; each file's own figures keep its rows
    first = {}
    for i, (_, row, *_) in enumerate(searches):
        first.setdefault((json.dumps(row["finalists_test"], sort_keys=True), row["teacher_test"]), i)
    unique = set(first.values())
    out = {"searches": len(unique), "rows": len(searches), "files": sorted({s[0] for s in searches}), "margins": []}
    def figures(picks: list[tuple[float, bool]]) -> dict:  # (times smaller, missed on test) per search
        return {"searches": len(picks), "mean_times_smaller": round(statistics.fmean(x for x, _ in picks), 1),
                "past_target_on_test": sum(m for _, m in picks),
                "mean_times_smaller_misses_as_1x": round(statistics.fmean(1.0 if m else x for x, m in picks), 1)}

    for margin in args.margins:
        picks = []
        for name, row, drop, teacher_val, teacher_params in searches:
            f = replay(row["finalists_test"], teacher_val, drop, margin)
            picks.append((f"{name}:{row['agent']}", teacher_params / f["params"],
                          not within_drop(row["teacher_test"], f["test"], drop)))
        groups = dict.fromkeys(g for g, _, _ in picks)
        out["margins"].append({"margin": margin, **figures([(x, m) for i, (_, x, m) in enumerate(picks) if i in unique]),
                               "by_file_and_agent": {g: figures([(x, m) for h, x, m in picks if h == g]) for g in groups}})
        print(json.dumps({k: v for k, v in out["margins"][-1].items() if k != "by_file_and_agent"}))
    (RESULTS / "pick_margin.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
