"""Policies fit offline to earlier searches (agents.pretrain) and the shipped pretrained policy."""

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from agents import make_agent, run
from agents.pretrain import PRETRAINED, episodes, fit
from agents.reinforce import RemovalPolicy, ShrinkPolicy, sequence_log_prob
from envs import CompressionEnv, ProxyEvaluator, Reference, RewardConfig, demo_space
from n2n.config import load_config
from n2n.errors import ConfigError, RunError
from n2n.models import vgg_layers
from n2n.search import OpenRun, run_search
from search_spaces import DEFAULT_RATIOS, StudentSpec, ResNet, ResNetSpace, SequentialSpace, layers_to_module, resnet_arch

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


def _drawn_log_prob(policy, feats, r):
    """One rollout's log-probability as sampling computes it: unit by unit (with gradients)."""
    total = torch.zeros(())
    if isinstance(policy, RemovalPolicy):
        logits = policy(feats)  # (T, 2)
    else:
        state, prev, rows = policy.initial_state(), None, []
        for t, a in enumerate(r["actions"]):
            lg, state = policy.step(feats[t], prev, state)
            rows.append(lg)
            prev = a
        logits = torch.stack(rows)
    for t, a in enumerate(r["actions"]):
        mask = torch.tensor(r["masks"][t], dtype=torch.bool)
        total = total + torch.log_softmax(logits[t].masked_fill(~mask, float("-inf")), -1)[a]
    return total


@pytest.mark.parametrize("stage", ["removal", "shrink"])
def test_batched_log_prob_and_its_gradient_equal_the_unit_by_unit_ones(stage):
    """The update's teacher-forced, batched log-probabilities (and REINFORCE's gradient through them)
    are those of the draws, masked (forced) units included."""
    space = _space()
    # a fresh policy: small weights keep float32 rounding far below the tolerance
    agent = make_agent("reinforce", CompressionEnv(space, evaluator=None, stage=stage), seed=3, policy=None)
    rollouts = [agent._rollout() for _ in range(5)]
    assert any(0 in m for r in rollouts for m in r["masks"])  # some units had a forced action
    adv = torch.tensor([0.3, -0.1, 0.5, -0.7, 0.2])  # (B,)
    batched, _ = agent.log_prob(rollouts)
    unit_by_unit = torch.stack([_drawn_log_prob(agent.policy, agent._feats, r) for r in rollouts])
    assert batched.tolist() == pytest.approx(unit_by_unit.tolist(), abs=1e-5)
    assert len({round(x, 4) for x in unit_by_unit.tolist()}) > 1  # five different rollouts
    grads = []
    for logp in (batched, unit_by_unit):
        agent.policy.zero_grad()
        (-(adv * logp).mean()).backward(retain_graph=True)
        grads.append(torch.cat([p.grad.flatten() for p in agent.policy.parameters() if p.grad is not None]))
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_episodes_rebuild_each_candidate_from_its_actions():
    space = _space()
    proxy = ProxyEvaluator(space)
    recs = _records(space, proxy)
    recs.append({**recs[0], "failure": "CUDA out of memory"})  # failed: left out
    recs.append({**recs[1], "reward": -1.0})  # invalid: left out
    # a refine stage's episodes are its own group (rewards normalised apart), read as shrink episodes
    recs += [{**r, "stage": "refine", "reward": r["reward"] + 0.5} for r in recs if r["stage"] == "shrink"][:3]
    for stage in ("removal", "shrink", "refine"):
        eps = episodes(space, recs, stage)
        mine = [r for r in recs if r["stage"] == stage and r["failure"] is None and r["reward"] > -1]
        assert len(eps) == len(mine) > 0
        for e, r in zip(eps, mine):
            base = None
            if stage != "removal":
                spec = StudentSpec.from_dict(r["spec"])
                base = StudentSpec(spec.removed, (1.0,) * space.n_units)
            env = CompressionEnv(space, evaluator=None, stage="removal" if stage == "removal" else "shrink", base_spec=base)
            assert env.spec_from_actions(dict(zip(env.active, e["actions"]))).to_dict() == r["spec"]
            assert e["feats"].shape == (len(env.active), space.features().shape[1])
            assert e["reward"] == r["reward"]


@pytest.mark.parametrize("family", ["vgg", "resnet"])
def test_episodes_are_the_draws_of_the_agent_that_made_them(family):
    """Rebuilt from the specs alone, the episodes hold the very actions and masks the agent drew,
    also where removing a block takes its sub-units with it (ResNet)."""
    torch.manual_seed(0)
    space = _space() if family == "vgg" else _other_teachers()["resnet"]
    removal = make_agent("reinforce", CompressionEnv(space, evaluator=None, stage="removal"), seed=5)
    drawn = [removal._rollout() for _ in range(6)]
    base = next(StudentSpec.from_dict(r["spec"]) for r in drawn if r["spec"]["removed"])
    shrink = make_agent("reinforce", CompressionEnv(space, evaluator=None, stage="shrink", base_spec=base), seed=5)
    drawn_shrink = [shrink._rollout() for _ in range(6)]
    assert len(shrink.env.active) < space.n_units  # the removed units (and their sub-units) are not shrunk
    for stage, rollouts in (("removal", drawn), ("shrink", drawn_shrink)):
        recs = [{"stage": stage, "spec": r["spec"], "reward": 0.1 * i, "failure": None} for i, r in enumerate(rollouts)]
        eps = episodes(space, recs, stage)
        assert [e["actions"] for e in eps] == [r["actions"] for r in rollouts]
        assert [e["masks"] for e in eps] == [r["masks"] for r in rollouts]


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


def test_a_policy_that_cannot_start_the_search_is_refused_before_anything_is_written(tmp_path):
    def problem(policy, **over):
        cfg = load_config(None, {"search.agent_options": {"policy": str(policy)}, **over})
        with pytest.raises(ConfigError) as e:
            run_search(cfg, tmp_path / "run", log=lambda *_: None)
        assert not (tmp_path / "run").exists()
        return str(e.value)

    assert "nowhere/removal: expected policy.json and policy.safetensors" in problem(tmp_path / "nowhere")
    assert re.search(r"picks from ratios \[0.25, 0.5, .*this space has \[0.5, 1.0\]",
                     problem("pretrained", **{"search.ratios": [0.5, 1.0]}))
    bad = tmp_path / "bad"
    shutil.copytree(PRETRAINED, bad)
    shutil.copytree(PRETRAINED / "removal", bad / "shrink", dirs_exist_ok=True)  # the removal policy as shrink's
    assert "is for the removal stage, this agent is shrink" in problem(bad)
    shutil.rmtree(bad / "shrink")
    shutil.copytree(PRETRAINED / "shrink", bad / "shrink")
    assert "has hidden=30, this agent hidden=16" in problem(bad, **{"search.agent_options": {"policy": str(bad), "hidden": 16}})
    (bad / "removal" / "policy.json").write_text("{not json")
    assert "bad/removal/policy.json: damaged, not readable JSON" in problem(bad)
    (bad / "removal" / "policy.json").write_text("[1, 2]")
    assert "bad/removal/policy.json: expected a JSON object, found list" in problem(bad)
    meta = json.loads((PRETRAINED / "removal" / "policy.json").read_text())
    (bad / "removal" / "policy.json").write_text(json.dumps({**meta, "config": [1]}))  # helper-28: a traceback
    assert "bad/removal/policy.json: expected \"config\" to be a JSON object, found [1]" in problem(bad)
    shutil.copy(PRETRAINED / "removal" / "policy.json", bad / "removal" / "policy.json")
    small = ShrinkPolicy(len(DEFAULT_RATIOS), 16)  # tensors of another size under a JSON that says 30
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(bad / "shrink" / "policy.safetensors"))
    assert "bad/shrink/policy.safetensors: expected the shrink policy's tensors" in problem(bad)
    nan = {k: torch.full_like(v, float("nan")) for k, v in load_file(str(PRETRAINED / "shrink" / "policy.safetensors")).items()}
    save_file(nan, str(bad / "shrink" / "policy.safetensors"))  # helper-25: the search died mid-run on these
    assert "bad/shrink/policy.safetensors: expected finite float weights, found others in " in problem(bad)
    huge = {k: torch.full_like(v, 3e38) for k, v in nan.items()}  # finite (helper-97: passed, then the search died)
    save_file(huge, str(bad / "shrink" / "policy.safetensors"))
    assert "bad/shrink/policy.safetensors: expected weights of magnitude at most 1000, as trained policies hold, found " \
           "3e+38 in " in problem(bad)
    (bad / "shrink" / "policy.safetensors").write_text("not safetensors")
    assert "not readable as safetensors" in problem(bad)
    assert load_config(None, {"search.agent_options": {"policy": "pretrained"}}).policy_folder() == PRETRAINED.resolve()


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

    first = tmp_path / "runs" / "first"
    run_search(load_config(tiny_config), first, log=lambda *_: None)
    # by default (policy: auto) a search with the shipped ratios starts from the shipped policy, says
    # so in n2n.json and keeps a copy
    assert json.loads((first / "n2n.json").read_text())["config"]["search"]["agent_options"]["policy"] == str(PRETRAINED.resolve())
    assert (first / "policy" / "shrink" / "policy.safetensors").read_bytes() == (PRETRAINED / "shrink" / "policy.safetensors").read_bytes()
    out = tmp_path / "policy"
    assert main(["policy", "fit", str(first), "--out", str(out), "--steps", "20"]) == 0
    # the shrink policy's episodes: the shrink stage's and the refine stage's, each normalised apart
    assert "shrink: fitting to 8 candidates of 2 search stages" in capsys.readouterr().out
    for stage, count in (("removal", 6), ("shrink", 6 + 2)):  # refine's 2 candidates are shrink episodes
        meta = json.loads((out / stage / "policy.json").read_text())
        assert meta["stage"] == stage and meta["pretrained"]["runs"] == ["first"]
        assert meta["pretrained"]["episodes"] == count and meta["pretrained"]["steps"] == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy", "runs", "tiny.yaml"]  # no temp folder left

    # a taken --out is refused, untouched
    before = (out / "removal" / "policy.safetensors").read_bytes()
    assert main(["policy", "fit", str(first), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "removal" / "policy.safetensors").read_bytes() == before
    # a folder that is no run: a clear error, nothing written
    assert main(["policy", "fit", str(tmp_path / "runs"), "--out", str(tmp_path / "p2")]) == 2
    assert not (tmp_path / "p2").exists()
    # edited records (helper-28): a spec no teacher unit matches was learnt as "keep everything";
    # rewards near 1e308 overflowed the normalisation and wrote a policy of NaNs
    edited = tmp_path / "edited"
    shutil.copytree(first, edited, ignore=shutil.ignore_patterns(".lock"))
    recs = json.loads((first / "candidates.json").read_text())
    i = next(i for i, r in enumerate(recs) if r["failure"] is None and r["reward"] > -1)
    (edited / "candidates.json").write_text(json.dumps(
        [{**r, "spec": {**r["spec"], "removed": [999, -3]}} if j == i else r for j, r in enumerate(recs)]))
    assert main(["policy", "fit", str(edited), "--out", str(tmp_path / "p3")]) == 2
    assert (f"candidates.json: candidate {recs[i]['key']} holds a spec that does not fit its teacher (removed unit -3 "
            f"does not exist") in capsys.readouterr().err and not (tmp_path / "p3").exists()
    (edited / "candidates.json").write_text(json.dumps(
        [{**r, "reward": 1e308 if r["reward"] > -1 else r["reward"]} for r in recs]))
    (tmp_path / "p3").mkdir()  # an empty folder made for it is taken (it was refused as existing)
    assert main(["policy", "fit", str(edited), "--out", str(tmp_path / "p3"), "--steps", "5"]) == 0
    assert all(torch.isfinite(t).all() for stage in ("removal", "shrink")
               for t in load_file(str(tmp_path / "p3" / stage / "policy.safetensors")).values())
    shutil.rmtree(edited)
    shutil.rmtree(tmp_path / "p3")
    # runs that asked for different students teach a mix (helper-41: fitted together without a word)
    wider = tmp_path / "wider"
    shutil.copytree(first, wider, ignore=shutil.ignore_patterns(".lock"))
    meta = json.loads((wider / "n2n.json").read_text())
    meta["run_id"], meta["config"]["target"]["max_accuracy_drop"] = "another", 2.0
    (wider / "n2n.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["policy", "fit", str(first), str(wider), "--out", str(tmp_path / "p4"), "--steps", "2"]) == 0
    assert (f"warning: these runs reward students for different things ({first}: reward n2n on params; {wider}: "
            f"reward target on params (target_drop 2)); a policy fit to them learns a mix of those. Fit one policy "
            f"per target") in capsys.readouterr().out
    shutil.rmtree(wider)
    shutil.rmtree(tmp_path / "p4")
    # helper-63: a run that gave the fit nothing was listed as fit to, unsaid; students scored -1 (past
    # reward.max_params) were left out unsaid; a removal-only fit advised a search it refused
    copies = {}
    for name in ("empty", "walled", "removal_only", "lost"):
        copies[name] = tmp_path / name
        shutil.copytree(first, copies[name], ignore=shutil.ignore_patterns(".lock"))
        meta = json.loads((copies[name] / "n2n.json").read_text())
        if name in ("empty", "walled"):  # fit beside `first`: other runs (a copy keeps its id, and its states theirs)
            meta["run_id"] = name
        if name == "walled":  # the second-smallest removal candidate and every larger one past the limit
            limit = sorted(r["params"] for r in recs if r["stage"] == "removal" and r["failure"] is None)[1] - 1
            meta["config"]["reward"]["max_params"] = limit
        (copies[name] / "n2n.json").write_text(json.dumps(meta))
    (copies["empty"] / "candidates.json").write_text("[]")
    (copies["empty"] / "summary.json").unlink()
    (copies["removal_only"] / "candidates.json").write_text(json.dumps([r for r in recs if r["stage"] == "removal"]))
    capsys.readouterr()
    assert main(["policy", "fit", str(first), str(copies["empty"]), str(copies["walled"]), "--out", str(tmp_path / "p5"),
                 "--steps", "2"]) == 0
    said = capsys.readouterr().out
    assert f"warning: {copies['empty']} gives the fit nothing: of its 0 candidates" in said
    past = [r for r in recs if r["stage"] != "finalists" and r["failure"] is None and r["params"] > limit]
    assert past and f"{copies['walled']}: {len(past)} candidates scored -1 (outside the reward's walls" in said
    meta = json.loads((tmp_path / "p5" / "removal" / "policy.json").read_text())["pretrained"]
    assert meta["runs"] == ["first", "walled"] and meta["episodes"] == 2 * 6 - sum(r["stage"] == "removal" for r in past)
    assert main(["policy", "fit", str(copies["removal_only"]), "--out", str(tmp_path / "p6"), "--steps", "2"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(
        f"start a search from it with --set 'search.agent_options={{policy: {tmp_path / 'p6'}}}' --set 'search.stages=[removal]'")
    # a finished run's candidates.json deleted: an error, not a run of 0 candidates; a resume writes it again
    (copies["lost"] / "candidates.json").unlink()
    assert main(["policy", "fit", str(copies["lost"]), "--out", str(tmp_path / "p7")]) == 2
    assert f"{copies['lost'] / 'candidates.json'}: missing, though summary.json counts 14 candidates evaluated" in \
        capsys.readouterr().err and not (tmp_path / "p7").exists()
    from n2n.runfolder import read_records
    from n2n.search import resume_search

    said = []
    resume_search(copies["lost"], log=said.append)
    assert not any("search state" in line for line in said), said  # the state was taken: it holds the records
    assert [(r["key"], r["accuracy"], r["reward"]) for r in read_records(copies["lost"])] == \
        [(r["key"], r["accuracy"], r["reward"]) for r in recs]
    # a damaged copy of the run's policy is refused when a resume starts (it was met at the next stage)
    from n2n.search import check_run_policy

    (copies["lost"] / "policy" / "shrink" / "policy.safetensors").write_bytes(b"x" * 500)
    with pytest.raises(RunError, match=r"policy: the run's own copy of the policy it started from is damaged \(.*shrink/"
                                       r"policy.safetensors: not readable as safetensors.*\); copy shrink/ back from "):
        check_run_policy(copies["lost"], OpenRun.open(copies["lost"]).cfg, ["shrink", "refine", "finalists"])
    check_run_policy(copies["lost"], OpenRun.open(copies["lost"]).cfg, ["removal", "finalists"])  # shrink's not needed
    for copy in copies.values():
        shutil.rmtree(copy)

    second = tmp_path / "runs" / "second"
    monkeypatch.chdir(tmp_path)  # a relative policy folder is recorded absolute: resumes may run elsewhere
    cfg = load_config(tiny_config, {"search.agent_options": {"policy": "policy"}, "search.removal_budget": 3,
                                    "search.shrink_budget": 3, "search.refine_budget": 0})  # the policies, not the budgets
    summary = run_search(cfg, second, log=lambda *_: None)
    assert summary["stage"] == "done" and summary["candidates_evaluated"] == 3 + 3
    assert json.loads((second / "n2n.json").read_text())["config"]["search"]["agent_options"] == {"policy": str(out)}
    for stage in ("removal", "shrink"):  # the run keeps a copy of what it started from
        for name in ("policy.json", "policy.safetensors"):
            assert (second / "policy" / stage / name).read_bytes() == (out / stage / name).read_bytes()
    shutil.rmtree(out)  # the folder it started from may go: the run still opens, its agents still load
    run = OpenRun.open(second)
    from n2n.search import make_driver

    driver = make_driver(run.cfg, run.space, run.meta, second, log=lambda *_: None)
    fitted = load_file(str(second / "policy" / "removal" / "policy.safetensors"))
    assert all(torch.equal(driver.agent.policy.state_dict()[k], v) for k, v in fitted.items())


def test_policy_fit_refuses_a_dangling_link_as_out(tmp_path):
    from n2n.policies import fit_policies

    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(FileExistsError, match="already exists"):
        fit_policies([tmp_path / "no-run"], link)
    assert link.is_symlink() and not (tmp_path / "gone").exists()


def test_policy_fit_refuses_one_run_given_twice(tmp_path):
    """helper-14: a run named twice (or through a link) was fitted as that many searches."""
    from n2n.errors import ConfigError
    from n2n.policies import fit_policies

    (tmp_path / "r1").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "r1")
    with pytest.raises(ConfigError, match=r"r1 and .*link are the same run; give each run once"):
        fit_policies([tmp_path / "r1", tmp_path / "link"], tmp_path / "pol")
    for twice in ([tmp_path / "r1", tmp_path / "r1"], [tmp_path / "r1", tmp_path / "." / "r1" / ""]):
        with pytest.raises(ConfigError, match="are the same run"):
            fit_policies(twice, tmp_path / "pol")
    (tmp_path / "r1" / "n2n.json").write_text('{"run_id": "abc"}')  # helper-25: a cp -a copy counted twice
    shutil.copytree(tmp_path / "r1", tmp_path / "copy")
    with pytest.raises(ConfigError, match=r"r1 and .*copy are the same run \(copied\); give each run once"):
        fit_policies([tmp_path / "r1", tmp_path / "copy"], tmp_path / "pol")
    assert not (tmp_path / "pol").exists()


def test_by_default_reinforce_starts_from_the_shipped_policy_where_it_fits():
    space = _space()
    shipped = {st: load_file(str(PRETRAINED / st / "policy.safetensors")) for st in ("removal", "shrink")}

    def same(agent, stage):
        return all(torch.equal(agent.policy.state_dict()[k], v) for k, v in shipped[stage].items())

    for stage in ("removal", "shrink"):
        agent = make_agent("reinforce", CompressionEnv(space, evaluator=None, stage=stage), seed=0)
        assert agent.started_from == "pretrained" and same(agent, stage)
        fresh = make_agent("reinforce", CompressionEnv(space, evaluator=None, stage=stage), seed=0, policy=None)
        assert fresh.started_from == "fresh" and not same(fresh, stage)
    # other ratios: the shipped shrink policy does not fit, so shrinking starts fresh (removal still fits)
    torch.manual_seed(0)
    other = SequentialSpace(layers_to_module(vgg_layers((1, 40), 10, "vgg1d", 0.25, 32)), (1, 40), ratios=(0.5, 1.0))
    assert make_agent("reinforce", CompressionEnv(other, evaluator=None, stage="shrink"), seed=0).started_from == "fresh"
    assert make_agent("reinforce", CompressionEnv(other, evaluator=None, stage="removal"), seed=0).started_from == "pretrained"
    # a teacher of unit kinds the shipped policy never saw (ResNet blocks): fresh, its transfer is unmeasured
    resnet = _other_teachers()["resnet"]
    assert make_agent("reinforce", CompressionEnv(resnet, evaluator=None, stage="removal"), seed=0).started_from == "fresh"
    # a search decides for all its stages at once, before anything is written, and records it
    assert load_config(None).policy_folder(space) == PRETRAINED.resolve()
    assert load_config(None).policy_folder() is None  # no teacher yet: cannot tell
    assert load_config(None).policy_folder(resnet) is None
    assert load_config(None, {"search.ratios": [0.5, 1.0]}).policy_folder(other) is None
    assert load_config(None, {"search.agent_options": {"hidden": 16}}).policy_folder(space) is None
    assert load_config(None, {"search.agent_options": {"policy": None}}).policy_folder(space) is None
    assert load_config(None, {"search.agent": "optuna"}).policy_folder(space) is None
    # and says why it starts fresh (helper-63: "a fresh policy", nothing more)
    assert load_config(None).fresh_because(space) is None
    assert load_config(None).fresh_because(resnet) == ("the shipped policy was fit on teachers of conv, linear, pool "
                                                       "units; this one has block units, to which its transfer is unmeasured")
    assert load_config(None, {"search.ratios": [0.5, 1.0]}).fresh_because(other).startswith(
        "the shipped shrink policy picks from ratios [0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], this search from [0.5, 1.0]")
    assert load_config(None, {"search.agent_options": {"hidden": 16}}).fresh_because(space) == \
        "the shipped policy has hidden=30, this search agent_options.hidden=16"


def test_a_damaged_shipped_policy_is_an_error_under_auto_not_a_fresh_start(tmp_path, monkeypatch):
    """helper-63: `policy: pretrained` refused a damaged shipped policy, `auto` started fresh unsaid."""
    import agents.pretrain

    space = _space()
    shipped = tmp_path / "pretrained"
    shutil.copytree(PRETRAINED, shipped)
    monkeypatch.setattr(agents.pretrain, "PRETRAINED", shipped)
    assert load_config(None).policy_folder(space) == shipped.resolve()
    (shipped / "shrink" / "policy.safetensors").write_bytes(b"x" * 700)
    for options in ({}, {"policy": "pretrained"}):
        with pytest.raises(ConfigError, match="shrink/policy.safetensors: not readable as safetensors"):
            load_config(None, {"search.agent_options": options}).policy_folder(space)
    with pytest.raises(ConfigError, match=r"policy: auto, but the shipped policy is damaged \(.*\); reinstall n2n, or "
                                          r"start fresh with search.agent_options.policy: null"):
        load_config(None).policy_folder(space)
    assert load_config(None, {"search.stages": ["removal"]}).policy_folder(space) == shipped.resolve()  # not used
    # a shipped policy.json that lacks what auto judges by is damage too (helper-64: taken for a ResNet)
    shutil.copy(PRETRAINED / "shrink" / "policy.safetensors", shipped / "shrink" / "policy.safetensors")
    meta = json.loads((PRETRAINED / "shrink" / "policy.json").read_text())
    (shipped / "shrink" / "policy.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "pretrained"}))
    with pytest.raises(ConfigError, match=r"shrink/policy.json: expected ratios, config.hidden and pretrained.unit_kinds"):
        load_config(None).policy_folder(_other_teachers()["resnet"])
    # values n2n never writes are said as such (helper-63: "hidden=30, this agent hidden=30", "the None stage")
    from agents.reinforce import policy_problem

    meta = json.loads((PRETRAINED / "removal" / "policy.json").read_text())
    (shipped / "removal" / "policy.json").write_text(json.dumps({**meta, "config": {"hidden": "30"}}))
    assert policy_problem(shipped / "removal", "removal", list(DEFAULT_RATIOS), 30) == \
        f"{shipped / 'removal'}/policy.json: expected \"hidden\" a whole number, as n2n writes it, found '30'"
    (shipped / "removal" / "policy.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "stage"}))
    assert policy_problem(shipped / "removal", "removal", list(DEFAULT_RATIOS), 30) == \
        f"{shipped / 'removal'}/policy.json: expected \"stage\" removal or shrink, as n2n writes it, found None"
