"""The search's bookkeeping, independent of Ray: stages, agents, the cache of evaluated specs, records.

The Tune searcher (n2n.searcher) is a thin adapter over `SearchDriver`:
``suggest(trial_id)`` -> a trial config, None (wait) or FINISHED; ``complete(trial_id, metrics)``.
Its whole state (agents included) is plain data + tensors, saved with every experiment snapshot.

Stages run in order (removal, then shrink from the best removal spec); every reward is relative to
the original teacher. A spec evaluated before is never trained again: its cached result is handed
to the agent. Invalid specs never reach the driver (the env rejects them for free).
"""

from __future__ import annotations

import time
from pathlib import Path

from agents import ReinforceConfig, make_agent
from envs import CompressionEnv, Evaluation, Reference, RewardConfig, compression, reward
from search_spaces import SearchSpace, StudentSpec

from .models import write_json

FINISHED = "FINISHED"
STATE_VERSION = 1


class SearchDriver:
    def __init__(self, space: SearchSpace, reference: Reference, *, agent: str = "reinforce",
                 stages=("removal", "shrink"), budgets: dict[str, int], seed: int = 0,
                 reward_config: RewardConfig = RewardConfig(), agent_options: dict | None = None,
                 max_asks_per_candidate: int = 50, run_dir: str | Path | None = None,
                 teacher_info: dict | None = None, log=print):
        self.space, self.reference, self.kind = space, reference, agent
        self.stages, self.budgets, self.seed = list(stages), dict(budgets), seed
        self.reward_config, self.options = reward_config, dict(agent_options or {})
        self.max_asks = max_asks_per_candidate
        self.run_dir = Path(run_dir) if run_dir else None
        self.teacher_info, self.log = teacher_info or {}, log
        self.stage_idx = 0
        self.base = space.identity()
        self.agent = self._make_agent(self.stages[0], self.base)
        self.cache: dict[str, dict] = {}  # spec key -> final metrics
        self.trials: dict[str, dict] = {}  # trial id -> {"stage", "cid", "key"} while in flight
        self.waiters: dict[str, list[int]] = {}  # key in flight -> candidate ids of duplicates
        self.records: list[dict] = []  # one per trained candidate, in completion order
        self.asks = 0  # candidates asked in this stage (cached ones included)
        self.cache_hits = 0
        self.updates_done: dict[str, int] = {}  # policy updates of finished stages
        self.wall_before = 0.0  # wall time of earlier sessions (before a resume)
        self.session_start = time.time()

    # -- stages ---------------------------------------------------------------------------------
    @property
    def stage(self) -> str | None:
        return self.stages[self.stage_idx] if self.stage_idx < len(self.stages) else None

    def _make_agent(self, stage: str, base: StudentSpec):
        env = CompressionEnv(self.space, evaluator=None, stage=stage, base_spec=base,
                             reward_config=self.reward_config, reference=self.reference)
        opts = dict(self.options)
        if self.kind == "reinforce":
            try:
                opts = {"config": ReinforceConfig(**opts)}
            except TypeError as e:
                raise ValueError(f"options for the reinforce agent: {e}") from None
        return make_agent(self.kind, env, seed=self.seed + self.stage_idx, **opts)

    def trained(self, stage: str) -> int:
        return sum(r["stage"] == stage for r in self.records)

    def in_flight(self) -> int:
        return len(self.trials)

    def _stage_done(self) -> bool:
        s = self.stage
        return (self.trained(s) + self.in_flight() >= self.budgets[s] or self.agent.finished
                or self.asks > self.max_asks * max(self.budgets[s], 1))

    def _advance(self):
        done = self.stage
        if self.trained(done) < self.budgets[done]:
            why = "the agent has nothing more to propose" if self.agent.finished else "the agent kept proposing known specs"
            self.log(f"stage {done} ended after {self.trained(done)} of {self.budgets[done]} candidates: {why}")
        self.updates_done[done] = getattr(self.agent, "updates", 0)
        self.stage_idx += 1
        self.asks = 0
        if self.stage is None:
            self.log(f"search finished: {len(self.records)} candidates trained")
            self.write_files()
            return
        best = self.best(stage=done)
        if best is not None:
            self.base = StudentSpec.from_dict(best["spec"])
        self.log(f"stage {self.stage}: starting from {self.space.describe(self.base)}")
        self.agent = self._make_agent(self.stage, self.base)

    # -- the searcher's two calls ---------------------------------------------------------------
    def suggest(self, trial_id: str):
        while True:
            if self.stage is None:
                return FINISHED
            if self._stage_done():
                if self.in_flight():
                    return None  # the next stage starts from this one's best: wait for all of it
                self._advance()
                continue
            cands = self.agent.ask(1)
            if not cands:
                if self.agent.finished and not self.in_flight():
                    self._advance()
                    continue
                return None  # waiting for results (e.g. the rest of a REINFORCE batch)
            c = cands[0]
            self.asks += 1
            key = self.space.key(c.spec)
            if key in self.cache:
                self.cache_hits += 1
                self.agent.tell(c.id, self.cache[key]["reward"], Evaluation.from_dict(self.cache[key]))
                continue
            if any(t["key"] == key for t in self.trials.values()):
                self.waiters.setdefault(key, []).append(c.id)
                continue
            self.trials[trial_id] = {"stage": self.stage, "cid": c.id, "key": key, "spec": c.spec.to_dict()}
            return {"spec": c.spec.to_dict(), "key": key, "stage": self.stage}

    def complete(self, trial_id: str, metrics: dict | None, error: bool = False):
        """A trial ended. Unknown ids (a restarted trial Tune renamed) are ignored."""
        t = self.trials.pop(trial_id, None)
        if t is None:
            return
        spec = StudentSpec.from_dict(t["spec"])
        if error or not metrics or "accuracy" not in metrics:
            ev = Evaluation(0.0, self.space.params(spec), self.space.flops(spec), failure="trial raised an error")
        else:
            ev = Evaluation.from_dict({**metrics, "failure": metrics.get("failure") or None})
        r = reward(ev, self.reference, self.reward_config)
        m = {**ev.to_dict(), "reward": r, "compression": compression(ev, self.reference, self.reward_config)}
        self.cache[t["key"]] = m
        for cid in [t["cid"]] + self.waiters.pop(t["key"], []):
            if cid in self.agent.pending:  # always true within a stage; guards a stage switch
                self.agent.tell(cid, r, ev)
        extra = {k: metrics[k] for k in ("device", "gpus", "started", "ended") if metrics and k in metrics}
        rec = {"trial_id": trial_id, "stage": t["stage"], "key": t["key"], "spec": t["spec"],
               "summary": self.space.describe(spec), **m, **extra, "cached": bool(metrics and metrics.get("cached"))}
        self.records.append(rec)
        self._progress(rec)
        self.write_files()

    # -- results ----------------------------------------------------------------------------------
    def best(self, stage: str | None = None) -> dict | None:
        rows = [r for r in self.records if r["failure"] is None and r["reward"] > -1 and (stage is None or r["stage"] == stage)]
        return max(rows, key=lambda r: r["reward"]) if rows else None

    def agent_updates(self) -> dict[str, int]:
        """Policy updates per stage (REINFORCE; 0 for agents that do not update in batches)."""
        now = {self.stage: getattr(self.agent, "updates", 0)} if self.stage else {}
        return {**self.updates_done, **now}

    def wall_seconds(self) -> float:
        return self.wall_before + time.time() - self.session_start

    def summary(self) -> dict:
        best = self.best()
        out = {
            "teacher": {**self.teacher_info, "params": self.reference.params, "flops": self.reference.flops,
                        "val_accuracy": self.reference.accuracy},
            "agent": self.kind, "stage": self.stage or "done",
            "candidates_evaluated": len(self.records),
            "candidates_per_stage": {s: self.trained(s) for s in self.stages},
            "cache_hits": self.cache_hits,
            "wall_seconds": round(self.wall_seconds(), 1),
            "agent_updates": self.agent_updates(),
            "best": None,
        }
        if best:
            out["best"] = {k: best[k] for k in ("spec", "key", "summary", "params", "flops", "accuracy", "reward",
                                                "compression", "stage", "trial_id")}
            out["best"]["val_accuracy"] = out["best"].pop("accuracy")
            out["best"]["times_smaller"] = round(self.reference.params / best["params"], 2)
        return out

    def write_files(self):
        if self.run_dir is None:
            return
        write_json(self.run_dir / "summary.json", self.summary())
        write_json(self.run_dir / "candidates.json", self.records)

    def _progress(self, rec: dict):
        s = rec["stage"]
        best = self.best()
        line = (f"[{s} {self.trained(s)}/{self.budgets[s]}] reward {rec['reward']:+.3f} "
                f"({rec['params']:,} params, val acc {rec['accuracy']:.4f}{', cached' if rec['cached'] else ''})")
        if best:
            line += (f" | best {best['reward']:.3f}: {best['params']:,} params "
                     f"({self.reference.params / best['params']:.1f}x smaller), val acc {best['accuracy']:.4f}")
        if rec["failure"]:
            line += f" | failed: {rec['failure']}"
        self.log(line)

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "stage_idx": self.stage_idx, "base": self.base.to_dict(),
                "agent": self.agent.state_dict() if self.stage else None, "cache": self.cache,
                "trials": self.trials, "waiters": self.waiters, "records": self.records, "asks": self.asks,
                "cache_hits": self.cache_hits, "updates_done": self.updates_done, "wall_seconds": self.wall_seconds()}

    def load_state_dict(self, state: dict):
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"expected search state version {STATE_VERSION}, got {state.get('version')!r}")
        self.stage_idx, self.base = state["stage_idx"], StudentSpec.from_dict(state["base"])
        if self.stage is not None:
            self.agent = self._make_agent(self.stage, self.base)
            self.agent.load_state_dict(state["agent"])
        self.cache, self.trials, self.waiters = state["cache"], state["trials"], state["waiters"]
        self.records, self.asks, self.cache_hits = state["records"], state["asks"], state["cache_hits"]
        self.updates_done = state["updates_done"]
        self.wall_before, self.session_start = state["wall_seconds"], time.time()
