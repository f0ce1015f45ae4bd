"""A cheap, deterministic stand-in for distillation, for tests and for developing agents on CPU.

Each unit has a hidden importance: units in the deeper half of the teacher are *redundant*
(importance 0.005-0.02), the others *essential* (0.4-0.8); `seed` draws the exact values. The student's accuracy is

    acc = ref_acc * exp(-(sum of removed importances + sum of shrink damages))
    shrink damage of a kept unit = 0.3 * importance' * (1 - ratio)^2 * share_of_params * n_units

so the best region is known: remove the deeper half's removable units, keep the early ones, and
shrink the big layers moderately. Parameter and FLOP counts are the search space's exact predictions.
"""

from __future__ import annotations

import math

import numpy as np

from search_spaces import SearchSpace, StudentSpec

from .reward import Evaluation


class ProxyEvaluator:
    def __init__(self, space: SearchSpace, ref_accuracy: float = 0.95, seed: int = 0):
        self.space, self.ref_accuracy = space, ref_accuracy
        rng = np.random.default_rng(seed)
        n = space.n_units
        # The deeper half is redundant (N2N found late layers the most removable); `seed` only
        # jitters the importances, so the best region stays where the docstring says.
        position = np.arange(n) / max(n - 1, 1)
        redundant = position >= 0.5
        self.importance = np.where(redundant, rng.uniform(0.005, 0.02, n), rng.uniform(0.4, 0.8, n))
        self.importance[[not u.removable for u in space.units]] = 0.6
        total = sum(u.params for u in space.units) or 1
        self.share = np.array([u.params / total for u in space.units])
        self.calls = 0

    def best_removal(self) -> tuple[int, ...]:
        """The removal set the proxy rewards most: every redundant removable unit."""
        return tuple(i for i, u in enumerate(self.space.units) if u.removable and self.importance[i] < 0.1)

    def accuracy(self, spec: StudentSpec) -> float:
        n = self.space.n_units
        damage = sum(self.importance[i] for i in spec.removed)
        for i, r in enumerate(spec.ratios):
            if i not in spec.removed:
                damage += 0.3 * self.importance[i] * (1.0 - r) ** 2 * self.share[i] * n
        return float(self.ref_accuracy * math.exp(-damage))

    def __call__(self, spec: StudentSpec) -> Evaluation:
        self.calls += 1
        return Evaluation(self.accuracy(spec), self.space.params(spec), self.space.flops(spec))
