"""How steady n2n's latency measurement is, and how well params and FLOPs predict latency.

    python benchmarks/latency.py [--specs 20] [--measurements 5]

On the default teacher (vgg1d on MNIST-1D) and seeded random students of it (removals and shrinks),
measures each student `--measurements` times exactly as a trial does (n2n.deploy.latency_ms with the
default `latency` settings: batch 1, one thread, 5 warm-up and 30 timed passes, interleaved with the
teacher). Reports, side by side in one run:
- spread_ms: max/min of one student's repeated milliseconds (raw figures; run it on an idle machine);
- spread_ratio: max/min of its student/teacher ratio (what the latency reward uses);
- Spearman rank correlation of median latency with params and with FLOPs across the students.
Writes benchmarks/results/latency.json.
"""

import argparse
import json
import os
import platform
import random
import statistics
from pathlib import Path

import torch

from n2n.config import LatencyConfig
from n2n.data import load_dataset
from n2n.deploy import latency_ms
from n2n.models import load_model
from n2n.teachers import TeacherRecipe, cached_teacher
from search_spaces import SequentialSpace, StudentSpec


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--specs", type=int, default=20)
    p.add_argument("--measurements", type=int, default=5)
    args = p.parse_args()
    load_before = os.getloadavg()
    teacher, _, _ = load_model(cached_teacher(TeacherRecipe()))
    ds = load_dataset("mnist1d")
    space = SequentialSpace(teacher.eval(), ds.input_shape)
    lat = LatencyConfig()
    x = ds.x_val[: lat.batch_size]  # (batch, 1, 40)
    rng, rows = random.Random(0), []
    while len(rows) < args.specs:
        removed = [i for i, u in enumerate(space.units) if u.removable and rng.random() < 0.4]
        spec = StudentSpec(removed, [rng.choice(space.ratios) if u.shrinkable else 1.0 for u in space.units])
        if space.validate(spec) is not None:
            continue
        student = space.build(spec).eval()
        runs = [latency_ms([student, teacher], x, threads=lat.threads, warmup=lat.warmup, repeats=lat.repeats)
                for _ in range(args.measurements)]
        ms, ratios = [s for s, _ in runs], [s / t for s, t in runs]
        rows.append({"summary": space.describe(spec), "params": space.params(spec), "flops": space.flops(spec),
                     "median_ms": round(statistics.median(ms), 4), "spread_ms": round(max(ms) / min(ms), 3),
                     "spread_ratio": round(max(ratios) / min(ratios), 3)})
        print(json.dumps(rows[-1]), flush=True)
    med = [r["median_ms"] for r in rows]
    out = {
        "settings": {**vars(args), "latency": vars(lat), "teacher": "vgg1d on MNIST-1D (default)",
                     "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
                     "load_average_before": [round(v, 2) for v in load_before]},
        "worst_spread_ms": max(r["spread_ms"] for r in rows),
        "worst_spread_ratio": max(r["spread_ratio"] for r in rows),
        "spearman_latency_params": round(spearman(med, [r["params"] for r in rows]), 3),
        "spearman_latency_flops": round(spearman(med, [r["flops"] for r in rows]), 3),
        "rows": rows,
    }
    path = Path(__file__).parent / "results" / "latency.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print({k: v for k, v in out.items() if k != "rows"})


if __name__ == "__main__":
    main()
