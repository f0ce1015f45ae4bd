"""Leaderboard and plots of a run: reward per batch, and accuracy against size with the Pareto front."""

from __future__ import annotations

import errno
import io
import math
import statistics
import time
from pathlib import Path

from envs import Reference, RewardConfig, latency_ratio
from envs.reward import SIZE_KEYS

from .config import run_config
from .driver import counted
from .errors import RunError
from .export import weights_missing
from .models import write_bytes
from .pick import (by_reward, choose, far_below_said, from_figures, front, meets_none, none_meets_said, rules_note,
                   size_said, summary_note)
from .runfolder import finish_hint, read_records, read_run, read_summary, unfinished


def leaderboard(records: list[dict], teacher_size: float, top: int = 10, size: str = "params",
                within=None, flops: bool = False, reward_config: RewardConfig | None = None) -> str:
    """The best `top` candidates by reward; `size` is the record field the reward compressed
    ("params", "flops" or "latency_ms"). Latency, where measured, has a column of its own; a
    latency's "faster" is against the teacher timed beside that student. `within(record)`: whether
    it meets the target's size and latency limits, a column of its own (None: no limits). `flops`: a
    FLOPs column too (the target limits them, the reward compressed another size). `reward_config`:
    the run's, whose size breaks ties of reward as `n2n export --rank` does (default: `size`'s)."""
    # (a latency of a run that did not measure it has no row)
    scored = [r for r in records if r["failure"] is None and r.get(size) is not None]
    rows = by_reward(scored, reward_config or RewardConfig(compression="latency" if size == "latency_ms" else size))[:top]
    lat = size == "latency_ms"

    def older(r) -> str:  # timed by an n2n before the as-shipped timing: marked (helper-65: mixed in, unmarked)
        return "*" if r.get("latency_ms") and not r.get("latency_ratio") else ""

    marks = any(older(r) for r in rows)
    show = (lambda r: f"{r[size]:.3f}{(older(r) or ' ') if marks else ''}") if lat else (lambda r: f"{r[size]:,}")
    w = max([len(show(r)) for r in rows] + [len(size)])  # 8-digit counts keep their column
    extra = not lat and any(r.get("latency_ms") for r in rows)
    flops = flops and size != "flops"
    fw = max([len(f"{r.get('flops') or 0:,}") for r in rows] + [5])
    # (helper-51: 12 trained, 10 rows, and nothing said of the other 2)
    lines = [f"the best {len(rows)} of {len(scored)} by reward (every candidate: candidates.json)"] \
        if len(scored) > len(rows) else []
    lines += [f"{'#':>2} {'stage':9} {size:>{w}} {'faster' if lat else 'smaller':>9} {'val acc':>7} {'reward':>7}"
              f"{' ' + 'flops'.rjust(fw) if flops else ''}{' latency_ms' if extra else ''}{' limits' if within else ''}  spec"]
    for i, r in enumerate(rows, 1):
        times = 1 / latency_ratio(r) if lat else teacher_size / max(r[size], 1)
        ms = f" {r['latency_ms']:>9.3f}{older(r) or ' '}" if extra and r.get("latency_ms") else " " * 11 if extra else ""
        limits = f" {'within' if within(r) else 'past':>6}" if within else ""
        fl = f" {r['flops']:>{fw},}" if flops and r.get("flops") is not None else " " * (fw + 1) if flops else ""
        lines.append(f"{i:>2} {r['stage']:9} {show(r):>{w}} {times:>8.1f}x "
                     f"{r['accuracy']:>7.4f} {r['reward']:>7.3f}{fl}{ms}{limits}  {r.get('summary', '')}")
    if marks and (lat or extra):
        lines.append("* timed by an earlier n2n (the bare model on standardised inputs, medians): not exactly "
                     "comparable with the others, timed as they ship")
    return "\n".join(lines)


def axis_floor(records: list[dict], teacher_accuracy: float, drop: float | None, pick: dict | None, within) -> float:
    """Where the accuracy axis of the Pareto plot stops. With an accuracy target, a candidate near chance
    would squeeze the target's region into a few pixels: the axis stops 5 points below the target, but
    never above export's pick, a finalist, or the most accurate candidate within the size and latency
    limits (`within`; helper-62: a finalist and the one student within a FLOPs limit were left out)."""
    floor = -math.inf if drop is None else teacher_accuracy - (drop + 5) / 100
    shown = [pick] if pick is not None else []
    shown += [r for r in records if r["stage"] == "finalists"]
    shown += sorted((r for r in records if within and within(r)), key=lambda r: -r["accuracy"])[:1]
    return min([floor] + [r["accuracy"] - 0.005 for r in shown])


def batch_means(records: list[dict], batch: int) -> list[tuple[str, float]]:
    """Mean reward of consecutive groups of `batch` trained candidates, per stage, in order."""
    out = []
    for stage in dict.fromkeys(r["stage"] for r in records):
        rs = [r["reward"] for r in records if r["stage"] == stage]
        out += [(stage, sum(rs[i : i + batch]) / len(rs[i : i + batch])) for i in range(0, len(rs), batch)]
    return out


UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _save_png(fig, path: Path) -> str | None:
    """savefig into memory, then an atomic write: a symlink planted at `path` is replaced, never written
    through. Where the folder takes no file (a read-only or shared run, a full disk): why, and the
    report is still printed (helper-36: a traceback instead of the leaderboard)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    try:
        write_bytes(path, buf.getvalue())
    except OSError as e:
        if e.errno not in UNWRITABLE:
            raise
        return f"{path.name} ({e.strerror})"
    return None


def make_report(run_dir: Path, out_dir: Path | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    meta = read_run(run_dir)
    records = read_records(run_dir)
    out_dir = Path(out_dir or run_dir)
    ref = meta["reference"]
    cfg = run_config(meta["config"])  # as recorded, sections it lacks read as the run had them
    # every figure below comes from these two files (helper-32: a teacher 10x larger in n2n.json, a
    # candidate's accuracy raised, were printed as the run's): a compression that the candidate's size
    # and n2n.json's teacher do not give is refused; a reward its figures do not give is said (an
    # edited accuracy, or a run scored by an earlier reward: resume rescores those)
    records, rescored = from_figures(records, Reference(ref["params"], ref["flops"], ref["accuracy"]),
                                     cfg.reward_config(), str(run_dir), "the rewards below are from their figures")
    size = SIZE_KEYS[cfg.reward.compression]  # what the reward compressed
    if size == "latency_ms":  # the teacher was timed beside every student: the median of those
        timed = [r["teacher_latency_ms"] for r in records if r.get("teacher_latency_ms")]
        ref = {**ref, size: round(statistics.median(timed), 3) if timed else float("nan")}
    # groups as large as REINFORCE's batch, but not its batches: these are trained candidates in the
    # order they finished, while a policy batch also holds proposals the env refused (reward -1) and
    # specs evaluated before, and waits for the slowest of its trials
    reinforce = cfg.search.agent == "reinforce"
    batch = int(cfg.search.agent_options.get("batch_size", 10)) if reinforce else 10
    # (helper-50: "group of 10" was said of a stage's last, smaller group and of 3 finalists too)
    what = f"group of up to {batch} trained candidates of a stage, in the order they finished"
    within = cfg.target.within_limits if cfg.target.has_limits() else None  # its size and latency limits
    # (helper-88: a student 5.3 ms against this 3.5 ms teacher read "1.3x faster", against the teacher beside it)
    beside = (" (the median of its timings beside the students; each student's \"faster\" is against the teacher "
              "timed beside it)" if size == "latency_ms" else "")
    text = [f"run {run_dir.name}: {counted(records)}; teacher {ref[size]:,} {size}{beside}, val acc {ref['accuracy']:.4f}",
            *([rescored] if rescored else []),
            leaderboard(records, ref[size], size=size, within=within, flops=cfg.target.max_flops is not None,
                        reward_config=cfg.reward_config())]
    if note := rules_note(meta):
        text.append(note)
    try:  # the leaderboard ranks by reward; the export picks by the target (n2n.pick), often another
        pick, why = choose(records, cfg.target, cfg.reward_config(), ref["accuracy"], cfg.early_stop.enabled, str(run_dir))
        said = (f"{pick['key']} ({pick['params']:,} params{size_said(cfg.target, cfg.reward_config(), pick, ref['flops'])}, "
                f"{pick['stage']}, val acc {pick['accuracy']:.4f}")
        text.append(f"`n2n export` picks {said}): {why}" if not meets_none(why) else
                    f"{none_meets_said(why, said + ')', cfg.target.misses(pick, ref['accuracy']))}, which "
                    f"`--key {pick['key']}` exports")
        if cfg.target.max_accuracy_drop is None and not meets_none(why) and (  # as the search's last lines
                far := far_below_said(cfg.target.has_limits(), (ref["accuracy"] - pick["accuracy"]) * 100)):
            text.append(far)
        if not unfinished(run_dir) and (note := summary_note(read_summary(run_dir), pick["key"])):
            text.append(note)  # (helper-65: only export said so)
        if not meets_none(why) and (missing := weights_missing(pick, why, cfg, run_dir, stored=bool(meta.get("results_store")))):
            text.append(f"warning: {missing}")
    except RunError as e:
        pick = None
        text.append(f"`n2n export` has nothing to pick: {e}")
    # (helper-97: an n2n.json and candidates.json edited alike read as the run's own figures)
    text.append("these figures are the run's as recorded (n2n.json, candidates.json), not measured again; "
                "`n2n export` measures the teacher and the student it writes")
    stopped = unfinished(run_dir)
    if stopped:  # every figure above is of the candidates so far
        text.append(f"this search has not finished ({stopped}): these are the candidates so far; "
                    f"{finish_hint(stopped, run_dir, 'report')}")

    from matplotlib.ticker import MaxNLocator

    # a plot saved mid-search outlives the search (helper-27: a 2-candidate plot after it finished):
    # it says on the image that it shows the candidates so far, and when
    partial = (f"\nunfinished search: the {len(records)} candidates as of {time.strftime('%Y-%m-%d %H:%M')}"
               if stopped else "")

    curve = batch_means(records, batch)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for stage in dict.fromkeys(s for s, _ in curve):
        xs = [i for i, (s, _) in enumerate(curve) if s == stage]
        ax.plot(xs, [curve[i][1] for i in xs], marker="o", label=stage)
    ax.set(xlabel=what, ylabel="mean reward of the group", title="Reward over the search" + partial)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if curve:  # (helper-63: matplotlib warned of a legend with nothing in it, before the first result)
        ax.legend()
    fig.tight_layout()
    unsaved = [_save_png(fig, out_dir / "reward_curve.png")]
    plt.close(fig)

    ok = [r for r in records if r["failure"] is None and r.get(size) is not None]
    # latency is ranked by its ratio to the teacher timed beside it (envs.size_of), so it is drawn so too
    def x_of(r):
        return latency_ratio(r) if size == "latency_ms" else r[size]

    drop = cfg.target.max_accuracy_drop
    floor = axis_floor(ok, ref["accuracy"], drop, pick, within)
    below = sum(r["accuracy"] < floor for r in ok)
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, stage in enumerate(dict.fromkeys(r["stage"] for r in ok)):
        rs = [r for r in ok if r["stage"] == stage and r["accuracy"] >= floor]
        finals = stage == "finalists"  # distilled longer: their own marker
        label = f"finalists ({cfg.finalists.epochs} epochs)" if finals else stage
        style = {"s": 40 if finals else 14, "alpha": 0.9 if finals else 0.7, "marker": "D" if finals else "o"}
        # a stage's candidates past the size or latency limits hollow: a limit off this axis shows no line
        for group, past in (([r for r in rs if not within or within(r)], False), ([r for r in rs if within and not within(r)], True)):
            if group:  # every point of the stage below the axis: no legend entry for nothing drawn (helper-28)
                ax.scatter([x_of(r) for r in group], [r["accuracy"] for r in group], **style,
                           **({"facecolors": "none", "edgecolors": f"C{i}", "label": f"{label}, past the limits"}
                              if past else {"color": f"C{i}", "label": label}))
    if drop is not None:
        ax.axhline(ref["accuracy"] - drop / 100, color="tab:red", ls="--", lw=1, label=f"target: -{drop} points")
    limit = {"params": cfg.target.max_params, "flops": cfg.target.max_flops, "latency_ms": None}[size]
    if limit is not None:  # the size limit on this axis (a latency limit is in ms, this axis a ratio); whole
        # (helper-77: `:,g` wrote 1,234,567 as 1.23457e+06)
        ax.axvline(limit, color="tab:red", ls=":", lw=1, label=f"target: at most {limit:,}")
    pareto = front([r for r in ok if r["stage"] != "finalists"], x_of)
    if pareto:
        ax.step([x_of(r) for r in pareto], [r["accuracy"] for r in pareto], where="post", color="k", lw=1, label="Pareto front")
    if pick is not None and pick.get(size) is not None:
        ax.scatter([x_of(pick)], [pick["accuracy"]], s=160, facecolors="none", edgecolors="k", lw=1.5,
                   # (helper-88: "nearest the target" named the best by reward, another than the nearest)
                   label="n2n export's pick" if not meets_none(why) else f"none meets the target: {why.split('; ', 1)[1]}")
    ax.scatter([1.0 if size == "latency_ms" else ref[size]], [ref["accuracy"]], marker="*", s=120, color="red", label="teacher")
    ax.set(xscale="log", xlabel={"params": "parameters", "flops": "FLOPs (multiply-accumulates)",
                                 "latency_ms": "latency relative to the teacher timed beside it"
                                 + (" (fastest passes)" if all(r.get("latency_ratio") for r in ok) else "")}[size],
           ylabel="validation accuracy", title="Accuracy against size" + partial)
    if below:
        ax.set_ylim(bottom=floor)
        ax.text(0.01, 0.01, f"{below} candidate{'s' * (below > 1)} below {floor:.4f} not shown", transform=ax.transAxes,
                fontsize=8)
    ax.set_ylim(top=min(ax.get_ylim()[1], 1.005))  # no accuracy past 100% on the axis (helper-28)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # beside the plot: it hid points inside
    fig.tight_layout()
    unsaved = [u for u in (*unsaved, _save_png(fig, out_dir / "pareto.png")) if u]
    plt.close(fig)
    if unsaved:
        text.append(f"warning: the plots could not be saved in {out_dir}: {', '.join(unsaved)}")
    else:
        text.append(f"plots: {out_dir / 'reward_curve.png'}, {out_dir / 'pareto.png'}"
                    + (f" (its axis leaves out {below} candidate{'s' * (below > 1)} below val acc {floor:.4f})" if below else ""))
    return "\n".join(text)
