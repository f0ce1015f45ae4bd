"""How students start: fresh initialisation (N2N as published), today's inheritance, and inheritance
plus the least-squares re-fit (`distill.reconstruct`), measured before distillation and after 1 and
3 epochs, side by side on the same random specs of the default teacher.

    python benchmarks/inheritance.py [--specs 12] [--samples 512]

Writes benchmarks/results/inheritance.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from n2n.data import load_dataset
from n2n.models import load_model
from n2n.teachers import TeacherRecipe, cached_teacher
from n2n.train import DistillConfig, accuracy, distill, predict
from search_spaces import SequentialSpace, StudentSpec


def random_spec(space, rng) -> StudentSpec:
    removed = [i for i, u in enumerate(space.units) if u.removable and rng.random() < 0.4]
    return StudentSpec(removed, [rng.choice(space.ratios) if u.shrinkable else 1.0 for u in space.units])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--specs", type=int, default=12)
    p.add_argument("--samples", type=int, default=512)
    args = p.parse_args()
    torch.set_num_threads(1)
    teacher, _, _ = load_model(cached_teacher(TeacherRecipe()))
    ds = load_dataset("mnist1d")
    space = SequentialSpace(teacher, ds.input_shape)
    t_logits = predict(teacher, ds.x_train)
    rng, specs = random.Random(0), []
    while len(specs) < args.specs:
        spec = random_spec(space, rng)
        if space.validate(spec) is None and spec.removed:
            specs.append(spec)
    cfg = DistillConfig()  # the default search's: 3 epochs, Adam 3e-3, L2 on logits
    methods = {
        "fresh": lambda s: space.build(s, inherit=False, seed=0),
        "inherit": lambda s: space.build(s),
        "inherit+lstsq": lambda s: space.reconstruct(space.build(s), s, ds.x_train[: args.samples]),
    }
    rows = []
    for spec in specs:
        row = {"spec": spec.to_dict(), "params": space.params(spec), "summary": space.describe(spec)}
        for name, make in methods.items():
            start = time.perf_counter()
            student = make(spec)
            setup = time.perf_counter() - start
            accs = [accuracy(student, ds.x_val, ds.y_val)]
            for _ in range(3):  # one epoch at a time, so 1 and 3 come from the same run
                res = distill(student, ds.x_train, ds.y_train, t_logits, ds.x_val, ds.y_val, replace(cfg, epochs=1))
                accs.append(res.val_accuracy)
            row[name] = {"acc_0": accs[0], "acc_1": accs[1], "acc_3": accs[3], "setup_seconds": round(setup, 3)}
        rows.append(row)
        print(row["summary"][:50], {m: [round(row[m][k], 3) for k in ("acc_0", "acc_1", "acc_3")] for m in methods},
              flush=True)
    summary = {m: {k: round(statistics.mean(r[m][k] for r in rows), 4) for k in ("acc_0", "acc_1", "acc_3", "setup_seconds")}
               for m in methods}
    out = {"teacher": "vgg1d on MNIST-1D (default)", "teacher_val_accuracy": accuracy(teacher, ds.x_val, ds.y_val),
           "specs": len(rows), "lstsq_samples": args.samples, "mean": summary, "rows": rows,
           "note": "distilled one epoch per call (Adam restarts each epoch), the same for every method; "
                   "constant learning rate as in the default search"}
    path = Path(__file__).parent / "results" / "inheritance.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
