"""The Ray Tune searcher: a thin adapter from Tune's calls to `SearchDriver`.

Tune pickles the searcher object into its experiment folder when the run starts, so the searcher
holds only the run folder; the driver (teacher, agents, cache) is rebuilt from the run folder on
first use, and its state travels through `save`/`restore` as plain data + tensors
(`torch.load(weights_only=True)`), never as a pickle of our objects.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from ray.tune.search import Searcher

from .driver import FINISHED


class N2NSearcher(Searcher):
    def __init__(self, run_dir: str | Path, metric: str = "reward", mode: str = "max"):
        # metric/mode here: set_search_properties is not called when param_space is empty.
        super().__init__(metric=metric, mode=mode)
        self.run_dir = str(run_dir)
        self._driver = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_driver"] = None  # rebuilt from the run folder; never pickled
        return state

    @property
    def driver(self):
        if self._driver is None:
            from .search import build_driver

            run_dir = os.environ.get("N2N_RUN_DIR") or self.run_dir  # `n2n resume` of a moved folder
            self._driver = build_driver(Path(run_dir))
        return self._driver

    def suggest(self, trial_id: str):
        out = self.driver.suggest(trial_id)
        return Searcher.FINISHED if out == FINISHED else out

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        self.driver.complete(trial_id, result, error)

    def save(self, checkpoint_path: str):
        buf = io.BytesIO()
        torch.save(self.driver.state_dict(), buf)
        tmp = checkpoint_path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, checkpoint_path)

    def restore(self, checkpoint_path: str):
        self.driver.load_state_dict(torch.load(checkpoint_path, weights_only=True))
