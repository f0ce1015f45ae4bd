"""The agent protocol: propose candidates, take their rewards, save and load the whole state.

Life of a candidate::

    cands = agent.ask(n)          # up to n new candidates; [] while waiting for results
    ...evaluate cand.spec elsewhere (a Ray Tune trial, a proxy)...
    agent.tell(cand.id, reward, evaluation)   # exactly once per candidate, in any order
    state = agent.state_dict()    # at any point between calls, pending candidates included
    agent.load_state_dict(state)  # into a fresh agent built over the same env and config

An agent works on one stage's env (removal, shrink or refine) in deferred mode: the env says at once when a
spec is invalid (reward -1, never handed out, never trained) and leaves the rest to the caller.
``finished`` is True when an agent has nothing more to propose (a fixed baseline ran out).
"""

from __future__ import annotations

import math
import reprlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from envs import CompressionEnv, Evaluation, RewardConfig, reward
from search_spaces import StudentSpec

# a value in an error, cut short: YAML aliases nest a few lines into billions of items (helper-36: a
# MemoryError from writing out `seed: *bomb`; helper-38: 1.4 GB from an agent option)
_short = reprlib.Repr()
_short.maxlevel, _short.maxlist, _short.maxdict, _short.maxstring, _short.maxother = 2, 6, 6, 80, 80
shown = _short.repr

STATE_VERSION = 1


class AgentOptionError(ValueError):
    """An option an agent does not take, or a value it cannot use; the message names the option."""


@dataclass
class NoOptions:
    """Agents without options."""


def parse_options(kind: str, cls, options: dict):
    """The agent's typed options (`cls`, a dataclass) from plain data; unknown names and values of
    the wrong type are refused with the option's name."""
    import typing
    from dataclasses import fields

    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for k, v in options.items():
        if k not in names:
            colon = (f" (YAML reads `{k}` as one name: write a space after the colon, {{{k.replace(':', ': ', 1)}}})"
                     if isinstance(k, str) and ":" in k and v is None else "")  # helper-97: {batch_size:4}
            raise AgentOptionError(f"{k}: not an option of the {kind} agent; it takes {names or 'none'}{colon}")
        if not _fits(hints[k], v):
            raise AgentOptionError(f"{k}: expected {getattr(hints[k], '__name__', hints[k])}, got {shown(v)}")
    try:
        return cls(**options)
    except (TypeError, ValueError) as e:
        raise AgentOptionError(str(e)) from None


def _fits(tp, v) -> bool:
    args = typing_args(tp)
    if args:  # X | None
        return any(_fits(a, v) for a in args)
    if tp is type(None):
        return v is None
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return isinstance(v, tp) if isinstance(tp, type) else True


def typing_args(tp) -> tuple:
    import types
    import typing

    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else ()


@dataclass(frozen=True)
class Candidate:
    id: int
    spec: StudentSpec


class Agent(ABC):
    """Base class: subclasses implement `_propose` and `_learn`; bookkeeping is shared."""

    name = "agent"

    def __init__(self, env: CompressionEnv, seed: int = 0):
        self.env, self.seed = env, seed
        self.next_id = 0
        self.told = 0  # results received, invalid proposals included
        self.pending: dict[int, dict] = {}  # id -> the agent's record of a handed-out candidate

    @property
    def finished(self) -> bool:
        return False

    @abstractmethod
    def ask(self, n: int) -> list[Candidate]:
        """Up to n new candidates to evaluate; [] when waiting for results or finished."""

    @abstractmethod
    def tell(self, cid: int, reward: float, evaluation: Evaluation | None = None) -> None:
        """The result of candidate `cid` (an id this agent handed out)."""

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def _check_told(self, cid: int, reward: float) -> dict:
        if cid not in self.pending:
            raise KeyError(f"{self.name} agent: candidate {cid} is not pending (already told, or never asked)")
        if not math.isfinite(reward):
            raise ValueError(f"{self.name} agent: reward for candidate {cid} must be finite, got {reward}")
        self.told += 1
        return self.pending.pop(cid)

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "agent": self.name, "next_id": self.next_id, "told": self.told,
                "pending": {int(k): v for k, v in self.pending.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("agent") != self.name or state.get("version") != STATE_VERSION:
            raise ValueError(f"expected a version-{STATE_VERSION} state of a {self.name} agent, "
                             f"got {state.get('agent')!r} version {state.get('version')!r}")
        self.next_id, self.told = state["next_id"], state["told"]
        self.pending = {int(k): v for k, v in state["pending"].items()}


def rollout(env: CompressionEnv, choose) -> tuple[dict[int, int], StudentSpec, float, bool]:
    """One episode; `choose(obs, mask) -> action`. Returns (actions, spec, reward, pending)."""
    obs, info = env.reset()
    actions = {}
    while True:
        unit = int(obs["index"])
        a = int(choose(obs, info["action_mask"]))
        obs, r, term, _, info = env.step(a)
        actions[unit] = info["applied_action"]
        if term:
            return actions, info["spec"], r, info["pending"]


def random_action(rng: np.random.Generator, mask: np.ndarray) -> int:
    return int(rng.choice(np.flatnonzero(mask)))


def run(agent: Agent, evaluate, budget: int, reward_config: RewardConfig = RewardConfig(),
        batch: int = 8, max_asks: int | None = None) -> list[tuple[StudentSpec, float]]:
    """Drive `agent` with a synchronous `evaluate(spec) -> Evaluation` until `budget` evaluations.

    Returns (spec, reward) of every evaluated candidate in order. Used with the proxy evaluator in
    tests and benchmarks; the Ray Tune searcher is the same loop, asynchronous.
    """
    history, asks = [], 0
    while len(history) < budget and not agent.finished:
        asks += 1
        if max_asks is not None and asks > max_asks:
            break
        cands = agent.ask(min(batch, budget - len(history)))
        for c in cands:
            ev = evaluate(c.spec)
            r = reward(ev, agent.env.reference, reward_config)
            agent.tell(c.id, r, ev)
            history.append((c.spec, r))
    return history
