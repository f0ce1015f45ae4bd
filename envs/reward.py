"""What a trial measures, and the reward: pure functions, no torch."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

INVALID_REWARD = -1.0
SIZE_KEYS = {"params": "params", "flops": "flops", "latency": "latency_ms"}  # reward.compression -> record field
# Accuracies are float32 fractions of counts: a student exactly at the allowed drop (15 of 1,500
# validation samples below the teacher, for 1 point) can come out 1e-6 points past it, for 16 of
# the 100 teacher accuracies from 1400/1500 up. Far below one sample in a million: not a miss.
DROP_TOLERANCE = 1e-4  # points


def within_drop(teacher_accuracy: float, accuracy: float, max_drop: float) -> bool:
    """Whether `accuracy` is at most `max_drop` points (0-100) below `teacher_accuracy` (fractions)."""
    return (teacher_accuracy - accuracy) * 100.0 <= max_drop + DROP_TOLERANCE


def drop_points(below: float, max_drop: float) -> float:
    """A drop in points as n2n shows and records it: to 2 decimals, or 4 where 2 would read as the
    limit itself (1.003 points past a 1-point target is not "1.00 points, past it", helper-88)."""
    return round(below, 2) if round(below, 2) != round(max_drop, 2) else round(below, 4)


def points_said(drop: float) -> str:
    """A `drop_points` figure in words: "0.50", or "1.0030" where it kept 4 decimals."""
    return f"{drop:.2f}" if round(drop, 2) == drop else f"{drop:.4f}"


def gap_said(drop: float) -> str:
    """A `drop_points` figure as a side of the teacher: "0.50 below", or "1.12 above" for a student
    that beats it (README-n2n.md read "-1.12 below")."""
    if drop == 0:  # -0.0 too, which read "-0.00 below" (helper-98)
        return f"{points_said(0.0)} below"
    return f"{points_said(drop)} below" if drop > 0 else f"{points_said(-drop)} above"


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
    # median ms of one forward pass, the student's and the teacher's, measured side by side on the
    # trial's device (see n2n.deploy.latency_ms); None where not measured (a failed trial)
    latency_ms: float | None = None
    teacher_latency_ms: float | None = None
    # the student's fastest pass over the teacher's, in those rounds (n2n.deploy.fastest_ratio): what
    # ranks students by latency; runs recorded before it rank by the ratio of the medians
    latency_ratio: float | None = None

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
    """N2N's reward or a target's, on parameters, FLOPs or latency.

    C = 1 - size(student) / size(teacher), size = params, FLOPs or latency (`compression`); latency's
    C uses the teacher's latency measured beside the student's on the same worker, so a worker's
    speed and load cancel out.
    ``kind="n2n"``: R = C (2 - C) * acc(student) / acc(teacher), N2N's trade of accuracy for size at
    a fixed rate. With constraints, a student over `max_params` or under `min_accuracy` gets -1: the
    same penalty as an unusable student, so the policy learns the constraint as a wall.
    ``kind="target"``: the user's target (`target_drop` points of accuracy below the teacher at most,
    `target_params`, `target_flops`, `target_latency_ms`, any combination). With an accuracy target
    a student inside it scores 0.5 + 0.5 C, so among students that meet the target the smaller wins
    ("the smallest within 1 point"); one outside scores 0.5 / (1 + miss) < 0.5, where miss adds the
    accuracy shortfall in units of the allowed drop and log2 of each size overshoot, so the policy
    still learns which way the target lies. With size or latency limits alone ("the most accurate
    under 50,000 params") a student inside them scores 0.5 + 0.5 accuracy, so the more accurate wins;
    one outside 0.5 accuracy / (1 + miss) < 0.5: the limits first, then accuracy. (A removal stage
    that cannot reach a tight limit alone would then start the shrink stage from its one tiny wreck
    inside it: with limits alone the driver starts shrinking from an accurate removal student
    instead, n2n.driver.REMOVAL_KEEP_DROP.)
    Failed or non-compressing (C <= 0) students get -1 either way.
    """

    compression: str = "params"
    max_params: int | None = None
    min_accuracy: float | None = None
    kind: str = "n2n"
    target_drop: float | None = None  # points (0-100) of validation accuracy below the teacher's
    target_params: int | None = None
    target_flops: int | None = None
    target_latency_ms: float | None = None

    def __post_init__(self):
        if self.compression not in SIZE_KEYS:
            raise ValueError(f"reward.compression: expected 'params', 'flops' or 'latency', got {self.compression!r}")
        if self.kind not in ("n2n", "target"):
            raise ValueError(f"reward.kind: expected 'n2n' or 'target', got {self.kind!r}")
        if self.kind == "target" and all(t is None for t in (self.target_drop, self.target_params, self.target_flops,
                                                              self.target_latency_ms)):
            raise ValueError("reward.kind target: expected a target (target.max_accuracy_drop, max_params, max_flops "
                             "or max_latency_ms)")

    @property
    def size_key(self) -> str:
        """The record field the reward compresses: params, flops or latency_ms."""
        return SIZE_KEYS[self.compression]

    def miss(self, ev: "Evaluation", ref: "Reference") -> float:
        """How far a student is outside the target (0 inside it; see the class doc)."""
        miss = 0.0
        if self.target_drop is not None and not within_drop(ref.accuracy, ev.accuracy, self.target_drop):
            miss += ((ref.accuracy - ev.accuracy) * 100.0 - self.target_drop) / max(self.target_drop, 1.0)
        if self.target_params is not None and ev.params > self.target_params:
            miss += math.log2(ev.params / self.target_params)
        if self.target_flops is not None and ev.flops > self.target_flops:
            miss += math.log2(ev.flops / self.target_flops)
        if self.target_latency_ms is not None and (ev.latency_ms or math.inf) > self.target_latency_ms:
            miss += math.log2((ev.latency_ms or math.inf) / self.target_latency_ms)
        return miss


def latency_ratio(rec: dict) -> float | None:
    """A record's latency relative to the teacher timed beside it (None where not measured): the
    recorded `latency_ratio`, or in runs recorded before it the ratio of the medians."""
    if rec.get("latency_ratio"):
        return rec["latency_ratio"]
    ok = rec.get("latency_ms") and rec.get("teacher_latency_ms")
    return rec["latency_ms"] / rec["teacher_latency_ms"] if ok else None


def size_of(rec: dict, cfg: RewardConfig) -> float:
    """A record's size for ranking students: params or FLOPs; for latency the student's relative to
    the teacher timed beside it, since raw milliseconds of unlike workers do not compare."""
    if cfg.compression == "latency":
        ratio = latency_ratio(rec)
        return ratio if ratio else math.inf
    return rec[cfg.size_key]


def compression(ev: Evaluation, ref: Reference, cfg: RewardConfig = RewardConfig()) -> float:
    if cfg.compression == "flops":
        return 1.0 - ev.flops / ref.flops
    if cfg.compression == "latency":  # not measured (a failed trial): no compression, so no reward
        ratio = latency_ratio(ev.to_dict())
        return 1.0 - ratio if ratio else 0.0
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
        if cfg.target_drop is None:  # limits alone: accuracy within them
            return 0.5 + 0.5 * ev.accuracy if miss == 0 else 0.5 * ev.accuracy / (1.0 + miss)
        return 0.5 + 0.5 * c if miss == 0 else 0.5 / (1.0 + miss)
    return c * (2.0 - c) * ev.accuracy / ref.accuracy
