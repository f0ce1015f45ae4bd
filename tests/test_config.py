import dataclasses
import math
import re

import pytest
import torch
import yaml

from n2n.config import Config, load_config, run_config
from n2n.errors import ConfigError


def test_default_yaml_is_the_builtin_default():
    """n2n/default.yaml documents every key (`n2n config` prints it); it must say exactly what the code does."""
    import subprocess
    import sys
    from pathlib import Path

    import n2n

    path = Path(n2n.__file__).parent / "default.yaml"
    shown = subprocess.run([sys.executable, "-m", "n2n.cli", "config"], capture_output=True, text=True)
    assert shown.returncode == 0 and shown.stdout == path.read_text()
    assert load_config(path) == load_config(None) == Config()
    written = yaml.safe_load(path.read_text())
    assert written == dataclasses.asdict(Config())  # no key missing from the documented file


def test_by_default_the_search_asks_for_the_smallest_student_within_one_point():
    """What users ask for (and what benchmarks/search_quality.py measures); null opts out into N2N's reward."""
    cfg = load_config(None)
    assert cfg.target.max_accuracy_drop == 1.0 and cfg.reward_config().kind == "target"
    off = load_config(None, {"target.max_accuracy_drop": None})
    assert not off.target.is_set() and off.reward_config().kind == "n2n"


def test_a_run_recording_a_key_n2n_removed_is_still_read():
    cfg = run_config({"finalists": {"k": 3, "epochs": 10, "search_slack": 0.0}})  # recorded by 7f71a2c
    assert (cfg.finalists.k, cfg.finalists.epochs) == (3, 10)
    with pytest.raises(ConfigError, match="search_slack: unknown key"):  # a new search may not ask for it
        load_config(None, {"finalists.search_slack": 0.0})


def test_a_run_made_before_targets_and_finalists_keeps_what_it_had():
    """n2n.json of a run made before the target and finalists sections existed: resumed or exported
    by today's n2n, it must not be judged by today's default target nor grow a finalist stage."""
    recorded = dataclasses.asdict(load_config(None))
    del recorded["target"], recorded["finalists"]
    old = run_config(recorded)
    assert not old.target.is_set() and old.reward_config().kind == "n2n" and old.finalists.k == 0
    assert old.target.margin == 0.0
    assert run_config(dataclasses.asdict(load_config(None))) == load_config(None)  # recorded sections as they are


def test_a_run_recorded_with_values_refused_since_is_read_as_it_was():
    """helper-34: the seed range and the finite distillation values are checked for new searches; a
    run that recorded a seed past 2**32 (torch took it) or an unused infinite temperature still
    resumes, exports and reports."""
    recorded = dataclasses.asdict(load_config(None))
    recorded["seed"] = 2**40
    recorded["distill"]["temperature"] = math.inf  # the l2 loss never reads it
    recorded["distill"]["weight_decay"] = -0.01  # checked for new searches since before; read as it was
    old = run_config(recorded)
    assert old.seed == 2**40 and old.distill.temperature == math.inf and old.distill.weight_decay == -0.01
    with pytest.raises(ConfigError, match="seed: expected a whole number from 0 to 4294967295, got 1099511627776"):
        old.check_new()


def test_a_run_made_before_target_margin_exports_the_student_it_named():
    """A run recorded before target.margin picked the smallest student within the target: read with
    today's default margin, its export would be another student than its summary names."""
    recorded = dataclasses.asdict(load_config(None))
    del recorded["target"]["margin"]
    old = run_config(recorded)
    assert old.target.margin == 0.0 and old.target.max_accuracy_drop == 1.0
    assert load_config(None).target.margin == 0.25


@pytest.mark.parametrize("text,message", [
    ("search: {budget: 3}", "search.budget: unknown key; expected one of"),
    ("distill: {loss: mse}", "distill.loss: expected 'l2' or 'kl', got 'mse'"),
    ("distill: {epochs: -1}", "distill.epochs: expected >= 1, got -1"),
    ("distill: {epochs: 0}", "distill.epochs: expected >= 1, got 0"),  # students would never be trained
    ("search: {max_asks_per_candidate: 0}", "search.max_asks_per_candidate: expected >= 1, got 0"),
    ("resources: {device: tpu}", "resources.device: expected auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
    ("early_stop: {grace_period: 0}", "early_stop.grace_period: expected >= 1 (epochs), got 0"),
    ("early_stop: {reduction_factor: 1}", "early_stop.reduction_factor: expected >= 2, got 1"),
    ("target: {margin: -0.5}", "target.margin: expected points of validation accuracy >= 0, got -0.5"),
    ("target: {margin: .nan}", "target.margin: expected points of validation accuracy >= 0, got nan"),
    ("teacher: {recipe: {width_mult: 0}}", "teacher.recipe.width_mult (--width-mult): expected a finite number > 0, got 0"),
    ("teacher: {recipe: {epochs: -1}}", "teacher.recipe.epochs (--epochs): expected >= 1, got -1"),
    # (helper-72: it named a --batch-size flag `n2n teacher train` does not have)
    ("teacher: {recipe: {batch_size: 0}}", "teacher.recipe.batch_size: expected >= 1, got 0"),
    ("search: {concurrency: 0}", "search.concurrency: expected 1 to 100,000, got 0"),
    # bounded (helper-89: a 4,000-digit budget and a batch of 10^20 started searches no one would see end)
    ("search: {concurrency: 1000000}", "search.concurrency: expected 1 to 100,000, got 1000000"),
    ("search: {shrink_budget: 1" + "0" * 4000 + "}", "search.shrink_budget: expected 0 to 100,000, got 1000000"),
    ("search: {agent_options: {batch_size: 100000000000000000000}}",
     "search.agent_options.batch_size: expected 1 to 10,000, got 100000000000000000000"),
    ("distill: {epochs: 1000000000}", "distill.epochs: expected at most 100,000, got 1000000000"),
    ("latency: {repeats: 1" + "0" * 4000 + "}", "latency.repeats: expected at most 100,000, got 1000000"),
    ("finalists: {epochs: 100001}", "finalists.epochs: expected at most 100,000, got 100001"),
    ("search: {ratios: [0.5, 0.7]}", "search.ratios: expected values in (0, 1] including 1.0"),
    ("search: {stages: [prune]}", "search.stages: expected a list of 'removal', 'shrink' and/or 'refine', each once, got ['prune']"),
    ("search: {stages: [shrink, shrink]}", "search.stages: expected a list of 'removal', 'shrink' and/or 'refine', each once"),
    ("search: {stages: [removal, refine]}", "search.stages: refine narrows the shrink stage's best, so it comes after shrink; got ['removal', 'refine']"),
    ("search: {stages: [refine, shrink]}", "search.stages: refine narrows the shrink stage's best, so it comes after shrink"),
    ("search: {refine_budget: -1}", "search.refine_budget: expected 0 to 100,000, got -1"),
    ("reward: {compression: macs}", "reward.compression: expected 'params', 'flops' or 'latency', got 'macs'"),
    ("latency: {repeats: 1}", "latency.repeats: expected 0 (not measured) or >= 3 (a median), got 1"),
    ("{latency: {repeats: 0}, reward: {compression: latency}}", "latency.repeats: 0 turns latency off, but reward.compression: latency"),
    ("latency: {batch_size: 0}", "latency.batch_size: expected >= 1, got 0"),
    ("search: {removal_budget: -1}", "search.removal_budget: expected 0 to 100,000, got -1"),
    ("search: {shrink_budget: -2}", "search.shrink_budget: expected 0 to 100,000, got -2"),
    ("target: {max_latency_ms: 0}", "target.max_latency_ms: expected > 0, got 0"),
    ("reward: {max_params: lots}", "reward.max_params: expected an integer, got 'lots'"),
    ("teacher: {recipe: {hidden: 256}}", "teacher.recipe.hidden: expected a list, got 256"),
    ("early_stop: {enabled: yes please}", "early_stop.enabled: expected true or false"),
    ("[1, 2]", "expected a mapping at the top level, got list"),
    # helper-14: accepted before, then every trial failed or the search did something else
    ("teacher: {path: ''}", "teacher.path: expected a teacher folder, or null for the recipe's teacher; got ''"),
    ("teacher: {dataset: ''}", "teacher.dataset: expected a dataset, or null for the teacher's own; got ''"),
    ("target: {max_params: -5}", "target.max_params: expected >= 1, got -5"),
    ("target: {max_flops: 0}", "target.max_flops: expected >= 1, got 0"),
    ("reward: {max_params: -1}", "reward.max_params: expected >= 1, got -1"),
    ("reward: {min_accuracy: 90}", "reward.min_accuracy: expected a fraction in 0..1 (0.9 for 90%), got 90"),
    ("distill: {weight_decay: -1}", "distill.weight_decay: expected >= 0, got -1"),
    ("teacher: {recipe: {split_seed: -1}}", "teacher.recipe.split_seed (--split-seed): expected 0 to 4294967295, got -1"),
    # helper-32: an infinite lr or weight made every candidate's loss NaN; a seed past 64 bits was a
    # traceback from torch.manual_seed that left a run folder no resume could continue
    ("distill: {lr: .inf}", "distill.lr: expected a finite number, got inf"),
    ("distill: {ce_weight: .inf}", "distill.ce_weight: expected a finite number, got inf"),
    ("distill: {temperature: .inf}", "distill.temperature: expected a finite number, got inf"),
    ("distill: {transformer_lr: .inf}", "distill.transformer_lr: expected a finite number, got inf"),
    ("seed: 18446744073709551616", "seed: expected a whole number from 0 to 4294967295, got 18446744073709551616"),
    ("seed: -1", "seed: expected a whole number from 0 to 4294967295, got -1"),
    # helper-76: a received run's hidden of 100,000 allocated 160 GB for the policy's LSTM
    ("search: {agent_options: {hidden: 100000}}", "search.agent_options.hidden: expected 1 to 1024, got 100000"),
    ("teacher: {recipe: {seed: 4294967296}}", "teacher.recipe.seed (--seed): expected 0 to 4294967295, got 4294967296"),
    ("teacher: {recipe: {hidden: [64, 32]}}", "teacher.recipe.hidden (--hidden): expected one width for vgg (its one "
                                              "classifier layer), got [64, 32]"),
    ("search: {agent: uniform, stages: [removal]}", "search.stages: the uniform agent shrinks every layer by one ratio, "
                                                    "only in the shrink stage; expected [shrink], got ['removal']"),
    ("search: {agent: uniform}", "search.stages: the uniform agent shrinks every layer by one ratio, only in the shrink "
                                 "stage; expected [shrink], got ['removal', 'shrink', 'refine']"),
    ("search: {stages: [shrink, removal, refine]}", "search.stages: refine narrows the shrink stage's best, so it comes "
                                                    "right after shrink; got ['shrink', 'removal', 'refine']"),
    ("search: {shrink_budget: 0}", "search.shrink_budget: refine narrows the shrink stage's best, so the shrink stage "
                                   "needs >= 1 candidate; got 0 (or drop refine from search.stages)"),
    # agent options are typed per agent and checked when the config is read, by name
    ("search: {agent_options: {batchsize: 3}}", "search.agent_options.batchsize: not an option of the reinforce agent; it takes ['batch_size'"),
    ("search: {agent_options: {batch_size: many}}", "search.agent_options.batch_size: expected int, got 'many'"),
    ("search: {agent_options: {batch_size: 0}}", "search.agent_options.batch_size: expected 1 to 10,000, got 0"),
    ("search: {agent: optuna, agent_options: {objective: pareto}}", "search.agent_options.objective: expected 'reward' or 'multi', got 'pareto'"),
    ("search: {agent: random, agent_options: {batch_size: 3}}", "search.agent_options.batch_size: not an option of the random agent; it takes none"),
    # keys of two types could not be sorted to name the first unknown one: a TypeError traceback
    ("{1: 2, foo: 3}", "1: unknown key; expected one of"),
    ("search: {1: 2, zzz: 3}", "search.1: unknown key; expected one of"),
])
def test_bad_config_names_the_key(tmp_path, text, message):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert message in str(e.value)


def test_a_key_set_inside_a_value_that_is_not_a_section_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"search.agent: search is 3, not a section"):
        load_config(None, {"search": 3, "search.agent": "optuna"})
    (tmp_path / "c.yaml").write_text("search: 3\n")
    with pytest.raises(ConfigError, match=r"search.x: search is 3, not a section"):
        load_config(tmp_path / "c.yaml", {"search.x": 1})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_this_machine_cannot_use_is_refused_by_name(tmp_path, capsys):
    from n2n import cli
    from n2n.models import ModelError, device_for

    assert cli.main(["teacher", "train", "--device", "cuda", "--dataset", "digits", "--out", str(tmp_path / "t")]) == 2
    assert "--device cuda: the torch" in capsys.readouterr().err and not (tmp_path / "t").exists()

    with pytest.raises(ModelError, match=r"device cuda: the torch .* of this machine .* cannot use it \(0 CUDA devices\)"):
        device_for("cuda")
    assert device_for("cpu").type == "cpu" and device_for().type == "cpu"


def test_checks_added_later_apply_to_new_configs_not_to_recorded_runs():
    """helper-15: a run recorded with vgg hidden [256, 128] (the extra width was ignored) or with
    reward.min_accuracy 90 is still read (report, export, resume); a new search with it is refused."""
    recorded = Config().to_dict()
    recorded["teacher"]["recipe"]["hidden"] = [256, 128]
    recorded["reward"]["min_accuracy"] = 90
    old = run_config(recorded)
    assert old.teacher.recipe.hidden == [256, 128] and old.reward.min_accuracy == 90
    with pytest.raises(ConfigError, match="reward.min_accuracy: expected a fraction in 0..1"):
        old.check_new()
    with pytest.raises(ConfigError, match=r"teacher.recipe.hidden \(--hidden\): expected one width for vgg"):
        load_config(None, {"teacher.recipe.hidden": [256, 128]})
    load_config(None, {"teacher.recipe.hidden": [256, 128], "teacher.path": "t"})  # the recipe is not used
    # helper-16's checks on stages: a run recorded before them still opens (its report, export, resume)
    for search, message in (({"agent": "uniform"}, "the uniform agent shrinks every layer by one ratio"),
                            ({"stages": ["shrink", "removal", "refine"]}, "so it comes right after shrink"),
                            ({"shrink_budget": 0}, "so the shrink stage needs >= 1 candidate")):
        recorded = Config().to_dict()
        recorded["search"].update(search)
        old = run_config(recorded)
        assert all(getattr(old.search, k) == v for k, v in search.items())
        with pytest.raises(ConfigError, match=message):
            old.check_new()


def test_an_empty_set_value_is_refused_not_read_as_null(capsys):
    """helper-15: `--set teacher.path=$UNSET` read as null and ran the default teacher's search."""
    from n2n import cli

    assert cli.main(["search", "--set", "teacher.path="]) == 2
    err = capsys.readouterr().err
    assert "--set teacher.path=: empty value; write teacher.path=null for none" in err and "Traceback" not in err
    # nor `~`, YAML's null (helper-68: the default teacher's search ran)
    assert cli.main(["search", "--set", "teacher.path=~"]) == 2
    assert "--set teacher.path=~: YAML reads ~ as null; write teacher.path=null for none, or, for a path, the path " \
           "in full" in capsys.readouterr().err
    # helper-36: "=3", ".seed=3", "seed.=3" said ": unknown key" or "expected an integer, got {'': 3}"
    for pair in ("=3", ".seed=3", "seed.=3", "search..agent=x"):
        assert cli.main(["search", "--set", pair]) == 2
        key = pair.split("=")[0]
        assert (f"--set {pair}: expected a key such as search.removal_budget before '=', got {key!r}"
                in capsys.readouterr().err)


def test_targets_and_ratios_that_ask_for_no_real_search_are_refused():
    """helper-36: accepted without a word: a drop of 150 points (every student meets it), and a ratio
    given twice (the policy's choices then count it twice)."""
    with pytest.raises(ConfigError, match=r"target.max_accuracy_drop: expected points below the teacher's accuracy, "
                                          r"under 100, got 150.0 \(null asks for no accuracy target\)"):
        load_config(None, {"target.max_accuracy_drop": 150}).check_new()
    with pytest.raises(ConfigError, match=r"search.ratios: expected each ratio once, got \[0.3, 1.0, 1.0\]"):
        load_config(None, {"search.ratios": [0.3, 1.0, 1.0]}).check_new()
    # helper-72: [1.0] announced shrink and refine stages in which no unit can be narrowed; .inf ms was
    # recorded as Infinity in n2n.json, which strict JSON readers refuse
    with pytest.raises(ConfigError, match=r"search.ratios: expected a ratio below 1.0 for the shrink and refine stages "
                                          r"to narrow units with, got \[1.0\]"):
        load_config(None, {"search.ratios": [1.0]}).check_new()
    with pytest.raises(ConfigError, match=r"for the shrink stage to narrow"):
        load_config(None, {"search.ratios": [1.0], "search.stages": ["removal", "shrink"]}).check_new()
    assert load_config(None, {"search.ratios": [1.0], "search.stages": ["removal"]}).check_new() is None
    with pytest.raises(ConfigError, match=r"target.max_latency_ms: expected a finite number of milliseconds, got inf"):
        load_config(None, {"target.max_latency_ms": float("inf")}).check_new()
    # helper-72: an infinite rate was a traceback after the first policy update; '' read the current folder.
    # A run recorded with such options still loads (helper-74: Adam trains at a rate of 2; an infinite
    # temperature cap is no cap)
    for options, said in (({"lr": float("inf")}, "lr: expected a learning rate > 0 and at most 1, got inf"),
                          ({"lr": 2.0}, "lr: expected a learning rate > 0 and at most 1, got 2.0"),
                          ({"policy": " "}, "policy: expected auto, pretrained, null or a folder `n2n policy fit` wrote, got ' '"),
                          ({"explore_temperature": float("inf")}, "explore_temperature: expected a finite number >= 1"),
                          ({"entropy_coef": float("inf")}, "entropy_coef: expected a finite number >= 0")):
        recorded = dataclasses.asdict(load_config(None))
        recorded["search"]["agent_options"] = options
        assert run_config(recorded).search.agent_options == options
        with pytest.raises(ConfigError, match=re.escape(f"search.agent_options.{said}")):
            load_config(None, {"search.agent_options": options})


def test_overrides_and_types(tmp_path):
    cfg = load_config(None, {"search.agent": "optuna", "distill.lr": 1, "reward.max_params": 5000})
    assert cfg.search.agent == "optuna" and cfg.distill.lr == 1.0 and isinstance(cfg.distill.lr, float)
    assert cfg.reward.max_params == 5000 and cfg.budget("removal") == 20 and cfg.budget("refine") == 20


def test_a_key_given_twice_is_refused_not_silently_replaced(tmp_path):
    """helper-22: PyYAML keeps the last of two `target:` sections, so `max_accuracy_drop: 0.5` in the
    first became the default 1.0 with nothing said. A merge (`<<: *anchor`) may still be overridden."""
    dup = tmp_path / "dup.yaml"
    dup.write_text("target:\n  max_accuracy_drop: 0.5\nsearch:\n  agent: optuna\ntarget:\n  max_params: 50000\n")
    with pytest.raises(ConfigError, match=rf"^config {dup}: the key 'target' is given twice \(lines 1 and 5\); the "
                                          r"later would silently replace the earlier$"):
        load_config(dup)
    dup.write_text("distill:\n  epochs: 2\n  lr: 0.01\n  epochs: 4\n")
    with pytest.raises(ConfigError, match=r"the key 'epochs' is given twice \(lines 2 and 4\)"):
        load_config(dup)
    merged = tmp_path / "merged.yaml"
    merged.write_text("distill: &d {epochs: 2, lr: 0.01}\nfinalists:\n  <<: {k: 2, epochs: 5}\n  k: 4\n")
    cfg = load_config(merged)
    assert (cfg.finalists.k, cfg.finalists.epochs, cfg.distill.epochs) == (4, 5, 2)


def test_a_number_in_scientific_notation_without_a_dot_is_a_number(tmp_path):
    """helper-24: YAML 1.1 reads 1e-4 as a string, so `--set distill.lr=1e-4` was refused."""
    cfg = load_config(None, {"distill.lr": yaml.safe_load("1e-4"), "target.margin": yaml.safe_load("5E-1")})
    assert cfg.distill.lr == 1e-4 and cfg.target.margin == 0.5
    with pytest.raises(ConfigError, match="distill.lr: expected a number, got 'fast'"):
        load_config(None, {"distill.lr": "fast"})


def test_numbers_read_as_written_not_in_base_60_or_octal(tmp_path):
    """helper-72: YAML 1.1 read `1:30` as 90 and `010` as 8, so `removal_budget: 1:30` ran 90
    candidates with nothing said. In a config file and in --set they are now text, refused by name."""
    from n2n.cli import _overrides

    for written in ("1:30", "010", "0b11", "1:30.5"):
        conf = tmp_path / "c.yaml"
        conf.write_text(f"search:\n  removal_budget: {written}\n")
        with pytest.raises(ConfigError, match=rf"^search.removal_budget: expected an integer, got '{written}'$"):
            load_config(conf)
        with pytest.raises(ConfigError, match=rf"^search.removal_budget: expected an integer, got '{written}'$"):
            load_config(None, _overrides([f"search.removal_budget={written}"]))
    conf.write_text("search:\n  removal_budget: 1_000\n  shrink_budget: 0x10\n  ratios: [.5, 1.0]\n"
                    "distill:\n  lr: 3.5e-3\n  epochs: +4\ntarget:\n  margin: -0.0\n")
    cfg = load_config(conf)
    assert (cfg.search.removal_budget, cfg.search.shrink_budget, cfg.search.ratios) == (1000, 16, [0.5, 1.0])
    assert (cfg.distill.lr, cfg.distill.epochs, cfg.target.margin) == (3.5e-3, 4, 0.0)
    assert _overrides(["distill.lr=.inf", "seed=-3", "search.ratios=[0.25, 1]", "x=-0x1F", "y=+0x10"]) == {
        "distill.lr": math.inf, "seed": -3, "search.ratios": [0.25, 1], "x": -31, "y": 16}  # signed hex as before


def test_transformer_students_are_distilled_at_their_own_learning_rate():
    """helper-24: at distill.lr 0.003 (chosen for CNN students) every MiniLM student fell to chance;
    transformer students take distill.transformer_lr (1e-4); runs made before it used lr for all."""
    from types import SimpleNamespace

    from search_spaces import TransformerSpace

    cfg = load_config()
    assert (cfg.distill.lr, cfg.distill.transformer_lr) == (0.003, 1e-4)
    assert cfg.distill.for_space(SimpleNamespace()).lr == 0.003  # a CNN's space
    assert TransformerSpace.pretrained_transformer and cfg.distill.for_space(TransformerSpace).lr == 1e-4
    old = run_config({k: v for k, v in cfg.to_dict().items()} | {"distill": {"epochs": 3, "lr": 0.003}})
    assert old.distill.transformer_lr is None and old.distill.for_space(TransformerSpace).lr == 0.003
    with pytest.raises(ConfigError, match="distill.transformer_lr: expected > 0 or null, got 0"):
        load_config(None, {"distill.transformer_lr": 0})


def test_a_margin_past_the_drop_is_said_at_the_start():
    """helper-36: target.margin past max_accuracy_drop was capped at the drop without a word."""
    from types import SimpleNamespace

    from n2n.pick import margin_of
    from n2n.search import notes

    cnn = SimpleNamespace()
    assert notes(load_config(), cnn) == []  # the default: margin 0.25 within a 1-point drop
    cfg = load_config(None, {"target.max_accuracy_drop": 0.1})
    assert margin_of(cfg.target, None) == 0.1
    assert notes(cfg, cnn) == ["note: target.margin 0.25 is more than target.max_accuracy_drop 0.1; export spares at "
                               "most the whole drop, 0.1 points (a student at least as accurate as the teacher)"]
    assert notes(load_config(None, {"target.max_accuracy_drop": None}), cnn) == []  # no accuracy target, no margin
    # a fraction for a percentage (helper-91: 0.01 for 1% asked for 0.01 points, unsaid)
    tiny = load_config(None, {"target.max_accuracy_drop": 0.01, "target.margin": 0})
    assert notes(tiny, cnn) == ["note: target.max_accuracy_drop is in points of accuracy (1 for one percentage point); "
                                "0.01 asks for a student within 0.01 points of the teacher"]
    # a REINFORCE batch as large as a stage's budget never updates the policy while it can help: said, not refused
    big = load_config(None, {"search.agent_options": {"batch_size": 20}})
    assert notes(big, cnn) == ["note: search.agent_options.batch_size 20 is no less than the budget of removal (20), "
                               "refine (20): REINFORCE updates its policy after a whole batch (each stage's agent its "
                               "own), so there it may never update and sample only its starting policy"]
    assert notes(load_config(None, {"search.agent_options": {"batch_size": 19}}), cnn) == []


def test_a_yaml_alias_bomb_is_refused_in_a_short_line(tmp_path):
    """helper-36: nine levels of aliases under `seed` (9**9 items, a few lines of YAML) were written out
    whole in the error message: a MemoryError or gigabytes. The value is shown cut short."""
    levels = ["&l0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text(f"seed: [{', '.join(levels)}]\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    path.write_text(f"search: {{agent_options: {{batch_size: [{', '.join(levels)}]}}}}\n")  # an agent's own check too
    with pytest.raises(ConfigError) as agent:
        load_config(path)
    assert len(str(agent.value)) < 400 and str(agent.value).startswith("search.agent_options.batch_size: expected int")
    path.write_text(f"seed: [{', '.join(levels)}]\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == ("seed: expected an integer, got [[1, 1, 1, 1, 1, 1, ...], [[...], [...], [...], [...], "
                            "[...], [...], ...], [[...], [...], [...], [...], [...], [...], ...], [[...], [...], [...], "
                            "[...], [...], [...], ...], [[...], [...], [...], [...], [...], [...], ...], [[...], [...], "
                            "[...], [...], [...], [...], ...], ...]")


def test_a_fraction_of_a_cpu_or_gpu_finer_than_ray_takes_is_refused_before_a_run_exists():
    """helper-36: cpus_per_trial 0.00001 made a run folder, then a Ray traceback at the first trial, and
    a plain resume failed the same way."""
    for name, value, zero in (("cpus_per_trial", 0.00001, ""), ("cpus_per_trial", float("inf"), ""),
                              ("gpus_per_trial", 0.00005, "0 or ")):  # (no CPUs is refused by its own check)
        with pytest.raises(ConfigError, match=rf"resources.{name}: expected {zero}a finite number of at least 0.0001 "
                                              rf"\(the smallest fraction Ray takes\), got {value:g}"):
            load_config(None, {f"resources.{name}": value}).check_new()
    # finer digits Ray rounds away (0.3333): taken (helper-38)
    assert load_config(None, {"resources.cpus_per_trial": 0.33333, "resources.gpus_per_trial": 0.0001}).check_new() is None


def test_a_config_that_is_not_utf8_is_refused_in_one_line(tmp_path):
    """helper-36: a UnicodeDecodeError traceback (a config saved as cp1252 with an accented comment)."""
    path = tmp_path / "cp1252.yaml"
    path.write_bytes("seed: 3  # caf\xe9\n".encode("cp1252"))
    with pytest.raises(ConfigError, match=rf"config {path}: expected UTF-8 text, found byte 0xe9 at offset 14; save it as UTF-8"):
        load_config(path)


def test_a_recipe_teacher_on_text_data_is_refused_with_the_command_that_makes_one():
    """helper-52: `teacher.recipe.dataset: text:...` was accepted, then failed in load_raw with advice
    for Python callers."""
    with pytest.raises(ConfigError, match=r"teacher.recipe.dataset \(--dataset\): expected numeric data \(a text "
                                          r"dataset's teacher is a Hugging Face encoder: `n2n teacher train --hf "
                                          r"CHECKPOINT --dataset text:PATH`, then teacher.path\), got 'text:r.csv'"):
        load_config(None, {"teacher.recipe.dataset": "text:r.csv"})
