"""What a trial measures, and the reward: pure functions, no torch."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

INVALID_REWARD = -1.0


@dataclass
class Evaluation:
    """What one candidate student measured. Accuracy is on the validation split."""

    accuracy: float
    params: int
    flops: int
    epochs: int = 0
    wall_seconds: float = 0.0
    train_seconds: float = 0.0
    failure: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Evaluation:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class Reference:
    """The teacher's figures every reward is relative to (always the original teacher)."""

    params: int
    flops: int
    accuracy: float


@dataclass(frozen=True)
class RewardConfig:
    """N2N's reward or a target's, on parameters or FLOPs.

    C = 1 - size(student) / size(teacher), size = params or FLOPs (`compression`).
    ``kind="n2n"``: R = C (2 - C) * acc(student) / acc(teacher), N2N's trade of accuracy for size at
    a fixed rate. With constraints, a student over `max_params` or under `min_accuracy` gets -1: the
    same penalty as an unusable student, so the policy learns the constraint as a wall.
    ``kind="target"``: the user's target (`target_drop` points of accuracy below the teacher at most,
    `target_params`, `target_flops`, any combination). A student inside it scores 0.5 + 0.5 C, so among
    students that meet the target the smaller wins; one outside scores 0.5 / (1 + miss) < 0.5, where
    miss adds the accuracy shortfall in units of the allowed drop and log2 of each size overshoot, so
    the policy still learns which way the target lies.
    Failed or non-compressing (C <= 0) students get -1 either way.
    """

    compression: str = "params"
    max_params: int | None = None
    min_accuracy: float | None = None
    kind: str = "n2n"
    target_drop: float | None = None  # points (0-100) of validation accuracy below the teacher's
    target_params: int | None = None
    target_flops: int | None = None

    def __post_init__(self):
        if self.compression not in ("params", "flops"):
            raise ValueError(f"reward.compression: expected 'params' or 'flops', got {self.compression!r}")
        if self.kind not in ("n2n", "target"):
            raise ValueError(f"reward.kind: expected 'n2n' or 'target', got {self.kind!r}")
        if self.kind == "target" and self.target_drop is None and self.target_params is None and self.target_flops is None:
            raise ValueError("reward.kind target: expected a target (target.max_accuracy_drop, max_params or max_flops)")

    def miss(self, ev: "Evaluation", ref: "Reference") -> float:
        """How far a student is outside the target (0 inside it; see the class doc)."""
        miss = 0.0
        if self.target_drop is not None:
            drop = (ref.accuracy - ev.accuracy) * 100.0
            miss += max(0.0, drop - self.target_drop) / max(self.target_drop, 1.0)
        if self.target_params is not None and ev.params > self.target_params:
            miss += math.log2(ev.params / self.target_params)
        if self.target_flops is not None and ev.flops > self.target_flops:
            miss += math.log2(ev.flops / self.target_flops)
        return miss


def compression(ev: Evaluation, ref: Reference, cfg: RewardConfig = RewardConfig()) -> float:
    if cfg.compression == "flops":
        return 1.0 - ev.flops / ref.flops
    return 1.0 - ev.params / ref.params


def reward(ev: Evaluation, ref: Reference, cfg: RewardConfig = RewardConfig()) -> float:
    if ev.failure is not None or not math.isfinite(ev.accuracy):
        return INVALID_REWARD
    c = compression(ev, ref, cfg)
    if c <= 0:
        return INVALID_REWARD
    if cfg.max_params is not None and ev.params > cfg.max_params:
        return INVALID_REWARD
    if cfg.min_accuracy is not None and ev.accuracy < cfg.min_accuracy:
        return INVALID_REWARD
    if cfg.kind == "target":
        miss = cfg.miss(ev, ref)
        return 0.5 + 0.5 * c if miss == 0 else 0.5 / (1.0 + miss)
    return c * (2.0 - c) * ev.accuracy / ref.accuracy
