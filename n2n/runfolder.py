"""A run folder on disk: n2n's own files, the lock that keeps one process on it, the search state.

    runs/NAME/
      n2n.json            config, teacher folder, reference figures (written at creation; again when the
                          kept teacher logits are computed, with their digest)
      search_state.pt     the driver's whole state: plain data + tensors, rewritten atomically at every
                          step (search_state.prev.pt is the one before); read with weights_only=True
      candidates.json     every trained candidate (what people, `export` and `report` read)
      teacher_logits.safetensors
                          the teacher's logits on the training split, the targets of every
                          distillation of the run (n2n.search.teacher_logits)
      summary.json        kept current
      n2n.log             every line the search and its resumes printed, with the time
      results/            per-candidate metrics (KEY.json) and weights (KEY.safetensors), from the trials
                          (or fetched from resources.storage, n2n.storage);
                          KEY.traceback.txt for a trial that raised; trained.log, one line per training
      tune/session-N/     Ray Tune's experiment of each session: logs only, n2n never reads it back
      .lock               held (flock) by the one n2n process working on the run

n2n's files are the source of truth. Ray Tune's own snapshots are pickles and can be damaged by a
kill at the wrong moment, so a resume never restores them: it starts a fresh Tune experiment and
hands it the search state from here (or, if that is damaged too, a state rebuilt from candidates.json;
finished candidates are never trained again either way, since their results/ files remain).
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import reprlib
import shlex
import shutil
import socket
import time
from pathlib import Path

import torch

from .config import run_config
from .errors import ConfigError, RunError
from .models import is_number, open_plain, plain_file, private_temp, temp_folder, unshared, write_json
from .storage import AUDIT, check_key, check_store

META = "n2n.json"
STATE = "search_state.pt"
PREV_STATE = "search_state.prev.pt"
RECORDS = "candidates.json"
SUMMARY = "summary.json"
RESULTS = "results"
TUNE = "tune"
POLICY = "policy"  # the copy of REINFORCE's starting policy a run was started from (agent_options.policy)
LOCK = ".lock"
LOG = "n2n.log"
TEACHER_LOGITS = "teacher_logits.safetensors"


def folder_kind(folder: Path) -> str | None:
    """What an n2n folder is, in words, where it is one, for errors that are handed another kind
    (helper-97: an export given to report, a run or a policy given to teacher show: "found none")."""
    folder = Path(folder)
    if (folder / META).is_file():
        return "an n2n run folder"
    if all((folder / f).is_file() for f in ("spec.json", "arch.json", "model.safetensors")):
        return "an n2n export (a student; report, export and resume take the run folder its metrics.json names)"
    if any((folder / f).is_file() for f in ("policy.json", "removal/policy.json", "shrink/policy.json")):
        return "a policy folder (search.agent_options.policy takes it)"
    return None


def read_run(run_dir: Path) -> dict:
    """n2n.json of a run folder; a RunError names what is wrong."""
    path = Path(run_dir) / META
    if not plain_file(path):
        found = "none" if not (path.exists() or path.is_symlink()) else "something else under its name"
        if (kind := folder_kind(run_dir)) and kind != "an n2n run folder":  # (helper-97: "found none" of an export)
            found += f": {run_dir} is {kind}"
        raise RunError(f"{run_dir}: expected a run folder made by `n2n search` (with n2n.json as a plain file), "
                       f"found {found}")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise RunError(f"{path}: damaged, not readable JSON ({e})") from None
    missing = [k for k in ("config", "teacher_folder", "dataset", "input_shape", "reference", "teacher")
               if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise RunError(f"{path}: damaged, expected the keys {missing} of a run's metadata")
    try:  # every command reads the run's config through run_config: a bad one is named here, once
        if not isinstance(meta["config"], dict):
            raise ConfigError(f"expected a mapping, found {type(meta['config']).__name__}")
        run_config(meta["config"])
    except ConfigError as e:
        raise RunError(f"{path}: its recorded config is not one this n2n reads ({e}): a run made by a newer n2n "
                       "(upgrade this one), or edited since") from None
    if not isinstance(meta["reference"], dict) or not {"params", "accuracy"} <= set(meta["reference"]):
        raise RunError(f"{path}: damaged, expected the teacher's reference figures (params, accuracy), "
                       f"found {meta['reference']!r}")
    wrong = _wrong_meta(meta)
    if wrong:  # a NaN reference accuracy passed every later check (NaN compares False) and no student met the target
        raise RunError(f"{path}: damaged, expected {wrong}; was n2n.json changed?")
    if "results_store" in meta:
        check_store(meta["results_store"], run_config(meta["config"]).resources.storage, path)
    # n2n's own files, where they are, as n2n writes them: reading a FIFO under such a name blocked forever
    for name in (RECORDS, SUMMARY, STATE, PREV_STATE, TEACHER_LOGITS, LOCK):
        p = Path(run_dir) / name
        if (p.exists() or p.is_symlink()) and not plain_file(p):
            raise RunError(f"{p}: expected a plain file, as n2n writes it, found {'a link' if p.is_symlink() else 'something else'}")
    # written into by resume (tune/: Ray Tune's sessions): through a link, that would be elsewhere
    for name in (RESULTS, POLICY, TUNE):
        if (Path(run_dir) / name).is_symlink():
            raise RunError(f"{Path(run_dir) / name}: expected the run's own folder, found a link to "
                           f"{os.readlink(Path(run_dir) / name)}; n2n writes only inside the run folder")
    return meta


def _wrong_meta(meta: dict) -> str | None:
    """The first of n2n.json's figures that is not what n2n wrote (a number where it wrote one, in range)."""
    ref, teacher, shape = meta["reference"], meta["teacher"], meta["input_shape"]
    checks = (
        (is_number(ref["params"], 1, whole=True), "reference.params a whole number >= 1", ref["params"]),
        (is_number(ref["accuracy"], 0, 1), "reference.accuracy a number in [0, 1]", ref["accuracy"]),
        (is_number(ref.get("flops"), 0, whole=True), "reference.flops a whole number >= 0", ref.get("flops")),
        (isinstance(shape, list) and shape and all(is_number(n, 1, whole=True) for n in shape),
         "input_shape a list of whole numbers >= 1", shape),
        (isinstance(teacher, dict), "teacher a mapping", teacher),
        (not isinstance(teacher, dict) or is_number(teacher.get("test_accuracy"), 0, 1),
         "teacher.test_accuracy a number in [0, 1]", isinstance(teacher, dict) and teacher.get("test_accuracy")),
        (isinstance(meta["teacher_folder"], str) and isinstance(meta["dataset"], str),
         "teacher_folder and dataset as text", (meta["teacher_folder"], meta["dataset"])),
    )
    return next((f"{what}, found {found!r}" for ok, what, found in checks if not ok), None)


def read_summary(run_dir: Path) -> dict | None:
    """summary.json, or None when there is none yet or it cannot be read (it is rewritten at every
    step from the state, so nothing depends on it but what people and export are told)."""
    try:
        summary = json.loads((Path(run_dir) / SUMMARY).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(summary, dict):
        return None
    # the fields commands read, of the kinds n2n writes (helper-46: `"best": 5` crashed export)
    best = summary.get("best")
    fine = (all(summary.get(k) is None or isinstance(summary[k], str) for k in ("stage", "failure"))
            and (summary.get("candidates_evaluated") is None or is_number(summary["candidates_evaluated"], 0, whole=True))
            and (best is None or isinstance(best, dict) and isinstance(best.get("key", ""), str)))
    return summary if fine else None


RECORD_KEYS = ("stage", "spec", "accuracy", "params", "failure", "reward")  # what every record has ever held
RECORD_STAGES = ("removal", "shrink", "refine", "finalists")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # what a terminal takes for commands: ESC, CR, BEL ...


def read_records(run_dir: Path, from_state: bool = False) -> list[dict]:
    """candidates.json, or [] when there is none yet. A damaged file is an error, never 'no records', and
    so is a missing one where summary.json counts candidates (helper-63: a finished run of 10 read as "0
    candidates trained", and gave `policy fit` nothing, unsaid), unless the caller rebuilds them from
    the search state (`from_state`: resume)."""
    path = Path(run_dir) / RECORDS
    if not path.exists():
        summary = read_summary(run_dir) or {}
        counted = summary.get("candidates_evaluated")
        if counted and not from_state:  # (a failed search is not resumed: helper-64)
            again = "" if summary.get("stage") == "failed" else \
                f", or `n2n resume {shlex.quote(str(run_dir))}` writes it again from the search state"
            raise RunError(f"{path}: missing, though summary.json counts {counted} candidates evaluated; restore it from "
                           f"a copy of the run{again}")
        return []
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise RunError(f"{path}: damaged, not readable JSON ({e}); restore it from a copy") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and "key" in r for r in records):
        raise RunError(f"{path}: damaged, expected a list of candidate records")
    for i, r in enumerate(records):
        check_key(r["key"])
        problem = record_problem(r)
        if problem:  # helper-25: a string reward was a TypeError traceback in report and policy fit
            raise RunError(f"{path}: damaged, candidate {i} ({r['key']}) {problem}")
    return records


def record_problem(r) -> str | None:
    """What keeps `r` from being a candidate record as n2n writes them ("lacks [...]", "has ..."), or
    None: candidates.json's records and a search state's alike."""
    if not isinstance(r, dict):
        return "is not a record"
    missing = [k for k in (*RECORD_KEYS, "key") if k not in r]
    if missing:
        return f"lacks {missing}"
    nested = next((k for k, v in r.items() if k not in ("spec", "scored_before") and not _flat(v)), None)
    if nested:
        return f"has {nested} {reprlib.repr(r[nested])} (expected a figure, a name or null)"
    if not (isinstance(r["spec"], dict) and set(r["spec"]) == {"removed", "ratios"}):
        return f"has spec {reprlib.repr(r['spec'])} (expected a mapping of 'removed' and 'ratios')"
    before = r.get("scored_before", {})  # the figures a rescore kept (n2n.driver rescore)
    if not (isinstance(before, dict) and set(before) <= {"reward", "compression"} and all(map(_flat, before.values()))):
        return f"has scored_before {reprlib.repr(before)} (expected the reward and compression first scored)"
    return _wrong_types(r)


def result_problem(d, stored: bool = True) -> str | None:
    """What keeps `d` from being a trial's result as n2n.trial writes it (results/KEY.json), or None
    (helper-76: a result file {"reward": "lots", "accuracy": 7} was adopted: three TypeErrors, the
    finalists skipped and the search said finished). `stored=False`: as Tune reports it, with keys
    of its own beside n2n's (its `config` a mapping)."""
    if not isinstance(d, dict):
        return "is not a mapping"
    missing = [k for k in ("accuracy", "params", "flops", "failure") if k not in d]
    if missing:
        return f"lacks {missing}"
    # the figures of the record made of it, checked as the record's are (helper-79: a latency of "fast"
    # passed, and candidates.json was then refused as damaged; a ratio of "x" was a TypeError in the reward)
    checks = {**_figures(d), "flops": is_number(d["flops"], 0, whole=True)}  # (a result always has them)
    if stored:  # nothing nested, as n2n writes it (Tune's report adds a `config` mapping of its own)
        checks.update({k: _flat(v) for k, v in d.items() if k not in checks})
    return _said(d, checks)


def _flat(v) -> bool:
    """A figure, a name, a flag or null: what a record or result holds but for its spec. Nested values
    are refused: a search_state.pt of 10 KB held one list 22 levels deep by reference, each level
    twice, which a resume wrote out as a 1 GB candidates.json (helper-76)."""
    return v is None or isinstance(v, (str, bool, int, float))


def _figures(r: dict) -> dict[str, bool]:
    """Whether each figure a trial's result and the record made of it share is of the type, and in the
    range, n2n writes it in (helper-41: a forged accuracy of 1.5 ranked first in report); fields later
    n2n versions added are checked where present (helper-28: tracebacks in report)."""
    return {"reward": is_number(r.get("reward", 0.0)), "accuracy": is_number(r["accuracy"], 0, 1),
            "params": is_number(r["params"], 0, whole=True), "failure": r["failure"] is None or isinstance(r["failure"], str),
            # (helper-54: "", 0 or null skipped export's check of the weights as if never recorded)
            "weights_digest": "weights_digest" not in r or isinstance(r["weights_digest"], str)
            and re.fullmatch(r"[0-9a-f]{16}", r["weights_digest"]) is not None,
            "flops": r.get("flops") is None or is_number(r["flops"], 0, whole=True),
            **{k: r.get(k) is None or is_number(r[k], 0) for k in ("latency_ms", "teacher_latency_ms", "latency_ratio")}}


_EXPECTED = {"accuracy": "a fraction 0..1", "stage": f"one of {', '.join(RECORD_STAGES)}",
             "summary": "text without control characters", "flops": "a whole number >= 0", "params": "a whole number >= 0",
             **dict.fromkeys(("latency_ms", "teacher_latency_ms", "latency_ratio"), "a number >= 0 or null"),
             "weights_digest": "16 hex digits, as its trial wrote it"}


def _said(r: dict, checks: dict[str, bool]) -> str | None:
    """'has NAME VALUE (expected ...), ...' for the checks that failed, values cut short, or None."""
    def shown(v) -> str:  # as written, in its own key order (reprlib sorts a mapping's), cut short
        text = repr(v)
        return text if len(text) <= 120 else text[:117] + "..."

    bad = [name for name, ok in checks.items() if not ok]
    return "has " + ", ".join(f"{name} {shown(r[name])}" + (f" (expected {_EXPECTED[name]})" if name in _EXPECTED
                                                              else "") for name in bad) if bad else None


def _wrong_types(r: dict) -> str | None:
    """What in a record is not of the type, or in the range, n2n wrote ("has ..."), or None."""
    spec = r["spec"]
    return _said(r, {**_figures(r),
                     # (helper-57: any string was taken, and one that was no stage changed which student export
                     # picked; with terminal escapes in it, report and export printed them raw)
                     "stage": r["stage"] in RECORD_STAGES,
                     "spec": isinstance(spec.get("removed"), list) and isinstance(spec.get("ratios"), list)
                     and all(isinstance(u, int) for u in spec["removed"]) and all(is_number(x) for x in spec["ratios"]),
                     "summary": isinstance(r.get("summary", ""), str) and not CONTROL.search(r.get("summary", ""))})


def _me() -> str:
    """What a lock holder writes into RUN/.lock: names it in the messages of others."""
    return f"pid {os.getpid()} on {socket.gethostname()}"


def _holder(fd: int) -> tuple[str, str | None]:
    """Who holds a lock file, and the run folder it locked (None: written by an n2n before folders were)."""
    who, _, folder = os.read(fd, 4096).decode(errors="replace").partition("\n")
    return who.strip() or "unknown process", folder.strip() or None


# runs this process made or locked (resolved paths): only of those may an interruption say, and write in
# their n2n.log, that they stopped (helper-74: a Ctrl-C'd resume wrote so in a run another process held)
HELD_HERE: dict[str, tuple[int, int]] = {}  # resolved path -> (st_dev, st_ino) of the folder locked there
LOCKED_DIRS: set[tuple[int, int]] = set()  # (st_dev, st_ino) of the run folders this process holds now
_DELETED = f"a process of unknown pid, whose {LOCK} was deleted or replaced while it ran"  # known by its folder's lock alone


def _lock_dir(run_dir: Path, how: int, tries: int = 1) -> int | None:
    """flock the run folder itself (`how` | LOCK_NB), beside RUN/.lock: a .lock deleted under a running
    search (a user clearing a "stale" lock) let a second process lock a new file and train every
    candidate again (helper-82). Returns the fd, None where the file system has no such lock (NFS
    emulates flock with POSIX locks, which a folder opened to read cannot take) or the folder cannot
    be opened to read: .lock alone, as before. Raises BlockingIOError where another process holds it
    after `tries` (20 ms apart: lock_holder's shared look holds it for a moment, helper-84)."""
    try:
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        _flock(fd, how, tries)
        return fd
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError:
        os.close(fd)
        return None


def _flock(fd: int, how: int, tries: int) -> None:
    """flock(fd, how | LOCK_NB), tried `tries` times 20 ms apart; BlockingIOError where still held."""
    for left in range(tries - 1, -1, -1):
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if not left:
                raise
            time.sleep(0.02)


class RunLock:
    """An exclusive flock on RUN/.lock. The kernel drops it when the holder dies (even by kill -9),
    so a stale lock is simply taken over; the file names the holder for the error message, and the
    run folder it locked: a run copied with hard links (`cp -al`) shares .lock with the original
    (helper-46), and the copy's lock must be of its own, taken without ever letting go of the
    original's while its holder runs (helper-48: unlinked before the lock was tried, a second
    process on a busy run took a lock of its own)."""

    def __init__(self, run_dir: Path, doing: str | None = None):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None
        self.dir_fd: int | None = None
        self.doing = doing  # what holds it, where not the search: "n2n export", named to others

    def _open(self) -> int:
        try:  # never through a symlink: a hostile run folder's .lock must not truncate another file
            return open_plain(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunError(f"{self.path}: cannot take the run's lock ({e.strerror}); "
                           "it must be a plain file in a folder you can write") from None

    def _busy(self, holder: str) -> RunError:
        return RunError(f"{self.path.parent} is in use by another n2n process ({holder}); "
                        "wait for it to finish or stop it first")

    def acquire(self) -> RunLock:
        here = str(self.path.parent.resolve())
        for _ in range(3):
            fd = self._open()
            try:  # (waiting out lock_holder's shared look at it: helper-85)
                _flock(fd, fcntl.LOCK_EX, tries=50)
            except BlockingIOError:
                holder, folder = _holder(fd)
                linked = os.fstat(fd).st_nlink > 1
                os.close(fd)
                if not (linked and folder is not None and folder != here):
                    raise self._busy(holder) from None
                unshared(self.path)  # held by a hard-linked copy's process, not this run's: ours is another file
                continue
            if os.fstat(fd).st_nlink > 1:  # held by us: a file of our own, locked before letting go of this one
                unshared(self.path)
                own = self._open()
                try:
                    _flock(own, fcntl.LOCK_EX, tries=50)  # (a look at the fresh file meanwhile: helper-86)
                except BlockingIOError:
                    holder, _ = _holder(own)
                    os.close(own), os.close(fd)
                    raise self._busy(holder) from None
                os.close(fd)
                fd = own
            if _same_file(fd, self.path):
                break
            os.close(fd)  # another process gave the folder a new .lock meanwhile: take that one
        else:
            raise RunError(f"{self.path}: cannot take the run's lock: the file kept being replaced; try again")
        try:
            self.dir_fd = _lock_dir(self.path.parent, fcntl.LOCK_EX, tries=50)
        except BlockingIOError:  # held by a process whose .lock is no longer this one: written nothing in it
            os.close(fd)
            raise self._busy(_DELETED) from None
        if self.dir_fd is not None:
            LOCKED_DIRS.add(_inode(self.dir_fd))
        os.ftruncate(fd, 0)
        os.write(fd, f"{_me()}{f', {self.doing}' if self.doing else ''}\n{here}".encode())
        self.fd = fd
        _hold(here)
        try:
            # appended in place: made its own here, before the trials' workers append to trained.log at once
            # (append_to's own unshared would race between two of them, and one's line could be lost)
            for path in (self.path.parent / LOG, self.path.parent / RESULTS / AUDIT):
                unshared(path)
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        if self.dir_fd is not None:
            LOCKED_DIRS.discard(_inode(self.dir_fd))
            fcntl.flock(self.dir_fd, fcntl.LOCK_UN)  # now, not with the last fd of it (a forked child's)
            os.close(self.dir_fd)
            self.dir_fd = None
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self if self.fd is not None else self.acquire()

    def __exit__(self, *exc):
        self.release()


def _hold(run_dir) -> None:
    """Note the run folder this process locked at `run_dir` (resolved), and which folder it is."""
    st = os.stat(run_dir)
    HELD_HERE[str(run_dir)] = (st.st_dev, st.st_ino)


def moved(run_dir) -> bool:
    """Whether the run folder this process locked at `run_dir` is there no longer: moved, deleted or
    replaced while it ran. Its files are written by path: a search whose folder was renamed wrote on
    into whatever run was put at its old name (helper-89: another run's candidates.json, states and
    results replaced). False for a path this process holds no run at."""
    known = HELD_HERE.get(os.path.abspath(run_dir))
    if known is None:
        return False
    try:
        st = os.stat(run_dir)
    except OSError:
        return True
    return (st.st_dev, st.st_ino) != known


def moved_said(run_dir) -> str:
    return (f"{run_dir}: no longer the run folder this search started in (moved, deleted or replaced while it ran); "
            f"it stopped, writing nothing more there: `n2n resume` the run where it is now")


def _inode(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == _inode(fd)


def lock_holder(run_dir: Path) -> str | None:
    """Which other process holds the run's lock ("pid N on HOST"), or None: a look, not a take."""
    try:
        folder = _lock_dir(Path(run_dir), fcntl.LOCK_SH)
    except BlockingIOError:  # held: by this process, or by another whatever became of its .lock
        st = os.stat(run_dir)
        if (st.st_dev, st.st_ino) not in LOCKED_DIRS:
            return _file_holder(run_dir) or _DELETED
    else:
        if folder is not None:
            fcntl.flock(folder, fcntl.LOCK_UN)
            os.close(folder)
    return _file_holder(run_dir)


def _file_holder(run_dir: Path) -> str | None:
    """lock_holder by RUN/.lock alone."""
    try:
        fd = open_plain(Path(run_dir) / LOCK, os.O_RDONLY)
    except OSError:  # no lock file (or no plain one): no n2n process has opened this run
        return None
    try:
        try:  # shared: it conflicts only with a holder's exclusive lock
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder, folder = _holder(fd)
            if folder is not None and folder != str(Path(run_dir).resolve()):
                return None  # a hard-linked copy's holder: that run is busy, not this one
            return None if holder.split(", ")[0] == _me() else holder
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


EXPORTING = "n2n export"  # a lock holder that is no search: an export fine-tuning a student


def unfinished(run_dir: Path) -> str | None:
    """Why the run's search has not finished (its summary.json's stage), or None when it has."""
    summary = read_summary(run_dir) or {}
    stage, count = summary.get("stage"), summary.get("candidates_evaluated")
    if stage == "done":
        return None
    holder = lock_holder(run_dir)
    if holder and not holder.endswith(f", {EXPORTING}"):  # (helper-82: an export's fine-tune was called the search)
        return f"it is still running, in {holder}, in stage {stage} after {count} candidates"
    if stage is None:  # interrupted before its first summary, or damaged
        return "it has no readable summary.json"
    if stage == "failed":  # resume refuses it: the cause must be fixed and a new search started
        return f"it failed after {count} candidates: {summary.get('failure')}"
    return f"it stopped in stage {stage} after {count} candidates"


# ends a run's failure when some of its failed students are held so for their workers' deaths: resumable
HELD_FOR_DEATHS = "held failed for worker deaths, which `n2n resume` tries again"
HELD_FOR_UNSAVED = "held failed for results that could not be saved, which `n2n resume` tries again"


def finish_hint(stopped: str, run_dir: Path, command: str) -> str:
    """What to do about an unfinished search (`unfinished`'s reason), said by `command`."""
    if stopped.startswith("it is still running"):
        return f"{command} again when it has finished"
    if stopped.startswith("it failed") and HELD_FOR_DEATHS not in stopped and HELD_FOR_UNSAVED not in stopped:
        return "fix the cause and start a new search"
    return f"`n2n resume {shlex.quote(str(run_dir))}` finishes it"


def taken(run_dir: Path) -> RunError:
    """Why a new search cannot have `run_dir`: a run to resume, or something else (helper-41: a folder
    of the user's own was offered to `n2n resume`, which then said it is no run)."""
    if (run_dir / META).is_file():
        if holder := lock_holder(run_dir):  # (helper-53: resuming it was the advice, and failed so)
            return RunError(f"{run_dir} already exists and is in use by another n2n process ({holder}); choose "
                            f"another --name")
        # (helper-91: followed with a new --set target, the resume went on under the run's old one, unsaid)
        return RunError(f"{run_dir} already exists; resume it with `n2n resume {shlex.quote(str(run_dir))}` (under the "
                        f"config and target its n2n.json holds: this command's config and --set are not applied), or "
                        f"choose another --name")
    return RunError(f"{run_dir} already exists and is not an n2n run; choose another --name (or --runs-dir)")


def create_run(run_dir: Path, meta: dict, copies: dict[str, Path] | None = None) -> RunLock:
    """Create RUN with n2n.json, results/ and `copies` ({path in RUN: source file}) in one rename,
    locked: a kill at any moment leaves either no run folder or one that `n2n resume` continues."""
    run_dir = Path(run_dir)
    if run_dir.exists() or run_dir.is_symlink():
        raise taken(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_folder(run_dir)
    try:
        (tmp / RESULTS).mkdir()
        for rel, src in (copies or {}).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / rel)
        write_json(tmp / META, meta)
        lock = RunLock(tmp).acquire()
        try:
            os.rename(tmp, run_dir)  # fails if RUN appeared meanwhile: never merged into another folder
        except OSError:
            lock.release()
            raise RunError(f"{run_dir} already exists; choose another --name") from None
        lock.path = run_dir / LOCK
        # the holder's line named the temp folder: lock_holder took it for a hard-linked copy's lock, so a
        # running search was "stopped" to report and export, and `search --name` advised resuming it (helper-54)
        os.ftruncate(lock.fd, 0)
        os.pwrite(lock.fd, f"{_me()}\n{run_dir.resolve()}".encode(), 0)
        _hold(run_dir.resolve())
        return lock
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def save_state(run_dir: Path, state: dict) -> None:
    """Write the search state atomically; the previous one is kept as a fallback."""
    run_dir = Path(run_dir)
    buf = io.BytesIO()
    torch.save(state, buf)
    fd, tmp = private_temp(run_dir / STATE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())  # on disk before the renames (a power cut: this state or the one before)
        if (run_dir / STATE).exists():
            os.replace(run_dir / STATE, run_dir / PREV_STATE)
        os.replace(tmp, run_dir / STATE)
    finally:  # a full disk: no empty temp file left in the run (helper-36)
        if os.path.exists(tmp):
            os.remove(tmp)


def load_states(run_dir: Path, log=print):
    """(file name, state) of the readable search states, newest first (the saved one, then the one
    before it), read with weights_only: plain data and tensors, never code."""
    for name in (STATE, PREV_STATE):
        path = Path(run_dir) / name
        if not path.exists():
            continue
        try:
            state = torch.load(path, weights_only=True)
            if isinstance(state, dict) and "records" in state:
                yield name, state
                continue
            why = "not a search state"
        except Exception as e:  # truncated, empty or foreign file: fall back, never hang
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "Weights only load failed" in str(e):  # torch's advice to unpickle it is not n2n's (helper-46)
                why = "it holds objects other than plain data and tensors, which n2n never unpickles"
        log(f"{path.name} is damaged ({why}){fallback(run_dir, name)}")


def fallback(run_dir: Path, name: str) -> str:
    """What a resume turns to when the state in file `name` cannot be used (helper-71: "falling back"):
    "; trying" the state before it, or "" where none is left (the rebuild says so itself)."""
    if name == STATE and (Path(run_dir) / PREV_STATE).exists():
        return f"; trying {PREV_STATE}, the state saved before it"
    return ""
