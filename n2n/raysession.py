"""The Ray a search runs on: a cluster given by --address, or a local Ray n2n starts for the
command and removes after it, with a fresh authentication token (its servers listen on every
interface), started from an empty folder, and the temp folders of local Rays killed outright
removed by the next start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from .errors import ConfigError, RunError, sigterm_as_sigint
from .tempdirs import marked_temp, remove_stale_temps


def _connect_hint(error: str, address: str = "") -> str:
    """What to do about a failed connection, as far as the error and the environment tell (helper-44:
    the token advice was given whatever the cause, even to a user who had set the token)."""
    if "ray[client]" in error:  # a ray:// address: Ray Client, which n2n does not use
        return "; give the head node's GCS address HOST:PORT (`ray start --head` prints it), not ray://"
    token = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
    if token and os.environ.get("RAY_AUTH_MODE", "").lower() != "token" and address != "auto":
        # Ray sends a token to an explicit address only in token mode (helper-45)
        return "; RAY_AUTH_TOKEN is set but RAY_AUTH_MODE is not: set RAY_AUTH_MODE=token too"
    if token:
        return ("; RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) is set: is it the cluster's token? `ray get-auth-token` on "
                "its head node prints it")
    # helper-31: a cluster wanting a token this machine lacks said only "Failed to connect"
    where = "" if address == "auto" else "on its head node give --address auto, elsewhere "
    return ("; a cluster started with token authentication (the default of Ray 2.60's `ray start --head`) admits only "
            f"drivers with its token: {where}set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to what `ray get-auth-token` "
            "prints on the head node")


def check_address(address: str) -> None:
    """Fail fast on an address where no Ray head answers (Ray itself retries silently for minutes)."""
    if address == "local":  # Ray's own word for a new local Ray: n2n starts that one itself, without --address
        raise ConfigError("--address local: drop --address to run on this machine (n2n starts its own Ray); "
                          "--address takes auto or HOST:PORT of a running Ray head node")
    if address == "auto":
        return
    bare = address.split("://", 1)[-1]
    host, port = _host_port(bare)
    if ":" in host and not bare.startswith("["):
        raise ConfigError(f"--address: write an IPv6 address as [ADDR]:PORT, as Ray does; got {address!r}")
    if not host or not port.isdigit():
        raise ConfigError(f"--address: expected auto or HOST:PORT of a Ray head node, got {address!r}")
    try:
        conn = socket.create_connection((host, int(port)), timeout=10)
    except OSError as e:
        raise RunError(f"--address {address}: no Ray cluster answers there ({e}); start one with "
                       "`ray start --head` there, or drop --address to run on this machine") from None
    with conn:
        if os.environ.get("RAY_USE_TLS", "0").lower() not in ("0", "false", ""):
            return  # a TLS cluster answers a plain preface otherwise: left to Ray
        answer = _grpc_answer(conn)
    # helper-44: a web server at the address had Ray retrying for 10 minutes and more, two warnings at a time
    if answer is None:
        raise RunError(f"--address {address}: something accepts connections there but said nothing in "
                       f"{PROBE_SECONDS} s, where a Ray head node's gRPC server answers at once; `ray start --head` "
                       f"prints the address to give")
    if answer[:1] in (b"\x15", b"\x16"):  # a TLS alert or handshake: a cluster with TLS on
        raise RunError(f"--address {address}: the server there speaks TLS; a Ray cluster with TLS on needs RAY_USE_TLS=1 "
                       f"and its certificates (RAY_TLS_SERVER_CERT, RAY_TLS_SERVER_KEY, RAY_TLS_CA_CERT) here too")
    if not (len(answer) == 9 and answer[3] == HTTP2_SETTINGS):
        raise RunError(f"--address {address}: something answers there, but not a Ray head node (expected its gRPC "
                       f"server, got {answer!r}); `ray start --head` prints the address to give")
    # Ray Client's server (port 10001, for ray://) is gRPC too, and Ray retried its GCS there for good
    if _ray_client_answers(host, int(port), bare):
        raise RunError(f"--address {address}: that is Ray Client's port (for ray:// addresses), which n2n does not use; "
                       f"give the head node's GCS address HOST:PORT instead (6379 unless the head was started with "
                       f"another --port; `ray start --head` prints it)")


def _host_port(address: str) -> tuple[str, str]:
    """HOST:PORT -> (HOST, PORT), [::1]:6379 as Ray writes an IPv6 address -> ("::1", "6379") (helper-45:
    the brackets were looked up as part of the name); ("", "") without a colon."""
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host, port) if sep else ("", "")


HTTP2_SETTINGS = 4  # the frame type a gRPC (HTTP/2) server sends first
PROBE_SECONDS = 5


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """An HTTP/2 frame: 24-bit length, type, flags, 31-bit stream id, payload."""
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _ray_client_answers(host: str, port: int, authority: str) -> bool:
    """Whether the gRPC server at host:port answers Ray Client's PING (RayletDriver/ClusterInfo, type
    PING), as Ray Client's server does and a GCS does not (it has no such method: a reply of headers
    alone). One hand-written HTTP/2 call, so that no gRPC package is needed; False when unsure."""
    fields = [(":method", "POST"), (":scheme", "http"), (":path", "/ray.rpc.RayletDriver/ClusterInfo"),
              (":authority", authority), ("content-type", "application/grpc"), ("te", "trailers"),
              *_auth_metadata()]  # (helper-58: with token authentication on, a call without it is refused unread)
    headers = b"".join(b"\x00" + _hpack_string(k) + _hpack_string(v) for k, v in fields)  # literal, never indexed
    ping = b"\x08\x06"  # ClusterInfoRequest(type=PING), serialised
    deadline = time.monotonic() + PROBE_SECONDS
    try:
        with socket.create_connection((host, port), timeout=PROBE_SECONDS) as conn:
            conn.settimeout(PROBE_SECONDS)
            conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(HTTP2_SETTINGS, 0, 0)
                         + _frame(1, 0x4, 1, headers)  # HEADERS, END_HEADERS, stream 1
                         + _frame(0, 0x1, 1, b"\x00" + len(ping).to_bytes(4, "big") + ping))  # DATA, END_STREAM
            data = b""

            def more() -> bytes:  # (helper-59: a server sending a byte at a time kept it reading past its seconds)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout
                conn.settimeout(left)
                return conn.recv(4096)

            while True:
                while len(data) < 9:
                    chunk = more()
                    if not chunk:
                        return False
                    data += chunk
                length, kind, flags, stream = int.from_bytes(data[:3], "big"), data[3], data[4], \
                    int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
                while len(data) < 9 + length:
                    chunk = more()
                    if not chunk:
                        return False
                    data += chunk
                payload, data = data[9:9 + length], data[9 + length:]
                if kind == HTTP2_SETTINGS and not flags & 0x1:
                    conn.sendall(_frame(HTTP2_SETTINGS, 0x1, 0))  # its settings, acknowledged
                elif stream == 1 and kind == 0 and length > 5:  # a DATA frame holding a reply: the method exists
                    return True
                elif stream == 1 and kind == 1 and flags & 0x1:  # headers that end it: the call's status
                    # UNAUTHENTICATED: the method exists, behind token authentication (a GCS has none such,
                    # and answers UNIMPLEMENTED whatever the token; both seen on Ray 2.60)
                    return _grpc_status(payload) == 16
                elif stream == 1 and kind == 3:  # reset
                    return False
                elif kind == 7:  # GOAWAY
                    return False
    except OSError:  # (a timeout too)
        return False


def _grpc_status(block: bytes) -> int | None:
    """grpc-status of a header block, where it is written as gRPC's C core writes it: a literal name and
    a plain (not Huffman-coded) value; None otherwise."""
    at = block.find(b"\x0bgrpc-status")
    if at < 0 or at + 12 >= len(block) or block[at + 12] & 0x80:
        return None
    value = block[at + 13:at + 13 + block[at + 12]]
    return int(value) if value.isdigit() else None


def _hpack_string(text: str) -> bytes:
    """An HPACK string literal, not Huffman-coded: its length as a 7-bit-prefix integer, then its bytes."""
    raw, n = text.encode(), len(text.encode())
    if n < 127:
        return bytes([n]) + raw
    out, n = bytearray([127]), n - 127
    while n >= 128:
        out.append(n % 128 + 128)
        n //= 128
    return bytes(out) + bytes([n]) + raw


def _auth_metadata() -> list[tuple[str, str]]:
    """The authorization header Ray's clients send to an explicit address, in token mode only
    (RAY_AUTH_MODE=token; helper-59: sent otherwise, the token went to hosts Ray never sends it to),
    from the token Ray would find (RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names, ~/.ray/auth_token)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return []
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not token and path.is_file():
        try:
            token = path.read_text(errors="replace").strip()
        except OSError:
            pass
    return [("authorization", f"Bearer {token}")] if token and token.isprintable() and len(token) < 4096 else []


def _grpc_answer(conn) -> bytes | None:
    """The first 9 bytes a server sends back to an HTTP/2 client preface (a gRPC server, as Ray's GCS
    is, answers with a SETTINGS frame header), or None when it says nothing in PROBE_SECONDS."""
    conn.settimeout(PROBE_SECONDS)
    data = b""
    try:  # the client preface, then an empty SETTINGS frame: length 0, type 4, flags 0, stream 0
        conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, HTTP2_SETTINGS, 0, 0, 0, 0, 0]))
        while len(data) < 9:
            chunk = conn.recv(9 - len(data))
            if not chunk:
                break
            data += chunk
        return data or b"(closed)"
    except socket.timeout:
        return data or None  # (a short answer, such as a TLS alert, then silence)
    except OSError as e:  # a reset: not a gRPC server either
        return f"({e.strerror or e})".encode()


@contextlib.contextmanager
def ray_session(address: str | None, log=print):
    """Connect to `address`, or start a local Ray whose temp files live in a folder of their own
    and are removed when the search ends. A Ray the caller started is used as it is."""
    import ray

    if ray.is_initialized():
        with sigterm_as_sigint():
            yield
        return
    if address:
        check_address(address)
        log(f"connecting to Ray cluster at {address}")
        from ray.exceptions import AuthenticationError

        # authentication as Ray's own drivers decide it: a token where this machine holds one (RAY_AUTH_TOKEN,
        # ~/.ray/auth_token, which `ray start --head` writes), else none; RAY_AUTH_MODE, if set, decides
        saved = _ray_auth_env()
        _refresh_ray_config()
        try:
            try:
                with _neutral_cwd():
                    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError, AuthenticationError) as e:
                raise RunError(f"--address {address}: cannot connect to a Ray cluster ({str(e).splitlines()[0]})"
                               f"{_connect_hint(str(e), address)}") from None
            with sigterm_as_sigint():
                yield
        finally:
            ray.shutdown()
            _ray_auth_env(saved)  # the mode Ray chose is not left for a later local session to take as the user's
        return
    root = ray_temp_root(log)
    remove_stale_temps(root, "n2n-ray-")
    temp = _ray_temp(root)
    # Ray 2.60 has its servers listen on every interface, whatever node IP it is given: without a token
    # anyone reaching this machine could join as a driver and run code as the user. A fresh random token
    # per search, in the environment of Ray's processes only (no file), unless the user chose a mode.
    saved = _ray_auth_env()
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":  # as Ray's own banner suggests: said (helper-31)
        log("warning: RAY_AUTH_MODE=disabled: this search's Ray admits any process that reaches this machine (its "
            "servers listen on every interface) and runs its code; unset it for a fresh token per search")
    if "RAY_AUTH_MODE" not in os.environ:
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        _refresh_ray_config()
    logs = None
    try:
        # log_to_driver=False: workers' own output (prefixed lines, library banners) stays out of the
        # user's terminal; a trial's failure reaches the records with its reason (n2n.trial)
        with _neutral_cwd(temp), _hangup_ignored():
            try:
                ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, _temp_dir=temp,
                         log_to_driver=False)
            except Exception as e:  # Ray's own processes died or never came up (helper-89: a traceback)
                logs = temp  # kept for its logs; the next n2n command removes it (tempdirs)
                first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
                raise RunError(f"Ray could not start on this machine: {first}"
                               f"; {_startup_hint()}; Ray's logs are in {temp}/session_latest/logs") from e
        with sigterm_as_sigint():
            yield
    finally:
        ray.shutdown()
        if logs is None:
            shutil.rmtree(temp, ignore_errors=True)
        _ray_auth_env(saved)  # the user's own values, exactly as they were


def _startup_hint() -> str:
    """What may have kept a local Ray from starting, where this process can see it."""
    import resource

    size, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Ray's object store and logs are files: a small limit kills its processes (a site's large one is no cause:
    # helper-90)
    if size != resource.RLIM_INFINITY and size < 2**30:
        return f"files are limited to {size:,} bytes here (`ulimit -f`), likely too few for Ray's own: raise the limit"
    return "run the command again; if it fails again, its logs say why"


# Ray puts Unix sockets at ROOT/n2n-ray-XXXXXXXX/session_<date>_<time>_<micro>_<pid>/sockets/plasma_store,
# and a socket path holds at most 107 bytes (103 on macOS): ROOT gets what the rest leaves
SOCKET_PATH_MAX = 103 if sys.platform == "darwin" else 107
SOCKET_TAIL = len("/session_2026-12-06_04-36-56_123456_4194304/sockets/plasma_store")
TEMP_NAME = len("/n2n-ray-XXXXXXXX")


def ray_temp_root(log=print) -> str:
    """Where a local Ray's temp folder goes: RAY_TMPDIR (Ray's own setting) or the temp folder
    (TMPDIR); where that path is too long for Ray's socket paths (HPC schedulers set TMPDIR to deep
    job folders: helper-36 found every search failing on a 31-character one), /tmp, and it says so.
    On macOS, as Ray does, /tmp unless RAY_TMPDIR is set: its default temp folder (/var/folders/...,
    about 49 bytes) is always too long, and said so on every search (helper-39)."""
    system = "/tmp" if sys.platform == "darwin" else tempfile.gettempdir()
    root = os.path.abspath(os.environ.get("RAY_TMPDIR") or system)  # Ray wants it absolute
    room = SOCKET_PATH_MAX - SOCKET_TAIL - TEMP_NAME
    if len(os.fsencode(root)) <= room:
        return root
    what = "RAY_TMPDIR" if os.environ.get("RAY_TMPDIR") else "the temp folder (TMPDIR)"
    if os.path.isdir("/tmp") and os.access("/tmp", os.W_OK | os.X_OK):
        log(f"{what} {root} is too long for Ray's socket paths (at most {room} bytes, to leave room for the "
            f"{SOCKET_TAIL + TEMP_NAME} of n2n's and Ray's folders below it): this search's Ray keeps its temp "
            f"files under /tmp instead")
        return "/tmp"
    raise RunError(f"{what} {root}: expected a path of at most {room} bytes (Ray's socket paths hold at most "
                   f"{SOCKET_PATH_MAX}), and /tmp is not writable either; set RAY_TMPDIR to a short writable folder")


WATCH_SECONDS, WATCH_MISSES = 5, 3  # how often a search checks its cluster's head, and how many misses stop it


@contextlib.contextmanager
def cluster_watch(address: str | None, on_lost):
    """While a search runs on a cluster (`address`), check every WATCH_SECONDS that its head's GCS
    still accepts connections; after WATCH_MISSES misses in a row call `on_lost(gcs_address)`. When
    the whole cluster stopped, Ray itself waited 60 s and then ended the driver with its own message,
    without n2n's resume line (helper-44). Nothing for a local Ray (this process starts and stops it)."""
    if not address:
        yield
        return
    import ray

    gcs = ray.get_runtime_context().gcs_address
    host, port = _host_port(gcs)
    stop = threading.Event()

    def watch():
        missed = 0
        while not stop.wait(WATCH_SECONDS):
            try:
                socket.create_connection((host, int(port)), timeout=WATCH_SECONDS).close()
                missed = 0
            except OSError:
                missed += 1
                if missed >= WATCH_MISSES:
                    on_lost(gcs)
                    return

    threading.Thread(target=watch, daemon=True, name="n2n-cluster-watch").start()
    try:
        yield
    finally:
        stop.set()


RAY_TEMP_ROOM = 64 << 20  # bytes: a local Ray's sockets and logs take well under 1 MiB to start, more as trials log


def _ray_temp(root: str) -> str:
    """A local Ray's own folder under `root`, marked as this process's. A full temp folder is said
    before Ray starts: Ray itself gave only a startup timeout a minute later (helper-36)."""
    try:
        free = shutil.disk_usage(root).free
    except OSError as e:  # helper-42: a RAY_TMPDIR that does not exist was "[Errno 2] ...", naming no setting
        raise RunError(f"{root}: expected a folder for a local Ray's temp files (RAY_TMPDIR, else the temp folder), "
                       f"{e.strerror.lower()}; set RAY_TMPDIR to a writable folder") from None
    if free < RAY_TEMP_ROOM:
        raise RunError(f"{root}: expected at least {RAY_TEMP_ROOM >> 20} MiB free for a local Ray's temp files, found "
                       f"{free / 2**20:.1f} MiB; free some, or set RAY_TMPDIR to a folder with room")
    temp = None
    try:
        temp = marked_temp("n2n-ray-", root)
    except OSError as e:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
        raise RunError(f"{root}: cannot write a local Ray's temp files there ({e.strerror}); free some space, or set "
                       f"RAY_TMPDIR to a writable folder with room") from None
    return temp


@contextlib.contextmanager
def _hangup_ignored():
    """SIGHUP ignored while the local Ray starts, so its processes inherit that: a closed terminal
    sends SIGHUP to the whole process group, and Ray's gcs_server and raylet died of it at once, so
    the driver, which stops cleanly on it (n2n.errors.sigterm_as_sigint), waited 60 s for them and
    was ended by Ray without its resume line (helper-39). Ray stops its own processes with SIGTERM."""
    hup = getattr(signal, "SIGHUP", None)
    if hup is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(hup, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(hup, signal.SIG_DFL if before is None else before)


_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _ray_auth_env(saved: dict | None = None) -> dict:
    """Ray's authentication variables as they are now; given `saved`, put them back as they were
    (and make Ray read them again where they changed)."""
    now = {k: os.environ.get(k) for k in _AUTH_VARS}
    if saved is not None and saved != now:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _refresh_ray_config()
    return now


def _refresh_ray_config() -> None:
    """Ray reads RAY_AUTH_MODE into its config when imported, and caches the token it first loads:
    re-read both (as Ray's own tests do between sessions), or a second session in this process would
    offer the first one's token (helper-26)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")  # first: a draining gRPC thread must not reload a token the config disowns
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def _neutral_cwd(folder: str | None = None):
    """ray.init puts the driver's working directory at the front of every worker's sys.path, so a
    stray numpy.py or envs.py there ran in every trial, shadowing the installed packages. Ray is
    started from an empty folder instead; factories the user names (--allow-factory) are found
    through N2N_FACTORY_PATH, after the installed packages."""
    here = os.getcwd()
    with contextlib.ExitStack() as stack:
        os.chdir(folder or stack.enter_context(tempfile.TemporaryDirectory(prefix="n2n-cwd-")))
        try:
            yield
        finally:
            os.chdir(here)
