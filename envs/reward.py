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
    """N2N's reward, optionally on FLOPs and with hard constraints.

    C = 1 - size(student) / size(teacher), size = params or FLOPs (`compression`);
    R = C (2 - C) * acc(student) / acc(teacher).
    Failed, non-compressing (C <= 0) students get -1. With constraints, a student over `max_params`
    or under `min_accuracy` also gets -1: the penalty is the same as for an unusable student, so the
    policy learns the constraint as a wall, not as a slope it can trade against.
    """

    compression: str = "params"
    max_params: int | None = None
    min_accuracy: float | None = None

    def __post_init__(self):
        if self.compression not in ("params", "flops"):
            raise ValueError(f"reward.compression: expected 'params' or 'flops', got {self.compression!r}")


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
    return c * (2.0 - c) * ev.accuracy / ref.accuracy
