"""GPU check, one command, a few minutes: n2n on a CUDA machine does what it does on CPU, faster.

    python benchmarks/gpu_check.py [--candidates 12] [--epochs 3]

Skips (exit 0, one line saying why) where torch sees no CUDA device. Otherwise, on a half-width
vgg1d teacher on MNIST-1D (trained on the GPU and cached on first use):
1. the teacher's logits on the GPU match its CPU logits (the logits every trial distils from);
2. the same seeded candidates (random agent, removal stage) searched twice: one 1-GPU trial at a
   time, then four 0.25-GPU trials packed on one GPU; every trial must report device cuda and its
   GPU share, and the packed run must overlap trials; the speedup (candidates per minute, packed
   over one at a time) is measured side by side;
3. the best student exported with a 1-epoch fine-tune on the GPU, then loaded on the CPU with
   n2n.load_student: its CPU accuracy must equal the export's figures.
Writes benchmarks/results/gpu_check.json; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch


def overlap(recs: list[dict]) -> int:
    """The most trials that ran at the same moment (from their start and end times)."""
    events = sorted([(r["started"], 1) for r in recs] + [(r["ended"], -1) for r in recs])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--candidates", type=int, default=12)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print(f"gpu_check: skipped: torch {torch.__version__} sees no CUDA device "
              f"(CUDA build: {torch.version.cuda or 'none'}); run it on a machine with a GPU and a CUDA torch")
        return 0
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    import n2n
    from n2n.config import load_config
    from n2n.data import load_dataset
    from n2n.models import load_model
    from n2n.runfolder import read_records
    from n2n.search import run_search
    from n2n.teachers import TeacherRecipe, cached_teacher
    from n2n.train import accuracy, predict
    from search_quality import export_or_nearest

    out, failures = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}, []

    def check(ok: bool, what: str):
        print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
        if not ok:
            failures.append(what)

    recipe = {"dataset": "mnist1d", "arch": "vgg", "preset": "vgg1d", "width_mult": 0.5, "epochs": 10}
    teacher, _, _ = load_model(cached_teacher(TeacherRecipe(**recipe)))
    ds = load_dataset("mnist1d")
    on_cpu = predict(teacher.cpu(), ds.x_val)
    on_gpu = predict(teacher.cuda(), ds.x_val)
    teacher.cpu()
    out["teacher_logits_max_abs_diff"] = float((on_cpu - on_gpu).abs().max())
    check(out["teacher_logits_max_abs_diff"] < 1e-3 * max(1.0, float(on_cpu.abs().max())),
          f"teacher logits on the GPU match the CPU's (max diff {out['teacher_logits_max_abs_diff']:.2e})")

    ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    root = Path(tempfile.mkdtemp(prefix="n2n-gpu-check-"))
    rates = {}
    for name, gpus, conc in (("one_at_a_time", 1.0, 1), ("packed_4", 0.25, 4)):
        cfg = load_config(None, {"teacher.recipe": recipe, "search.agent": "random", "search.stages": ["removal"],
                                 "search.removal_budget": args.candidates, "search.concurrency": conc,
                                 "resources.gpus_per_trial": gpus, "distill.epochs": args.epochs, "finalists.k": 0})
        start = time.perf_counter()
        run_search(cfg, root / name, log=lambda *_: None)
        wall = time.perf_counter() - start
        recs = read_records(root / name)
        rates[name] = len(recs) / wall * 60
        out[name] = {"wall_seconds": round(wall, 1), "candidates_per_minute": round(rates[name], 2),
                     "most_trials_at_once": overlap(recs), "devices": sorted({r["device"] for r in recs}),
                     "gpu_shares": sorted({r["gpus"] for r in recs})}
        check(out[name]["devices"] == ["cuda"] and out[name]["gpu_shares"] == [gpus],
              f"{name}: every trial on cuda with {gpus} GPU ({out[name]['devices']}, {out[name]['gpu_shares']})")
        check(out[name]["most_trials_at_once"] <= conc, f"{name}: at most {conc} trials at once")
    check(out["packed_4"]["most_trials_at_once"] >= 2, "packed_4: trials shared the GPU")
    out["speedup_packed_vs_one"] = round(rates["packed_4"] / rates["one_at_a_time"], 2)
    print(f"     speedup of four 0.25-GPU trials over one at a time: {out['speedup_packed_vs_one']}x")

    metrics = export_or_nearest(root / "packed_4", root / "student", finetune_epochs=1, log=lambda *_: None)
    student = n2n.load_student(root / "student")  # on the CPU, as a deployment would
    x, y = ds.x_val, ds.y_val
    raw = (x - ds.preprocess["shift"]) / ds.preprocess["scale"] if ds.preprocess else x
    cpu_acc = accuracy(student, raw, y)
    out["export"] = {"val_accuracy": metrics["val_accuracy"], "loaded_on_cpu_val_accuracy": cpu_acc}
    check(abs(cpu_acc - metrics["val_accuracy"]) <= 1 / len(y),
          f"the GPU-fine-tuned export loads on the CPU with its stated accuracy ({cpu_acc:.4f} vs {metrics['val_accuracy']:.4f})")
    ray.shutdown()

    out["failures"] = failures
    path = Path(__file__).parent / "results" / "gpu_check.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"gpu_check: {'all checks passed' if not failures else f'{len(failures)} failed'}; figures in {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
