"""Temp folders of n2n's own (a local Ray's, a tokenizer's sanitised copy) that a process killed
outright (kill -9, a lost session) cannot remove: each holds a marker naming the process that made
it, and the next n2n process to make one removes those whose maker is certainly gone."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

MARKER = "n2n-driver.json"  # in each such folder: the n2n process it belongs to


def this_process() -> dict:
    """What identifies this process beyond its pid: the host, the boot, the pid namespace (another
    container's pids are not ours to judge) and its start time (a pid is reused)."""
    def read(path: str) -> str | None:
        try:
            return os.readlink(path) if path.startswith("/proc/self/ns") else Path(path).read_text().strip()
        except OSError:
            return None

    return {"pid": os.getpid(), "host": socket.gethostname(), "boot": read("/proc/sys/kernel/random/boot_id"),
            "pidns": read("/proc/self/ns/pid"), "start": _start_time(os.getpid())}


def _start_time(pid: int) -> int | None:
    try:  # field 22 of /proc/PID/stat, counted after the command name's closing parenthesis
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def maker_gone(marker: dict) -> bool:
    """True only when the process that made a temp folder is certainly gone: on this host and in
    this pid namespace, and since rebooted, or its pid is free or now another process's."""
    me = this_process()
    same_boot = bool(me["boot"]) and marker.get("boot") == me["boot"]  # this very kernel, whatever its name now
    if marker.get("host") != me["host"] and not same_boot:  # (helper-82: a renamed host leaked them for good)
        return False  # a shared /tmp (another node): its processes cannot be seen from here
    if me["boot"] and marker.get("boot") and marker["boot"] != me["boot"]:
        return True  # every process of that boot is gone (a container restarted with /tmp kept too)
    if marker.get("pidns") != me["pidns"]:
        return False  # another container's processes: not visible from here
    try:
        os.kill(marker["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # the pid is another user's now: the folder's owner (this user) ran the maker
        return True
    start = _start_time(marker["pid"])
    return None not in (start, marker.get("start")) and start != marker["start"]


def marked_temp(prefix: str, root: str | None = None) -> str:
    """A new temp folder PREFIX... under `root` (the temp folder by default), marked as this process's.
    Raises OSError where it cannot be made or marked, leaving nothing."""
    temp = tempfile.mkdtemp(prefix=prefix, dir=root)
    try:
        Path(temp, MARKER).write_text(json.dumps(this_process()))
    except OSError:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return temp


def remove_stale_temps(root: str | None, prefix: str) -> None:
    """Remove the folders PREFIX* under `root` whose maker is gone: only folders n2n marked, owned by
    this user, never following a link."""
    for folder in Path(root or tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            st = folder.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                continue
            marker = json.loads((folder / MARKER).read_text())
            gone = (isinstance(marker, dict) and isinstance(marker.get("pid"), int) and 0 < marker["pid"] < 2**22
                    and maker_gone(marker))
        except (OSError, ValueError, OverflowError, RecursionError):  # not n2n's, or no marker written yet
            continue
        if gone:
            shutil.rmtree(folder, ignore_errors=True)
