"""The Ray Tune searcher: a thin adapter from Tune's calls to `SearchDriver`.

The driver keeps its own state in the run folder (n2n.runfolder) after every step, so Tune's searcher
snapshots are not needed: `save_to_dir` writes nothing, and n2n never restores Tune's pickles. Tune
pickles the searcher into its experiment folder at start; the driver is dropped from that pickle.
"""

from __future__ import annotations

from ray.tune.search import Searcher

from .driver import FINISHED, SearchDriver
from .errors import RunError
from .runfolder import moved, moved_said


class N2NSearcher(Searcher):
    def __init__(self, driver: SearchDriver, fetch=None, metric: str = "reward", mode: str = "max"):
        # metric/mode here: set_search_properties is not called when param_space is empty.
        super().__init__(metric=metric, mode=mode)
        self.driver = driver
        self.fetch = fetch  # fetch(key): a trial's result from remote storage into the run folder (n2n.storage)
        # What the driver raised (a full disk under its state, a run folder made unwritable): Tune logs an
        # exception from a searcher's callback as a traceback and goes on (helper-82: tracebacks before
        # n2n's line, the search training on with nothing saved). Kept instead: no trial starts after it,
        # and n2n.search._fit raises it once Tune has stopped, said in one line.
        self.error: Exception | None = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["driver"] = state["fetch"] = None  # live in the run folder, never in Tune's pickles
        return state

    def suggest(self, trial_id: str):
        if self.error is not None:
            return Searcher.FINISHED
        try:
            out = self.driver.suggest(trial_id)
        except Exception as e:
            self.error = e
            return Searcher.FINISHED
        return Searcher.FINISHED if out == FINISHED else out

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        try:
            t = self.driver.trials.get(trial_id)
            if self.fetch and t and not error:  # the files before the record (a failed fetch: sync() retries)
                if moved(self.driver.run_dir):  # nothing into another run put at its name (helper-89)
                    raise RunError(moved_said(self.driver.run_dir))
                self.fetch(t["key"])
            self.driver.complete(trial_id, result, error)  # (the trials still running after an error: recorded
        except Exception as e:                             # as far as the machine lets them be)
            self.error = self.error or e

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default"):
        pass  # the driver saved its state to the run folder already

    def restore_from_dir(self, checkpoint_dir: str):
        raise RuntimeError("n2n resumes from its run folder, never from Tune's snapshots")
