"""Export the best student of a run as a deployable folder; optionally fine-tune it first."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import statistics
import tempfile

import torch
from dataclasses import replace
from pathlib import Path

from envs import Reference, drop_points, gap_said, latency_ratio, points_said, within_drop
from search_spaces import StudentSpec, count_params, probe

from . import pick
from .config import Config, run_config
from .data import found_at, padding_right, read_text, token_ids, unstandardise
from .deploy import check_onnx, fastest_ratio, require_onnx, time_as_shipped, to_onnx
from .errors import RunError, TargetMissed
from .models import (ModelError, RawInput, build_model, check_target, device_for, file_digest,
                     load_into, load_weights, save_model, weights_mismatch, write_json)
from .runfolder import EXPORTING, RunLock, finish_hint, read_records, read_run, read_summary, unfinished
from .search import (OpenRun, check_resume_storage, check_teacher, check_teacher_figures, storage_named,
                     teacher_logits)
from .storage import Fetcher, shown, weights_of
from .train import accuracy, distill
from .vocab import check_trimmable, trim_vocabulary


def _check_out(out: Path, run_dir: Path, teacher_folder: Path, overwrite: bool) -> None:
    """Refuse, before any work, an --out that would replace something other than an earlier export."""
    o = out.resolve()
    for what, p in (("the run folder", run_dir.resolve()), ("the run's teacher", teacher_folder.resolve())):
        if o == p or o in p.parents:
            raise FileExistsError(f"--out {out} is {what} or holds it ({p}); choose another --out")
    t = teacher_folder.resolve()
    if t in o.parents:  # a stray folder inside the teacher: it would no longer be one n2n can replace or check
        raise FileExistsError(f"--out {out} is inside the run's teacher folder {t}; choose another --out")
    check_target(out, overwrite, "export")  # (inside any run folder too: n2n.models.check_creatable)


def _teacher_tokenizer(folder: Path):
    """The tokenizer saved with a Hugging Face teacher, or None when it has none."""
    from . import data as data_mod

    if not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        return None
    return data_mod.tokenizer_for(folder)


def name_classes(config, arch: dict, labels, log=print) -> dict:
    """A Hugging Face student's class names: the data's (string labels, class i the i-th in sorted order)
    where its teacher had only transformers' placeholders LABEL_i (helper-51: hf/ kept them, and
    pipeline() answered LABEL_0 where the data says "food"): in `config` (the module's, which hf/ is saved
    from) and in the arch JSON that n2n.load_student builds from (helper-52); returns that arch."""
    names = getattr(config, "id2label", None) or {}
    if labels is None or len(names) != len(labels) or \
            any(str(names.get(i, names.get(str(i)))) != f"LABEL_{i}" for i in range(len(names))):
        return arch
    config.id2label = dict(enumerate(labels))
    config.label2id = {n: i for i, n in enumerate(labels)}
    log(f"class names from the data ({', '.join(labels)}) replace the teacher's placeholders LABEL_0.. in the "
        f"student's config")
    if not isinstance(arch.get("config"), dict):
        return arch
    return {**arch, "config": {**arch["config"], "id2label": {str(i): n for i, n in enumerate(labels)},
                               "label2id": dict(config.label2id)}}


EXPORT_README = "README-n2n.md"


def _target_lines(metrics: dict) -> list[str]:
    """The run's target and whether this student meets it, as metrics.json judged, and why it was the
    one exported (helper-75's leftover: a --key student past the target read like any other)."""
    t = metrics.get("target") or {}
    said = []
    if "max_accuracy_drop" in t:
        said.append(f"at most {pick.points(t['max_accuracy_drop'])} of accuracy below the teacher: this student is "
                    f"{gap_said(t['val_drop_points'])} on validation ({'within' if t['met_on_val'] else 'PAST'} it) "
                    f"and {gap_said(t['test_drop_points'])} on test ({'within' if t['met_on_test'] else 'PAST'} it)")
    limits = [f"{t[k]:,} {name}" if k != "max_latency_ms" else f"{t[k]:g} ms" for k, name in
              (("max_params", "parameters"), ("max_flops", "multiply-adds"), ("max_latency_ms", "")) if k in t]
    if limits:
        said.append(f"at most {', '.join(limits)}: this student is {'within' if t['limits_met'] else 'OUTSIDE'} them")
    why = [f"- Why this student: {metrics['chosen_because']}."]
    if metrics.get("search_finished") is False:  # (helper-87: said on the terminal and in metrics.json alone)
        why.append("- Exported before its search finished: the choice among the candidates trained by then; the "
                   "finished search may choose another.")
    return ([f"- The run's target: {'; '.join(said)}."] if said else []) + why


def export_readme(metrics: dict, arch: dict, extras: list[str], tokenizer: str | None, sample: tuple) -> str:
    """What a deployer handed the folder alone needs (helper-75: nothing in it said that model.onnx
    takes raw inputs with the standardisation inside, so a second one was easy to add): the figures,
    the inputs and outputs, and how to load each file. Written from the figures metrics.json holds;
    `tokenizer`: the folder the tokenizer went to, if any; `sample`: the shape of one input as measured."""
    from . import __version__

    teacher = metrics["teacher"]
    onnx = (metrics.get("onnx") or {}).get("input")
    dims = ", ".join(map(str, sample))  # as measured (helper-79: npz ids read "None tokens"; helper-80: "(N, L)")
    texts = metrics.get("split", {}).get("max_length")  # tokens per text, for text: data
    if arch.get("family") in ("hf-encoder", "hf-pretrained"):  # a transformer's token ids
        by = f"the tokenizer in `{tokenizer}/`" if tokenizer else "the teacher's tokenizer (its folder had none to ship)"
        inputs = f"int64 token ids of shape (N, {dims})" + (
            f" from {by}, texts cut and padded to {texts} tokens, as they were measured" if texts else "")
    elif "input" in arch:
        inputs = (f"float32 raw inputs of shape (N, {dims}), the values as the dataset holds them; the model "
                  f"standardises them itself (x * scale + shift, `arch.json` \"input\"): do not standardise them again")
    else:
        inputs = f"inputs of shape (N, {dims})"
    labels = (metrics.get("split") or {}).get("labels")
    kind, _, where = metrics["dataset"].partition(":")  # the file's name, not the exporting machine's path
    data = f"`{Path(where).name}` ({kind})" if where else f"`{kind}`"
    factory = arch.get("factory") or (arch.get("base") or {}).get("factory")  # a student of the user's module
    load = f'n2n.load_student("DIR", factories=["{factory}"])' if factory else 'n2n.load_student("DIR")'
    outputs = "logits of shape (N, classes); output i is class i" + (
        f" ({', '.join(f'{i}: {n}' for i, n in enumerate(labels))})" if labels else "")
    lines = [
        f"# Student {metrics['key']}, exported by n2n {__version__}",
        "",
        f"- {metrics['params']:,} parameters, {metrics['times_smaller']:.2f}x fewer than the teacher's "
        f"{teacher['params']:,}; {metrics['flops']:,} multiply-adds per sample.",
        f"- Accuracy on the teacher's split of {data}: validation "
        f"{metrics['val_accuracy']:.4f}, test {metrics['test_accuracy']:.4f} (teacher: {teacher['val_accuracy']:.4f} "
        f"and {teacher['test_accuracy']:.4f}), on raw inputs as below.",
        *_target_lines(metrics),
        f"- Inputs: {inputs}.",
        f"- Outputs: {outputs}.",
        "",
        "## Loading",
        "",
        f"- With n2n installed: `student = {load}`, an `nn.Module` in eval mode that takes the inputs above, "
        "its weights loaded strictly from `model.safetensors`" + (" (your package must be importable)." if factory else "."),
    ]
    if "model.onnx" in extras:
        lines.append(f"- Without n2n: `model.onnx`, input `{onnx['name']}` of shape ({', '.join(map(str, onnx['shape']))}) "
                     f"and type {onnx['dtype']}, output `logits`; e.g. `onnxruntime.InferenceSession(\"DIR/model.onnx\")"
                     f".run(None, {{\"{onnx['name']}\": x}})`. Checked against PyTorch on the validation inputs at export.")
    if "hf" in extras:  # its tokenizer only where the teacher had one to ship (helper-79)
        what, how = "a Hugging Face model", '`AutoModelForSequenceClassification.from_pretrained("DIR/hf")`'
        if tokenizer == "hf":
            what, how = f"{what} and its tokenizer", f'{how}, or `pipeline("text-classification", model="DIR/hf", truncation=True)`'
        at = f", measured at {texts} tokens per text" if texts else ""
        lines.append(f"- Without n2n: `hf/` is {what} ({how}){at}.")
    lines += ["", "`metrics.json` holds every figure above and how they were measured; `arch.json` the architecture; "
              "`spec.json` what was removed and narrowed in the teacher.", ""]
    return "\n".join(lines)


def export_best(run_dir: Path, out: Path, finetune_epochs: int = 0, overwrite: bool = False, log=print,
                factories=(), trim_vocab: bool = False, key: str | None = None, rank: int | None = None,
                onnx: bool = False, margin: float | None = None, fetch: str | None = None) -> dict:
    """Write model.safetensors + spec.json + arch.json + metrics.json for the run's best student.
    `fetch`: the run's storage URI, named by the user: first download the results it holds that
    RUN/results lacks (a driver killed before it fetched them); never without it: a run folder names its
    own storage, and one from someone else may name any endpoint.
    `margin`: points to spare on the accuracy target (n2n.pick.choose; None: the run's target.margin);
    `overwrite` replaces only an earlier export; `factories`: see `n2n.models.build_model`;
    `trim_vocab`: keep only the embeddings of tokens in the training texts (see n2n.vocab);
    `onnx`: also model.onnx, taking what `n2n.load_student` takes, checked with onnxruntime."""
    run_dir, out = Path(run_dir), Path(out)
    meta = read_run(run_dir)
    _check_out(out, run_dir, Path(meta["teacher_folder"]), overwrite)
    if finetune_epochs < 0:
        raise RunError(f"--finetune-epochs: expected >= 0, got {finetune_epochs}")
    if margin is not None:
        pick.check_margin(margin)  # before any lock or fetch
    if fetch is not None:  # the storage the user names, which must be the run's: never one the run names alone
        check_resume_storage(run_dir, meta, fetch, flag="--fetch", verb="export")
    if trim_vocab:  # checked before any fine-tuning, not after
        if not meta["dataset"].startswith("text:"):
            raise RunError(f"--trim-vocab: expected a run on a text: dataset (its texts are re-tokenised), "
                           f"got {meta['dataset']}")
        check_trimmable(_teacher_tokenizer(Path(meta["teacher_folder"])), meta["teacher_folder"])
    if onnx:
        require_onnx()
    check_teacher(meta)
    # fine-tuning takes minutes: hold the run, so no search or resume changes it meanwhile
    with RunLock(run_dir, EXPORTING) if finetune_epochs else contextlib.nullcontext():
        return _export(run_dir, out, meta, finetune_epochs, overwrite, log, factories, trim_vocab, key, rank, onnx, margin,
                       fetch)


def _retokenised(ds, tokenizer, texts: list[str]):
    """Validation and test texts (of the whole file, `texts`) tokenised again (by a trimmed tokenizer),
    labels as they were."""
    from dataclasses import replace as dc_replace

    ids = {part: torch.as_tensor(token_ids(tokenizer, [texts[i] for i in ds.index[part]], ds.split["max_length"]))
           for part in ("val", "test")}
    return dc_replace(ds, x_val=ids["val"], x_test=ids["test"])


def choose(records: list[dict], cfg: Config, teacher_accuracy: float, run_dir: Path,
           key: str | None = None, rank: int | None = None, margin: float | None = None,
           stored: bool = False) -> tuple[dict, str]:
    """`n2n.pick.choose`: the rule summary.json and the search's last line use too, so all name the
    same student. When no candidate meets the run's target, none is picked unasked (its nearest is
    said, with the --key that exports it). Its weights must be in RUN/results: when they are not
    (remote storage that could not be reached, a folder copied without results/), that is said, and
    no other student is written in its place."""
    chosen, why = pick.choose(records, cfg.target, cfg.reward_config(), teacher_accuracy, cfg.early_stop.enabled,
                              str(run_dir), key, rank, margin)
    if pick.meets_none(why):  # not the student asked for: written only when asked by name
        stopped = unfinished(run_dir)
        student = f"{chosen['key']} ({chosen['params']:,} params, {chosen['stage']}, val acc {chosen['accuracy']:.4f})"
        unfinished_said = f". The search has not finished ({stopped}): {finish_hint(stopped, run_dir, 'export')}" if stopped else ""
        raise TargetMissed(f"{run_dir}: {pick.none_meets_said(why, student, cfg.target.misses(chosen, teacher_accuracy))}; "
                           f"nothing was written. `--key {chosen['key']}` exports it all the same; `n2n report "
                           f"{shlex.quote(str(run_dir))}` lists every candidate{unfinished_said}", chosen["key"])
    if problem := weights_missing(chosen, why, cfg, run_dir, key, rank, margin, stored):
        raise RunError(problem)
    return chosen, why


def _asked(key: str | None, rank: int | None, margin: float | None) -> str:
    """The choice a command was given, as flags its hints repeat (helper-98: a hint dropped it)."""
    return (f" --key {shlex.quote(key)}" if key is not None else f" --rank {rank}" if rank is not None else
            f" --margin {margin:g}" if margin is not None else "")


def weights_missing(chosen: dict, why: str, cfg: Config, run_dir: Path, key: str | None = None,
                    rank: int | None = None, margin: float | None = None, stored: bool = False) -> str | None:
    """Why the chosen student's weights cannot be read from RUN/results, and what to do; None where they can.
    Said by export, which then writes nothing, and by report (helper-82: deleted weights of the pick went
    unmentioned until an export)."""
    weights = weights_of(run_dir, chosen["key"])
    if os.path.lexists(weights) and not weights.is_file():  # (helper-68: a FIFO was "not there")
        return (f"{weights}: expected the weights of the student to export ({why}), found "
                f"{found_at(weights)}; restore the file from a copy of the run")
    if weights.is_file():
        return None
    asked = _asked(key, rank, margin)  # (helper-44: the hint dropped --key)
    where = (f"there; they may be in the run's storage {shown(cfg.resources.storage)}: `n2n export {shlex.quote(str(run_dir))} --out "
             f"DIR{asked} --fetch {storage_named(cfg.resources.storage)}` downloads what results/ lacks from there" if stored
             else "there (deleted, or the run folder copied without results/?): restore the file from a copy of the run, "
                  "or `--key KEY` exports another")
    return f"{weights}: the weights of the student to export ({why}) are not {where}"


def accuracy_target(max_drop: float | None, teacher: dict, val: float, test: float,
                    margin: float | None = 0.0, short_of_margin: bool = False,
                    limits: bool = False, finetuned: str | None = None) -> tuple[dict | None, str | None]:
    """How the exported student stands against target.max_accuracy_drop on validation (where it was
    chosen) and on the held-out test split (where it was not), and a warning where it misses.
    `margin`: the points the pick asked to spare (None: picked by --key or --rank); `short_of_margin`:
    no candidate had them, so the pick fell back to the one with the most to spare; `finetuned`: which
    fine-tuned weights replaced the ones the pick measured."""
    if max_drop is None:  # limits alone, or none: the most accurate within them, however far below (helper-47: 24.5%)
        return None, pick.far_below_said(limits, (teacher["val_accuracy"] - val) * 100,
                                         (teacher["test_accuracy"] - test) * 100)
    drops = {"val_drop_points": drop_points((teacher["val_accuracy"] - val) * 100, max_drop),
             "test_drop_points": drop_points((teacher["test_accuracy"] - test) * 100, max_drop)}
    # judged unrounded, as the search and the pick judge it
    out = {"max_accuracy_drop": max_drop, "margin": margin, **drops,
           "met_on_val": within_drop(teacher["val_accuracy"], val, max_drop),
           "met_on_test": within_drop(teacher["test_accuracy"], test, max_drop)}
    if not out["met_on_val"]:  # chosen past the target: the pick had nothing better, or --key/--rank
        return out, (f"warning: on validation this student is {points_said(drops['val_drop_points'])} points below the teacher, "
                     f"past the target of {max_drop:g} (on test {gap_said(drops['test_drop_points'])}); `n2n report` lists "
                     f"the candidates, and `--key KEY` exports another")
    if out["met_on_test"]:
        return out, None
    past = (f"warning: on the test split this student is {points_said(drops['test_drop_points'])} points below the teacher, "
            f"past the target of {max_drop:g}, though it meets it on validation")
    if finetuned:  # the pick's figures no longer describe these weights (helper-96: the miss was blamed on them)
        past += (f", after fine-tuning ({finetuned}, kept as the best of its epochs on validation, which makes that "
                 "figure optimistic too)")
    if margin is None:  # named by --key or --rank: no pick, no margin (helper-77, helper-75: it spoke of both)
        return out, f"{past}; `n2n report` lists the candidates, and `--key KEY` exports another"
    if finetuned:
        return out, f"{past}; `n2n report` lists the candidates as searched"
    # The smallest student within the target on validation, picked among many noisy ones, tends to be
    # one whose validation figure is luckier than its true accuracy (the winner's curse).
    if margin and not short_of_margin:
        had = f"its margin of {pick.points(margin)} was not enough here; "  # ("1 points": helper-99)
    elif margin:  # as the pick judged it, on the search's figures
        had = f"none of the candidates it chose among had the margin of {pick.points(margin)}; "
    else:
        had = "a margin, target.margin or export --margin P, picks a finalist with points to spare; "
    return out, (f"{past}, where it was picked among many noisy figures ({had}choose a margin before reading test "
                 f"figures, as a choice made on them makes them optimistic)")


EXPORT_REPEATS = 100  # passes export times (at least): one export, so a steadier median than a trial's
EXPORT_TIMINGS = 3  # times export times them at most, while the load makes the median unsteady
UNSTEADY = 1.25  # a median past this many times the fastest pass: the machine's load, not the student


def _unsteadiness(timing: tuple[list[float], list[float]]) -> float:
    """How far the student's or the teacher's median sits above its fastest pass, whichever is further."""
    return max(statistics.median(ms) / max(min(ms), 1e-12) for ms in timing)


def export_latency(student, teacher, x, preprocess, best: dict, lat, log, trial_cpus: float = 1.0) -> dict:
    """The latency figures metrics.json states: the module as exported (n2n.load_student's, input
    preprocessing included) timed now as the trials timed it (`time_as_shipped` of `student` and the
    space's `teacher` on the validation inputs `x`), on the device the search timed it on, with at
    least EXPORT_REPEATS passes. A trial's figure was taken once, beside other trials on its worker: the same student measured 0.64 to 0.77 ms in five searches (helper-37). Where this
    machine lacks that device, the search's figures, and it says so. `latency.threads: 0` (the
    worker's threads) times on as many threads as a trial had CPUs."""
    search = {"latency_ms": best.get("latency_ms"), "teacher_latency_ms": best.get("teacher_latency_ms"),
              "device": best.get("device"), "node": best.get("node"),
              # trials recorded before latency_ratio timed the bare student, without input preprocessing
              "module": "as exported" if best.get("latency_ratio") else "bare (before n2n timed students as exported)"}
    try:
        device = device_for(best.get("device") or "cpu")
    except ModelError:  # e.g. timed on a GPU, exported on a machine without one
        log(f"latency: the search timed this student on {best.get('device')}, which this machine lacks; metrics.json "
            f"states the search's figures")
        return {"latency_ms": search["latency_ms"], "teacher_latency_ms": search["teacher_latency_ms"],
                "latency_ratio": latency_ratio(best),
                "latency_measured": {"when": "search", **search, **dataclasses.asdict(lat)}}
    repeats, warmup = max(lat.repeats, EXPORT_REPEATS), max(lat.warmup, 5)
    threads = lat.threads or max(1, int(trial_cpus))
    timings = []
    try:
        # a load that came and went inflates the median: 0.355 ms against 0.207 in three timings after,
        # past a 0.3 ms limit (helper-47). Timed again while a median, the student's or the teacher's
        # (helper-87: a teacher's inflated 3x stayed), sits far above its fastest pass, at most EXPORT_TIMINGS
        # times; the steadiest timing is kept (load only ever adds time), their number said
        while len(timings) < EXPORT_TIMINGS and (not timings or _unsteadiness(timings[-1]) > UNSTEADY):
            timings.append(time_as_shipped(student.to(device), teacher.to(device), x, preprocess,
                                           batch_size=lat.batch_size, threads=threads, warmup=warmup, repeats=repeats))
    finally:  # both back on the CPU, where the export saves the one and the space keeps the other
        student.cpu(), teacher.cpu()
    # one where both were steady; else the student's lowest median, which limits are judged on (helper-90: the
    # steadiest by the worse of the two kept a student inflated by the load that had spared the teacher)
    steady = [t for t in timings if _unsteadiness(t) <= UNSTEADY]
    student_ms, teacher_ms = min(steady or timings, key=lambda t: statistics.median(t[0]))
    return {"latency_ms": statistics.median(student_ms), "teacher_latency_ms": statistics.median(teacher_ms),
            "latency_ratio": fastest_ratio(student_ms, teacher_ms),
            "latency_measured": {
                "when": "export", "module": "as exported (n2n.load_student's, input preprocessing included)",
                "runtime": f"PyTorch {torch.__version__} eager", "device": str(device), "threads": threads,
                "batch_size": lat.batch_size, "warmup": warmup, "repeats": repeats, "timings": len(timings),
                "student_ms_fastest": min(student_ms), "student_ms_p90": statistics.quantiles(student_ms, n=10)[-1],
                # latency_ratio is the fastest passes' (helper-87: the teacher's was not there to check it by)
                "teacher_ms_fastest": min(teacher_ms), "teacher_ms_p90": statistics.quantiles(teacher_ms, n=10)[-1],
                "search": search}}


def size_limits(target, metrics: dict, asked_for: str | None = None) -> tuple[dict, str | None]:
    """The target's size and latency limits as metrics.json records them, whether the exported student
    is within them (its params and FLOPs as exported; its latency as export timed it), and a warning
    where it is not: a student exported by --key or --rank, or one the search timed within a latency
    limit that times past it as exported."""
    asked = {k: getattr(target, k) for k in ("max_params", "max_flops", "max_latency_ms") if getattr(target, k) is not None}
    if not asked:
        return {}, None
    over = target.misses(metrics)  # its size and latency limits (the accuracy is accuracy_target's)
    search = (metrics.get("latency_measured") or {}).get("search") or {}
    searched = search.get("latency_ms")
    bare = search.get("module", "").startswith("bare")  # (helper-39: the warning blamed the trials' load)
    timed_over = (target.max_latency_ms is not None and metrics["latency_ms"] is not None
                  and metrics["latency_ms"] > target.max_latency_ms and searched is not None
                  and searched <= target.max_latency_ms)
    why = (f"exported as asked by {asked_for}" if asked_for else
           f"the search timed it at {searched:.3g} ms, within the limit, "
           f"{'without its input preprocessing (as n2n timed students then)' if bare else 'beside its other trials'}; "
           f"timed as exported on this machine it is past it (`--key` exports another candidate)"
           if timed_over and len(over) == 1 else
           "by the search's figures it was within them")  # (export picks no other unasked, n2n.export.choose)
    warning = f"warning: this student is outside the target's limits ({'; '.join(over)}): {why}" if over else None
    return {**asked, "limits_met": not over}, warning


def _pick(run_dir: Path, meta: dict, cfg: Config, log, key, rank, margin, fetch: str | None) -> tuple[dict, str]:
    """The candidate to export and why (see `choose`), its weights fetched where asked and checked to be
    the file its trial wrote."""
    ref = meta["reference"]
    records, rescored = pick.from_figures(read_records(run_dir), Reference(ref["params"], ref["flops"], ref["accuracy"]),
                                          cfg.reward_config(), str(run_dir), "export ranks them by the rewards their "
                                          "figures give", strict=False)
    if rescored:
        log(rescored)
    fetcher = Fetcher(meta["results_store"], run_dir, log) if fetch is not None and meta.get("results_store") else None
    if fetcher:  # results a killed driver never fetched, or weights lost since: before choosing among them
        log(f"fetching results from {shown(meta['results_store'])}")
        fetcher.sync(r["key"] for r in records if r["failure"] is None)
    chosen, why = choose(records, cfg, meta["reference"]["accuracy"], run_dir, key, rank, margin,
                         bool(meta.get("results_store")) and fetch is None)  # fetched already: no --fetch to suggest
    refetched = fetcher.repair(chosen["key"], chosen.get("weights_digest")) if fetcher else False
    weights = weights_of(run_dir, chosen["key"])
    # the file the trial wrote (helper-53: weights with noise added measured within the 2 samples of slack
    # below and were shipped); candidates recorded before trials recorded digests are checked by the rest
    if chosen.get("weights_digest") and (found := file_digest(weights)) != chosen["weights_digest"]:
        again = (f"`n2n export {shlex.quote(str(run_dir))} --out DIR{_asked(key, rank, margin)} --fetch "
                 f"{storage_named(cfg.resources.storage)}` fetches it again from the run's storage"
                 if meta.get("results_store") and not refetched else
                 "the run's storage holds the same file; restore it from a copy of the run" if refetched else
                 "restore it from a copy of the run")
        raise RunError(f"{weights}: not the file the trial of {chosen['key']} wrote (its digest {found} "
                       f"differs from candidates.json's {chosen['weights_digest']}); {again}, or export another "
                       f"candidate (--key, --rank)")
    return chosen, why


def _say_pick(run_dir: Path, meta: dict, cfg: Config, best: dict, why: str, log, asked: bool) -> str | None:
    """Say which candidate is exported and why, and what may make it another than expected; returns
    why the search is unfinished (None when it finished). `asked`: --key, --rank or --margin given."""
    if note := pick.rules_note(meta):
        log(note)
    # the key too: what --key takes (helper-89: the spec's summary was passed to it)
    log(f"exporting {best['key']}: {best['summary']} ({best['params']:,} params{pick.size_said(cfg.target, cfg.reward_config(), best, meta['reference']['flops'])}, "
        f"{best['stage']}, val acc {best['accuracy']:.4f}): {why}")
    stopped = unfinished(run_dir)
    note = None if stopped or asked else pick.summary_note(read_summary(run_dir), best["key"])
    if note:
        log(note)
    if stopped:  # the pick is among what exists, not what the search would have found
        log(f"warning: this search has not finished ({stopped}), so this is the choice among the candidates so "
            f"far{'' if cfg.finalists.k == 0 or best['stage'] == 'finalists' else ', on brief-distillation figures'}"
            + f"; {finish_hint(stopped, run_dir, 'export')}")
    return stopped


def _candidate(run_dir: Path, best: dict, space, ds, factories) -> tuple[StudentSpec, torch.nn.Module, float]:
    """(spec, student with the trial's weights, its validation accuracy), checked against what
    candidates.json records of it: key, parameter count and accuracy."""
    weights = weights_of(run_dir, best["key"])
    spec = StudentSpec.from_dict(best["spec"])
    if space.current_key(best["key"], spec).split("@")[0] != space.key(spec):  # (a finalist's key ends @Nep)
        paired = any(k > 1 for k in getattr(space, "step", {}).values())  # a GLU's widths changed on 2026-12-07
        raise RunError(f"{run_dir}/candidates.json: {best['key']} records the spec of {space.key(spec)}; "
                       f"was candidates.json changed{', or the run made by an n2n that gave a GLU other widths' if paired else ''}?")
    student = build_model(space.arch(spec), factories)
    try:
        load_into(student, load_weights(weights))
    except RuntimeError as e:  # a spec edited by hand, or weights of another run
        raise RunError(f"{weights}: expected the weights of the student candidates.json describes as {best['key']} "
                       f"({best['summary']}), found others ({weights_mismatch(student, weights, e)}); was "
                       f"candidates.json or results/ changed?") from None
    if best["params"] != space.params(spec):
        raise RunError(f"{run_dir}/candidates.json: {best['key']} records {best['params']:,} params, its spec "
                       f"builds {space.params(spec):,}; was candidates.json changed?")
    # the pick rests on the recorded accuracy: the weights must still measure it (2 samples of slack: the
    # trial's device may sum in another order; TF32 is off in every accuracy, n2n.train.predict), else a
    # file was edited or swapped
    as_saved = accuracy(student, ds.x_val, ds.y_val)
    if abs(as_saved - best["val_accuracy"]) > 2 / len(ds.y_val) + 1e-9:
        raise RunError(f"{run_dir}/candidates.json: records {best['key']} at val acc {best['val_accuracy']:.4f}, its "
                       f"weights measure {as_saved:.4f} on the run's split; was candidates.json or results/ changed?")
    return spec, student, as_saved


def _finetune(student, run_dir: Path, meta: dict, cfg: Config, space, ds, teacher, epochs: int, as_saved: float,
              log) -> dict:
    """N2N's headline students were fine-tuned longer at the end: distillation + cross-entropy, in place.
    The weights kept are the epoch's, or the search's, that scores best on validation: a fine-tune that
    lowers it (helper-96: one epoch took a digits student from 0.9888 to 0.9851) ships nothing worse."""
    ft = replace(cfg.distill.for_space(space), epochs=epochs, ce_weight=max(cfg.distill.ce_weight, 1.0),
                 schedule="cosine")
    log(f"fine-tuning for {epochs} epoch{'s' * (epochs != 1)} (distillation + cross-entropy), keeping the epoch "
        "best on validation")
    t_logits = teacher_logits(run_dir, teacher, ds.x_train, log, keep=False,  # the run's own, if kept
                              digest=meta.get("teacher_logits_digest"))
    try:  # the run's device where this machine has it; else this machine's own (the search's
        device = device_for(cfg.resources.device)  # workers may have been other machines)
    except ModelError:
        device = device_for()
    by_epoch, best = [], {"epoch": 0, "val": as_saved, "state": None}  # epoch 0: the weights as searched

    def keep_best(epoch: int, val: float) -> None:
        by_epoch.append(val)
        if val > best["val"]:  # ties keep the earlier weights
            best.update(epoch=epoch + 1, val=val, state={k: v.detach().clone() for k, v in student.state_dict().items()})

    as_searched = {k: v.detach().clone() for k, v in student.state_dict().items()}
    res = distill(student, ds.x_train, ds.y_train, t_logits, ds.x_val, ds.y_val, ft, seed=cfg.seed, device=device,
                  on_epoch=keep_best)
    if res.failure is not None:  # weights past a NaN/inf loss are no student to ship: nothing is written
        raise RunError(f"--finetune-epochs {epochs}: the fine-tune failed ({res.failure}) with the run's "
                       f"distill.lr {ft.lr:g}; nothing was written (export without --finetune-epochs, or fewer epochs)")
    student.load_state_dict(best["state"] or as_searched)
    student.cpu().eval()
    return {"epochs": epochs, "kept_epoch": best["epoch"], "val_accuracy_by_epoch": by_epoch}


def _export(run_dir: Path, out: Path, meta: dict, finetune_epochs: int, overwrite: bool, log, factories,
            trim_vocab: bool = False, key: str | None = None, rank: int | None = None, onnx: bool = False,
            margin: float | None = None, fetch: str | None = None) -> dict:
    cfg = run_config(meta["config"])
    chosen, why = _pick(run_dir, meta, cfg, log, key, rank, margin, fetch)
    # before the exporting line: an edited module or a changed teacher is refused with nothing said as begun
    run = OpenRun.open(run_dir, factories)
    best = {**chosen, "val_accuracy": chosen["accuracy"]}
    stopped = _say_pick(run_dir, meta, cfg, best, why, log, asked=key is not None or rank is not None or margin is not None)
    teacher, space, ds = run.teacher, run.space, run.ds
    measured = check_teacher_figures(meta, teacher, ds, run_dir)  # what metrics.json states and judges by
    spec, student, as_saved = _candidate(run_dir, best, space, ds, factories)
    arch = space.arch(spec)
    deployed = RawInput(student, ds.preprocess).eval() if ds.preprocess else student  # what load_student returns
    if onnx and finetune_epochs:  # a student that cannot be traced fails now, not after minutes of fine-tuning
        with tempfile.TemporaryDirectory() as tmp:
            to_onnx(deployed, ds.x_val[:2], Path(tmp) / "model.onnx")
    finetune = _finetune(student, run_dir, meta, cfg, space, ds, teacher, finetune_epochs, as_saved, log) \
        if finetune_epochs else None
    tuned = as_saved  # the weights' validation accuracy as they will be saved, before any trim
    if finetune:
        said = ", ".join(f"{v:.4f}" for v in finetune["val_accuracy_by_epoch"])
        if finetune["kept_epoch"]:  # measured again where metrics.json's figures are: on CPU (the fine-tune's
            tuned = accuracy(student, ds.x_val, ds.y_val)  # device may sum in another order)
            log(f"fine-tuning took the student's validation accuracy from {as_saved:.4f} (as searched) to "
                f"{tuned:.4f} (epoch {finetune['kept_epoch']} of {finetune_epochs}, kept; by epoch: {said})")
        else:
            log(f"no epoch of fine-tuning beat the student as searched on validation ({as_saved:.4f}; by epoch: "
                f"{said}): the weights as searched are exported")
    assert count_params(student) == space.params(spec)  # the spec's prediction is exact
    tokenizer = _teacher_tokenizer(Path(meta["teacher_folder"])) if arch["family"] == "hf-encoder" else None
    if tokenizer is not None and "max_length" in ds.split:
        # the student was measured on texts cut to this many tokens: so is what `truncation=True` cuts
        # to outside n2n (pipeline), instead of the checkpoint's 512
        tokenizer.model_max_length = ds.split["max_length"]
        if "max_length" in tokenizer.init_kwargs:  # the teacher's own default length, saved beside: the same one
            tokenizer.init_kwargs["max_length"] = ds.split["max_length"]
    vocab = None
    if trim_vocab:
        if tokenizer is None:
            raise RunError("--trim-vocab: expected a transformer student whose teacher folder has a tokenizer")
        before = student.model.config.vocab_size
        texts = read_text(Path(ds.name[5:]))[0]
        trimmed = trim_vocabulary(student, tokenizer, [texts[i] for i in ds.index["train"]], ds.split["max_length"])
        tokenizer = trimmed.tokenizer
        arch = {**arch, "config": {**arch["config"], **trimmed.config}}
        ds = _retokenised(ds, tokenizer, texts)  # measured as deployed: the trimmed tokenizer on the raw texts
        vocab = {"kept": student.model.config.vocab_size, "of": before}
        log(f"vocabulary trimmed to the {vocab['kept']:,} tokens of the training texts (of {before:,})")
        if trimmed.differ:  # not expected of WordPiece: said, since the student was trained on the other split
            log(f"warning: the trimmed tokenizer splits {trimmed.differ} of {len(ds.index['train'])} training texts "
                f"otherwise than the teacher's; the figures below are measured with it")
    # measured on validation above (as searched, or after fine-tuning); again only on re-tokenised texts
    val = accuracy(student, ds.x_val, ds.y_val) if trim_vocab else tuned  # re-tokenised texts: measured again
    test = accuracy(student, ds.x_test, ds.y_test)
    params = count_params(student)
    metrics = {
        "params": params, "flops": space.flops(spec), "val_accuracy": val, "test_accuracy": test,
        "search_val_accuracy": best["val_accuracy"], "search_reward": best["reward"], "key": best["key"],
        "stage": best["stage"], "chosen_because": why, "search_finished": stopped is None,
        "latency_ms": None, "teacher_latency_ms": None, "latency_ratio": None, "latency_measured": None,
        "finetune_epochs": finetune_epochs, "finetune": finetune, "times_smaller": round(meta["reference"]["params"] / params, 2),
        "teacher": {"params": meta["reference"]["params"], "val_accuracy": measured["val"], "test_accuracy": measured["test"]},
        "dataset": meta["dataset"], "split": ds.split, "run": str(run_dir.resolve()), "summary": best["summary"],
    }
    if best.get("latency_ms"):  # the run timed its students: time the one shipped, as the trials did (with
        # the space's teacher: a torchvision ResNet's is converted, helper-39)
        metrics.update(export_latency(student, space.teacher, ds.x_val, ds.preprocess, best, cfg.latency, log,
                                      cfg.resources.cpus_per_trial))
        if metrics["latency_measured"]["when"] == "export":
            n = metrics["latency_measured"]["timings"]
            steadiest = f", the lowest of {n} timings as the machine's load varied" if n > 1 else ""
            log(f"latency as exported, timed now: {metrics['latency_ms']:.3f} ms median of "
                f"{metrics['latency_measured']['repeats']} passes{steadiest} ({1 / metrics['latency_ratio']:.1f}x faster "
                f"than the teacher beside it; the search timed it at {best['latency_ms']:.3f} ms, beside other trials)")
    target, warning = accuracy_target(cfg.target.max_accuracy_drop, metrics["teacher"], val, test,
                                      None if key is not None or rank is not None else pick.margin_of(cfg.target, margin),
                                      short_of_margin=pick.SHORT_OF_MARGIN in why, limits=cfg.target.has_limits(),
                                      finetuned=finetune and finetune["kept_epoch"]
                                      and f"epoch {finetune['kept_epoch']} of {finetune_epochs}")
    limits, outside = size_limits(cfg.target, metrics, f"--key {key}" if key is not None else
                                  f"--rank {rank}" if rank is not None else None)
    if target or limits:
        metrics["target"] = {**(target or {}), **limits}
    warning = "\n".join(w for w in (outside, warning) if w) or None
    if vocab:
        metrics["vocab"] = vocab
    if ds.preprocess:  # the export takes raw inputs (n2n.load_student): accuracies above hold on them
        arch = {**arch, "input": ds.preprocess}
    if arch["family"] == "pruned":  # rebuilt by the user's factory: a later edit of it must not pass unseen
        arch = {**arch, "probe": probe(student, arch["input_shape"])}
    if arch["family"] == "hf-encoder" and tokenizer is None:
        log("the teacher folder has no tokenizer: the student takes token ids only")
    elif tokenizer is not None:
        padding_right(tokenizer, log, "the student")
    arch = name_classes(getattr(getattr(student, "model", None), "config", None), arch, ds.labels, log)
    extras = []

    def save_hf(tmp: Path):
        extras.extend(space.export_extras(student, arch, tmp))  # e.g. hf/ for a stock-config transformer
        if tokenizer is not None:  # without it every token would be [UNK] to whoever loads the student
            tokenizer.save_pretrained(tmp / ("hf" if "hf" in extras else "tokenizer"))
        if onnx:  # on the raw inputs the deployed student takes, before the standardisation
            raw_val = unstandardise(ds.x_val, ds.preprocess) if ds.preprocess else ds.x_val
            to_onnx(deployed, raw_val[:2], tmp / "model.onnx")
            metrics["onnx"] = check_onnx(deployed, tmp / "model.onnx", raw_val, ds.y_val)
            extras.append("model.onnx")
            write_json(tmp / "metrics.json", metrics)
        shipped = None if tokenizer is None else "hf" if "hf" in extras else "tokenizer"
        (tmp / EXPORT_README).write_text(export_readme(metrics, arch, extras, shipped, tuple(ds.x_val.shape[1:])),
                                         encoding="utf-8")

    save_model(out, student, arch, metrics, extra={"spec.json": spec.to_dict()}, overwrite=overwrite, finish=save_hf,
               log=log)
    if onnx:
        log(f"also saved as ONNX: {out / 'model.onnx'} (onnxruntime agrees with PyTorch to "
            f"{metrics['onnx']['max_abs_diff']:.1e} on {len(ds.x_val):,} validation inputs)")
    if "hf" in extras:
        log(f"also saved as a Hugging Face model: {out / 'hf'} (AutoModelForSequenceClassification.from_pretrained)")
    log(f"exported {params:,} params ({metrics['times_smaller']:.2f}x smaller than the teacher"
        f"{pick.size_said(cfg.target, cfg.reward_config(), metrics, meta['reference']['flops'])}): "
        f"val acc {val:.4f}, test acc {test:.4f} (teacher test {measured['test']:.4f}) -> {out}")
    if warning:
        log(warning)
    return metrics
