"""The same candidates proposed through Optuna's ask/tell.

One categorical parameter per unit of the stage that has a choice: ``u{i}`` in {0 keep, 1 remove}
(removal) or the index of a ratio the unit may take (shrink, refine). TPE is pinned explicitly (Optuna 5 changed its defaults:
multivariate + constant liar, which suits batches of pending candidates). ``objective="multi"`` asks
NSGA-II for the (accuracy, size) front instead of the scalar reward, size being what the reward
compresses (params, FLOPs or latency) relative to the teacher.

State: the study's finished trials and the pending candidates as plain data. The sampler is reseeded
from (seed, number of asks) before each ask, so a restored TPE agent proposes exactly what an
uninterrupted one would (NSGA-II, ``objective="multi"``, keeps its generations in trial attributes
that are not saved: a restored one proposes close to that, not exactly).

With ``concurrency`` c (the trials the run searches with at once), results are learned in the order
their candidates were handed out, each ask seeing the results of every candidate handed out 2c or more
candidates before it (answers from the driver's cache count as candidates) and of none since (those
are running trials to TPE's constant liar; specs the env refuses are learned at once, as before): the
order trials finish in then changes nothing it proposes, as with REINFORCE's batches. An ask whose due
results are not all in waits for them. 2c rather than c: with c, every trial overtaken by a later one
idled a slot; with 2c mostly one overtaken by c later ones does. Measured on digits' one-second trials at c = 2
(`benchmarks/results/search_quality_digits_tpe_order.json`): trials busy 56% of the time against 68%
as they come (52% with c), where Tune's scheduling between such short trials is much of the cost.
Without it, every result is learned as it comes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, distribution_to_json, json_to_distribution
from optuna.trial import TrialState, create_trial

from envs import compression

from .base import Agent, Candidate

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class OptunaOptions:
    objective: str = "reward"  # "reward": TPE on the reward; "multi": NSGA-II on (accuracy, relative size)
    n_startup_trials: int = 10  # random candidates before TPE models the results
    concurrency: int | None = None  # trials at once: results learned in ask order, twice this many asks late (None: as told)

    def __post_init__(self):
        if self.objective not in ("reward", "multi"):
            raise ValueError(f"objective: expected 'reward' or 'multi', got {self.objective!r}")
        if self.n_startup_trials < 0:
            raise ValueError(f"n_startup_trials: expected >= 0, got {self.n_startup_trials}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency: expected >= 1 or null, got {self.concurrency}")


class OptunaAgent(Agent):
    name = "optuna"
    max_redraws = 100
    Options = OptunaOptions

    def __init__(self, env, seed: int = 0, options: OptunaOptions | None = None):
        super().__init__(env, seed)
        options = options or OptunaOptions()
        self.objective, self.n_startup, self.concurrency = options.objective, options.n_startup_trials, options.concurrency
        self.held: dict[int, dict] = {}  # told, not yet learned (with concurrency): candidate id -> params, values
        self.units = [u for u in env.active if env.action_mask(u).sum() > 1]
        # only the unit's allowed actions: a refine stage allows each unit the ratios up to its base's
        self.dists = {f"u{u}": CategoricalDistribution([int(a) for a in np.flatnonzero(env.action_mask(u))])
                      for u in self.units}
        self.asks = 0
        self.study = self._new_study()
        self.trial_of: dict[int, int] = {}  # candidate id -> optuna trial number

    def _new_study(self):
        if self.objective == "multi":
            return optuna.create_study(directions=["maximize", "minimize"], sampler=self._sampler())
        return optuna.create_study(direction="maximize", sampler=self._sampler())

    def _sampler(self):
        # numpy's RandomState, under Optuna's samplers, takes seeds below 2**32 only (seed 5000 had
        # raised at the first ask); unchanged for the seeds that fitted
        seed = (self.seed * 1_000_003 + self.asks) % 2**32
        if self.objective == "multi":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.n_startup, multivariate=True,
                                          constant_liar=True, group=False)

    def _actions(self, params: dict) -> dict[int, int]:
        actions = {u: self.env.default_action(u) for u in self.env.active}
        actions.update({int(k[1:]): int(v) for k, v in params.items()})
        return actions

    def _learn_due(self) -> bool:
        """With concurrency: learn the held results of candidates asked 2 x `concurrency` or more asks
        before the next one, in ask order; False while one of those is still out (the ask waits for it)."""
        if self.concurrency is None:
            return True
        due = self.next_id - 2 * self.concurrency  # the ids up to this one must be learned before the next ask
        if any(cid <= due for cid in self.pending):
            return False
        for cid in sorted(c for c in self.held if c <= due):
            self.study.tell(self.trial_of.pop(cid), self.held.pop(cid)["values"])
        return True

    def ask(self, n: int) -> list[Candidate]:
        out = []
        for _ in range(n * self.max_redraws):
            if len(out) == n or not self._learn_due():
                break
            self.study.sampler = self._sampler()
            self.asks += 1
            trial = self.study.ask(self.dists)
            spec = self.env.spec_from_actions(self._actions(trial.params))
            rew, info = self.env.score(spec)
            if not info["pending"]:  # invalid: known at once, never handed out
                self.study.tell(trial, self._values(rew, None))
                continue
            cid = self._new_id()
            self.pending[cid] = {"params": dict(trial.params)}
            self.trial_of[cid] = trial.number
            out.append(Candidate(cid, spec))
        return out

    def _values(self, reward: float, evaluation):
        if self.objective == "reward":
            return reward
        if evaluation is None:  # invalid: the worst corner of the front
            return [0.0, 1.0]
        # size relative to the teacher's, in what the reward compresses (params, FLOPs or latency)
        return [evaluation.accuracy, 1.0 - compression(evaluation, self.env.reference, self.env.reward_config)]

    def tell(self, cid, reward, evaluation=None):
        rec = self._check_told(cid, reward)
        if self.concurrency is None:
            self.study.tell(self.trial_of.pop(cid), self._values(reward, evaluation))
        else:  # learned in ask order (_learn_due)
            self.held[cid] = {**rec, "values": self._values(reward, evaluation)}

    def best_trials(self):
        return self.study.best_trials if self.objective == "multi" else [self.study.best_trial]

    def state_dict(self):
        trials = [
            {"params": t.params, "values": t.values, "state": t.state.name,
             "distributions": {k: distribution_to_json(d) for k, d in t.distributions.items()}}
            for t in self.study.get_trials(deepcopy=False) if t.state.is_finished()
        ]
        return {**super().state_dict(), "asks": self.asks, "trials": trials,
                "held": {int(k): v for k, v in self.held.items()}}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.asks = state["asks"]
        self.study = self._new_study()
        for t in state["trials"]:
            self.study.add_trial(create_trial(
                params=t["params"], values=t["values"], state=TrialState[t["state"]],
                distributions={k: json_to_distribution(d) for k, d in t["distributions"].items()}))
        self.held = {int(k): v for k, v in state.get("held", {}).items()}  # (states before it: none)
        self.trial_of = {}
        # pending and held candidates become running trials again, in ask order
        for cid, rec in sorted({**self.pending, **self.held}.items()):
            self.study.enqueue_trial(rec["params"])
            self.trial_of[cid] = self.study.ask(self.dists).number
