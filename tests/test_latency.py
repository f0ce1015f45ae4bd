"""Latency as trials measure it: the timer itself, and a search whose reward is latency."""


import pytest
import torch
from torch import nn

from envs import Evaluation, Reference, reward
from n2n.config import load_config
from n2n.deploy import time_passes
from n2n.export import export_best
from n2n.report import make_report
from n2n.runfolder import read_records
from n2n.search import run_search


def test_latency_follows_compute_and_the_interleaved_ratio_is_stable():
    """What the reward uses is the ratio of the fastest passes of two models timed in interleaved rounds
    (n2n.deploy.fastest_ratio): it holds when the machine's load changes (a neighbouring trial), which
    raw milliseconds do not (benchmarks/latency.py measures their spread on an idle machine). The ratio
    of medians this test held first failed twice under a load of 8 on 2 CPUs (it is not what n2n uses),
    and the fastest passes' spread up to 1.27x under a load of 6: how stable it is, is benchmarks/latency.py's
    figure on an idle machine; the bound here is what no load seen here came near."""
    from n2n.deploy import fastest_ratio

    torch.manual_seed(0)
    small = nn.Sequential(nn.Linear(256, 256))
    big = nn.Sequential(*[nn.Linear(256, 256) for _ in range(8)])  # 8x the multiply-adds
    x = torch.randn(256, 256)  # (batch, features): milliseconds, not the timer's microseconds
    threads = torch.get_num_threads()
    # these models' first timed rounds gave the one outlier seen (9.8 against 7.8 four times, beside
    # other work): allocator and caches warming, not the pair's ratio
    time_passes([big, small], x, threads=1, warmup=3, repeats=3)
    runs = [time_passes([big, small], x, threads=1, warmup=3, repeats=30) for _ in range(5)]  # ms of each pass
    assert torch.get_num_threads() == threads  # the worker's setting is restored
    ratios = [fastest_ratio(b, s) for b, s in runs]
    assert min(ratios) > 4, ratios  # ~7.5 here
    assert max(ratios) <= 1.6 * min(ratios), f"five measurements of one pair: {ratios}"


@pytest.mark.ray
def test_a_search_on_latency_records_rewards_exports_and_reports_it(ray_session, tiny_config, tmp_path):
    cfg = load_config(tiny_config, {"search.stages": ["removal"], "search.removal_budget": 4,
                                    "reward.compression": "latency", "latency.repeats": 10})
    run, logs = tmp_path / "runs" / "latency", []
    summary = run_search(cfg, run, log=logs.append)
    recs = read_records(run)
    ref = Reference(summary["teacher"]["params"], summary["teacher"]["flops"], summary["teacher"]["val_accuracy"])
    assert len(recs) == 4
    for r in recs:
        assert r["failure"] is None and r["latency_ms"] > 0 and r["teacher_latency_ms"] > 0
        assert 0 < r["latency_ratio"] and r["compression"] == pytest.approx(1 - r["latency_ratio"])
        assert r["reward"] == pytest.approx(reward(Evaluation.from_dict(r), ref, cfg.reward_config()))
    assert any(" ms (" in line and "x faster)" in line for line in logs)
    said = []
    metrics = export_best(run, tmp_path / "student", log=said.append)
    chosen = next(r for r in recs if r["key"] == metrics["key"])
    # the module as shipped, timed again by export beside the teacher (helper-37): the search's figure
    # was one noisy timing of the bare student beside other trials
    measured = metrics["latency_measured"]
    search = measured.pop("search")
    assert search.pop("node") == chosen["node"] and len(chosen["node"]) == 56  # the Ray node it was timed on
    assert search == {"latency_ms": chosen["latency_ms"], "teacher_latency_ms": chosen["teacher_latency_ms"], "device": "cpu",
                      "module": "as exported"}
    fastest, p90 = measured.pop("student_ms_fastest"), measured.pop("student_ms_p90")
    assert 0 < fastest <= metrics["latency_ms"] <= p90 and 0 < metrics["latency_ratio"] < 1.5
    t_fastest, t_p90 = measured.pop("teacher_ms_fastest"), measured.pop("teacher_ms_p90")
    assert 0 < t_fastest <= metrics["teacher_latency_ms"] <= t_p90 and metrics["latency_ratio"] == fastest / t_fastest
    assert 1 <= measured.pop("timings") <= 3  # timed again while the load made its median unsteady
    assert measured == {"when": "export", "module": "as exported (n2n.load_student's, input preprocessing included)",
                        "runtime": f"PyTorch {torch.__version__} eager", "device": "cpu", "threads": 1, "batch_size": 1,
                        "warmup": 5, "repeats": 100}
    assert any(line.startswith(f"latency as exported, timed now: {metrics['latency_ms']:.3f} ms median of 100 passes")
               for line in said)
    text = make_report(run).splitlines()
    header, first = text[1:3]
    assert header.split()[2] == "latency_ms" and first.split()[2] == f"{chosen['latency_ms']:.3f}"
    # helper-88: "teacher 3.5 ms" above a 5.3 ms student "1.3x faster" did not say the two are timed otherwise
    assert "latency_ms (the median of its timings beside the students; each student's \"faster\" is against " \
           "the teacher timed beside it)" in text[0]
    # and the lines naming the pick give the latency the run compressed (helper-88: params alone)
    pick = next(r for r in recs if r["key"] == summary["best"]["key"])
    said = f", {pick['latency_ms']:.3f} ms, {1 / pick['latency_ratio']:.1f}x faster"
    assert f"{said})" in logs[-1] and any(f"{said}, " in line for line in text if line.startswith("`n2n export` picks"))


def test_every_epoch_report_carries_latency_so_early_stopping_can_rank_on_it(small_teacher, mnist1d):
    from envs import RewardConfig
    from n2n.config import LatencyConfig
    from n2n.train import DistillConfig, predict
    from n2n.trial import Context, evaluate
    from search_spaces import StudentSpec, space_for

    model, arch, val_acc = small_teacher
    space = space_for(model, (1, 40))
    spec = StudentSpec([], [0.25 if u.shrinkable else 1.0 for u in space.units])  # a quarter of every layer
    ds = mnist1d
    ctx = Context(arch, model.state_dict(), (1, 40), tuple(space.ratios), ds.x_train[:512], ds.y_train[:512],
                  predict(model, ds.x_train[:512]), ds.x_val, ds.y_val, DistillConfig(epochs=2),
                  Reference(1, 1, val_acc), RewardConfig(compression="latency"), "unused",
                  latency=LatencyConfig(repeats=5, warmup=1))
    reports = []
    ev, _ = evaluate(space, spec, ctx, report=reports.append)
    assert [r["epoch"] for r in reports] == [1, 2]
    for r in reports:  # the final figures' latency, in every epoch's report
        assert r["latency_ms"] == ev.latency_ms and r["teacher_latency_ms"] == ev.teacher_latency_ms
        ev_r = Evaluation.from_dict({**r, "failure": None})  # a report says "" for no failure
        # (not "> -1": on a loaded machine 5 timings of a tiny student need not beat the teacher's)
        assert r["reward"] == pytest.approx(reward(ev_r, ctx.reference, ctx.reward))


def test_export_times_again_while_the_load_makes_the_median_unsteady(monkeypatch):
    """helper-47: one export timed a student at 0.355 ms median (fastest 0.201), past a 0.3 ms limit; three
    more exports timed it at 0.207-0.210. A median more than 1.25x the fastest pass is timed again, at
    most 3 times, and one where both models were steady is kept (else the student's lowest median), with their
    number."""
    from n2n import export as export_mod
    from n2n.config import LatencyConfig

    noisy = ([0.2, 0.36, 0.36, 0.4], [1.0] * 4)  # median 0.36 > 1.25 x 0.2
    steady = ([0.2, 0.21, 0.21, 0.22], [1.1] * 4)
    calls = []

    def timed(sequence):
        def fake(*args, **kw):
            calls.append(kw["repeats"])
            return sequence[len(calls) - 1]
        return fake

    model, best = nn.Linear(4, 2), {"latency_ms": 0.3, "teacher_latency_ms": 1.0, "latency_ratio": 0.3, "device": "cpu"}
    monkeypatch.setattr(export_mod, "time_as_shipped", timed([noisy, steady, noisy]))
    got = export_mod.export_latency(model, model, torch.zeros(3, 4), None, best, LatencyConfig(), print)
    assert calls == [100, 100] and got["latency_ms"] == 0.21 and got["teacher_latency_ms"] == 1.1
    assert got["latency_measured"]["timings"] == 2 and got["latency_ratio"] == 0.2 / 1.1
    calls.clear()
    monkeypatch.setattr(export_mod, "time_as_shipped", timed([noisy, noisy, ([0.2, 0.3, 0.3, 0.4], [1.0] * 4)]))
    got = export_mod.export_latency(model, model, torch.zeros(3, 4), None, best, LatencyConfig(), print)
    assert len(calls) == 3 and got["latency_ms"] == 0.3 and got["latency_measured"]["timings"] == 3  # at most 3
    calls.clear()
    monkeypatch.setattr(export_mod, "time_as_shipped", timed([steady]))
    assert export_mod.export_latency(model, model, torch.zeros(3, 4), None, best, LatencyConfig(), print)[
        "latency_measured"]["timings"] == 1 and calls == [100]
    # the teacher's median too (helper-87: inflated 3x by the load, it stayed in metrics.json), and the teacher's
    # fastest pass is stated, which latency_ratio divides by
    calls.clear()
    loaded_teacher = ([0.2, 0.21, 0.21, 0.22], [1.0, 3.0, 3.0, 3.1])
    monkeypatch.setattr(export_mod, "time_as_shipped", timed([loaded_teacher, steady]))
    got = export_mod.export_latency(model, model, torch.zeros(3, 4), None, best, LatencyConfig(), print)
    assert len(calls) == 2 and got["teacher_latency_ms"] == 1.1 and got["latency_measured"]["teacher_ms_fastest"] == 1.1
    assert got["latency_ratio"] == got["latency_measured"]["student_ms_fastest"] / got["latency_measured"]["teacher_ms_fastest"]
    # none steady: the student's lowest median, not the timing whose worse model was least unsteady (helper-90:
    # a student inflated by the load that spared the teacher was kept, past a limit it met)
    calls.clear()
    loaded_student = ([0.2, 0.34, 0.34, 0.36], [1.0, 1.05, 1.05, 1.1])
    monkeypatch.setattr(export_mod, "time_as_shipped", timed([loaded_teacher, loaded_student,
                                                              ([0.2, 0.33, 0.33, 0.35], [1.0, 2.0, 2.0, 2.1])]))
    got = export_mod.export_latency(model, model, torch.zeros(3, 4), None, best, LatencyConfig(), print)
    assert len(calls) == 3 and got["latency_ms"] == 0.21 and got["teacher_latency_ms"] == 3.0


def test_export_states_the_search_s_figures_where_it_cannot_time_on_the_search_s_device():
    """A student timed on a GPU and exported on a machine without one: the search's figures, said so
    (helper-38: "cuda:N" past the devices there crashed; "mps" on a Mac was called impossible)."""
    from n2n.config import LatencyConfig
    from n2n.export import export_latency

    model = nn.Linear(4, 2)
    best = {"latency_ms": 0.5, "teacher_latency_ms": 2.0, "latency_ratio": 0.2, "device": "cuda:7", "node": "n"}
    said = []
    got = export_latency(model, model, torch.zeros(3, 4), None, best, LatencyConfig(repeats=5), said.append)
    assert said == ["latency: the search timed this student on cuda:7, which this machine lacks; metrics.json "
                    "states the search's figures"]
    assert got == {"latency_ms": 0.5, "teacher_latency_ms": 2.0, "latency_ratio": 0.2, "latency_measured": {
        "when": "search", "latency_ms": 0.5, "teacher_latency_ms": 2.0, "device": "cuda:7", "node": "n",
        "module": "as exported", "batch_size": 1, "threads": 1, "warmup": 5, "repeats": 5}}
    standardised = {"scale": 2.0, "shift": 1.0, "shape": [4]}  # timed through the wrapper load_student returns
    timed = export_latency(model, model, torch.zeros(3, 4), standardised, {**best, "device": "cpu"},
                           LatencyConfig(threads=0), said.append)
    assert timed["latency_measured"]["threads"] == 1 and timed["latency_measured"]["repeats"] == 100  # a trial's CPUs
