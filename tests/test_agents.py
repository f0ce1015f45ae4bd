import io
import json

import numpy as np
import pytest
import torch

from agents import AGENTS, make_agent, run
from envs import CompressionEnv, ProxyEvaluator, Reference, RewardConfig, demo_space, reward
from n2n.models import vgg_layers
from search_spaces import SequentialSpace, layers_to_module


@pytest.fixture(scope="module")
def space():
    torch.manual_seed(0)
    return SequentialSpace(layers_to_module(vgg_layers((1, 40), 10, "vgg1d", 0.25, 32)), (1, 40))


def _env(space, stage, base=None):
    ref = Reference(space.teacher_params(), space.flops(space.identity()), 0.95)
    return CompressionEnv(space, evaluator=None, stage=stage, base_spec=base, reference=ref)


def _roundtrip(state):
    """Through torch.save / torch.load(weights_only=True): plain data and tensors only."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


CASES = [(kind, stage) for kind in sorted(AGENTS) for stage in ("removal", "shrink") if (kind, stage) != ("uniform", "removal")]


@pytest.mark.parametrize("kind,stage", CASES)
class TestAgentConformance:
    def test_candidates_are_valid_new_and_pending(self, space, kind, stage):
        agent = make_agent(kind, _env(space, stage), seed=0)
        cands = agent.ask(4)
        assert 1 <= len(cands) <= 4
        assert len({c.id for c in cands}) == len(cands)
        for c in cands:
            assert space.validate(c.spec) is None and space.params(c.spec) < space.teacher_params()
        assert set(agent.pending) == {c.id for c in cands}
        proxy = ProxyEvaluator(space)
        for c in cands:
            agent.tell(c.id, 0.5, proxy(c.spec))
        with pytest.raises(KeyError, match="not pending"):
            agent.tell(cands[0].id, 0.5)

    def test_rejects_non_finite_rewards(self, space, kind, stage):
        agent = make_agent(kind, _env(space, stage), seed=0)
        c = agent.ask(1)[0]
        for bad in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match="must be finite"):
                agent.tell(c.id, bad)
        assert c.id in agent.pending

    def test_save_load_continue_gives_the_same_proposals(self, space, kind, stage):
        proxy = ProxyEvaluator(space)
        a = make_agent(kind, _env(space, stage), seed=1)
        run(a, proxy, 12, batch=3)
        held = a.ask(2)  # in flight while the state is saved
        state = _roundtrip(a.state_dict())
        b = make_agent(kind, _env(space, stage), seed=1)
        b.load_state_dict(state)
        assert b.pending.keys() == a.pending.keys()
        for agent in (a, b):
            for c in held:
                agent.tell(c.id, 0.3, proxy(c.spec))
        na, nb = a.ask(3), b.ask(3)
        assert [c.spec for c in na] == [c.spec for c in nb] and [c.id for c in na] == [c.id for c in nb]

    def test_state_of_another_agent_is_refused(self, space, kind, stage):
        agent = make_agent(kind, _env(space, stage), seed=0)
        other = "random" if kind != "random" else "optuna"
        with pytest.raises(ValueError, match=f"expected a version-1 state of a {kind} agent"):
            agent.load_state_dict({"agent": other, "version": 1})


def test_agents_need_a_deferred_env():
    with pytest.raises(ValueError, match="evaluator=None"):
        make_agent("random", CompressionEnv())
    with pytest.raises(ValueError, match="expected one of"):
        make_agent("ppo", CompressionEnv(evaluator=None))


@pytest.mark.parametrize("stage", ["removal", "shrink"])
def test_every_policy_parameter_changes_after_an_update(space, stage):
    agent = make_agent("reinforce", _env(space, stage), seed=0, batch_size=4)
    before = {k: v.clone() for k, v in agent.policy.state_dict().items()}
    run(agent, ProxyEvaluator(space), 4, batch=4)
    assert agent.updates == 1
    after = agent.policy.state_dict()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == []


def test_uniform_shrink_proposes_each_ratio_once(space):
    agent = make_agent("uniform", _env(space, "shrink"))
    hist = run(agent, ProxyEvaluator(space), 100)
    assert agent.finished and len(hist) == len(space.ratios) - 1
    for spec, _ in hist:
        shrunk = {r for u, r in zip(space.units, spec.ratios) if u.shrinkable}
        assert len(shrunk) == 1
    assert make_agent("uniform", _env(space, "removal")).finished


def _curve(space, kind, stage, seed, budget=300):
    fresh = {"policy": None} if kind == "reinforce" else {}  # learning from scratch, not from the shipped policy
    r = [x[1] for x in run(make_agent(kind, _env(space, stage), seed=seed, **fresh), ProxyEvaluator(space), budget)]
    return np.mean(r[:30]), np.mean(r[-30:]), max(r)


@pytest.mark.parametrize("stage", ["removal", "shrink"])
def test_reinforce_learns_on_the_proxy_and_matches_random_search(space, stage):
    rl = [_curve(space, "reinforce", stage, s) for s in range(3)]
    rnd = [_curve(space, "random", stage, s) for s in range(3)]
    print(stage, "reinforce (first, last, best):", np.round(rl, 3).tolist(), "random:", np.round(rnd, 3).tolist())
    margin = 0.2 if stage == "removal" else 0.05  # 6 seeds: removal +0.46..+0.62, shrink +0.09..+0.16
    for first, last, _ in rl:
        assert last - first > margin
    assert np.mean([b for *_, b in rl]) >= np.mean([b for *_, b in rnd])


def test_a_search_state_whose_policy_cannot_sample_is_not_loaded(space):
    """helper-97: policy weights of 3e38, finite, made every sample (and every resume) die in
    torch.multinomial; a state carrying them is refused, so a resume falls back to the one before."""
    agent = make_agent("reinforce", _env(space, "shrink"), seed=0)
    state = agent.state_dict()
    state["policy"] = {k: torch.full_like(v, 3e38) for k, v in state["policy"].items()}
    fresh = make_agent("reinforce", _env(space, "shrink"), seed=0)
    with pytest.raises(ValueError, match=r"the search state's policy: expected weights of magnitude at most 1000"):
        fresh.load_state_dict(state)
    with pytest.raises(RuntimeError, match="probability tensor contains either `inf`, `nan`"):  # what it stood between
        fresh.policy.load_state_dict(state["policy"])
        fresh.ask(1)


def test_policy_transfers_to_a_teacher_of_other_depth_and_width(space, tmp_path):
    agent = make_agent("reinforce", _env(space, "removal"), seed=0)
    run(agent, ProxyEvaluator(space), 20)
    agent.save_policy(tmp_path / "policy")
    other = demo_space()  # 9 units instead of 13, other widths
    assert other.n_units != space.n_units
    moved = make_agent("reinforce", _env(other, "removal"), seed=0)
    moved.load_policy(tmp_path / "policy")
    for k, v in agent.policy.state_dict().items():
        assert torch.equal(moved.policy.state_dict()[k], v)
    cands = moved.ask(3)
    assert cands and all(other.validate(c.spec) is None for c in cands)
    shrink = make_agent("reinforce", _env(other, "shrink"), seed=0)
    with pytest.raises(ValueError, match="is for the removal stage"):
        shrink.load_policy(tmp_path / "policy")


def test_stable_baselines3_ppo_drives_the_env(space, tmp_path, monkeypatch):
    from stable_baselines3 import PPO

    monkeypatch.setenv("SB3_LOGDIR", str(tmp_path))  # else SB3 leaves an empty /tmp/SB3-<time> folder per run

    env = CompressionEnv(demo_space(), evaluator="proxy")
    model = PPO("MultiInputPolicy", env, n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    episodes = list(model.ep_info_buffer)  # what PPO saw: every episode one decision per unit, one terminal reward
    assert episodes and {e["l"] for e in episodes} == {len(env.active)} and all(-1 <= e["r"] < 1 for e in episodes)
    obs, info = env.reset()
    done = False
    while not done:
        action, _ = model.predict(obs, deterministic=True)
        obs, r, done, _, info = env.step(int(action))
    if r == -1.0:  # rejected without evaluation, and the env says why
        assert isinstance(info["reason"], str) and "evaluation" not in info
    else:  # the terminal reward is the reward function of the proxy's evaluation
        assert r == pytest.approx(reward(env.evaluator(info["spec"]), env.reference)) and 0 < r < 1


@pytest.mark.parametrize("objective", ["reward", "multi"])
def test_optuna_takes_every_seed_a_config_allows(space, objective):
    """Optuna's samplers seed numpy's RandomState, which takes seeds below 2**32 only: the sampler
    seed (seed * 1_000_003 + asks) passed it from seed 4295 on, and the first ask raised."""
    from n2n import SEED_LIMIT

    proposals = []
    for seed in (5000, SEED_LIMIT - 1):
        agent = make_agent("optuna", _env(space, "shrink"), seed=seed, objective=objective)
        run(agent, ProxyEvaluator(space), 12)
        assert agent.asks == 12
        proposals.append([c.spec.to_dict() for c in agent.ask(2)])
    again = make_agent("optuna", _env(space, "shrink"), seed=5000, objective=objective)
    run(again, ProxyEvaluator(space), 12)
    assert [c.spec.to_dict() for c in again.ask(2)] == proposals[0]  # still seeded by it


@pytest.mark.parametrize("size", ["params", "flops"])
def test_optuna_nsga2_tracks_the_accuracy_size_front(space, size):
    """The front is over the size the reward compresses, relative to the teacher's."""
    env = _env(space, "shrink")
    env.reward_config = RewardConfig(compression=size)
    agent = make_agent("optuna", env, seed=0, objective="multi")
    proxy = ProxyEvaluator(space)
    run(agent, proxy, 30)
    front = agent.best_trials()
    assert front and all(len(t.values) == 2 for t in front)
    teacher = env.reference.params if size == "params" else env.reference.flops
    for t in front:
        spec = env.spec_from_actions(agent._actions(t.params))
        measured = space.params(spec) if size == "params" else space.flops(spec)
        assert t.values[1] == pytest.approx(measured / teacher)  # the size NSGA-II saw is the reward's
        # no point of the front is dominated by another
        assert not any(o.values[0] >= t.values[0] and o.values[1] < t.values[1] for o in front)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_a_policy_sure_of_known_specs_explores_instead_of_ending_the_stage(space, temperature):
    """A 200-candidate search's refine stage ended after 14 of its 57 candidates: the converged policy
    proposed only specs already trained until the driver gave up. After a batch with nothing new,
    sampling is hotter, so the budget the user gave is spent on new students."""
    agent = make_agent("reinforce", _env(space, "shrink"), seed=0, policy=None, lr=1e-9, explore_temperature=temperature)
    with torch.no_grad():  # one ratio (0.5) near certain for every unit: one spec, batch after batch
        agent.policy.head.weight.zero_()
        agent.policy.head.bias.copy_(torch.tensor([0.0, 9.0] + [0.0] * (len(space.ratios) - 2)))
    specs = []
    for _ in range(60):  # as the driver does: a known spec is told its cached reward at once
        (c,) = agent.ask(1)
        specs.append(json.dumps(c.spec.to_dict()))
        agent.tell(c.id, 0.5)
    # at temperature 1 another ratio has probability ~1e-3 per unit: ~1 new spec in 60 proposals; hotter,
    # after the first stale batches (10 proposals each) others appear at ~0.4 per unit
    assert len(set(specs[:10])) == 1  # the first batch, at temperature 1, is the policy's own choice: stale
    if temperature == 1:  # every batch stale, none hotter
        assert len(set(specs)) <= 3 and agent.stale_streak == 6
    else:  # hotter until batches are mostly new again
        assert len(set(specs)) > 10 and agent.stale_streak < 6


@pytest.mark.parametrize("temperature,new_specs", [(1.0, False), (4.0, True)])
def test_a_policy_sure_of_refused_specs_explores_instead_of_giving_up(space, temperature, new_specs):
    """The shipped policy on digits proposed removals the env refused, batch after batch, until its
    removal stage ended with 24 of 30 candidates. After a batch refused whole, sampling is hotter."""
    agent = make_agent("reinforce", _env(space, "removal"), seed=0,
                       policy=None, lr=1e-9, max_invalid_batches=8, explore_temperature=temperature)
    with torch.no_grad():  # "keep every unit" (the teacher itself: refused, not smaller), near certain
        agent.policy.head.weight.zero_()
        agent.policy.head.bias.copy_(torch.tensor([12.0, 0.0]))
    cands = agent.ask(1)
    # at temperature 1 a removal has probability ~6e-6 per unit: batch after batch refused, then it gives
    # up; hotter, removals appear within a few batches (probability ~0.05 per unit at temperature 4)
    assert bool(cands) == new_specs and agent.finished != new_specs
    if new_specs:
        assert cands[0].spec.removed and 1 <= agent.updates < 8


def test_optuna_with_concurrency_learns_in_ask_order_and_keeps_held_results_across_a_save(space):
    """TPE saw whichever trials had finished, so a search was not reproducible. With `concurrency` c
    it learns candidate k's result before the ask of candidate k + 2c, and no sooner: a result that
    comes early is held (and saved with the state), one that is due and missing makes the ask wait."""
    proxy = ProxyEvaluator(space)
    a = make_agent("optuna", _env(space, "shrink"), seed=1, concurrency=1, n_startup_trials=2)
    first = a.ask(1) + a.ask(1)
    assert [c.id for c in first] == [0, 1] and a.ask(1) == []  # candidate 0's result is due for the third ask
    a.tell(1, 0.9, proxy(first[1].spec))  # the later one finishes first: held, not learned
    assert a.ask(1) == [] and set(a.held) == {1}
    b = make_agent("optuna", _env(space, "shrink"), seed=1, concurrency=1, n_startup_trials=2)
    b.load_state_dict(_roundtrip(a.state_dict()))
    assert set(b.held) == {1} and set(b.pending) == {0}
    for agent in (a, b):
        agent.tell(0, 0.5, proxy(first[0].spec))
    third = [agent.ask(1) for agent in (a, b)]
    assert [c.spec for c in third[0]] == [c.spec for c in third[1]] and third[0][0].id == 2
    learned = [t.value for t in a.study.get_trials(deepcopy=False) if t.state.is_finished()]
    assert learned == [0.5] and set(a.held) == {1}  # 0 learned for this ask; 1 is due at the next
    a.ask(1)
    assert [t.value for t in a.study.get_trials(deepcopy=False) if t.state.is_finished()] == [0.5, 0.9]
    c = make_agent("optuna", _env(space, "shrink"), seed=1, concurrency=2)  # 2 at once: 4 asks of slack
    assert [x.id for x in c.ask(1) + c.ask(1) + c.ask(1) + c.ask(1)] == [0, 1, 2, 3] and c.ask(1) == []
