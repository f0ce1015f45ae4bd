"""Kill the search at random moments (Ray start-up, mid-trial, a resume's start-up), damage what Tune
left, resume to the end, and compare with an uninterrupted run: same candidates, nothing trained twice."""

import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from n2n.config import load_config
from n2n.search import run_search

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# One trial at a time makes the whole search deterministic, so the resumed run must match an
# uninterrupted one candidate for candidate.
OVERRIDES = ["search.concurrency=1", "search.removal_budget=8", "search.shrink_budget=4", "search.refine_budget=2", "distill.epochs=2"]


def _records(run):
    try:
        return json.loads((run / "candidates.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def _alive_in_session(sid: int) -> bool:
    """Whether a process of session `sid` still runs (zombies do not): /proc/PID/stat's 4th field
    after the command name is the session."""
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[3]) == sid and fields[0] != "Z":
            return True
    return False


def _ray_temps(root):
    return set(glob.glob(os.path.join(root, "n2n-ray-*")))


def _damage(run: Path, how: str):
    """What a kill, a full disk or a careless user can leave behind."""
    if how == "truncate Tune's snapshots":  # experiment state, searcher state, tuner.pkl: never read
        for f in (run / "tune").rglob("*"):
            if f.is_file() and (f.suffix in (".pkl", ".json") and ("state" in f.name or f.name == "tuner.pkl")):
                f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "delete Tune's folder":
        shutil.rmtree(run / "tune", ignore_errors=True)
    elif how == "empty the search state":  # the previous snapshot takes over
        (run / "search_state.pt").write_bytes(b"")


def test_kills_at_random_moments_then_resume_matches_an_uninterrupted_search(ray_session, tiny_config, tmp_path, request):
    rng = random.Random(0)
    runs, run = tmp_path / "runs", tmp_path / "runs" / "r"
    sets = [a for o in OVERRIDES for a in ("--set", o)]
    # the searches' temp folders go to a folder of this test's own, so other processes' Ray folders
    # in /tmp (another test run beside this one) cannot make the checks below pass or fail; short,
    # since Ray's socket paths must stay under 108 bytes
    tmp = tempfile.mkdtemp(prefix="n2nt-")
    request.addfinalizer(lambda: shutil.rmtree(tmp, ignore_errors=True))  # with the killed processes' folders
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "TMPDIR": tmp}

    def start():
        # a kill before the run folder exists leaves nothing: search again; after, resume it
        args = ["resume", str(run)] if (run / "n2n.json").exists() else \
            ["search", str(tiny_config), "--name", "r", "--runs-dir", str(runs), *sets]
        return subprocess.Popen([sys.executable, "-m", "n2n.cli", *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    interrupted = set()  # keys whose training was logged, but not its result, when a kill left them

    def kill(proc):
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, no clean-up
        proc.wait()
        # Ray's workers have process groups of their own: they outlive the kill until they notice their
        # raylet is gone (a second or two), and a trial may save its result meanwhile, or be cut off
        # between its audit line and its result, which the resume then trains again
        deadline = time.time() + 60
        while _alive_in_session(proc.pid) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive_in_session(proc.pid), "Ray's workers outlived the killed search by a minute"
        logged = run / "results" / "trained.log"
        interrupted.update(k for k in (logged.read_text().split() if logged.exists() else [])
                           if not (run / "results" / f"{k}.json").exists())

    def until(proc, n_records):
        deadline = time.time() + 240
        while len(_records(run)) < n_records:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.time() < deadline, "the search made no progress"
            time.sleep(0.1)

    proc = start()  # killed during start-up (imports, teacher, Ray)
    time.sleep(rng.uniform(1.0, 4.0))
    kill(proc)

    # SIGTERM (kill, timeout) early, with most of the search still to run: stops as Ctrl-C does, exits
    # 130 with n2n's hint, not Tune's, and removes its Ray temp folder (it used to print Ray's crash
    # dump and leave the folder)
    temps = _ray_temps(tmp)
    proc = start()
    until(proc, 1)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out[-3000:]
    assert f"continue it with `n2n resume {run}`" in out and "Tuner.restore" not in out
    assert "WARNING" not in out, out[-3000:]  # Tune's "Stop signal received", "Failed to fetch metrics"
    assert "received at time=" not in out, out[-3000:]  # Ray's crash dump: "*** SIGTERM received at time=..."
    assert _ray_temps(tmp) <= temps, "the stopped search left its Ray temp folder behind"

    seen = [r["key"] for r in _records(run)]
    # two kills mid-search, each followed by damage (three kills, one damage each, took a process start
    # more: the suite's second slowest test)
    for n, damages in zip(sorted(rng.sample(range(len(seen) + 1, 11), 2)), [["truncate Tune's snapshots",
                                                                            "empty the search state"],
                                                                           ["delete Tune's folder"]]):
        proc = start()
        until(proc, n)
        time.sleep(rng.uniform(0.0, 1.5))  # somewhere inside the next trial
        kill(proc)
        records = _records(run)
        assert [r["key"] for r in records[: len(seen)]] == seen, "a record was lost"
        seen = [r["key"] for r in records]
        for damage in damages:
            _damage(run, damage)
    proc = start()  # killed during a resume's start-up
    time.sleep(rng.uniform(0.5, 3.0))
    kill(proc)

    killed = [t for t in _ray_temps(tmp) if os.path.exists(os.path.join(t, "n2n-driver.json"))]
    # two searches were killed mid-search, but each start removed the folders of those killed before it
    assert 1 <= len(killed) <= 2, killed
    done = subprocess.run([sys.executable, "-m", "n2n.cli", "resume", str(run)], env=env, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    # and the folders of the searches killed outright are gone too: each start removes those whose
    # driver is dead (kill -9 had left them in /tmp for good)
    left = [t for t in _ray_temps(tmp) if os.path.exists(os.path.join(t, "n2n-driver.json"))]
    assert not left and len(_ray_temps(tmp)) <= 1, left  # 1: a kill between its mkdtemp and its marker

    after = _records(run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stage"] == "done" and summary["candidates_per_stage"] == {"removal": 8, "shrink": 4, "refine": 2}
    trained = (run / "results" / "trained.log").read_text().split()
    # only a training a kill cut off before its result runs again (once, 15 trainings of 14 candidates
    # failed an assertion that none ran twice)
    twice = {k for k in trained if trained.count(k) > 1}
    assert twice <= interrupted, f"trained again though its result had been saved: {sorted(twice - interrupted)}"
    assert sorted(set(trained)) == sorted(r["key"] for r in after)

    # the agent continued from its saved state: the same search as one never interrupted
    ref = tmp_path / "ref"
    cfg = load_config(tiny_config, {o.split("=")[0]: json.loads(o.split("=")[1]) for o in OVERRIDES})
    run_search(cfg, ref, log=lambda *_: None)
    straight = _records(ref)
    # figures too: the CLI processes and this one (1 torch thread, conftest) must see the same inputs
    # (the teacher's recorded standardisation, not one recomputed with thread-dependent float sums)
    assert [(r["key"], r["accuracy"]) for r in after] == [(r["key"], r["accuracy"]) for r in straight]
    assert summary["agent_updates"] == json.loads((ref / "summary.json").read_text())["agent_updates"]


def test_a_resume_whose_results_folder_cannot_take_files_stops_before_any_trial(tmp_path):
    """helper-82: a resume trained 4 candidates for 55 s, then stopped on an unwritable results/."""
    from n2n.errors import RunError
    from n2n.search import check_results_writable

    (tmp_path / "results").mkdir()
    check_results_writable(tmp_path)
    assert list((tmp_path / "results").iterdir()) == []  # the probe leaves nothing
    shutil.rmtree(tmp_path / "results")
    (tmp_path / "results").write_text("not a folder")
    with pytest.raises(RunError, match=rf"^{tmp_path / 'results'}: cannot be written \(Not a directory\), and the trials "
                                       r"write their results there: make it writable, then resume$"):
        check_results_writable(tmp_path)
