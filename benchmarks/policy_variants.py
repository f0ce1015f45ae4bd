"""Can REINFORCE use a small budget's samples better? Variants side by side on the proxy problem.

Real searches train 30 removal + 40 shrink candidates, so N2N's policy makes 3-4 updates per stage.
This runs whole two-stage searches at that budget (removal, then shrink from the best removal) on
the proxy evaluator (envs.proxy: deterministic, seconds per search) with a target reward, over two
teachers (vgg1d at width 0.25 and 1.0) and `--seeds` seeds each, and reports the largest compression
within the target. Variants:

- `reinforce`: the agent as shipped (batches of 10, one gradient step per batch), from a fresh
  policy like every variant here;
- `reinforce-b5`: batches of 5 (twice the updates, noisier ones);
- `clipped-b10x4` / `clipped-b5x4`: 4 gradient steps per batch, later ones on PPO's clipped ratio to
  the policy that sampled the batch;
- `elite10`: priority-queue training (Abolafia et al. 2018): each update also raises the likelihood
  of the 10 best rollouts so far;
- `optuna` (TPE), `random`, `uniform`: the baselines.

The variants live here, not in agents/, because none beat the shipped agent (results in
benchmarks/results/policy_variants.json).

    python benchmarks/policy_variants.py [--seeds 12] [--drop 5 10]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from agents import ReinforceAgent, ReinforceConfig, make_agent, run
from envs import CompressionEnv, ProxyEvaluator, Reference, RewardConfig
from n2n.models import vgg_layers
from search_spaces import SequentialSpace, layers_to_module


class VariantReinforce(ReinforceAgent):
    """ReinforceAgent with `epochs` clipped gradient steps per batch and `elite` imitation."""

    def __init__(self, env, seed=0, options=None, epochs=1, clip=0.2, elite=0):
        super().__init__(env, seed, options)
        self.epochs, self.clip, self.elite, self.best = epochs, clip, elite, []

    def _learn(self, adv):
        if self.elite:
            ok = [r for r in self.batch if r["reward"] > -1.0]
            self.best = sorted(self.best + ok, key=lambda r: -r["reward"])[: self.elite]
        old = None
        for _ in range(self.epochs):
            logp, _ = self.log_prob(self.batch)  # (B,)
            if old is None:  # the first step is plain REINFORCE
                old = logp.detach()
                gain = adv * logp
            else:
                ratio = torch.exp(logp - old)  # (B,)
                gain = torch.minimum(adv * ratio, adv * ratio.clamp(1 - self.clip, 1 + self.clip))
            loss = -gain.mean()
            if self.best:  # per-unit log-likelihood of the best rollouts so far
                loss = loss - self.log_prob(self.best)[0].mean() / len(self.batch[0]["actions"])
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()


FRESH = {"policy": None}  # every variant learns from scratch: the update is what is compared
VARIANTS = {  # name -> (agent kind, ReinforceConfig options, VariantReinforce options)
    "reinforce": ("reinforce", FRESH, None),
    "reinforce-b5": ("reinforce", {**FRESH, "batch_size": 5}, None),
    "clipped-b10x4": ("reinforce", FRESH, {"epochs": 4}),
    "clipped-b5x4": ("reinforce", {**FRESH, "batch_size": 5}, {"epochs": 4}),
    "elite10": ("reinforce", FRESH, {"elite": 10}),
    "optuna": ("optuna", {}, None),
    "random": ("random", {}, None),
    "uniform": ("uniform", {}, None),
}


def space_for(width: float) -> SequentialSpace:
    torch.manual_seed(0)
    return SequentialSpace(layers_to_module(vgg_layers((1, 40), 10, "vgg1d", width, 32)), (1, 40))


def search(space, variant: str, seed: int, rc: RewardConfig, budgets=(30, 40)) -> float:
    """x smaller than the teacher of the smallest candidate within the target (1.0: none)."""
    kind, opts, extra = VARIANTS[variant]
    proxy = ProxyEvaluator(space, seed=seed)
    ref = Reference(space.teacher_params(), space.flops(space.identity()), proxy.ref_accuracy)
    history, base = [], None
    for stage, budget in zip(("removal", "shrink"), budgets):
        if kind == "uniform" and stage == "removal":
            continue
        env = CompressionEnv(space, evaluator=None, stage=stage, reference=ref, reward_config=rc, base_spec=base)
        if extra is None:
            agent = make_agent(kind, env, seed=seed, **opts)
        else:
            agent = VariantReinforce(env, seed, ReinforceConfig(**opts), **extra)
        h = run(agent, proxy, budget, reward_config=rc)
        history += h
        base = max(h, key=lambda t: t[1])[0]
    floor = proxy.ref_accuracy - rc.target_drop / 100
    ok = [space.params(s) for s, _ in history if proxy.accuracy(s) >= floor]
    return space.teacher_params() / min(ok) if ok else 1.0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=12)
    p.add_argument("--drop", type=float, nargs="+", default=[5.0, 10.0])
    args = p.parse_args()
    torch.set_num_threads(1)
    spaces = {"vgg1d x0.25": space_for(0.25), "vgg1d x1.0": space_for(1.0)}
    out = {"budgets": {"removal": 30, "shrink": 40}, "seeds": args.seeds, "teachers": list(spaces), "results": {}}
    for drop in args.drop:
        rc = RewardConfig(kind="target", target_drop=drop)
        rows = {}
        for name in VARIANTS:
            start = time.perf_counter()
            xs = np.array([search(sp, name, s, rc) for sp in spaces.values() for s in range(args.seeds)])
            rows[name] = {"mean_times_smaller": round(float(xs.mean()), 2), "median": round(float(np.median(xs)), 2),
                          "worst": round(float(xs.min()), 2), "seconds": round(time.perf_counter() - start, 1)}
            print(f"drop {drop:g}: {name:14s}", rows[name], flush=True)
        out["results"][f"drop {drop:g} points"] = rows
    path = Path(__file__).parent / "results" / "policy_variants.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
