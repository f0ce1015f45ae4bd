"""The Gymnasium MDP over a search space's edits, and the reward (no Ray, no agents)."""

import gymnasium

from .compression import STAGES, CompressionEnv, LayerRemovalEnv, LayerShrinkEnv, demo_space
from .proxy import ProxyEvaluator
from .reward import (INVALID_REWARD, Evaluation, Reference, RewardConfig, compression, drop_points, gap_said,
                     latency_ratio, points_said, reward, size_of, within_drop)

ENV_IDS = ("n2n/LayerRemoval-v0", "n2n/LayerShrink-v0")

# Registered at import so every process (Ray workers included) sees the ids.
for _id, _cls in zip(ENV_IDS, ("LayerRemovalEnv", "LayerShrinkEnv")):
    if _id not in gymnasium.registry:
        gymnasium.register(id=_id, entry_point=f"envs.compression:{_cls}")

__all__ = [
    "STAGES", "CompressionEnv", "LayerRemovalEnv", "LayerShrinkEnv", "demo_space", "ProxyEvaluator",
    "INVALID_REWARD", "Evaluation", "Reference", "RewardConfig", "compression", "drop_points", "gap_said", "latency_ratio",
    "points_said", "reward", "size_of", "within_drop",
    "ENV_IDS",
]
