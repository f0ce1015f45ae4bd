"""Nothing lost, nothing run that the user did not ask for: damaged runs, locks, --overwrite, hostile
folders, bad input. Each test names the failure it guards against."""

import errno
import json
import re
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from collections import Counter

import pytest
import torch

from envs import ProxyEvaluator, Reference
from n2n import cli
from n2n.config import load_config
from n2n.errors import ConfigError, RunError
from n2n.driver import FINISHED, SearchDriver
from n2n.export import export_best
from n2n.models import save_model, vgg_layers, weights_digest
from n2n import report as report_mod
from n2n.report import make_report
from n2n.runfolder import PREV_STATE, STATE, RunLock, read_records
from n2n.search import OpenRun, restore_driver, resume_search, run_search
from search_spaces import SequentialSpace, StudentSpec, layers_to_module

from helpers import untimed


def _main(capsys, *argv, stream="err"):
    """The CLI in-process: (exit status, its stderr or `stream`), without what earlier work in this process printed."""
    capsys.readouterr()
    status = cli.main([str(a) for a in argv])
    return status, getattr(capsys.readouterr(), stream)


# -- resume from damaged state, without Ray ---------------------------------------------------------

@pytest.fixture(scope="module")
def space():
    torch.manual_seed(0)
    return SequentialSpace(layers_to_module(vgg_layers((1, 40), 10, "vgg1d", 0.25, 32)), (1, 40))


def _driver(space, run_dir, run_id=None):
    ref = Reference(space.teacher_params(), space.flops(space.identity()), 0.95)
    return SearchDriver(space, ref, agent="reinforce", budgets={"removal": 6, "shrink": 6}, seed=0,
                        agent_options={"batch_size": 3}, run_dir=run_dir, log=lambda *_: None, run_id=run_id)


class Trainer:
    """Stands in for Tune: issues trials, completes them in order, counts trainings per spec key."""

    def __init__(self, space):
        self.proxy, self.trained, self.n = ProxyEvaluator(space), Counter(), 0

    def run(self, driver, stop_after=None):
        """Drive until FINISHED, or until `stop_after` completions (then 'kill': in-flight trials are lost)."""
        queue, done = [], 0
        for _ in range(1000):
            if stop_after is not None and done >= stop_after:
                return
            out = driver.suggest(f"t{self.n}")
            if out == FINISHED:
                return
            if out is None:
                tid, cfg = queue.pop(0)
                self.trained[cfg["key"]] += 1
                driver.complete(tid, self.proxy(StudentSpec.from_dict(cfg["spec"])).to_dict())
                done += 1
                continue
            queue.append((f"t{self.n}", out))
            self.n += 1
        raise AssertionError("the driver never finished")


def test_an_edited_teacher_input_standardisation_is_named_as_the_cause(finished_run, tmp_path):
    """Session 33's note: a teacher's arch.json "input" edited since the run started was refused (its
    outputs differ) as if "the code that builds it changed"."""
    run, teacher = tmp_path / "run", tmp_path / "teacher"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    meta = json.loads((run / "n2n.json").read_text())
    shutil.copytree(meta["teacher_folder"], teacher)
    (run / "n2n.json").write_text(json.dumps({**meta, "teacher_folder": str(teacher)}))  # the same weights
    OpenRun.open(run)  # a moved teacher of the same weights and arch.json opens
    arch = json.loads((teacher / "arch.json").read_text())
    arch["input"]["shift"] = [v + 1.0 for v in arch["input"]["shift"]] if isinstance(arch["input"]["shift"], list) \
        else arch["input"]["shift"] + 1.0
    (teacher / "arch.json").write_text(json.dumps(arch))
    with pytest.raises(RunError, match=r"the teacher computes other outputs than when this run started .* though its "
                                       rf"weights are the same, so what builds it changed since: {re.escape(str(teacher))}"
                                       r"/arch.json \(its \"input\" standardisation, its layers\) or the code"):
        OpenRun.open(run)


def test_teacher_logits_edited_past_the_rows_checked_are_computed_again(finished_run, tmp_path):
    """helper-25: resume and export compared only the first 64 rows of teacher_logits.safetensors
    with the teacher; rows past them, shifted by 3 classes, made export --finetune-epochs ship a
    student at 0.3% validation accuracy. The file's digest is in n2n.json now."""
    import shutil

    from n2n.models import load_weights, save_weights
    from n2n.search import teacher_logits

    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    meta = json.loads((run / "n2n.json").read_text())
    kept = load_weights(run / "teacher_logits.safetensors")["logits"]
    assert meta["teacher_logits_digest"]
    poisoned = kept.clone()
    poisoned[64:] = poisoned[64:].roll(3, dims=1)
    save_weights({"logits": poisoned}, run / "teacher_logits.safetensors")
    said = []
    teacher = OpenRun.open(run).teacher
    x = OpenRun.open(run).ds.x_train
    again = teacher_logits(run, teacher, x, said.append, digest=meta["teacher_logits_digest"])
    assert said == [f"warning: {run / 'teacher_logits.safetensors'} is not the file this run kept (its digest differs "
                    "from n2n.json's); computing the teacher's logits again"]
    assert torch.allclose(again, kept, atol=1e-4)
    said.clear()  # rewritten as computed: as the run kept it, no warning
    assert torch.equal(teacher_logits(run, teacher, x, said.append, digest=meta["teacher_logits_digest"]), again)
    # the rows the teacher is compared with edited (helper-53: blamed on the teacher's code alone); the
    # comparison still made (helper-54: skipped, an edited module passed once the file had been touched)
    save_weights({"logits": kept + 0.5}, run / "teacher_logits.safetensors")
    with pytest.raises(RunError, match=r"teacher_logits.safetensors: not the file this run kept \(its digest differs "
                                       r"from n2n.json's\), and the teacher computes other outputs than it holds .* "
                                       r"either that file was changed .* or what builds the teacher changed since \(.*/arch.json "
                                       r"\(its \"input\" standardisation, its layers\) or the code: "):
        OpenRun.open(run)
    from safetensors.torch import save_file

    save_file({"logits": kept}, run / "teacher_logits.safetensors", metadata={"touched": "yes"})  # same numbers
    OpenRun.open(run)  # the teacher computes what the file holds: opened, and the file computed again
    said.clear()
    assert torch.allclose(teacher_logits(run, teacher, x, said.append, digest=meta["teacher_logits_digest"]), kept,
                          atol=1e-4) and "is not the file this run kept" in said[0]


def test_a_resume_uses_the_storage_a_run_records_only_when_the_user_names_it(finished_run, tmp_path, capsys):
    """helper-76: a received run whose n2n.json named file:///SOMEWHERE made `n2n resume` write weights and
    results there, and take a file found there for a trial's result, without a word (an s3:// one would
    sign requests to its endpoint with the user's credentials). The user names the storage now, as
    `export --fetch` asks before it downloads; the resume line names it."""
    from n2n.search import resume_command
    from n2n.storage import store_location

    elsewhere = tmp_path / "elsewhere"
    uri = f"file://{elsewhere}"
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    plain = tmp_path / "plain"
    shutil.copytree(finished_run, plain, ignore=shutil.ignore_patterns(".lock"))
    meta = json.loads((run / "n2n.json").read_text())
    meta["config"]["resources"]["storage"], meta["results_store"] = uri, store_location(uri, run.name)
    (run / "n2n.json").write_text(json.dumps(meta))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert cli.main(["resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"n2n: error: {run}: this run records resources.storage {uri}; a resume reads and writes its trials' " \
           f"results there. Resume it with `--storage {uri}` if that storage is yours" in err
    assert cli.main(["resume", str(run), "--storage", f"file://{tmp_path}/mine"]) == 2
    assert f"records resources.storage {uri}, not file://{tmp_path}/mine;" in capsys.readouterr().err
    assert cli.main(["resume", str(plain), "--storage", uri]) == 2
    assert f"--storage: {plain} records no storage" in capsys.readouterr().err
    assert not elsewhere.exists() and {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert resume_command(run, None) == f"n2n resume {run} --storage {uri}"
    assert resume_command(plain, None) == f"n2n resume {plain}"
    said = []  # named: the resume goes on (this one has finished: nothing is fetched, nothing trained)
    assert resume_search(run, storage=uri, log=said.append)["stage"] == "done"
    assert said[0] == "run has finished already"


def test_a_stored_result_not_as_n2n_writes_it_is_trained_again_not_adopted(tmp_path, monkeypatch):
    """helper-76: results/KEY.json holding {"reward": "lots", "accuracy": 7} was reported as the trial's
    result: three TypeErrors in the driver, the finalists skipped, "search finished". A stored result
    is checked as n2n writes it; one that is not (or not JSON) is trained again and written whole."""
    from types import SimpleNamespace

    import ray
    from ray import tune

    from envs import Evaluation, RewardConfig
    from n2n import trial
    from n2n.runfolder import record_problem, result_problem
    from n2n.storage import LocalResults

    reported, trained = [], []
    monkeypatch.setattr(tune, "report", reported.append)
    monkeypatch.setattr(trial, "space_of", lambda ctx: None)
    monkeypatch.setattr(trial, "evaluate", lambda *a, **k: (trained.append(1), (Evaluation(0.9, 100, 200, epochs=3), None))[1])
    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=lambda: "n",
                                                                          get_assigned_resources=lambda: {}))
    ctx = SimpleNamespace(results_dir=str(tmp_path), run_id=None, per_epoch=False, device="cpu", reference=Reference(1000, 2000, 0.95),
                          reward=RewardConfig(kind="target", target_drop=1.0))
    config = {"spec": {"removed": [], "ratios": [0.5]}, "key": "k-1", "stage": "finalists"}
    good = {"accuracy": 0.9, "params": 100, "flops": 200, "failure": "", "reward": 0.5, "epochs": 3}
    assert result_problem(good) is None
    for stored in ('{"reward": "lots", "accuracy": 7}', "{", json.dumps({**good, "accuracy": 7}),
                   json.dumps({**good, "x": [[1] * 3] * 3}), json.dumps({**good, "reward": "lots"}), json.dumps([1]),
                   json.dumps({**good, "latency_ms": "fast"}), json.dumps({**good, "weights_digest": "no"})):
        (tmp_path / "k-1.json").write_text(stored)
        reported.clear(), trained.clear()
        trial.run_trial(config, ctx)
        assert trained == [1] and len(reported) == 1 and not reported[0].get("cached"), stored
        assert result_problem(json.loads((tmp_path / "k-1.json").read_text())) is None  # written whole
    reported.clear(), trained.clear()
    LocalResults(tmp_path).save("k-1", None, good)
    trial.run_trial(config, ctx)  # one as n2n writes it: adopted, nothing trained
    assert trained == [] and reported == [{**good, "cached": True}]
    # a record likewise holds nothing nested (helper-76: a 10 KB search_state.pt whose record held a list
    # 22 levels deep by reference, each level twice, was written out as a 1 GB candidates.json)
    rec = {"key": "k", "stage": "removal", "spec": {"removed": [], "ratios": [1.0]}, "accuracy": 0.5, "params": 3,
           "failure": None, "reward": 0.1}
    assert record_problem(rec) is None
    assert record_problem({**rec, "extra": [[1]]}) == "has extra [[1]] (expected a figure, a name or null)"
    assert record_problem({**rec, "spec": {**rec["spec"], "x": [[1]]}}).startswith("has spec {")
    # but for the figures a rescore keeps, as n2n writes them (helper-78: a resumed run of size limits alone,
    # rescored, was refused as damaged by every command after)
    assert record_problem({**rec, "scored_before": {"reward": 0.955, "compression": 0.91}}) is None
    assert record_problem({**rec, "scored_before": {"reward": [[0.9]]}}).startswith("has scored_before {")


def test_a_recorded_input_shape_other_than_the_data_s_is_refused_before_the_teacher_runs_on_it(finished_run, tmp_path,
                                                                                                capsys):
    """helper-76: [1, 400000000] in a received n2n.json made export, resume and policy fit probe the
    teacher on inputs of that shape (102 GB asked for, a traceback) before comparing it with the data."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    meta = json.loads((run / "n2n.json").read_text())
    shape = meta["input_shape"]
    for forged in ([1, 400_000_000], [shape[0], shape[1] + 1], [*shape, 1]):  # (not a shape at all: read_run)
        (run / "n2n.json").write_text(json.dumps({**meta, "input_shape": forged}))
        for command in (("resume", run), ("export", run, "--out", tmp_path / "out")):
            assert _main(capsys, *command) == (2, f"n2n: error: {run}/n2n.json: expected the input shape of the "
                                                  f"run's data, {shape}, found {forged!r}\n"), forged
    assert not (tmp_path / "out").exists()


def test_a_run_whose_results_or_tune_folder_is_a_link_is_refused(finished_run, tmp_path, capsys):
    """helper-25: results/ made a link to another folder had resume write every new trial there;
    helper-28: tune/ too (Ray Tune's sessions, its pickles among them)."""
    import shutil

    from n2n.search import next_session

    for name in ("results", "tune"):
        run, elsewhere = tmp_path / name / "run", tmp_path / name / "elsewhere"
        shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
        shutil.move(run / name, elsewhere)
        (run / name).symlink_to(elsewhere)
        before = sorted(p.name for p in elsewhere.iterdir())
        for command in (("resume", run), ("export", run, "--out", tmp_path / "out"), ("report", run)):
            status, err = _main(capsys, *command)
            assert status == 2 and f"{run / name}: expected the run's own folder, found a link to {elsewhere}" in err
        assert sorted(p.name for p in elsewhere.iterdir()) == before and not (tmp_path / "out").exists()
    # a session of a name no entry has: after a gap (session-2 deleted) or a link planted as the next
    # number, counting the sessions named one that was there, and Tune wrote into it or through it
    tune = tmp_path / "tune-gap"
    (tune / "session-1").mkdir(parents=True)
    (tune / "session-3").symlink_to(tmp_path)
    (tune / "session-x").mkdir()
    (tune / "session-²").mkdir()  # a digit to str.isdigit, not to int() (helper-29)
    assert next_session(tune) == "session-4" and next_session(tmp_path / "none") == "session-1"


def test_a_search_state_copied_from_another_run_is_not_taken_for_this_ones(space, tmp_path):
    """helper-22: another run's search_state.pt marked an interrupted run finished and mixed that
    run's records into its candidates.json (whose weights it lacks). Now it is set aside and the
    state rebuilt from this run's own records."""
    import shutil

    other, run = tmp_path / "other", tmp_path / "run"
    other.mkdir()
    run.mkdir()
    Trainer(space).run(_driver(space, other, "other-id"))
    trainer = Trainer(space)
    trainer.run(_driver(space, run, "this-id"), stop_after=4)
    before = read_records(run)
    shutil.copy(other / STATE, run / STATE)
    logs = []
    driver = restore_driver(lambda: _driver(space, run, "this-id"), run, log=logs.append)
    # the state before it is this run's own: used (helper-23: it was skipped for a rebuild)
    assert logs == ["search_state.pt not usable (it belongs to another run (run id other-id, this run's this-id)); "
                    "trying search_state.prev.pt, the state saved before it"]
    assert [r["key"] for r in driver.records] == [r["key"] for r in before]
    trainer.run(driver)
    assert Counter(r["stage"] for r in read_records(run)) == {"removal": 6, "shrink": 6}
    assert max(trainer.trained.values()) == 1
    (run / PREV_STATE).unlink()  # no state of its own left: rebuilt from its records
    logs.clear()
    shutil.copy(other / STATE, run / STATE)
    restore_driver(lambda: _driver(space, run, "this-id"), run, log=logs.append)
    assert logs[-1] == "no usable search state; rebuilding it from candidates.json (12 candidates)"


@pytest.mark.parametrize("damage", ["truncated state", "both states empty", "no state", "previous state empty"])
def test_resume_from_damaged_state_loses_no_record_and_trains_nothing_twice(space, tmp_path, damage):
    trainer = Trainer(space)
    trainer.run(_driver(space, tmp_path), stop_after=5)
    before = read_records(tmp_path)
    assert len(before) == 5
    state, prev = tmp_path / STATE, tmp_path / PREV_STATE
    if damage == "truncated state":  # a copy or a full disk cut it short: the previous one is used
        state.write_bytes(state.read_bytes()[:100])
    elif damage == "both states empty":
        state.write_bytes(b"")
        prev.write_bytes(b"")
    elif damage == "previous state empty":  # never read while the newer one is good (helper-74: said damaged)
        prev.write_bytes(b"")
    else:  # a run of an older n2n, or deleted by hand: rebuilt from candidates.json
        state.unlink()
        prev.unlink()
    logs = []
    driver = restore_driver(lambda: _driver(space, tmp_path), tmp_path, log=logs.append)
    assert [r["key"] for r in driver.records] == [r["key"] for r in before]  # nothing dropped
    assert read_records(tmp_path) == before  # and nothing written over until the search moves on
    # each line says what the resume turns to (helper-71: "falling back", to what was not said)
    rebuilt = "no usable search state; rebuilding it from candidates.json (5 candidates)"
    if damage == "truncated state":
        assert logs[0].startswith(f"{STATE} is damaged (") and logs[0].endswith(
            f"; trying {PREV_STATE}, the state saved before it") and rebuilt not in logs, logs
    elif damage == "both states empty":
        assert logs[0].endswith(f"; trying {PREV_STATE}, the state saved before it"), logs
        assert logs[1].startswith(f"{PREV_STATE} is damaged (") and logs[1].endswith(")") and logs[2] == rebuilt, logs
    elif damage == "previous state empty":
        assert logs == [], logs
    else:
        assert logs[0] == rebuilt, logs
    trainer.run(driver)
    after = read_records(tmp_path)
    assert [r["key"] for r in after[:5]] == [r["key"] for r in before]
    assert Counter(r["stage"] for r in after) == {"removal": 6, "shrink": 6}
    assert max(trainer.trained.values()) == 1, "a candidate with a result was trained again"
    assert json.loads((tmp_path / "summary.json").read_text())["stage"] == "done"


def test_a_run_stopped_before_its_first_result_resumes_from_the_beginning_said_so(space, tmp_path):
    """helper-71: a search interrupted while it started left a run folder with no state and no
    candidates; its resume said "no usable search state; rebuilding it", which read as damage."""
    logs = []
    driver = restore_driver(lambda: _driver(space, tmp_path), tmp_path, log=logs.append)
    assert logs == ["no candidate was evaluated before the search stopped: it starts from the beginning"]
    trainer = Trainer(space)
    trainer.run(driver, stop_after=5)
    # helper-74: with candidates evaluated, and both states and candidates.json lost, it did not say that
    for name in (STATE, PREV_STATE, "candidates.json"):
        (tmp_path / name).unlink()
    logs.clear()
    driver = restore_driver(lambda: _driver(space, tmp_path), tmp_path, log=logs.append)
    assert logs == ["no usable search state and no candidate in candidates.json: the search starts from the beginning"]
    trainer.run(driver)
    assert Counter(r["stage"] for r in read_records(tmp_path)) == {"removal": 6, "shrink": 6}


@pytest.mark.parametrize("tamper, said", [
    (lambda s: s["records"][0].update(accuracy="x"), "record 0 has accuracy 'x' (expected a fraction 0..1)"),
    (lambda s: s["records"].append({"trial_id": "zz", "key": "k"}), "record 5 lacks ['stage', 'spec', 'accuracy'"),
    (lambda s: s.update(wall_seconds="x"), "wall_seconds is str, expected"),
    (lambda s: s.update(stage_idx=1, agent=None), "the shrink stage's agent state is missing"),
    (lambda s: s.update(stage_idx=-1), "stage_idx -1, expected 0..2"),
    (lambda s: s.update(stage_idx=1.5), "stage_idx is float, expected int"),
    (lambda s: s.update(refine_bases=3), "refine_bases is int, expected"),
    (lambda s: s["records"][1].update(stage="removal\x1b[8m"), "record 1 has stage 'removal\\x1b[8m' (expected one of")])
def test_a_search_state_holding_values_n2n_never_saves_is_set_aside(space, tmp_path, tamper, said):
    """helper-57: a state file edited to hold a string for a number, a stage index out of range, no
    agent state, or a record without its figures loaded, then failed later in the resume with a
    traceback (or, for stage index -1, resumed a search as finished). Now the state before it is used."""
    trainer = Trainer(space)
    trainer.run(_driver(space, tmp_path), stop_after=5)
    before = read_records(tmp_path)
    state = torch.load(tmp_path / STATE, weights_only=True)
    tamper(state)
    torch.save(state, tmp_path / STATE)
    logs = []
    driver = restore_driver(lambda: _driver(space, tmp_path), tmp_path, log=logs.append)
    assert logs[0].startswith("search_state.pt not usable (") and said in logs[0], logs
    assert logs[0].endswith("; trying search_state.prev.pt, the state saved before it"), logs
    assert [r["key"] for r in driver.records] == [r["key"] for r in before]
    trainer.run(driver)
    assert Counter(r["stage"] for r in read_records(tmp_path)) == {"removal": 6, "shrink": 6}
    assert max(trainer.trained.values()) == 1


def test_a_record_whose_stage_or_summary_is_not_n2n_s_is_damage_not_printed(finished_run, tmp_path, capsys):
    """helper-57: any string was taken as a record's stage and summary, and report and export printed
    them raw: terminal escapes there could hide export's warnings or forge lines. A stage that is no
    stage also changed which student export picked."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    records = json.loads((run / "candidates.json").read_text())
    for field, value in (("summary", "ok\x1b[2K\rverified"), ("stage", "removal\x1b[8m"), ("stage", "best")):
        (run / "candidates.json").write_text(json.dumps([{**records[0], field: value}, *records[1:]]))
        for command in (("report", run), ("export", run, "--out", tmp_path / "out")):
            status, err = _main(capsys, *command)
            assert status == 2 and f"{run / 'candidates.json'}: damaged, candidate 0 ({records[0]['key']}) has {field} " \
                f"{value!r}" in err and "\x1b" not in err, err
    assert not (tmp_path / "out").exists()


def test_a_search_whose_candidates_all_fail_stops_with_the_first_reason(space, tmp_path):
    d = _driver(space, tmp_path)
    for i in range(3):
        assert isinstance(d.suggest(f"t{i}"), dict)
    d.complete("t0", {"accuracy": 0.1, "params": 10, "flops": 10, "failure": "loss became nan at epoch 1"})
    d.complete("t1", {"accuracy": 0.1, "params": 10, "flops": 10, "failure": "loss became nan at epoch 2"})
    assert d.suggest("t3") is None and not d.failed  # two failures could still be bad luck
    d.complete("t2", {"accuracy": 0.1, "params": 10, "flops": 10, "failure": "loss became nan at epoch 1"})
    assert d.suggest("t4") == FINISHED and d.in_flight() == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stage"] == "failed" and "loss became nan at epoch 1" in summary["failure"]
    again = restore_driver(lambda: _driver(space, tmp_path), tmp_path, log=lambda *_: None)
    assert again.failed == d.failed and again.suggest("t5") == FINISHED  # a resume does not retry blindly



def test_a_search_too_short_to_stop_early_fails_when_every_candidate_failed(space, tmp_path):
    """A budget of 2 never reached the 3 failures that stop a search: it 'finished', exit 0, nothing to export."""
    ref = Reference(space.teacher_params(), space.flops(space.identity()), 0.95)
    d = SearchDriver(space, ref, agent="random", stages=["shrink"], budgets={"shrink": 2}, run_dir=tmp_path,
                     log=lambda *_: None)
    for t in ("t0", "t1"):
        assert isinstance(d.suggest(t), dict)
    d.complete("t0", {"accuracy": 0.1, "params": 10, "flops": 10, "failure": "loss became nan at epoch 1"})
    assert d.suggest("t2") is None and not d.failed  # the other may still succeed
    d.complete("t1", {"accuracy": 0.1, "params": 10, "flops": 10, "failure": "CUDA out of memory"})
    assert d.suggest("t3") == FINISHED
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stage"] == "failed" and cli._status(summary) == 1
    assert summary["failure"].startswith("all 2 candidates of the search failed; the first: ")


def test_three_failures_with_a_candidate_still_training_wait_for_it(space, tmp_path):
    """Two at a time: the fourth candidate is training when the third fails, and may succeed."""
    ref = Reference(space.teacher_params(), space.flops(space.identity()), 0.95)
    d = SearchDriver(space, ref, agent="random", budgets={"removal": 6, "shrink": 6}, run_dir=tmp_path,
                     log=lambda *_: None)
    cfgs = {t: d.suggest(t) for t in ("t0", "t1")}
    nan = {"accuracy": 0.1, "params": 10, "flops": 10, "failure": "loss became nan at epoch 1"}
    for done, new in (("t0", "t2"), ("t1", "t3")):
        d.complete(done, nan)
        cfgs[new] = d.suggest(new)
    d.complete("t2", nan)
    assert not d.failed and d.suggest("x") is None  # t3 still training: wait, do not stop
    d.complete("t3", Trainer(space).proxy(StudentSpec.from_dict(cfgs["t3"]["spec"])).to_dict())
    assert not d.failed and isinstance(d.suggest("t4"), dict)  # it succeeded: the search goes on

# -- the lock ---------------------------------------------------------------------------------------

def _fake_meta():
    return {"config": {}, "teacher_folder": "/nonexistent", "dataset": "mnist1d", "input_shape": [1, 40],
            "reference": {"params": 1, "flops": 1, "accuracy": 1.0}, "teacher": {"test_accuracy": 1.0}}


def test_one_process_per_run_folder_and_a_dead_holder_is_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "n2n.json").write_text(json.dumps(_fake_meta()))
    with RunLock(run):
        status, err = _main(capsys, "resume", run)
        assert status == 2 and f"in use by another n2n process (pid {os.getpid()} on" in err
        status, err = _main(capsys, "export", run, "--out", tmp_path / "o", "--finetune-epochs", "1")
        assert status == 2 and "in use by another n2n process" in err
    # a holder killed with SIGKILL leaves the file behind, not the lock
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from n2n.runfolder import RunLock; "
                               f"RunLock({str(run)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Exception, match=f"pid {holder.pid} on"):
        RunLock(run).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = RunLock(run).acquire()
    assert (run / ".lock").read_text().startswith(f"pid {os.getpid()}")
    lock.release()


def test_a_lock_file_deleted_under_its_holder_still_keeps_others_out(tmp_path, capsys):
    """helper-82: `rm RUN/.lock` while a search ran (a "stale" lock, to a user) let a second process lock
    a new file and train every candidate again, and report took the search for stopped. The run folder
    itself is locked too: the second is refused, report and export see the holder, and once the holder
    is gone the run is free again."""
    from n2n.runfolder import lock_holder

    run = tmp_path / "run"
    run.mkdir()
    (run / "n2n.json").write_text(json.dumps(_fake_meta()))
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from n2n.runfolder import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)", str(run)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        (run / ".lock").unlink()
        deleted = "a process of unknown pid, whose .lock was deleted or replaced while it ran"
        assert lock_holder(run) == deleted
        with pytest.raises(RunError, match=rf"{run} is in use by another n2n process \({deleted}\)"):
            RunLock(run).acquire()
        assert lock_holder(run) == deleted  # the refused one wrote nothing in the new file
        status, err = _main(capsys, "resume", run)
        assert status == 2 and deleted in err
        (run / ".lock").write_text("pid 1 on elsewhere\n" + str(run))  # a .lock put back by hand, unlocked
        assert lock_holder(run) == deleted
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(run) is None
    # a look at the run (report, export) while a command takes it: waited for, not taken for a holder
    # (helper-84: refused as "its .lock was deleted"); released at once, not when a forked child exits
    for looked_at in (run, run / ".lock"):  # (lock_holder looks at both; helper-85: at .lock, refused too)
        looking = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\nwhile True:\n"
                                    "    fd = os.open(sys.argv[1], os.O_RDONLY)\n    fcntl.flock(fd, fcntl.LOCK_SH)\n"
                                    "    print('looking', flush=True)\n    time.sleep(0.05)  # (lock_holder's look, "
                                    "slowed down)\n    os.close(fd)\n    time.sleep(0.05)", str(looked_at)],
                                   stdout=subprocess.PIPE, text=True)
        try:
            assert looking.stdout.readline() == "looking\n"
            for _ in range(10):
                RunLock(run).acquire().release()
        finally:
            looking.kill()
            looking.wait()
    lock = RunLock(run).acquire()
    child = os.fork()
    if child == 0:  # (a worker forked while the lock was held: it outlives the release)
        try:
            signal.pause()
        finally:
            os._exit(0)
    lock.release()
    try:
        RunLock(run).acquire().release()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    with RunLock(run):  # free again: taken, and held against others as before
        assert lock_holder(run) is None  # (this process's own)
        with pytest.raises(RunError, match=f"pid {os.getpid()} on"):
            RunLock(run).acquire()
    assert (run / ".lock").read_text().startswith(f"pid {os.getpid()}")



def test_a_run_folder_moved_under_its_search_is_never_written_through_its_old_path(space, tmp_path):
    """helper-89: a search whose folder was renamed wrote on by path: into another run put at its old
    name (its candidates.json, states, n2n.log and results replaced), or into a half run made anew
    there, whose resume the search then advised. The folder it locked is checked before every write."""
    from n2n.search import teed
    from n2n.storage import LocalResults

    run, away = tmp_path / "runs" / "sw", tmp_path / "runs" / "sw-b"
    (run / "results").mkdir(parents=True)
    (run / "n2n.json").write_text(json.dumps({"run_id": "ours"}))
    ref = Reference(space.teacher_params(), space.flops(space.identity()), 0.95)
    said = []
    with RunLock(run):
        run_dir = run.resolve()
        d = SearchDriver(space, ref, agent="random", stages=["shrink"], budgets={"shrink": 2}, run_dir=run_dir,
                         log=lambda *_: None)
        d.save()
        log = teed(said.append, run_dir)
        results = LocalResults(run / "results", "ours")  # as a trial opens them
        log("before")
        results.save("k1", None, {"failure": ""})
        run.rename(away)
        (run / "results").mkdir(parents=True)  # another run put at its name
        for name in ("candidates.json", "summary.json", "n2n.log", STATE, "results/k1.json", "results/trained.log"):
            (run / name).write_text("theirs")
        (run / "n2n.json").write_text(json.dumps({"run_id": "theirs"}))
        moved = "no longer the run folder this search started in (moved, deleted or replaced while it ran)"
        with pytest.raises(RunError, match=re.escape(f"{run_dir}: {moved}")):
            d.save()
        log("after")  # said, never written there
        for write in (lambda: results.save("k1", None, {"failure": ""}), lambda: results.result("k1"),
                      lambda: results.write_text("k1.traceback.txt", "Traceback")):
            with pytest.raises(RunError, match="no longer the results folder of this search's run"):
                write()
        assert {p.name: p.read_text() for p in run.rglob("*") if p.is_file()} == {
            "candidates.json": "theirs", "summary.json": "theirs", "n2n.log": "theirs", STATE: "theirs",
            "k1.json": "theirs", "trained.log": "theirs", "n2n.json": '{"run_id": "theirs"}'}
        shutil.rmtree(run)  # deleted outright: nothing made anew there
        with pytest.raises(RunError, match=re.escape(moved)):
            d.save()
        log("gone")
        assert not run.exists()
    assert said == ["before", "after", "gone"]
    story = (away / "n2n.log").read_text()
    assert "before" in story and "after" not in story and (away / "results" / "k1.json").is_file()


# -- a finished run: export --overwrite, Tune's folder gone, damaged n2n.json -----------------------

@pytest.fixture(scope="module")
def finished_run(ray_session, tmp_path_factory):
    from conftest import TINY_CONFIG

    root = tmp_path_factory.mktemp("safety")
    (root / "tiny.yaml").write_text(TINY_CONFIG)
    cfg = load_config(root / "tiny.yaml", {"search.stages": ["removal"], "search.removal_budget": 3})
    run = root / "runs" / "done"
    interrupt = signal.getsignal(signal.SIGINT)
    summary = run_search(cfg, run, log=lambda *_: None)
    assert summary["stage"] == "done" and summary["candidates_evaluated"] == 3
    # Tune's fit leaves a Ctrl-C handler of its own, which afterwards only asked a finished fit to stop
    assert signal.getsignal(signal.SIGINT) is interrupt
    return run


def _tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_export_finetune_keeps_the_epoch_best_on_validation_or_the_weights_as_searched(finished_run, tmp_path):
    """helper-96: one epoch of fine-tuning took a digits student from val 0.9888 to 0.9851 and past the
    target on test, and export shipped it. The weights kept are the best on validation, epoch 0 (as
    searched) included, and metrics.json says which."""
    from n2n.models import load_weights

    plain = export_best(finished_run, tmp_path / "plain", log=lambda *_: None)
    said = []
    tuned = export_best(finished_run, tmp_path / "tuned", finetune_epochs=3, log=said.append)
    by_epoch = tuned["finetune"]["val_accuracy_by_epoch"]
    assert len(by_epoch) == 3 and tuned["finetune"]["epochs"] == 3 and tuned["finetune_epochs"] == 3
    kept = tuned["finetune"]["kept_epoch"]
    assert kept == 1 + by_epoch.index(max(by_epoch))  # the first of the best (3 epochs lift a 1-epoch student)
    assert tuned["val_accuracy"] == max(by_epoch) > plain["val_accuracy"]
    assert f"fine-tuning took the student's validation accuracy from {plain['val_accuracy']:.4f} (as searched) to " \
           f"{tuned['val_accuracy']:.4f} (epoch {kept} of 3, kept; by epoch: " in "\n".join(said)
    # a fine-tune that only harms (a learning rate far too high, finite losses): the weights as searched
    wild = tmp_path / "wild"
    shutil.copytree(finished_run, wild, ignore=shutil.ignore_patterns(".lock"))
    meta = json.loads((wild / "n2n.json").read_text())
    meta["config"]["distill"].update(lr=1.0)  # Adam at 1.0: val 0.88 -> 0.14 here, finite losses
    (wild / "n2n.json").write_text(json.dumps(meta))
    said = []
    harmed = export_best(wild, tmp_path / "harmed", finetune_epochs=2, log=said.append)
    assert harmed["finetune"]["kept_epoch"] == 0 and max(harmed["finetune"]["val_accuracy_by_epoch"]) <= plain["val_accuracy"]
    assert f"no epoch of fine-tuning beat the student as searched on validation ({plain['val_accuracy']:.4f}; by epoch: " \
           in "\n".join(said)
    same = [k for k in untimed(plain) if k not in ("finetune", "finetune_epochs", "run")]
    assert {k: harmed[k] for k in same} == {k: plain[k] for k in same}
    shipped, searched = (load_weights(d / "model.safetensors") for d in (tmp_path / "harmed", tmp_path / "plain"))
    assert shipped.keys() == searched.keys() and all(torch.equal(shipped[k], searched[k]) for k in shipped)


def test_a_folder_of_another_kind_is_named_as_what_it_is(finished_run, tmp_path, capsys):
    """helper-97: an export handed to report or export, and a run or a policy folder handed to teacher
    show, were "found none" / "found nothing there"; `{batch_size:4}` was an option named `batch_size:4`."""
    export_best(finished_run, tmp_path / "student", log=lambda *_: None)
    student = tmp_path / "student"
    for command in (("report", student), ("export", student, "--out", tmp_path / "o")):
        status, err = _main(capsys, *command)
        assert status == 2 and err == (f"n2n: error: {student}: expected a run folder made by `n2n search` (with n2n.json "
                                       f"as a plain file), found none: {student} is an n2n export (a student; report, "
                                       f"export and resume take the run folder its metrics.json names)\n"), err
    status, err = _main(capsys, "teacher", "show", finished_run)
    assert status == 2 and err == (f"n2n: error: {finished_run}: expected a model folder with model.safetensors, found "
                                   f"nothing there: it is an n2n run folder; its teacher is the folder its n2n.json "
                                   f"names as teacher_folder\n"), err
    from agents.pretrain import PRETRAINED

    status, err = _main(capsys, "teacher", "show", PRETRAINED)
    assert status == 2 and err.endswith("found nothing there: it is a policy folder (search.agent_options.policy takes "
                                        "it)\n"), err
    status, err = _main(capsys, "search", "--set", "search.agent_options={batch_size:4}", "--runs-dir", tmp_path / "r")
    assert status == 2 and "batch_size:4: not an option of the reinforce agent; it takes [" in err and \
        err.rstrip().endswith("(YAML reads `batch_size:4` as one name: write a space after the colon, {batch_size: 4})"), err
    assert not (tmp_path / "r").exists()


def test_a_pick_far_below_the_teacher_without_an_accuracy_target_is_warned_of_everywhere(finished_run, tmp_path,
                                                                                           monkeypatch):
    """helper-91: a max_params-only pick 23 points below the teacher was said "the most accurate finalist
    that meets the target" by the search's last line and the report; export alone warned."""
    from n2n import pick

    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    meta = json.loads((run / "n2n.json").read_text())
    meta["config"]["target"] = {**meta["config"]["target"], "max_accuracy_drop": None, "max_params": 10**9}
    (run / "n2n.json").write_text(json.dumps(meta))
    assert "warning: this student is" not in make_report(run)
    monkeypatch.setattr(pick, "FAR_BELOW", -100.0)  # every student is "far below" now: the line is said
    chosen = [r for r in read_records(run) if r["failure"] is None]
    chosen = max(chosen, key=lambda r: (r["accuracy"], -r["params"]))  # the most accurate within the limit
    below = (meta["reference"]["accuracy"] - chosen["accuracy"]) * 100
    warning = (f"warning: this student is {below:.2f} points below the teacher on validation, with no accuracy target "
               f"to hold it: looser limits, or target.max_accuracy_drop, ask for a usable one")
    assert warning in make_report(run).splitlines()
    said = []
    resume_search(run, log=said.append)  # a finished run: its last lines again
    assert said[-2] == warning and said[-1].startswith(f"`n2n export` picks {chosen['params']:,} params")


def test_export_says_when_a_finished_run_s_summary_names_another_student(finished_run, tmp_path):
    """helper-42: summary.json of a run an earlier n2n finished names the student its rule picked; where
    this n2n's rule picks another (the fallback to the stages' candidates), export says so."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    summary = json.loads((run / "summary.json").read_text())
    picked = summary["best"]["key"]
    other = next(r["key"] for r in read_records(run) if r["key"] != picked and r["failure"] is None)
    said = []
    assert export_best(run, tmp_path / "a", log=said.append)["key"] == picked
    assert not any(line.startswith("note: the run's summary.json") for line in said)
    (run / "summary.json").write_text(json.dumps({**summary, "best": {**summary["best"], "key": other}}))
    said.clear()
    assert export_best(run, tmp_path / "b", log=said.append)["key"] == picked
    note = (f"note: the run's summary.json names {other}, picked when it was written (by an earlier n2n, or under the "
            f"target n2n.json held then); this n2n's rule and n2n.json's target pick {picked} (`--key {other}` exports "
            "that one)")
    assert note in said
    assert note in make_report(run).splitlines()  # report says so too (helper-65: export alone did)
    # a summary naming the stage record of the finalist picked names the same student (an older n2n's summary
    # named the best by reward, the finalist's twin: helper-65)
    from n2n.pick import summary_note

    assert summary_note({"best": {"key": "a-b"}}, "a-b@10ep") is None and summary_note({"best": {"key": "a-b"}}, "a-c")


def test_a_finished_run_with_candidates_timed_by_an_earlier_n2n_is_not_told_of_trainings_to_come(finished_run, tmp_path):
    """helper-65: resuming a finished older run said "the candidates trained from now on are timed as they
    ship", though nothing was to be trained."""
    import shutil

    from n2n.search import make_driver

    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    for name in (STATE, PREV_STATE):  # the records come from candidates.json, as an earlier n2n timed them
        (run / name).unlink()
    recs = json.loads((run / "candidates.json").read_text())
    (run / "candidates.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "latency_ratio"} for r in recs]))
    opened = OpenRun.open(run)
    said = []
    driver = restore_driver(lambda: make_driver(opened.cfg, opened.space, opened.meta, run, log=said.append), run,
                            said.append)
    assert driver.stage is None and not any("timed by an earlier n2n" in line for line in said), said


def test_a_run_made_under_other_rules_says_its_choices_may_differ(finished_run, tmp_path, capsys):
    """helper-65: an older run resumed by this n2n got other finalists by this n2n's rules, unsaid."""
    import shutil

    from n2n.pick import RULES, rules_note

    assert json.loads((finished_run / "n2n.json").read_text())["rules"] == RULES  # a new run records its rules
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    meta = json.loads((run / "n2n.json").read_text())
    del meta["rules"]  # as every run made before 2026-12-07
    (run / "n2n.json").write_text(json.dumps(meta))
    note = rules_note(meta)
    assert note.startswith("note: this run was made by an earlier n2n (one that recorded no rules revision")
    assert rules_note({"rules": RULES}) is None and "a newer n2n (rules revision" in rules_note({"rules": RULES + 1})
    assert note in make_report(run).splitlines()
    said = []
    export_best(run, tmp_path / "out", log=said.append)
    assert note in said
    assert note not in make_report(finished_run)




def test_a_run_with_a_flops_limit_shows_its_students_flops_wherever_it_names_them(finished_run, tmp_path):
    """helper-62: a run that compressed params under a FLOPs limit showed no FLOPs in report's leaderboard
    (a row marked past the limit could not be told why), its pick line, or export's first line."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    meta = json.loads((run / "n2n.json").read_text())
    records = [r for r in read_records(run) if r["failure"] is None]
    limit = sorted(r["flops"] for r in records)[1]  # some candidates within it, some past
    meta["config"]["target"] = {**meta["config"]["target"], "max_flops": limit}
    (run / "n2n.json").write_text(json.dumps(meta))
    text = make_report(run)
    lines = text.splitlines()
    board = lines[lines.index(next(line for line in lines if line.startswith(" #"))):][:len(records) + 1]
    head = board[0].split()
    assert head[-2:] == ["limits", "spec"] and "flops" in head
    at, marked = head.index("flops") - 1, head.index("limits") - 1  # ("val acc" is two words in the header)
    rows = {int(line.split()[2].replace(",", "")): line.split() for line in board[1:]}
    assert len(rows) == len(records)
    for r in records:
        row = rows[r["params"]]
        assert row[at] == f"{r['flops']:,}" and row[marked] == ("within" if r["flops"] <= limit else "past"), row
    pick = next(line for line in lines if line.startswith("`n2n export` picks"))
    said = []
    metrics = export_best(run, tmp_path / "out", log=said.append)
    fewer = f"{meta['reference']['flops'] / metrics['flops']:.2f}x fewer"  # (helper-77) beside params' "x smaller"
    assert f" params, {metrics['flops']:,} FLOPs, {fewer}, " in pick and metrics["key"] in pick
    exporting = next(line for line in said if line.startswith("exporting "))
    assert f" params, {metrics['flops']:,} FLOPs, {fewer}, " in exporting
    assert exporting.startswith(f"exporting {metrics['key']}: {metrics['summary']} (")  # what --key takes (helper-89)


def test_export_overwrite_replaces_only_an_earlier_export(finished_run, tmp_path, capsys):
    import shutil

    run, runs = finished_run, finished_run.parent
    teacher = json.loads((run / "n2n.json").read_text())["teacher_folder"]
    kept = {p: _tree(p) for p in (run, runs)}
    for out, why in ((run, "is the run folder"), (runs, "is the run folder or holds it"),
                     (teacher, "is the run's teacher")):
        status, err = _main(capsys, "export", run, "--out", out, "--overwrite")
        assert status == 2 and why in err and "Traceback" not in err
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("precious")
    (other / "arch.json").write_text("{}")
    status, err = _main(capsys, "export", run, "--out", other, "--overwrite")
    assert status == 2 and "is not an earlier n2n export (it holds notes.txt, which n2n does not write there)" in err
    assert (other / "notes.txt").read_text() == "precious"
    assert {p: _tree(p) for p in (run, runs)} == kept and os.path.isdir(teacher)

    # a checkpoint of the user's own (say the --hf source) looks like a model folder: never replaced
    from transformers import BertConfig, BertForSequenceClassification

    ckpt = tmp_path / "ckpt"
    BertForSequenceClassification(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=8)).save_pretrained(ckpt)
    status, err = _main(capsys, "export", run, "--out", ckpt, "--overwrite")
    assert status == 2 and "is not an earlier n2n export" in err and (ckpt / "config.json").exists()

    out = tmp_path / "student"
    first = export_best(run, out, log=lambda *_: None)
    status, err = _main(capsys, "export", run, "--out", out)
    assert status == 2 and "already exists" in err
    assert untimed(export_best(run, out, overwrite=True, log=lambda *_: None)) == untimed(first)  # an earlier export: replaced
    # helper-82: weights of the user's under n2n's name, or a Hugging Face folder of theirs in hf/, went unsaid
    weights = out / "model.safetensors"
    shipped = weights.read_bytes()
    weights.write_bytes(shipped + b" ")
    status, err = _main(capsys, "export", run, "--out", out, "--overwrite")
    assert status == 2 and f"{out}: its model.safetensors was changed since n2n exported it; --overwrite replaces " \
                           "only an export as n2n wrote it" in err and weights.read_bytes() == shipped + b" "
    weights.write_bytes(shipped)
    (out / "hf").mkdir()
    (out / "hf" / "config.json").write_text("{}")
    status, err = _main(capsys, "export", run, "--out", out, "--overwrite")
    assert status == 2 and "it holds hf/config.json, which that export did not write" in err
    shutil.rmtree(out / "hf")
    (out / "hf").mkdir()
    (out / "hf" / "notes.txt").write_text("mine now")  # n2n's subfolder with a file of the user's inside
    status, err = _main(capsys, "export", run, "--out", out, "--overwrite")
    assert status == 2 and "it holds hf/notes.txt, which" in err and (out / "hf" / "notes.txt").exists()
    (out / "hf" / "notes.txt").unlink()
    # folders under the names of n2n's files, holding the user's (helper-28: deleted without a word)
    for inside in (out / "model.onnx", out / "hf" / "config.json"):
        inside.mkdir()
        (inside / "thesis.tex").write_text("mine")
        status, err = _main(capsys, "export", run, "--out", out, "--overwrite")
        assert status == 2 and "is not an earlier n2n export" in err and (inside / "thesis.tex").read_text() == "mine"
        assert ("model.onnx (not a plain file)" if inside.name == "model.onnx" else "hf/config.json, which") in err
        shutil.rmtree(inside)
    status, err = _main(capsys, "teacher", "train", "--dataset", "digits", "--out", out, "--overwrite")
    assert status == 2 and "is not an earlier n2n teacher" in err  # an export is not a teacher either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "mine", "student"]  # no temp folder left
    status, err = _main(capsys, "export", run, "--out", Path(teacher) / "sub")  # helper-22
    assert status == 2 and "is inside the run's teacher folder" in err and not (Path(teacher) / "sub").exists()
    for inside in (run / "results" / "x", run / "policy" / "removal" / "x", run / "new"):  # helper-12
        status, err = _main(capsys, "export", run, "--out", inside)
        assert status == 2 and f"{inside}: inside the run folder {run}; choose a path outside it" in err
        assert not inside.exists()
    # nor does any other command make a folder there (helper-68: a policy, a teacher, a run inside a run)
    inside = run / "results" / "x"
    for cmd in (("policy", "fit", run, "--out", inside), ("teacher", "train", "--dataset", "digits", "--out", inside),
                ("search", "--runs-dir", run / "results", "--name", "x")):
        status, err = _main(capsys, *cmd)
        assert status == 2 and err == f"n2n: error: {inside}: inside the run folder {run}; choose a path outside it\n"
    assert {p: _tree(p) for p in (run, runs)} == kept

    # an export another search starts from: replaceable by --overwrite, so the search says so
    from n2n.search import prepare_run

    lines, again = [], tmp_path / "again"
    export_best(run, again, log=lambda *_: None)
    prepare_run(load_config(None, {"teacher.path": str(again)}), log=lines.append)
    assert f"warning: the teacher {again} is an n2n export, which `n2n export --overwrite` replaces; this run would " \
           "then refuse to resume or export (its teacher changed). Copy it elsewhere first to keep the run usable" in lines


def test_a_failed_save_leaves_no_temp_folder(small_teacher, tmp_path):
    model, arch, _ = small_teacher

    def fail(tmp):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_model(tmp_path / "t", model, arch, {}, finish=fail)
    assert list(tmp_path.iterdir()) == []


def test_export_and_report_need_nothing_from_tunes_pickles(finished_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    shutil.rmtree(run / "tune")  # holds Tune's pickles (tuner.pkl, searcher state): never read
    metrics = export_best(run, tmp_path / "student", log=lambda *_: None)
    assert metrics["search_reward"] == json.loads((run / "summary.json").read_text())["best"]["reward"]
    assert "3 candidates" in make_report(run)
    # a resume of a finished run without tune/ says so, trains nothing and rewrites nothing
    kept = {name: (run / name).read_bytes() for name in ("search_state.pt", "search_state.prev.pt", "summary.json",
                                                          "candidates.json") if (run / name).exists()}
    status, err = _main(capsys, "resume", run)
    assert status == 0 and (run / "results" / "trained.log").read_text().split() == \
        (finished_run / "results" / "trained.log").read_text().split()
    assert "search_state.pt" in kept and {name: (run / name).read_bytes() for name in kept} == kept


def test_terminal_escapes_in_a_run_from_someone_else_are_shown_not_sent(finished_run, tmp_path, capsys, monkeypatch):
    """helper-89: a summary.json's failure and n2n.json's teacher_folder reached the terminal raw, so a run
    folder handed over could set the terminal's title, colours or (OSC 52) its clipboard."""
    run = tmp_path / "copy"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "stage": "failed", "failure": "sum\x1b]0;TITLE\x07\x1b[31mRED"}))
    status, out = _main(capsys, "report", run, stream="out")
    assert status == 0 and "(it failed after 3 candidates: sum\\x1b]0;TITLE\\x07\\x1b[31mRED)" in out
    meta = json.loads((run / "n2n.json").read_text())
    (run / "n2n.json").write_text(json.dumps({**meta, "teacher_folder": "/nowhere\x1b]52;c;aGk=\x07"}))
    status, err = _main(capsys, "export", run, "--out", tmp_path / "x")
    assert status == 2 and "/nowhere\\x1b]52;c;aGk=\\x07" in err and "\x1b" not in err and "\x07" not in err
    assert not isinstance(sys.stdout, cli.Shown) and not isinstance(sys.stderr, cli.Shown)  # put back after
    # and so is a bug's traceback, which quotes what it failed on (it came after the streams were put back)
    from n2n import report

    def fails(*_, **__):
        raise ValueError(f"no run at {run}\x1b]0;TITLE\x07")

    monkeypatch.setattr(report, "make_report", fails)
    status, err = _main(capsys, "report", run)
    assert status == 1 and "Traceback" in err and "ValueError: no run at" in err and "\\x1b]0;TITLE\\x07" in err
    assert "\x1b" not in err and "\x07" not in err
    # a path's undecodable C1 byte, held as a surrogate, is shown too (helper-90); tabs, newlines and é are text
    import io

    shown = io.StringIO()
    cli.Shown(shown).write("a\x1b[31m\tb\n\udc9bc\u00e9")
    assert shown.getvalue() == "a\\x1b[31m\tb\n\\x9bc\u00e9"


def test_exporting_a_search_that_has_not_finished_says_so(finished_run, tmp_path):
    """An interrupted run exported with exit 0 and nothing said: its pick rests on the candidates so far."""
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    lines = []
    done = export_best(run, tmp_path / "a", log=lines.append)
    assert done["search_finished"] is True and not any("has not finished" in line for line in lines)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "stage": "shrink"}))  # as a killed search leaves it
    lines = []
    stopped = export_best(run, tmp_path / "b", log=lines.append)
    assert stopped["search_finished"] is False and stopped["key"] == done["key"]
    assert any(line.startswith("warning: this search has not finished (it stopped in stage shrink after 3 candidates)")
               and f"n2n resume {run}" in line for line in lines)
    # and the folder's own README says so to whoever gets it alone (helper-87: metrics.json alone did)
    said = "- Exported before its search finished: the choice among the candidates trained by then"
    assert said in (tmp_path / "b" / "README-n2n.md").read_text()
    assert said not in (tmp_path / "a" / "README-n2n.md").read_text()
    (tmp_path / "plots").mkdir()
    titles = []  # the plots' own titles say it too: a PNG outlives the search it was made during (helper-27)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(report_mod, "_save_png", lambda fig, path: titles.append([ax.get_title() for ax in fig.axes]))
        assert "has not finished" not in make_report(finished_run, tmp_path / "plots")
        assert (f"this search has not finished (it stopped in stage shrink after 3 candidates): these are the "
                f"candidates so far; `n2n resume {run}` finishes it") in make_report(run).splitlines()
    n = len(read_records(run))
    assert titles[:2] == [["Reward over the search"], ["Accuracy against size"]]
    assert [t[0].split("\n")[1][:-16] for t in titles[2:]] == [f"unfinished search: the {n} candidates as of "] * 2
    # a failed search: resume refuses it, so neither command suggests it (helper-23)
    (run / "summary.json").write_text(json.dumps({**summary, "stage": "failed", "failure": "boom"}))
    assert ("this search has not finished (it failed after 3 candidates: boom): these are the candidates so far; fix "
            "the cause and start a new search") in make_report(run).splitlines()
    lines = []
    export_best(run, tmp_path / "failed", log=lines.append)
    assert any("(it failed after 3 candidates: boom)" in m and m.endswith("fix the cause and start a new search")
               for m in lines)
    (run / "summary.json").write_text(json.dumps({**summary, "stage": "shrink"}))
    # a search still running in another process: export works, says so, and does not suggest a resume
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from n2n.runfolder import RunLock; "
                               f"RunLock({str(run)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lines = []
        export_best(run, tmp_path / "d", log=lines.append)
        assert any(line.startswith(f"warning: this search has not finished (it is still running, in pid {holder.pid} on ")
                   and line.endswith("export again when it has finished") for line in lines), lines
    finally:
        holder.kill()
        holder.wait()
    (run / "summary.json").unlink()
    assert export_best(run, tmp_path / "c", log=lines.append)["search_finished"] is False


def test_a_run_read_as_another_search_space_is_refused(finished_run, tmp_path, capsys):
    """Another n2n may read the same teacher as another space (a family now handed to the generic
    space, FLOPs counted otherwise): resuming on other units, or exporting by other figures, is refused."""
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    meta = json.loads((run / "n2n.json").read_text())
    flops = meta["reference"]["flops"]
    (run / "n2n.json").write_text(json.dumps({**meta, "reference": {**meta["reference"], "flops": flops + 1}}))
    for cmd in (("resume", run), ("export", run, "--out", tmp_path / "o")):
        status, err = _main(capsys, *cmd)
        assert status == 2 and "reads the run's teacher as another search space than the run did" in err
        assert f"flops {flops + 1:,} then, {flops:,} now" in err and "Traceback" not in err
    # the same count of units, other units (helper-58: a generic teacher's units read otherwise by another
    # n2n passed, and old specs' ratios would have gone to other layers)
    names = meta["teacher"]["unit_names"]
    assert len(names) == meta["teacher"]["units"] > 1
    (run / "n2n.json").write_text(json.dumps({**meta, "teacher": {**meta["teacher"], "unit_names": names[::-1]}}))
    status, err = _main(capsys, "resume", run)
    assert status == 2 and f"unit 0 was {names[-1]}, is {names[0]} now" in err
    for edited, said in ((names[:-1], f"unit {len(names) - 1} was none, is {names[-1]} now"),  # (helper-59: IndexError)
                         (names + ["x\x1b[8m"], f"unit {len(names)} was 'x\\x1b[8m', is none now")):
        (run / "n2n.json").write_text(json.dumps({**meta, "teacher": {**meta["teacher"], "unit_names": edited}}))
        status, err = _main(capsys, "export", run, "--out", tmp_path / "o")
        assert status == 2 and said in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_a_summary_that_says_done_is_never_ahead_of_the_records(space, tmp_path, monkeypatch):
    """A resume of a finished run writes nothing, so a kill between the two files at the last save
    must not leave a "done" summary beside records lacking the last candidate."""
    import n2n.driver

    order, real = [], n2n.driver.write_json
    monkeypatch.setattr(n2n.driver, "write_json", lambda path, data: (order.append(path.name), real(path, data)))
    _driver(space, tmp_path).save()
    assert order == ["candidates.json", "summary.json"]


def test_sigterm_stops_a_search_as_ctrl_c_does_even_where_sigint_is_ignored():
    """A job started in the background ignores SIGINT: re-sending it to itself turned SIGTERM into nothing."""
    import time

    from n2n.errors import sigterm_as_sigint

    term = signal.getsignal(signal.SIGTERM)
    interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
    hup = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as in a terminal (the suite may run under nohup)
    try:
        # SIGHUP (the terminal closed) as well: it killed a search outright, its Ray folder left (helper-36)
        for sent in (signal.SIGTERM, signal.SIGHUP):
            with pytest.raises(KeyboardInterrupt), sigterm_as_sigint():
                os.kill(os.getpid(), sent)
                time.sleep(5)  # the handler runs at the next bytecode; never this long
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == (term, signal.SIG_DFL)  # restored
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # under nohup a hang-up stays ignored, as the user asked
        with sigterm_as_sigint():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGHUP, hup)


def test_sigterm_during_an_export_keeps_the_earlier_one_and_leaves_no_temp_folder(finished_run, tmp_path, capsys,
                                                                                   monkeypatch):
    """`kill` mid-export: Python's default for SIGTERM ended the process at once and left the hidden
    temp folder beside --out (helper-19 found four). As Ctrl-C: exit 130, the temp folder removed."""
    import time

    import n2n.models as models

    out = tmp_path / "student"
    assert _main(capsys, "export", finished_run, "--out", out)[0] == 0
    before = (out / "model.safetensors").read_bytes()
    write = models.write_json

    def killed(path, obj):  # SIGTERM while the new export is half-written
        write(path, obj)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs at the next bytecode; never this long

    def unhandled(signum, frame):  # pytest's own: had n2n left SIGTERM alone, the test fails (not dies)
        raise AssertionError("SIGTERM reached the handler n2n should have replaced")

    monkeypatch.setattr(models, "write_json", killed)
    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        status, err = _main(capsys, "export", finished_run, "--out", out, "--overwrite")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert status == 130 and err == "n2n: interrupted\n"
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]


def test_a_ctrl_c_while_n2n_imports_torch_is_an_interruption_not_a_traceback(capsys, monkeypatch):
    """helper-71: Ctrl-C in a command's first seconds, while torch and the rest import, printed a
    KeyboardInterrupt traceback through n2n/cli.py and torch's modules."""
    import sys

    class Interrupting:  # Ctrl-C lands while n2n.errors (which brings torch) imports
        def find_spec(self, name, path=None, target=None):
            if name == "n2n.errors":
                raise KeyboardInterrupt

    monkeypatch.delitem(sys.modules, "n2n.errors")
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    status, err = _main(capsys, "config")
    assert (status, err) == (130, "n2n: interrupted\n")


def test_a_search_or_resume_interrupted_while_it_starts_says_how_to_continue(finished_run, tmp_path, capsys,
                                                                             monkeypatch):
    """helper-68: Ctrl-C while `n2n resume` was starting said "n2n: interrupted" and no more; helper-71:
    so did `n2n search`, whose run folder was made, and neither run's n2n.log said it had stopped;
    helper-74: a run this process never made or locked (another process's, or one that was there
    before the search) is not this command's to write in."""
    import n2n.search
    from n2n.runfolder import RunLock

    def unfinished_copy(name):  # a run stopped in its shrink stage
        run = tmp_path / "runs" / name
        shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "stage": "shrink"}))
        return run, (run / "n2n.log").read_text()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    run, log = unfinished_copy("r")
    again = f"continue it with `n2n resume {run} --address 10.0.0.1:6379`"
    monkeypatch.setattr(n2n.search, "resume_search", interrupted)  # before it took the run's lock
    assert _main(capsys, "resume", run, "--address", "10.0.0.1:6379") == (130, f"n2n: interrupted; {again}\n")
    assert (run / "n2n.log").read_text() == log

    def locked_then_interrupted(run_dir, **k):
        with RunLock(run_dir):
            raise KeyboardInterrupt

    monkeypatch.setattr(n2n.search, "resume_search", locked_then_interrupted)
    assert _main(capsys, "resume", run, "--address", "10.0.0.1:6379") == (130, f"n2n: interrupted; {again}\n")
    assert (run / "n2n.log").read_text()[len(log):].endswith(f" search interrupted; {again}\n")

    busy, log = unfinished_copy("busy")  # another process holds it: not a word of continuing, nothing written
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom n2n.runfolder import RunLock\n"
                               "RunLock(sys.argv[1]).acquire()\nprint('held', flush=True)\ntime.sleep(120)", str(busy)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(n2n.search, "resume_search", interrupted)
        assert _main(capsys, "resume", busy) == (130, "n2n: interrupted\n")
    finally:
        holder.kill()
        holder.wait()
    assert (busy / "n2n.log").read_text() == log

    def made_then_interrupted(cfg, run_dir, **k):  # as create_run: the folder made, and locked
        shutil.copytree(finished_run, run_dir, ignore=shutil.ignore_patterns(".lock", "n2n.log", "summary.json"))
        RunLock(run_dir).acquire().release()
        raise KeyboardInterrupt

    monkeypatch.setattr(n2n.search, "run_search", made_then_interrupted)
    again = f"continue it with `n2n resume {tmp_path / 'runs' / 'new'}`"
    assert _main(capsys, "search", "--runs-dir", tmp_path / "runs", "--name", "new") == (130, f"n2n: interrupted; {again}\n")
    assert (tmp_path / "runs" / "new" / "n2n.log").read_text().endswith(f" search interrupted; {again}\n")
    # a folder that was there before the search is not its run: nothing said of it, nothing written in it
    other, log = unfinished_copy("other")
    monkeypatch.setattr(n2n.search, "run_search", interrupted)
    assert _main(capsys, "search", "--runs-dir", tmp_path / "runs", "--name", "other") == (130, "n2n: interrupted\n")
    assert (other / "n2n.log").read_text() == log
    # a finished run has nothing to continue
    monkeypatch.setattr(n2n.search, "resume_search", locked_then_interrupted)
    assert _main(capsys, "resume", finished_run) == (130, "n2n: interrupted\n")


def test_candidates_json_values_of_the_wrong_type_are_named_not_a_traceback(finished_run, tmp_path, capsys):
    """helper-25: a string reward was a TypeError traceback in report and policy fit; values out of range too."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    recs = read_records(run)
    for edit, shown in (({"reward": "0.9"}, "reward '0.9'"), ({"accuracy": float("nan")}, "accuracy nan"),
                        ({"spec": {"removed": "x", "ratios": [1.0]}}, "spec {'removed': 'x', 'ratios': [1.0]}"),
                        # helper-41: figures out of range ranked first in report, with val acc 1.5000
                        ({"accuracy": 1.5}, "accuracy 1.5 (expected a fraction 0..1)"),
                        ({"flops": -5}, "flops -5 (expected a whole number >= 0)"),
                        ({"latency_ms": -3.0}, "latency_ms -3.0 (expected a number >= 0 or null)"),
                        # helper-54: "" or null skipped export's check of the weights
                        ({"weights_digest": ""}, "weights_digest '' (expected 16 hex digits"),
                        ({"weights_digest": None}, "weights_digest None (expected 16 hex digits")):
        (run / "candidates.json").write_text(json.dumps([{**recs[0], **edit}, *recs[1:]]))
        for command in (("report", run), ("policy", "fit", run, "--out", tmp_path / "pol")):
            status, err = _main(capsys, *command)
            assert status == 2 and f"candidates.json: damaged, candidate 0 ({recs[0]['key']}) has {shown}" in err, err


def test_export_of_a_hand_edited_candidate_says_so_and_writes_nothing(finished_run, tmp_path):
    """candidates.json edited by hand (helper-19): a bare AssertionError, or a load_state_dict dump."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    recs = read_records(run)
    key = json.loads((run / "summary.json").read_text())["best"]["key"]
    i = next(i for i, r in enumerate(recs) if r["key"] == key)
    other = next(r for r in recs if r["spec"] != recs[i]["spec"])
    for edit, message in (({"params": recs[i]["params"] + 1}, rf"candidates.json: {key} records [\d,]+ params, its "
                                                               rf"spec builds [\d,]+; was candidates.json changed\?"),
                          ({"spec": other["spec"], "params": other["params"]},
                           rf"candidates.json: {key} records the spec of {other['key']}; was candidates.json changed\?"),
                          ({"accuracy": recs[i]["accuracy"] - 0.05},
                           rf"candidates.json: records {key} at val acc [\d.]+, its weights measure [\d.]+ on the run's "
                           rf"split; was candidates.json or results/ changed\?"),
                          ("weights", rf"results/{key}.safetensors: not the file the trial of {key} wrote \(its digest "
                                      rf"\w+ differs from candidates.json's {recs[i]['weights_digest']}\); restore it "
                                      rf"from a copy of the run, or export another candidate"),
                          # a run recorded before digests: the weights are checked by their shapes
                          ("undigested", rf"results/{key}.safetensors: expected the weights of the student candidates.json "
                                         rf"describes as {key} .*found others .*; was candidates.json or results/ changed\?")):
        if edit in ("weights", "undigested"):  # another candidate's weights under this one's name
            kept = [{k: v for k, v in r.items() if k != "weights_digest" or edit == "weights"} for r in recs]
            (run / "candidates.json").write_text(json.dumps(kept))
            shutil.copy(run / "results" / f"{other['key']}.safetensors", run / "results" / f"{key}.safetensors")
        else:
            (run / "candidates.json").write_text(json.dumps([{**r, **edit} if j == i else r for j, r in enumerate(recs)]))
        with pytest.raises(RunError, match=message):
            export_best(run, tmp_path / "out", key=key, log=lambda *_: None)
        assert not (tmp_path / "out").exists()
    # its own weights with a little noise (helper-53: measured within 2 samples of the record, and shipped)
    from n2n.models import load_weights, save_weights

    (run / "candidates.json").write_text(json.dumps(recs))
    shutil.copy(finished_run / "results" / f"{key}.safetensors", run / "results" / f"{key}.safetensors")
    noisy = {k: v + 1e-3 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in load_weights(run / "results" / f"{key}.safetensors").items()}
    save_weights(noisy, run / "results" / f"{key}.safetensors")
    with pytest.raises(RunError, match=rf"results/{key}.safetensors: not the file the trial of {key} wrote"):
        export_best(run, tmp_path / "out", key=key, log=lambda *_: None)
    assert not (tmp_path / "out").exists()
    shutil.copy(finished_run / "results" / f"{key}.safetensors", run / "results" / f"{key}.safetensors")
    assert export_best(run, tmp_path / "out", key=key, log=lambda *_: None)["params"] == recs[i]["params"]


def test_onnx_export_that_fails_writes_nothing_and_says_why(finished_run, tmp_path, capsys, monkeypatch):
    import sys

    def untraceable(*a, **k):
        raise RuntimeError("Unsupported operator aten::weird\nlong exporter report")

    def no_finetuning(*a, **k):
        raise AssertionError("fine-tuning started before the ONNX trace was tried")

    monkeypatch.setattr(torch.onnx, "export", untraceable)
    monkeypatch.setattr("n2n.export.distill", no_finetuning)
    trained = (finished_run / "results" / "trained.log").read_text()
    # with --finetune-epochs the trace is tried first: the failure comes before minutes of fine-tuning
    status, err = _main(capsys, "export", finished_run, "--out", tmp_path / "o", "--onnx", "--finetune-epochs", "50")
    assert status == 2 and "could not be exported to ONNX: Unsupported operator aten::weird;" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed
    status, err = _main(capsys, "export", finished_run, "--out", tmp_path / "o", "--onnx")
    assert status == 2 and "pip install 'n2n[onnx]'" in err and "missing onnxruntime" in err
    assert list(tmp_path.iterdir()) == [] and (finished_run / "results" / "trained.log").read_text() == trained


def test_a_student_the_onnx_exporter_cannot_trace_is_said_in_the_exporters_own_words(tmp_path, capfd):
    """helper-67: a data-dependent `if` was said as the exporter's "This is step 1/3" with its terminal
    colour codes, and a warning of torch's symbolic shapes reached the terminal."""
    from n2n.deploy import to_onnx

    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):  # (B, 4)
            return self.head(x) if x.sum() > 0 else -self.head(x)

    with pytest.raises(RunError) as e:
        to_onnx(Branchy(), torch.randn(2, 4), tmp_path / "m.onnx")
    assert str(e.value).startswith("--onnx: this student (Branchy) could not be exported to ONNX: Could not guard on "
                                   "data-dependent expression")
    assert "\x1b" not in str(e.value) and "step 1/3" not in str(e.value)
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"config": {}}', "[" * 200_000])  # deep: helper-29
def test_a_damaged_n2n_json_is_one_line(finished_run, tmp_path, capsys, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / "n2n.json").write_text(content)
    for cmd in (("resume", run), ("report", run), ("export", run, "--out", tmp_path / "o")):
        status, err = _main(capsys, *cmd)
        assert status == 2 and "n2n.json: damaged" in err and "Traceback" not in err


def test_a_damaged_record_or_reference_is_one_line(finished_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    meta = json.loads((run / "n2n.json").read_text())
    (run / "candidates.json").write_text('[{"key": "a"}]')
    for cmd in (("report", run), ("export", run, "--out", tmp_path / "o")):
        status, err = _main(capsys, *cmd)
        assert status == 2 and "candidate 0 (a) lacks ['stage', 'spec'," in err and "Traceback" not in err
    for config, found in (({"seed": 0}, None), ({"search": {"agent": "foo"}}, "search.agent: expected reinforce"),
                          (3, "config is not one this n2n reads (expected a mapping, found int): a run made by a newer n2n")):
        # a config lacking sections reads them as defaults (report used to stop with KeyError 'search')
        (run / "n2n.json").write_text(json.dumps({**meta, "config": config}))
        (run / "candidates.json").write_text((finished_run / "candidates.json").read_text())
        status, err = _main(capsys, "report", run)
        assert (status, "Traceback" in err) == ((0, False) if found is None else (2, False)) and (found or "") in err
    (run / "n2n.json").write_text(json.dumps({**meta, "reference": {}}))
    for cmd in (("report", run), ("export", run, "--out", tmp_path / "o")):
        status, err = _main(capsys, *cmd)
        assert status == 2 and "expected the teacher's reference figures (params, accuracy), found {}" in err
    # figures of the wrong kind (helper-28): a NaN accuracy passed every check (NaN compares False), a
    # resume then met no target and marked the run done; strings were tracebacks in report and export
    ref = meta["reference"]
    for edit, said in (({"reference": {**ref, "accuracy": float("nan")}}, "reference.accuracy a number in [0, 1], found nan"),
                       ({"reference": {**ref, "accuracy": "x"}}, "reference.accuracy a number in [0, 1], found 'x'"),
                       ({"reference": {**ref, "params": "many"}}, "reference.params a whole number >= 1, found 'many'"),
                       ({"input_shape": "abc"}, "input_shape a list of whole numbers >= 1, found 'abc'"),
                       ({"teacher": {**meta["teacher"], "test_accuracy": "x"}},
                        "teacher.test_accuracy a number in [0, 1], found 'x'")):
        (run / "n2n.json").write_text(json.dumps({**meta, **edit}))
        for cmd in (("report", run), ("export", run, "--out", tmp_path / "o"), ("resume", run)):
            status, err = _main(capsys, *cmd)
            assert status == 2 and f"n2n.json: damaged, expected {said}; was n2n.json changed?" in err, err
    (run / "n2n.json").write_text(json.dumps(meta))
    recs = json.loads((finished_run / "candidates.json").read_text())
    for edit, said in (({"latency_ms": "fast"}, "latency_ms 'fast'"), ({"summary": 3}, "summary 3")):
        (run / "candidates.json").write_text(json.dumps([{**recs[0], **edit}, *recs[1:]]))
        status, err = _main(capsys, "report", run)
        assert status == 2 and f"candidate 0 ({recs[0]['key']}) has {said}" in err, err
    assert not (tmp_path / "o").exists()


def test_report_refuses_figures_its_two_files_do_not_agree_on(finished_run, tmp_path, capsys):
    """helper-32: with n2n.json's teacher made 10x larger, `report` printed every student 10x smaller
    than it is; with a candidate's accuracy raised to the teacher's, that accuracy; `export` refused
    the same run. A candidate's compression and reward are functions of its figures and the teacher's:
    report refuses a compression that no longer agrees, and says so of a reward (runs scored by an
    earlier reward, which `n2n resume` rescores, are read, helper-34)."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    status, out = _main(capsys, "report", run, stream="out")
    # (a 1-epoch pick of this run may be far below its teacher, which the report warns of: not this warning)
    assert status == 0 and "record a reward their figures do not give" not in out
    meta = json.loads((run / "n2n.json").read_text())
    recs = json.loads((run / "candidates.json").read_text())
    larger = {**meta, "reference": {**meta["reference"], "params": meta["reference"]["params"] * 10}}
    (run / "n2n.json").write_text(json.dumps(larger))
    status, err = _main(capsys, "report", run)
    assert status == 2 and f"{run}: candidates.json and n2n.json disagree: {len(recs)} of {len(recs)} candidates" in err
    assert "one of them was edited since" in err and "Traceback" not in err
    status, err = _main(capsys, "export", run, "--out", tmp_path / "o")  # export's own check, worded as the cause
    assert status == 2 and "either n2n.json's figures were edited (restore them), or another n2n made the run" in err
    (run / "n2n.json").write_text(json.dumps(meta))
    raised = [{**recs[0], "accuracy": meta["reference"]["accuracy"]}, *recs[1:]]
    (run / "candidates.json").write_text(json.dumps(raised))
    status, out = _main(capsys, "report", run, stream="out")
    assert status == 0 and (f"warning: 1 of {len(recs)} candidates of {run} record a reward their figures do not give "
                            f"under this n2n's reward (e.g. {recs[0]['key']}: {recs[0]['reward']:.4g}, ") in out
    assert "the rewards below are from their figures" in out
    assert not (tmp_path / "o").exists()
    # helper-46: a reward edited to 1e300 was `--rank 1` to export (its metrics.json said search_reward 1e+300)
    # and fitted by `policy fit`, unsaid: both rank by the rewards the figures give, and say so
    from envs import Evaluation, Reference, reward
    from n2n.config import run_config

    cfg = run_config(meta["config"])
    ref = Reference(meta["reference"]["params"], meta["reference"]["flops"], meta["reference"]["accuracy"])
    worst = min((r for r in recs if r["failure"] is None), key=lambda r: r["reward"])
    (run / "candidates.json").write_text(json.dumps([{**r, "reward": 1e300} if r is worst else r for r in recs]))
    said = []
    from n2n.export import export_best

    metrics = export_best(run, tmp_path / "o", rank=1, log=said.append)
    best = max((r for r in recs if r["failure"] is None), key=lambda r: r["reward"])
    assert metrics["search_reward"] == best["reward"] == reward(Evaluation.from_dict(best), ref, cfg.reward_config())
    assert said[0] == (f"warning: 1 of {len(recs)} candidates of {run} record a reward their figures do not give under "
                       f"this n2n's reward (e.g. {worst['key']}: 1e+300, {worst['reward']:.4f} from its figures): "
                       f"candidates.json, or the reward or target in n2n.json, was edited, or an earlier n2n's reward "
                       f"scored them; export ranks them by the "
                       f"rewards their figures give")
    from n2n.policies import fit_policies

    said.clear()
    fit_policies([run], tmp_path / "pol", steps=2, log=said.append)
    assert said[0].endswith("; the policy is fit to the rewards their figures give")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "stage": "shrink"}))  # as if interrupted
    said.clear()
    fit_policies([run], tmp_path / "pol2", steps=2, log=said.append)
    assert said[0] == (f"warning: {run} has not finished (it stopped in stage shrink after "
                       f"{summary['candidates_evaluated']} candidates): fitting to its candidates so far")


# -- hostile or damaged inputs ----------------------------------------------------------------------

def test_a_hugging_face_folder_with_pickled_weights_or_a_hub_kernel_is_refused_unread(tmp_path, capsys):
    """helper-22: a folder with pytorch_model.bin alone went through torch.load (a hostile one gave a
    30-line traceback advising weights_only=False), and config.json's attn_implementation may name a
    Hub kernel that transformers fetches and runs."""
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=8))
    model.save_pretrained(tmp_path / "bin")  # as older transformers wrote checkpoints: a pickle
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "model.safetensors").unlink()
    status, err = _main(capsys, "teacher", "show", tmp_path / "bin")
    assert status == 2 and err == (f"n2n: error: {tmp_path / 'bin'}: expected weights in model.safetensors, found "
                                   f"pytorch_model.bin; n2n reads no pickled weights: convert them once, where you "
                                   f"trust the file, with model.save_pretrained(DIR, safe_serialization=True)\n")
    status, err = _main(capsys, "teacher", "train", "--hf", tmp_path / "bin", "--dataset", "text:none.jsonl",
                        "--out", tmp_path / "t")
    assert status == 2 and "n2n reads no pickled weights" in err and not (tmp_path / "t").exists()
    model.save_pretrained(tmp_path / "ok")
    assert _main(capsys, "teacher", "show", tmp_path / "ok") == (0, "")  # the same folder in safetensors loads
    # and is shown as a search reads it (helper-49/51: "units: -", "FLOPs: ?" without a recorded length)
    shown = dict(line.strip().split(": ", 1) for line in _main(capsys, "teacher", "show", tmp_path / "ok",
                                                                 stream="out")[1].splitlines())
    assert shown["input shape"] == "[128] (tokens: none recorded; a search's default without teacher.max_length)"
    assert shown["units"] == "3 (name kind width): layer0 layer 8, attn0 attention 2, ffn0 ffn 8" and shown["FLOPs (MACs/sample)"][0].isdigit()
    config = json.loads((tmp_path / "ok" / "config.json").read_text())
    (tmp_path / "ok" / "config.json").write_text(json.dumps({**config, "attn_implementation": "kernels-community/x"}))
    status, err = _main(capsys, "teacher", "show", tmp_path / "ok")
    assert status == 2 and "attn_implementation is 'kernels-community/x', which transformers may fetch from the Hub" in err
    # helper-23: flash_attention_2 without the flash_attn package makes transformers fetch a Hub kernel
    (tmp_path / "ok" / "config.json").write_text(json.dumps({**config, "attn_implementation": "flash_attention_2"}))
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    status, err = _main(capsys, "teacher", "show", tmp_path / "ok")
    assert status == 2 and "expected eager or sdpa (delete the key for the default)" in err
    assert hf_logging.get_verbosity() == verbosity  # a refusal leaves transformers' logging as it was
    (tmp_path / "ok" / "config.json").write_text(json.dumps({**config, "attn_implementation": "sdpa"}))
    assert _main(capsys, "teacher", "show", tmp_path / "ok") == (0, "")
    # helper-36: a pickle under model.safetensors' name was transformers' SafetensorError traceback (read as
    # safetensors, so nothing was unpickled)
    (tmp_path / "ok" / "model.safetensors").write_bytes((tmp_path / "bin" / "pytorch_model.bin").read_bytes())
    status, err = _main(capsys, "teacher", "show", tmp_path / "ok")
    assert status == 2 and err.startswith(f"n2n: error: {tmp_path / 'ok'}: not a loadable Hugging Face classifier "
                                          "folder ("), err


@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json"])
def test_a_hugging_face_folder_s_own_code_is_never_run_even_when_the_user_says_yes(tmp_path, capsys, monkeypatch, where):
    """helper-41: with trust_remote_code left at transformers' default, a checkpoint whose config names
    code of its own (auto_map) made `teacher train --hf` ask "Do you wish to run the custom code?", and
    a "y" ran it. Refused before transformers reads the folder."""
    import io

    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = tmp_path / "evil"
    BertForSequenceClassification(BertConfig(vocab_size=12, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=8)).save_pretrained(folder)
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad"])}
    BertTokenizerFast(vocab=vocab).save_pretrained(folder)
    marker = tmp_path / "RAN"
    (folder / "evil_code.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast\n"
        "class EvilConfig(BertConfig):\n    model_type = 'evilbert'\n"
        "class EvilModel(BertForSequenceClassification):\n    config_class = EvilConfig\n"
        "class EvilTokenizer(BertTokenizerFast):\n    pass\n")
    if where == "config.json":
        edit = {"model_type": "evilbert", "auto_map": {"AutoConfig": "evil_code.EvilConfig",
                                                       "AutoModelForSequenceClassification": "evil_code.EvilModel"}}
    else:
        edit = {"auto_map": {"AutoTokenizer": [None, "evil_code.EvilTokenizer"]}}
    settings = json.loads((folder / where).read_text())
    (folder / where).write_text(json.dumps({**settings, **edit}))
    (tmp_path / "reviews.csv").write_text("text,label\n" + "good good,pos\nbad bad,neg\n" * 20)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))  # the user answers yes to every prompt
    status, err = _main(capsys, "teacher", "train", "--hf", folder, "--dataset", f"text:{tmp_path / 'reviews.csv'}",
                        "--max-length", "8", "--epochs", "1", "--out", tmp_path / "t")
    assert status == 2 and err.startswith(f"n2n: error: {folder / where}: auto_map names code of the folder's own ("), err
    assert "which n2n never runs" in err and not marker.exists() and not (tmp_path / "t").exists()


@pytest.mark.parametrize("key, value", [("attn_implementation", "kernels-community/evil"),
                                        ("_attn_implementation_internal", "flash_attention_2"),
                                        ("experts_implementation", "kernels-community/moe"),
                                        ("attn_implementation", {"": "kernels-community/evil"})])
def test_an_encoder_student_s_arch_json_naming_a_hub_kernel_is_refused_before_transformers_reads_it(
        tmp_path, capsys, monkeypatch, key, value):
    """helper-32: the check of config.json above did not reach the config block of an exported
    transformer student's arch.json, which went to AutoConfig.for_model as it was: a kernel in the
    local cache would have been imported and run by `teacher show`, a search or load_student."""
    import transformers
    from safetensors.torch import save_file

    from n2n import load_student
    from search_spaces import UnsupportedModel

    arch = {"family": "hf-encoder", "input_shape": [8], "layers": [{"heads": 2, "ffn": 16}],
            "config": {"model_type": "bert", "hidden_size": 8, "num_attention_heads": 2, "intermediate_size": 16,
                       "num_hidden_layers": 1, "vocab_size": 20, "num_labels": 2, "max_position_embeddings": 16,
                       key: value}}
    folder = tmp_path / "student"
    folder.mkdir()
    (folder / "arch.json").write_text(json.dumps(arch))
    save_file({"x": torch.zeros(1)}, folder / "model.safetensors")
    read = []
    monkeypatch.setattr(transformers.AutoConfig, "for_model", lambda *a, **k: read.append(a) or 1 / 0)
    status, err = _main(capsys, "teacher", "show", folder)
    assert status == 2 and f"arch.json config: {key} is {value!r}, which transformers may fetch from the Hub" in err
    with pytest.raises(UnsupportedModel, match=f"{key} is"):
        load_student(folder)
    assert read == []  # refused before transformers saw any of it


def test_an_encoder_student_s_arch_json_naming_code_of_its_own_is_never_run_even_when_the_user_says_yes(
        tmp_path, capsys, monkeypatch):
    """helper-57: arch.json's config went to AutoConfig.for_model with its auto_map; with a model type
    transformers has no sequence classifier for, from_config asked "Do you wish to run the custom
    code?" and a "y" imported the folder's module, from load_student and from `search` alike."""
    import io

    from safetensors.torch import save_file

    from n2n import load_student
    from search_spaces import UnsupportedModel

    folder = tmp_path / "student"
    folder.mkdir()
    marker = tmp_path / "RAN"
    (folder / "evilmod.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                       "from transformers import PreTrainedModel\nclass Evil(PreTrainedModel): pass\n")
    arch = {"family": "hf-encoder", "input_shape": [8], "layers": [],
            "config": {"model_type": "vit", "name_or_path": str(folder),
                       "auto_map": {"AutoModelForSequenceClassification": "evilmod.Evil"}}}
    (folder / "arch.json").write_text(json.dumps(arch))
    save_file({"x": torch.zeros(1)}, folder / "model.safetensors")
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))  # the user answers yes to every prompt
    monkeypatch.syspath_prepend(str(folder))
    with pytest.raises(UnsupportedModel, match=r"arch.json config: auto_map names code of the folder's own \("):
        load_student(folder)
    status, err = _main(capsys, "teacher", "show", folder)
    assert status == 2 and "auto_map names code of the folder's own" in err and "which n2n never runs" in err
    assert not marker.exists()
    # and transformers is told never to run such code, should a config reach it another way: no prompt
    monkeypatch.setattr("search_spaces.transformer.check_no_hub_code", lambda *a: None)
    with pytest.raises(Exception, match="contains custom code which must be executed"):
        load_student(folder)
    assert not marker.exists()


def test_a_link_out_of_a_hugging_face_folder_is_refused_not_copied_into_exports(tmp_path, monkeypatch):
    """helper-57: a teacher folder's chat_template.jinja linked to a file of secrets: the tokenizer read
    it and `n2n export` wrote it into the student's tokenizer. A hub cache snapshot (files linked into
    its repository's blobs/) still loads."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from n2n.data import tokenizer_for
    from n2n.errors import DataError
    from n2n.models import ModelError, load_hf_classifier

    repo = tmp_path / "models--me--tiny"
    folder = repo / "snapshots" / "abc"
    BertForSequenceClassification(BertConfig(vocab_size=12, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=8)).save_pretrained(folder)
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad"])}
    BertTokenizerFast(vocab=vocab).save_pretrained(folder)
    (repo / "blobs").mkdir()
    for p in list(folder.iterdir()):  # as huggingface_hub lays out a download
        os.replace(p, repo / "blobs" / p.name)
        p.symlink_to(Path("..", "..", "blobs", p.name))
    assert load_hf_classifier(folder) is not None and tokenizer_for(folder) is not None
    local = tmp_path / "local"  # an older huggingface_hub's --local-dir download: links into the cache's blobs
    local.mkdir()
    for p in (repo / "blobs").iterdir():
        (local / p.name).symlink_to(p)
    assert load_hf_classifier(local) is not None and tokenizer_for(local) is not None
    secret = tmp_path / "SECRET"
    secret.write_text("AWS_SECRET_ACCESS_KEY=hunter2")
    # files named by path in the tokenizer's settings (helper-58: tokenizer_config.json's "vocab"; helper-59:
    # its init_inputs, special_tokens_map.json's keys, a name relative to the folder the command runs in):
    # the tokenizer read them and the teacher and every export carried the secret's lines. It is loaded
    # from a copy of its files now, without such settings: the secret is never read
    plain = tmp_path / "plain"
    shutil.copytree(local, plain, symlinks=False)
    (plain / "tokenizer.json").unlink()  # the slow BertTokenizer: the one that takes a vocab by path
    settings = json.loads((plain / "tokenizer_config.json").read_text())
    vocab = tokenizer_for(plain).get_vocab()
    (tmp_path / "outside").mkdir()
    shutil.copy(local / "tokenizer.json", tmp_path / "outside" / "tokenizer.1.0.json")
    leaked = json.loads((tmp_path / "outside" / "tokenizer.1.0.json").read_text())
    leaked["model"]["vocab"] = {"[UNK]": 0, "AWS_SECRET_ACCESS_KEY=hunter2": 1}
    (tmp_path / "outside" / "tokenizer.1.0.json").write_text(json.dumps(leaked))
    monkeypatch.chdir(tmp_path)
    for edit, name in ((lambda d: {**d, "vocab": str(secret)}, "tokenizer_config.json"),
                       (lambda d: {**d, "vocab": "SECRET"}, "tokenizer_config.json"),  # read from the working folder
                       (lambda d: {**d, "init_inputs": [str(secret)]}, "tokenizer_config.json"),
                       (lambda d: {**d, "tokenizer_file": "/gone/tokenizer.json", "special_tokens_map_file": str(secret)},
                        "tokenizer_config.json"),
                       (lambda d: {**d, "fast_tokenizer_files": [str(tmp_path / "outside" / "tokenizer.1.0.json")]},
                        "tokenizer_config.json"),  # (helper-60: a whole outside tokenizer.json was read)
                       (lambda d: {"vocab": str(secret), "vocab_file": str(secret), "unk_token": "[UNK]"},
                        "special_tokens_map.json")):
        before = (plain / name).read_text() if (plain / name).exists() else "{}"
        (plain / name).write_text(json.dumps(edit(json.loads(before) if name != "tokenizer_config.json" else settings)))
        assert tokenizer_for(plain).get_vocab() == vocab and load_hf_classifier(plain) is not None
        (plain / name).write_text(before)
    (plain / "additional_chat_templates").mkdir()  # named chat templates are kept (helper-60: lost)
    (plain / "additional_chat_templates" / "tool.jinja").write_text("TOOL{{ messages|length }}")
    assert tokenizer_for(plain).chat_template["tool"] == "TOOL{{ messages|length }}"
    fake = tmp_path / "models--evil" / "blobs" / "d"  # a folder named like a hub blob (helper-61): its links
    fake.mkdir(parents=True)                            # were never looked at
    (fake / "x.jinja").symlink_to(secret)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(plain, elsewhere, ignore=shutil.ignore_patterns("additional_chat_templates"))
    (elsewhere / "additional_chat_templates").symlink_to(fake, target_is_directory=True)
    with pytest.raises(DataError, match=r"additional_chat_templates: a link to .*models--evil/blobs/d, outside the folder"):
        tokenizer_for(elsewhere)
    (plain / "additional_chat_templates" / "x.jinja").symlink_to(secret)  # a link in a subfolder (helper-59)
    with pytest.raises(DataError, match=r"additional_chat_templates/x.jinja: a link to .*, outside the folder"):
        tokenizer_for(plain)
    (folder / "chat_template.jinja").symlink_to(secret)
    with pytest.raises(ModelError, match=rf"chat_template.jinja: a link to {re.escape(str(secret))}, outside the folder"):
        load_hf_classifier(folder)
    with pytest.raises(DataError, match="chat_template.jinja: a link to .*, outside the folder; n2n reads only"):
        tokenizer_for(folder)
    (folder / "chat_template.jinja").unlink()
    os.mkfifo(folder / "chat_template.jinja")  # would hang the tokenizer's read
    with pytest.raises(DataError, match="chat_template.jinja: expected a file or folder, found a FIFO"):
        tokenizer_for(folder)


def test_a_stray_module_where_n2n_runs_is_never_imported_by_the_trials(tiny_config, tmp_path):
    """Ray put the driver's working directory first on every worker's sys.path: an envs.py there
    replaced n2n's own package in every trial (a numpy.py, numpy), with or without --allow-factory."""
    from pathlib import Path

    work, marker = tmp_path / "project", tmp_path / "ran"
    work.mkdir()
    (work / "envs.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    # as users run it: the console script, and Ray's authentication mode left to n2n (a token)
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}, "RAY_USAGE_STATS_ENABLED": "0"}
    n2n_command = Path(sys.executable).parent / "n2n"
    done = subprocess.run([str(n2n_command), "search", str(tiny_config), "--runs-dir", str(tmp_path / "runs"),
                           "--name", "r", "--set", "search.stages=[shrink]", "--set", "search.shrink_budget=2",
                           "--set", "finalists.k=0"], cwd=work, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    records = read_records(tmp_path / "runs" / "r")
    assert not marker.exists() and len(records) == 2 and all(r["failure"] is None for r in records)


def test_a_local_search_s_ray_admits_no_one_without_its_token(tmp_path):
    """helper-25: the local Ray ran with authentication off and its servers listen on every
    interface (Ray 2.60, whatever node IP it is given): anyone reaching the machine could join as a
    driver and run code as the user. Each search's Ray now wants a fresh random token, held only in
    its processes' environment; the user's environment is as it was afterwards."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os, subprocess, sys\n"
        "import ray\n"
        "from n2n.raysession import ray_session\n"
        "with ray_session(None, log=lambda *_: None):\n"
        "    token, gcs = os.environ['RAY_AUTH_TOKEN'], ray.get_runtime_context().gcs_address\n"
        "    assert ray.get(ray.remote(lambda: 7).remote()) == 7 and len(token) == 64\n"
        "    env = {k: v for k, v in os.environ.items() if k != 'RAY_AUTH_TOKEN'}\n"
        "    for mode, extra in (('disabled', {}), ('token', {'RAY_AUTH_TOKEN': '0' * 64}), ('token', {'RAY_AUTH_TOKEN': token})):\n"
        # 3 tries to reach the GCS, not Ray's 20 (1 s apart): the join with the token shows they suffice
        "        r = subprocess.run([sys.executable, '-c', f'import ray; ray.init(address={gcs!r}); print(\"JOINED\")'],\n"
        "                           env={**env, 'RAY_AUTH_MODE': mode, **extra, 'RAY_gcs_server_port_wait_time_s': '3'},\n"
        "                           capture_output=True, text=True)\n"
        "        print(mode, 'JOINED' in r.stdout, r.returncode)\n"
        "with ray_session(None, log=lambda *_: None):  # a second session in the process (helper-26: refused)\n"
        "    assert ray.get(ray.remote(lambda: 8).remote()) == 8 and os.environ['RAY_AUTH_TOKEN'] != token\n"
        "    gcs = ray.get_runtime_context().gcs_address\n"
        "    from n2n.errors import RunError\n"  # n2n as the driver, without the token (helper-31: no hint)
        "    r = subprocess.run([sys.executable, '-c', 'from n2n.raysession import ray_session\\n'\n"
        "                        f'with ray_session({gcs!r}, log=print): print(\"JOINED\")'], env={**env, 'HOME': os.getcwd()},\n"
        "                       capture_output=True, text=True)\n"
        "    print('n2n', 'JOINED' in r.stdout, 'set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to what `ray get-auth-token`' in r.stderr)\n"
        "said = []\n"
        "os.environ['RAY_AUTH_MODE'] = 'disabled'\n"
        "with ray_session(None, log=said.append):  # the user's own choice, said\n"
        "    pass\n"
        "del os.environ['RAY_AUTH_MODE']\n"
        "print('disabled', said[0].startswith('warning: RAY_AUTH_MODE=disabled: this search') and len(said))\n"
        "print('after', os.environ.get('RAY_AUTH_MODE'), os.environ.get('RAY_AUTH_TOKEN'))\n")
    # a token of the user's own, without a mode: replaced during the sessions, put back after (helper-26)
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}, "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_TOKEN": "users-own"}
    done = subprocess.run([sys.executable, str(probe)], env=env, capture_output=True, text=True, timeout=400,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-7:] == ["disabled False 1", "token False 1", "token True 0", "n2n False True", "disabled 1",
                                            "after None users-own", ""], done.stdout


def test_a_local_ray_that_cannot_start_is_said_in_a_line_naming_its_logs(monkeypatch, request):
    """helper-89: under `ulimit -f 500` Ray's own processes died at start, and the search ended in a
    traceback ("The current node timed out during startup"), exit 1."""
    import resource

    import ray

    from n2n.raysession import ray_session

    short = tempfile.mkdtemp(prefix="n2nr-", dir="/tmp")  # Ray's socket paths: a short temp root
    request.addfinalizer(lambda: shutil.rmtree(short, ignore_errors=True))
    monkeypatch.setenv("RAY_TMPDIR", short)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "shutdown", lambda: None)  # (the suite's own Ray stays up)

    def dies(**_):
        raise Exception("The current node timed out during startup. This could happen because some of the Ray "
                        "processes failed to startup.")

    monkeypatch.setattr(ray, "init", dies)
    before = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    for limit, hint in ((256_000, "files are limited to 256,000 bytes here (`ulimit -f`), likely too few for Ray's own: "
                                  "raise the limit"),
                        (2**40, "run the command again; if it fails again, its logs say why"),  # a site's limit
                        (resource.RLIM_INFINITY, "run the command again; if it fails again, its logs say why")):
        monkeypatch.setattr(resource, "getrlimit", lambda which, limit=limit: (limit, resource.RLIM_INFINITY))
        with pytest.raises(RunError) as e:
            with ray_session(None, log=lambda *_: None):
                pass
        logs = re.fullmatch(r"Ray could not start on this machine: The current node timed out during startup\. This "
                            rf"could happen because some of the Ray processes failed to startup\.; {re.escape(hint)}; "
                            r"Ray's logs are in (\S+)/session_latest/logs", str(e.value))
        assert logs and Path(logs[1]).parent == Path(short)  # kept for them; the next n2n command removes it
        # the token n2n set for it is gone with it: the user's environment as it was
        assert {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")} == before


def test_a_hang_up_of_the_whole_terminal_stops_a_search_cleanly(tiny_config, tmp_path):
    """helper-39: a closed terminal sends SIGHUP to the whole process group; Ray's gcs_server and raylet
    died of it, and the search, stopping cleanly, waited 60 s for them until Ray ended it without its
    resume line, its Ray folder left. Ray's processes now ignore it; the search stops as on Ctrl-C."""
    import tempfile
    import time

    short = Path(tempfile.mkdtemp(prefix="n2nh-", dir="/tmp"))  # room for Ray's socket paths under it
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "TMPDIR": str(short),
           "RAY_USAGE_STATS_ENABLED": "0"}
    run = tmp_path / "runs" / "h"
    p = subprocess.Popen([sys.executable, "-m", "n2n.cli", "search", str(tiny_config), "--runs-dir", str(run.parent),
                          "--name", "h", "--set", "search.removal_budget=40"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, cwd=tmp_path, start_new_session=True,  # a terminal's group
                         # as a terminal's: under `nohup` (a CI job) the search inherited SIGHUP ignored, and kept
                         # ignoring it, as n2n does for `nohup n2n search` (n2n.errors.sigterm_as_sigint)
                         preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    try:
        lines = []
        while not (lines and lines[-1].startswith("[removal 2/")):
            lines.append(p.stdout.readline())
            assert lines[-1], "".join(lines)[-3000:]
        start = time.monotonic()
        os.killpg(p.pid, signal.SIGHUP)  # as the terminal's closing does: the driver and Ray's processes
        out = p.communicate(timeout=150)[0]
        took = time.monotonic() - start
        left = [q.name for q in short.iterdir() if q.name.startswith("n2n-ray-")]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(short, ignore_errors=True)
    assert p.returncode == 130 and f"search interrupted; continue it with `n2n resume {run}`" in out, out[-3000:]
    assert f"search interrupted; continue it with `n2n resume {run}`" in (run / "n2n.log").read_text()
    assert took < 45, f"the search waited {took:.0f} s for Ray's processes (60 s before the fix)"
    assert left == []  # its Ray folder removed


def test_a_long_temp_folder_does_not_stop_a_local_search(tmp_path, monkeypatch):
    """helper-36: TMPDIR longer than ~28 characters (HPC schedulers set deep job folders) made every
    search a traceback: Ray's socket paths (at most 107 bytes) under n2n's Ray folder under it. Such a
    Ray keeps its temp files under /tmp, and says so; a short RAY_TMPDIR, Ray's own setting, is used."""
    deep = tmp_path / "scratch" / "jdoe" / "job1234567890"
    deep.mkdir(parents=True)
    probe = ("import ray\nfrom n2n.raysession import ray_session\n"
             "with ray_session(None, log=print):\n"
             "    print('ran', ray.get(ray.remote(lambda: 7).remote()), ray.get_runtime_context().get_node_id() != '')\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "TMPDIR": str(deep),
           "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [
        f"the temp folder (TMPDIR) {deep} is too long for Ray's socket paths (at most 26 bytes, to leave room for the "
        "81 of n2n's and Ray's folders below it): this search's Ray keeps its temp files under /tmp instead", "ran 7 True"]
    assert not list(deep.iterdir())  # nothing of Ray's there, and nothing left behind
    from n2n.raysession import ray_temp_root

    monkeypatch.setenv("RAY_TMPDIR", "/tmp")  # a short one of the user's own: theirs, without a word
    assert ray_temp_root(log=pytest.fail) == "/tmp"
    # macOS: Ray's own default is /tmp whatever TMPDIR says (its default, /var/folders/..., is always too long)
    monkeypatch.delenv("RAY_TMPDIR")
    monkeypatch.setenv("TMPDIR", str(deep))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches its answer
    monkeypatch.setattr(sys, "platform", "darwin")
    assert ray_temp_root(log=pytest.fail) == "/tmp"
    monkeypatch.setattr(sys, "platform", "linux")
    said = []
    assert ray_temp_root(log=said.append) == "/tmp" and "is too long for Ray's socket paths" in said[0]


def test_a_full_temp_folder_is_said_before_ray_starts(tmp_path, monkeypatch):
    """helper-36: a full TMPDIR ended in Ray's startup timeout a minute later, in a traceback."""
    from collections import namedtuple

    from n2n import raysession

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(raysession.shutil, "disk_usage", lambda p: usage(10 << 30, (10 << 30) - (5 << 20), 5 << 20))
    # (the folder ray_session makes before ray.init; this test's process may hold a Ray already)
    with pytest.raises(RunError, match=f"^{tmp_path}: expected at least 64 MiB free for a local Ray's temp files, "
                                       r"found 5.0 MiB; free some, or set RAY_TMPDIR to a folder with room$"):
        raysession._ray_temp(str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # nothing made
    monkeypatch.undo()
    with pytest.raises(RunError, match=f"^{tmp_path / 'none'}: expected a folder for a local Ray's temp files "
                                       r"\(RAY_TMPDIR, else the temp folder\), no such file or directory; set RAY_TMPDIR "
                                       "to a writable folder$"):
        raysession._ray_temp(str(tmp_path / "none"))  # helper-42: "[Errno 2] ...", naming no setting
    made = Path(raysession._ray_temp(str(tmp_path)))
    assert made.parent == tmp_path and json.loads((made / "n2n-driver.json").read_text())["pid"] == os.getpid()


def test_a_trial_no_node_can_hold_is_refused_not_left_waiting(ray_session, tiny_config, tmp_path):
    """Tune would keep such a trial pending forever, with nothing said (the session has 2 CPUs, 1 GPU)."""
    from n2n.errors import ConfigError
    from n2n.search import check_resources

    for over, asked in (({"resources.gpus_per_trial": 2.0}, "1 CPU and 2 GPU"),
                        ({"resources.cpus_per_trial": 64.0}, "64 CPU and 0 GPU")):
        cfg = load_config(tiny_config, over)
        with pytest.raises(ConfigError, match=f"a trial asks for {asked}, but no Ray node has that"):
            run_search(cfg, tmp_path / "runs" / "never", log=lambda *_: None)
        assert not (tmp_path / "runs").exists()
        # on a cluster (an autoscaler may add a node) a warning, for the run's n2n.log (helper-44: printed before it)
        assert check_resources(cfg, remote=True) == (f"warning: resources: a trial asks for {asked}, but no Ray node "
                                                     f"has that (nodes: 2 CPU, 1 GPU); trials wait until the cluster "
                                                     f"has such a node")


def test_address_where_no_cluster_answers_fails_fast_before_writing(tmp_path, capsys):
    import time

    for address, why in (("127.0.0.1:1", "no Ray cluster answers there"), ("no-such-host.invalid:6379", "no Ray cluster answers"),
                         ("nonsense", "expected auto or HOST:PORT"),
                         ("local", "--address local: drop --address to run on this machine")):  # helper-25: runs lost
        start = time.monotonic()
        status, err = _main(capsys, "search", "--address", address, "--runs-dir", tmp_path / "runs", "--name", "x")
        assert status == 2 and why in err and time.monotonic() - start < 30
    assert not (tmp_path / "runs").exists()


def test_an_address_where_something_else_answers_is_refused_at_once(monkeypatch):
    """helper-44: a web server at --address had Ray retrying for over 10 minutes; a server that
    accepts and never answers would too. A Ray head's gRPC server answers an HTTP/2 preface at once
    (the real one: tests/test_cluster.py)."""
    import socket
    import threading

    from n2n import raysession

    def serve(reply):
        srv = socket.create_server(("127.0.0.1", 0))
        def run():
            conn, _ = srv.accept()
            conn.recv(64)
            if reply is not None:
                conn.sendall(reply)
            threading.Event().wait(3)  # hold the connection open
            conn.close()
        threading.Thread(target=run, daemon=True).start()
        return f"127.0.0.1:{srv.getsockname()[1]}"

    monkeypatch.setattr(raysession, "PROBE_SECONDS", 1)
    web = serve(b"HTTP/1.0 400 Bad request\r\n\r\n")
    with pytest.raises(RunError, match=rf"^--address {web}: something answers there, but not a Ray head node \(expected "
                                       r"its gRPC server, got b'HTTP/1.0 '\); `ray start --head` prints"):
        raysession.check_address(web)
    silent = serve(None)
    with pytest.raises(RunError, match=rf"^--address {silent}: something accepts connections there but said nothing in "
                                       r"1 s, where a Ray head node's gRPC server answers at once"):
        raysession.check_address(silent)
    grpc = serve(bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))  # an HTTP/2 SETTINGS frame, as a gRPC server sends first
    raysession.check_address(grpc)
    # the hint after a failed connection fits its cause (helper-44: token advice to a user who had set one)
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    assert "on its head node give --address auto, elsewhere set RAY_AUTH_MODE=token" in raysession._connect_hint("x")
    assert raysession._connect_hint("Ray Client requires pip package `ray[client]`") == (
        "; give the head node's GCS address HOST:PORT (`ray start --head` prints it), not ray://")
    assert "admits only drivers with its token: set RAY_AUTH_MODE" in raysession._connect_hint("x", "auto")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # helper-45: Ray sends no token to HOST:PORT without it
    assert raysession._connect_hint("x", "h:1") == "; RAY_AUTH_TOKEN is set but RAY_AUTH_MODE is not: set RAY_AUTH_MODE=token too"
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert raysession._connect_hint("x", "h:1").startswith("; RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) is set: is it "
                                                           "the cluster's token?")
    # IPv6 as Ray writes it (helper-45: the brackets were taken as part of the host name)
    monkeypatch.setattr(raysession, "PROBE_SECONDS", 1)
    with pytest.raises(ConfigError, match=r"write an IPv6 address as \[ADDR\]:PORT, as Ray does; got '::1:6379'"):
        raysession.check_address("::1:6379")
    with pytest.raises(RunError, match=r"^--address \[::1\]:1: no Ray cluster answers there"):
        raysession.check_address("[::1]:1")  # looked up as ::1, where nothing listens on port 1
    tls = serve(b"\x15\x03\x03\x00\x02\x02\x46")  # a TLS alert
    with pytest.raises(RunError, match=r"the server there speaks TLS; a Ray cluster with TLS on needs RAY_USE_TLS=1"):
        raysession.check_address(tls)


def test_ray_client_s_port_given_as_address_is_refused_at_once(monkeypatch):
    """Ray Client's server (port 10001, for ray://) is gRPC too, so it passed the probe above, and Ray
    then retried its GCS there for good (seen for 7 minutes against a gRPC server of another kind).
    n2n asks it Ray Client's PING: its server replies, or with token authentication on and no token
    sent says UNAUTHENTICATED; a GCS has no such method, UNIMPLEMENTED with or without a token (the
    real one, Ray 2.60: 1 ms; tests/test_cluster.py runs a search against one). The status blocks below
    are the bytes Ray's GCS sent."""
    import socket
    import threading
    import time

    from n2n import raysession

    settings = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
    status = {code: b"\x88@\x0ccontent-type\x10application/grpc@\x0bgrpc-status" + bytes([len(code)]) + code
              for code in (b"12", b"16")}

    def serve(ends_with_headers: bool):
        srv = socket.create_server(("127.0.0.1", 0))

        def answer(conn):
            with conn:
                try:
                    call = conn.recv(4096)  # the preface, settings and the call, sent at once
                    conn.sendall(settings)
                    conn.recv(4096)  # (the acknowledgement of ours; the first probe's connection: nothing)
                    # token authentication on: a call without the token is refused unread (helper-58)
                    block = status[b"12"] if ends_with_headers else None if b"authorization" in call else status[b"16"]
                    reply = b"\x00\x00\x00\x00\x02{}"  # gRPC message prefix + a ClusterInfoResponse's bytes
                    conn.sendall(len(block).to_bytes(3, "big") + b"\x01\x05\x00\x00\x00\x01" + block if block else
                                 b"\x00\x00\x01\x01\x04\x00\x00\x00\x01\x88" + len(reply).to_bytes(3, "big")
                                 + b"\x00\x00\x00\x00\x00\x01" + reply)  # HEADERS (END_STREAM: the status), DATA
                    threading.Event().wait(2)
                except OSError:
                    pass

        def run():
            while True:
                conn, _ = srv.accept()
                threading.Thread(target=answer, args=(conn,), daemon=True).start()

        threading.Thread(target=run, daemon=True).start()
        return f"127.0.0.1:{srv.getsockname()[1]}"

    monkeypatch.setattr(raysession, "PROBE_SECONDS", 1)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)  # the token `ray start --head` made; sent as Ray's clients do,
    for mode in ("", "disabled"):                    # in token mode only (helper-59: sent to any host otherwise)
        monkeypatch.setenv("RAY_AUTH_MODE", mode)
        assert raysession._auth_metadata() == []
    for mode in ("token", ""):  # the PING answered; or, without the token, refused as UNAUTHENTICATED
        monkeypatch.setenv("RAY_AUTH_MODE", mode)
        assert raysession._auth_metadata() == ([("authorization", "Bearer " + "0" * 64)] if mode else [])
        client = serve(ends_with_headers=False)
        with pytest.raises(RunError, match=rf"^--address {client}: that is Ray Client's port \(for ray:// addresses\), "
                                           r"which n2n does not use; give the head node's GCS address HOST:PORT instead "
                                           r"\(6379"):
            raysession.check_address(client)
        raysession.check_address(serve(ends_with_headers=True))  # a GCS: no such method
    # a server that sends a byte at a time is left after the probe's seconds (helper-59: read on for good)
    srv = socket.create_server(("127.0.0.1", 0))

    def trickle():
        conn, _ = srv.accept()
        with conn:
            conn.recv(4096)
            try:
                conn.sendall(bytes([0, 16, 0, 4, 0, 0, 0, 0, 0]))  # a 4096-byte SETTINGS frame announced...
                for _ in range(40):
                    time.sleep(0.1)
                    conn.sendall(b"\x00")  # ...and sent slowly
            except OSError:
                pass

    threading.Thread(target=trickle, daemon=True).start()
    start = time.monotonic()
    assert raysession._ray_client_answers("127.0.0.1", srv.getsockname()[1], "x") is False
    assert time.monotonic() - start < 2.5


def test_damaged_teacher_folders_are_one_line_errors(small_teacher, tmp_path, capsys):
    model, arch, _ = small_teacher
    damages = {
        "truncated weights": ("model.safetensors", lambda b: b[: len(b) // 2], "not a readable safetensors file"),
        "invalid arch": ("arch.json", lambda b: b[:-5], "arch.json: not a readable JSON file"),
        "arch is a list": ("arch.json", lambda b: b"[1, 2]", "arch.json: expected a JSON object, got list"),
    }
    for name, (file, cut, message) in damages.items():
        folder = tmp_path / name.replace(" ", "_")
        save_model(folder, model, arch, {"dataset": "mnist1d"})
        (folder / file).write_bytes(cut((folder / file).read_bytes()))
        status, err = _main(capsys, "search", "--set", f"teacher.path={folder}", "--runs-dir", tmp_path / "runs")
        assert status == 2 and message in err and "Traceback" not in err, (name, err)
    assert not (tmp_path / "runs").exists()


def test_a_hugging_face_config_asking_for_far_more_than_its_weights_is_refused_before_it_is_built(tmp_path, capsys):
    """helper-76: num_hidden_layers 600 over MiniLM's 6 layers of weights filled 4.6 GB before the
    missing layers were refused; counted on the meta device first now, as arch.json's families are."""
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path / "hf"
    BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                             intermediate_size=64)).save_pretrained(folder)
    assert _main(capsys, "teacher", "show", folder)[0] == 0  # as saved: loads
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2000}))
    # a file from_pretrained never reads, whose 90-byte header claims 10 GB, counts for nothing (helper-79)
    header = json.dumps({"w": {"dtype": "F32", "shape": [2_500_000_000], "data_offsets": [0, 10_000_000_000]}}).encode()
    (folder / "extra.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    status, err = _main(capsys, "teacher", "show", folder)
    # 2,000 layers of 25,216 (hidden 64, FFN 64) + embeddings 34,944 + pooler 4,160 + head 130; the same
    # where config.json names its weights file, or beside an index from_pretrained does not read (helper-80)
    (folder / "model.safetensors").rename(folder / "w.safetensors")
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2000,
                                                    "transformers_weights": "w.safetensors"}))
    assert _main(capsys, "teacher", "show", folder)[1].startswith(f"n2n: error: {folder}: config.json describes a "
                                                                  "model of 50,471,234 parameters")
    (folder / "w.safetensors").rename(folder / "model.safetensors")
    (folder / "model.safetensors.index.json").write_text("{")
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2000}))
    assert (status, err) == (2, f"n2n: error: {folder}: config.json describes a model of 50,471,234 parameters (193 MiB), "
                                "far more than its safetensors weights hold (0.3 MiB): they do not belong together (was "
                                "config.json edited, or copied from another model?)\n")


def test_an_export_s_arch_json_edited_hostile_or_not_is_refused_or_said(finished_run, tmp_path, capsys):
    """helper-97: padding 100000 in an export's arch.json asked for 77 GB in `teacher show` (and in a
    search of it as teacher); stride 0, padding -5 and a pool of kernel 0 were tracebacks."""
    export_best(finished_run, tmp_path / "student", log=lambda *_: None)
    arch = json.loads((tmp_path / "student" / "arch.json").read_text())
    conv = next(i for i, d in enumerate(arch["layers"]) if d["kind"] == "conv")
    pool = next(i for i, d in enumerate(arch["layers"]) if d["kind"] == "pool")
    for name, at, edit, said in (
            ("bomb", conv, {"padding": 100_000}, "padding 100000: expected kernel and stride at least 1 and padding "
                                                  "from 0 to the kernel"),
            ("stride", conv, {"stride": 0}, ", stride 0, "),
            ("negative", conv, {"padding": -5}, "padding -5: expected"),
            ("float", conv, {"stride": 1.5}, "conv kernel, stride and padding: expected whole numbers, got "),
            ("pool", pool, {"kernel": 0}, "pool kernel 0, "),
            ("pool-pad", pool, {"padding": 5}, "padding 5: expected kernel and stride at least 1 and padding from 0 "
                                               "to half the kernel")):
        folder = tmp_path / name
        shutil.copytree(tmp_path / "student", folder)
        layers = [dict(d, **edit) if i == at else d for i, d in enumerate(arch["layers"])]
        (folder / "arch.json").write_text(json.dumps({**arch, "layers": layers}))
        status, err = _main(capsys, "teacher", "show", folder)
        assert status == 2 and err.startswith("n2n: error: ") and "is malformed: " in err and said in err, (name, err)
        assert "Traceback" not in err and err.count("\n") == 1, (name, err)
    # an arch.json edited since the export (helper-97: "input" scaled by 1.6 loaded unsaid, at val 0.9387 for
    # metrics.json's 0.9867): load_student and teacher show warn; the export as written, not
    import warnings

    import n2n

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        n2n.load_student(tmp_path / "student")
        status, err = _main(capsys, "teacher", "show", tmp_path / "student")
        assert status == 0 and "warning" not in err
    folder = tmp_path / "scaled"
    shutil.copytree(tmp_path / "student", folder)
    (folder / "arch.json").write_text(json.dumps({**arch, "input": {**arch["input"], "scale": [v * 1.6 for v in arch[
        "input"]["scale"]] if isinstance(arch["input"]["scale"], list) else arch["input"]["scale"] * 1.6}}))
    said = (f"{folder}: its arch.json changed since n2n exported it (metrics.json lists other digests): the figures "
            f"in metrics.json and README-n2n.md are not this model's")
    with pytest.warns(UserWarning, match=re.escape(said)):
        n2n.load_student(folder)
    status, err = _main(capsys, "teacher", "show", folder)
    assert status == 0 and err == f"warning: {said}\n"
    # an input shape the data does not give: a search refuses it, teacher show traced it (23 s, 3.4 GB)
    folder = tmp_path / "shape"
    shutil.copytree(tmp_path / "student", folder)
    (folder / "arch.json").write_text(json.dumps({**arch, "input_shape": [1, 400_000_000],
                                                  "input": {**arch["input"], "shape": [1, 400_000_000]}}))
    status, out = _main(capsys, "teacher", "show", folder, stream="out")
    assert status == 0 and "FLOPs (MACs/sample): ? (arch.json records inputs of shape (1, 400000000), the data gives " \
                           "(1, 40): a search refuses it)" in out, out
    (folder / "arch.json").write_text(json.dumps({**arch, "input_shape": 5}))  # (helper-98: a TypeError traceback)
    status, out = _main(capsys, "teacher", "show", folder, stream="out")
    assert status == 0 and "FLOPs (MACs/sample): ? (inputs of shape 5: not traced, past 10,000,000 values or not " \
                           "sizes)" in out, out


def test_hostile_arch_json_values_are_one_line_errors(small_teacher, tmp_path, capsys):
    """helper-28: negative or NaN sizes, a malformed "input" and deep nesting were tracebacks."""
    model, arch, _ = small_teacher
    hp = arch["hparams"]
    for name, edit, said in (
            ("negative", {"hparams": {**hp, "hidden": -5}}, "arch of family 'vgg' is malformed: "),
            ("nan", {"hparams": {**hp, "width_mult": float("nan")}}, "arch of family 'vgg' is malformed: "),
            # well formed, only too large (tens of terabytes): not "malformed" (helper-32), and refused before
            # anything is allocated, as is a size that fits (0.6 GB, from a folder of 0.2 MB: it was built, then refused)
            ("huge", {"hparams": {**hp, "width_mult": 30000.0}},
             "arch.json describes a model of 696,730,181,760,714 parameters"),
            ("large", {"hparams": {**hp, "hidden": 2_000_000}},
             "arch.json describes a model of 150,049,146 parameters (572 MiB), far more than model.safetensors "
             "holds (0.2 MiB): they do not belong together"),
            ("input-str", {"input": {"scale": "x", "shift": 0.0, "shape": [1, 40]}},
             "arch.json: expected \"input\" to hold numbers scale and shift and a shape of whole numbers >= 1"),
            ("input-list", {"input": [1, 2]}, "as n2n writes it; found [1, 2]"),
            # (helper-68) inputs of another shape than the model's: said at load, not at the first call
            ("input-shape", {"input": {"scale": 1.0, "shift": 0.0, "shape": [1, 40, 10**9]}},
             "arch.json: \"input\" prepares inputs of shape [1, 40, 1000000000] for a model that takes [1, 40]"),
            # a Hugging Face folder elsewhere, which n2n names so only in memory (helper-68)
            ("hf-path", {"family": "hf-pretrained", "path": str(tmp_path)},
             "arch.json: family 'hf-pretrained' names a Hugging Face folder n2n loaded, in memory"),
            ("deep", None, "arch.json: not a readable JSON file (maximum recursion depth exceeded")):
        folder = tmp_path / name
        save_model(folder, model, arch, {"dataset": "mnist1d"})
        (folder / "arch.json").write_text("[" * 200_000 if edit is None else json.dumps({**arch, **edit}))
        status, err = _main(capsys, "teacher", "show", folder)
        assert status == 2 and said in err and "Traceback" not in err, (name, err)
    # a weights file that is none (a Git LFS pointer not pulled) is said as such, not as too small for arch.json
    # (helper-64), however large the model
    (tmp_path / "large" / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\n")
    status, err = _main(capsys, "teacher", "show", tmp_path / "large")
    assert status == 2 and f"{tmp_path / 'large' / 'model.safetensors'}: not a readable safetensors file" in err, err
    status, err = _main(capsys, "teacher", "train", "--width-mult", "inf", "--out", tmp_path / "t")
    assert status == 2 and "width_mult (--width-mult): expected a finite number > 0, got inf" in err and not (tmp_path / "t").exists()


def test_teacher_train_rejects_bad_values_before_training(tmp_path, capsys):
    cases = {("--epochs", "-1"): "teacher.recipe.epochs (--epochs): expected >= 1, got -1",
             ("--width-mult", "0"): "(--width-mult): expected a finite number > 0, got 0.0",
             ("--lr", "-1"): "(--lr): expected a finite number > 0, got -1.0",
             ("--device", "tpu"): "--device: expected auto, cpu, cuda, cuda:N or mps, got 'tpu'"}
    for (flag, value), message in cases.items():
        status, err = _main(capsys, "teacher", "train", "--dataset", "digits", flag, value, "--out", tmp_path / "t")
        assert status == 2 and message in err, err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    status, err = _main(capsys, "teacher", "train", "--dataset", "digits", "--out", tmp_path / "mine", "--overwrite")
    assert status == 2 and "is not an earlier n2n teacher" in err and (tmp_path / "mine" / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_labels_outside_the_teachers_classes_are_refused_before_the_run_exists(small_teacher, tmp_path, capsys):
    import numpy as np

    model, arch, _ = small_teacher
    save_model(tmp_path / "t", model, arch, {})  # a teacher of the user's own, with no split recorded
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(60, 40)).astype(np.float32), y=np.arange(60) % 12)
    status, err = _main(capsys, "search", "--runs-dir", tmp_path / "runs", "--set", f"teacher.path={tmp_path / 't'}",
                        "--set", f"teacher.dataset=npz:{tmp_path / 'd.npz'}")
    assert status == 2 and "labels go up to 11, but the teacher has only 10 outputs" in err
    assert not (tmp_path / "runs").exists()


def test_a_teacher_path_under_the_home_folder_is_read_there(small_teacher, tmp_path, monkeypatch):
    """helper-68: `teacher.path=~/t` was read as a folder named ~ beside the command, though the README
    says ~ is the home folder, as in data paths."""
    from n2n.search import resolve_teacher

    model, arch, _ = small_teacher
    save_model(tmp_path / "t", model, arch, {"dataset": "mnist1d"})
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path / "t")  # not where ~ is
    assert resolve_teacher(load_config(None, {"teacher.path": "~/t"})) == (tmp_path / "t", "mnist1d")


def test_trained_log_is_written_before_the_result(small_teacher, tmp_path, monkeypatch):
    """A kill between the audit line and the result file must leave the training in the audit log."""
    import n2n.storage as storage

    model, _, _ = small_teacher

    def killed(path, obj):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(storage, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        storage.LocalResults(tmp_path).save("k1", model.state_dict(), {"accuracy": 0.5})
    assert (tmp_path / "trained.log").read_text().split() == ["k1"]
    assert (tmp_path / "k1.safetensors").exists() and not (tmp_path / "k1.json").exists()


def test_a_search_where_every_trial_fails_stops_early_under_ray(ray_session, tiny_config, tmp_path):
    cfg = load_config(tiny_config, {"distill.lr": 1e12, "distill.optimizer": "sgd", "search.concurrency": 1})
    logs = []
    summary = run_search(cfg, tmp_path / "run", log=logs.append)
    assert summary["stage"] == "failed" and summary["candidates_evaluated"] == 3  # not the budget of 12
    assert "the first 3 candidates all failed; the first: loss became" in summary["failure"]
    assert not any("search finished" in m for m in logs) and cli._status(summary) == 1


def test_files_follow_the_users_umask(small_teacher, tmp_path):
    """Temp-file helpers create 0600/0700; what n2n leaves behind must look like any other tool's output."""
    from n2n.models import umask

    model, arch, _ = small_teacher
    assert umask() == (lambda m: (os.umask(m), m)[1])(os.umask(0o022))  # read without changing it
    save_model(tmp_path / "t", model, arch, {})
    run = tmp_path / "run"
    from n2n.runfolder import create_run, save_state

    with create_run(run, _fake_meta()):
        save_state(run, {"records": []})
    mask = umask()
    for path in [tmp_path / "t", run, run / "results"]:
        assert path.stat().st_mode & 0o777 == 0o777 & ~mask, path
    for path in [*(tmp_path / "t").iterdir(), run / "n2n.json", run / "search_state.pt"]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path

    def like_save_pretrained(tmp):  # helper-12: transformers' save_pretrained left hf/model.safetensors 0600
        (tmp / "hf").mkdir(mode=0o700)
        fd = os.open(tmp / "hf" / "model.safetensors", os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)

    save_model(tmp_path / "e", model, arch, {}, extra={"spec.json": {}}, finish=like_save_pretrained)
    assert (tmp_path / "e" / "hf").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (tmp_path / "e" / "hf" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_run_refuses_a_teacher_whose_weights_changed(finished_run, small_teacher, tmp_path, capsys):
    """`teacher train --overwrite` may replace a teacher that a run still uses; the run must notice."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    meta = json.loads((run / "n2n.json").read_text())
    teacher = tmp_path / "teacher"
    shutil.copytree(meta["teacher_folder"], teacher)
    meta["teacher_folder"] = str(teacher)
    (run / "n2n.json").write_text(json.dumps(meta))
    assert export_best(run, tmp_path / "ok", log=lambda *_: None)["params"] > 0  # the same teacher: fine
    os.replace(teacher, tmp_path / "moved")  # helper-24: a moved teacher read as changed weights
    status, err = _main(capsys, "export", run, "--out", tmp_path / "o")
    assert status == 2 and f"{teacher}: the run's teacher is not there (moved or deleted?)" in err
    # a run received from another machine: its teacher's copy here is named in n2n.json (helper-97: unsaid)
    assert "or, for a copy of it elsewhere (a run from another machine), set \"teacher_folder\" in the run's n2n.json " \
           "to that copy (its weights are checked to be the run's teacher's)" in err
    (run / "n2n.json").write_text(json.dumps({**meta, "teacher_folder": str(tmp_path / "moved")}))
    assert export_best(run, tmp_path / "ok2", log=lambda *_: None)["params"] > 0
    (run / "n2n.json").write_text(json.dumps(meta))
    os.replace(tmp_path / "moved", teacher)
    model, arch, _ = small_teacher
    said = []
    save_model(teacher, model, json.loads((teacher / "arch.json").read_text()), {"recipe": {}}, overwrite=True,
               log=said.append)
    # the teacher it replaced is kept, not deleted: without it the run could never be exported again
    kept = tmp_path / f"teacher.replaced-{meta['teacher_digest']}"
    assert weights_digest(kept) == meta["teacher_digest"] != weights_digest(teacher)
    assert said == [f"the teacher {teacher} replaced is kept at {kept}: runs searched from it need it to resume "
                    f"or export (move it back for them); delete it when none does"]
    for cmd in (("resume", run), ("export", run, "--out", tmp_path / "o")):
        status, err = _main(capsys, *cmd)
        assert status == 2 and "the teacher's weights changed since this run started" in err
        assert f"`n2n teacher train --overwrite` kept it at {kept}: move {teacher} aside, then {kept} to {teacher}, " \
               "or start a new search" in err
    assert not (tmp_path / "o").exists()
    os.replace(teacher, tmp_path / "newer")
    os.replace(kept, teacher)  # moved back as the error says: the run exports again
    assert export_best(run, tmp_path / "again", log=lambda *_: None)["params"] > 0
    # the same weights again keep no copy; a kept name taken by something else is never deleted or
    # written through: the teacher goes to a name of its own
    said.clear()
    save_model(teacher, model, json.loads((teacher / "arch.json").read_text()), {"recipe": {}}, overwrite=True,
               log=said.append)
    save_model(teacher, model, json.loads((teacher / "arch.json").read_text()), {"recipe": {}}, overwrite=True,
               log=said.append)
    assert len(said) == 1 and kept.is_dir()  # the first replaced the run's teacher, the second the same weights
    os.replace(teacher, tmp_path / "newest")
    os.replace(kept, teacher)  # the run's teacher again, and a file of the user's where it would be kept
    kept.write_text("mine")
    save_model(teacher, model, json.loads((teacher / "arch.json").read_text()), {"recipe": {}}, overwrite=True,
               log=said.append)
    assert kept.read_text() == "mine" and len(said) == 2
    elsewhere = Path(said[1].split(" is kept at ")[1].split(": ")[0])
    assert elsewhere != kept and elsewhere.name.startswith(kept.name) and weights_digest(elsewhere) == meta["teacher_digest"]
    # and the errors name it there (helper-46: "restore it", and a folder of the user's at the plain name was
    # named as the kept teacher, unchecked)
    status, err = _main(capsys, "export", run, "--out", tmp_path / "o")
    assert status == 2 and f"kept it at {elsewhere}: move {teacher} aside, then {elsewhere} to {teacher}" in err


def test_export_refuses_teacher_figures_edited_in_n2n_json(finished_run, tmp_path):
    """n2n.json's teacher accuracies, edited (helper-19: test 0.980 for 0.9907), made an export 1.47
    points below the teacher on test say met_on_test: true. Measured again, they must agree."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    meta = json.loads((run / "n2n.json").read_text())
    for edit, part in ((("reference", "accuracy"), "val"), (("teacher", "test_accuracy"), "test")):
        doctored = json.loads(json.dumps(meta))
        recorded = doctored[edit[0]][edit[1]]
        doctored[edit[0]][edit[1]] = recorded - 0.01  # one point: more than two samples of either split
        (run / "n2n.json").write_text(json.dumps(doctored))
        with pytest.raises(RunError, match=rf"n2n.json: records the teacher's {part} accuracy as "
                                           rf"{recorded - 0.01:.4f}, the teacher measures {recorded:.4f} on the "
                                           rf"run's split; was n2n.json changed\?"):
            export_best(run, tmp_path / "out", log=lambda *_: None)
        assert not (tmp_path / "out").exists()
    (run / "n2n.json").write_text(json.dumps(meta))  # as recorded: exports
    assert export_best(run, tmp_path / "out", log=lambda *_: None)["teacher"]["val_accuracy"] == meta["reference"]["accuracy"]
    # within the 2 samples a float sum may flip, an edit passes, but what is written is what the teacher
    # measures (helper-22: the edited figure made a student 0.37 points below read 0.37 above)
    doctored = json.loads(json.dumps(meta))
    doctored["teacher"]["test_accuracy"] -= 1e-4  # less than a sample: passes
    (run / "n2n.json").write_text(json.dumps(doctored))
    written = export_best(run, tmp_path / "out2", log=lambda *_: None)
    assert written["teacher"]["test_accuracy"] == meta["teacher"]["test_accuracy"]


def test_ctrl_c_between_the_renames_of_an_overwrite_waits_until_they_are_done(small_teacher, tmp_path, monkeypatch,
                                                                               capsys):
    """Interrupted between moving the old teacher aside and the new one in, the finally deleted the
    new one and left the old hidden in .t.old.* (helper-20): the commit now finishes first, and, as
    the interrupt then says only "interrupted", it says what was written and kept (helper-82)."""
    import copy

    import n2n.models as models

    model, arch, _ = small_teacher
    save_model(tmp_path / "t", model, arch, {"recipe": {}})
    old_digest = weights_digest(tmp_path / "t")
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    swap = models.exchange

    def interrupted(a, b):
        swap(a, b)
        os.kill(os.getpid(), signal.SIGINT)  # the new one in place, the old one not yet kept

    monkeypatch.setattr(models, "exchange", interrupted)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            save_model(tmp_path / "t", other, arch, {"recipe": {}}, overwrite=True, log=lambda *_: None)
    finally:
        signal.signal(signal.SIGINT, previous)
    kept = tmp_path / f"t.replaced-{old_digest}"
    assert weights_digest(kept) == old_digest != weights_digest(tmp_path / "t")  # both whole, in place
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["t", kept.name])  # nothing hidden left
    assert capsys.readouterr().err.splitlines() == [
        f"{tmp_path / 't'}: the new teacher was moved into place before the interrupt took effect",
        models.kept_message(tmp_path / "t", kept)]


def test_an_overwrite_swaps_folders_in_one_step_and_a_teacher_left_hidden_midway_is_found(small_teacher, tmp_path):
    """helper-82: the old folder moved aside, then the new one in: a `kill -9` between the two renames
    left neither at --out, and two overwrites at once hid the original teacher in a temp folder that
    no later message named. The folders are now swapped in one step, the one swapped out read after
    it; a teacher an interrupted replacement left in its hidden temp folder is named by the runs
    that need it."""
    import n2n.models as models
    from n2n.search import check_teacher

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "f").write_text("a"), (b / "f").write_text("b")
    models.exchange(a, b)
    assert (a / "f").read_text() == "b" and (b / "f").read_text() == "a"
    import copy

    model, arch, _ = small_teacher
    model = copy.deepcopy(model)  # the fixture's teacher is shared: its weights are changed below
    save_model(tmp_path / "t", model, arch, {"recipe": {}})
    digest = weights_digest(tmp_path / "t")
    meta = {"teacher_folder": str(tmp_path / "t"), "teacher_digest": digest}
    hidden = tmp_path / ".t.k2j4x9"  # where a replacement killed after its swap left the old teacher
    os.replace(tmp_path / "t", hidden)
    with pytest.raises(RunError, match=rf"^{tmp_path / 't'}: the run's teacher is not there; a folder with its weights "
                                       rf"is at {hidden}: move it to {tmp_path / 't'}$"):
        check_teacher(meta)
    # a long name's hidden folders are named by its start (helper-89: past 255 bytes with the rest): found too
    long = tmp_path / ("t" * 200)
    os.replace(hidden, long)
    cut = tmp_path / (models.hidden_prefix(long) + "k2j4x9")
    os.replace(long, cut)
    with pytest.raises(RunError, match=rf"a folder with its weights is at {cut}: move it to {long}$"):
        check_teacher({**meta, "teacher_folder": str(long)})
    os.replace(cut, hidden)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    said = []
    save_model(tmp_path / "t", model, arch, {"recipe": {}}, log=said.append)
    # the next write there says what is hidden beside it (it holds a teacher: not deleted unasked)
    assert said == [f"note: 1 hidden folder beside {tmp_path / 't'} (.t.k2j4x9) was left by an n2n killed while "
                    f"writing t, or one writing it now; a teacher it replaced may be there: delete them once no run "
                    f"needs it"]
    said.clear()  # an export's: no teacher in it (helper-96: the note said there might be)
    (tmp_path / ".e.k2j4x9").mkdir()
    shutil.rmtree(models.new_folder(tmp_path / "e", kind="export", log=said.append))
    assert said == [f"note: 1 hidden folder beside {tmp_path / 'e'} (.e.k2j4x9) was left by an n2n killed while writing "
                    f"e, or one writing it now; delete them once none writes there"]
    shutil.rmtree(tmp_path / ".e.k2j4x9")
    with pytest.raises(RunError, match=rf"kept it at {hidden}: move {tmp_path / 't'} aside"):
        check_teacher(meta)
    # a failure after the swap puts the old folder back (helper-83: the caller's cleanup deleted it)
    shutil.rmtree(hidden)
    now = weights_digest(tmp_path / "t")
    (tmp_path / f"t.replaced-{now}").write_text("a file of the user's under the kept folder's name")

    make = models.tempfile.mkdtemp

    def full(*args, **kwargs):  # no room for the kept folder's other name, after the swap
        if kwargs.get("prefix", "").startswith("t.replaced-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return make(*args, **kwargs)

    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models.tempfile, "mkdtemp", full)
        with pytest.raises(OSError, match="No space left"):
            save_model(tmp_path / "t", model, arch, {"recipe": {}}, overwrite=True, log=lambda *_: None)
    assert weights_digest(tmp_path / "t") == now and not list(tmp_path.glob(".t.*"))


def test_a_symlinked_lock_file_is_never_followed(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(target)
    with pytest.raises(Exception, match="cannot take the run's lock"):
        RunLock(run).acquire()
    assert target.read_text() == "keep me"



def test_a_run_folder_from_elsewhere_cannot_make_n2n_write_outside_it(finished_run, tmp_path, capsys):
    import shutil

    from n2n.storage import Fetcher, LocalResults

    run = tmp_path / "theirs"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    victims = {name: tmp_path / f"victim-{name.replace('/', '-')}" for name in
               ("reward_curve.png", "pareto.png", "results/trained.log", "n2n.log")}
    for name, victim in victims.items():
        victim.write_text("precious")
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(victim)
    make_report(run)  # the plots replace the links, never write through them
    assert (run / "pareto.png").read_bytes()[:4] == b"\x89PNG" and not (run / "pareto.png").is_symlink()
    with pytest.raises(OSError, match="Too many levels of symbolic links"):  # the trial fails, saying why
        LocalResults(run / "results").save("1-2-x", None, {"key": "1-2-x"})
    status, err = _main(capsys, "resume", run)  # the run's log is appended to by every command
    assert status == 2 and "cannot append to the run's log" in err and "Traceback" not in err
    assert all(v.read_text() == "precious" for v in victims.values())

    (run / "n2n.log").unlink()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")  # an --out that is a link to nothing: taken
    for overwrite in ((), ("--overwrite",)):
        status, err = _main(capsys, "export", run, "--out", tmp_path / "dangling", *overwrite)
        assert status == 2 and "dangling" in err and "Traceback" not in err and not (tmp_path / "nowhere").exists()

    # keys name files under results/: one that climbs out is refused wherever it is read
    records = json.loads((run / "candidates.json").read_text())
    records[0]["key"] = "../../escaped"
    (run / "candidates.json").write_text(json.dumps(records))
    status, err = _main(capsys, "export", run, "--out", tmp_path / "student")
    assert status == 2 and "candidate key '../../escaped'" in err and not (tmp_path / "student").exists()
    store = tmp_path / "store"
    (store / "x").mkdir(parents=True)
    (store / "x" / "escaped.json").write_text("{}")
    said = []
    Fetcher(f"file://{store}/x", run, said.append).sync(["../x/escaped"])
    assert not (tmp_path / "x").exists() and "candidate key '../x/escaped'" in said[0]
    from n2n.storage import check_key

    assert check_key("x-12-x-384@10ep") == "x-12-x-384@10ep"  # a finalist's key is fine


def test_a_trial_that_raises_reports_why(ray_session, tiny_config, tmp_path):
    """cuda asked for on cluster workers without it (the driver cannot check them; on this machine it
    is refused up front, test_config): every trial raises; the records say why, briefly."""
    cfg = load_config(tiny_config, {"resources.device": "cuda", "search.concurrency": 1})
    with pytest.raises(ConfigError, match=r"resources.device cuda: the torch .* of this machine .* cannot use it \(0 CUDA "
                                          r"devices\); set resources.device to auto or cpu"):
        run_search(cfg, tmp_path / "local", log=lambda *_: None)  # a local search: before the teacher or the run
    assert not (tmp_path / "local").exists()
    summary = run_search(cfg, tmp_path / "run", address="auto", log=lambda *_: None)  # the session's Ray as a "cluster"
    records = read_records(tmp_path / "run")
    assert summary["stage"] == "failed" and len(records) == 3
    assert all(r["failure"].startswith("ModelError: device cuda: the torch ") and r["params"] > 0
               and r["device"] == "cuda" for r in records), records[0]["failure"]
    assert (tmp_path / "run" / "results" / f"{records[0]['key']}.traceback.txt").read_text().startswith("Traceback")
    # resumed on this machine: refused by name, with what can be done (resume takes no --set)
    with pytest.raises(ConfigError, match=r"resources.device cuda \(recorded in this run\): the torch .* "
                                          r"cannot use it .*; resume on a machine that has it, or with --address"):
        resume_search(tmp_path / "run", log=lambda *_: None)


def test_export_says_when_its_student_misses_the_target_on_test():
    from n2n.export import accuracy_target

    teacher = {"val_accuracy": 0.99, "test_accuracy": 0.99}
    out, warning = accuracy_target(1.0, teacher, 0.985, 0.9727, 0.25)  # chosen on val (0.5 below), 1.73 below on test
    assert out == {"max_accuracy_drop": 1.0, "margin": 0.25, "val_drop_points": 0.5, "test_drop_points": 1.73,
                   "met_on_val": True, "met_on_test": False}
    assert warning.startswith("warning: on the test split this student is 1.73 points below the teacher, "
                              "past the target of 1, though it meets it on validation, where it was picked among "
                              "many noisy figures (its margin of 0.25 points was not enough here; ")
    assert "(a margin, target.margin or export --margin P, picks a finalist with points to spare; " in \
        accuracy_target(1.0, teacher, 0.985, 0.9727, 0.0)[1]
    # named by --key or --rank, which refuse --margin: no pick to blame (helper-77, helper-75: it advised --margin)
    assert accuracy_target(1.0, teacher, 0.985, 0.9727, None)[1] == (
        "warning: on the test split this student is 1.73 points below the teacher, past the target of 1, though it "
        "meets it on validation; `n2n report` lists the candidates, and `--key KEY` exports another")
    assert accuracy_target(1.0, teacher, 0.985, 0.985) == ({"max_accuracy_drop": 1.0, "margin": 0.0,
                                                            "val_drop_points": 0.5, "test_drop_points": 0.5,
                                                            "met_on_val": True, "met_on_test": True}, None)
    # helper-21: past the target on validation but not on test, nothing was said
    assert accuracy_target(0.2, teacher, 0.985, 0.985)[1] == (
        "warning: on validation this student is 0.50 points below the teacher, past the target of 0.2 (on test "
        "0.50 below); `n2n report` lists the candidates, and `--key KEY` exports another")
    assert "(its margin of 1 point was not enough here; " in accuracy_target(1.0, teacher, 0.985, 0.9727, 1.0)[1]
    # fine-tuned weights are not the ones the pick measured: the miss is not put on the pick's margin (helper-96)
    assert accuracy_target(1.0, teacher, 0.985, 0.9727, 0.25, finetuned="epoch 3 of 10")[1] == (
        "warning: on the test split this student is 1.73 points below the teacher, past the target of 1, though it "
        "meets it on validation, after fine-tuning (epoch 3 of 10, kept as the best of its epochs on validation, which "
        "makes that figure optimistic too); `n2n report` lists the candidates as searched")
    assert accuracy_target(1.0, teacher, 0.985, 0.9727, None, finetuned="epoch 2 of 5")[1].endswith(
        "past the target of 1, though it meets it on validation, after fine-tuning (epoch 2 of 5, kept as the best of its "
        "epochs on validation, which makes that figure optimistic too); `n2n report` lists the candidates, and `--key "
        "KEY` exports another")  # named by --key or --rank (helper-98: the fine-tune went unsaid there)
    # the fallback pick (no finalist had the margin) is not said to have had it (helper-21)
    assert "(none of the candidates it chose among had the margin of 0.25 points; " in \
        accuracy_target(1.0, teacher, 0.9807, 0.9727, 0.25, short_of_margin=True)[1]


def test_a_drop_just_past_the_target_is_not_shown_as_the_target():
    """helper-88: 1.003 points past a 1-point target was recorded as 1.0 beside met_on_val false, and
    said "1.00 points below the teacher, past the target of 1" (a 997-sample split can land there)."""
    from n2n.export import _target_lines, accuracy_target

    teacher = {"val_accuracy": 990 / 997, "test_accuracy": 990 / 997}
    out, warning = accuracy_target(1.0, teacher, 980 / 997, 980 / 997, 0.25)  # 10 of 997 below: 1.003 points
    assert (out["val_drop_points"], out["test_drop_points"], out["met_on_val"]) == (1.003, 1.003, False)
    assert warning.startswith("warning: on validation this student is 1.0030 points below the teacher, past the "
                              "target of 1 (on test 1.0030 below)")
    lines = _target_lines({"target": out, "chosen_because": "--key"})
    assert "this student is 1.0030 below on validation (PAST it) and 1.0030 below on test (PAST it)" in lines[0]
    from envs import gap_said

    assert (gap_said(-0.0), gap_said(0.0), gap_said(-0.7), gap_said(1.003)) == ("0.00 below", "0.00 below", "0.70 above",
                                                                                  "1.0030 below")  # (-0.0: helper-98)
    # a student above the teacher read "-1.12 below" (session 33's note)
    above, _ = accuracy_target(1.0, teacher, 992 / 997, 1.0, 0.25)
    assert above["test_drop_points"] == -0.7 and _target_lines({"target": above, "chosen_because": "--key"})[0] == (
        "- The run's target: at most 1 point of accuracy below the teacher: this student is 0.20 above on validation "
        "(within it) and 0.70 above on test (within it).")
    # two decimals wherever they cannot read as the limit
    assert accuracy_target(2.0, teacher, 980 / 997, 980 / 997, 0.25)[0]["val_drop_points"] == 1.0
    assert accuracy_target(1.0, teacher, 981 / 997, 980 / 997, 0.25)[0]["val_drop_points"] == 0.9
    assert accuracy_target(None, teacher, 0.95, 0.93) == (None, None)
    # limits alone export the most accurate within them, however far below the teacher (helper-47: 24.5%)
    assert accuracy_target(None, teacher, 0.2454, 0.25)[1].endswith(": target.max_accuracy_drop asks for a usable one")
    assert accuracy_target(None, teacher, 0.2454, 0.25, limits=True) == (None, (
        f"warning: this student is {(teacher['val_accuracy'] - 0.2454) * 100:.2f} points below the teacher on validation "
        f"({(teacher['test_accuracy'] - 0.25) * 100:.2f} on test), with no accuracy target to hold it: looser limits, "
        f"or target.max_accuracy_drop, ask for a usable one"))
    # exactly at the target, in float32 figures 1.000005 points below (see test_envs): met
    hits = lambda k: (torch.arange(1500) < k).float().mean().item()  # noqa: E731
    at = {"val_accuracy": hits(1402), "test_accuracy": hits(1402)}
    assert accuracy_target(1.0, at, hits(1387), hits(1387))[0]["met_on_test"] is True


def test_version_is_the_installed_one(capsys):
    """`n2n --version` says what a bug report needs: the n2n that ran, as pip installed it."""
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"n2n {version('n2n')}\n"


@pytest.mark.parametrize("argv", [("export", "runs/x", "--out", ""), ("export", " ", "--out", "o"),
                                  ("search", "--runs-dir", ""), ("report", ""), ("teacher", "train", "--out", "")])
def test_an_empty_folder_argument_is_refused_not_read_as_the_current_directory(argv, capsys, tmp_path, monkeypatch):
    """`--out ""` meant the folder n2n runs in (helper-8): refused by argparse, naming the argument."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(list(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "expected a folder path, got an empty string" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["..", ".", "", "/home", "a/../..", "./x", "a//b"])
def test_a_run_name_is_one_folder_name(name, capsys, tmp_path, monkeypatch):
    """`--name ..` was taken for an existing run: "already exists; resume it with `n2n resume DIR`" (helper-19)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(["search", "--name", name])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert f"--name: expected a folder name inside --runs-dir (the run goes to RUNS_DIR/NAME), got {name!r}" in err
    assert list(tmp_path.iterdir()) == []


def test_a_run_name_taken_by_a_folder_of_the_user_s_own_is_not_offered_to_resume(finished_run, tmp_path, capsys):
    """helper-41: `--name mine` over a folder of the user's files said "resume it with `n2n resume
    .../mine`", which then said it is no run."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    for name, said in (("mine", f"{tmp_path / 'mine'} already exists and is not an n2n run; choose another --name "
                                "(or --runs-dir)"),
                       (finished_run.name, f"{finished_run} already exists; resume it with `n2n resume {finished_run}` "
                                           "(under the config and target its n2n.json holds: this command's config and "
                                           "--set are not applied), or choose another --name")):
        status = cli.main(["search", "--runs-dir", str(tmp_path if name == "mine" else finished_run.parent),
                           "--name", name])
        assert status == 2 and said in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine" and len(list((tmp_path / "mine").iterdir())) == 1


def test_resume_with_another_target_is_refused_with_the_ways_to_another_student(finished_run, capsys):
    """helper-91: `n2n resume RUN --set target...` was argparse's "unrecognized arguments", after the
    "already exists" line had sent the user to resume for the new target."""
    before = {p.name: p.read_bytes() for p in finished_run.iterdir() if p.is_file()}
    status = cli.main(["resume", str(finished_run), "--set", "target.max_params=1000", "--set", "search.ratios=[0.5, 1.0]"])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err and err.strip() == (
        f"n2n: error: --set: a run keeps the config and target it was started with (its n2n.json), and `n2n resume` "
        f"continues under them; for another student of its candidates, `n2n export {finished_run} --margin P`, "
        f"`--rank N` or `--key KEY`; for another target, a new search: `n2n search ... --set target.max_params=1000 "
        f"--set 'search.ratios=[0.5, 1.0]'`")  # every --set, quoted to paste (helper-93)
    assert {p.name: p.read_bytes() for p in finished_run.iterdir() if p.is_file()} == before


def test_a_default_run_name_taken_meanwhile_goes_to_the_next_free_one(tmp_path, capsys, monkeypatch):
    """helper-82: two searches started in the same second without --name both chose search-DATE-TIME;
    the second, after preparing its teacher, was told to "choose another --name". A name n2n chose is
    made free (NAME-2, NAME-3, ...), at the start and where another search took it since; a name the
    user gave is never changed."""
    from n2n import search
    from n2n.errors import RunError

    base = tmp_path / "search-20261207-120000"
    (base / "results").mkdir(parents=True)
    (tmp_path / "search-20261207-120000-2").mkdir()  # anything at all takes a name
    assert search._next_free(base) == tmp_path / "search-20261207-120000-3"
    told = []

    def taken_meanwhile(run_dir):  # another search takes NAME-3 too, before this one makes it
        told.append(run_dir)
        if len(told) == 1:
            run_dir.mkdir()

    lock = search._create(base, _fake_meta(), {}, taken_meanwhile)  # NAME taken since it was checked
    with lock:
        made = tmp_path / "search-20261207-120000-4"  # (not NAME-3-2: helper-84)
        assert told == [tmp_path / "search-20261207-120000-3", made] and lock.path.parent == made
        assert (made / "n2n.json").is_file() and [p.name for p in base.iterdir()] == ["results"]  # the other's untouched
    chosen = tmp_path / "search-20261207-120000-5"  # NAME-5 chosen at the start, taken meanwhile
    chosen.mkdir()
    told.clear()
    with search._create(chosen, _fake_meta(), {}, told.append, base) as lock:  # (helper-85: not NAME-5-2)
        assert told == [tmp_path / "search-20261207-120000-6"] == [lock.path.parent]
    with pytest.raises(RunError, match="already exists and is not an n2n run; choose another --name"):
        search._create(base, _fake_meta(), {}, None)  # the user's own --name: refused, as before
    # the command: the default name is n2n's to change, --name is not, and errors name the run it went to
    calls = []
    monkeypatch.setattr(search, "run_search", lambda cfg, run, named=None, **kw: calls.append(named) or
                        (named and named(run.with_name(run.name + "-2"))) or {"stage": "done"})
    monkeypatch.chdir(tmp_path)
    assert cli.main(["search", "--name", "mine"]) == 0 and calls == [None]
    assert cli.main(["search"]) == 0 and callable(calls[1])
    capsys.readouterr()


def test_an_out_under_a_file_is_refused_before_any_work(finished_run, tmp_path, capsys):
    """`--out notes.txt/student` printed "[Errno 17] File exists: 'notes.txt'", for `teacher train`
    only after training (helper-12); now one line naming the file, before anything runs."""
    (tmp_path / "notes.txt").write_text("mine")
    for argv in (("teacher", "train", "--dataset", "digits", "--out", tmp_path / "notes.txt" / "sub" / "t"),
                 ("search", "--runs-dir", tmp_path / "notes.txt" / "runs", "--set", "teacher.recipe.dataset=digits"),
                 ("export", finished_run, "--out", tmp_path / "notes.txt" / "x"),
                 ("policy", "fit", finished_run, "--out", tmp_path / "notes.txt" / "p")):
        status = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        assert status == 2 and f"cannot be made, {tmp_path / 'notes.txt'} is a file, not a folder" in err, err
        assert "training" not in out and "REINFORCE" not in out  # nothing ran first
    assert (tmp_path / "notes.txt").read_text() == "mine" and len(list(tmp_path.iterdir())) == 1


def test_an_out_where_nothing_can_be_written_is_refused_before_any_work(finished_run, tmp_path, capsys):
    """helper-36: on a read-only mount `teacher train` trained every epoch, `export --finetune-epochs`
    fine-tuned, then both failed to save with a traceback. /sys refuses new files to root too."""
    for argv in (("teacher", "train", "--dataset", "digits", "--out", "/sys/n2n-t"),
                 ("search", "--runs-dir", "/sys/n2n-runs", "--set", "teacher.recipe.dataset=digits"),
                 ("export", finished_run, "--out", "/sys/n2n-x", "--finetune-epochs", "5"),
                 ("policy", "fit", finished_run, "--out", "/sys/n2n-p")):
        status = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        out_arg = next(a for a in argv if str(a).startswith("/sys/"))  # (the search's run folder is under it)
        assert status == 2 and err.startswith(f"n2n: error: {out_arg}") and \
            ": cannot be written, a new file in /sys failed (" in err, err
        assert "training" not in out and "fine-tuning" not in out and "REINFORCE" not in out  # nothing ran first


def test_run_files_reach_the_disk_before_they_replace_the_old_ones(tmp_path, monkeypatch):
    """helper-22: nothing was fsync'd before the atomic renames, so a power cut could leave a renamed
    but empty candidates.json or search state (resume after a reboot is promised)."""
    from n2n import models, runfolder

    events = []
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))))
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b)))
    models.write_json(tmp_path / "candidates.json", [1])
    runfolder.save_state(tmp_path, {"records": []})
    synced = [path for kind, path in events if kind == "fsync"]
    assert [Path(p).name.split(".")[0] for p in synced] == ["candidates", "search_state"]
    for p in synced:  # each temp file synced, then renamed into place
        assert events.index(("replace", p)) > events.index(("fsync", p))
    # a full disk as the state is written: the error reaches the search, no empty temp file stays (helper-36)
    import errno

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(OSError, match="No space left on device"):
        runfolder.save_state(tmp_path, {"records": [1]})
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_run_whose_data_file_was_moved_says_so(tmp_path):
    """helper-24: a moved data file gave the loader's "expected a CSV or JSONL file at ..." and no more."""
    from n2n.search import run_data

    meta = {"dataset": f"text:{tmp_path / 'moved.jsonl'}", "split": {"seed": 0}, "config": {}, "teacher_folder": "t"}
    with pytest.raises(RunError, match=rf"{tmp_path / 'moved.jsonl'}: the run's data \(text:.*moved.jsonl\) is not "
                                       r"there \(moved or deleted\?\); a run names its data by this path: put it back"):
        run_data(meta, {})


def test_only_n2n_s_own_ray_folders_whose_driver_is_dead_are_removed(tmp_path):
    """kill -9 left a search's Ray temp folder in /tmp for good; the next search removes it, and
    nothing else: not a live search's, not one of another host or pid namespace (a shared /tmp:
    their processes cannot be seen from here, helper-29), not one without n2n's marker, not a link."""
    import socket

    from n2n.tempdirs import MARKER, remove_stale_temps, this_process

    me = this_process()
    assert me["host"] == socket.gethostname()
    linux = os.path.exists("/proc/self/stat")  # elsewhere: the pid alone decides (no boot, namespace, start)
    assert not linux or (me["start"] is not None and me["pidns"].startswith("pid:") and me["boot"])
    child = subprocess.Popen(["true"])  # its pid, once it has exited and been reaped: a dead driver
    child.wait()
    dead = {**me, "pid": child.pid}
    markers = {"dead": dead, "live": me, "other-host": {**dead, "host": "elsewhere", "boot": "its own boot"},
               "other-ns": {**dead, "pidns": "pid:[1]"}, "unmarked": None, "garbled": "x",
               "huge-pid": {**me, "pid": 2**70}}  # helper-30: an OverflowError out of os.kill stopped the search
    if linux:
        markers.update({"rebooted": {**me, "boot": "another boot"},  # every process of that boot is gone,
                        "restarted": {**me, "boot": "another boot", "pidns": "pid:[1]"},  # in any container
                        "pid-reused": {**me, "start": me["start"] - 1},  # this pid, not the process that made it
                        "renamed-host": {**dead, "host": "elsewhere"}})  # this boot: this machine, renamed (helper-82)
    for name, marker in markers.items():
        (tmp_path / f"n2n-ray-{name}" / "session").mkdir(parents=True)
        if marker is not None:
            (tmp_path / f"n2n-ray-{name}" / MARKER).write_text(marker if isinstance(marker, str) else json.dumps(marker))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / MARKER).write_text(json.dumps(dead))
    (tmp_path / "n2n-ray-link").symlink_to(victim)
    remove_stale_temps(str(tmp_path), "n2n-ray-")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "n2n-ray-garbled", "n2n-ray-huge-pid", "n2n-ray-link", "n2n-ray-live", "n2n-ray-other-host", "n2n-ray-other-ns",
        "n2n-ray-unmarked", "victim"]
    assert (victim / MARKER).exists()


def test_a_folder_where_report_writes_a_plot_is_one_line_and_leaves_nothing(finished_run, tmp_path, capsys):
    """helper-28: pareto.png made a folder was an IsADirectoryError traceback, its temp file left in the run."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    (run / "pareto.png").unlink(missing_ok=True)
    (run / "pareto.png").mkdir()
    before = sorted(p.name for p in run.iterdir())
    status, err = _main(capsys, "report", run)
    assert status == 2 and f"{run / 'pareto.png'}: expected a file n2n may replace, found a folder" in err
    assert sorted(p.name for p in run.iterdir()) == sorted({*before, "reward_curve.png"})


def test_a_run_before_its_first_result_is_reported_without_warnings_and_one_that_lost_its_records_is_refused(
        finished_run, tmp_path, capsys):
    """helper-63: a run with no candidates yet drew matplotlib's "No artists with labels found" warning,
    and a finished run whose candidates.json was deleted was reported as "0 candidates trained"."""
    import shutil
    import warnings

    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    (run / "candidates.json").unlink()
    status, err = _main(capsys, "report", run)
    assert status == 2 and f"{run / 'candidates.json'}: missing, though summary.json counts 3 candidates evaluated" in err
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "stage": "failed"}))  # not resumed: not advised (helper-64)
    status, err = _main(capsys, "report", run)
    assert status == 2 and err.rstrip().endswith("restore it from a copy of the run") and "n2n resume" not in err
    (run / "summary.json").unlink()  # a search before its first result: nothing to count yet
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = make_report(run)
    assert text.startswith("run run: 0 candidates trained")
    # what report's figures are (helper-97: edited files read as the run's own measurements)
    assert "these figures are the run's as recorded (n2n.json, candidates.json), not measured again; `n2n export` " \
           "measures the teacher and the student it writes" in text.splitlines()


def test_a_run_that_takes_no_file_is_still_reported(finished_run, capsys, monkeypatch):
    """helper-36: on a read-only run folder (a shared or archived run) `n2n report` was a traceback
    and printed nothing; it prints the leaderboard and says the plots were not saved."""
    import errno

    from n2n import report

    def refused(path, data):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(report, "write_bytes", refused)
    status, out = _main(capsys, "report", finished_run, stream="out")
    assert status == 0 and out.splitlines()[1].split()[:3] == ["#", "stage", "params"]
    assert out.splitlines()[-1] == (f"warning: the plots could not be saved in {finished_run}: reward_curve.png "
                                    "(Read-only file system), pareto.png (Read-only file system)")


def test_a_fifo_among_a_run_s_files_is_refused_not_waited_on(finished_run, tmp_path):
    """helper-29: a FIFO under candidates.json's name blocked read_records, one under n2n.log's the
    log's open, forever."""
    import shutil

    said = {"candidates.json": "candidates.json: expected a plain file, as n2n writes it, found something else",
            ".lock": ".lock: expected a plain file, as n2n writes it, found something else",  # helper-30: hung
            "n2n.log": "n2n.log: cannot append to the run's log",
            "n2n.json": "expected a run folder made by `n2n search` (with n2n.json as a plain file), found something "
                        "else under its name"}
    for name, command in (("candidates.json", "report"), (".lock", "report"), (".lock", "export"),
                          ("n2n.log", "resume"), ("n2n.json", "report"), ("n2n.json", "policy")):
        run = tmp_path / f"{name}-{command}" / "run"
        shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
        (run / name).unlink(missing_ok=True)
        os.mkfifo(run / name)
        args = {"export": ["export", str(run), "--out", str(tmp_path / "out")],
                "policy": ["policy", "fit", str(run), "--out", str(tmp_path / "pol")]}.get(command, [command, str(run)])
        done = subprocess.run([sys.executable, "-m", "n2n.cli", *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and said[name] in done.stderr, (name, command, done.stderr[-2000:])
    assert not (tmp_path / "out").exists() and not (tmp_path / "pol").exists()


def test_the_pareto_legend_names_only_what_the_axis_shows(finished_run, tmp_path):
    """helper-28: with every point of a stage below the axis' floor, the legend still listed it."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    meta = json.loads((run / "n2n.json").read_text())
    meta["config"]["target"] = {**meta["config"].get("target", {}), "max_accuracy_drop": 1.0,  # the axis' floor
                                "max_params": 1_234_567}
    (run / "n2n.json").write_text(json.dumps(meta))
    recs = json.loads((run / "candidates.json").read_text())
    recs = [{**r, "stage": "shrink", "accuracy": meta["reference"]["accuracy"]} if i == 0 else {**r, "accuracy": 0.1}
            for i, r in enumerate(recs)]  # one shrink student at the teacher's accuracy, removal far below
    (run / "candidates.json").write_text(json.dumps(recs))
    legends, notes = [], []
    with pytest.MonkeyPatch.context() as m:
        m.setattr(report_mod, "_save_png", lambda fig, path: (
            legends.append([t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]),
            notes.append([t.get_text() for ax in fig.axes for t in ax.texts]))[-1])  # None: saved
        text = make_report(run)
    assert legends[1][:2] == ["shrink", "target: -1.0 points"] and "removal" not in legends[1], legends
    # the size limit whole (helper-77: `:g` wrote 1,234,567 as 1.23457e+06), and the floor as the report says it
    assert "target: at most 1,234,567" in legends[1]
    floor = re.search(rf"its axis leaves out {len(recs) - 1} candidates below val acc (\d\.\d{{4}})\)", text).group(1)
    assert notes[1] == [f"{len(recs) - 1} candidates below {floor} not shown"]


def test_a_hard_linked_copy_of_a_run_is_its_own(tmp_path):
    """helper-46: `cp -al runs/a runs/b` (or rsync --link-dest backups), then `n2n resume runs/b`, wrote
    b's log lines and trainings into a's files (appended in place), and b's lock locked a too. Taking a
    run's lock gives those files a copy of their own; the original's stay as they were."""
    import socket
    import subprocess

    from n2n.runfolder import RunLock, lock_holder
    from n2n.search import teed
    from n2n.storage import LocalResults

    a = tmp_path / "a"
    (a / "results").mkdir(parents=True)
    (a / "n2n.log").write_text("a's line\n")
    (a / "results" / "trained.log").write_text("k1\n")
    RunLock(a).acquire().release()
    subprocess.run(["cp", "-al", str(a), str(tmp_path / "b")], check=True)
    b = tmp_path / "b"
    assert os.stat(a / "n2n.log").st_nlink == 2
    with RunLock(b):
        with RunLock(a):  # not the same lock any more
            pass
        teed(lambda *_: None, b)("b's line")
        LocalResults(b / "results").save("k2", None, {"accuracy": 0.5})
    assert (a / "n2n.log").read_text() == "a's line\n" and (a / "results" / "trained.log").read_text() == "k1\n"
    assert (b / "n2n.log").read_text().startswith("a's line\n") and (b / "n2n.log").read_text().endswith(" b's line\n")
    assert (b / "results" / "trained.log").read_text() == "k1\nk2\n"
    assert all(os.stat(p).st_nlink == 1 for p in (a / "n2n.log", a / ".lock", a / "results" / "trained.log"))
    # copied while a command holds the original's lock (helper-48: a second command on the busy original
    # then unlinked .lock and took a lock of its own): the original stays locked, the copy is free
    c = tmp_path / "c"
    held = subprocess.Popen([sys.executable, "-c", "import sys, time; from n2n.runfolder import RunLock; "
                             "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)", str(a)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        assert held.stdout.readline() == "held\n"
        subprocess.run(["cp", "-al", str(a), str(c)], check=True)
        with pytest.raises(RunError, match=rf"is in use by another n2n process \(pid {held.pid} on "):
            RunLock(a).acquire()
        assert lock_holder(a) == f"pid {held.pid} on {socket.gethostname()}" and lock_holder(c) is None
        with RunLock(c):  # the copy's own lock, while the original's holder runs
            assert os.stat(c / ".lock").st_ino != os.stat(a / ".lock").st_ino
        with pytest.raises(RunError, match="is in use by another n2n process"):
            RunLock(a).acquire()
    finally:
        held.kill()
        held.wait()


def test_what_the_machine_or_the_paths_cause_is_a_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    """helper-46: a full disk (in safetensors too), a name over 255 bytes and a symlink loop were tracebacks;
    a search that ran out of space printed no resume line."""
    import errno

    from safetensors import SafetensorError

    from n2n import cli, models
    from n2n import search as search_mod

    def full(*_, **__):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                              'left on device" })')

    monkeypatch.setattr(models, "save_file", full)
    with pytest.raises(OSError) as e:
        models.save_weights({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(tmp_path / "model.safetensors"))
    assert list(tmp_path.iterdir()) == []  # no temp file left

    def ran_out(cfg, run_dir, **_):
        run_dir.mkdir(parents=True)
        (run_dir / "n2n.json").write_text("{}")
        _hold(run_dir.resolve())  # made by this search (create_run)
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "search_state.pt"))

    from n2n.runfolder import _hold

    monkeypatch.setattr(search_mod, "run_search", ran_out)
    run = tmp_path / "runs" / "my run"
    assert cli.main(["search", "--runs-dir", str(tmp_path / "runs"), "--name", "my run"]) == 2
    said = (f"{run / 'search_state.pt'}: No space left on device; every candidate recorded is kept: free some "
            f"space, then continue with `n2n resume '{run}'`")
    assert capsys.readouterr().err == f"n2n: error: {said}\n"
    # the run's log says it stopped, and why (helper-82: it ended as if the search ran on)
    assert (run / "n2n.log").read_text().endswith(f" search stopped: {said}\n")

    def made_unwritable(cfg, run_dir, **_):  # helper-82: `chattr +i` on the run mid-search said no way on
        raise PermissionError(errno.EPERM, "Operation not permitted", str(run_dir / "search_state.pt.tmp"))

    monkeypatch.setattr(search_mod, "run_search", made_unwritable)
    assert cli.main(["search", "--runs-dir", str(tmp_path / "runs"), "--name", "my run"]) == 2
    assert capsys.readouterr().err == (f"n2n: error: {run / 'search_state.pt.tmp'}: Operation not permitted; every "
                                       f"candidate recorded is kept: make the run folder writable again, then continue "
                                       f"with `n2n resume '{run}'`\n")

    def tmp_full(cfg, run_dir, **_):  # a full TMPDIR raised with no file named (helper-82)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(search_mod, "run_search", tmp_full)
    assert cli.main(["search", "--runs-dir", str(tmp_path / "runs"), "--name", "my run"]) == 2
    assert capsys.readouterr().err.startswith(f"n2n: error: a file n2n was writing (its output, or a temporary one "
                                              f"under {tempfile.gettempdir()}): No space left on device; every candidate")
    assert cli.main(["report", str(tmp_path / ("x" * 300))]) == 2
    assert capsys.readouterr().err.endswith(": File name too long\n")
    # a name under 255 bytes whose temp folder, `.NAME.` and 8 more, went past it: it failed once the teacher was
    # trained (helper-89); one past 255 is refused before any work, by command
    monkeypatch.undo()
    train = ["teacher", "train", "--dataset", "digits", "--arch", "mlp", "--hidden", "8", "--epochs", "1", "--out"]
    assert cli.main([*train, str(tmp_path / "made" / ("b" * 250))]) == 0, capsys.readouterr().err
    assert (tmp_path / "made" / ("b" * 250) / "model.safetensors").is_file()
    # replaced, the old one is kept under a name of the start of this one's (helper-90: `.replaced-` past 255 bytes)
    assert cli.main([*train, str(tmp_path / "made" / ("b" * 250)), "--seed", "1", "--overwrite"]) == 0, \
        capsys.readouterr().err
    assert [p.name[200:210] for p in (tmp_path / "made").iterdir() if p.name != "b" * 250] == [".replaced-"]
    # three-byte characters: the temp folder's name is cut by bytes (helper-90: by characters, it kept 255 bytes)
    assert cli.main([*train, str(tmp_path / "made" / ("界" * 85))]) == 0, capsys.readouterr().err
    name = "b" * 256
    for args, out in (([*train, str(tmp_path / "made" / name)], tmp_path / "made" / name),
                      (["search", "--runs-dir", str(tmp_path / "runs"), "--name", name], tmp_path / "runs" / name)):
        assert cli.main(args) == 2
        assert capsys.readouterr().err == (f"n2n: error: {out}: a name of 256 bytes ({'b' * 40}...), past this file "
                                           f"system's 255; choose a shorter one\n")
        assert not out.parent.exists() or name not in os.listdir(out.parent)  # (out.exists() itself: ENAMETOOLONG)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert cli.main(["resume", str(tmp_path / "loop")]) == 2
    err = capsys.readouterr().err
    if sys.version_info < (3, 13):  # pathlib's resolve() raises for a loop before 3.13; later, read_run says it
        assert err == (f"n2n: error: Symlink loop from '{tmp_path / 'loop'}': expected a file or folder, found links "
                       f"that lead back to themselves\n")
    assert err.startswith("n2n: error: ") and "Traceback" not in err and str(tmp_path / "loop") in err


def test_a_config_nested_hundreds_deep_is_refused_in_a_line(tmp_path):
    """helper-46: `seed: [[[...]]]` 500 levels deep, in a file or --set, was a RecursionError traceback."""
    from n2n.cli import _overrides
    from n2n.errors import ConfigError

    deep = tmp_path / "deep.yaml"
    deep.write_text("seed: " + "[" * 500 + "]" * 500 + "\n")
    with pytest.raises(ConfigError, match=r"config .*deep.yaml: nested too deeply to read \(lists or mappings hundreds "):
        load_config(deep)
    with pytest.raises(ConfigError, match=r"^--set seed: the value is nested too deeply to read \(hundreds of levels\)$"):
        _overrides(["seed=" + "[" * 5000 + "]" * 5000])
    with pytest.raises(ConfigError, match=r"^--set seed: not valid YAML \(while parsing a flow sequence"):
        _overrides(["seed=[1"])


def test_a_summary_of_the_wrong_kinds_is_no_summary(tmp_path):
    """helper-46: `"best": 5` in summary.json crashed export (AttributeError); `"stage": 3` was said as 'stage 3'."""
    from n2n.runfolder import read_summary

    for bad in ({"best": 5}, {"stage": 3, "done": "yes"}, {"best": {"key": ["a"]}}, {"candidates_evaluated": "7"},
                {"failure": []}):
        (tmp_path / "summary.json").write_text(json.dumps(bad))
        assert read_summary(tmp_path) is None, bad
    good = {"stage": "done", "best": {"key": "k"}, "candidates_evaluated": 7, "failure": None}
    (tmp_path / "summary.json").write_text(json.dumps(good))
    assert read_summary(tmp_path) == good


def test_a_run_folder_inside_its_teacher_folder_is_refused(finished_run, tiny_config, tmp_path):
    """helper-46: `search --runs-dir T --set teacher.path=T` made the run inside its own teacher folder
    (export refuses an --out there: it would no longer be a folder n2n can replace or check)."""
    import re

    from n2n.errors import ConfigError

    teacher = Path(json.loads((finished_run / "n2n.json").read_text())["teacher_folder"]).resolve()
    cfg = load_config(tiny_config, {"teacher.path": str(teacher)})
    inside = teacher / "runs" / "x"
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(inside))}: expected a run folder outside the teacher "
                                          rf"folder {re.escape(str(teacher))}, found it inside; choose another --runs-dir$"):
        run_search(cfg, inside, log=lambda *_: None)
    assert not (teacher / "runs").exists()


class _Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_search_state_is_never_unpickled_nor_advised_to_be(tmp_path):
    """helper-46: a search_state.pt that runs os.system when unpickled was refused, but the log line
    repeated torch's advice to load it with weights_only=False."""
    from n2n.runfolder import STATE, load_states

    marker = tmp_path / "ran"
    torch.save({"records": [], "x": _Hostile(marker)}, tmp_path / STATE)
    said = []
    assert list(load_states(tmp_path, log=said.append)) == []
    assert said == [f"{STATE} is damaged (it holds objects other than plain data and tensors, which n2n never "
                    f"unpickles)"]
    assert not marker.exists()


def test_a_run_in_use_from_its_creation_is_seen_in_use(tmp_path, capsys):
    """create_run locks the run in its temp folder and renames it: the holder's line named the temp
    folder, which lock_holder took for a hard-linked copy's, so a running search was called stopped
    (report, export) and `search --name` advised resuming it (helper-53, helper-54)."""
    from n2n.runfolder import lock_holder, unfinished

    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import json, sys, time; from n2n.runfolder import create_run; "
                               f"create_run({str(run)!r}, json.loads(sys.argv[1])); print('held', flush=True); "
                               "time.sleep(60)", json.dumps(_fake_meta())], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_holder(run).startswith(f"pid {holder.pid} on ")
        assert unfinished(run).startswith(f"it is still running, in pid {holder.pid} on ")
        status, err = _main(capsys, "search", "--runs-dir", tmp_path, "--name", "run")
        assert status == 2 and f"{run} already exists and is in use by another n2n process (pid {holder.pid} on" in err
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(run) is None  # the kernel let go with the holder
    # an export fine-tuning a student holds the run too, but is no search (helper-82: "still running")
    (run / "summary.json").write_text(json.dumps({"stage": "shrink", "candidates_evaluated": 5}))
    holder = subprocess.Popen([sys.executable, "-c", "import time; from n2n.runfolder import EXPORTING, RunLock; "
                               f"RunLock({str(run)!r}, EXPORTING).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_holder(run).startswith(f"pid {holder.pid} on ") and lock_holder(run).endswith(", n2n export")
        assert unfinished(run) == "it stopped in stage shrink after 5 candidates"
    finally:
        holder.kill()
        holder.wait()


def test_a_number_too_long_for_python_in_any_file_n2n_reads_is_a_clear_error(finished_run, tmp_path, capsys):
    """helper-57: Python reads integers of at most 4,300 digits; a longer one in a run's JSON, a model
    folder's or a config (or --set) raised a ValueError that no except named: a traceback."""
    big = "9" * 5000

    def with_big(path):
        text = path.read_text()
        path.write_text(text[:text.rindex("}")] + f', "zz_big": {big}}}' if text.rstrip().endswith("}") else
                        text[:text.rindex("]")] + f", {big}]")

    for name in ("n2n.json", "candidates.json"):
        run = tmp_path / f"run_{name}"
        shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
        with_big(run / name)
        status, err = _main(capsys, "report", run)
        assert status == 2 and f"{run / name}: " in err and "Traceback" not in err, err
    teacher = tmp_path / "teacher"
    shutil.copytree(json.loads((finished_run / "n2n.json").read_text())["teacher"]["folder"], teacher)
    with_big(teacher / "arch.json")
    status, err = _main(capsys, "teacher", "show", teacher)
    assert status == 2 and f"{teacher / 'arch.json'}: not a readable JSON file" in err, err
    (tmp_path / "big.yaml").write_text(f"seed: {big}\n")
    status, err = _main(capsys, "search", tmp_path / "big.yaml", "--runs-dir", tmp_path / "runs")
    assert status == 2 and f"config {tmp_path / 'big.yaml'}: not readable (Exceeds the limit (4300 digits)" in err, err
    status, err = _main(capsys, "search", "--set", f"seed={big}", "--runs-dir", tmp_path / "runs")
    assert status == 2 and "--set seed: not readable (Exceeds the limit (4300 digits)" in err, err
    assert not (tmp_path / "runs").exists()


def test_a_run_whose_own_policy_copy_is_damaged_is_a_clear_error_on_resume(finished_run, tmp_path, capsys):
    """helper-57: with no usable search state, a resume rebuilds the agents from the run's copy of its
    policy; that copy damaged (a file gone, a FIFO in its place) was an AgentOptionError traceback."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    for name in (STATE, PREV_STATE):
        (run / name).unlink()
    (run / "policy" / "removal" / "policy.json").unlink()
    os.mkfifo(run / "policy" / "removal" / "policy.json")
    status, err = _main(capsys, "resume", run)
    # said before the state is restored, as the run's own copy, with where to restore it from (helper-63)
    policy = json.loads((run / "n2n.json").read_text())["config"]["search"]["agent_options"]["policy"]
    assert status == 2 and err == (f"n2n: error: {run / 'policy'}: the run's own copy of the policy it started from is "
                                   f"damaged ({run / 'policy' / 'removal'}: expected policy.json and policy.safetensors (a "
                                   f"saved removal policy), found no policy.json); copy removal/ back from {policy} "
                                   "(n2n.json's search.agent_options.policy) or from a copy of the run\n"), err


def test_an_overwrite_refusal_names_what_blocks_and_an_empty_folder_is_free(finished_run, tmp_path):
    """helper-54: `hf` as a file was a NotADirectoryError traceback, and a folder missing spec.json (or a
    teacher with a config.json beside its arch.json) was said to have no metrics.json naming its run.
    An empty folder (`mkdir out` first) was refused, then refused again with --overwrite: nothing in it
    to lose, so it is taken; files that appear in it meanwhile are never replaced."""
    from n2n.models import check_replaceable, commit_folder

    def folder(name, files, metrics):
        d = tmp_path / name
        d.mkdir()
        for f, text in files.items():
            (d / f).write_text(text)
        (d / "metrics.json").write_text(json.dumps(metrics))
        return d

    model = {"model.safetensors": "x", "arch.json": "{}"}
    for d, kind, said in ((folder("hf_file", {**model, "spec.json": "{}", "hf": "a file"}, {"run": "r"}), "export",
                           "it holds hf (not a folder), which n2n does not write there"),
                          (folder("no_spec", model, {"run": "r"}), "export", "it lacks spec.json"),
                          (folder("no_run", {**model, "spec.json": "{}"}, {}), "export",
                           "its metrics.json does not name the run it was exported from"),
                          (folder("mixed", {**model, "config.json": "{}"}, {"recipe": {}}), "teacher",
                           "it holds config.json, which n2n does not write there"),
                          (folder("no_weights", {"arch.json": "{}"}, {"recipe": {}}), "teacher",
                           "it lacks model.safetensors"),
                          # a `teacher train --hf` folder whose metrics.json lost its recipe (it was said
                          # to be "not laid out as n2n writes one")
                          (folder("hf_no_recipe", {"config.json": "{}"}, {"checkpoint": "c"}), "teacher",
                           "its metrics.json does not name the recipe it was trained with")):
        with pytest.raises(FileExistsError, match=rf"is not an earlier n2n {kind} \({re.escape(said)}\); --overwrite"):
            check_replaceable(d, kind)
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "here").mkdir()
    cwd = os.getcwd()
    os.chdir(tmp_path / "here")  # `--out .` in an empty folder: refused before any work, as before (helper-55: the
    try:                         # temp folder went inside it, and the finished export was refused at the end)
        for out, overwrite in ((".", False), (".", True), ("..", True)):  # helper-87: refused only when done
            with pytest.raises(FileExistsError, match=r"\.: is (the current folder|a folder above the current one "
                                                      r".*), which n2n does not replace .*; choose another --out"):
                export_best(finished_run, Path(out), overwrite=overwrite, log=lambda *_: None)
    finally:
        os.chdir(cwd)
    assert list((tmp_path / "here").iterdir()) == []
    # the folder made for it keeps its mode and group (helper-87: a 0700 or setgid folder came back 0755)
    os.chmod(empty, 0o2750)
    group = empty.stat().st_gid
    assert export_best(finished_run, empty, log=lambda *_: None)["params"] > 0
    assert (empty / "model.safetensors").is_file()
    assert (stat.S_IMODE(empty.stat().st_mode), empty.stat().st_gid) == (0o2750, group)
    os.chmod(empty, 0o700)  # and so does an earlier export it replaces
    export_best(finished_run, empty, overwrite=True, log=lambda *_: None)
    assert stat.S_IMODE(empty.stat().st_mode) == 0o700 and (empty / "model.safetensors").is_file()
    os.chmod(empty, 0o555)  # a read-only one too, the one it replaced deleted (helper-90)
    export_best(finished_run, empty, overwrite=True, log=lambda *_: None)
    assert stat.S_IMODE(empty.stat().st_mode) == 0o555 and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    os.chmod(empty, 0o755)
    later = tmp_path / "later"
    later.mkdir()
    tmp = tmp_path / ".later.tmp"
    tmp.mkdir()
    (later / "mine.txt").write_text("mine")  # appeared after the checks
    with pytest.raises(FileExistsError, match="already exists"):
        commit_folder(tmp, later, kind="export")
    assert [p.name for p in later.iterdir()] == ["mine.txt"]


def test_a_file_size_limit_or_a_full_disk_is_said_in_one_line_and_leaves_no_half_file(tmp_path, monkeypatch):
    """helper-82: under `ulimit -f`, `n2n config > my.yaml` wrote a cut-short YAML that still parsed and
    exited 0, and every weights file was a safetensors traceback; a full disk left the data cache's
    half-written file behind, each retry another."""
    import numpy as np

    import n2n.data as data_mod
    from n2n.models import save_weights

    limited = "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024)); "
    out = tmp_path / "my.yaml"
    with open(out, "wb") as f:
        done = subprocess.run([sys.executable, "-c", limited + "import sys; from n2n.cli import main; "
                               "sys.exit(main(['config']))"], stdout=f, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    assert done.returncode == 1 and out.stat().st_size == 1024
    assert done.stderr == ("n2n: error: standard output: File too large; the config written there is cut short, do "
                           "not use it\n")
    done = subprocess.run([sys.executable, "-c", limited + "import torch; from n2n.models import save_weights; "
                           f"save_weights({{'w': torch.zeros(4096)}}, __import__('pathlib').Path({str(tmp_path / 'w.st')!r}))"],
                          capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert done.stderr.strip().splitlines()[-1] == f"OSError: [Errno 27] File too large: '{tmp_path / 'w.st'}'"
    assert not (tmp_path / "w.st").exists() and list(tmp_path.glob("*.tmp")) == []
    save_weights({"w": torch.zeros(4)}, tmp_path / "w.st")  # (without the limit)

    def full(path, **arrays):
        Path(path).write_bytes(b"PK half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    monkeypatch.setenv("N2N_CACHE", str(tmp_path / "cache"))
    with pytest.raises(OSError, match=r"No space left on device: '.*mnist1d-[0-9a-f]+\.npz'"):
        data_mod.load_raw("mnist1d")
    assert [p.name for p in (tmp_path / "cache" / "data").iterdir()] == []
