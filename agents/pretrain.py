"""N2N's policies fit offline to earlier searches, to start a search on a new teacher.

N2N claimed its policies transfer between teachers because they read only per-unit features. Here a
policy is fit to the candidates finished searches evaluated (their run folders' records): advantage-
weighted regression (Peng et al. 2019), i.e. the likelihood of every evaluated episode weighted by
exp(advantage / beta), the advantage being the reward normalised within its search and stage. Good
episodes are imitated, bad ones nearly ignored, and an entropy bonus keeps the policy exploring: it
is a starting point for REINFORCE on the new teacher, not a fixed answer.

`n2n policy fit RUN [RUN ...] --out DIR` reads the run folders and writes DIR/removal and DIR/shrink;
the shipped policy (agents/pretrained) was written that way, from 23 searches of the default teacher.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from envs import STAGES, CompressionEnv
from envs.compression import KEEP, REMOVE
from search_spaces import SearchSpace, StudentSpec

from .reinforce import RemovalPolicy, ShrinkPolicy, sequence_log_prob

PRETRAINED = Path(__file__).parent / "pretrained"  # the shipped policies: removal/ and shrink/


def episodes(space: SearchSpace, records: list[dict], stage: str) -> list[dict]:
    """The evaluated episodes of one stage of a search (removal, shrink or refine) as the agent of its
    policy (envs.STAGES) would have taken them: per record, the active units' features (T, F),
    actions (T,), masks (T, K) and its reward. Failed and invalid ones are left out (they teach the
    wall, which the new teacher's own masks already enforce)."""
    out = []
    kind = STAGES[stage]
    for r in records:
        if r["stage"] != stage or r["failure"] is not None or r["reward"] <= -1:
            continue
        spec = StudentSpec.from_dict(r["spec"])
        # the shrink stage started from a spec that removed what this one removes, at full width (a
        # refine's spec is one the shrink stage could have proposed, and is read as such)
        base = StudentSpec(spec.removed, tuple(1.0 for _ in spec.ratios)) if kind == "shrink" else None
        env = CompressionEnv(space, evaluator=None, stage=kind, base_spec=base)
        if kind == "removal":
            acts = [REMOVE if u in spec.removed else KEEP for u in env.active]
        elif all(spec.ratios[u] in space.ratios for u in env.active):
            acts = [space.ratios.index(spec.ratios[u]) for u in env.active]
        else:  # ratios this space does not offer (another ratio list): not an episode of this policy
            continue
        out.append({"feats": torch.as_tensor(space.features()[env.active]), "actions": acts,
                    "masks": [env.action_mask(u).tolist() for u in env.active], "reward": float(r["reward"])})
    return out


def weights(groups: list[list[dict]], beta: float = 1.0, cap: float = 20.0) -> list[float]:
    """exp(advantage / beta) per episode, the advantage normalised within its group (one search's
    stage), capped so one lucky episode cannot dominate; groups with one episode weigh it 1."""
    out = []
    for g in groups:
        r = np.array([e["reward"] for e in g])
        r = r / max(1.0, np.abs(r).max())  # the same advantages; rewards near 1e308 no longer overflow to NaN
        adv = (r - r.mean()) / (r.std() + 1e-8) if len(r) > 1 else np.zeros(len(r))
        out += np.minimum(np.exp(adv / beta), cap).tolist()
    return out


def fit(stage: str, groups: list[list[dict]], n_ratios: int, hidden: int = 30, steps: int = 300,
        lr: float = 3e-3, beta: float = 1.0, entropy_coef: float = 0.01, seed: int = 0):
    """A policy for `stage` fit to the episodes of `groups` (lists of episodes, one per stage of a search)."""
    torch.manual_seed(seed)
    policy = RemovalPolicy(hidden) if stage == "removal" else ShrinkPolicy(n_ratios, hidden)
    eps = [e for g in groups for e in g]
    if not eps:
        raise ValueError(f"no {stage} episodes to fit")
    w = torch.tensor(weights(groups, beta))  # (N,)
    w = w / w.sum()
    # episodes over the same units (same features) go through the policy as one batch
    buckets: dict[bytes, list[int]] = {}
    for i, e in enumerate(eps):
        buckets.setdefault(e["feats"].numpy().tobytes(), []).append(i)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    for _ in range(steps):
        loss = 0.0
        for idx in buckets.values():
            feats = eps[idx[0]]["feats"]  # (T, F)
            lp, ent = sequence_log_prob(policy, feats, [eps[i]["actions"] for i in idx], [eps[i]["masks"] for i in idx])
            loss = loss - (w[idx] * lp / len(feats)).sum() - entropy_coef * ent.sum() / len(eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy
