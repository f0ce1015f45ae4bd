"""How steady n2n's latency measurement is, and how well params and FLOPs predict latency.

    python benchmarks/latency.py [--specs 20] [--measurements 5] [--no-neighbour]

On the default teacher (vgg1d on MNIST-1D) and seeded random students of it (removals and shrinks),
measures each student `--measurements` times exactly as a trial does (n2n.deploy.time_passes with the
default `latency` settings: batch 1, one thread, 5 warm-up and 30 timed passes, interleaved with the
teacher), first as the machine is, then with a neighbour: another process training a network on one
thread, as a trial beside it would. Reports per condition, side by side from the same passes:
- spread of one student's repeated median milliseconds, and of its fastest pass (max/min);
- spread of its student/teacher ratio from the medians (what the latency reward used before
  2026-12-06) and from the fastest passes (n2n.deploy.fastest_ratio, what it uses now);
- Spearman rank correlation of median latency with params and with FLOPs across the students.
Writes benchmarks/results/latency.json.
"""

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from n2n.config import LatencyConfig
from n2n.data import load_dataset
from n2n.deploy import fastest_ratio, time_passes
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


NEIGHBOUR = """
import torch
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Conv1d(1, 64, 5), torch.nn.ReLU(), torch.nn.Conv1d(64, 64, 5), torch.nn.Flatten(),
                          torch.nn.Linear(64 * 32, 10))
opt = torch.optim.SGD(net.parameters(), lr=0.01)
x, y = torch.randn(128, 1, 40), torch.randint(0, 10, (128,))
while True:  # a trial's distillation, as far as the CPU and memory see it
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
"""


def spread(v: list[float]) -> float:
    return round(max(v) / min(v), 3)


def measure(students, teacher, x, lat, n: int) -> list[dict]:
    rows = []
    for summary, student in students:
        runs = [time_passes([student, teacher], x, threads=lat.threads, warmup=lat.warmup, repeats=lat.repeats)
                for _ in range(n)]
        medians = [statistics.median(s) for s, _ in runs]
        rows.append({"summary": summary, "median_ms": round(statistics.median(medians), 4),
                     "spread_median_ms": spread(medians), "spread_fastest_ms": spread([min(s) for s, _ in runs]),
                     "spread_ratio_of_medians": spread([statistics.median(s) / statistics.median(t) for s, t in runs]),
                     "spread_ratio_of_fastest": spread([fastest_ratio(s, t) for s, t in runs])})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def condition(rows: list[dict]) -> dict:
    keys = ("spread_median_ms", "spread_fastest_ms", "spread_ratio_of_medians", "spread_ratio_of_fastest")
    return {**{f"worst_{k}": max(r[k] for r in rows) for k in keys},
            **{f"mean_{k}": round(statistics.fmean(r[k] for r in rows), 3) for k in keys}, "rows": rows}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--specs", type=int, default=20)
    p.add_argument("--measurements", type=int, default=5)
    p.add_argument("--no-neighbour", action="store_true", help="measure only as the machine is")
    args = p.parse_args()
    teacher, _, _ = load_model(cached_teacher(TeacherRecipe()))
    teacher.eval()
    ds = load_dataset("mnist1d")
    space = SequentialSpace(teacher, ds.input_shape)
    lat = LatencyConfig()
    x = ds.x_val[: lat.batch_size]  # (batch, 1, 40)
    rng, students, sizes = random.Random(0), [], []
    while len(students) < args.specs:
        removed = [i for i, u in enumerate(space.units) if u.removable and rng.random() < 0.4]
        spec = StudentSpec(removed, [rng.choice(space.ratios) if u.shrinkable else 1.0 for u in space.units])
        if space.validate(spec) is not None:
            continue
        students.append((space.describe(spec), space.build(spec).eval()))
        sizes.append((space.params(spec), space.flops(spec)))
    out = {"settings": {**vars(args), "latency": vars(lat), "teacher": "vgg1d on MNIST-1D (default)",
                        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"}}
    for name in ["as_is"] + ([] if args.no_neighbour else ["with_neighbour"]):
        neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR]) if name == "with_neighbour" else None
        try:
            load = os.getloadavg()
            out[name] = {"load_average_before": [round(v, 2) for v in load], **condition(measure(students, teacher, x, lat, args.measurements))}
        finally:
            if neighbour:
                neighbour.kill()
        print(name, {k: v for k, v in out[name].items() if k != "rows"}, flush=True)
    med = [r["median_ms"] for r in out["as_is"]["rows"]]
    out["spearman_latency_params"] = round(spearman(med, [p for p, _ in sizes]), 3)
    out["spearman_latency_flops"] = round(spearman(med, [f for _, f in sizes]), 3)
    path = Path(__file__).parent / "results" / "latency.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print({k: v for k, v in out.items() if k not in ("as_is", "with_neighbour")})


if __name__ == "__main__":
    main()
