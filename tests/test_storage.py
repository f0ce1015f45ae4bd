"""Results through a storage URI instead of the run folder (a cluster without a shared disk): a
local file:// store, and S3 as moto's server speaks it. A search on a multi-node cluster through a
store is in test_cluster.py."""

import dataclasses
import json
import re
from urllib.parse import urlsplit

import pytest
import torch

from n2n import cli
from n2n.config import load_config, run_config
from n2n.export import export_best
from n2n.search import run_search
from n2n.errors import ConfigError, RunError
from n2n.models import file_digest, load_weights, save_weights
from n2n.storage import Fetcher, LocalResults, RemoteResults, open_results, shown, store_location


def _state():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3).state_dict()


def test_open_results_picks_the_store_by_the_location(tmp_path):
    assert isinstance(open_results(str(tmp_path)), LocalResults)
    assert isinstance(open_results(f"file://{tmp_path}"), RemoteResults)


def test_a_result_saved_to_the_store_is_fetched_into_the_run_folder_once(tmp_path):
    store = RemoteResults(f"file://{tmp_path}/bucket/runs/r/results")
    store.check(tmp_path / "run")
    assert store.result("k1") is None
    saved = store.save("k1", _state(), {"accuracy": 0.5})
    store.save("k2", None, {"accuracy": 0.0, "failure": "nan loss"})  # a failed trial: no weights
    assert store.result("k1") == saved == {"accuracy": 0.5, "weights_digest": saved["weights_digest"]}
    # the trial wrote to the store only
    remote = tmp_path / "bucket" / "runs" / "r" / "results"
    assert sorted(p.name for p in remote.glob("*.*")) == ["k1.json", "k1.safetensors", "k2.json"]

    local = tmp_path / "run" / "results"
    local.mkdir(parents=True)
    fetch = Fetcher(store.uri, local.parent)
    assert fetch("k1") and fetch("k2") and not fetch("k1")  # the second time: here already
    assert not fetch("k3")  # no result in the store: nothing
    assert (local / "k1.safetensors").read_bytes() == (remote / "k1.safetensors").read_bytes()
    assert json.loads((local / "k1.json").read_text()) == saved
    assert file_digest(local / "k1.safetensors") == saved["weights_digest"]  # what export checks the fetched file by
    assert not (local / "k2.safetensors").exists()
    assert sorted((local / "trained.log").read_text().split()) == ["k1", "k2"]

    # trained again (a kill before the driver heard of it): one more audit line, none for a re-fetch
    store.save("k1", _state(), {"accuracy": 0.6})
    (local / "k1.json").unlink()
    assert fetch.sync(["k1", "k2", "k1"]) == 1
    assert fetch.sync(["k1", "k2"]) == 0
    (local / "k1.safetensors").unlink()  # weights lost since, the result kept (helper-31): fetched again
    assert fetch.sync(["k1", "k2"]) == 1 and (local / "k1.safetensors").exists()  # k2 failed: it has none
    assert sorted((local / "trained.log").read_text().split()) == ["k1", "k1", "k2"]
    assert json.loads((local / "k1.json").read_text())["accuracy"] == 0.6


def test_a_deep_teacher_s_long_key_names_its_files_by_a_digest(tmp_path):
    """A key is one width per unit: 277 characters for a ResNet-110 read as one's own module, and every
    save of its students failed with ENAMETOOLONG (a file name stops at 255 bytes), each held as a result
    that could not be saved. Past LONG_KEY a key's files are named by its start and a digest, locally and through a store;
    keys up to it name them as they always did."""
    from n2n.storage import LONG_KEY, stem

    long, other = "-".join(["16"] * 110), "-".join(["16"] * 109 + ["8"])  # (329 characters)
    short = "16-" * (LONG_KEY // 3 - 1) + "160"  # (as long as a key still named by itself: every one that saved before)
    assert len(short) == LONG_KEY and stem(short) == short
    assert len(stem(long)) < 100 and stem(long).startswith(long[:64] + "_") and stem(long) != stem(other)
    local = LocalResults(tmp_path / "results")
    local.path.mkdir()
    for key in (long, other, short):
        saved = local.save(key, _state(), {"accuracy": 0.5})
        assert local.result(key) == saved and file_digest(local.path / f"{stem(key)}.safetensors") == saved["weights_digest"]
    assert (local.path / "trained.log").read_text().split() == [stem(long), stem(other), short]
    with pytest.raises(RunError, match="expected letters, digits"):
        stem("../" + long)
    store = RemoteResults(f"file://{tmp_path}/bucket/runs/r/results")
    store.check(tmp_path / "run")
    local.write_text(f"{stem(short)}.traceback.txt", "Traceback ...")  # its temp name too stays under 255 bytes
    saved = store.save(long, _state(), {"accuracy": 0.5})
    (tmp_path / "run" / "results").mkdir(parents=True)
    fetch = Fetcher(store.uri, tmp_path / "run")
    assert store.result(long) == saved and fetch(long) and not fetch(long)
    assert json.loads((tmp_path / "run" / "results" / f"{stem(long)}.json").read_text()) == saved
    saved = store.save(short, _state(), {"accuracy": 0.5})  # (helper-85: its temp names passed 255 bytes from 190)
    assert fetch(short) and json.loads((tmp_path / "run" / "results" / f"{short}.json").read_text()) == saved


def test_a_local_location_fetches_nothing(tmp_path):
    LocalResults(tmp_path).save("k1", _state(), {"accuracy": 0.5})
    fetch = Fetcher(str(tmp_path), tmp_path / "run")
    assert not fetch("k1") and fetch.sync(["k1"]) == 0 and not (tmp_path / "run").exists()


def test_a_store_not_empty_or_unusable_or_inside_the_run_is_refused(tmp_path):
    uri = f"file://{tmp_path}/store/r/results"
    RemoteResults(uri).save("k1", None, {"accuracy": 0.5})
    with pytest.raises(ConfigError, match="is not empty"):
        RemoteResults(uri).check(tmp_path / "run")
    with pytest.raises(ConfigError, match="resources.storage: cannot use nosuch://bucket/x"):
        RemoteResults("nosuch://bucket/x").check(tmp_path / "run")
    with pytest.raises(ConfigError, match="is inside the run folder"):  # storage = the runs folder itself
        RemoteResults(f"file://{tmp_path}/runs/r/results").check(tmp_path / "runs" / "r")
    with pytest.raises(ConfigError, match="is inside the run folder"):  # helper-25: runs/p%65 is runs/pe
        RemoteResults(f"file://{tmp_path}/runs/p%65/results").check(tmp_path / "runs" / "pe")
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="resources.storage: expected a URI such as s3://"):
        load_config(None, {"resources.storage": "runs/store"})
    # helper-72: file:// (no folder) put a search's results at the filesystem's root
    for uri, why in (("file://", "it names no folder: trials would write at the filesystem's root"),
                     ("file:///", "it names no folder"), ("s3://", "it names no bucket"), ("s3:///runs", "it names no bucket")):
        with pytest.raises(ConfigError, match=f"got '{uri}' \\({why}"):
            load_config(None, {"resources.storage": uri})
        recorded = dataclasses.asdict(load_config(None))  # a run recorded with it still loads (helper-74)
        recorded["resources"]["storage"] = uri
        assert run_config(recorded).resources.storage == uri
    assert load_config(None, {"resources.storage": f"file://{tmp_path}/store"}).resources.storage.endswith("/store")


def test_search_refuses_unusable_storage_before_the_run_folder_exists(tiny_config, tmp_path, capsys):
    status = cli.main(["search", str(tiny_config), "--name", "r", "--runs-dir", str(tmp_path / "runs"),
                       "--storage", "nosuch://bucket/runs"])
    err = capsys.readouterr().err
    assert status == 2 and "resources.storage: cannot use nosuch://bucket/runs/r-" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_every_run_gets_a_store_of_its_own_with_the_uri_options_kept():
    a, b = (store_location("s3://bucket/runs/?endpoint_override=h:9000&scheme=http", "r") for _ in range(2))
    pa, pb = urlsplit(a), urlsplit(b)
    assert a != b and pa.query == "endpoint_override=h:9000&scheme=http" and pa.netloc == "bucket"
    assert re.fullmatch(r"/runs/r-[0-9a-f]{8}/results", pa.path) and pb.path.endswith("/results")


def test_a_training_killed_before_its_result_still_reaches_the_audit(tmp_path):
    store = RemoteResults(f"file://{tmp_path}/store")
    store.save("k1", None, {"accuracy": 0.5})
    store._put("trained/k2@10ep.1", b"")  # k2 (a finalist key) trained, then killed before its result
    local = tmp_path / "run" / "results"
    local.mkdir(parents=True)
    assert Fetcher(store.uri, local.parent).sync(["k1", "k2@10ep"]) == 1
    assert sorted((local / "trained.log").read_text().split()) == ["k1", "k2@10ep"]
    assert not (local / "k2@10ep.json").exists()


@pytest.fixture(scope="module")
def s3():
    """An S3 endpoint (moto's server) with a bucket: (storage URI, pyarrow filesystem). Credentials
    travel in the URI, so Ray's workers need nothing from the environment."""
    from moto.server import ThreadedMotoServer
    from pyarrow import fs

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    uri = f"s3://testing:testing@n2n-bucket/runs?scheme=http&endpoint_override={host}:{port}&region=us-east-1"
    filesystem, _ = fs.FileSystem.from_uri(uri + "&allow_bucket_creation=true")
    filesystem.create_dir("n2n-bucket")
    yield uri, filesystem
    server.stop()


def _objects(filesystem, prefix):
    from pyarrow import fs

    return {i.path[len(prefix) + 1:] for i in filesystem.get_file_info(fs.FileSelector(prefix, recursive=True))
            if i.type == fs.FileType.File}


def test_results_through_s3(s3, tmp_path):
    uri, filesystem = s3
    loc = store_location(uri, "unit")
    store = RemoteResults(loc)
    store.check(tmp_path / "run")
    state = _state()
    store.save("k1@10ep", state, {"accuracy": 0.5})
    store.save("k1@10ep", state, {"accuracy": 0.5})  # written again over itself (a retrained candidate)
    prefix = _filesystem_path(loc)
    objects = _objects(filesystem, prefix)
    assert {"k1@10ep.json", "k1@10ep.safetensors"} <= objects and not any(o.endswith(".tmp") for o in objects)
    assert sum(o.startswith("trained/k1@10ep.") for o in objects) == 2
    with pytest.raises(ConfigError, match="is not empty"):
        RemoteResults(loc).check(tmp_path / "run")
    local = tmp_path / "run" / "results"
    local.mkdir(parents=True)
    assert Fetcher(loc, local.parent).sync(["k1@10ep"]) == 1
    assert (local / "trained.log").read_text().split() == ["k1@10ep", "k1@10ep"]
    from safetensors.torch import load_file

    assert all(torch.equal(load_file(local / "k1@10ep.safetensors")[k], v) for k, v in state.items())
    assert "testing:testing@" not in shown(loc) and shown(loc).startswith("s3://n2n-bucket/runs/unit-")


def _filesystem_path(uri):
    from pyarrow import fs

    return fs.FileSystem.from_uri(uri)[1]


@pytest.mark.ray
def test_a_search_through_s3_fills_the_run_folder_and_exports(ray_session, tiny_config, s3, tmp_path):
    uri, filesystem = s3
    logs = []
    run = tmp_path / "runs" / "s3run"
    cfg = load_config(tiny_config, {"resources.storage": uri, "search.shrink_budget": 0, "search.stages": ["removal"]})
    summary = run_search(cfg, run, log=logs.append)
    recs = json.loads((run / "candidates.json").read_text())
    assert summary["stage"] == "done" and len(recs) == 6
    loc = json.loads((run / "n2n.json").read_text())["results_store"]
    objects = _objects(filesystem, _filesystem_path(loc))
    for r in recs:  # in S3 first, then byte for byte in the run folder
        assert {f"{r['key']}.json", f"{r['key']}.safetensors"} <= objects
        with filesystem.open_input_stream(f"{_filesystem_path(loc)}/{r['key']}.safetensors") as f:
            assert f.read() == (run / "results" / f"{r['key']}.safetensors").read_bytes()
    assert sorted((run / "results" / "trained.log").read_text().split()) == sorted(r["key"] for r in recs)
    assert not any("testing:testing" in line for line in logs)
    out = export_best(run, tmp_path / "student", log=lambda *_: None)
    assert out["key"] in {r["key"] for r in recs}
    # a result the run folder lacks is fetched only when asked (helper-25: a run folder names its own
    # storage, and export contacted it, signing with the user's credentials)
    for suffix in (".json", ".safetensors"):  # as a driver killed before it fetched them leaves a run
        (run / "results" / f"{out['key']}{suffix}").unlink()
    with pytest.raises(RunError, match=rf"the weights of the student to export .* are not there; they may be in the "
                                       rf"run's storage .*: `n2n export {run} --out DIR --fetch URI` downloads"):
        export_best(run, tmp_path / "again", log=lambda *_: None)
    with pytest.raises(RunError, match=rf"`n2n export {run} --out DIR --key {out['key']} --fetch URI` downloads"):
        export_best(run, tmp_path / "again", log=lambda *_: None, key=out["key"])  # helper-44: --key was dropped
    # the storage is the user's to name (helper-97: a bare --fetch contacted whatever a received n2n.json named)
    for other in ("file:///tmp/elsewhere", ""):
        with pytest.raises(RunError, match=r"this run records resources.storage s3://n2n-bucket/.*, not "
                                           rf"{other or 'None'}; export downloads the results it lacks from there\. "
                                           r"Export it with `--fetch URI` if that storage is yours" if other else
                                           r"this run records resources.storage s3://n2n-bucket/.*; export downloads"):
            export_best(run, tmp_path / "again", log=lambda *_: None, fetch=other)
    assert not (tmp_path / "again").exists()
    assert export_best(run, tmp_path / "again", log=lambda *_: None, fetch=uri)["key"] == out["key"]
    # weights lost or cut short since, their result file kept (helper-31: --fetch fetched only what
    # lacked a result file, so it could not repair either): the store's copy is fetched again
    weights = run / "results" / f"{out['key']}.safetensors"
    good = weights.read_bytes()
    # ... and weights that read but changed since (helper-54: refused though the store held the trial's file)
    changed = {k: v + 1e-3 if v.is_floating_point() else v for k, v in load_weights(weights).items()}
    for damage in (lambda: weights.unlink(), lambda: weights.write_bytes(good[:1000]),
                   lambda: save_weights(changed, weights)):
        damage()
        with pytest.raises(RunError, match=r"--out DIR --fetch URI` fetches it again from the run's storage" if weights.exists()
                           and len(weights.read_bytes()) == len(good) else "."):
            export_best(run, tmp_path / "no", log=lambda *_: None)
        if weights.exists() and len(weights.read_bytes()) == len(good):  # the hint keeps the --key asked (helper-98)
            with pytest.raises(RunError, match=rf"--out DIR --key {out['key']} --fetch URI` fetches it again"):
                export_best(run, tmp_path / "no", log=lambda *_: None, key=out["key"])
        said = []
        assert export_best(run, tmp_path / "repaired", overwrite=True, log=said.append, fetch=uri)["key"] == out["key"]
        assert weights.read_bytes() == good, said


def test_a_results_store_other_than_the_run_s_own_storage_is_refused():
    """helper-25: n2n.json's results_store was used as it stood: a received run folder made resume
    write results into any local folder, and export contact any endpoint with the user's key."""
    from n2n.storage import check_store

    storage = "s3://bucket/runs"
    check_store("s3://bucket/runs/exp1-0123abcd/results", storage, "n2n.json")  # as store_location makes it
    check_store("file:///mnt/shared/my run-89abcdef/results", "file:///mnt/shared", "n2n.json")
    check_store("s3://bucket/runs/a..b-0123abcd/results", storage, "n2n.json")  # helper-26: --name a..b was refused
    for store, storage in (("/tmp/victim", ""), ("/tmp/victim", storage),
                           ("s3://bucket/runs/x-0123abcd/results?endpoint_override=evil:9999", storage),
                           ("s3://other/runs/x-0123abcd/results", storage), ("s3://bucket/runs/../x-0123abcd/results", storage),
                           ("s3://bucket/runsx/x-0123abcd/results", storage), ("s3://bucket/runs/x/y-0123abcd/results", storage),
                           ("file:///base/%2e%2e%2f%2e%2e%2fetc-12345678/results", "file:///base"),  # helper-26
                           ("file:///base/..-12345678/results/../../x-12345678/results", "file:///base"),
                           (["s3://bucket/runs/x-0123abcd/results"], storage)):
        with pytest.raises(RunError, match="is not a results folder under the run's resources.storage"):
            check_store(store, storage, "n2n.json")
