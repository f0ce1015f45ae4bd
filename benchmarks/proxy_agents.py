"""Agents side by side on the proxy problem: REINFORCE vs random vs Optuna TPE, same budget and seeds.

Writes benchmarks/results/proxy_agents.json. Proxy evaluator (envs.proxy): deterministic, so the figures
measure the search, not distillation noise.

    python benchmarks/proxy_agents.py [--budget 300] [--seeds 6]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from agents import make_agent, run
from envs import CompressionEnv, ProxyEvaluator, Reference
from n2n.models import vgg_layers
from search_spaces import SequentialSpace, layers_to_module


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--budget", type=int, default=300)
    p.add_argument("--seeds", type=int, default=6)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    space = SequentialSpace(layers_to_module(vgg_layers((1, 40), 10, "vgg1d", 0.25, 32)), (1, 40))
    proxy = ProxyEvaluator(space)
    ref = Reference(space.teacher_params(), space.flops(space.identity()), proxy.ref_accuracy)
    out = {"space": repr(space), "budget": args.budget, "seeds": args.seeds, "stages": {}}
    for stage in ("removal", "shrink"):
        rows = {}
        for kind in ("reinforce", "random", "optuna"):
            first, last, best, secs = [], [], [], []
            for seed in range(args.seeds):
                env = CompressionEnv(space, evaluator=None, stage=stage, reference=ref)
                start = time.perf_counter()
                fresh = {"policy": None} if kind == "reinforce" else {}  # learning from scratch
                r = [x[1] for x in run(make_agent(kind, env, seed=seed, **fresh), proxy, args.budget)]
                secs.append(time.perf_counter() - start)
                first.append(np.mean(r[:30]))
                last.append(np.mean(r[-30:]))
                best.append(max(r))
            rows[kind] = {"mean_first_30": float(np.mean(first)), "mean_last_30": float(np.mean(last)),
                          "min_gain": float(np.min(np.array(last) - np.array(first))),
                          "best_mean": float(np.mean(best)), "seconds_per_run": float(np.mean(secs))}
            print(stage, kind, {k: round(v, 4) for k, v in rows[kind].items()}, flush=True)
        out["stages"][stage] = rows
    path = Path(__file__).parent / "results" / "proxy_agents.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
