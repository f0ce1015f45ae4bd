"""Baselines: uniformly random edits, and the "just make it thinner" uniform shrink."""

from __future__ import annotations

import numpy as np

from .base import Agent, Candidate, NoOptions, random_action, rollout


class RandomAgent(Agent):
    """Every allowed action of every unit drawn uniformly; invalid specs are redrawn, not handed out."""

    name = "random"
    max_redraws = 100
    Options = NoOptions

    def __init__(self, env, seed: int = 0, options: NoOptions | None = None):
        super().__init__(env, seed)
        self.rng = np.random.default_rng(seed)

    def ask(self, n: int) -> list[Candidate]:
        out = []
        for _ in range(n * self.max_redraws):
            if len(out) == n:
                break
            _, spec, _, pending = rollout(self.env, lambda obs, mask: random_action(self.rng, mask))
            if pending:
                cid = self._new_id()
                self.pending[cid] = {"spec": spec.to_dict()}
                out.append(Candidate(cid, spec))
        return out

    def tell(self, cid, reward, evaluation=None):
        self._check_told(cid, reward)

    def state_dict(self):
        return {**super().state_dict(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.rng.bit_generator.state = state["rng"]


class UniformShrinkAgent(Agent):
    """Shrink stage only: every shrinkable unit at the same ratio, one candidate per ratio (< 1).

    In the removal and refine stages it proposes nothing (finished at once)."""

    name = "uniform"

    Options = NoOptions

    def __init__(self, env, seed: int = 0, options: NoOptions | None = None):
        super().__init__(env, seed)
        ratios = sorted((r for r in env.space.ratios if r < 1.0), reverse=True)
        self.queue = ratios if env.stage == "shrink" else []

    @property
    def finished(self) -> bool:
        return not self.queue and not self.pending

    def ask(self, n):
        out = []
        while self.queue and len(out) < n:
            ratio = self.queue.pop(0)
            idx = self.env.space.ratios.index(ratio)
            actions = {u: idx for u in self.env.active}
            spec = self.env.spec_from_actions(actions)
            if self.env.score(spec)[1]["pending"]:
                cid = self._new_id()
                self.pending[cid] = {"spec": spec.to_dict()}
                out.append(Candidate(cid, spec))
        return out

    def tell(self, cid, reward, evaluation=None):
        self._check_told(cid, reward)

    def state_dict(self):
        return {**super().state_dict(), "queue": list(self.queue)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.queue = list(state["queue"])
