"""Who chooses the edits: N2N's REINFORCE policies, Optuna, and random baselines."""

from .base import Agent, Candidate, rollout, run
from .optuna_agent import OptunaAgent
from .random_agent import RandomAgent, UniformShrinkAgent
from .reinforce import ReinforceAgent, ReinforceConfig, RemovalPolicy, ShrinkPolicy

AGENTS = {"reinforce": ReinforceAgent, "optuna": OptunaAgent, "random": RandomAgent, "uniform": UniformShrinkAgent}


def make_agent(kind: str, env, seed: int = 0, **options) -> Agent:
    """An agent by name over a deferred env; `options` go to its constructor."""
    if kind not in AGENTS:
        raise ValueError(f"agent: expected one of {sorted(AGENTS)}, got {kind!r}")
    if env.evaluator is not None:
        raise ValueError("agents propose specs for the caller to evaluate: build the env with evaluator=None")
    try:
        return AGENTS[kind](env, seed=seed, **options)
    except TypeError as e:  # an option the agent does not take
        raise ValueError(f"options for the {kind} agent: {e}") from None


__all__ = ["Agent", "Candidate", "rollout", "run", "OptunaAgent", "RandomAgent", "UniformShrinkAgent",
           "ReinforceAgent", "ReinforceConfig", "RemovalPolicy", "ShrinkPolicy", "AGENTS", "make_agent"]
