"""A search pointed at a real multi-node Ray cluster (a head and two worker nodes on this machine)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_CONFIG

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _n2n(*args, wait=True):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "n2n.cli", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _records(run):
    try:
        return json.loads((run / "candidates.json").read_text())
    except (OSError, ValueError):
        return []


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

    mib = 1024 * 1024
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 80 * mib})
    workers = [c.add_node(num_cpus=1, object_store_memory=80 * mib) for _ in range(2)]  # trials run only here
    c.wait_for_nodes()
    yield c.address, {w.node_id for w in workers}
    c.shutdown()


def test_search_runs_on_both_worker_nodes_survives_a_killed_driver_and_exports(cluster, tmp_path):
    """Trials leave their results in storage (a URI, as on a cluster without a shared disk), and the
    driver brings them into the run folder."""
    address, worker_ids = cluster
    (tmp_path / "c.yaml").write_text(TINY_CONFIG.replace("removal_budget: 6", "removal_budget: 8\n  stages: [removal]"))
    run = tmp_path / "runs" / "cl"
    driver = _n2n("search", tmp_path / "c.yaml", "--name", "cl", "--runs-dir", tmp_path / "runs", "--address", address,
                  "--storage", f"file://{tmp_path}/store", wait=False)
    deadline = time.time() + 300
    while len(_records(run)) < 3 and driver.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert driver.poll() is None, f"the search ended early: {driver.stderr.read()}"
    driver.send_signal(signal.SIGKILL)  # the driver dies; the cluster lives on
    driver.wait()
    before = _records(run)
    assert 3 <= len(before) < 8
    lost = before[0]["key"]  # as if the driver died before fetching it: the store still has it
    (run / "results" / f"{lost}.json").unlink()
    (run / "results" / f"{lost}.safetensors").unlink()
    refused = _n2n("resume", run, "--address", address)  # the storage it records, unnamed (helper-76)
    assert refused.returncode == 2 and f"Resume it with `--storage file://{tmp_path}/store`" in refused.stderr
    r = _n2n("resume", run, "--address", address, "--storage", f"file://{tmp_path}/store")
    assert r.returncode == 0, r.stderr
    recs = _records(run)
    assert len(recs) == 8 and all(r["failure"] is None for r in recs)
    # trials ran on both worker nodes and never on the head (it has no CPUs)
    assert {r["node"] for r in recs if not r["cached"]} == worker_ids
    trained = (run / "results" / "trained.log").read_text().split()
    # nothing recorded before the kill is trained again (the stored result answers it); a trial in
    # flight at the kill may be (CI: its orphan still ran on the cluster when the resume re-issued
    # its spec), at most one per trial slot, and the audit log says so
    twice = [k for k in set(trained) if trained.count(k) > 1]
    assert not set(twice) & {r["key"] for r in before} and len(twice) <= 2 and max(map(trained.count, trained)) <= 2
    uri = json.loads((run / "n2n.json").read_text())["results_store"]
    assert uri.startswith(f"file://{tmp_path}/store/cl-") and uri.endswith("/results")
    store = Path(uri[len("file://"):])
    for rec in recs:  # every result reached the store, and from there the run folder
        assert json.loads((store / f"{rec['key']}.json").read_text()) == json.loads(
            (run / "results" / f"{rec['key']}.json").read_text())
        assert (store / f"{rec['key']}.safetensors").read_bytes() == (run / "results" / f"{rec['key']}.safetensors").read_bytes()
    assert lost in trained
    r = _n2n("export", run, "--out", tmp_path / "student")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert metrics["key"] in {r["key"] for r in recs} and metrics["params"] < json.loads(
        (run / "summary.json").read_text())["teacher"]["params"]


def test_a_search_whose_cluster_stops_says_how_to_resume(tmp_path):
    """helper-44: when the whole cluster was killed, Ray waited 60 s for its head, then ended the driver
    with its own message: no resume line. n2n notices the head gone and stops with it. (A cluster shut
    down gracefully ends the driver at once, in Ray's own code, exit 1: so the line is said at the start too.)"""
    from ray.cluster_utils import Cluster

    mib = 1024 * 1024
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 80 * mib})
    c.add_node(num_cpus=2, object_store_memory=80 * mib)
    c.wait_for_nodes()
    (tmp_path / "c.yaml").write_text(TINY_CONFIG.replace("removal_budget: 6", "removal_budget: 40\n  stages: [removal]"))
    run, address = tmp_path / "runs" / "gone", c.address
    driver = _n2n("search", tmp_path / "c.yaml", "--name", "gone", "--runs-dir", tmp_path / "runs", "--address",
                  address, wait=False)
    try:
        deadline = time.time() + 300
        while len(_records(run)) < 2 and driver.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert driver.poll() is None, f"the search ended early: {driver.stderr.read()}"
        for node in [*c.worker_nodes, c.head_node]:  # the whole cluster killed, as a lost machine goes
            node.kill_all_processes(check_alive=False, allow_graceful=False)
        stopped = time.time()
        assert driver.wait(timeout=120) == 130, driver.stderr.read()[-2000:]
        took = time.time() - stopped
    finally:
        c.shutdown()
    said = (run / "n2n.log").read_text()
    assert "the Ray cluster stopped answering: its head at " in said
    # said at the start too, for a graceful shutdown, which ends the driver inside Ray
    assert said.index(f"should this search end early (Ray ends it itself when its cluster is shut down), continue "
                      f"it with `n2n resume {run} --address {address}`") < said.index("[removal 1/")
    assert f"continue it with `n2n resume {run} --address {address}`" in said
    assert took < 45, f"{took:.0f} s after the cluster stopped (Ray alone: 60 s, without the line)"
    assert len(_records(run)) >= 2  # what was recorded stays
