"""The search bookkeeping without Ray: stages, cache, waiting for batches, state round trip."""

import io
import re

import pytest
import torch

from envs import Evaluation, ProxyEvaluator, Reference, RewardConfig, reward
from n2n.driver import FINISHED, SearchDriver
from n2n.models import vgg_layers
from n2n.runfolder import record_problem
from search_spaces import SequentialSpace, StudentSpec, layers_to_module


@pytest.fixture(scope="module")
def space():
    torch.manual_seed(0)
    return SequentialSpace(layers_to_module(vgg_layers((1, 40), 10, "vgg1d", 0.25, 32)), (1, 40))


def _driver(space, **kw):
    ref = Reference(space.teacher_params(), space.flops(space.identity()), 0.95)
    opts = {"agent": "reinforce", "budgets": {"removal": 6, "shrink": 4}, "agent_options": {"batch_size": 3},
            "log": lambda *_: None}
    return SearchDriver(space, ref, **{**opts, **kw})


def _metrics(space, proxy, cfg):
    ev = proxy(StudentSpec.from_dict(cfg["spec"]))
    return ev.to_dict()


def _drive(driver, space, proxy, max_steps=500):
    """Run the driver to the end, completing trials in the order they were suggested."""
    queue, n = [], 0
    for _ in range(max_steps):
        out = driver.suggest(f"t{n}")
        if out == FINISHED:
            return
        if out is None:
            tid, cfg = queue.pop(0)
            driver.complete(tid, _metrics(space, proxy, cfg))
            continue
        queue.append((f"t{n}", out))
        n += 1
    raise AssertionError("the driver never finished")


def test_stages_budgets_and_rewards(space):
    proxy = ProxyEvaluator(space)
    d = _driver(space)
    _drive(d, space, proxy)
    stages = [r["stage"] for r in d.records]
    assert stages == ["removal"] * 6 + ["shrink"] * 4
    best_removal = max(d.records[:6], key=lambda r: r["reward"])
    assert all(r["spec"]["removed"] == best_removal["spec"]["removed"] for r in d.records[6:])
    for r in d.records:
        assert r["reward"] == pytest.approx(reward(proxy(StudentSpec.from_dict(r["spec"])), d.reference))
    assert d.agent_updates() == {"removal": 2, "shrink": 1}  # 6 / 3 and 4 // 3 full batches
    assert d.summary()["best"]["reward"] == max(r["reward"] for r in d.records)


@pytest.mark.parametrize("agent", ["reinforce", "optuna", "random"])
def test_refine_narrows_the_best_shrink_spec(space, agent):
    proxy = ProxyEvaluator(space)
    d = _driver(space, agent=agent, stages=["removal", "shrink", "refine"],
                budgets={"removal": 6, "shrink": 6, "refine": 6}, agent_options={"batch_size": 3} if agent == "reinforce" else {})
    _drive(d, space, proxy)
    assert [r["stage"] for r in d.records] == ["removal"] * 6 + ["shrink"] * 6 + ["refine"] * 6
    base = max(d.records[6:12], key=lambda r: r["reward"])["spec"]
    for r in d.records[12:]:
        assert r["spec"]["removed"] == base["removed"]
        assert all(a <= b for a, b in zip(r["spec"]["ratios"], base["ratios"]))  # never wider than the base
        assert r["spec"]["ratios"] != base["ratios"]  # the base itself is known: never trained again
    if agent == "reinforce":  # refine takes the shrink policy's kind of decision
        assert type(d.agent).__name__ == "ReinforceAgent" and d.agent.env.kind == "shrink"


def test_a_refine_with_nothing_narrower_ends_at_once_and_says_why(space):
    """A shrink stage's best already at the smallest ratio leaves refine only its base (known): the
    stage ends before asking its agent for anything, instead of after max_asks fruitless proposals."""
    said = []
    smallest = StudentSpec((), tuple(min(space.ratios) if u.shrinkable else 1.0 for u in space.units))
    for base, fixed in ((smallest, True), (space.identity(), False)):
        d = _driver(space, agent="random", stages=["refine"], budgets={"refine": 3}, agent_options={}, log=said.append)
        d.base, d.agent = base, d._make_agent("refine", base)
        assert d.agent.env.fixed is fixed
        out = d.suggest("t0")
        if fixed:
            assert out == FINISHED and d.asks == 0 and d.records == []
            assert said[0] == ("stage refine ended after 0 of 3 candidates: every unit the shrink stage's best keeps "
                               "is already at the smallest ratio it can take: nothing narrower to try")
        else:
            assert all(a <= 1.0 for a in out["spec"]["ratios"]) and out["spec"]["ratios"] != list(base.ratios)


def test_a_refine_that_has_trained_every_narrower_student_narrows_the_next_best(space):
    """`make run`'s refine ended after 11 of 20 candidates: the shrink stage's best had 12 narrower
    students (itself included), all trained. The rest of the budget narrows the next best student
    that still has untrained narrower ones; the log says which, and why the stage ends when none has."""
    from n2n.driver import Finalists

    shrinkable = [i for i, u in enumerate(space.units) if u.shrinkable]

    def spec(wider):  # every shrinkable unit at 0.25 but `wider` at 0.5: 2 ** len(wider) narrower students
        return StudentSpec((), tuple((0.5 if i in wider else 0.25) if i in shrinkable else 1.0 for i in range(len(space.units))))

    proxy, said = ProxyEvaluator(space), []
    first, second = spec((0, 1)), spec((10, 11))  # the proxy ranks them so (first reward 0.834, second 0.825)
    d = _driver(space, agent="random", stages=["shrink", "refine"], budgets={"shrink": 2, "refine": 8},
                agent_options={}, max_asks_per_candidate=5, log=said.append)
    d.agent = Finalists([first, second])
    _drive(d, space, proxy)
    refined = [StudentSpec.from_dict(r["spec"]) for r in d.records if r["stage"] == "refine"]
    # first: (0,), (1,) and the narrowest (); then second: (10,) and (11,); then every base is spent
    assert sorted(map(space.key, refined[:3])) == sorted(space.key(spec(w)) for w in ((0,), (1,), ()))
    assert sorted(map(space.key, refined[3:])) == sorted(space.key(spec(w)) for w in ((10,), (11,)))
    assert d.refine_bases == [space.key(first), space.key(second)]
    assert (f"stage refine: every student narrower than it has been trained already ({space.describe(first)}); narrowing "
            f"{space.describe(second)} next, 5 candidates left") in said
    assert ("stage refine ended after 5 of 8 candidates: it narrowed 2 student(s) until its agent proposed only "
            "known ones, and no other shrink or refine student has a narrower one left untrained") in said
    # with the default 50 asks per candidate, an exhausted base is seen within EXHAUSTED_EVERY asks, not after
    # 50 x 8 (helper-50: 1,008 cached answers and 113 s of a default search, nothing trained)
    from n2n.driver import EXHAUSTED_EVERY

    said.clear()
    d = _driver(space, agent="random", stages=["shrink", "refine"], budgets={"shrink": 2, "refine": 8},
                agent_options={}, log=said.append)
    d.agent = Finalists([first, second])
    _drive(d, space, proxy)
    assert d.refine_bases == [space.key(first), space.key(second)] and d.max_asks == 50
    assert d.cache_hits <= 2 * EXHAUSTED_EVERY and len([r for r in d.records if r["stage"] == "refine"]) == 5
    assert "stage refine ended after 5 of 8 candidates: it narrowed 2 student(s) until its agent proposed only " \
           "known ones, and no other shrink or refine student has a narrower one left untrained" in said
    # a resume knows which students refine has narrowed
    again = _driver(space, agent="random", stages=["shrink", "refine"], budgets={"shrink": 2, "refine": 8}, agent_options={})
    state = d.state_dict()
    state.update(stage_idx=1, agent=d._make_agent("refine", second).state_dict(), base=second.to_dict())
    again.load_state_dict(state)
    assert again.refine_bases == d.refine_bases and again._next_refine_base() is None
    del state["refine_bases"]  # a state saved before refine moved on: it had narrowed only its base
    again.load_state_dict(state)
    assert again.refine_bases == [space.key(second)]

    # a best shrink student with nothing narrower (every unit at the smallest ratio) passes the budget on too
    from envs import RewardConfig

    said.clear()
    smallest, wider = spec(()), spec((0, 1))  # within a 50-point target the smallest has the best reward
    d = _driver(space, agent="random", stages=["shrink", "refine"], budgets={"shrink": 2, "refine": 3}, agent_options={},
                max_asks_per_candidate=5, log=said.append, reward_config=RewardConfig(kind="target", target_drop=50.0))
    d.agent = Finalists([smallest, wider])
    _drive(d, space, proxy)
    assert sorted(r["key"] for r in d.records if r["stage"] == "refine") == sorted(space.key(spec(w)) for w in ((0,), (1,)))
    assert (f"stage refine: nothing is narrower than it ({space.describe(smallest)}); narrowing {space.describe(wider)} "
            f"next, 3 candidates left") in said
    assert d.refine_bases == [space.key(smallest), space.key(wider)]


def test_a_refine_with_no_shrink_best_is_skipped_not_run_as_a_shrink(space):
    """helper-16: with every shrink trial failed, refine narrowed the removal stage's best from full
    width, an unrestricted shrink under refine's name. It is skipped, and the log says why."""
    proxy, said = ProxyEvaluator(space), []
    d = _driver(space, stages=["removal", "shrink", "refine"], budgets={"removal": 6, "shrink": 4, "refine": 6},
                log=said.append)
    queue, n = [], 0
    while (out := d.suggest(f"t{n}")) != FINISHED:
        if out is None:
            tid, cfg = queue.pop(0)
            failed = {"accuracy": 0.0, "params": 1, "flops": 1, "failure": "NaN loss"}  # the student's own failure
            d.complete(tid, failed if cfg["stage"] == "shrink" else _metrics(space, proxy, cfg))
        else:
            queue.append((f"t{n}", out))
            n += 1
    assert [r["stage"] for r in d.records] == ["removal"] * 6 + ["shrink"] * 4
    assert "stage refine skipped: the shrink stage has no valid student to narrow" in said
    assert said[-1] == "search finished: 10 candidates trained" and d.agent_updates()["refine"] == 0
    # a refine budget of 0 skips it too, said as such (no "starting from" for a stage that never starts)
    said.clear()
    d = _driver(space, stages=["removal", "shrink", "refine"], budgets={"removal": 3, "shrink": 3, "refine": 0},
                agent_options={"batch_size": 3}, log=said.append)
    _drive(d, space, proxy)
    assert [r["stage"] for r in d.records] == ["removal"] * 3 + ["shrink"] * 3
    assert "stage refine skipped: search.refine_budget is 0" in said and not any("stage refine:" in m for m in said)
    # a shrink budget of 0 does not first say where shrinking would have started (helper-48)
    said.clear()
    d = _driver(space, stages=["removal", "shrink", "refine"], budgets={"removal": 3, "shrink": 0, "refine": 0},
                agent_options={"batch_size": 3}, log=said.append)
    d._removal_base = lambda: said.append("asked where shrink starts")
    _drive(d, space, proxy)
    assert [r["stage"] for r in d.records] == ["removal"] * 3
    assert "stage shrink skipped: search.shrink_budget is 0" in said and "asked where shrink starts" not in said


def test_known_specs_are_not_trained_again(space):
    proxy = ProxyEvaluator(space)
    d = _driver(space, agent="uniform", stages=["shrink"], budgets={"removal": 0, "shrink": 20}, agent_options={})
    _drive(d, space, proxy)
    assert len(d.records) == 6 and d.cache_hits == 0  # one per ratio < 1
    again = _driver(space, agent="uniform", stages=["shrink"], budgets={"removal": 0, "shrink": 20}, agent_options={})
    again.cache = dict(d.cache)
    assert again.suggest("x") == FINISHED  # every proposal answered from the cache
    assert again.cache_hits == 6 and again.records == []


def test_waits_for_the_batch_then_for_the_stage(space):
    d = _driver(space)
    first = [d.suggest(f"t{i}") for i in range(3)]
    assert all(isinstance(c, dict) for c in first)
    assert d.suggest("t3") is None  # REINFORCE needs the batch's results before it samples more
    proxy = ProxyEvaluator(space)
    d.complete("t0", _metrics(space, proxy, first[0]))
    d.complete("ghost", {"accuracy": 0.5})  # an id the driver never issued (a renamed restart) is ignored
    assert len(d.records) == 1


def test_a_resume_under_another_reward_rescores_rather_than_rank_by_two(space):
    """A run made before a change of the reward (size limits alone had ranked by size until
    2026-12-06) holds rewards this n2n would not give: resumed as it was, its candidates would be
    ranked by both rewards at once. Its records and cache are scored again; nothing is lost, the
    rewards they had included."""
    proxy = ProxyEvaluator(space)
    limit = space.teacher_params() // 2
    made = _driver(space, reward_config=RewardConfig(kind="target", target_params=limit))
    _drive(made, space, proxy)
    state = made.state_dict()
    same = _driver(space, reward_config=RewardConfig(kind="target", target_params=limit))
    same.load_state_dict(state)
    assert same.rescore() is None  # the reward it was made with: nothing to say
    other = _driver(space, reward_config=RewardConfig(kind="target", target_params=limit, target_drop=1.0))
    other.load_state_dict(state)
    def now(r):
        return reward(Evaluation.from_dict(r), other.reference, other.reward_config)

    changed = sum(r["reward"] != now(r) for r in other.records)
    assert changed
    before = [dict(r) for r in other.records]
    said = other.rescore()
    assert said.startswith(f"{changed} of {len(other.records)} candidates were scored by another reward than this n2n's "
                           f"under the run's reward and target as n2n.json holds them now (e.g. ")
    assert "; an earlier n2n's reward, or n2n.json or candidates.json edited since): rescored" in said
    assert [r["key"] for r in other.records] == [r["key"] for r in made.records]  # nothing dropped
    assert all(r["reward"] == now(r) for r in [*other.records, *other.cache.values()])
    # the rewards they were scored by first are kept beside (helper-65: only n2n.log kept them)
    for was, rec in zip(before, other.records):
        assert rec.get("scored_before") == ({"reward": was["reward"], "compression": was["compression"]}
                                            if was["reward"] != rec["reward"] else None)
        assert record_problem(rec) is None  # and read back as n2n's own (helper-78: refused as damaged)
    assert other.rescore() is None


def test_with_limits_alone_shrinking_starts_from_an_accurate_removal_student(space):
    """With size limits alone the removal stage's best by reward was its one tiny wreck inside the
    limit (3,850 params at 28% in the benchmark), and the shrink stage could only go down from it: it
    starts from a removal student within 1 point of the teacher (0.95 here): the most accurate within
    the limits, else the nearest them; the teacher itself when none is within the point. With an
    accuracy target, the teacher itself when the best by reward is a wreck."""
    from n2n.config import TargetConfig

    def base(limit, rows, **target):
        d = _driver(space, reward_config=RewardConfig(kind="target", **{f"target_{k.removeprefix('max_')}": v
                                                                          for k, v in target.items()}),
                    target=TargetConfig(max_accuracy_drop=None, **target))
        d.records = [{"stage": "removal", "key": f"r{p}-{f}", "params": p, "flops": f, "accuracy": a, "failure": None,
                      "reward": reward(Evaluation(a, p, f), d.reference, d.reward_config)} for p, f, a in rows]
        return d, d._removal_base()

    teacher = space.teacher_params()  # 51,546
    rows = [(900, 900, 0.28), (40_000, 4_000, 0.945), (30_000, 9_000, 0.942), (20_000, 2_000, 0.93)]
    d, b = base(1000, rows, max_params=1000)
    assert d.best(stage="removal")["params"] == 900  # inside the limit: it outscores every accurate one
    assert b["params"] == 30_000  # none within the point meets the limit: the nearest it
    assert base(1000, rows, max_flops=5000)[1]["params"] == 40_000  # the most accurate within 5,000 FLOPs
    assert base(1000, rows, max_params=35_000)[1]["params"] == 30_000  # and within 35,000 params
    assert base(1000, [r for r in rows if r[2] < 0.94], max_params=1000)[1] is None  # the teacher itself
    assert all(p < teacher for p, _, _ in rows)
    # an accuracy target keeps the best by reward, unless it is more than REACH (2) points past the target
    # (helper-47: a removal wreck 27.9 points below the teacher was shrunk further and exported)
    said = []
    d.target, d.log = TargetConfig(max_accuracy_drop=1.0, max_params=1000), said.append
    d.records = d.records[:1]  # the wreck alone
    d.budgets["finalists"] = 3
    assert d._removal_base() is None
    assert said == ["stage shrink starts from the teacher itself, not from removal's best by reward (900 params, val "
                    "acc 0.2800, 67.00 points below the teacher: past the target's 1 point by more than the 2 points "
                    "the finalists' longer distillation is given to recover)"]
    # helper-77: with finalists.k 0 it spoke of finalists, and in a FLOPs run of params
    said.clear()
    d.budgets["finalists"], d.reward_config = 0, RewardConfig(kind="target", compression="flops", target_drop=1.0)
    assert d._removal_base() is None
    assert said == ["stage shrink starts from the teacher itself, not from removal's best by reward (900 FLOPs, val "
                    "acc 0.2800, 67.00 points below the teacher: past the target's 1 point by more than the 2 points "
                    "a briefly distilled student may still recover)"]
    d.budgets["finalists"], d.reward_config = 3, RewardConfig(kind="target", target_params=1000)
    # one within reach of the target, though past the size limit (which outweighed its accuracy): that one
    d.records.append({"stage": "removal", "key": "near", "params": 45_000, "flops": 9_000, "accuracy": 0.935,
                      "failure": None, "reward": 0.01})
    said.clear()
    assert d._removal_base()["key"] == "near" and said[0].startswith(
        "stage shrink starts from the best removal student within reach of it (45,000 params, val acc 0.9350), not "
        "from removal's best by reward (900 params")
    d.records.pop()
    d.records[0]["accuracy"] = 0.9205  # 2.95 points below: within reach
    assert d._removal_base()["params"] == 900


def test_with_limits_alone_the_shrink_base_survives_a_rebuild_and_a_state_round_trip(space):
    proxy = ProxyEvaluator(space)
    from n2n.config import TargetConfig

    limit = space.teacher_params() // 20
    kw = {"reward_config": RewardConfig(kind="target", target_params=limit),
          "target": TargetConfig(max_accuracy_drop=None, max_params=limit)}
    d = _driver(space, **kw)
    said = []
    d.log = said.append
    _drive(d, space, proxy)
    shrink = [r for r in d.records if r["stage"] == "shrink"]
    expected = d._removal_base()
    start = space.identity() if expected is None else StudentSpec.from_dict(expected["spec"])
    assert list(start.removed) != d.best(stage="removal")["spec"]["removed"]  # the rule, not the best, decided
    assert all(set(r["spec"]["removed"]) == set(start.removed) for r in shrink)
    rebuilt = _driver(space, **kw)
    rebuilt.adopt(d.records)
    rebuilt.settle()
    assert rebuilt.base.removed == d.base.removed
    again = _driver(space, **kw)
    again.load_state_dict(d.state_dict())
    assert again.base.removed == d.base.removed


def test_state_round_trip_mid_batch(space):
    proxy = ProxyEvaluator(space)
    a = _driver(space)
    cfgs = [a.suggest(f"t{i}") for i in range(3)]
    a.complete("t0", _metrics(space, proxy, cfgs[0]))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = _driver(space)
    b.load_state_dict(torch.load(buf, weights_only=True))
    b.complete("t1", _metrics(space, proxy, cfgs[1]))  # the old trial ids went with the old Tune experiment
    assert len(b.records) == 1 and b.in_flight() == 2
    # the candidates in flight are issued again first, under new trial ids, with the same specs
    assert [b.suggest("r1"), b.suggest("r2")] == [cfgs[1], cfgs[2]] and b.in_flight() == 2
    for d, (i1, i2) in ((a, ("t1", "t2")), (b, ("r1", "r2"))):
        d.complete(i1, _metrics(space, proxy, cfgs[1]))
        d.complete(i2, _metrics(space, proxy, cfgs[2]))
    assert a.suggest("t3") == b.suggest("t3")
    assert [r["key"] for r in a.records] == [r["key"] for r in b.records]


def test_a_trial_whose_worker_died_gets_the_invalid_reward_and_is_trained_again_on_resume(space):
    """helper-23: a worker Ray killed for memory was recorded as the student's failure and cached, so
    no resume ever trained that student."""
    from n2n.driver import WORKER_DIED

    d = _driver(space)
    cfg = d.suggest("t0")
    d.complete("t0", None, error=True)
    rec = d.records[0]
    assert rec["reward"] == -1.0 and rec["failure"] == WORKER_DIED and rec["key"] == cfg["key"]
    assert cfg["key"] not in d.cache  # the student is not to blame: not cached
    state = d.state_dict()
    state["cache"][cfg["key"]] = {"failure": "trial raised an error", "reward": -1.0}  # as older runs cached it
    again = _driver(space)
    again.load_state_dict(state)
    again.adopt([{**rec, "trial_id": "earlier", "failure": "trial raised an error"}])  # a record the state lacked
    assert cfg["key"] not in again.cache and len(again.records) == 2


def test_trials_that_could_not_save_are_trained_again_on_resume_not_held_as_failed(space):
    """helper-36: on a full disk a trained student's save failed, the record held the student to have
    failed and cached it, so no resume after freeing space trained it again; three in a row marked the
    whole run failed, which a resume refuses. The machine, not the students: as a worker's death."""
    from n2n.driver import STORAGE_FAILED

    proxy, said = ProxyEvaluator(space), []
    d = _driver(space, log=said.append)
    cfgs = [d.suggest(f"t{i}") for i in range(3)]
    full = "results storage /runs/r/results: [Errno 28] No space left on device"
    for i, cfg in enumerate(cfgs):
        d.complete(f"t{i}", {**_metrics(space, proxy, cfg), "failure": full, "failed": True})
    assert [r["failure"] for r in d.records] == [STORAGE_FAILED] * 3 and all(r["reward"] == -1 for r in d.records)
    assert not set(c["key"] for c in cfgs) & set(d.cache)  # not cached: trained again
    assert d.suggest("t3") == FINISHED and not d.failed and d.summary()["stage"] == "removal"
    assert f"{cfgs[0]['key']}: {full}" in said
    assert said[-1].startswith("stopping: the last 3 trials could not save their results (a full disk, or storage")
    again = _driver(space)
    again.load_state_dict(d.state_dict())
    again.retry_dead()  # on resume, after the disk was freed
    assert [t["key"] for t in again.reissue] == [c["key"] for c in cfgs] and again.deaths(cfgs[0]["key"]) == 0


def test_a_search_resumed_after_unsaved_results_trains_what_the_uninterrupted_one_does(space, tmp_path):
    """helper-82: results that could not be saved were told to the agent as a reward of -1, so the
    policy learnt from the full disk: resumed, the search took another path than the uninterrupted one
    and exported a student half as small, and one re-issue its budget had no room for never trained.
    Now a machine's failure is trained again and its agent hears only the result: the two searches
    train the same students, in the same order, and the last line counts no unsaved result."""
    from n2n.driver import STORAGE_FAILED, counted, counts
    from n2n.search import restore_driver

    def make(run_dir):
        run_dir.mkdir(exist_ok=True)
        return _driver(space, concurrency=2, run_dir=run_dir)

    proxy, full = ProxyEvaluator(space), "results storage /runs/r/results: [Errno 28] No space left on device"
    whole = make(tmp_path / "whole")
    _drive(whole, space, proxy)
    for filled_after in (0, 2):  # the disk fills at once, or after two results
        d, queue, n, done = make(tmp_path / f"cut{filled_after}"), [], 0, 0
        while (out := d.suggest(f"t{n}")) != FINISHED:  # (two at a time, completed in order)
            if out is not None:
                queue.append((f"t{n}", out))
                n += 1
                continue
            tid, cfg = queue.pop(0)
            done += 1
            d.complete(tid, _metrics(space, proxy, cfg) if done <= filled_after
                       else {**_metrics(space, proxy, cfg), "failure": full, "failed": True})
        assert d.stopped_for_deaths and d.stage == "removal" and not any(r["reward"] == -1 and r["failure"] not in (
            STORAGE_FAILED,) for r in d.records)  # (helper-85: none held failed, the agent told nothing)
        assert counts(d.records)["storage_failures"] >= 1 and len(d.agent.pending) + filled_after >= 2
        again = restore_driver(lambda: make(tmp_path / f"cut{filled_after}"), tmp_path / f"cut{filled_after}",
                               log=lambda *_: None)
        _drive(again, space, proxy)
        trained = [r["key"] for r in again.records if r["failure"] is None]
        # the same students (the first batch's in the order their trials were issued again), so the same updates
        first = 3  # (batch_size 3)
        assert sorted(trained[:first]) == sorted(r["key"] for r in whole.records[:first]), filled_after
        assert trained[first:] == [r["key"] for r in whole.records[first:]] and len(trained) == 10, filled_after
        assert counted(again.records) == "10 candidates trained"
        assert again.agent_updates() == whole.agent_updates()


def test_a_student_whose_result_is_never_saved_is_held_failed_and_the_search_ends(space, tmp_path):
    """helper-84: a result that could not be saved was trained again without end, so a student whose
    saves always fail (a file too large for `ulimit -f`) stopped every session of the search. As a
    worker's deaths: held failed after MAX_DEATHS in a session, its agent told, tried once on resume."""
    from n2n.driver import FORGIVEN_UNSAVED, STORAGE_FAILED, UNSAVED_AGAIN, counted
    from n2n.runfolder import HELD_FOR_UNSAVED
    from n2n.search import restore_driver

    def make():
        return _driver(space, run_dir=tmp_path)

    proxy, d, big = ProxyEvaluator(space), make(), "results storage r: [Errno 27] File too large"
    poison, queue, n = None, [], 0
    while (out := d.suggest(f"t{n}")) != FINISHED:
        if out is not None:
            queue.append((f"t{n}", out))
            n += 1
            continue
        tid, cfg = queue.pop(0)
        poison = poison or cfg["key"]
        d.complete(tid, {**_metrics(space, proxy, cfg), "failure": big, "failed": True} if cfg["key"] == poison
                   else _metrics(space, proxy, cfg))
    assert [r["failure"] for r in d.records if r["key"] == poison] == [STORAGE_FAILED, UNSAVED_AGAIN]
    assert d.stage is None and d.trained("removal") == 6 and d.trained("shrink") == 4  # it finished
    assert counted(d.records) == "10 candidates trained (1 unsaved result)"
    again = restore_driver(make, tmp_path, log=lambda *_: None)  # a finished stage's held student stays so
    assert again.stage is None and [r["failure"] for r in again.records if r["key"] == poison][-1] == UNSAVED_AGAIN
    # within the stage (two students too large to save, three failures in a row: the stop), the held
    # student is tried again on resume, with the one that waits
    def shrink():
        return _driver(space, agent="random", stages=["shrink"], budgets={"shrink": 3}, agent_options={},
                       run_dir=tmp_path / "s")

    (tmp_path / "s").mkdir()
    d, keys = shrink(), []
    while isinstance(cfg := d.suggest(f"u{len(keys)}"), dict):
        keys.append(cfg["key"])
        d.complete(f"u{len(keys) - 1}", {**_metrics(space, proxy, cfg), "failure": big, "failed": True})
    assert keys[0] == keys[1] != keys[2] and d.stopped_for_deaths and not d.failed
    assert [r["failure"] for r in d.records] == [STORAGE_FAILED, UNSAVED_AGAIN, STORAGE_FAILED]
    resumed = restore_driver(shrink, tmp_path / "s", log=lambda *_: None)
    assert [r["failure"] for r in resumed.records] == [STORAGE_FAILED, FORGIVEN_UNSAVED, STORAGE_FAILED]
    assert {resumed.suggest("v0")["key"], resumed.suggest("v1")["key"]} == {keys[0], keys[2]}
    from n2n.runfolder import finish_hint  # a search failed with such students held is offered the resume

    assert finish_hint(f"it failed after 3 candidates: x; 1 of them {HELD_FOR_UNSAVED}", tmp_path, "export") == (
        f"`n2n resume {tmp_path}` finishes it")


def test_a_nearly_full_disk_holds_no_student_failed_though_smaller_results_save(space):
    """helper-86: on a nearly full disk smaller results still saved, so a larger student's second ENOSPC
    counted as its own failure: held, its agent told -1, the policy learnt from the disk. A full disk or
    quota is the machine's, whatever saved meanwhile; a file too large for the limit is the student's."""
    from n2n.driver import STORAGE_FAILED, UNSAVED_AGAIN

    for errno_said, held in (("[Errno 28] No space left on device", False), ("[Errno 122] Disk quota exceeded", False),
                             ("[Errno 27] File too large", True)):
        proxy, d = ProxyEvaluator(space), _driver(space, concurrency=2)
        big = d.suggest("t0")
        others = [d.suggest("t1"), d.suggest("t2")]
        d.complete("t0", {**_metrics(space, proxy, big), "failure": f"results storage r: {errno_said}", "failed": True})
        for i, cfg in enumerate(others, 1):
            d.complete(f"t{i}", _metrics(space, proxy, cfg))  # smaller students save
        again = d.suggest("t3")
        assert again["key"] == big["key"]
        d.complete("t3", {**_metrics(space, proxy, big), "failure": f"results storage r: {errno_said}", "failed": True})
        assert d.records[-1]["failure"] == (UNSAVED_AGAIN if held else STORAGE_FAILED), errno_said
        assert (0 in d.agent.pending) is not held  # told -1 only when held


def test_an_older_state_s_unsaved_record_does_not_reach_the_agent(space, tmp_path):
    """helper-84: resumed from the state before (search_state.prev.pt), a record of an unsaved result in
    candidates.json finished the queued candidate: its agent was told -1 after all, and its id dropped."""
    proxy, d = ProxyEvaluator(space), _driver(space, concurrency=2)
    cfgs = [d.suggest(f"t{i}") for i in range(3)]
    older = d.state_dict()
    full = "results storage /runs/r/results: [Errno 28] No space left on device"
    d.complete("t0", {**_metrics(space, proxy, cfgs[0]), "failure": full, "failed": True})
    again = _driver(space, concurrency=2)
    again.load_state_dict(older)
    again.adopt(d.records)
    assert sorted(again.agent.pending) == [0, 1, 2] and [t["cid"] for t in again.reissue] == [0, 1, 2]


def test_a_state_the_machine_will_not_save_stops_the_searcher_not_tune(space, tmp_path, monkeypatch):
    """helper-82: an OSError from the driver's save (a full disk, a run folder made unwritable) was
    raised into Tune, which printed it as a traceback and went on training with nothing saved. The
    searcher keeps it, starts no trial after it, records the trials still running, and n2n.search._fit
    raises it when Tune has stopped (said in one line by the command)."""
    import errno

    from n2n.searcher import N2NSearcher

    proxy, d = ProxyEvaluator(space), _driver(space, run_dir=tmp_path, concurrency=2)
    searcher = N2NSearcher(d)
    first, second = searcher.suggest("t0"), searcher.suggest("t1")
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "search_state.pt"))
    monkeypatch.setattr(d, "save", lambda: (_ for _ in ()).throw(full))
    searcher.on_trial_complete("t0", _metrics(space, proxy, first))  # raised nothing into Tune
    assert searcher.error is full and searcher.suggest("t2") == N2NSearcher.FINISHED and "t2" not in d.trials
    searcher.on_trial_complete("t1", _metrics(space, proxy, second))  # still running: recorded all the same
    assert [r["key"] for r in d.records] == [first["key"], second["key"]] and searcher.error is full


def test_trials_whose_workers_keep_dying_stop_the_search_resumably_not_as_failed(space):
    """Three worker deaths in a row (a machine out of memory) are not three failed students: the
    search stops as interrupted, says why, and a resume (a fresh session) tries again."""
    proxy, said = ProxyEvaluator(space), []
    d = _driver(space, log=said.append, concurrency=2)
    cfgs = [d.suggest(f"t{i}") for i in range(3)]
    for i in range(3):
        d.complete(f"t{i}", None, error=True)
    assert d.suggest("t3") == FINISHED and d.summary()["stage"] == "removal" and not d.failed
    assert said[-1].startswith("stopping: the workers of the last 3 trials died before they reported")
    # fewer at once is offered where it can help: 2 trials ran at once here (helper-29: also at 1)
    assert "then resume (with `--concurrency 1` for fewer at once): those candidates" in said[-1]
    alone = []
    one = _driver(space, log=alone.append)  # one trial at a time: nothing fewer to offer
    for i in range(3):
        one.suggest(f"t{i}")
        one.complete(f"t{i}", None, error=True)
    assert one.suggest("t3") == FINISHED and alone[-1].endswith("then resume: those candidates are trained again")
    assert d.trained("removal") == 0  # the budget never counted them
    again = _driver(space)
    again.load_state_dict(d.state_dict())
    again.retry_dead()  # as n2n.search.restore_driver does on resume
    retried = [again.suggest(f"r{i}") for i in range(3)]
    assert [c["key"] for c in retried] == [c["key"] for c in cfgs]  # the same candidates, first
    for i, c in enumerate(retried):
        again.complete(f"r{i}", _metrics(space, proxy, c))
    assert [r["failure"] for r in again.records[3:]] == [None] * 3 and again.trained("removal") == 3
    assert again.deaths_in_a_row == 0 and all(c["key"] in again.cache for c in cfgs)
    # three students that fail on their own still stop it as failed, with their reason
    d = _driver(space)
    for i in range(3):
        d.suggest(f"t{i}")
    for i in range(3):
        d.complete(f"t{i}", {"accuracy": 0.0, "params": 1, "flops": 1, "failure": "NaN loss"})
    assert d.suggest("t3") == FINISHED and d.summary()["stage"] == "failed" and "NaN loss" in d.failed


def test_a_dead_worker_s_candidate_is_tried_again_at_once_and_blamed_after_two_deaths(space):
    """helper-26: a finalist whose worker died was never trained again (its agent had handed out
    every candidate, so the stage ended, and a resume re-issued only the current stage's); a student
    whose worker always dies re-stopped every resume. Now: again at once, held failed after two deaths."""
    from n2n.driver import DIED_AGAIN, Finalists

    proxy = ProxyEvaluator(space)
    a = StudentSpec((), tuple(0.5 if u.shrinkable else 1.0 for u in space.units))
    b = StudentSpec((), tuple(0.25 if u.shrinkable else 1.0 for u in space.units))
    d = _driver(space, agent="random", stages=["shrink"], budgets={"shrink": 2}, agent_options={})
    d.agent = Finalists([a, b])
    first = [d.suggest("t0"), d.suggest("t1")]
    d.complete("t0", None, error=True)  # a's worker died
    d.complete("t1", _metrics(space, proxy, first[1]))
    again = d.suggest("t2")
    assert again["key"] == first[0]["key"] and d.trained("shrink") == 1  # a, at once; the death not counted
    d.complete("t2", None, error=True)  # died again: the student is held to have failed
    assert d.records[-1]["failure"] == DIED_AGAIN and first[0]["key"] in d.cache
    assert d.suggest("t3") == FINISHED and d.trained("shrink") == 2 and not d.reissue


def test_a_student_held_failed_for_its_worker_deaths_is_tried_again_on_resume(space, tmp_path):
    """helper-44: workers killed on a cluster held a good student as failed for good, though the stop
    said "those candidates are trained again"; the resumed search took another path, and exported a
    student past the target. A resume tries it again, with a fresh count of deaths."""
    from n2n.driver import DIED_AGAIN, FORGIVEN, WORKER_DIED, counted
    from n2n.search import restore_driver

    def make():
        return _driver(space, agent="random", stages=["shrink"], budgets={"shrink": 3}, agent_options={},
                       run_dir=tmp_path)

    proxy, d = ProxyEvaluator(space), make()
    first = d.suggest("t0")
    d.complete("t0", None, error=True)
    assert d.suggest("t1")["key"] == first["key"]  # tried again at once
    d.complete("t1", None, error=True)
    assert [r["failure"] for r in d.records] == [WORKER_DIED, DIED_AGAIN] and first["key"] in d.cache

    again = restore_driver(make, tmp_path, log=lambda *_: None)
    assert [r["failure"] for r in again.records] == [WORKER_DIED, FORGIVEN] and first["key"] not in again.cache
    assert again.trained("shrink") == 0
    out = again.suggest("t2")
    assert out["key"] == first["key"]  # first in line
    again.complete("t2", None, error=True)  # one death in this session: tried again at once, not held
    assert again.records[-1]["failure"] == WORKER_DIED and again.suggest("t3")["key"] == first["key"]
    again.complete("t3", _metrics(space, proxy, out))
    assert again.records[-1]["failure"] is None and again.trained("shrink") == 1
    summary = again.summary()
    assert summary["candidates_evaluated"] == 1 and summary["worker_deaths"] == 3  # (helper-44: deaths counted)
    assert counted(again.records) == "1 candidate trained (3 worker deaths)"


def test_a_student_that_always_kills_its_worker_is_forgiven_once(space, tmp_path):
    """helper-45: forgiven on every resume, a student that always kills its worker stopped every resume
    again. Forgiven once; a finished stage's held student is left as it is (it would not be issued)."""
    from n2n.driver import DIED_AGAIN, FORGIVEN, WORKER_DIED
    from n2n.search import restore_driver

    def make(stages=("shrink",)):
        (tmp_path / "-".join(stages)).mkdir(exist_ok=True)
        return _driver(space, agent="random", stages=list(stages), budgets={"removal": 2, "shrink": 3},
                       agent_options={}, run_dir=tmp_path / "-".join(stages))

    def dies_twice(d, key, ids):
        for tid in ids:
            assert d.suggest(tid)["key"] == key
            d.complete(tid, None, error=True)

    d = make()
    killer = d.suggest("a0")["key"]
    d.complete("a0", None, error=True)
    dies_twice(d, killer, ["a1"])
    d = restore_driver(make, tmp_path / "shrink", log=lambda *_: None)  # forgiven: tried again
    dies_twice(d, killer, ["b0", "b1"])
    d = restore_driver(make, tmp_path / "shrink", log=lambda *_: None)  # not again
    assert [r["failure"] for r in d.records] == [WORKER_DIED, FORGIVEN, WORKER_DIED, DIED_AGAIN]
    assert killer in d.cache and d.suggest("c0")["key"] != killer and d.trained("shrink") == 1

    proxy = ProxyEvaluator(space)
    d = make(("removal", "shrink"))
    held = d.suggest("r0")["key"]
    d.complete("r0", None, error=True)
    dies_twice(d, held, ["r1"])
    other = d.suggest("r2")
    d.complete("r2", _metrics(space, proxy, other))
    assert d.suggest("r3")["stage"] == "shrink"  # removal's budget of 2 spent: its held student counts
    d = restore_driver(lambda: make(("removal", "shrink")), tmp_path / "removal-shrink", log=lambda *_: None)
    assert [r["failure"] for r in d.records if r["key"] == held][-1] == DIED_AGAIN and held in d.cache


def test_a_run_failed_partly_for_worker_deaths_resumes(space, tmp_path):
    """helper-45: a student held failed for its worker's deaths between two that failed on their own
    marked the run failed, and resume refused it, though a resume tries that student again. The failure
    says so, export's hint offers the resume, and the resume goes on with that student first."""
    from n2n.driver import DIED_AGAIN, FORGIVEN
    from n2n.runfolder import finish_hint
    from n2n.search import restore_driver

    said = []

    def make():
        return _driver(space, agent="random", stages=["shrink"], budgets={"shrink": 6}, agent_options={},
                       run_dir=tmp_path, log=said.append)

    proxy, d = ProxyEvaluator(space), make()
    nan = {"accuracy": 0.0, "params": 1, "flops": 1, "failure": "NaN loss"}
    d.suggest("t0")
    d.complete("t0", nan)
    held = d.suggest("t1")["key"]
    d.complete("t1", None, error=True)
    assert d.suggest("t2")["key"] == held
    d.complete("t2", None, error=True)
    d.suggest("t3")
    d.complete("t3", nan)
    assert d.suggest("t4") == FINISHED
    assert [r["failure"] for r in d.records][2:] == [DIED_AGAIN, "NaN loss"]
    assert d.failed == ("the first 3 candidates all failed; the first: NaN loss; 1 of them held failed for worker "
                        "deaths, which `n2n resume` tries again")
    assert finish_hint(f"it failed after 3 candidates: {d.failed}", tmp_path, "export") == f"`n2n resume {tmp_path}` finishes it"
    assert finish_hint("it failed after 3 candidates: NaN loss", tmp_path, "export") == "fix the cause and start a new search"

    said.clear()
    again = restore_driver(make, tmp_path, log=lambda *_: None)
    assert said == [f"resuming a search that stopped as failed ({d.failed}): those students are tried again"]
    assert again.failed is None and again.records[2]["failure"] == FORGIVEN
    out = again.suggest("r0")
    assert out["key"] == held  # first in line
    again.complete("r0", _metrics(space, proxy, out))
    assert again.records[-1]["failure"] is None and again.summary()["stage"] == "shrink"
    # without the forgiven student, two failures of their own are not enough to stop it again
    assert again.suggest("r1") not in (FINISHED, None)
    # three failures of their own besides the held student still stop it for good: not offered a resume
    d = _driver(space, agent="random", stages=["shrink"], budgets={"shrink": 6}, agent_options={}, concurrency=4)
    cfgs = [d.suggest(f"t{i}") for i in range(4)]
    for i in range(3):
        d.complete(f"t{i}", nan)
    d.complete("t3", None, error=True)
    assert d.suggest("t4")["key"] == cfgs[3]["key"]
    d.complete("t4", None, error=True)
    assert d.suggest("t5") == FINISHED and d.records[-1]["failure"] == DIED_AGAIN
    assert d.failed == "the first 4 candidates all failed; the first: NaN loss"


def test_finalists_are_the_front_near_the_target_trained_once_and_survive_a_resume(space, tmp_path):
    """After the stages, k candidates of the Pareto front are distilled longer under keys of their own."""
    from n2n.config import TargetConfig
    from n2n.search import restore_driver

    def make():
        return _driver(space, budgets={"removal": 6, "shrink": 4, "finalists": 2}, run_dir=tmp_path,
                       stages=["removal", "shrink", "finalists"], finalist_epochs=7,
                       target=TargetConfig(max_accuracy_drop=80.0, margin=0.0))  # the smallest within 80

    proxy, trained, issued = ProxyEvaluator(space), [], []
    d = make()
    queue, n = [], 0
    for _ in range(500):  # drive, and "kill" the driver once, right after the first finalist is issued
        out = d.suggest(f"t{n}")
        if out == FINISHED:
            break
        if isinstance(out, dict):
            issued.append(out)
            queue.append((f"t{n}", out))
            n += 1
            if out["stage"] == "finalists" and sum(c["stage"] == "finalists" for c in issued) == 1:
                d, queue = restore_driver(make, tmp_path, log=lambda *_: None), []  # its trial died with it
            continue
        tid, cfg = queue.pop(0)
        trained.append(cfg["key"])
        d.complete(tid, _metrics(space, proxy, cfg))
    finals = [r for r in d.records if r["stage"] == "finalists"]
    assert len(finals) == 2 and all(r["key"].endswith("@7ep") for r in finals)
    assert all(c["epochs"] == 7 for c in issued if c["stage"] == "finalists")
    assert len(trained) == len(set(trained)) == 12  # 6 + 4 + 2, each once, the re-issued finalist included
    earlier = {r["key"]: r for r in d.records if r["stage"] != "finalists"}
    for r in finals:  # each finalist is a student of the earlier stages, on their accuracy/size front
        base = earlier[r["key"][: -len("@7ep")]]
        assert not any(o["params"] <= base["params"] and o["accuracy"] > base["accuracy"] for o in earlier.values())
    # summary.json's "best" is the student export writes (the smallest finalist within 80 points: the
    # proxy's accuracies are low),
    # not the highest reward: the proxy scores a finalist as its earlier twin, which came first
    summary = d.summary()
    meeting = [r for r in finals if (d.reference.accuracy - r["accuracy"]) * 100 <= 80.0]
    assert meeting
    assert summary["best"]["key"] == min(meeting, key=lambda r: r["params"])["key"]
    assert summary["best"]["chosen_because"] == "the smallest finalist that meets the target"
    assert summary["best_by_reward"]["key"] == max(d.records, key=lambda r: r["reward"])["key"] != summary["best"]["key"]


def test_with_early_stopping_the_summary_names_a_candidate_that_finished(space):
    """Tune's ASHA stops trials before they save weights; the last report of such a trial carries no
    "ended". summary.json's best must be one export can write: the best that ran to the end."""
    proxy = ProxyEvaluator(space)
    d = _driver(space, budgets={"removal": 6}, stages=["removal"], early_stop=True)
    for i in range(6):  # REINFORCE asks its batch of 3, then waits (None)
        if d.suggest(f"t{i}") is None:
            break
    for i, (tid, t) in enumerate(list(d.trials.items())):
        m = _metrics(space, proxy, d._trial_config(t))
        d.complete(tid, m if i % 2 else {**m, "ended": 1.0})
    assert len(d.records) == 3
    ended = [r for r in d.records if "ended" in r]
    best = d.summary()["best"]
    assert best["key"] == max(ended, key=lambda r: r["reward"])["key"]
    top = max(d.records, key=lambda r: r["reward"])
    assert d.summary()["best_by_reward"]["key"] == top["key"]
    assert ("stopped early" in best["chosen_because"]) == ("ended" not in top)


@pytest.mark.parametrize("agent", ["random", "optuna", "reinforce", "uniform"])
def test_a_teacher_with_nothing_to_remove_moves_on_and_says_why(agent):
    """A user module with no removable block (helper-11). The random and Optuna agents proposed
    nothing and the driver waited for results with none in flight, a search that never ends. REINFORCE's
    log read "the agent has nothing more to propose"; it now names the teacher's structure."""
    from torch import nn

    from search_spaces import space_for

    class Net(nn.Module):  # no Sequential of same-shape blocks: the generic space has no block to remove
        def __init__(self):
            super().__init__()
            self.hidden, self.head = nn.Linear(40, 32), nn.Linear(32, 10)

        def forward(self, x):  # (B, 1, 40)
            return self.head(torch.relu(self.hidden(x.flatten(1))))

    mlp = space_for(Net().eval(), (1, 40))
    assert not any(u.removable for u in mlp.units) and any(u.shrinkable for u in mlp.units)
    lines = []
    d = _driver(mlp, agent=agent, agent_options={}, log=lines.append)
    _drive(d, mlp, ProxyEvaluator(mlp))
    assert [r["stage"] for r in d.records] == ["shrink"] * 4
    assert "stage removal ended after 0 of 6 candidates: the teacher has no removable units (layers or blocks " \
           "whose output has their input's shape; in a module of your own, only children of an nn.Sequential or " \
           "nn.ModuleList that hold layers of their own)" in lines


def test_progress_names_the_most_accurate_of_equal_best_rewards(space):
    """helper-27: a finalist scored 0.9704, the progress line went on naming its 3-epoch figure
    (0.9630): within the target, students of one size have equal rewards."""
    said = []
    d = _driver(space, log=said.append)
    base = {"failure": None, "reward": 0.98, "params": 2614, "flops": 9120, "cached": False, "key": "k", "spec": {}}
    d.records = [{**base, "stage": "removal", "accuracy": 0.9630}, {**base, "stage": "removal", "accuracy": 0.9704},
                 {**base, "stage": "removal", "accuracy": 0.5, "reward": 0.4}]
    d._progress(d.records[-1])
    assert "| best reward 0.980: 2,614 params (" in said[-1] and "val acc 0.9704 |" in said[-1], said[-1]


def test_an_interrupted_search_names_its_resume_command_whole(space, tmp_path):
    """The command as printed must work: with the factory a module teacher needs (helper-27) and the
    cluster the search ran on (helper-31: the resume ran on this machine instead)."""
    from n2n.search import _finish

    said = []
    _finish(tmp_path / "r", _driver(space), said.append, factories=["pkg.m:f"], address="10.0.0.1:6379")
    assert said == [f"search interrupted; continue it with `n2n resume {tmp_path / 'r'} --address 10.0.0.1:6379 "
                    f"--allow-factory pkg.m:f`"]


def test_a_finished_search_none_of_whose_candidates_meets_the_target_says_export_writes_none_unasked(space, tmp_path):
    """helper-62: export shipped the best by reward, exit 0, and the search's last line named it as
    `n2n export`'s pick; it now names it as the nearest, with the --key that exports it all the same."""
    from n2n.config import TargetConfig
    from n2n.search import _finish

    said = []
    d = _driver(space, agent="random", stages=["shrink"], budgets={"shrink": 3}, agent_options={},
                target=TargetConfig(max_params=1, max_latency_ms=1.0))
    _drive(d, space, ProxyEvaluator(space))
    for r in d.records:  # timed within the latency limit (helper-69: said "not measured", from summary.json's copy)
        r["latency_ms"] = 0.5
    best = max(d.records, key=lambda r: r["reward"])
    _finish(tmp_path / "r", d, said.append)
    assert len(said) == 1
    head, cmd = said[0].split(" -> ")
    misses = d.target.misses(best, d.reference.accuracy)
    assert head == (f"no candidate meets the target, so `n2n export` writes none unasked; the best candidate by reward: "
                    f"{best['params']:,} params ({round(d.reference.params / best['params'], 2)}x smaller, 0.500 ms), val acc "
                    f"{best['accuracy']:.4f} ({'; '.join(misses)})")
    assert f"{best['params']:,} params > 1" in misses and "latency" not in said[0]
    assert d.summary()["best"]["meets_target"] is False  # for a pipeline (helper-70: only in words)
    assert cmd == f"`n2n export {tmp_path / 'r'} --out DIR --key {best['key']}` exports it all the same; `n2n report` " \
                  "lists every candidate"


def test_progress_lines_show_what_the_target_limits(space):
    """helper-37: a FLOPs- or latency-limited search's progress lines showed params only, so nobody could
    see which candidates met the limits while it ran."""
    from n2n.config import TargetConfig

    d = _driver(space, target=TargetConfig(max_accuracy_drop=None, max_flops=1000, max_latency_ms=0.5))
    rec = {"params": 10, "flops": 900, "latency_ms": 0.6, "accuracy": 0.9}
    assert d._limits(rec) == ", 900 FLOPs, 0.600 ms, past the limits"
    assert d._limits({**rec, "latency_ms": 0.4}) == ", 900 FLOPs, 0.400 ms, within the limits"
    assert d._limits({**rec, "latency_ms": None}) == ", 900 FLOPs, latency not measured, past the limits"
    assert _driver(space)._limits(rec) == ""  # no target, or an accuracy target alone: nothing more to show


def test_a_finalist_stage_with_fewer_candidates_than_k_says_why(space):
    """helper-37: it said "the agent has nothing more to propose" where only one candidate qualified."""
    proxy, said = ProxyEvaluator(space), []
    d = _driver(space, agent="random", stages=["shrink", "finalists"], budgets={"shrink": 2, "finalists": 3},
                agent_options={}, log=said.append)
    _drive(d, space, proxy)
    assert [r["stage"] for r in d.records].count("finalists") == 2
    assert "stage finalists ended after 2 of 3 candidates: only 2 candidates qualified (n2n.pick.finalists)" in said
    # each finalist's progress counts among those chosen (helper-72: "[finalists 1/5]" of 2)
    assert [m.split("]")[0] for m in said if m.startswith("[finalists")] == ["[finalists 1/2", "[finalists 2/2"]
    assert any(m.startswith(f"stage finalists: 2 candidates distilled again for {d.finalist_epochs} epochs: ") for m in said)
    said.clear()
    d = _driver(space, agent="random", stages=["shrink", "finalists"], budgets={"shrink": 2, "finalists": 1},
                agent_options={}, log=said.append)
    d.finalist_epochs = 1
    _drive(d, space, proxy)
    assert any(m.startswith("stage finalists: 1 candidate distilled again for 1 epoch: ") for m in said)  # not "1 epochs"


def test_a_size_limit_no_shrunk_student_reaches_is_said_at_the_start(space):
    """helper-47: target.max_params 50 spent the whole budget without a word; export then said no
    candidate met it. The smallest student shrinking alone builds is computed, and a limit below it said."""
    from n2n.config import load_config
    from n2n.search import notes

    smallest = StudentSpec((), tuple(min(space.ratios) if u.shrinkable else 1.0 for u in space.units))
    params, flops = space.params(smallest), space.flops(smallest)
    assert 0 < params < space.teacher_params() and 0 < flops
    cfg = load_config(None, {"target.max_params": params - 1, "target.max_flops": flops})
    assert notes(cfg, space) == [f"note: target.max_params {params - 1:,} is below the smallest student shrinking alone "
                                 f"builds ({params:,} params, every shrinkable unit at ratio {min(space.ratios):g}); only "
                                 f"removing layers goes lower, and the search may find no student within it"]
    cfg = load_config(None, {"target.max_flops": flops - 1, "search.stages": ["shrink"]})
    assert notes(cfg, space) == [f"note: target.max_flops {flops - 1:,} is below the smallest student shrinking alone "
                                 f"builds ({flops:,} FLOPs, every shrinkable unit at ratio {min(space.ratios):g}); "
                                 f"without a removal stage no student this search builds is within it"]
    assert notes(load_config(None, {"target.max_params": params}), space) == []


def test_a_failed_student_shows_no_accuracy_and_no_time_per_candidate_before_any(space):
    """helper-50: a worker death first printed "[removal 0/3] ... val acc 0.0000 ... 18.3 s/candidate":
    an accuracy never measured and a time per candidate out of none."""
    said = []
    d = _driver(space, agent="random", stages=["removal"], budgets={"removal": 3}, agent_options={}, log=said.append)
    d.suggest("t0")
    d.complete("t0", None, error=True)
    line = said[-1]
    assert line.startswith("[removal 0/3] reward -1.000 (") and "val acc" not in line.split(" | ")[0]
    assert "failed: the trial's worker died" in line and re.search(r"\| \d+:\d\d elapsed$", line), line


def test_the_uniform_agent_is_budgeted_one_candidate_per_ratio():
    """helper-50: it said "shrink 30 candidates" and timed 30 to go, then ended after 6."""
    from n2n.config import load_config

    cfg = load_config(None, {"search.agent": "uniform", "search.stages": ["shrink"]})
    assert cfg.budget("shrink") == sum(r < 1 for r in cfg.search.ratios) == 6
    assert load_config(None, {"search.agent": "uniform", "search.stages": ["shrink"], "search.shrink_budget": 4}).budget("shrink") == 4
    assert load_config(None, {}).budget("shrink") == 30


def test_a_result_stored_before_an_interruption_is_said_so_not_cached(space):
    """helper-50: the progress line said "cached" of a re-issued trial's stored result, while
    summary.json's cache_hits (proposals answered from the driver's cache) stayed 0."""
    proxy, said = ProxyEvaluator(space), []
    d = _driver(space, agent="random", stages=["removal"], budgets={"removal": 3}, agent_options={}, log=said.append)
    cfg = d.suggest("t0")
    d.complete("t0", {**_metrics(space, proxy, cfg), "cached": True})
    assert said[-1].split(" | ")[0].endswith(", result stored before the interruption)") and d.cache_hits == 0


def test_refines_look_at_what_is_left_is_not_reused_for_another_base_or_flight(space):
    """helper-52: the memo of "nothing left to narrow" was keyed on asks and the cache alone, so a new
    base reached the same ask count took its predecessor's answer, and a trial that left the flight
    without a result did not clear it."""
    d = _driver(space, agent="random", stages=["shrink", "refine"], budgets={"shrink": 2, "refine": 8}, agent_options={})
    d.stage_idx, looked = 1, []
    assert d.stage == "refine"
    answers = {"a": False, "b": True}  # whether each base has a narrower student left
    d._untrained = lambda base: looked.append(base) or answers[base]
    d.space = type("S", (), {"key": lambda self, spec: spec})()  # bases named by strings here
    d.base, d.asks = "a", 20
    assert d._exhausted() and d._exhausted() and looked == ["a"]  # looked once at one state
    d.base = "b"  # a switch of base at the same count: looked at again
    assert not d._exhausted() and looked == ["a", "b"]
    d.trials["t9"] = {"key": "k"}  # a trial in flight, then gone without a result: looked at again each time
    d.base = "a"
    d._exhausted()
    d.trials.clear()
    d._exhausted()
    assert looked == ["a", "b", "a", "a"]


def _drive_in_order(driver, space, proxy, pick, concurrency, max_steps=5000):
    """Run the driver to the end with `concurrency` trials at once, `pick(n)` saying which of the n
    in flight finishes next (the order trials of other sizes finish in on real workers)."""
    flight, n = [], 0
    for _ in range(max_steps):
        out = driver.suggest(f"t{n}") if len(flight) < concurrency else None
        if out == FINISHED:
            return
        if out is None:
            tid, cfg = flight.pop(pick(len(flight)))
            driver.complete(tid, _metrics(space, proxy, cfg))
            continue
        flight.append((f"t{n}", out))
        n += 1
    raise AssertionError("the driver never finished")


@pytest.mark.parametrize("agent", ["reinforce", "random", "optuna"])
def test_the_order_trials_finish_in_changes_nothing_the_search_finds(space, agent):
    """The README said a search was not reproducible because the order trials finish in shaped
    REINFORCE's batches. A batch is sampled whole and learned from in the order it was sampled, so
    the same seed trains the same students whatever finishes first (refine's next bases included).
    TPE's asks saw whichever trials had finished: it now learns results in ask order, `concurrency`
    asks late (seen failing before: other students from the second order on)."""
    import random

    proxy, found = ProxyEvaluator(space), []
    for pick in (lambda n: 0, lambda n: n - 1, lambda n, r=random.Random(3): r.randrange(n)):
        d = _driver(space, agent=agent, stages=["removal", "shrink", "refine"],
                    budgets={"removal": 20, "shrink": 30, "refine": 20}, concurrency=3,
                    agent_options={"batch_size": 3} if agent == "reinforce" else {})
        _drive_in_order(d, space, proxy, pick, concurrency=3)
        found.append((sorted((r["key"], r["stage"], r["reward"]) for r in d.records), d.summary()["best"]["key"],
                      d.cache_hits))
    assert len(found[0][0]) == 70 and found[0] == found[1] == found[2]


def test_tpe_counts_its_lag_in_the_run_s_own_concurrency_on_a_resume_with_another(space):
    """helper-55: `n2n resume --concurrency 1` gave TPE the session's number, so its lag, and what it
    proposed from then on, changed partway through the search."""
    d = _driver(space, agent="optuna", concurrency=1, agent_concurrency=3, agent_options={})
    assert d.concurrency == 1 and d.agent.concurrency == 3
    assert _driver(space, agent="optuna", concurrency=2, agent_options={}).agent.concurrency == 2
    assert _driver(space, agent="optuna", concurrency=2, agent_options={"concurrency": None}).agent.concurrency is None


def test_a_run_recorded_before_keys_marked_absent_units_trains_none_of_them_again(space):
    """helper-78: keys before 662e342 (2026-11-29) wrote a removed unit as 0, today's as x: a resume
    rebuilt from such a run's candidates.json trained its students again under today's key, and export
    refused every one ("records the spec of ...; was candidates.json changed?")."""
    removable = next(i for i, u in enumerate(space.units) if u.removable)
    spec = StudentSpec((removable,), tuple(0.5 for _ in space.units))
    old = space.legacy_key(spec)
    assert old != space.key(spec) and old == space.key(spec).replace("x", "0")  # the removed unit: 0, not x
    assert space.current_key(old, spec) == space.key(spec)
    assert space.current_key(f"{old}@10ep", spec) == f"{space.key(spec)}@10ep"  # a finalist's
    assert space.current_key(space.key(spec), spec) == space.key(spec)
    other = StudentSpec((), spec.ratios)
    assert space.current_key(old, other) == old  # another student's key is not made this one's
    d = _driver(space)
    rec = {"stage": "removal", "key": old, "spec": spec.to_dict(), "accuracy": 0.9, "params": space.params(spec),
           "flops": space.flops(spec), "failure": None, "reward": 0.5, "compression": 0.5}
    d.adopt([rec])
    assert d.records == [rec] and space.key(spec) in d.cache and old not in d.cache


def test_a_trial_result_not_as_n2n_writes_it_is_a_failed_candidate_not_a_traceback(space):
    """helper-76, helper-79: a result that reached the driver with a string latency or a NaN reward was
    adopted (a TypeError in the reward, or a candidates.json then refused as damaged). Trials retrain
    such stored results (tests/test_safety.py); one arriving some other way is recorded as failed."""
    proxy = ProxyEvaluator(space)
    d = _driver(space)
    out = d.suggest("t0")
    good, t0 = _metrics(space, proxy, out), d.trials["t0"]
    for bad in ({"latency_ms": "fast"}, {"latency_ratio": "x"}, {"reward": float("nan")}, {"weights_digest": "no"},
                {"accuracy": 7}):
        d.trials["t0"] = t0  # the same trial ending again with each result
        d.complete("t0", {**good, **bad, "config": {"spec": out["spec"]}})  # (Tune's own keys beside: fine)
        rec = d.records[-1]
        assert rec["failure"].startswith(f"result not usable: has {next(iter(bad))} ") and rec["reward"] == -1, rec
        assert record_problem(rec) is None and rec["key"] not in d.cache
    d.trials["t0"] = t0
    d.complete("t0", {**good, "config": {"spec": out["spec"]}})
    assert d.records[-1]["failure"] is None and d.records[-1]["accuracy"] == good["accuracy"]
