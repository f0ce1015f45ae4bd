"""The search's bookkeeping, independent of Ray: stages, agents, the cache of evaluated specs, records.

The Tune searcher (n2n.searcher) is a thin adapter over `SearchDriver`:
``suggest(trial_id)`` -> a trial config, None (wait) or FINISHED; ``complete(trial_id, metrics)``.
Its whole state (agents included) is plain data + tensors, saved with every experiment snapshot.

Stages run in order (removal; shrink from the best removal spec; refine, when asked for, from the
best shrink spec); every reward is relative to the original teacher. A spec evaluated before is
never trained again: its cached result is handed to the agent. Invalid specs never reach the driver (the env rejects them for free).

With a run folder, the state is written there (n2n.runfolder) after every step that changes it, and
before candidates.json: a resume continues from it with a fresh Tune experiment, first re-issuing
the candidates that were in flight. If every one of the first `ABORT_AFTER` candidates fails, the
search stops with the first failure's reason instead of spending its budget on failures.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import math
import re
import time
from pathlib import Path

from agents import Candidate, make_agent
from envs import CompressionEnv, Evaluation, Reference, RewardConfig, compression, latency_ratio, reward, size_of, within_drop
from search_spaces import SearchSpace, StudentSpec

from .errors import RunError
from .models import write_json
from .pick import REACH, by_reward, choose, finalists, meets_none, misscored, points
from .runfolder import (HELD_FOR_DEATHS, HELD_FOR_UNSAVED, POLICY, RECORDS, SUMMARY, moved, moved_said, record_problem,
                        result_problem, save_state)

FINISHED = "FINISHED"


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"

_CACHED = (*Evaluation.__dataclass_fields__, "reward", "compression")  # a cache entry's keys
STATE_VERSION = 2
ABORT_AFTER = 3  # failures in a row, before any success, that stop a search
# A trial that ended in error without reporting: the trainable catches a student's own failures and
# reports them, so this is its worker dying (Ray's memory monitor, a kill, a lost node). Not the
# student's fault: not cached, so a resume trains it again. (The second: runs before this wording.)
WORKER_DIED = ("the trial's worker died before it reported (out of memory, a killed process or a lost node; "
               "tune/'s error.txt says which); tried again")  # at once (complete), or on resume (retry_dead)
_DEATHS = (WORKER_DIED, "trial raised an error")
# A trial that trained but could not keep its result (a full disk, storage it cannot reach): the
# machine again, not the student. Cached, a resume after freeing space would never train it again,
# and a few in a row marked the whole run failed (helper-36); its reason goes to the log.
STORAGE = "results storage "  # how n2n.trial words such a failure
STORAGE_FAILED = ("the trial's result could not be saved (a full disk, or storage it cannot reach; n2n.log says "
                  "which); trained again")  # at once, or on resume after a stop (complete)
_UNSAVED = (STORAGE_FAILED, STORAGE_FAILED + " on resume")  # (the second: runs before a storage failure was re-issued)

# With size or latency limits alone, the shrink stage starts from the smallest removal student within
# this many points of the teacher (validation), not from the removal stage's best by reward: removal
# cannot reach a tight limit alone, and its best was then the one wreck inside the limit (3,850
# params at 28%: benchmarks/size_limit.py), from which shrinking only goes down. The shrink stage
# meets the limit; removal keeps what costs little accuracy, as the 1-point search's removal does.
REMOVAL_KEEP_DROP = 1.0
EXHAUSTED_EVERY = 20  # asks between looks at whether refine's base has any narrower student left to train
MAX_DEATHS = 2  # a student whose worker died this often in one session is held to have failed (too big?)
DIED_AGAIN = (f"the trial's worker died {MAX_DEATHS} times before it reported (out of memory, a killed process or a "
              f"lost node; tune/'s error.txt says which): held as this student's failure, not tried again")
# On resume such a student is tried again (helper-44: preempted or killed workers on a cluster held good
# students as failures for good, though the stop said "those candidates are trained again"); its record
# then says so, and its deaths count afresh in the new session.
FORGIVEN = (f"the trial's worker died {MAX_DEATHS} times before it reported (out of memory, a killed process or a "
            f"lost node; tune/'s error.txt says which); tried again on resume")
# The same for a result that could not be saved this often (helper-84: re-issued without end, a student
# whose saves always fail, a file too large for `ulimit -f`, stopped every session of the search)
UNSAVED_AGAIN = (f"the trial's result could not be saved {MAX_DEATHS} times (a full disk, storage it cannot reach "
                 f"or a file-size limit; n2n.log says which): held as this student's failure, not tried again")
FORGIVEN_UNSAVED = (f"the trial's result could not be saved {MAX_DEATHS} times (a full disk, storage it cannot reach "
                    f"or a file-size limit; n2n.log says which); tried again on resume")
_FORGIVEN = {DIED_AGAIN: FORGIVEN, UNSAVED_AGAIN: FORGIVEN_UNSAVED}  # held failed -> its record once forgiven
UNUSABLE = "result not usable"  # a reported result n2n refuses (n2n.runfolder.result_problem): none kept
# not the student's: never cached, not counted in a stage's budget, trained again (at once, or on resume)
_WORKER_FAILURES = (*_DEATHS, *_UNSAVED, FORGIVEN, FORGIVEN_UNSAVED)


def _a_result(r: dict) -> bool:
    """Whether a record's trial left a result of its student (one that failed on its own too), not the
    machine's failure, a student held failed for it, or a result n2n could not use."""
    return r["failure"] not in (*_WORKER_FAILURES, *_FORGIVEN) and not str(r["failure"] or "").startswith(UNUSABLE)


def counts(records: list[dict]) -> dict:
    """What a run's records hold: students trained to a result (one held failed for its workers' deaths
    counts, as its stage's budget does), worker deaths (every one), results that could not be saved
    (helper-44: a worker's death was counted as a candidate evaluated)."""
    unsaved = (*_UNSAVED, UNSAVED_AGAIN, FORGIVEN_UNSAVED)
    saved = {r["key"] for r in records if _a_result(r)}
    return {"trained": sum(r["failure"] not in _WORKER_FAILURES for r in records),
            "worker_deaths": sum(r["failure"] in (*_DEATHS, DIED_AGAIN, FORGIVEN) for r in records),
            # results still missing: one trained again since is saved (helper-82: "4 unsaved results" stayed
            # in the last line of a search whose resume had saved all four)
            "storage_failures": len({r["key"] for r in records if r["failure"] in unsaved} - saved)}


def many(n: int, word: str) -> str:
    """'1 candidate', '3 candidates'."""
    return f"{n} {word}{'s' if n != 1 else ''}"


def counted(records: list[dict]) -> str:
    """'12 candidates trained (1 worker death)': counts() in words."""
    n = counts(records)
    extra = [many(v, what) for v, what in ((n["worker_deaths"], "worker death"),
                                           (n["storage_failures"], "unsaved result")) if v]
    return f"{many(n['trained'], 'candidate')} trained" + (f" ({', '.join(extra)})" if extra else "")


class Finalists:
    """The finalist stage's proposer: a fixed list of specs from the earlier stages, each once."""

    def __init__(self, specs: list[StudentSpec]):
        self.specs, self.next, self.pending = [s.to_dict() for s in specs], 0, {}

    @property
    def finished(self) -> bool:
        return self.next >= len(self.specs)

    def ask(self, n: int) -> list[Candidate]:
        out = []
        while len(out) < n and not self.finished:
            self.pending[self.next] = self.specs[self.next]
            out.append(Candidate(self.next, StudentSpec.from_dict(self.specs[self.next])))
            self.next += 1
        return out

    def tell(self, cid: int, reward: float, evaluation=None):
        self.pending.pop(cid, None)

    def state_dict(self) -> dict:
        return {"specs": self.specs, "next": self.next, "pending": sorted(self.pending)}

    def load_state_dict(self, state: dict):
        self.specs, self.next = state["specs"], state["next"]
        self.pending = {cid: self.specs[cid] for cid in state["pending"]}


class SearchDriver:
    def __init__(self, space: SearchSpace, reference: Reference, *, agent: str = "reinforce",
                 stages=("removal", "shrink"), budgets: dict[str, int], seed: int = 0,
                 reward_config: RewardConfig = RewardConfig(), agent_options: dict | None = None,
                 max_asks_per_candidate: int = 50, run_dir: str | Path | None = None,
                 teacher_info: dict | None = None, log=print, finalist_epochs: int = 10, target=None,
                 early_stop: bool = False, run_id: str | None = None, concurrency: int = 1,
                 agent_concurrency: int | None = None):
        self.space, self.reference, self.kind = space, reference, agent
        self.stages, self.budgets, self.seed = list(stages), dict(budgets), seed
        self.reward_config, self.options = reward_config, dict(agent_options or {})
        self.max_asks = max_asks_per_candidate
        self.run_dir = Path(run_dir) if run_dir else None
        self.teacher_info, self.log = teacher_info or {}, log
        self.finalist_epochs, self.target = finalist_epochs, target  # target: n2n.config.TargetConfig or None
        self.early_stop = early_stop  # Tune may stop trials before they save weights (ASHA)
        self.run_id = run_id  # n2n.json's; None in runs made before it existed
        self.concurrency = concurrency  # trials at once, this session: what the advice after deaths offers
        # the run's own (a resume may run another number at once): what TPE's lag is counted in (helper-55:
        # `resume --concurrency 1` changed what it proposed)
        self.agent_concurrency = agent_concurrency or concurrency
        # trials in a row whose worker died, this session (a resume tries again): ABORT_AFTER stop it
        self.deaths_in_a_row, self.stopped_for_deaths = 0, False
        self.stage_idx = 0
        self.base = space.identity()
        self.refine_bases: list[str] = []  # keys of the students refine narrowed, in order
        self.agent = self._make_agent(self.stages[0], self.base)
        self.cache: dict[str, dict] = {}  # spec key -> final metrics
        self.trials: dict[str, dict] = {}  # trial id -> {"stage", "cid", "key"} while in flight
        self.reissue: list[dict] = []  # in flight when an earlier session stopped: issued again first
        self.failed: str | None = None  # why the search stopped early (every candidate failed)
        self.waiters: dict[str, list[int]] = {}  # key in flight -> candidate ids of duplicates
        self.records: list[dict] = []  # one per trained candidate, in completion order
        self.session_from = 0  # records before it are earlier sessions' (deaths count per session)
        self.asks = 0  # candidates asked in this stage (cached ones included)
        self._exhaust_seen = (None, False)  # (what it was seen at, exhausted) of the last _exhausted look
        self.cache_hits = 0
        self.updates_done: dict[str, int] = {}  # policy updates of finished stages
        self.wall_before = 0.0  # wall time of earlier sessions (before a resume)
        self.session_start = time.time()
        self.stage_started = 0.0  # wall_seconds() when the current stage began

    # -- stages ---------------------------------------------------------------------------------
    @property
    def stage(self) -> str | None:
        return self.stages[self.stage_idx] if self.stage_idx < len(self.stages) else None

    def _env(self, stage: str, base: StudentSpec) -> CompressionEnv:
        return CompressionEnv(self.space, evaluator=None, stage=stage, base_spec=base,
                              reward_config=self.reward_config, reference=self.reference)

    def _make_agent(self, stage: str, base: StudentSpec):
        if stage == "finalists":
            return Finalists(self._finalist_specs())
        env = self._env(stage, base)
        options = self.options
        if self.kind == "reinforce" and self.run_dir is not None:
            # the run's own copy of its starting policy; runs record None for a fresh one, and runs
            # from before starting policies existed record nothing: they started fresh too
            options = {**options, "policy": None if options.get("policy") is None else str(self.run_dir / POLICY)}
        if self.kind == "optuna":  # results learned in ask order: the order trials finish in changes nothing
            options = {"concurrency": self.agent_concurrency, **options}
        # a refine that moved on to another base starts its agent from another seed
        seed = self.seed + self.stage_idx + 1000 * max(len(self.refine_bases) - 1, 0) * (stage == "refine")
        return make_agent(self.kind, env, seed=seed, **options)

    def _finalist_specs(self) -> list[StudentSpec]:
        """The finalists (n2n.pick.finalists): the front's smallest within reach of the target, or the
        most accurate within size limits alone."""
        chosen = finalists(self.records, self.budgets.get("finalists", 0), getattr(self.target, "max_accuracy_drop", None),
                           self.reference.accuracy, self.reward_config, target=self.target)
        return [StudentSpec.from_dict(r["spec"]) for r in chosen]

    def _key(self, spec: StudentSpec, stage: str) -> str:
        """Results key: a finalist is the same student distilled longer, a result of its own."""
        key = self.space.key(spec)
        return f"{key}@{self.finalist_epochs}ep" if stage == "finalists" else key

    def trained(self, stage: str) -> int:
        """Candidates of the stage trained to a result (a trial whose worker died has none)."""
        return sum(r["stage"] == stage for r in self._students())

    def _students(self) -> list[dict]:
        """The records of trials that reported: a dead worker's say nothing about its student."""
        return [r for r in self.records if r["failure"] not in _WORKER_FAILURES]

    def deaths(self, key: str, kind: tuple[str, ...] = _DEATHS) -> int:
        """How often `key`'s worker died (`kind`: or its result went unsaved) in this session (a resume
        gives every student a fresh count)."""
        return sum(r["key"] == key and r["failure"] in kind for r in self.records[self.session_from:])

    def _its_own(self, key: str, failure: str) -> bool:
        """Whether `key`'s unsaved results are the student's doing, not the machine's: a file too large
        or a name too long for it, or other results saved since its first failed (helper-85: a full disk
        held the first students failed, at their second try, before the stop for failures in a row, and
        the policy learnt from the disk after all)."""
        if re.search(rf"\[Errno ({errno.EFBIG}|{errno.ENAMETOOLONG})\]", failure):
            return True
        if re.search(rf"\[Errno ({errno.ENOSPC}|{errno.EDQUOT})\]", failure):  # a disk that took smaller results
            return False  # (or got room back) is full all the same (helper-86): never the student's
        mine = self.records[self.session_from:]
        first = next((i for i, r in enumerate(mine) if r["key"] == key and r["failure"] in _UNSAVED), len(mine))
        return any(_a_result(r) and not r.get("cached") for r in mine[first + 1:])  # (cached: written before)

    def forgive_deaths(self) -> None:
        """On resume: the current stage's students held as failures for their workers' deaths are tried
        again, the machine's fault more likely than theirs (a resume follows the stop for deaths in a row,
        or a mended cluster). Once each (helper-45: two students that always kill their worker stopped
        every resume again), and only where retry_dead can issue them (an ended stage's are kept)."""
        self.session_from = len(self.records)
        for r in self._forgivable():
            r["failure"] = _FORGIVEN[r["failure"]]
            self.cache.pop(r["key"], None)
        if self.failed and not self._all_failing():  # it failed only with the students forgiven now
            self.log(f"resuming a search that stopped as failed ({self.failed}): those students are tried again")
            self.failed = None

    def _forgivable(self) -> list[dict]:
        """The current stage's records of students held failed for their workers' deaths (or unsaved results)
        and not yet forgiven."""
        forgiven, out = {r["key"] for r in self.records if r["failure"] in _FORGIVEN.values()}, []
        for r in self.records:
            if r["failure"] in _FORGIVEN and r["stage"] == self.stage and r["key"] not in forgiven:
                out.append(r)
                forgiven.add(r["key"])
        return out

    def retry_dead(self) -> None:
        """On resume (before settle): the current stage's candidates whose worker died, with no result
        since, are issued again first, as many as its budget has room for (their agent was told they
        failed; the budget never counted them). A session re-issues its own at once (complete)."""
        queued = {t["key"] for t in (*self.reissue, *self.trials.values())}
        room = self.budgets.get(self.stage, 0) - self.trained(self.stage) - self.in_flight() if self.stage else 0
        for r in self.records:
            if room <= 0:
                break
            if (r["failure"] in _WORKER_FAILURES and r["stage"] == self.stage and r["key"] not in self.cache
                    and r["key"] not in queued):
                self.reissue.append({"stage": r["stage"], "cid": None, "key": r["key"], "spec": r["spec"]})
                queued.add(r["key"])
                room -= 1

    def in_flight(self) -> int:
        return len(self.trials) + len(self.reissue)

    def _stage_done(self) -> bool:
        s = self.stage
        return (self.trained(s) + self.in_flight() >= self.budgets[s] or self.agent.finished or self._fixed()
                or self.asks > self.max_asks * max(self.budgets[s], 1) or self._exhausted())

    def _exhausted(self) -> bool:
        """Refine's base has no narrower student left untrained, looked at every EXHAUSTED_EVERY asks:
        a policy sure of a few known neighbours was otherwise asked max_asks x budget times first
        (helper-50: 113 s of a default search, 1,008 cached answers, 102 policy updates, nothing trained)."""
        if self.stage != "refine" or not self.asks or self.asks % EXHAUSTED_EVERY:
            return False
        # (helper-52: keyed on asks and the cache alone, a new base after a switch took its predecessor's
        # answer, and a trial that left the flight without a result kept "nothing left")
        seen = (self.asks, len(self.cache), self.in_flight(), self.space.key(self.base))
        if self._exhaust_seen[0] != seen:
            self._exhaust_seen = (seen, not self._untrained(self.base))
        return self._exhaust_seen[1]

    def _fixed(self) -> bool:
        """The stage has nothing to choose (CompressionEnv.fixed): it ends at once instead of asking
        its agent max_asks times for a spec other than its base."""
        return getattr(getattr(self.agent, "env", None), "fixed", False)

    def _count_updates(self, stage: str) -> None:
        """Add the current agent's policy updates to the stage's (refine may have had several agents)."""
        self.updates_done[stage] = self.updates_done.get(stage, 0) + getattr(self.agent, "updates", 0)

    def _untrained(self, base: StudentSpec, limit: int = 4096) -> bool:
        """Whether some student refine could make of `base` (its units narrowed) is valid, not in the
        cache and not in flight (helper-50: with the last one in flight, the driver asked its agent up to
        max_asks x budget times inside one suggest, where no result can come in: 113 s of a default search).
        A space larger than `limit` is taken to have one (the cache holds a few hundred at most)."""
        env = self._env("refine", base)
        choices = [[a for a, ok in enumerate(env.action_mask(u)) if ok] for u in env.active]  # per unit
        if math.prod(len(c) for c in choices) > max(limit, len(self.cache)):
            return True
        known = self.cache.keys() | {t["key"] for t in [*self.trials.values(), *self.reissue]}
        for acts in itertools.product(*choices):
            spec = env.spec_from_actions(dict(zip(env.active, acts)))
            if self.space.key(spec) not in known and env.score(spec)[1]["pending"]:  # valid, never trained
                return True
        return False

    def _next_refine_base(self) -> dict | None:
        """The best student of shrink or refine (by reward) not narrowed yet that has narrower
        students not trained yet: where a refine whose base is exhausted spends the rest of its budget."""
        rows = [r for r in self.records if r["stage"] in ("shrink", "refine") and r["failure"] is None
                and r["reward"] > -1 and r["key"] not in self.refine_bases]
        for r in by_reward(rows, self.reward_config):
            if self._untrained(StudentSpec.from_dict(r["spec"])):
                return r
        return None

    def _advance(self):
        done = self.stage
        stuck = self.asks > self.max_asks * self.budgets[done] or self._exhausted()
        if done == "refine" and self.trained(done) < self.budgets[done] and (stuck or self._fixed()):
            spent = ("nothing is narrower than it" if self._fixed() else "every student narrower than it has been trained already"
                     if not self._untrained(self.base) else "the agent kept proposing known students")
            nxt = self._next_refine_base()
            if nxt is not None:  # the rest of the budget narrows the next best student instead
                self.log(f"stage refine: {spent} ({self.space.describe(self.base)}); narrowing "
                         f"{self.space.describe(StudentSpec.from_dict(nxt['spec']))} next, "
                         f"{many(self.budgets[done] - self.trained(done), 'candidate')} left")
                self._count_updates(done)
                self.refine_bases.append(nxt["key"])
                self.base, self.asks = StudentSpec.from_dict(nxt["spec"]), 0
                self.agent = self._make_agent(done, self.base)
                return
        if self.trained(done) < self.budgets[done]:
            if self._fixed():
                why = {"removal": ("the teacher has no removable units (layers or blocks whose output has their input's "
                                   "shape; in a module of your own, only children of an nn.Sequential or nn.ModuleList that "
                                   "hold layers of their own)"),
                       "shrink": "no unit it keeps can be shrunk",
                       "refine": "every unit the shrink stage's best keeps is already at the smallest ratio it can "
                                 "take: nothing narrower to try"}.get(done, "no unit has a choice")
            elif done == "refine" and (self.asks > self.max_asks * max(self.budgets[done], 1) or self._exhausted()):
                why = (f"it narrowed {len(self.refine_bases)} student(s) until its agent proposed only known ones, "
                       f"and no other shrink or refine student has a narrower one left untrained")
            elif done == "finalists" and len(self.agent.specs) < self.budgets[done]:  # (helper-37: it said
                n = len(self.agent.specs)                                              # "nothing more to propose")
                why = f"{'only ' if n else ''}{many(n, 'candidate')} qualified (n2n.pick.finalists)"
            elif self.asks > self.max_asks * max(self.budgets[done], 1):
                why = "the agent kept proposing known specs"
            else:
                why = "the agent has nothing more to propose"
            self.log(f"stage {done} ended after {self.trained(done)} of {self.budgets[done]} candidates: {why}")
        self._count_updates(done)
        self.stage_idx += 1
        self.asks = 0
        self.stage_started = self.wall_seconds()
        best = self.best(stage=done)
        while self.stage in ("removal", "shrink", "refine"):
            if self.stage == "refine":  # it narrows the shrink stage's best, wherever the stage stood
                best = self.best(stage="shrink")
            if self.budgets[self.stage] == 0:
                why = f"search.{self.stage}_budget is 0"
            elif self.stage == "refine" and best is None:
                # narrowing another stage's best would be an unrestricted shrink under refine's name
                why = "the shrink stage has no valid student to narrow"
            else:
                break
            self.log(f"stage {self.stage} skipped: {why}")
            self.updates_done[self.stage] = 0
            self.stage_idx += 1
        if (done, self.stage) == ("removal", "shrink"):  # after the skips: a skipped shrink says nothing of its start
            best = self._removal_base()
        if best is not None and self.stage not in (None, "finalists"):
            self.base = StudentSpec.from_dict(best["spec"])
            if self.stage == "refine":
                self.refine_bases = [best["key"]]
        self._start_stage()

    def _removal_base(self) -> dict | None:
        """The removal student the shrink stage starts from: the best by reward, or with size or
        latency limits alone one within REMOVAL_KEEP_DROP points of the teacher (validation): the
        most accurate that meets the limits, else the one nearest them; None (the teacher itself)
        where no removal student is within it, as the best by reward is then the wreck the rule is
        for (helper-35). With an accuracy target, where the best by reward is more than REACH points past
        it, the best within that reach, else None."""
        best = self.best(stage="removal")
        limits_alone = self.target is not None and self.target.has_limits() and self.target.max_accuracy_drop is None
        drop = getattr(self.target, "max_accuracy_drop", None)

        def within(points_below: float) -> list[dict]:  # removal's scored students within that many points
            return [r for r in self.records if r["stage"] == "removal" and r["failure"] is None and r["reward"] > -1
                    and within_drop(self.reference.accuracy, r["accuracy"], points_below)]

        if drop is not None and best is not None and not within_drop(self.reference.accuracy, best["accuracy"], drop + REACH):
            # (helper-47: a 4-candidate removal stage's best was 27.9 points below the teacher; shrink and refine
            # only went further down from it, and export shipped it) further than the finalists' longer
            # distillation recovers: shrinking from it could not meet the target. The best within that
            # reach instead (a size miss may outweigh an accuracy one, helper-48), else the teacher itself
            near = within(drop + REACH)
            base = by_reward(near, self.reward_config)[0] if near else None
            # in the size the run compresses, and finalists only where there are (helper-77: params in a
            # FLOPs run, and "the finalists' longer distillation" with finalists.k 0)
            what = ("the teacher itself" if base is None else
                    f"the best removal student within reach of it ({self._size(base)[0]}, val acc {base['accuracy']:.4f})")
            recovers = ("the finalists' longer distillation is given to recover" if self.budgets.get("finalists")
                        else "a briefly distilled student may still recover")
            self.log(f"stage shrink starts from {what}, not from removal's best by reward ({self._size(best)[0]}, "
                     f"val acc {best['accuracy']:.4f}, {(self.reference.accuracy - best['accuracy']) * 100:.2f} "
                     f"points below the teacher: past the target's {points(drop)} by more than the {points(REACH)} "
                     f"{recovers})")
            return base
        if not limits_alone:
            return best
        kept = within(REMOVAL_KEEP_DROP)

        def miss(r):  # how far past the limits, in the quantities they limit (params, FLOPs, latency)
            return self.reward_config.miss(Evaluation.from_dict(r), self.reference)

        inside = [r for r in kept if miss(r) == 0]
        base = (max(inside, key=lambda r: (r["accuracy"], -size_of(r, self.reward_config))) if inside
                else min(kept, key=lambda r: (miss(r), size_of(r, self.reward_config))) if kept else None)
        if base is not best:
            what = (f"the teacher itself (no removal student is within {REMOVAL_KEEP_DROP:g} point of it)" if base is None
                    else f"a removal student within {REMOVAL_KEEP_DROP:g} point of the teacher ({base['params']:,} params, "
                         f"val acc {base['accuracy']:.4f}, {'within' if inside else 'nearest to'} the limits)")
            self.log(f"stage shrink starts from {what}, not from removal's best by reward: with limits alone the "
                     f"shrink stage is the one that meets them")
        return base

    def _start_stage(self):
        if self.stage is None:
            self.log(f"search finished: {counted(self.records)}")
            return
        self.agent = self._make_agent(self.stage, self.base)
        if self.stage == "finalists":
            specs = [self.space.describe(StudentSpec.from_dict(s)) for s in self.agent.specs]
            self.log(f"stage finalists: {many(len(specs), 'candidate')} distilled again for "
                     f"{many(self.finalist_epochs, 'epoch')}: "
                     + "; ".join(specs))
        else:
            self.log(f"stage {self.stage}: starting from {self.space.describe(self.base)}")

    # -- the searcher's two calls ---------------------------------------------------------------
    def suggest(self, trial_id: str):
        before = (self.stage_idx, self.asks, self.in_flight())
        out = self._suggest(trial_id)
        if (self.stage_idx, self.asks, self.in_flight()) != before:
            self.save()
        return out

    def _suggest(self, trial_id: str):
        # candidates of an interrupted session, or whose worker died: same spec, new trial id (unless
        # workers keep dying: then the search stops below, and a resume issues them)
        if self.reissue and self.deaths_in_a_row < ABORT_AFTER:
            t = self.trials[trial_id] = self.reissue.pop(0)
            return self._trial_config(t)
        while True:
            if self.failed:
                return FINISHED
            if self._all_failing():
                if self.in_flight():
                    return None  # those still training may succeed: decide when they are in
                own = self._students()
                what = f"all {len(own)} candidates of the search" if self.stage is None else f"the first {len(own)} candidates all"
                self.failed = f"{what} failed; the first: {own[0]['failure']}"
                held = self._forgivable()
                # (helper-45: such a run was refused on resume, though resume tries those students again), where
                # without them too few failures are left to stop it (helper-48: said of 3 failures and 1 held)
                if held and len(own) - len(held) < ABORT_AFTER:
                    why = HELD_FOR_DEATHS if all(r["failure"] == DIED_AGAIN for r in held) else HELD_FOR_UNSAVED
                    self.failed += f"; {len(held)} of them {why}"
                self.save()  # the search's last line says why (n2n.search._finish)
                return FINISHED
            if self.deaths_in_a_row >= ABORT_AFTER:  # the machine, not the students: stop, resumable
                if self.trials:
                    return None
                if not self.stopped_for_deaths:
                    fewer = " (with `--concurrency 1` for fewer at once)" if self.concurrency > 1 else ""
                    if self.records and self.records[-1]["failure"] in (*_UNSAVED, UNSAVED_AGAIN):
                        self.log(f"stopping: the last {self.deaths_in_a_row} trials could not save their results (a "
                                 f"full disk, or storage they cannot reach: the lines above say which); free space or "
                                 f"mend the storage, then resume: those candidates are trained again")
                    else:
                        self.log(f"stopping: the workers of the last {self.deaths_in_a_row} trials died before they "
                                 f"reported (out of memory, killed, or a lost node; tune/'s error.txt files say which); "
                                 f"free memory or mend the cluster, then resume{fewer}: those candidates are trained again")
                    self.stopped_for_deaths = True
                return FINISHED
            if self.stage is None:
                return FINISHED
            if self._stage_done():
                if self.in_flight():
                    return None  # the next stage starts from this one's best: wait for all of it
                self._advance()
                continue
            cands = self.agent.ask(1)
            if not cands:
                if not self.in_flight():  # no result is coming that could change its mind: the stage is over
                    self._advance()
                    continue
                return None  # waiting for results (e.g. the rest of a REINFORCE batch)
            c = cands[0]
            self.asks += 1
            key = self._key(c.spec, self.stage)
            if key in self.cache:
                self.cache_hits += 1
                self.agent.tell(c.id, self.cache[key]["reward"], Evaluation.from_dict(self.cache[key]))
                continue
            if any(t["key"] == key for t in self.trials.values()):
                self.waiters.setdefault(key, []).append(c.id)
                continue
            self.trials[trial_id] = {"stage": self.stage, "cid": c.id, "key": key, "spec": c.spec.to_dict()}
            return self._trial_config(self.trials[trial_id])

    def complete(self, trial_id: str, metrics: dict | None, error: bool = False):
        """A trial ended. Unknown ids (a restarted trial Tune renamed) are ignored."""
        t = self.trials.pop(trial_id, None)
        if t is None:
            return
        spec = StudentSpec.from_dict(t["spec"])
        problem = None
        if error or not metrics or "accuracy" not in metrics:
            again = self.deaths(t["key"]) + 1 >= MAX_DEATHS
            ev = Evaluation(0.0, self.space.params(spec), self.space.flops(spec), failure=DIED_AGAIN if again else WORKER_DIED)
        elif problem := result_problem(metrics, stored=False):  # trials retrain such a stored result: this one
            # came some other way; failed, not cached (the student may be tried again) and none of it kept
            ev = Evaluation(0.0, self.space.params(spec), self.space.flops(spec), failure=f"{UNUSABLE}: {problem}"[:300])
        elif str(metrics.get("failure") or "").startswith(STORAGE):  # trained, nothing kept: the machine's
            self.log(f"{t['key']}: {metrics['failure']}")                # fault, never the student's
            again = self.deaths(t["key"], _UNSAVED) + 1 >= MAX_DEATHS and self._its_own(t["key"], metrics["failure"])
            ev = Evaluation(0.0, self.space.params(spec), self.space.flops(spec),
                            failure=UNSAVED_AGAIN if again else STORAGE_FAILED)
        else:
            ev = Evaluation.from_dict({**metrics, "failure": metrics.get("failure") or None})
            if ev.failure and not ev.params:  # a trial that raised before measuring: the space knows the size
                ev = dataclasses.replace(ev, params=self.space.params(spec), flops=self.space.flops(spec))
        r = reward(ev, self.reference, self.reward_config)
        m = {**ev.to_dict(), "reward": r, "compression": compression(ev, self.reference, self.reward_config)}
        if ev.failure not in _WORKER_FAILURES and not problem:
            self.cache[t["key"]] = m
        self.deaths_in_a_row = self.deaths_in_a_row + 1 if ev.failure in (*_WORKER_FAILURES, *_FORGIVEN) else 0
        if ev.failure in _WORKER_FAILURES:
            # the machine's failure, not the student's: trained again, at once (within this stage's budget,
            # which never counted it) or, after a stop for failures in a row, first on resume; its agent is
            # told only the result. (helper-82: told a reward of -1 for unsaved results, the policy learnt
            # from the disk, and a resume took another path than the uninterrupted search and exported a
            # student half as small; a re-issue the budget had no room for never trained at all.)
            self.reissue.append(t)
        else:
            for cid in [t["cid"]] + self.waiters.pop(t["key"], []):
                if cid in self.agent.pending:  # always true within a stage; guards a stage switch
                    self.agent.tell(cid, r, ev)
        extra = {k: metrics[k] for k in ("device", "gpus", "node", "started", "ended", "weights_digest")
                 if metrics and k in metrics and not problem}
        rec = {"trial_id": trial_id, "stage": t["stage"], "key": t["key"], "spec": t["spec"],
               "summary": self.space.describe(spec), **m, **extra, "cached": bool(metrics and metrics.get("cached"))}
        self.records.append(rec)
        self._progress(rec)
        self.save()

    def _trial_config(self, t: dict) -> dict:
        out = {"spec": t["spec"], "key": t["key"], "stage": t["stage"]}
        if t["stage"] == "finalists":
            out["epochs"] = self.finalist_epochs
        return out

    def _all_failing(self) -> bool:
        """Every candidate so far failed, and there are enough to stop: ABORT_AFTER of them, or the
        whole search's (a budget under ABORT_AFTER once finished 'successfully' with nothing). Trials
        whose worker died are not counted: the students did not fail, the machine did."""
        own = self._students()
        if not own or any(r["failure"] is None for r in own):
            return False
        return len(own) >= ABORT_AFTER or self.stage is None

    def adopt(self, records: list[dict]):
        """Take in records from candidates.json that this state lacks (it was older, or rebuilt):
        they finish the matching candidates in flight, or fill the cache, so none is trained again.
        Records are never dropped."""
        known = {(r.get("trial_id"), r["key"]) for r in self.records}
        for rec in records:
            if (rec.get("trial_id"), rec["key"]) in known:
                continue
            self.records.append(rec)
            if rec.get("failure") not in _WORKER_FAILURES:  # under today's key: the one the agents' specs get
                key = self.space.current_key(rec["key"], StudentSpec.from_dict(rec["spec"]))
                self.cache.setdefault(key, {k: v for k, v in rec.items() if k in _CACHED})
            # a result finishes the candidate waiting for it; a machine's failure does not (helper-84: told to
            # the agent from an older state's queue, the policy learnt from the disk after all)
            waiting = [t for t in self.reissue if t["key"] == rec["key"] and t["stage"] == rec["stage"]
                       and rec.get("failure") not in _WORKER_FAILURES]
            for t in waiting[:1]:
                self.reissue.remove(t)
                for cid in [t["cid"]] + self.waiters.pop(t["key"], []):
                    if self.stage == t["stage"] and cid in self.agent.pending:
                        self.agent.tell(cid, rec["reward"], Evaluation.from_dict(rec))

    def settle(self):
        """Move past stages whose budget is spent, or that a later stage's records show had ended
        (after a rebuild from records)."""
        while self.stage is not None and not self.failed and not self.in_flight() and (
                self._stage_done() or any(r["stage"] in self.stages[self.stage_idx + 1:] for r in self.records)):
            self._advance()

    def rescore(self) -> str | None:
        """Score again, under this n2n's reward, the records and cached results whose rewards it would
        not give their figures (a run made before the reward changed, e.g. one with size limits alone
        made before a28e39b), so that nothing ranks candidates by two rewards at once; what the
        agent learnt from the old rewards stays. Returns what to tell the user, or None."""
        stale = misscored(self.records, self.reference, self.reward_config)
        if not stale:
            return None
        r, now, _ = stale[0]
        # (helper-91: said of a target edited in n2n.json, it read as a change of n2n alone)
        said = (f"{len(stale)} of {len(self.records)} candidates were scored by another reward than this n2n's under "
                f"the run's reward and target as n2n.json holds them now (e.g. {r['key']}: {r['reward']:.4f} then, "
                f"{now:.4f} now; an earlier n2n's reward, or n2n.json or candidates.json edited since): rescored, so "
                f"that every candidate is ranked by this one")
        for rec, reward_now, compression_now in stale + misscored(list(self.cache.values()), self.reference,
                                                                   self.reward_config):
            # the figures it was scored by first stay in candidates.json (helper-65: only n2n.log kept them)
            rec.setdefault("scored_before", {"reward": rec["reward"], "compression": rec.get("compression")})
            rec.update(reward=reward_now, compression=compression_now)
        return said

    # -- results ----------------------------------------------------------------------------------
    def best(self, stage: str | None = None) -> dict | None:
        """The best record by reward (of `stage`); of equal rewards the smaller, then the more accurate
        (`pick.by_reward`: students of one size within the target tie, a finalist over its 3-epoch figure,
        helper-27; students of one accuracy outside it, whatever their size, helper-91)."""
        rows = [r for r in self.records if r["failure"] is None and r["reward"] > -1 and (stage is None or r["stage"] == stage)]
        return by_reward(rows, self.reward_config)[0] if rows else None

    def agent_updates(self) -> dict[str, int]:
        """Policy updates per stage (REINFORCE; 0 for agents that do not update in batches)."""
        now = {self.stage: self.updates_done.get(self.stage, 0) + getattr(self.agent, "updates", 0)} if self.stage else {}
        return {**self.updates_done, **now}

    def wall_seconds(self) -> float:
        return self.wall_before + time.time() - self.session_start

    def pick(self) -> tuple[dict, str] | tuple[None, None]:
        """The student `n2n export` would write now, and why (n2n.pick): the search's answer."""
        try:
            return choose(self.records, self.target, self.reward_config, self.reference.accuracy, self.early_stop,
                          str(self.run_dir))
        except RunError:  # nothing evaluated successfully (and finished) yet
            return None, None

    def summary(self) -> dict:
        def shown(rec: dict) -> dict:
            out = {k: rec[k] for k in ("spec", "key", "summary", "params", "flops", "accuracy", "reward",
                                       "compression", "stage", "trial_id")}
            out["val_accuracy"] = out.pop("accuracy")
            out["times_smaller"] = round(self.reference.params / rec["params"], 2)
            return out

        pick, why = self.pick()
        top, n = self.best(), counts(self.records)
        return {
            "teacher": {**self.teacher_info, "params": self.reference.params, "flops": self.reference.flops,
                        "val_accuracy": self.reference.accuracy},
            "agent": self.kind, "stage": "failed" if self.failed else self.stage or "done",
            "failure": self.failed,
            # (helper-44: a worker's death counted as a candidate evaluated)
            "candidates_evaluated": n["trained"], "worker_deaths": n["worker_deaths"],
            "storage_failures": n["storage_failures"],
            "candidates_per_stage": {s: self.trained(s) for s in self.stages},
            "cache_hits": self.cache_hits,
            "wall_seconds": round(self.wall_seconds(), 1),
            "agent_updates": self.agent_updates(),
            # "best": the student `n2n export` writes by default (n2n.pick.choose: with an accuracy target
            # the smallest finalist that meets it with target.margin to spare), not merely
            # the highest reward, which a brief distillation's noise can win
            # the nearest where none meets the target, which export writes only by --key: `meets_target`
            # says so to a pipeline (helper-70: only chosen_because's words did; None without a target)
            "best": {**shown(pick), "chosen_because": why,
                     "meets_target": not meets_none(why) if self.target is not None and self.target.is_set() else None}
            if pick else None,
            "best_by_reward": shown(top) if top else None,
        }

    def save(self):
        """State first, then the files people read: the state never lags candidates.json by more
        than the step in progress, and `adopt` covers that step. Records before the summary, so a
        summary that says "done" is never ahead of candidates.json (a resume of a finished run
        writes nothing)."""
        if self.run_dir is None:
            return
        if moved(self.run_dir):
            raise RunError(moved_said(self.run_dir))
        save_state(self.run_dir, self.state_dict())
        write_json(self.run_dir / RECORDS, self.records)
        write_json(self.run_dir / SUMMARY, self.summary())

    def _size(self, rec: dict) -> tuple[str, str]:
        """The size the reward compresses, as text, and how many times smaller (faster) than the teacher."""
        key = self.reward_config.size_key
        if key == "latency_ms":  # against the teacher timed beside it on the same worker
            if not rec.get("latency_ms"):
                return "latency not measured", "?"
            return f"{rec['latency_ms']:.3f} ms", f"{1 / latency_ratio(rec):.1f}x faster"
        ref = self.reference.flops if key == "flops" else self.reference.params
        return f"{rec[key]:,} {'FLOPs' if key == 'flops' else 'params'}", f"{ref / max(rec[key], 1):.2f}x smaller"

    def _limits(self, rec: dict) -> str:
        """What the target limits that the size shown is not (helper-37: a latency-limited search showed
        params only), and whether `rec` is within the limits; "" without limits."""
        t, key = self.target, self.reward_config.size_key
        if t is None or not t.has_limits() or rec.get("failure"):
            return ""
        ms = f"{rec['latency_ms']:.3f} ms" if rec.get("latency_ms") else "latency not measured"
        shown = [f"{rec['params']:,} params" if t.max_params is not None and key != "params" else "",
                 f"{rec['flops']:,} FLOPs" if t.max_flops is not None and key != "flops" else "",
                 ms if t.max_latency_ms is not None and key != "latency_ms" else ""]
        return "".join(f", {s}" for s in shown if s) + f", {'within' if t.within_limits(rec) else 'past'} the limits"

    def _progress(self, rec: dict):
        s = rec["stage"]
        best = self.best()
        size, _ = self._size(rec)
        acc = "" if rec["failure"] else f", val acc {rec['accuracy']:.4f}"  # a failed student was never measured (helper-50)
        # a re-issued trial that found its result stored before an interruption: not one of summary.json's
        # cache_hits (proposals answered from the driver's cache), which "cached" here was taken for (helper-50)
        stored = ", result stored before the interruption"
        line = (f"[{s} {self.trained(s)}/{self._total(s)}] reward {rec['reward']:+.3f} "
                f"({size}{self._limits(rec)}{acc}{stored if rec['cached'] else ''})")
        if best:
            size, times = self._size(best)
            line += f" | best reward {best['reward']:.3f}: {size} ({times}), val acc {best['accuracy']:.4f}"
        if rec["failure"]:
            line += f" | failed: {rec['failure']}"
        self.log(line + " | " + self._timing(s))

    def _total(self, stage: str) -> int:
        """The candidates `stage` trains: its budget, or for finalists those chosen, which may be fewer
        than finalists.k (helper-72: "[finalists 1/5]" of 2; helper-74: and their time left)."""
        return len(self.agent.specs) if stage == "finalists" and isinstance(self.agent, Finalists) else self.budgets[stage]

    def _timing(self, stage: str) -> str:
        """Elapsed wall time, wall time per candidate of this stage, and the stage's time left."""
        now, done = self.wall_seconds(), self.trained(stage)
        if not done:  # no candidate of the stage trained yet (a worker died first): nothing to time by (helper-50)
            return f"{_clock(now)} elapsed"
        per = (now - self.stage_started) / done
        left = per * max(self._total(stage) - done, 0)
        return f"{_clock(now)} elapsed, {per:.1f} s/candidate, ~{_clock(left)} left in {stage}"

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "stage_idx": self.stage_idx, "base": self.base.to_dict(),
                "agent": self.agent.state_dict() if self.stage else None, "cache": self.cache,
                "trials": [*self.reissue, *self.trials.values()], "waiters": self.waiters, "failed": self.failed, "records": self.records, "asks": self.asks,
                "cache_hits": self.cache_hits, "updates_done": self.updates_done, "wall_seconds": self.wall_seconds(),
                "stage_started": self.stage_started, "refine_bases": self.refine_bases, "run_id": self.run_id}

    def _check_state(self, state: dict):
        """The values a state holds are of the types n2n saves (helper-57: a state file edited to hold
        a string where a number was, a stage index past the end or a record without its figures ran
        into tracebacks later in the resume); a ValueError says what is wrong, and the resume falls
        back to the state before, or rebuilds from candidates.json."""
        expected = {"stage_idx": int, "base": dict, "cache": dict, "trials": list, "waiters": dict, "records": list,
                    "asks": int, "cache_hits": int, "updates_done": dict, "wall_seconds": (int, float),
                    "stage_started": (int, float), "failed": (str, type(None)), "refine_bases": (list, type(None))}
        for key, kind in expected.items():
            value = state.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"{key} is {type(value).__name__}, expected {getattr(kind, '__name__', kind)}")
        if not 0 <= state["stage_idx"] <= len(self.stages):
            raise ValueError(f"stage_idx {state['stage_idx']}, expected 0..{len(self.stages)}")
        if state["stage_idx"] < len(self.stages) and not isinstance(state.get("agent"), dict):
            raise ValueError(f"the {self.stages[state['stage_idx']]} stage's agent state is missing")
        for i, r in enumerate(state["records"]):
            problem = record_problem(r)
            if problem:
                raise ValueError(f"record {i} {problem}")

    def load_state_dict(self, state: dict):
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"expected search state version {STATE_VERSION}, got {state.get('version')!r}")
        if None not in (self.run_id, state.get("run_id")) and state["run_id"] != self.run_id:
            # a state file copied from another run: its records and stage are that run's
            raise ValueError(f"it belongs to another run (run id {state['run_id']}, this run's {self.run_id})")
        self._check_state(state)
        self.stage_idx, self.base = state["stage_idx"], StudentSpec.from_dict(state["base"])
        # states from before refine moved on had narrowed one base, the one they record
        self.refine_bases = state.get("refine_bases") or ([self.space.key(self.base)] if self.stage == "refine" else [])
        if self.stage is not None:
            self.agent = self._make_agent(self.stage, self.base)
            self.agent.load_state_dict(state["agent"])
        # trials in flight when the state was saved ran under a Tune experiment that is gone: issue them again
        self.cache, self.trials, self.reissue = state["cache"], {}, list(state["trials"])
        # states saved before a dead worker's candidate was left uncached: trained again on resume
        self.cache = {k: v for k, v in self.cache.items() if v.get("failure") not in _WORKER_FAILURES}
        self.waiters, self.failed = state["waiters"], state["failed"]
        self.records, self.asks, self.cache_hits = state["records"], state["asks"], state["cache_hits"]
        self.updates_done = state["updates_done"]
        self.wall_before, self.session_start = state["wall_seconds"], time.time()
        self.stage_started = state["stage_started"]
