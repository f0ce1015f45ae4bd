"""`n2n policy fit`: N2N's policies fit to finished searches (agents.pretrain), written as a folder
that `search.agent_options: {policy: DIR}` starts a REINFORCE search from."""

from __future__ import annotations

import json
from dataclasses import asdict
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError

from agents.pretrain import episodes, fit
from envs import STAGES, Reference
from agents import ReinforceConfig
from agents.reinforce import write_policy
from search_spaces import SpecError, StudentSpec, UnsupportedModel

from .errors import ConfigError
from .models import check_creatable, commit_folder, occupied, plain_file, storage_error, temp_folder
from .pick import from_figures
from .runfolder import read_records, unfinished
from .search import OpenRun

HIDDEN = ReinforceConfig.hidden  # the policies fit here start searches with the agent's default size


def _run_id(run_dir: Path) -> str | None:
    """n2n.json's run id (a copy of a run folder keeps it), or None (a run made before it existed)."""
    if not plain_file(run_dir / "n2n.json"):  # (read_run names the problem; a FIFO here blocked for good)
        return None
    try:
        return json.loads((run_dir / "n2n.json").read_text()).get("run_id")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None


def _check_specs(run_dir: Path, space, records: list[dict]) -> None:
    """Every evaluated spec must name units and ratios of this run's teacher: an edited spec (removed
    [999, -3]) was learnt as "keep everything", and a malformed one ended in a traceback (helper-28)."""
    for r in records:
        if r["failure"] is not None or r["reward"] <= -1:  # left out of the fit (agents.pretrain.episodes)
            continue
        try:
            # the structure only: these trained once, and a family's own check may build the student
            why = space.check_structure(StudentSpec.from_dict(r["spec"]))
        except (SpecError, TypeError, ValueError) as e:
            why = str(e)
        if why:
            raise ConfigError(f"{run_dir}/candidates.json: candidate {r['key']} holds a spec that does not fit "
                              f"its teacher ({why}); was candidates.json changed?")


def fit_policies(runs: list[Path], out: Path, steps: int = 300, seed: int = 0, factories=(), log=print) -> Path:
    """Fit the removal and shrink policies to the candidates of `runs`; write OUT/removal, OUT/shrink."""
    out = Path(out)
    if occupied(out):  # never over anything (a dangling link too), but an empty folder made for it
        raise FileExistsError(f"{out} already exists; choose another --out")
    check_creatable(out)
    seen: dict = {}
    for run_dir in runs:  # one search given twice (through a link, or copied) would count twice
        where = Path(run_dir).resolve()
        same = [w for w in (where, _run_id(where)) if w is not None and w in seen]
        if same:
            raise ConfigError(f"{seen[same[0]]} and {run_dir} are the same run{' (copied)' if same[0] != where else ''}; "
                              f"give each run once")
        seen.update({w: run_dir for w in (where, _run_id(where)) if w is not None})
    groups: dict[str, list] = {"removal": [], "shrink": []}
    fitted = []  # the runs that gave the fit candidates
    ratios, spaces, kinds, asked = None, [], set(), {}
    for run_dir in runs:
        try:
            run = OpenRun.open(run_dir, factories)
        except UnsupportedModel as e:  # of several runs, which (helper-63: "this model folder names the factory")
            raise ConfigError(f"{run_dir}: {e}") from None
        space = run.space
        # what the run's rewards asked for: runs that asked for different students teach a mix (helper-41)
        rewarded = asdict(run.cfg.reward_config())  # the reward itself, not the keys that made it (helper-45)
        if rewarded["kind"] == "n2n":  # N2N's reward reads no target
            rewarded = {k: v for k, v in rewarded.items() if not k.startswith("target_")}
        asked.setdefault(json.dumps(rewarded, sort_keys=True), []).append(str(run_dir))
        if ratios is not None and list(space.ratios) != ratios:
            raise ConfigError(f"{run_dir}: search.ratios {list(space.ratios)}, expected the same as the other runs' {ratios}")
        ratios = list(space.ratios)
        spaces.append(repr(space))
        kinds |= {u.kind for u in space.units}
        stopped = unfinished(run_dir)
        if stopped:  # (helper-46: said by export and report, not here)
            log(f"warning: {run_dir} has not finished ({stopped}): fitting to its candidates so far")
        ref = run.meta["reference"]
        recs, rescored = from_figures(read_records(run_dir), Reference(ref["params"], ref["flops"], ref["accuracy"]),
                                      run.cfg.reward_config(), str(run_dir), "the policy is fit to the rewards their "
                                      "figures give")
        if rescored:
            log(rescored)
        _check_specs(run_dir, space, recs)
        used = 0
        for stage in ("removal", "shrink", "refine"):
            # a refine stage's rewards sit in the shrink best's neighbourhood, above its shrink stage's:
            # normalised together, the refine episodes would take most of the weight
            eps = episodes(space, recs, stage)
            if eps:
                groups[STAGES[stage]].append(eps)
                used += len(eps)
        # failed students and those scored -1 (past reward.max_params or min_accuracy) are left out: they
        # teach the walls, which a new teacher's own masks and reward enforce (helper-63: left out unsaid)
        walled = sum(r["failure"] is None and r["reward"] <= -1 and r["stage"] in STAGES for r in recs)
        if walled:
            log(f"{run_dir}: {walled} candidates scored -1 (outside the reward's walls or no smaller than the "
                f"teacher); left out of the fit")
        if not used:  # (helper-63: a run Ctrl-C'd before its first result was listed as fit to)
            log(f"warning: {run_dir} gives the fit nothing: of its {len(recs)} candidates, none of the removal, "
                f"shrink or refine stages was evaluated with a reward above -1")
        else:
            fitted.append(run_dir)
    if not any(groups.values()):
        raise ConfigError(f"no evaluated removal or shrink candidates in {', '.join(map(str, runs))}")
    if len(asked) > 1:
        kinds_said = "; ".join(f"{', '.join(where)}: {_asked(json.loads(a))}" for a, where in asked.items())
        log(f"warning: these runs reward students for different things ({kinds_said}); a policy fit to them learns a "
            f"mix of those. Fit one policy per target")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_folder(out)
    try:
        for stage, g in groups.items():
            if not g:
                log(f"{stage}: no candidates in these runs; no {stage} policy written")
                continue
            n = sum(len(e) for e in g)
            log(f"{stage}: fitting to {n} candidates of {len(g)} search stages, rewards normalised per stage ({steps} steps)")
            meta = {"runs": [Path(r).name for r in fitted], "teachers": sorted(set(spaces)),
                    "unit_kinds": sorted(kinds), "episodes": n, "steps": steps}
            policy = fit(stage, g, len(ratios), hidden=HIDDEN, steps=steps, seed=seed)
            if not all(torch.isfinite(t).all() for t in policy.state_dict().values()):
                raise ConfigError(f"{stage}: the fit diverged (weights not finite); check these runs' rewards")
            try:
                write_policy(policy, stage, ratios, tmp / stage, {"hidden": HIDDEN}, meta)
            except SafetensorError as e:  # (helper-82: a full disk was a traceback)
                raise storage_error(e, out) or e from None
        if occupied(out):
            raise FileExistsError(f"{out} appeared while fitting; choose another --out")
        commit_folder(tmp, out, kind="policy")  # onto an empty folder only: refused if files appear in it now
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    only = [stage for stage, g in groups.items() if g]
    # (helper-63: a removal-only fit advised a search of both stages, which it refused)
    stages = "" if len(only) == 2 else f" --set 'search.stages=[{only[0]}]'"
    log(f"wrote {out}; start a search from it with --set 'search.agent_options={{policy: {out}}}'{stages}")
    return out


def _asked(rewarded: dict) -> str:
    """A run's reward (envs.RewardConfig as a dict) in a few words, for the warning above."""
    said = [f"{k} {v:g}" for k, v in sorted(rewarded.items()) if v is not None and k not in ("kind", "compression")]
    return f"reward {rewarded['kind']} on {rewarded['compression']}" + (f" ({', '.join(said)})" if said else "")
