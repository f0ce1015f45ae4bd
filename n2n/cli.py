"""The `n2n` command line. User mistakes exit with status 2 and a one-line message, no traceback."""

from __future__ import annotations

import argparse
import errno
import math
import os
import re
import shlex
import sys
import traceback
from pathlib import Path

from . import MANY, SEED_LIMIT, __version__


def _teacher_train(args) -> int:
    from .errors import ConfigError
    from .models import ModelError, check_target, device_for, valid_device
    from .teachers import TeacherRecipe, train_hf_teacher, train_teacher

    if not valid_device(args.device):
        raise ConfigError(f"--device: expected auto, cpu, cuda, cuda:N or mps, got {args.device!r}")
    try:
        device_for(args.device)  # before the data is read or anything trained
    except ModelError as e:
        raise ConfigError(f"--{e}; use --device auto or cpu") from None
    out = Path(args.out)
    # flags the other kind of teacher takes were ignored, silently (helper-72)
    if args.hf:
        given = [f"--{flag.replace('_', '-')}" for flag in ("arch", "preset", "width_mult", "hidden")
                 if getattr(args, flag) is not None]
        if given:
            raise ConfigError(f"{given[0]}: not used with --hf (the checkpoint is the architecture)")
    elif args.max_length is not None:
        raise ConfigError("--max-length: not used without --hf (tokens per text of a Hugging Face teacher)")
    if args.hf:  # fine-tune a local Hugging Face encoder checkpoint into a classifier
        if args.dataset == "mnist1d" or not args.dataset.startswith(("text:", "npz:")):
            raise ConfigError(f"--hf: expected --dataset text:FILE (CSV/JSONL of text,label), got {args.dataset!r}")
        train_hf_teacher(Path(args.hf), args.dataset, out, epochs=3 if args.epochs is None else args.epochs,
                         lr=5e-5 if args.lr is None else args.lr,
                         max_length=128 if args.max_length is None else args.max_length, seed=args.seed,
                         split_seed=args.split_seed, device=args.device, overwrite=args.overwrite)
        print(f"saved teacher to {out}")
        return 0
    given = {k: getattr(args, k) for k in ("arch", "preset", "width_mult", "hidden") if getattr(args, k) is not None}
    recipe = TeacherRecipe(dataset=args.dataset, **given, epochs=30 if args.epochs is None else args.epochs,
                           lr=3e-3 if args.lr is None else args.lr, seed=args.seed, split_seed=args.split_seed)
    recipe.check_new()
    # the recipe refuses a value its teacher ignores, but cannot tell its default given from left out:
    # a flag given is refused whatever its value (`--arch mlp --preset vgg1d` passed)
    ignored = {"mlp": (("preset", "its widths are --hidden"), ("width_mult", "its widths are --hidden")),
               "resnet": (("hidden", "its classifier is one linear layer"),)}
    for flag, why in ignored.get(recipe.arch, ()):
        if flag in given:
            raise ConfigError(f"--{flag.replace('_', '-')}: not used with --arch {recipe.arch} ({why})")
    check_target(out, args.overwrite)  # refuse a taken --out before training, not after
    train_teacher(recipe, out=out, device=args.device, overwrite=args.overwrite)
    print(f"saved teacher to {out}")
    return 0


def _dataset(metrics: dict) -> str | None:
    """The data a teacher's figures hold on: as metrics.json names it, else as its split record does (a
    teacher of your own may record the split alone, helper-87)."""
    split = metrics.get("split")
    return metrics.get("dataset") or (split.get("dataset") if isinstance(split, dict) else None)


def _accuracies(model, arch: dict, metrics: dict, folder: Path) -> tuple[list[tuple[str, str | None]], tuple | None]:
    """Validation and test accuracy measured on the split metrics.json records, beside what it
    records (helper-25: an edited metrics.json was shown as if measured), and the shape of one input of
    that data (None where it was not loaded)."""
    from . import data as data_mod
    from .train import accuracy

    recorded = {part: metrics.get(f"{part}_accuracy") for part in ("val", "test")}
    recorded = {k: v if isinstance(v, (int, float)) and not isinstance(v, bool) else None for k, v in recorded.items()}
    split = metrics.get("split")
    try:
        if not (isinstance(split, dict) and _dataset(metrics)):
            raise data_mod.DataError("no split recorded")
        ds = data_mod.load_split(_dataset(metrics), split, tokenizer=folder, preprocess=arch.get("input"))
        measured = {part: accuracy(model, getattr(ds, f"x_{part}"), getattr(ds, f"y_{part}")) for part in recorded}
    except (data_mod.DataError, OSError, ValueError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        return [(f"{part} accuracy", None if v is None else f"{v:.4f} (as metrics.json records it; not measured: {why})")
                for part, v in recorded.items()], None
    return [(f"{part} accuracy", f"{measured[part]:.4f}" + ("" if v is None or abs(v - measured[part]) < 1e-9 else
                                                            f" (metrics.json records {v:.4f})"))
            for part, v in recorded.items()], ds.input_shape


MAX_SHOWN_INPUT = 10**7  # values in one input that teacher show traces for FLOPs without data to check the shape


def _teacher_show(args) -> int:
    """What a teacher folder is: architecture, size, the figures it records and the split they hold on."""
    from search_spaces import count_params, space_for
    from search_spaces.transformer import text_positions

    from .models import load_model, model_changed_since

    folder = Path(args.dir)
    model, arch, metrics = load_model(folder, args.allow_factory)
    if changed := model_changed_since(folder):  # (the accuracies below are measured, beside metrics.json's)
        print(changed, file=sys.stderr)
    split = metrics.get("split") or {}
    shape = arch.get("input_shape") or arch.get("hparams", {}).get("input_shape") or \
        ([split["max_length"]] if "max_length" in split else None)
    flops, units = "?", None
    positions = text_positions(model)  # as the search counts them (RoBERTa's offset taken off, helper-52)
    if not shape and positions:  # a Hugging Face folder of the user's, no length recorded (helper-49/51: "units: -")
        shape = [min(128, positions)]  # what a search reads it at without teacher.max_length (search.teacher_data)
        shown = f"{shape} (tokens: none recorded; a search's default without teacher.max_length)"
    else:
        shown = shape
    accuracies, given = _accuracies(model, arch, metrics, folder)
    if shape and given and isinstance(shape, list) and tuple(shape) != given:  # as a search refuses it (helper-97: traced at [1, 400000000]
        # for 23 s and 3.4 GB, then FLOPs "?" beside accuracies measured on inputs of (1, 40))
        flops = f"? (arch.json records inputs of shape {tuple(shape)}, the data gives {given}: a search refuses it)"
    elif shape and not (isinstance(shape, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                                        for v in shape)
                        and (given or math.prod(shape) <= MAX_SHOWN_INPUT)):  # (the data's own shape is traced)
        flops = f"? (inputs of shape {shape!r}: not traced, past {MAX_SHOWN_INPUT:,} values or not sizes)"
    elif shape:
        try:
            space = space_for(model, tuple(shape), arch=arch)
            flops = f"{space.flops(space.identity()):,}"
            # the architecture as the search sees it (helper-43: `family: vgg` alone said nothing of it)
            units = f"{len(space.units)} (name kind width): " + ", ".join(f"{u.name} {u.kind} {u.width}" for u in space.units)
        except (ValueError, RuntimeError, IndexError) as e:  # a model no space can trace: say so, show the rest
            flops = f"? ({str(e).splitlines()[0]})"
    rows = [("folder", str(folder)), ("family", arch.get("family")), ("input shape", shown),
            ("units", units),
            ("params", f"{count_params(model):,}"), ("FLOPs (MACs/sample)", flops),
            ("dataset", _dataset(metrics)), *accuracies]
    if split:
        how = "as given by the data" if split.get("seed") is None else f"seed {split['seed']}"
        rows.append(("split", f"{how}, sizes {split.get('sizes')}, fingerprint {split.get('fingerprint')}"))
    else:
        rows.append(("split", "not recorded (searches use split seed 0 and warn)"))
    if arch.get("input"):
        rows.append(("input preprocessing", f"x * {arch['input']['scale']:.6g} + {arch['input']['shift']:.6g}"))
    for k, v in rows:
        print(f"{k:>20}: {f'{v:.4f}' if isinstance(v, float) else v if v is not None else '-'}")
    return 0


def _config(args) -> int:
    """The built-in default config: every key, its default and what it means, as YAML to edit."""
    text = (Path(__file__).parent / "default.yaml").read_text()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (captured)
        print(text, end="")
        return 0
    sys.stdout.flush()
    data = text.encode()
    try:  # unbuffered: a file cut short by a full disk or `ulimit -f` still parsed, and the exit said 0 (helper-82)
        while data:
            data = data[os.write(fd, data):]
    except OSError as e:
        print(f"n2n: error: standard output: {e.strerror}; the config written there is cut short, do not use it",
              file=sys.stderr)
        return 1
    return 0


def _overrides(pairs) -> dict:
    import yaml

    from .config import ConfigLoader
    from .errors import ConfigError

    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set: expected KEY=VALUE (e.g. search.removal_budget=20), got {pair!r}")
        k, v = pair.split("=", 1)
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", k.strip()):  # helper-36: "=3" said ": unknown key"
            raise ConfigError(f"--set {pair}: expected a key such as search.removal_budget before '=', got {k!r}")
        if not v.strip():  # `--set teacher.path=$UNSET` would read as null: the default, not what was meant
            raise ConfigError(f"--set {pair}: empty value; write {k.strip()}=null for none")
        if v.strip() == "~":  # YAML's null (helper-68: `teacher.path=~` ran the default teacher's search)
            raise ConfigError(f"--set {pair}: YAML reads ~ as null; write {k.strip()}=null for none, or, for a path, "
                              f"the path in full (~/NAME is the home folder's NAME)")
        try:
            out[k.strip()] = yaml.load(v, Loader=ConfigLoader)  # numbers as the config file reads them
        except RecursionError:  # helper-46: a traceback
            raise ConfigError(f"--set {k.strip()}: the value is nested too deeply to read (hundreds of levels)") from None
        except yaml.YAMLError as e:  # its problem, not its several lines of context (helper-72)
            why = "; ".join(str(p) for p in (getattr(e, "context", None), getattr(e, "problem", None)) if p)
            raise ConfigError(f"--set {k.strip()}: not valid YAML ({why or str(e).splitlines()[0]})") from None
        except ValueError as e:  # helper-57: a 5,000-digit number (Python reads at most 4,300) was a traceback
            raise ConfigError(f"--set {k.strip()}: not readable ({str(e).split(';')[0]})") from None
    return out


def _search(args) -> int:
    import time

    from .config import load_config
    from .search import run_search

    over = _overrides(args.set)
    if args.storage:
        over["resources.storage"] = args.storage
    cfg = load_config(args.config, over)
    name = args.name or time.strftime("search-%Y%m%d-%H%M%S")
    args.run = Path(args.runs_dir) / name  # (named in an error the machine causes: main)

    def named(run_dir: Path):  # the default name, made free where taken
        args.run = run_dir

    summary = run_search(cfg, args.run, address=args.address, factories=args.allow_factory,
                         named=None if args.name else named)
    return _status(summary)


def _status(summary: dict) -> int:
    """0 finished, 1 stopped because every candidate failed, 130 interrupted (resumable)."""
    return {"done": 0, "failed": 1}.get(summary.get("stage"), 130)


def _resume(args) -> int:
    from .errors import ConfigError
    from .search import resume_search

    if args.set:
        raise ConfigError(f"--set: a run keeps the config and target it was started with (its n2n.json), and `n2n "
                          f"resume` continues under them; for another student of its candidates, `n2n export "
                          f"{shlex.quote(str(args.run))} --margin P`, `--rank N` or `--key KEY`; for another target, a "
                          f"new search: `n2n search ... {' '.join('--set ' + shlex.quote(s) for s in args.set)}`")

    return _status(resume_search(Path(args.run), address=args.address, factories=args.allow_factory,
                                 concurrency=args.concurrency, cpus_per_trial=args.cpus_per_trial, storage=args.storage))


def _export(args) -> int:
    from .export import export_best

    export_best(Path(args.run), Path(args.out), args.finetune_epochs, args.overwrite, factories=args.allow_factory,
                trim_vocab=args.trim_vocab, key=args.key, rank=args.rank, onnx=args.onnx, margin=args.margin,
                fetch=args.fetch)
    return 0


def _report(args) -> int:
    from .report import make_report
    from .runfolder import read_run

    read_run(Path(args.run))
    print(make_report(Path(args.run)))
    return 0


def _policy_fit(args) -> int:
    from .policies import fit_policies

    fit_policies([Path(r) for r in args.runs], Path(args.out), steps=args.steps, seed=args.seed,
                 factories=args.allow_factory)
    return 0


def _at_least_one(text: str) -> int:
    # at most MANY, as a config's (helper-90: `resume --concurrency 10**20` passed around the config's bound)
    if not text.isdigit() or not 1 <= int(text) <= MANY:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {MANY:,}, got {text[:40]!r}")
    return int(text)


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {SEED_LIMIT - 1}, got {text!r}")
    return value


def _cpus(text: str) -> float:
    from .config import ray_fraction

    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not ray_fraction(value):  # helper-36: 1e-300 was a traceback from Ray at the first trial
        raise argparse.ArgumentTypeError(f"expected a number of CPUs >= 0.0001 (the smallest fraction Ray "
                                         f"takes), got {text!r}")
    return value


def _path(text: str) -> str:
    """A folder argument: an empty one would mean the current directory, which no one asks for so."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder path, got an empty string")
    return text


def _run_name(text: str) -> str:
    """A run's name: a folder inside --runs-dir (`exp1/seed0` too). `..`, `.` or an absolute path
    named another folder, which n2n then took for an existing run ("resume it with `n2n resume /home/me`")."""
    parts = text.replace(os.sep, "/").split("/")
    if not text.strip() or text.startswith(("/", os.sep)) or any(p in ("", ".", "..") for p in parts):
        raise argparse.ArgumentTypeError(f"expected a folder name inside --runs-dir (the run goes to RUNS_DIR/NAME), "
                                         f"got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="n2n", description="Compress a trained network by policy search (N2N learning).")
    p.add_argument("--version", action="version", version=f"n2n {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    teacher = sub.add_parser("teacher", help="train or inspect teachers").add_subparsers(dest="teacher_cmd", required=True)
    t = teacher.add_parser("train", help="train a teacher and save it as a folder (safetensors + JSON)")
    t.add_argument("--dataset", default="mnist1d", help="mnist1d | digits | npz:PATH | folder:PATH | text:PATH (with --hf)")
    t.add_argument("--hf", metavar="CHECKPOINT", help="a local Hugging Face encoder folder to fine-tune into a "
                   "classifier on a text: dataset (instead of --arch)")
    t.add_argument("--max-length", type=int, help="--hf: tokens per text, longer ones cut (default 128)")
    # None: not given (refused where the teacher does not use it, else the recipe's default)
    t.add_argument("--arch", choices=["vgg", "mlp", "resnet"], help="default vgg")
    t.add_argument("--preset", help="vgg1d (default), vgg11, vgg13, vgg16, vgg19, small (vgg); resnet10/18/34/50 (resnet)")
    t.add_argument("--width-mult", type=float, help="scales every width of the preset (default 1.0)")
    t.add_argument("--hidden", type=int, nargs="*", help="classifier widths (default 256)")
    t.add_argument("--epochs", type=int, default=None, help="default 30; 3 with --hf")
    t.add_argument("--lr", type=float, default=None, help="default 3e-3; 5e-5 with --hf")
    t.add_argument("--seed", type=_seed, default=0, help="initialisation and batch order")
    t.add_argument("--split-seed", type=_seed, default=0,
                   help="train/val/test split of the dataset (recorded with the teacher; ignored when the data brings its own split)")
    t.add_argument("--device", default="auto", help="auto (a GPU when torch sees one), cpu, mps, cuda or cuda:N")
    t.add_argument("--out", required=True, type=_path, help="folder to write (new, or an empty folder)")
    t.add_argument("--overwrite", action="store_true", help="replace --out if it is a teacher n2n trained (nothing else)")
    t.set_defaults(func=_teacher_train)
    show = teacher.add_parser("show", help="architecture, size, accuracy and split of a teacher folder")
    show.add_argument("dir", type=_path, help="a teacher folder")
    show.add_argument("--allow-factory", action="append", default=[], metavar="PKG.MOD:FN",
                      help="let the folder's arch.json import and call this factory (your own module class)")
    show.set_defaults(func=_teacher_show)

    s = sub.add_parser("search", help="run a search (no CONFIG: the built-in MNIST-1D default)")
    s.add_argument("config", nargs="?", help="YAML config (`n2n config` prints the default, every key documented)")
    s.add_argument("--name", type=_run_name, help="run name (default: search-DATE-TIME); the run goes to RUNS_DIR/NAME")
    s.add_argument("--runs-dir", default="runs", type=_path, help="the folder runs go to (default: runs)")
    s.add_argument("--address", help="an existing Ray cluster (e.g. auto); without it a local Ray starts")
    s.add_argument("--storage", metavar="URI", help="a cluster without a shared disk: where trials leave results, "
                   "a URI every node reaches (s3://bucket/runs); same as --set resources.storage=URI")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. search.agent=optuna")
    s.add_argument("--allow-factory", action="append", default=[], metavar="PKG.MOD:FN",
                   help="let a model folder's arch.json import and call this factory (your own module class); "
                        "repeat for several. Nothing else is ever imported from a model folder")
    s.set_defaults(func=_search)

    r = sub.add_parser("resume", help="continue an interrupted search")
    r.add_argument("run", type=_path, help="the run folder, e.g. runs/NAME")
    r.add_argument("--address", help="an existing Ray cluster")
    r.add_argument("--storage", metavar="URI", help="the resources.storage the run records, where it records one: "
                   "a resume reads and writes trial results there, so you name it (a run folder can name any place)")
    r.add_argument("--concurrency", type=_at_least_one, metavar="N",
                   help="trials at once for this resume (fewer, when workers died for memory); default: the run's own")
    r.add_argument("--cpus-per-trial", type=_cpus, metavar="N",
                   help="CPUs each trial asks Ray for in this resume (a machine smaller than the run's); default: the run's own")
    r.add_argument("--allow-factory", action="append", default=[], metavar="PKG.MOD:FN",
                   help="let a model folder's arch.json import and call this factory (your own module class); "
                        "repeat for several. Nothing else is ever imported from a model folder")
    # refused with a way on, not argparse's "unrecognized arguments" (helper-91)
    r.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    r.set_defaults(func=_resume)

    e = sub.add_parser("export", help="write the best student as a deployable folder")
    e.add_argument("run", type=_path, help="the run folder, e.g. runs/NAME")
    e.add_argument("--out", required=True, type=_path, help="folder to write (new, or an empty folder)")
    e.add_argument("--finetune-epochs", type=int, default=0, help="distil + cross-entropy this long first, keeping "
                   "the epoch (or the weights as searched) best on validation")
    e.add_argument("--overwrite", action="store_true", help="replace --out if it is an earlier export (nothing else)")
    e.add_argument("--fetch", metavar="URI", help="first download from the run's storage, which you name (its "
                   "resources.storage), the results its results/ lacks (a driver killed before it fetched them); never "
                   "done without it")
    pick = e.add_mutually_exclusive_group()
    pick.add_argument("--key", help="export this candidate (its key in candidates.json) instead of the default choice")
    pick.add_argument("--rank", type=int, help="export the candidate of this rank by reward (1 = best)")
    pick.add_argument("--margin", type=float, metavar="POINTS",
                      help="export the smallest finalist that meets the accuracy target with POINTS of validation "
                           "accuracy to spare (more: fewer exports past the target on unseen data, larger students); "
                           "default: the run's target.margin")
    e.add_argument("--trim-vocab", action="store_true", help="transformers on text: keep only the embeddings "
                   "(and tokenizer entries) of tokens in the training texts")
    e.add_argument("--onnx", action="store_true", help="also write model.onnx (dynamic batch; raw inputs, as "
                   "n2n.load_student), checked against PyTorch with onnxruntime on the validation inputs")
    e.add_argument("--allow-factory", action="append", default=[], metavar="PKG.MOD:FN",
                   help="let a model folder's arch.json import and call this factory (your own module class); "
                        "repeat for several. Nothing else is ever imported from a model folder")
    e.set_defaults(func=_export)

    c = sub.add_parser("config", help="print the default config (every key documented) to start your own from")
    c.set_defaults(func=_config)

    pol = sub.add_parser("policy", help="N2N policies learned from earlier searches").add_subparsers(dest="policy_cmd", required=True)
    pf = pol.add_parser("fit", help="fit the removal and shrink policies to finished searches' candidates; "
                        "start a search from them with search.agent_options: {policy: OUT}")
    pf.add_argument("runs", nargs="+", type=_path, help="run folders (their candidates.json and teachers)")
    pf.add_argument("--out", required=True, type=_path, help="folder to write (new, or empty): OUT/removal, OUT/shrink")
    pf.add_argument("--steps", type=_at_least_one, default=300, help="gradient steps")
    pf.add_argument("--seed", type=_seed, default=0)
    pf.add_argument("--allow-factory", action="append", default=[], metavar="PKG.MOD:FN",
                    help="let a teacher folder's arch.json import and call this factory (your own module class)")
    pf.set_defaults(func=_policy_fit)

    rep = sub.add_parser("report", help="leaderboard and plots of a run")
    rep.add_argument("run", type=_path, help="the run folder, e.g. runs/NAME")
    rep.set_defaults(func=_report)
    return p


# what a terminal takes for commands (ESC, BEL, CR, C1 ...), tab and newline aside; and a path's undecodable
# C1 bytes, which Python holds as surrogates and writes back raw (helper-90)
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\udc80-\udc9f]")


class Shown:
    """A text stream that shows terminal control characters as \\xNN instead of sending them: n2n
    prints what run folders, teacher folders and data hold, and escapes there set a terminal's title
    or colours, or its clipboard (helper-89: a summary.json's failure, n2n.json's teacher_folder)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(CONTROL.sub(lambda m: f"\\x{ord(m.group()) & 0xff:02x}", text))

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Shown(out), Shown(err)
    try:
        return _main(args)
    except Exception:  # a bug's traceback quotes what it failed on, a run folder's text too: shown as the rest
        traceback.print_exc()
        return 1
    finally:
        sys.stdout, sys.stderr = out, err


def _main(args) -> int:
    try:  # torch and the rest take seconds to import: a Ctrl-C meanwhile is an interruption too (helper-71)
        from .errors import USER_ERRORS, TargetMissed, sigterm_as_sigint
    except KeyboardInterrupt:
        print("n2n: interrupted", file=sys.stderr)
        return 130
    if getattr(args, "allow_factory", None):
        # factories are the user's own modules, importable from where they run n2n, here and in the Ray
        # workers this process starts (they inherit the environment); only the factory's own module is
        # searched for there, after the installed packages (search_spaces.generic.load_factory)
        os.environ["N2N_FACTORY_PATH"] = os.getcwd()
    try:
        with sigterm_as_sigint():  # `kill` as Ctrl-C: temp folders go, nothing half-written stays
            return args.func(args)
    except TargetMissed as e:  # not a mistake: the run holds no student the target asks for
        print(f"n2n: error: {e}", file=sys.stderr)
        return 3
    except USER_ERRORS as e:
        print(f"n2n: error: {_logged(_machine_error(e, args), args) if _unwritable_run(e, args) else e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"n2n: interrupted{_interrupted_run(args)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `n2n report ... | head`
        sys.stderr.close()
        return 0
    except OSError as e:
        if e.errno not in MACHINE_ERRNOS:
            raise
        print(f"n2n: error: {_logged(_machine_error(e, args), args)}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # pathlib's resolve() before Python 3.13
        if not str(e).startswith("Symlink loop"):
            raise
        print(f"n2n: error: {e}: expected a file or folder, found links that lead back to themselves", file=sys.stderr)
        return 2


def _interrupted_run(args) -> str:
    """"; continue it with `n2n resume RUN`" where a search or resume this process made or locked
    stopped while it started (later, each says so itself), also written to the run's n2n.log
    (helper-68, helper-71: a search said no way on, and its log never said it had stopped); else ""
    (helper-74: a run another process holds, or one that was there before the search, is not this
    command's to speak of or write in)."""
    from .runfolder import HELD_HERE, META, lock_holder, read_summary

    run = getattr(args, "run", None)
    if args.func not in (_search, _resume) or run is None:
        return ""
    run = Path(run).resolve()
    held = str(run) in HELD_HERE
    # a resume stopped before it took the lock: the run, if no other process holds it, is still to continue
    unheld_resume = args.func is _resume and (run / META).is_file() and lock_holder(run) is None
    if not (held or unheld_resume) or (read_summary(run) or {}).get("stage") in ("done", "failed"):
        return ""
    from .errors import USER_ERRORS
    from .search import resume_command, teed

    again = f"continue it with `{resume_command(run, args.address, args.allow_factory)}`"
    if held:
        try:
            teed(lambda _: None, run)(f"search interrupted; {again}")
        except (OSError, USER_ERRORS):  # the terminal's line is what matters here
            pass
    return f"; {again}"


# what the machine or the paths given cause, not n2n: said in a line, not a traceback (helper-46)
MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENAMETOOLONG, errno.ELOOP, errno.EROFS}
FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no room for what was being written


def _unwritable_run(e: Exception, args) -> bool:
    """A search or resume whose run folder became unwritable while it ran (helper-82: `chattr +i` said
    "[Errno 1] Operation not permitted" and no way on): said as a machine error, with the resume."""
    return (isinstance(e, PermissionError) and e.errno in (errno.EPERM, errno.EACCES)
            and args.command in ("search", "resume") and getattr(args, "run", None) is not None
            and (Path(args.run) / "n2n.json").is_file())


def _logged(said: str, args) -> str:
    """`said`, also written in the run's n2n.log where this search or resume holds the run, as far as the
    machine lets it (helper-82: the log of a search stopped by a full disk ended as if it ran on)."""
    from .errors import USER_ERRORS
    from .runfolder import HELD_HERE
    from .search import teed

    run = getattr(args, "run", None)
    if args.command in ("search", "resume") and run is not None and str(Path(run).resolve()) in HELD_HERE:
        try:
            teed(lambda _: None, Path(run).resolve())(f"search stopped: {said}")
        except (OSError, USER_ERRORS):  # (that disk is likely full): the terminal's line is what matters
            pass
    return said


def _machine_error(e: OSError, args) -> str:
    """'PATH: No space left on device', and for a search or resume whose run folder exists, how to go on."""
    where = f"{e.filename}: " if e.filename else ""
    if not where and e.errno in FULL:  # (helper-82: a full TMPDIR, said as if the run's disk were full)
        import tempfile

        where = f"a file n2n was writing (its output, or a temporary one under {tempfile.gettempdir()}): "
    run = getattr(args, "run", None) if args.command in ("search", "resume") else None
    room = ("raise the file-size limit (ulimit -f)" if e.errno == errno.EFBIG else
            "make the run folder writable again" if e.errno in (errno.EPERM, errno.EACCES) else "free some space")
    if e.errno in (*FULL, errno.EPERM, errno.EACCES) and run is not None and (Path(run) / "n2n.json").is_file():
        from .search import resume_command

        again = resume_command(Path(run).resolve(), getattr(args, "address", None), args.allow_factory)
        return f"{where}{e.strerror}; every candidate recorded is kept: {room}, then continue with `{again}`"
    if e.errno in FULL:
        return f"{where}{e.strerror}; nothing was left half-written: {room} and run it again"
    return f"{where}{e.strerror}"


if __name__ == "__main__":
    sys.exit(main())
