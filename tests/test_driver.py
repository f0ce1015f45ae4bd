"""The search bookkeeping without Ray: stages, cache, waiting for batches, state round trip."""

import io

import pytest
import torch

from envs import ProxyEvaluator, Reference, reward
from n2n.driver import FINISHED, SearchDriver
from n2n.models import vgg_layers
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


def test_a_failed_trial_gets_the_invalid_reward(space):
    d = _driver(space)
    cfg = d.suggest("t0")
    d.complete("t0", None, error=True)
    rec = d.records[0]
    assert rec["reward"] == -1.0 and rec["failure"] == "trial raised an error"
    assert rec["key"] == cfg["key"]
