"""N2N's compression MDP as Gymnasium environments."""

from __future__ import annotations

import math
from collections.abc import Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from search_spaces import FEATURE_DIM, SearchSpace, StudentSpec

from .reward import INVALID_REWARD, Evaluation, Reference, RewardConfig, reward

Evaluator = Callable[[StudentSpec], Evaluation]
KEEP, REMOVE = 0, 1
# stage -> the kind of decision it takes per unit (and so the policy that takes it)
STAGES = {"removal": "removal", "shrink": "shrink", "refine": "shrink"}


class CompressionEnv(gym.Env):
    """
    ## Description
    One N2N stage over a teacher's units. An episode walks the units in order and takes one
    decision per unit; the student built from those decisions is scored once, at the end.
    Stage ``"removal"`` decides keep/remove per unit; stage ``"shrink"`` starts from `base_spec`
    (by default the identity; in a search, the best removal result) and picks a width ratio for
    every unit the base keeps; stage ``"refine"`` is a shrink that only narrows: from `base_spec`
    (in a search, the best shrink result) each unit keeps its ratio or takes a smaller one, so its
    candidates explore the base's neighbourhood on the small side.

    ## Action Space
    ``removal``: ``Discrete(2)``: 0 keep, 1 remove.
    ``shrink`` and ``refine``: ``Discrete(len(space.ratios))``: index into ``space.ratios``.
    ``info["action_mask"]`` (int8, one entry per action) marks the allowed actions of the current
    unit (``refine``: the ratios up to the base's). A masked action is never applied: the unit keeps
    its default (keep / ratio 1.0 / refine: the base's ratio) and ``info["applied_action"]`` says
    what was applied.

    ## Observation Space
    A ``Dict``, padded to ``max_units`` rows:

    | key       | space                                   | meaning                                          |
    |-----------|-----------------------------------------|--------------------------------------------------|
    | features  | Box(0, 1, (max_units, FEATURE_DIM), f32) | normalised unit features (search_spaces.FEATURE_NAMES) |
    | valid     | MultiBinary(max_units)                  | 1 for units of this stage (not padding, not removed by the base) |
    | index     | Discrete(max_units + 1)                 | unit the next action applies to (n_units once done) |
    | decisions | Box(-1, 1, (max_units,), f32)           | -1 undecided; removal: 1 kept, 0 removed; shrink: the chosen ratio |

    ## Rewards
    0 on every step but the last. At the end: an invalid spec (``space.validate`` gives a reason)
    or one that does not compress gets -1 without being evaluated. Otherwise the evaluator measures
    the student and the reward is ``envs.reward.reward`` (N2N's C(2-C) * acc/acc_teacher, always
    relative to the original teacher). With ``evaluator=None`` evaluation is *deferred*: the last
    step returns NaN ("not known yet", never a number that could pass for a reward),
    ``info["pending"] = True`` and ``info["spec"]``; the caller evaluates the spec elsewhere (Ray
    Tune) and hands the reward to the agent.

    ## Starting State
    The first unit of the stage, nothing decided. Deterministic: the env draws no randomness.

    ## Episode End
    Terminated after the last unit of the stage. Never truncated.

    ## Arguments
    ``space``: a SearchSpace (default: a small demo teacher). ``evaluator``: spec -> Evaluation,
    or None to defer (default: ``ProxyEvaluator`` on the demo space). ``stage``: "removal",
    "shrink" or "refine". ``base_spec``: where shrinking starts. ``reward_config``: ``RewardConfig``.
    ``reference``: the teacher's figures (default: the space's params/FLOPs and the evaluator's
    ``ref_accuracy``). ``max_units``: padding length (default 64, or the teacher's unit count when it has more).

    ## Version History
    v0: initial version.
    """

    metadata = {"render_modes": []}

    def __init__(self, space: SearchSpace | None = None, evaluator: Evaluator | None | str = "proxy",
                 stage: str = "removal", base_spec: StudentSpec | None = None,
                 reward_config: RewardConfig = RewardConfig(), reference: Reference | None = None,
                 max_units: int | None = None):
        if stage not in STAGES:
            raise ValueError(f"stage: expected one of {list(STAGES)}, got {stage!r}")
        if space is None:
            space = demo_space()
        if evaluator == "proxy":
            from .proxy import ProxyEvaluator

            evaluator = ProxyEvaluator(space)
        max_units = max(64, space.n_units) if max_units is None else max_units
        if space.n_units > max_units:
            raise ValueError(f"the teacher has {space.n_units} units, more than max_units={max_units}; raise max_units")
        self.space, self.evaluator, self.stage = space, evaluator, stage
        self.kind = STAGES[stage]  # the kind of decision: what a policy for this stage decides
        self.base = base_spec or space.identity()
        reason = space.validate(self.base)
        if reason:
            raise ValueError(f"base_spec is invalid: {reason}")
        if reference is None:
            ref_acc = getattr(evaluator, "ref_accuracy", 1.0)
            reference = Reference(space.params(space.identity()), space.flops(space.identity()), ref_acc)
        self.reference, self.reward_config, self.max_units = reference, reward_config, max_units

        n, k = space.n_units, (2 if stage == "removal" else len(space.ratios))
        self.action_space = spaces.Discrete(k)
        self.observation_space = spaces.Dict({
            "features": spaces.Box(0.0, 1.0, (max_units, FEATURE_DIM), np.float32),
            "valid": spaces.MultiBinary(max_units),
            "index": spaces.Discrete(max_units + 1),
            "decisions": spaces.Box(-1.0, 1.0, (max_units,), np.float32),
        })
        self._features = np.zeros((max_units, FEATURE_DIM), np.float32)
        self._features[:n] = space.features()
        # shrink: the units the base keeps (a removed layer's sub-units have nothing left to shrink)
        gone = set(self.base.removed)
        self.active = [i for i, u in enumerate(space.units)
                       if stage == "removal" or (i not in gone and u.parent not in gone)]
        self._valid = np.zeros(max_units, np.int8)
        self._valid[self.active] = 1
        self._masks = {i: self._mask(i) for i in self.active}
        self._step = None

    # -- helpers shared with agents --------------------------------------------------------------
    def _mask(self, unit: int) -> np.ndarray:
        u = self.space.units[unit]
        if self.stage == "removal":
            return np.array([1, int(u.removable)], np.int8)
        top = self.base.ratios[unit] if self.stage == "refine" else 1.0  # refine only narrows
        return np.array([r <= top + 1e-9 if u.shrinkable else r == 1.0 for r in self.space.ratios], np.int8)

    @property
    def fixed(self) -> bool:
        """No unit has a choice, so the only spec this stage can give is its base (a teacher with
        nothing removable; a refine whose base already has every unit at the smallest ratio)."""
        return all(self._masks[i].sum() <= 1 for i in self.active)

    def action_mask(self, unit: int) -> np.ndarray:
        return self._masks[unit].copy()

    def default_action(self, unit: int) -> int:
        if self.stage == "removal":
            return KEEP
        r = self.base.ratios[unit] if self.stage == "refine" else 1.0
        return min(range(len(self.space.ratios)), key=lambda a: abs(self.space.ratios[a] - r))

    def spec_from_actions(self, actions: dict[int, int]) -> StudentSpec:
        """The spec that actions {unit: action} (over this stage's units) give, masks applied."""
        removed, ratios = set(self.base.removed), list(self.base.ratios)
        for unit, a in actions.items():
            a = a if self._masks[unit][a] else self.default_action(unit)
            if self.stage == "removal":
                if a == REMOVE:
                    removed.add(unit)
            else:
                ratios[unit] = self.space.ratios[a]
        return StudentSpec(tuple(removed), tuple(ratios))

    # -- gymnasium API ---------------------------------------------------------------------------
    def _obs(self) -> dict:
        index = self.active[self._step] if self._step < len(self.active) else self.space.n_units
        return {"features": self._features.copy(), "valid": self._valid.copy(),
                "index": index, "decisions": self._decisions.copy()}

    def _info(self) -> dict:
        if self._step < len(self.active):
            return {"action_mask": self.action_mask(self.active[self._step])}
        return {"action_mask": np.zeros(self.action_space.n, np.int8)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._step, self._actions = 0, {}
        self._decisions = np.full(self.max_units, -1.0, np.float32)
        return self._obs(), self._info()

    def step(self, action):
        if self._step is None or self._step >= len(self.active):
            raise RuntimeError("step() called on a finished episode; call reset() first")
        if not self.action_space.contains(action):
            raise ValueError(f"action: expected an int in [0, {self.action_space.n}), got {action!r}")
        unit = self.active[self._step]
        applied = int(action) if self._masks[unit][int(action)] else self.default_action(unit)
        self._actions[unit] = applied
        self._decisions[unit] = (1.0 - applied) if self.stage == "removal" else self.space.ratios[applied]
        self._step += 1
        terminated = self._step == len(self.active)
        rew, info = 0.0, self._info()
        info["applied_action"] = applied
        if terminated:
            rew, outcome = self.score(self.spec_from_actions(self._actions))
            info.update(outcome)
        return self._obs(), rew, terminated, False, info

    def score(self, spec: StudentSpec) -> tuple[float, dict]:
        """Terminal reward of `spec` and what is known about it (NaN + pending when deferred)."""
        info = {"spec": spec, "pending": False}
        reason = self.space.validate(spec)
        if reason is None and self.space.params(spec) >= self.reference.params:
            reason = "the student is not smaller than the teacher"
        if reason:
            info["reason"] = reason
            return INVALID_REWARD, info
        if self.evaluator is None:
            info["pending"] = True
            return math.nan, info
        ev = self.evaluator(spec)
        info["evaluation"] = ev
        return reward(ev, self.reference, self.reward_config), info


class LayerRemovalEnv(CompressionEnv):
    def __init__(self, **kwargs):
        super().__init__(stage="removal", **kwargs)


class LayerShrinkEnv(CompressionEnv):
    def __init__(self, **kwargs):
        super().__init__(stage="shrink", **kwargs)


def demo_space() -> SearchSpace:
    """A small, untrained 1D conv teacher: enough structure for demos and conformance checks."""
    import torch

    from search_spaces import SequentialSpace, layers_to_module

    layers = []
    c = 1
    for w in (16, 16, "M", 32, 32, "M", 64):
        if w == "M":
            layers.append({"kind": "pool", "dim": 1, "op": "max", "kernel": 2, "stride": 2, "padding": 0})
            continue
        layers += [{"kind": "conv", "dim": 1, "in": c, "out": w, "kernel": 3, "stride": 1, "padding": 1, "bias": False},
                   {"kind": "bn", "dim": 1, "num": w, "eps": 1e-5, "momentum": 0.1, "affine": True},
                   {"kind": "act", "fn": "relu"}]
        c = w
    layers += [{"kind": "gpool", "dim": 1, "op": "avg"}, {"kind": "flatten"},
               {"kind": "linear", "in": c, "out": 64, "bias": True}, {"kind": "act", "fn": "relu"},
               {"kind": "linear", "in": 64, "out": 10, "bias": True}]
    with torch.random.fork_rng(devices=[]):  # seeded weights without reseeding the caller's RNG
        torch.manual_seed(0)
        return SequentialSpace(layers_to_module(layers).eval(), (1, 40))
