import math
import re
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs
from envs import (INVALID_REWARD, CompressionEnv, Evaluation, ProxyEvaluator, Reference, RewardConfig, demo_space,
                  compression, reward)
from search_spaces import FEATURE_DIM


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_check_env_passes_without_warnings(env_id):
    env = gym.make(env_id).unwrapped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    assert [str(w.message) for w in caught] == []


def test_docstring_table_matches_the_real_spaces():
    env = CompressionEnv()
    doc = CompressionEnv.__doc__
    rows = dict(re.findall(r"^\s*\| (\w+)\s+\| (\S[^|]*?)\s+\|", doc, re.M))
    space = env.observation_space
    assert set(rows) - {"key"} == set(space.spaces)
    assert rows["features"] == "Box(0, 1, (max_units, FEATURE_DIM), f32)"
    f = space["features"]
    assert f.shape == (64, FEATURE_DIM) and f.dtype == np.float32 and f.low.min() == 0 and f.high.max() == 1
    assert rows["valid"] == "MultiBinary(max_units)" and space["valid"].n == 64
    assert rows["index"] == "Discrete(max_units + 1)" and space["index"].n == 65
    d = space["decisions"]
    assert rows["decisions"].startswith("Box(-1, 1, (max_units,), f32)")
    assert d.shape == (64,) and d.low.min() == -1 and d.high.max() == 1 and d.dtype == np.float32
    assert "Discrete(2)" in doc and env.action_space == gym.spaces.Discrete(2)
    shrink = CompressionEnv(stage="shrink")
    assert "Discrete(len(space.ratios))" in doc and shrink.action_space.n == len(shrink.space.ratios)


def test_reward_matches_hand_computed_values():
    ref = Reference(params=1000, flops=5000, accuracy=0.8)
    ev = Evaluation(accuracy=0.6, params=250, flops=1000)
    # C = 0.75, C(2-C) = 0.9375, acc ratio = 0.75
    assert reward(ev, ref) == pytest.approx(0.703125)
    # on FLOPs: C = 0.8, C(2-C) = 0.96
    assert reward(ev, ref, RewardConfig(compression="flops")) == pytest.approx(0.72)
    assert reward(Evaluation(0.9, 1000, 10), ref) == INVALID_REWARD  # no compression
    assert reward(Evaluation(0.9, 100, 10, failure="loss became nan"), ref) == INVALID_REWARD
    assert reward(Evaluation(math.nan, 100, 10), ref) == INVALID_REWARD
    assert reward(ev, ref, RewardConfig(max_params=200)) == INVALID_REWARD
    assert reward(ev, ref, RewardConfig(max_params=300, min_accuracy=0.5)) == pytest.approx(0.703125)
    assert reward(ev, ref, RewardConfig(min_accuracy=0.7)) == INVALID_REWARD
    with pytest.raises(ValueError, match="expected 'params', 'flops' or 'latency', got 'macs'"):
        RewardConfig(compression="macs")


def _play(env, actions):
    obs, info = env.reset(seed=0)
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
    assert term and not trunc
    return obs, r, info


def test_masked_actions_are_never_applied():
    env = CompressionEnv()
    fixed = [i for i, u in enumerate(env.space.units) if not u.removable]
    assert fixed, "the demo teacher has fixed units (its output layer)"
    obs, info = env.reset()
    seen_masks = []
    for i in range(env.space.n_units):
        assert obs["index"] == i
        seen_masks.append(info["action_mask"].tolist())
        obs, r, term, _, info = env.step(1)  # try to remove everything
        assert info["applied_action"] == (0 if i in fixed else 1)
    assert all(m == [1, 0] for i, m in enumerate(seen_masks) if i in fixed)
    assert set(info["spec"].removed).isdisjoint(fixed)


def test_invalid_spec_gets_minus_one_without_evaluation():
    space = demo_space()
    proxy = ProxyEvaluator(space)
    env = CompressionEnv(space, evaluator=proxy)
    convs = [i for i, u in enumerate(space.units) if u.kind == "conv"]
    _, r, info = _play(env, [1 if i in convs else 0 for i in range(space.n_units)])
    assert r == INVALID_REWARD and "every conv" in info["reason"] and proxy.calls == 0
    _, r, info = _play(env, [0] * space.n_units)  # identity: not smaller than the teacher
    assert r == INVALID_REWARD and "not smaller" in info["reason"] and proxy.calls == 0


def test_terminal_reward_is_the_reward_function_of_the_evaluation():
    space = demo_space()
    env = CompressionEnv(space, evaluator=ProxyEvaluator(space), stage="shrink")
    half = space.ratios.index(0.5)
    obs, r, info = _play(env, [half] * space.n_units)
    ev = info["evaluation"]
    assert ev.params == space.params(info["spec"]) < space.teacher_params()
    assert r == pytest.approx(reward(ev, env.reference))
    assert 0 < r < 1
    assert obs["index"] == space.n_units and (obs["decisions"][: space.n_units] > 0).all()


def test_intermediate_rewards_are_zero_and_deferred_reward_is_nan():
    space = demo_space()
    env = CompressionEnv(space, evaluator=None, stage="shrink")
    env.reset()
    rewards = []
    for _ in range(space.n_units):
        _, r, term, _, info = env.step(space.ratios.index(0.5))
        rewards.append(r)
    assert rewards[:-1] == [0.0] * (space.n_units - 1)
    assert math.isnan(rewards[-1]) and info["pending"] and info["spec"].ratios[0] == 0.5
    with pytest.raises(RuntimeError, match="finished episode"):
        env.step(0)


def test_shrink_stage_starts_from_the_base_and_skips_its_removed_units():
    space = demo_space()
    removed = (ProxyEvaluator(space).best_removal()[0],)
    base = space.identity().with_removed(removed)
    env = CompressionEnv(space, evaluator=None, stage="shrink", base_spec=base)
    obs, _ = env.reset()
    assert obs["valid"][: space.n_units].tolist() == [0 if i in removed else 1 for i in range(space.n_units)]
    assert len(env.active) == space.n_units - 1
    _, _, info = _play(env, [space.ratios.index(0.8)] * len(env.active))
    assert info["spec"].removed == removed
    with pytest.raises(ValueError, match="base_spec is invalid"):
        CompressionEnv(space, stage="shrink", base_spec=space.identity().with_removed([space.n_units - 1]))


def test_refine_stage_only_narrows_its_base():
    space = demo_space()
    half, quarter = space.ratios.index(0.5), space.ratios.index(0.25)
    shrinkable = [i for i, u in enumerate(space.units) if u.shrinkable]
    base = space.identity().with_ratios([0.5 if i == shrinkable[0] else 1.0 for i in range(space.n_units)])
    env = CompressionEnv(space, evaluator=None, stage="refine", base_spec=base)
    assert env.kind == "shrink" and env.action_space.n == len(space.ratios)
    # the unit at 0.5 may take 0.25 or stay; the others anything up to 1.0; fixed units only 1.0
    allowed = {u: [space.ratios[a] for a in np.flatnonzero(env.action_mask(u))] for u in env.active}
    assert allowed[shrinkable[0]] == [0.25, 0.5]
    assert all(allowed[u] == list(space.ratios) for u in shrinkable[1:])
    assert all(allowed[u] == [1.0] for u in env.active if u not in shrinkable)
    # a wider ratio than the base's is masked: the unit keeps the base's, never widens
    obs, _, info = _play(env, [space.ratios.index(1.0)] * len(env.active))
    assert info["spec"] == base and env.default_action(shrinkable[0]) == half
    _, _, info = _play(env, [quarter] * len(env.active))
    assert info["spec"].ratios == tuple(0.25 if u in shrinkable else 1.0 for u in range(space.n_units))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(CompressionEnv(space, stage="refine", base_spec=base), skip_render_check=True)
    assert [str(w.message) for w in caught] == []
    with pytest.raises(ValueError, match="expected one of \\['removal', 'shrink', 'refine'\\], got 'grow'"):
        CompressionEnv(space, stage="grow")


def test_proxy_evaluator_has_a_known_best_region():
    space = demo_space()
    proxy = ProxyEvaluator(space)
    ref = Reference(space.teacher_params(), space.flops(space.identity()), proxy.ref_accuracy)
    best = space.identity().with_removed(proxy.best_removal())
    r_best = reward(proxy(best), ref)
    essential = [i for i, u in enumerate(space.units) if u.removable and i not in proxy.best_removal()]
    worse = best.with_removed(best.removed + (essential[0],))
    assert r_best > reward(proxy(worse), ref)
    assert ProxyEvaluator(demo_space())(best) == proxy(best)  # deterministic: a fresh teacher and proxy agree


def test_a_teacher_with_more_than_64_units_sizes_the_observation():
    """BERT-large has 72 units; a fixed max_units=64 made it unsearchable (with a misleading message)."""
    import torch

    from search_spaces import SequentialSpace, layers_to_module

    layers = [{"kind": "flatten"}]
    for _ in range(70):
        layers += [{"kind": "linear", "in": 4, "out": 4, "bias": True}, {"kind": "act", "fn": "relu"}]
    layers.append({"kind": "linear", "in": 4, "out": 2, "bias": True})
    space = SequentialSpace(layers_to_module(layers), (4,))
    assert space.n_units == 71
    env = CompressionEnv(space, evaluator=None, stage="removal")
    assert env.observation_space["features"].shape[0] == 71 and env.observation_space["index"].n == 72
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    before = torch.random.get_rng_state()
    from agents import make_agent

    make_agent("reinforce", env, seed=3)  # seeds its policy without reseeding the process
    space.build(space.identity(), inherit=False, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_target_reward_on_hand_computed_cases():
    """Inside an accuracy target: 0.5 + 0.5 C, so the smaller wins; outside: 0.5 / (1 + miss) < 0.5.
    Size limits alone: inside 0.5 + 0.5 accuracy, so the more accurate wins; outside 0.5 accuracy /
    (1 + miss) < 0.5."""
    ref = Reference(params=1000, flops=5000, accuracy=0.90)
    cfg = RewardConfig(kind="target", target_drop=1.0, target_params=200)
    inside = Evaluation(0.895, 100, 10)  # 0.5 points down, 100 params: C = 0.9
    assert reward(inside, ref, cfg) == pytest.approx(0.5 + 0.5 * 0.9)
    assert reward(Evaluation(0.895, 200, 10), ref, cfg) == pytest.approx(0.5 + 0.5 * 0.8)  # bigger: less
    too_inaccurate = Evaluation(0.87, 100, 10)  # 3 points down: 2 over a 1-point allowance
    assert reward(too_inaccurate, ref, cfg) == pytest.approx(0.5 / (1 + 2.0))
    too_big = Evaluation(0.90, 800, 10)  # 4x the allowed size: log2 4 = 2
    assert reward(too_big, ref, cfg) == pytest.approx(0.5 / (1 + 2.0))
    both = Evaluation(0.88, 400, 10)  # 1 point over, 2x over
    assert reward(both, ref, cfg) == pytest.approx(0.5 / (1 + 1.0 + 1.0))
    assert reward(Evaluation(0.99, 1000, 10), ref, cfg) == INVALID_REWARD  # not smaller than the teacher
    flops = RewardConfig(kind="target", compression="flops", target_flops=1000)
    # "the most accurate student under 1000 FLOPs": accuracy decides inside the limit, not size (it
    # had been 0.5 + 0.5 C there too, so a search with size limits alone sought the tiniest student at
    # any accuracy, and export shipped the smallest finalist under the limit)
    assert reward(Evaluation(0.5, 999, 500), ref, flops) == pytest.approx(0.5 + 0.5 * 0.5)
    assert reward(Evaluation(0.8, 999, 900), ref, flops) == pytest.approx(0.5 + 0.5 * 0.8)
    assert reward(Evaluation(0.9, 999, 2000), ref, flops) == pytest.approx(0.5 * 0.9 / (1 + 1.0))  # 2x over
    # outside, of two equally far past the limit the more accurate scores more
    assert reward(Evaluation(0.9, 999, 2000), ref, flops) > reward(Evaluation(0.3, 999, 2000), ref, flops)
    with pytest.raises(ValueError, match="expected a target"):
        RewardConfig(kind="target")


def test_a_student_exactly_at_the_allowed_drop_meets_the_target():
    """Accuracies are float32 means of counts: 1402/1500 and 15 samples fewer is exactly 1 point, but
    the float32 figures differ by 1.000005 points. Judged literally it missed: reward 0.5 instead of
    0.5 + 0.5 C, and export would pass it over."""
    from n2n.config import TargetConfig

    hits = lambda k: (torch.arange(1500) < k).float().mean().item()  # noqa: E731 (as a trial measures it)
    teacher, student = hits(1402), hits(1387)
    assert (teacher - student) * 100 > 1.0  # the float32 artefact this test is about
    ref = Reference(params=1000, flops=5000, accuracy=teacher)
    cfg = RewardConfig(kind="target", target_drop=1.0)
    assert reward(Evaluation(student, 100, 10), ref, cfg) == pytest.approx(0.5 + 0.5 * 0.9)
    assert TargetConfig(max_accuracy_drop=1.0).met_by({"accuracy": student, "params": 100, "flops": 10}, teacher)
    one_more = hits(1386)  # 16 samples below: 1.07 points, a miss by 0.07 of the allowed point
    assert reward(Evaluation(one_more, 100, 10), ref, cfg) == pytest.approx(0.5 / (1 + (teacher - one_more) * 100 - 1.0))
    assert not TargetConfig(max_accuracy_drop=1.0).met_by({"accuracy": one_more, "params": 100, "flops": 10}, teacher)


def test_latency_reward_uses_the_teacher_timed_beside_the_student():
    ref = Reference(params=1000, flops=5000, accuracy=0.90)
    n2n = RewardConfig(compression="latency")
    ev = Evaluation(0.90, 500, 100, latency_ms=2.0, teacher_latency_ms=8.0)  # C = 1 - 2/8 = 0.75
    assert compression(ev, ref, n2n) == pytest.approx(0.75)
    assert reward(ev, ref, n2n) == pytest.approx(0.75 * 1.25 * 1.0)
    # no measurement (a failed trial): no compression, so -1; slower than the teacher: -1
    assert reward(Evaluation(0.90, 500, 100), ref, n2n) == INVALID_REWARD
    assert reward(Evaluation(0.90, 500, 100, latency_ms=9.0, teacher_latency_ms=8.0), ref, n2n) == INVALID_REWARD
    target = RewardConfig(kind="target", compression="latency", target_latency_ms=1.0)
    assert reward(ev, ref, target) == pytest.approx(0.5 * 0.9 / (1 + 1.0))  # 2x over 1 ms: log2 2 = 1
    fast = Evaluation(0.50, 500, 100, latency_ms=0.5, teacher_latency_ms=8.0)  # within the limit: accuracy decides
    assert reward(fast, ref, target) == pytest.approx(0.5 + 0.5 * 0.50)
    with_drop = RewardConfig(kind="target", compression="latency", target_latency_ms=1.0, target_drop=50.0)
    assert reward(fast, ref, with_drop) == pytest.approx(0.5 + 0.5 * (1 - 0.5 / 8))  # and the smaller, with a drop
    assert target.size_key == "latency_ms" and RewardConfig().size_key == "params"
