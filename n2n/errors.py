"""Exceptions that mean "the user asked for something that cannot be done" (exit 2, no traceback),
and SIGTERM made an interruption like Ctrl-C."""

import contextlib
import signal
import threading

from agents.base import AgentOptionError
from search_spaces import SpecError, UnsupportedModel

from .data import DataError
from .models import ModelError


class ConfigError(ValueError):
    """A config file or option with a bad key or value; the message names it."""


class RunError(ValueError):
    """A run folder that is missing, incomplete, or already exists."""


class TargetMissed(RunError):
    """No candidate of a run meets its target, so export writes none unasked (exit 3, apart from the
    user's mistakes: a pipeline may loosen the target and search again); `key`: the one nearest by reward."""

    def __init__(self, message: str, key: str):
        super().__init__(message)
        self.key = key


# (AgentOptionError: a run's own copy of its policy damaged, met when a resume rebuilds its agents; helper-57)
USER_ERRORS = (ConfigError, RunError, DataError, ModelError, SpecError, UnsupportedModel, AgentOptionError,
               FileExistsError, FileNotFoundError, PermissionError)


@contextlib.contextmanager
def sigterm_as_sigint():
    """SIGTERM (`kill`, `timeout --foreground`, a batch scheduler) and SIGHUP stop a command as Ctrl-C
    does: a search's Tune stops cleanly, the run says how to resume it, and the local Ray's temp folder is removed
    (Ray's own handler printed a crash dump and left the folder); an export or a teacher removes
    its temp folder (Python's default for SIGTERM left it). Ctrl-C's handler is put back as it was
    too: a Tune fit leaves its own, which afterwards swallowed Ctrl-C in the process that searched.
    Main thread only, as Python's signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def as_sigint(signum, frame):
        # the SIGINT handler of the moment (Tune's during a fit), called directly: a job started in
        # the background ignores SIGINT, so a SIGINT sent to itself would vanish
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    # SIGHUP (the terminal closed) too: it killed a search outright, without its resume line, its Ray
    # folder left and Ray's agents orphaned for a minute (helper-36); one the parent ignores (nohup) stays so
    caught = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None))
              if s is not None and signal.getsignal(s) is not signal.SIG_IGN]
    interrupt = signal.getsignal(signal.SIGINT)
    previous = {s: signal.signal(s, as_sigint) for s in caught}
    try:
        yield
    finally:  # None: a handler installed outside Python, which cannot be put back
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        if interrupt is not None:
            signal.signal(signal.SIGINT, interrupt)
