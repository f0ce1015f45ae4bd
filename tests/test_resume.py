"""Kill the search driver with SIGKILL mid-search, resume it, and compare with an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from n2n.config import load_config
from n2n.search import run_search

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# One trial at a time makes the whole search deterministic, so the resumed run must match an
# uninterrupted one candidate for candidate.
OVERRIDES = ["search.concurrency=1", "search.removal_budget=8", "search.shrink_budget=4", "distill.epochs=2"]


def _env():
    # Snapshot the experiment at every step, as the Ray notes advise for restore tests.
    return {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def _records(run):
    path = run / "candidates.json"
    return json.loads(path.read_text()) if path.exists() else []


def test_sigkill_then_resume_matches_an_uninterrupted_search(ray_session, tiny_config, tmp_path):
    runs = tmp_path / "runs"
    sets = [a for o in OVERRIDES for a in ("--set", o)]
    cmd = [sys.executable, "-m", "n2n.cli", "search", str(tiny_config), "--name", "r", "--runs-dir", str(runs), *sets]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    run = runs / "r"
    deadline = time.time() + 240
    while len(_records(run)) < 4:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "the search made no progress"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray cluster it started, no clean-up
    proc.wait()
    before = _records(run)
    summary_before = json.loads((run / "summary.json").read_text())
    assert summary_before["stage"] == "removal" and len(before) >= 4

    done = subprocess.run([sys.executable, "-m", "n2n.cli", "resume", str(run)], env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    after = _records(run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stage"] == "done" and summary["candidates_per_stage"] == {"removal": 8, "shrink": 4}

    # nothing completed before the kill was lost or re-run: same trials, same order
    assert [r["trial_id"] for r in after[: len(before) - 1]] == [r["trial_id"] for r in before[:-1]]
    trained = (run / "results" / "trained.log").read_text().split()
    assert len(trained) == len(set(trained)), "a candidate was trained twice"
    assert sorted(trained) == sorted(r["key"] for r in after)

    # the agent continued from its saved state: the same search as one never interrupted
    ref = tmp_path / "ref"
    cfg = load_config(tiny_config, {o.split("=")[0]: json.loads(o.split("=")[1]) for o in OVERRIDES})
    run_search(cfg, ref, log=lambda *_: None)
    straight = _records(ref)
    assert [r["key"] for r in after] == [r["key"] for r in straight]
    assert summary["agent_updates"] == json.loads((ref / "summary.json").read_text())["agent_updates"]
