"""Who chooses the edits: N2N's REINFORCE policies, Optuna, and random baselines."""

from .base import Agent, AgentOptionError, Candidate, parse_options, rollout, run
from .optuna_agent import OptunaAgent
from .random_agent import RandomAgent, UniformShrinkAgent
from .reinforce import ReinforceAgent, ReinforceConfig, RemovalPolicy, ShrinkPolicy

AGENTS = {"reinforce": ReinforceAgent, "optuna": OptunaAgent, "random": RandomAgent, "uniform": UniformShrinkAgent}


def agent_options(kind: str, options: dict):
    """Check `options` for the agent `kind` (config load calls this): its typed Options object."""
    if kind not in AGENTS:
        raise AgentOptionError(f"agent: expected one of {sorted(AGENTS)}, got {kind!r}")
    return parse_options(kind, AGENTS[kind].Options, dict(options))


def make_agent(kind: str, env, seed: int = 0, **options) -> Agent:
    """An agent by name over a deferred env, with its options by name (e.g. batch_size=4)."""
    opts = agent_options(kind, options)
    if env.evaluator is not None:
        raise ValueError("agents propose specs for the caller to evaluate: build the env with evaluator=None")
    return AGENTS[kind](env, seed=seed, options=opts)


__all__ = ["Agent", "AgentOptionError", "agent_options", "Candidate", "rollout", "run", "OptunaAgent", "RandomAgent", "UniformShrinkAgent",
           "ReinforceAgent", "ReinforceConfig", "RemovalPolicy", "ShrinkPolicy", "AGENTS", "make_agent"]
