"""Where trials leave their results, and how they reach the run folder.

Without `resources.storage`, trials write into the run folder's results/ (one machine, or a cluster
whose nodes share that disk). With it, a filesystem URI every node can reach (s3://bucket/runs,
gs://..., file:///mnt/shared), trials write to STORAGE/NAME-ID/results and never touch the run
folder; the driver copies each result into the run folder as its trial completes (and what it
missed, at the end of a session, on resume and before an export), so export, report and resume read
the run folder as always. Either way a result is written weights first, then an audit entry
(results/trained.log, one line per training actually run), then KEY.json, whose presence means
"complete".
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import ConfigError, RunError
from .models import ModelError, append_to, bytes_digest, file_digest, load_weights, save_weights, write_bytes, write_json

AUDIT = "trained.log"


KEY = re.compile(r"[\w@.-]+")  # SearchSpace.key's widths and "x" joined by "-", "@10ep" for a finalist; no "/"


def check_key(key) -> str:
    """A candidate key names files under results/ (KEY.json, ...): one with "/" (a doctored
    candidates.json or search state) would have n2n read or write files elsewhere."""
    if not isinstance(key, str) or not KEY.fullmatch(key):
        raise RunError(f"candidate key {key!r}: expected letters, digits and _ @ . - only (it names files under "
                       "results/); the run folder is damaged or was edited")
    return key


# A key longer than this names its files by a digest (`stem`): a file name stops at 255 bytes, and a
# deep teacher's key (one width per unit: 277 characters for a ResNet-110 read as one's own module)
# failed every save with ENAMETOOLONG, held as "could not be saved". Keys up to it name their files as
# they always did (the longest whose weights saved before, their temp names made from theirs: helper-85);
# KEY.traceback.txt and remote trained/KEY.TIME stay under 255 at it, temp names being short now.
LONG_KEY = 231


def stem(key) -> str:
    """What KEY's files under results/ are named by: KEY itself, or for a long key its start and a
    digest of it (n2n's keys have no "_", so none is mistaken for another's)."""
    if len(check_key(key)) <= LONG_KEY:
        return key
    return f"{key[:64]}_{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def weights_of(run_dir: Path, key) -> Path:
    """RUN/results/KEY.safetensors, KEY named as `stem` names it: the weights a candidate's trial saved."""
    return Path(run_dir) / "results" / f"{stem(key)}.safetensors"


def open_results(location: str, run_id: str | None = None):
    """The results store at `location`: a local folder (`run_id`: see LocalResults), or a URI (scheme://...)."""
    return RemoteResults(location) if "://" in location else LocalResults(Path(location), run_id)


class LocalResults:
    """results/ in the run folder, written with plain file I/O (atomic renames, fsync'd audit). With
    `run_id`, only while the run folder holding it is that run (its n2n.json's): another at its path
    (the run moved, another put at its name) is neither read nor written (helper-89: a renamed search's
    trials wrote into it). By the run's id, not the folder's inode: a node of a cluster may see the
    shared disk's folders under inodes of its own (helper-90)."""

    def __init__(self, path: Path, run_id: str | None = None):
        self.path = path
        self.run_id = run_id

    def _check(self) -> None:
        if self.run_id is None:
            return
        try:
            found = json.loads((self.path.parent / "n2n.json").read_text()).get("run_id")
        except (OSError, ValueError, AttributeError, RecursionError):
            found = None
        if found != self.run_id:
            raise RunError(f"{self.path}: no longer the results folder of this search's run (the run was moved or "
                           f"replaced while it ran); nothing was read or written there")

    def result(self, key: str) -> dict | None:
        self._check()
        p = self.path / f"{stem(key)}.json"
        if p.exists() and not p.is_file():  # a FIFO here blocked the read for good (helper-30)
            raise ValueError(f"{p}: expected a result file, found something else under its name")
        return json.loads(p.read_text()) if p.exists() else None

    def write_text(self, name: str, text: str) -> None:
        self._check()  # (helper-90: a failed trial's traceback replaced another run's)
        write_bytes(self.path / name, text.encode())

    def save(self, key: str, state: dict | None, final: dict) -> dict:
        """Weights, then the audit line, then the result file. The audit line comes before the
        result: a kill between the two leaves the training logged and, with no result, run again and
        logged again; never a result whose training is missing from the log. Returns the result, with
        the weights file's digest (`weights_digest`: what export checks the file against)."""
        name = stem(key)
        self._check()  # before each write: the folder may go while a trial trains for minutes
        if state is not None:
            save_weights(state, self.path / f"{name}.safetensors")
            final = {**final, "weights_digest": file_digest(self.path / f"{name}.safetensors")}
        self._check()
        with append_to(self.path / AUDIT) as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._check()
        write_json(self.path / f"{name}.json", final)
        return final


def store_location(storage: str, run_name: str) -> str:
    """A new run's results under `storage`: STORAGE/NAME-ID/results, the ID fresh for every run (two
    runs of one name never share results). Appended to the URI's path, before any ?options."""
    parts = urlsplit(storage)
    path = f"{parts.path.rstrip('/')}/{run_name}-{uuid.uuid4().hex[:8]}/results"
    return urlunsplit(parts._replace(path=path))


def check_store(store, storage: str, where) -> None:
    """n2n.json's results_store must be where store_location put it: STORAGE/NAME-ID/results under
    the run's own resources.storage, same scheme, host and options. Another value (edited, or a run
    folder from someone else) would have resume write, and export read, results anywhere (a local
    folder outside the run, another endpoint signed with the user's credentials)."""
    base, got = urlsplit(storage or ""), urlsplit(store if isinstance(store, str) else "")
    # judged as pyarrow reads the paths: percent-decoded (helper-26: %2e%2e%2f passed as a name)
    root, path = unquote(base.path).rstrip("/"), unquote(got.path)
    tail = path[len(root):]
    if not (storage and (got.scheme, got.netloc, got.query) == (base.scheme, base.netloc, base.query)
            and path.startswith(root + "/") and re.fullmatch(r"/[^/]+-[0-9a-f]{8}/results", tail)):
        raise RunError(f"{where}: results_store {store!r} is not a results folder under the run's resources.storage "
                       f"{storage!r}; was n2n.json changed? n2n neither reads nor writes there")


def shown(uri: str) -> str:
    """A URI as messages show it: without key:secret@ (prefer the nodes' own credentials)."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])) if "@" in parts.netloc else uri


@functools.lru_cache(maxsize=4)
def _filesystem(uri: str):
    """(pyarrow filesystem, path) of a URI, once per process (S3 resolves the bucket's region)."""
    from pyarrow import fs

    return fs.FileSystem.from_uri(uri)


class RemoteResults:
    """STORAGE/NAME-ID/results on a pyarrow filesystem. Object stores cannot append, so each
    training's audit entry is an object of its own (trained/KEY.TIME), counted into the run's
    trained.log when fetched."""

    def __init__(self, uri: str):
        self.uri = uri
        # object stores show an upload only once it is complete; elsewhere a temporary name and a move
        self.atomic_put = urlsplit(uri).scheme in ("s3", "gs", "gcs", "abfs", "abfss", "az")

    @property
    def _fs(self):
        return _filesystem(self.uri)

    def _exists(self, name: str) -> bool:
        from pyarrow import fs

        filesystem, root = self._fs
        return filesystem.get_file_info(f"{root}/{name}").type == fs.FileType.File

    def _read(self, name: str) -> bytes | None:
        if not self._exists(name):
            return None
        filesystem, root = self._fs
        with filesystem.open_input_stream(f"{root}/{name}") as f:
            return f.read()

    def _put(self, name: str, data: bytes) -> None:
        """A reader never sees half an object."""
        filesystem, root = self._fs
        target = f"{root}/{name}"
        if self.atomic_put:
            with filesystem.open_output_stream(target) as f:
                f.write(data)
            return
        tmp = f"{root}/.{uuid.uuid4().hex}.tmp"  # (not named by `name`: a long one passed 255 bytes, helper-85)
        with filesystem.open_output_stream(tmp) as f:
            f.write(data)
        if self._exists(name):  # a result written again after a kill; some filesystems' move won't replace
            filesystem.delete_file(target)
        filesystem.move(tmp, target)

    def check(self, run_dir: Path) -> None:
        """Reachable, writable, outside the run folder and empty (a result already there would be
        reported by a trial as its own). Called before the run folder exists."""
        parts = urlsplit(self.uri)
        # the path as pyarrow will use it: percent-decoded (helper-25: .../runs/p%65 was the run folder runs/pe)
        if parts.scheme == "file" and Path(unquote(parts.path)).resolve().is_relative_to(run_dir.resolve()):
            raise ConfigError(f"resources.storage: {shown(self.uri)} is inside the run folder {run_dir}; a storage URI is for "
                              "nodes that do not share the runs folder's disk (leave it empty where they do)")
        try:
            filesystem, root = self._fs
            found = filesystem.get_file_info(_selector(root))
            if not found:
                filesystem.create_dir(f"{root}/trained", recursive=True)
                self._put(".probe", b"n2n")  # the driver can write there (each worker is on its own)
                filesystem.delete_file(f"{root}/.probe")
        except Exception as e:  # pyarrow raises OSError, ValueError, ArrowInvalid... for a bad URI
            raise ConfigError(f"resources.storage: cannot use {shown(self.uri)} ({str(e).splitlines()[0]})") from None
        if found:
            raise ConfigError(f"resources.storage: {shown(self.uri)} is not empty; a run's results go to a place of their own")

    def result(self, key: str) -> dict | None:
        data = self._read(f"{stem(key)}.json")
        return None if data is None else json.loads(data)

    def write_text(self, name: str, text: str) -> None:
        self._put(name, text.encode())

    def save(self, key: str, state: dict | None, final: dict) -> dict:
        from safetensors.torch import save

        name = stem(key)
        filesystem, root = self._fs
        filesystem.create_dir(f"{root}/trained", recursive=True)  # a local or mounted store needs the folders
        if state is not None:
            data = save({k: v.detach().cpu().contiguous() for k, v in state.items()})
            self._put(f"{name}.safetensors", data)
            final = {**final, "weights_digest": bytes_digest(data)}  # fetched byte for byte: the local file's too
        self._put(f"trained/{name}.{time.time_ns()}", b"")
        self._put(f"{name}.json", json.dumps(final, indent=2, sort_keys=True).encode() + b"\n")
        return final

    def audit(self, local: Path) -> None:
        """Bring the run's trained.log up to the store's audit entries: one line per training,
        including trainings killed before their result."""
        filesystem, root = self._fs
        runs = Counter(i.base_name.rsplit(".", 1)[0] for i in filesystem.get_file_info(_selector(f"{root}/trained")))
        path = local / AUDIT
        logged = Counter(path.read_text().split()) if path.exists() else Counter()
        missing = "".join(f"{k}\n" * (n - logged[k]) for k, n in runs.items() if n > logged[k])
        if missing:
            with append_to(path) as f:
                f.write(missing)
                f.flush()
                os.fsync(f.fileno())

    def fetch(self, key: str, local: Path) -> bool:
        """Copy KEY's result into the local results/ folder (the audit first, KEY.json last);
        False if the store has no result for KEY. Fetching twice adds nothing."""
        key = stem(key)
        result = self._read(f"{key}.json")
        if result is None:
            return False
        for name in (f"{key}.safetensors", f"{key}.traceback.txt"):
            data = self._read(name)
            if data is not None:
                write_bytes(local / name, data)
        self.audit(local)
        write_bytes(local / f"{key}.json", result)
        return True


def _selector(path: str):
    from pyarrow import fs

    return fs.FileSelector(path, allow_not_found=True)


class Fetcher:
    """Copies results from a remote store into the run folder's results/ (a no-op for a local one)."""

    def __init__(self, location: str, run_dir: Path, log=print):
        store = open_results(location)
        self.store = store if isinstance(store, RemoteResults) else None
        self.local, self.log = Path(run_dir) / "results", log

    def __call__(self, key: str) -> bool:
        """One trial's result, as it completes; a failure is said and left for `sync`."""
        if self.store is None or (self.local / f"{stem(key)}.json").exists():
            return False
        try:
            return self.store.fetch(key, self.local)
        except Exception as e:  # the result stays in the store: sync() fetches it later
            self.log(f"warning: could not fetch {key} from {shown(self.store.uri)} yet ({str(e).splitlines()[0]}); "
                     "it is fetched again at the end of the session")
            return False

    def _lacks(self, key: str) -> bool:
        """KEY's result is not here, or its weights are not though it has some: deleted since
        (helper-31: --fetch could not bring them back). A failed trial saves no weights."""
        result = self.local / f"{stem(key)}.json"
        if not result.exists():
            return True
        if weights_of(self.local.parent, key).exists():
            return False
        try:
            return not json.loads(result.read_text()).get("failure")  # ("" when it trained)
        except (OSError, ValueError, AttributeError, RecursionError):
            return True

    def repair(self, key: str, digest: str | None = None) -> bool:
        """KEY's weights from the store again when the local copy does not read (cut short, damaged) or
        has not the `digest` its trial recorded (helper-54: changed since); True when it fetched them."""
        weights = weights_of(self.local.parent, key)
        try:
            load_weights(weights)
            if digest is None or file_digest(weights) == digest:
                return False
        except ModelError:
            pass
        if self.store is None or not self.store.fetch(key, self.local):
            return False
        self.log(f"fetched {key} from {shown(self.store.uri)} again: its local weights did not read, or had changed")
        return True

    def sync(self, keys) -> int:
        """Every result of `keys` the run folder lacks, and every audit entry (after a session, on
        resume, before an export); how many results came. Stops at the first error, with one message."""
        if self.store is None:
            return 0
        fetched = 0
        try:
            for k in dict.fromkeys(keys):
                if self._lacks(k):
                    fetched += self.store.fetch(k, self.local)
            self.store.audit(self.local)
        except Exception as e:
            self.log(f"warning: could not fetch results from {shown(self.store.uri)} ({str(e).splitlines()[0]}); "
                     "`n2n resume` fetches them when the storage can be reached")
        if fetched:
            self.log(f"fetched {fetched} results from {shown(self.store.uri)}")
        return fetched


__all__ = ["open_results", "store_location", "shown", "stem", "weights_of", "LocalResults", "RemoteResults", "Fetcher"]
