"""Policies fit offline to earlier searches (agents.pretrain) and the shipped pretrained policy."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from agents import make_agent, run
from agents.pretrain import PRETRAINED, episodes, fit
from agents.reinforce import sequence_log_prob
from envs import CompressionEnv, ProxyEvaluator, Reference, RewardConfig, demo_space
from n2n.config import load_config
from n2n.errors import ConfigError
from n2n.models import vgg_layers
from search_spaces import DEFAULT_RATIOS, ResNet, ResNetSpace, SequentialSpace, layers_to_module, resnet_arch

from helpers import randomise_bn

RC = RewardConfig(kind="target", target_drop=5.0)


def _space():
    torch.manual_seed(0)
    return SequentialSpace(layers_to_module(vgg_layers((1, 40), 10, "vgg1d", 0.25, 32)), (1, 40))


def _records(space, proxy, seed=0):
    """What a two-stage search's candidates.json holds, from random searches on the proxy."""
    ref = Reference(space.teacher_params(), space.flops(space.identity()), proxy.ref_accuracy)
    recs, base = [], None
    for stage, budget in (("removal", 30), ("shrink", 40)):
        env = CompressionEnv(space, evaluator=None, stage=stage, reference=ref, reward_config=RC, base_spec=base)
        hist = run(make_agent("random", env, seed=seed), proxy, budget, reward_config=RC)
        recs += [{"stage": stage, "spec": s.to_dict(), "reward": r, "failure": None} for s, r in hist]
        base = max(hist, key=lambda t: t[1])[0]
    return recs


def test_batched_log_prob_equals_what_sampling_drew():
    """The update's teacher-forced, batched log-probabilities are those of the draws (shrink policy)."""
    space = _space()
    agent = make_agent("reinforce", CompressionEnv(space, evaluator=None, stage="shrink"), seed=3)
    rollouts, drawn = [], []
    for _ in range(4):
        state, prev, total = agent.policy.initial_state(), None, 0.0
        r = agent._rollout()
        for t, a in enumerate(r["actions"]):
            with torch.no_grad():
                logits, state = agent.policy.step(agent._feats[t], prev, state)
            mask = torch.tensor(r["masks"][t], dtype=torch.bool)
            total += float(torch.log_softmax(logits.masked_fill(~mask, float("-inf")), -1)[a])
            prev = a
        rollouts.append(r)
        drawn.append(total)
    with torch.no_grad():
        batched, _ = agent.log_prob(rollouts)
    assert batched.shape == (4,)
    assert batched.tolist() == pytest.approx(drawn, abs=1e-5)
    assert len(set(round(x, 4) for x in drawn)) > 1  # four different rollouts, not one repeated


def test_episodes_rebuild_each_candidate_from_its_actions():
    space, proxy = _space(), None
    proxy = ProxyEvaluator(space)
    recs = _records(space, proxy)
    recs.append({**recs[0], "failure": "CUDA out of memory"})  # failed: left out
    recs.append({**recs[1], "reward": -1.0})  # invalid: left out
    for stage in ("removal", "shrink"):
        eps = episodes(space, recs, stage)
        mine = [r for r in recs if r["stage"] == stage and r["failure"] is None and r["reward"] > -1]
        assert len(eps) == len(mine) > 0
        for e, r in zip(eps, mine):
            base = None
            if stage == "shrink":
                from search_spaces import StudentSpec

                spec = StudentSpec.from_dict(r["spec"])
                base = StudentSpec(spec.removed, (1.0,) * space.n_units)
            env = CompressionEnv(space, evaluator=None, stage=stage, base_spec=base)
            assert env.spec_from_actions(dict(zip(env.active, e["actions"]))).to_dict() == r["spec"]
            assert e["feats"].shape == (len(env.active), space.features().shape[1])
            assert e["reward"] == r["reward"]


@pytest.mark.parametrize("stage", ["removal", "shrink"])
def test_fit_raises_the_best_episodes_likelihood_over_the_worst(stage):
    space = _space()
    groups = [episodes(space, _records(space, ProxyEvaluator(space, seed=s), seed=s), stage) for s in range(3)]
    eps = sorted((e for g in groups for e in g), key=lambda e: e["reward"])
    q = len(eps) // 4
    worst, best = eps[:q], eps[-q:]

    def per_unit(policy, chosen):
        with torch.no_grad():
            return float(np.mean([float(sequence_log_prob(policy, e["feats"], [e["actions"]], [e["masks"]])[0][0])
                                  / len(e["actions"]) for e in chosen]))

    before = fit(stage, groups, len(space.ratios), steps=0)
    after = fit(stage, groups, len(space.ratios), steps=150)
    gain_best = per_unit(after, best) - per_unit(before, best)
    gain_worst = per_unit(after, worst) - per_unit(before, worst)
    print(stage, "per-unit log-likelihood gain: best quarter", gain_best, "worst quarter", gain_worst)
    assert gain_best > 0.02
    assert gain_best > gain_worst + 0.02


def _other_teachers():
    torch.manual_seed(0)
    return {"demo (9 units)": demo_space(),
            "vgg11 2D, half width": SequentialSpace(layers_to_module(vgg_layers((3, 32, 32), 10, "vgg11", 0.5, 64)), (3, 32, 32)),
            "resnet": ResNetSpace(randomise_bn(ResNet(resnet_arch((3, 32, 32), 10, "resnet18", 16, True))), (3, 32, 32))}


@pytest.mark.parametrize("name", list(_other_teachers()))
def test_shipped_policy_starts_searches_on_teachers_of_other_depths_and_widths(name):
    space = _other_teachers()[name]
    shipped = json.loads((PRETRAINED / "removal" / "policy.json").read_text())["pretrained"]
    assert shipped["episodes"] > 100
    for stage in ("removal", "shrink"):
        agent = make_agent("reinforce", CompressionEnv(space, evaluator=None, stage=stage), seed=0, policy="pretrained")
        weights = load_file(str(PRETRAINED / stage / "policy.safetensors"))
        assert all(torch.equal(agent.policy.state_dict()[k], v) for k, v in weights.items())
        cands = agent.ask(5)
        assert len(cands) == 5 and all(space.validate(c.spec) is None for c in cands)


def test_shipped_removal_policy_prefers_removing_deep_layers():
    """What the shipped removal policy learned from the MNIST-1D searches: early layers are kept
    more often than deep ones (N2N's finding too), while every choice stays open to exploration."""
    torch.manual_seed(0)
    space = SequentialSpace(layers_to_module(vgg_layers((1, 8, 8), 10, "vgg1d", 1.0, 256)), (1, 8, 8))
    agent = make_agent("reinforce", CompressionEnv(space, evaluator=None, stage="removal"), seed=0, policy="pretrained")
    with torch.no_grad():
        p = torch.softmax(agent.policy(agent._feats), -1)[:, 1]  # (T,) P(remove)
    removable = [i for i, u in enumerate(space.units) if u.removable]
    early, deep = removable[:2], removable[len(removable) // 2:]
    assert float(p[deep].mean()) > float(p[early].mean()) + 0.1
    assert 0.05 < float(p.min()) and float(p.max()) < 0.95


def test_config_refuses_a_policy_that_cannot_start_the_search(tmp_path):
    with pytest.raises(ConfigError, match=r"agent_options.policy: .*nowhere/removal: expected policy.json"):
        load_config(None, {"search.agent_options": {"policy": str(tmp_path / "nowhere")}})
    with pytest.raises(ConfigError, match=r"picks from ratios \[0.25, 0.5, .*this space has \[0.5, 1.0\]"):
        load_config(None, {"search.agent_options": {"policy": "pretrained"}, "search.ratios": [0.5, 1.0]})
    cfg = load_config(None, {"search.agent_options": {"policy": "pretrained"}})
    assert cfg.search.ratios == list(DEFAULT_RATIOS)


def test_the_benchmarks_baseline_variant_is_the_shipped_agent():
    """benchmarks/policy_variants.py's variants with no extra steps reproduce ReinforceAgent exactly,
    so its comparison is against what users run."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    try:
        from policy_variants import VariantReinforce
    finally:
        sys.path.pop(0)
    from agents import ReinforceConfig

    space = _space()
    proxy = ProxyEvaluator(space)
    plain = run(make_agent("reinforce", CompressionEnv(space, evaluator=None, stage="shrink"), seed=1), proxy, 40)
    variant = run(VariantReinforce(CompressionEnv(space, evaluator=None, stage="shrink"), 1, ReinforceConfig()), proxy, 40)
    assert [s for s, _ in plain] == [s for s, _ in variant]


@pytest.mark.ray
def test_policy_fit_command_learns_from_a_run_and_starts_the_next_search(ray_session, tiny_config, tmp_path, capsys,
                                                                        monkeypatch):
    from n2n.cli import main
    from n2n.search import run_search

    first = tmp_path / "runs" / "first"
    run_search(load_config(tiny_config), first, log=lambda *_: None)
    out = tmp_path / "policy"
    assert main(["policy", "fit", str(first), "--out", str(out), "--steps", "20"]) == 0
    for stage in ("removal", "shrink"):
        meta = json.loads((out / stage / "policy.json").read_text())
        assert meta["stage"] == stage and meta["pretrained"]["runs"] == ["first"]
        assert meta["pretrained"]["episodes"] == 6 and meta["pretrained"]["steps"] == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy", "runs", "tiny.yaml"]  # no temp folder left

    # a taken --out is refused, untouched
    before = (out / "removal" / "policy.safetensors").read_bytes()
    assert main(["policy", "fit", str(first), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "removal" / "policy.safetensors").read_bytes() == before
    # a folder that is no run: a clear error, nothing written
    assert main(["policy", "fit", str(tmp_path / "runs"), "--out", str(tmp_path / "p2")]) == 2
    assert not (tmp_path / "p2").exists()

    second = tmp_path / "runs" / "second"
    monkeypatch.chdir(tmp_path)  # a relative policy folder is recorded absolute: resumes may run elsewhere
    cfg = load_config(tiny_config, {"search.agent_options": {"policy": "policy"}})
    summary = run_search(cfg, second, log=lambda *_: None)
    assert summary["stage"] == "done" and summary["candidates_evaluated"] == 12
    assert json.loads((second / "n2n.json").read_text())["config"]["search"]["agent_options"] == {"policy": str(out)}
