"""Model families, and saving/loading models as safetensors + JSON (never pickles).

A saved model is a folder: ``model.safetensors`` (weights and buffers), ``arch.json`` (family and
hyperparameters, enough to rebuild the module) and ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import os
import re
import reprlib
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from search_spaces.resnet import ResNet, resnet_arch
from search_spaces.sequential import layers_to_module

# vgg presets: numbers are conv widths, "M" a 2x max-pool. Pools that would shrink the input below
# one sample are dropped, so the same preset runs on 8x8 digits and length-40 MNIST-1D.
VGG_PRESETS = {
    "vgg1d": [64, 64, "M", 128, 128, "M", 256, 256, "M", 256, 256],
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
    "small": [16, 16, "M", 32, 32],
}


class ModelError(ValueError):
    """A model folder or architecture that cannot be loaded; the message says why."""


def vgg_layers(input_shape, num_classes: int, preset: str = "vgg1d", width_mult: float = 1.0,
               hidden: int = 256, dropout: float = 0.0) -> list[dict]:
    """Conv-BN-ReLU stages, global average pooling, and an MLP classifier."""
    if preset not in VGG_PRESETS:
        raise ModelError(f"unknown vgg preset {preset!r}: expected one of {sorted(VGG_PRESETS)}")
    dim = len(input_shape) - 1
    if dim not in (1, 2):
        raise ModelError(f"vgg expects inputs (C, L) or (C, H, W), got shape {tuple(input_shape)}")
    c, size = input_shape[0], min(input_shape[1:])
    layers: list[dict] = []
    for v in VGG_PRESETS[preset]:
        if v == "M":
            if size >= 2:
                layers.append({"kind": "pool", "dim": dim, "op": "max", "kernel": 2, "stride": 2, "padding": 0})
                size //= 2
            continue
        w = max(1, int(round(v * width_mult)))
        layers += [
            {"kind": "conv", "dim": dim, "in": c, "out": w, "kernel": 3, "stride": 1, "padding": 1, "bias": False},
            {"kind": "bn", "dim": dim, "num": w, "eps": 1e-5, "momentum": 0.1, "affine": True},
            {"kind": "act", "fn": "relu"},
        ]
        c = w
    layers += [{"kind": "gpool", "dim": dim, "op": "avg"}, {"kind": "flatten"}]
    if hidden:
        layers += [{"kind": "linear", "in": c, "out": hidden, "bias": True}, {"kind": "act", "fn": "relu"}]
        if dropout:
            layers.append({"kind": "dropout", "p": dropout})
        c = hidden
    layers.append({"kind": "linear", "in": c, "out": num_classes, "bias": True})
    return layers


def vgg_dropped_pools(input_shape, preset: str) -> int:
    """How many of a preset's pools `vgg_layers` drops for this input (each would halve it below 1)."""
    size, dropped = min(input_shape[1:]), 0
    for v in VGG_PRESETS.get(preset, []):
        if v == "M":
            if size >= 2:
                size //= 2
            else:
                dropped += 1
    return dropped


def mlp_layers(input_shape, num_classes: int, hidden=(256, 256)) -> list[dict]:
    n_in = 1
    for s in input_shape:
        n_in *= s
    layers: list[dict] = [{"kind": "flatten"}]
    for h in hidden:
        layers += [{"kind": "linear", "in": n_in, "out": h, "bias": True}, {"kind": "act", "fn": "relu"}]
        n_in = h
    layers.append({"kind": "linear", "in": n_in, "out": num_classes, "bias": True})
    return layers


TEACHER_FAMILIES = ("vgg", "mlp", "resnet", "module", "hf-pretrained")


def build_model(arch: dict, factories=()) -> nn.Module:
    """Rebuild a module from its ``arch.json`` content (weights not loaded): a teacher of the zoo
    here, a student through its family's reader (`search_spaces.build_student`).

    `factories`: the ``"package.module:function"`` names the user allows a ``module`` / ``pruned``
    arch to import and call; any other factory is refused before anything is imported."""
    from search_spaces import STUDENT_FAMILIES, UnsupportedModel, build_student, call_factory

    if not isinstance(arch, dict):
        raise ModelError(f"arch: expected a JSON object with a 'family', got {type(arch).__name__}")
    family = arch.get("family")
    try:
        if family == "vgg":
            return layers_to_module(vgg_layers(**arch["hparams"]))
        if family == "mlp":
            return layers_to_module(mlp_layers(**arch["hparams"]))
        if family == "resnet" and "hparams" in arch:  # a teacher recipe: preset + width
            return ResNet(resnet_arch(**arch["hparams"]))
        if family == "module":  # the user's own class: {"factory": "pkg.mod:fn", "kwargs": {...}}
            return call_factory(arch["factory"], factories, arch.get("kwargs", {}))
        if family == "hf-pretrained":  # a run's teacher, rebuilt in a trial's worker from the config load_model
            # read, not from its folder's: one edited mid-search gave later workers another teacher, and a
            # cluster's nodes need not see the folder (the weights come with the trial's context)
            from search_spaces.transformer import classifier_from_config

            return classifier_from_config(arch["config"], f"{arch['path']}/config.json", arch.get("attn_implementation"))
        if family in STUDENT_FAMILIES:
            return build_student(arch, factories)
    except (ModelError, UnsupportedModel):
        raise
    except (KeyError, TypeError) as e:
        raise ModelError(f"arch of family {family!r} is malformed: {e}") from None
    except MemoryError:
        raise ModelError(f"a model of family {family!r} this large does not fit in this machine's memory") from None
    except (ValueError, RuntimeError, OverflowError) as e:  # negative or NaN sizes, an unknown layer kind
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "can't allocate memory" in first:  # sizes that are well formed, only too large (helper-32)
            raise ModelError(f"a model of family {family!r} this large does not fit in this machine's memory "
                             f"({first})") from None
        if family in ("module", "pruned", "hf-pretrained"):  # the user's code, or transformers': their own words
            raise
        raise ModelError(f"arch of family {family!r} is malformed: {first}") from None
    raise ModelError(f"unknown model family {family!r}: expected one of {sorted({*TEACHER_FAMILIES, *STUDENT_FAMILIES})}")


class RawInput(nn.Module):
    """A model that takes the data set's raw inputs: applies the preprocessing recorded in its
    arch.json (``"input": {"scale", "shift", "shape"}``), the same computation n2n's data loader did,
    then the model. (N, L) / (N, H, W) inputs get the channel axis of a one-channel model."""

    def __init__(self, model: nn.Module, preprocess: dict):
        super().__init__()
        self.model, self.preprocess, self.input_shape = model, dict(preprocess), tuple(preprocess["shape"])

    def forward(self, x):
        x = torch.as_tensor(x)
        given = tuple(x.shape)
        if x.dim() == len(self.input_shape) and self.input_shape[0] == 1:
            x = x.unsqueeze(1)  # (N, L) -> (N, 1, L)
        if tuple(x.shape[1:]) != self.input_shape:  # else a conv's message about weights, not inputs
            one = " or (N, " + ", ".join(map(str, self.input_shape[1:])) + ")" if self.input_shape[0] == 1 else ""
            raise ValueError(f"expected a batch of inputs of shape (N, {', '.join(map(str, self.input_shape))}){one}, "
                             f"got {given}; one sample x is x[None]")
        from .data import standardise

        z = standardise(x, self.preprocess)  # (N, *shape) float32: as n2n computed it
        dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), z.dtype)
        return self.model(z.to(dtype))  # a student made .half() / .double() takes its own dtype


@functools.cache
def umask() -> int:
    """The process umask. Read from /proc where it can be: setting it to read it back would, for a
    moment, give files other threads (Ray's) create meanwhile the wrong mode."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def private_temp(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """mkstemp beside `path`, with the mode a plain open() would give (mkstemp makes 0600). Named by the
    start of `path`'s name: a name near the 255-byte limit must not make its temp name longer than that."""
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=cut(Path(path).name), suffix=suffix)
    os.fchmod(fd, 0o666 & ~umask())
    return fd, tmp


def cut(name: str, size: int = 100) -> str:
    """The start of `name`, at most `size` bytes as the file system stores it (helper-90: cut by
    characters, a name of 85 three-byte characters kept its 255 bytes), for names made from it."""
    return os.fsencode(name)[:size].decode(sys.getfilesystemencoding(), "ignore")


def hidden_prefix(folder: Path) -> str:
    """What the names of `folder`'s hidden temp folders start with: `.NAME.`, cut (helper-89: that of
    a 250-byte NAME, and 8 more, went past the 255-byte limit after the work was done)."""
    return cut(f".{Path(folder).name}.")


def temp_folder(folder: Path) -> Path:
    """A hidden temp folder beside `folder` (`hidden_prefix`), with the mode a plain mkdir would give
    (mkdtemp makes 0700)."""
    tmp = Path(tempfile.mkdtemp(dir=Path(folder).parent, prefix=hidden_prefix(folder)))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


def open_plain(path: Path, flags: int, mode: int = 0o666) -> int:
    """os.open of a plain file only: never through a link (ELOOP: a run folder someone else made must
    not make n2n write into a file elsewhere), and a FIFO, whose open or read blocked forever
    (helper-29, helper-30), is refused at once."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a plain file")
    os.set_blocking(fd, True)
    return fd


def plain_file(path: Path) -> bool:
    """A regular file, not a link to one (n2n writes none) nor a FIFO or folder under its name."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def is_number(v, low: float = -math.inf, high: float = math.inf, whole: bool = False) -> bool:
    """A finite number (an int where `whole`) in [low, high], as n2n writes its figures: not a bool,
    a string or NaN (NaN compares False, so it passed every check it met)."""
    ok = isinstance(v, int) if whole else isinstance(v, (int, float))
    return ok and not isinstance(v, bool) and math.isfinite(v) and low <= v <= high


def unshared(path: Path) -> None:
    """Give `path` a file of its own where it is hard-linked (a `cp -al` or `rsync --link-dest` copy of
    a run): appended or rewritten in place, it changed the other copy too (helper-46: resuming the copy
    wrote its log lines and trainings into the original's). A copy, then a rename: atomic."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
        return
    fd, tmp = private_temp(path)
    try:
        with os.fdopen(fd, "wb") as out, os.fdopen(open_plain(path, os.O_RDONLY), "rb") as src:
            shutil.copyfileobj(src, out)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def append_to(path: Path):
    """`path` opened to append, a plain file only (`open_plain`), and its own (`unshared`)."""
    unshared(path)
    return os.fdopen(open_plain(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a")


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically (temp file, then rename): a symlink at `path` is replaced, not followed."""
    fd, tmp = private_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: after a power cut, the old file or the new
        os.replace(tmp, path)
    except IsADirectoryError:  # helper-28: a traceback, and the temp file left beside it
        raise ModelError(f"{path}: expected a file n2n may replace, found a folder; move it away") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temp file, then rename), so a crash never leaves half a file."""
    write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


MODEL_FILES = {"model.safetensors", "arch.json", "metrics.json"}
EXPORT_EXTRAS = {"model.onnx", "spec.json", "hf", "tokenizer", "README-n2n.md"}  # what `n2n export` adds to a model folder
HF_FILES = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
            "vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json", "spiece.model",
            "sentencepiece.bpe.model", "chat_template.jinja"}  # a Hugging Face teacher folder n2n wrote


def written_by_n2n(folder: Path) -> str | None:
    """"export" or "teacher" when `folder` is one that n2n wrote and holds nothing else, else None.
    An export has spec.json and a metrics.json naming its run; a teacher a metrics.json with the
    recipe it was trained with. A checkpoint of your own has neither, so it is never either."""
    entries = {p.name: p for p in Path(folder).iterdir()}
    names = set(entries)
    # what n2n writes: files, never a folder, link or FIFO under a file's name
    if not all(plain_file(p) for name, p in entries.items() if name not in ("hf", "tokenizer")):
        return None  # helper-28: a folder named model.onnx, and all it held, went with --overwrite
    try:
        metrics = json.loads((Path(folder) / "metrics.json").read_text())
    except (OSError, ValueError, RecursionError):
        metrics = None
    if not isinstance(metrics, dict):
        return None
    for sub in ("hf", "tokenizer"):  # n2n's own subfolders: nothing but Hugging Face files inside
        p = entries.get(sub)
        if p is not None and (p.is_symlink() or not p.is_dir() or
                              {q.name for q in p.iterdir()} - HF_FILES - {"model.safetensors"} or
                              not all(plain_file(q) for q in p.iterdir())):
            return None
    if names <= MODEL_FILES | EXPORT_EXTRAS and {*MODEL_FILES, "spec.json"} <= names and "run" in metrics:
        return "export"
    if names == MODEL_FILES and "recipe" in metrics:
        return "teacher"
    if names <= HF_FILES | {"model.safetensors", "metrics.json"} and {"checkpoint", "recipe"} <= set(metrics):
        return "teacher"  # `n2n teacher train --hf`
    return None


def check_replaceable(folder: Path, kind: str) -> None:
    """`overwrite` replaces only an earlier n2n `kind` ("export" or "teacher"): a run folder, a folder
    of runs, your own checkpoint or a folder holding anything else is refused, never deleted."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir() or written_by_n2n(folder) != kind:
        raise FileExistsError(f"{folder} exists and is not an earlier n2n {kind} ({_not_ours(folder, kind)}); "
                              f"--overwrite only replaces one of those; choose another --out")
    if kind == "export" and (why := _changed_since(folder)):  # (helper-82: your edited weights went unsaid)
        raise FileExistsError(f"{folder}: {why}; --overwrite replaces only an export as n2n wrote it: move "
                              f"that out, or choose another --out")


def _manifest(folder: Path) -> dict[str, str]:
    """Every file under `folder` but metrics.json, by path, with its digest."""
    files = {p.relative_to(folder).as_posix(): p for p in sorted(Path(folder).rglob("*")) if p.is_file()}
    return {name: file_digest(p) for name, p in files.items() if name != "metrics.json"}


def _changed_since(folder: Path) -> str | None:
    """What in an earlier export is not as `n2n export` wrote it, by the files its metrics.json lists;
    None for one recorded before exports listed them (judged by names alone, as then)."""
    files = read_json(Path(folder) / "metrics.json").get("files")
    if not isinstance(files, dict):
        return None
    now = _manifest(folder)
    if changed := [n for n in now if n in files and now[n] != files[n]]:
        return f"its {changed[0]} was changed since n2n exported it"
    if added := [n for n in now if n not in files]:
        return f"it holds {added[0]}, which that export did not write"
    return None


def model_changed_since(folder: Path) -> str | None:
    """A warning where the files a model is built from (model.safetensors, arch.json) are not those its
    metrics.json lists, or None (nothing listed: a teacher, or an export made before 2026-12-06). Its
    figures are another model's then (helper-97: an arch.json "input" scaled by 1.6 loaded unsaid, at
    val 0.9387 where metrics.json said 0.9867). Catches edits and damage, not a forger who lists anew."""
    try:
        files = read_json(Path(folder) / "metrics.json").get("files")
    except (ModelError, OSError, AttributeError):
        return None
    if not isinstance(files, dict):
        return None
    changed = [n for n in ("arch.json", "model.safetensors") if n in files
               and (not (Path(folder) / n).is_file() or file_digest(Path(folder) / n) != files[n])]
    if not changed:
        return None
    return (f"warning: {folder}: its {' and '.join(changed)} changed since n2n exported it (metrics.json lists other "
            f"digests): the figures in metrics.json and README-n2n.md are not this model's")


def _not_ours(folder: Path, kind: str) -> str:
    """Why `folder` is not an earlier n2n `kind`, naming what blocks it (helper-51: the whole listing;
    helper-54: a file named hf was a traceback, and a missing file was called a missing metrics.json)."""
    if folder.is_symlink():
        return f"it is a symlink to {os.readlink(folder)}"
    if not folder.is_dir():
        return "it is a file"
    entries = {p.name: p for p in folder.iterdir()}
    if kind == "export":
        allowed, need, keys = MODEL_FILES | EXPORT_EXTRAS, {*MODEL_FILES, "spec.json"}, ("run",)
    elif "arch.json" in entries:  # a teacher trained from a recipe
        allowed, need, keys = MODEL_FILES, MODEL_FILES, ("recipe",)
    else:  # `n2n teacher train --hf`
        allowed, need, keys = HF_FILES | {"model.safetensors", "metrics.json"}, {"metrics.json"}, ("checkpoint", "recipe")
    odd = []
    for name, p in sorted(entries.items()):
        if name not in allowed:
            odd.append(name)
        elif name in ("hf", "tokenizer"):  # an export's own subfolders
            if p.is_symlink() or not p.is_dir():
                odd.append(f"{name} (not a folder)")
            else:
                odd += [f"{name}/{q.name}" for q in sorted(p.iterdir())
                        if q.name not in HF_FILES | {"model.safetensors"} or not plain_file(q)]
        elif not plain_file(p):
            odd.append(f"{name} (not a plain file)")
    if odd:
        return f"it holds {', '.join(odd[:6])}{' ...' if len(odd) > 6 else ''}, which n2n does not write there"
    if missing := sorted(need - set(entries)):
        return f"it lacks {', '.join(missing)}"
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError, RecursionError):
        metrics = None
    for key in keys:
        if not isinstance(metrics, dict) or key not in metrics:
            what = {"run": "the run it was exported from", "recipe": "the recipe it was trained with",
                    "checkpoint": "the checkpoint it was fine-tuned from"}[key]
            return f"its metrics.json does not name {what}"
    return "it is not laid out as n2n writes one"


def check_creatable(folder: Path) -> None:
    """Refuse, before any work, a path under a file (`--out notes.txt/student`), or where nothing can be
    written (a read-only mount, a folder of another user's): a teacher trained or a student fine-tuned
    for minutes then failed to save (helper-36)."""
    folder = Path(folder)
    blocker = next((p for p in reversed(folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise FileExistsError(f"{folder}: cannot be made, {blocker} is a file, not a folder; choose another path")
    # a run's folder holds its own files, read as they are, and goes with it (helper-68: a run, a policy
    # made inside another run; n2n.runfolder.META and results/ make a run folder)
    run = next((p for p in folder.resolve().parents if (p / "n2n.json").is_file() and (p / "results").is_dir()), None)
    if run is not None:
        raise FileExistsError(f"{folder}: inside the run folder {run}; choose a path outside it")
    # where the first new entry goes: beside `folder` (its temp folder, new_folder), or above it
    there = next((p for p in folder.absolute().parents if p.is_dir()), None)  # (None: `--out /`, refused later)
    try:
        if there is not None:
            tempfile.TemporaryFile(dir=there).close()
    except OSError as e:
        raise PermissionError(f"{folder}: cannot be written, a new file in {there} failed ({e.strerror}); choose "
                              f"another path") from None
    limit = _name_max(there) if there is not None else 255
    for part in folder.absolute().parts[1:]:  # (helper-89: a 250-byte name failed after the work was done)
        if len(os.fsencode(part)) > limit:
            raise OSError(errno.ENAMETOOLONG, f"a name of {len(os.fsencode(part))} bytes ({part[:40]}...), past "
                          f"this file system's {limit}; choose a shorter one", str(folder))


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_target(folder: Path, overwrite: bool = False, kind: str = "teacher") -> None:
    """A folder n2n is about to write: free, or (with overwrite) an earlier n2n `kind`."""
    folder = Path(folder)
    check_creatable(folder)
    here = Path.cwd().resolve()
    if folder.exists() and here.is_relative_to(folder.resolve()):  # `--out .` or `..` (helper-87: with --overwrite
        # the temp folder went inside it, and the export was refused when done, over n2n's own temp folder)
        where = "the current folder" if folder.resolve() == here else f"a folder above the current one ({here})"
        raise FileExistsError(f"{folder}: is {where}, which n2n does not replace (it writes a new folder beside the "
                              f"one it replaces); choose another --out")
    if occupied(folder):
        if not overwrite:
            raise FileExistsError(f"{folder} already exists; choose another --out or pass --overwrite")
        check_replaceable(folder, kind)


def occupied(folder: Path) -> bool:
    """Whether something is at `folder` that writing there would replace: anything, a dangling link too,
    but a real empty folder (`mkdir out` before `--out out`: nothing in it is lost; commit_folder renames
    onto it, which the kernel refuses if anything appeared in it meanwhile). The current folder (`--out .`:
    the temp folder went inside it) and a mount point (a rename cannot replace one) count as occupied even
    empty: both failed after the work was done (helper-55), and are refused before it as before."""
    folder = Path(folder)
    if not (folder.exists() or folder.is_symlink()):
        return False
    empty = not folder.is_symlink() and folder.is_dir() and next(folder.iterdir(), None) is None
    return not empty or os.path.ismount(folder) or folder.resolve() == Path.cwd().resolve()


def new_folder(folder: Path, overwrite: bool = False, kind: str = "teacher", log=print) -> Path:
    """A hidden temp folder beside `folder` to write into; `commit_folder` moves it into place. Hidden
    ones already there are said (a process killed while writing left them, with a replaced teacher
    maybe, which n2n finds there: so they are not deleted unasked)."""
    folder = Path(folder)
    check_target(folder, overwrite, kind)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        left = sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(hidden_prefix(folder)) and p.is_dir())
    except OSError:
        left = []
    if left:
        log(f"note: {len(left)} hidden folder{'s' * (len(left) > 1)} beside {folder} ({', '.join(left[:3])}"
            f"{' ...' if len(left) > 3 else ''}) {'were' if len(left) > 1 else 'was'} left by an n2n killed while writing "
            f"{folder.name}, or one writing it now; " + ("a teacher it replaced may be there: delete them once no run needs it"
                                                          if kind == "teacher" else "delete them once none writes there"))
    return temp_folder(folder)


def replaced_teacher(folder: Path, digest: str) -> Path:
    """Where `commit_folder` keeps a teacher it replaced: runs searched from it check its digest,
    and without it they could neither resume nor export."""
    folder = Path(folder)  # a name of over 200 bytes by its start (helper-90: past 255 bytes after the training)
    return folder.parent / f"{cut(folder.name, 200)}.replaced-{digest}"


def kept_teacher(folder: Path, digest: str) -> Path | None:
    """The folder holding the teacher of weights `digest` that `commit_folder` kept when it replaced
    `folder`: at `replaced_teacher`, or beside it under a suffix where that name was taken (helper-46:
    never named), its weights checked (a folder of the user's at that name is not it); None if none."""
    plain = replaced_teacher(folder, digest)
    try:
        beside = sorted(p for p in plain.parent.iterdir() if p.name.startswith(f"{plain.name}."))
        # a replacement killed midway left it in its hidden temp folder (helper-82), or, before commits
        # swapped folders in one step, in `.NAME.old.*/x`
        hidden = sorted(p for p in plain.parent.iterdir() if p.name.startswith(hidden_prefix(folder)))
    except OSError:
        beside = hidden = []
    for p in (plain, *beside, *hidden, *(h / "x" for h in hidden)):
        if not p.is_symlink() and p.is_dir() and weights_digest(p) == digest:
            return p
    return None


def commit_folder(tmp: Path, folder: Path, overwrite: bool = False, kind: str = "teacher") -> Path | None:
    """Move a finished temp folder into place, its files and folders with the modes a plain open()
    and mkdir() give. An old folder is swapped out in one step (`exchange`), then deleted, but an old
    teacher is kept (`replaced_teacher`; returned). The checks run again: the folder may have appeared
    or changed while we worked."""
    try:  # a folder it replaces keeps its own mode and group (helper-87: a 0700 or setgid folder came back 0755)
        st = os.lstat(folder)
        kept_as = st if stat.S_ISDIR(st.st_mode) else None
    except FileNotFoundError:
        kept_as = None
    for root, dirs, files in os.walk(tmp):  # what other writers made (save_pretrained writes 0600 weights)
        for name in files + dirs:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                _group_of(p, kept_as)
                os.chmod(p, (0o777 if name in dirs else 0o666) & ~umask())
    if kept_as is not None:
        _group_of(tmp, kept_as)
    kept, said = None, [f"{folder}: the new {kind} was moved into place before the interrupt took effect"]
    with signals_held(said):  # (helper-82: interrupted, the replaced folder went unsaid)
        if not occupied(folder):
            try:
                os.replace(tmp, folder)  # onto an empty folder: refused by the kernel if it is empty no longer
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                raise FileExistsError(f"{folder}: files appeared in it while n2n worked; nothing was replaced, "
                                      f"choose another --out") from None
            _mode_of(folder, kept_as)
            return None
        check_target(folder, overwrite, kind)
        new_digest = weights_digest(tmp)
        exchange(tmp, folder)  # `folder` holds the new one, `tmp` what it held
        try:
            # what was swapped out, read now: another process may have replaced `folder` since we checked it
            # (helper-82: two `--overwrite`s at once hid the original teacher in a temp folder)
            digest = weights_digest(tmp) if kind == "teacher" else None
            if digest and digest != new_digest:  # the same weights again: no run needs a copy
                kept = replaced_teacher(folder, digest)
                if kept.is_symlink() or kept.exists() and not (kept.is_dir() and weights_digest(kept) == digest):
                    kept = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f"{kept.name}."))  # taken by something else
                    kept.rmdir()
                if not kept.exists():  # else it holds these weights already
                    os.replace(tmp, kept)
                    said.append(kept_message(folder, kept))
        except BaseException:  # the old one back in place, and the caller deletes the new one (helper-83: a
            exchange(tmp, folder)  # full disk at the kept folder's name deleted the old teacher)
            raise
        _mode_of(folder, kept_as)
    return kept


def _mode_of(folder: Path, replaced: os.stat_result | None) -> None:
    """`folder`, in place, in the mode of the one it replaced: set once it is there (helper-90: a read-only
    mode set before left a temp folder that a failure could not remove)."""
    if replaced is not None:
        os.chmod(folder, stat.S_IMODE(replaced.st_mode))


def _group_of(path, replaced: os.stat_result | None) -> None:
    """`path` in the group of the folder it replaces, where the user may give it that group (a shared
    folder's setgid group, which files made beside it lack)."""
    if replaced is not None and os.lstat(path).st_gid != replaced.st_gid:
        with contextlib.suppress(PermissionError):
            os.chown(path, -1, replaced.st_gid, follow_symlinks=False)


def exchange(a: Path, b: Path) -> None:
    """Swap two folders in one step (Linux renameat2 RENAME_EXCHANGE), so that `b` always holds one of
    them: moved aside, then replaced, a `kill -9` between the two renames left neither at `b`
    (helper-82). Where the call or the file system lacks it, the two renames, signals held over them."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        swap = libc.renameat2
    except (OSError, AttributeError):
        swap = None
    if swap is not None:
        at_cwd, rename_exchange = -100, 2
        if swap(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), rename_exchange) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(b))
    aside = Path(tempfile.mkdtemp(dir=b.parent, prefix=cut(f".{b.name}.old.")))
    os.replace(b, aside / "x")
    os.replace(a, b)
    os.replace(aside / "x", a)
    aside.rmdir()


@contextlib.contextmanager
def signals_held(said: list[str] | None = None):
    """Ctrl-C, SIGTERM and SIGHUP wait until the block is done, then reach the handlers they would have;
    `said`: what the block did, printed first if one came (the handlers only say "interrupted").
    (Python-level: blocking them in this thread alone lets another thread of the process, Ray's or
    torch's, take them.) Main thread only, as Python's signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    held = (signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []))
    before = {s: signal.getsignal(s) for s in held}
    before = {s: h for s, h in before.items() if h not in (None, signal.SIG_IGN)}  # None: set outside Python
    for s in before:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    done = False
    try:
        yield
        done = True
    finally:
        for s, h in before.items():
            signal.signal(s, h)
        if caught and said and done:
            print("\n".join(said), file=sys.stderr, flush=True)
        for s in dict.fromkeys(caught):
            if callable(before[s]):
                before[s](s, None)
            else:  # SIG_DFL: what it would have done
                signal.raise_signal(s)


def save_model(folder, model: nn.Module, arch: dict, metrics: dict, extra: dict | None = None,
               overwrite: bool = False, finish=None, log=print) -> Path:
    """Save a model folder. Written to a hidden temp folder first, then moved, so a crash leaves
    nothing half-written and a failure leaves no temp folder. `finish(tmp)` may add files first.
    A teacher it replaces is kept, and `log` says where."""
    folder = Path(folder)
    kind = "export" if extra and "spec.json" in extra else "teacher"
    tmp = new_folder(folder, overwrite, kind, log)
    try:
        save_weights(model.state_dict(), tmp / "model.safetensors")
        write_json(tmp / "arch.json", arch)
        write_json(tmp / "metrics.json", metrics)
        for name, obj in (extra or {}).items():
            write_json(tmp / name, obj)
        if finish is not None:
            finish(tmp)
        if kind == "export":  # what a later --overwrite may replace: these files as written (helper-82)
            write_json(tmp / "metrics.json", {**read_json(tmp / "metrics.json"), "files": _manifest(tmp)})
        kept = commit_folder(tmp, folder, overwrite, kind)
    finally:
        if tmp.exists():  # (what it replaced, in that folder's mode: a read-only one is ours to delete now)
            os.chmod(tmp, 0o700)
            shutil.rmtree(tmp)
    if kept:
        log(kept_message(folder, kept))
    return folder


def kept_message(folder: Path, kept: Path) -> str:
    return (f"the teacher {folder} replaced is kept at {kept}: runs searched from it need it to resume or "
            f"export (move it back for them); delete it when none does")


def check_own_files(folder: Path, error=None) -> None:
    """A Hugging Face folder's files are its own: a link out of it (`chat_template.jinja` -> a file of
    your secrets, helper-57; one in a subfolder, helper-59) was read by the tokenizer and written into
    every export; a FIFO there would hang the load. Links within the folder, and links into a hub
    cache's `blobs/` (how huggingface_hub lays out downloads, and links `--local-dir` downloads to
    them), are followed. (Paths a tokenizer's settings name: `tokenizer_copy`.)"""
    folder = Path(folder)
    home = folder.resolve()
    fail = error or ModelError
    for root, dirs, files in os.walk(folder):  # (links to folders are listed in dirs, not walked into)
        for p in sorted(Path(root) / name for name in dirs + files):
            target = p.resolve()
            if p.is_symlink() and not (target.is_relative_to(home) or _hub_blob(target)):
                raise fail(f"{p}: a link to {target}, outside the folder; n2n reads only a model folder's own files "
                           f"(a file read through a link is written into the students' exports): copy the file in")
            if target.exists() and not (target.is_file() or target.is_dir()):
                raise fail(f"{p}: expected a file or folder, found {_file_kind(target)}")


def _hub_blob(path: Path) -> bool:
    """A file of a hub cache's blobs/ (helper-61: a folder named like one held links out that os.walk
    does not follow)."""
    return (path.is_file() and path.parent.name == "blobs"
            and path.parent.parent.name.startswith(("models--", "datasets--")))


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf")


def _names_a_path(key: str) -> bool:
    """A tokenizer_config.json setting transformers opens as a path (helper-60: fast_tokenizer_files too)."""
    return key in ("vocab", "merges", "init_inputs") or key.endswith(("_file", "_files"))


def tokenizer_copy(folder: Path, copy: Path) -> None:
    """Lay out in `copy` what a tokenizer reads of `folder`: its files (weights aside; a tokenizer's may
    have any name, spm.model, bpe.codes ...) and its named chat templates, linked rather than copied
    (helper-60: a folder's 500 MB rust_model.ot was copied on every load; they passed check_own_files),
    and its two settings files without every setting that names a file by path (tokenizer_config.json's
    `vocab`, `merges`, `init_inputs`, `*_file(s)`; special_tokens_map.json's keys other than tokens), so
    that a tokenizer loaded from `copy` reads only the folder's own files."""
    for src in sorted(folder.iterdir()):
        name = src.name
        if name == "additional_chat_templates" and src.is_dir():  # (helper-60: lost from teacher and exports)
            (copy / name).symlink_to(src.resolve(), target_is_directory=True)
            continue
        if not src.is_file() or src.suffix in WEIGHT_SUFFIXES:
            continue
        if name in ("tokenizer_config.json", "special_tokens_map.json"):
            try:
                settings = json.loads(src.read_text())
            except (OSError, ValueError, RecursionError) as e:
                raise ModelError(f"{src}: not a readable JSON file ({e})") from None
            if isinstance(settings, dict):
                keep = ((lambda k: not _names_a_path(k)) if name == "tokenizer_config.json" else
                        (lambda k: k.endswith("_token") or k == "additional_special_tokens"))
                settings = {k: v for k, v in settings.items() if keep(k)}
            (copy / name).write_text(json.dumps(settings))
        else:
            (copy / name).symlink_to(src.resolve())


def _file_kind(path: Path) -> str:
    mode = os.stat(path).st_mode
    return "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"


def check_hf_folder(folder: Path) -> None:
    """What transformers would read from a Hugging Face folder besides JSON and safetensors, refused
    before it is read: pickled weights (pytorch_model.bin: torch.load, even if restricted), an
    attention implementation named as a Hub repository (transformers fetches that kernel and runs it)
    and the folder's own model or tokenizer code (`auto_map`: transformers asked the user whether to
    run it, and ran it on "y", helper-41), and links out of the folder (`check_own_files`)."""
    from search_spaces import UnsupportedModel
    from search_spaces.transformer import check_no_hub_code

    folder = Path(folder)
    check_own_files(folder)
    config = read_json(folder / "config.json")
    if not isinstance(config, dict):
        raise ModelError(f"{folder}/config.json: expected a JSON object, got {type(config).__name__}")
    tokenizer = read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    for name, settings in (("config.json", config), ("tokenizer_config.json", tokenizer)):
        try:
            if isinstance(settings, dict):
                check_no_hub_code(settings, f"{folder}/{name}")
        except UnsupportedModel as e:
            raise ModelError(str(e)) from None
    if not any(folder.glob("*.safetensors")):
        found = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack"))
        raise ModelError(f"{folder}: expected weights in model.safetensors, found {', '.join(found) or 'none'}; n2n "
                         f"reads no pickled weights: convert them once, where you trust the file, with "
                         f"model.save_pretrained(DIR, safe_serialization=True)")


def _declared_bytes(path: Path) -> int:
    """The tensor bytes a safetensors file's header declares (its data's end offset), read without
    the tensors; 0 for a file that is none (from_pretrained then says what it is)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size)) if 0 < size <= 100 << 20 else {}
        return max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return 0


def _check_hf_size(folder: Path) -> None:
    """As `_check_size`, for a Hugging Face folder: a config.json asking for far more memory than its
    safetensors files hold is refused before anything is allocated (helper-76: num_hidden_layers 600
    over MiniLM's 6 layers of weights filled 4.6 GB, then was refused as "would start random").
    The model is built on torch's meta device (no memory) to count what the config asks for."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    # the files from_pretrained reads, in its order: the file config.json names, else model.safetensors,
    # else the index's shards; each counted at most at its size (helper-79: a 90-byte file beside them
    # whose header claimed 10 GB let 200 layers through; helper-80: the order was another than its own)
    try:
        named = json.loads((folder / "config.json").read_text()).get("transformers_weights")
        index = folder / "model.safetensors.index.json"
        names = ([named] if isinstance(named, str) else ["model.safetensors"] if (folder / "model.safetensors").is_file()
                 else sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # a damaged config or index: from_pretrained says how
    files = [folder / n for n in names if isinstance(n, str) and (folder / n).is_file()]
    if not files:  # none to read: from_pretrained says so
        return
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        with torch.device("meta"):
            shell = AutoModelForSequenceClassification.from_config(config, trust_remote_code=False)
    except Exception:  # malformed or unknown: from_pretrained says how
        return
    have = sum(min(_declared_bytes(f), f.stat().st_size) for f in files)
    _refuse_oversized(shell, have, folder, "config.json", "its safetensors weights hold")


def load_hf_classifier(folder: Path, padding_checked: bool = False) -> nn.Module:
    """A local Hugging Face ...ForSequenceClassification folder, as ids -> logits (no download).

    A folder without a trained classification head (a bare encoder such as all-MiniLM-L6-v2) is
    refused: transformers would fill the head with random weights, and nothing random may enter a
    teacher. `n2n teacher train --hf FOLDER` fine-tunes one into a classifier. A tokenizer there must
    pad with the id n2n masks (`check_padding`), unless `padding_checked` when the folder was loaded."""
    from safetensors import SafetensorError
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from search_spaces import HFClassifier

    check_hf_folder(folder)  # before the logging changes below: a refusal leaves them as they were
    _check_hf_size(folder)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the missing-weights report is ours to give, in one line
    hf_logging.disable_progress_bar()  # no weight-loading bars in the user's terminal
    try:
        # in float32 whatever it was saved in, as n2n trains and measures (helper-94: a bf16 teacher was refused
        # as a network the space cannot rebuild; before, every candidate failed on mixed dtypes)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            folder, local_files_only=True, trust_remote_code=False, output_loading_info=True,
            use_safetensors=True, dtype=torch.float32)
    except (OSError, ValueError, SafetensorError) as e:  # (helper-36: a pickle named model.safetensors)
        raise ModelError(f"{folder}: not a loadable Hugging Face classifier folder ({str(e).splitlines()[0]})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        arch = ", ".join(getattr(model.config, "architectures", None) or ["?"])
        raise ModelError(f"{folder}: expected a trained sequence classifier, found a model ({arch}) without "
                         f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}, which would start random; "
                         f"fine-tune it into a teacher first: n2n teacher train --hf {folder} --dataset text:FILE --out DIR")
    # weights of layers or embeddings the config leaves out (helper-92: a config.json of fewer layers than its
    # weights loaded silently, another teacher); a pooler or pre-training head left unused is common and
    # harmless, as transformers has it (helper-94: RoBERTa classifiers on the Hub carry an unused pooler)
    unused = sorted(k for k in info.get("unexpected_keys") or [] if ".encoder.layer." in k or ".embeddings." in k)
    if unused:
        raise ModelError(f"{folder}: its weights hold {len(unused)} tensors of layers or embeddings the model config.json "
                         f"describes does not have ({', '.join(unused[:3])}{' ...' if len(unused) > 3 else ''}); "
                         f"config.json and the weights describe different models (was config.json edited, or copied "
                         f"from another model?)")
    embeddings = getattr(model.base_model, "embeddings", None)
    if hasattr(embeddings, "padding_idx") and embeddings.padding_idx is None:  # (helper-92: a traceback in teacher show)
        raise ModelError(f"{folder}/config.json: pad_token_id is null, but {type(model).__name__} counts its token "
                         f"positions from the padding id and cannot run without one; set \"pad_token_id\" to the id "
                         f"its tokenizer pads with (1 in RoBERTa's), as the model was trained")
    if not padding_checked and any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        from .data import tokenizer_for

        check_padding(model.config, tokenizer_for(folder), folder)
    return HFClassifier(model.eval()).eval()


def check_padding(config, tokenizer, folder: Path) -> None:
    """n2n masks the ids equal to config.pad_token_id (search_spaces.HFClassifier); pipeline() and
    transformers' Trainer mask the tokenizer's padding. Where the two differ (a BertConfig() left at
    pad id 0 beside a vocabulary with [PAD] elsewhere) n2n measured other figures than pipeline() and
    masked a real word (helper-67: 0.9556 against 0.9333), so such a folder is refused."""
    if (why := padding_mismatch(config, tokenizer)) is not None:
        raise ModelError(f"{folder}: {why}, so n2n would mask the one, pipeline() the other, and measure another "
                         f"model than you deploy; set \"pad_token_id\": {tokenizer.pad_token_id} in {folder}/config.json "
                         f"(as the model was trained, if with the tokenizer's attention masks, as transformers' Trainer does)")


def padding_mismatch(config, tokenizer) -> str | None:
    """How the id n2n masks as padding for `config` (search_spaces.transformer.masked_id) differs from
    the one `tokenizer` pads with, in words; None where they agree, or the tokenizer has none."""
    from search_spaces.transformer import masked_id

    pad, masked = tokenizer.pad_token_id, masked_id(config)
    if pad is None or masked == pad:
        return None
    token = f" ({tokenizer.convert_ids_to_tokens(masked)!r})" if isinstance(masked, int) and 0 <= masked < len(tokenizer) else ""
    said = f"{masked}{token}" + (" (none set: n2n masks 0)" if config.pad_token_id is None else "")
    return (f"its tokenizer pads with id {pad} ({tokenizer.pad_token!r}), its config's pad_token_id is {said}")


def read_json(path: Path, expect: type = dict):
    """A JSON file that must hold `expect`; a ModelError names the file otherwise."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as e:  # (200,000 nested brackets)
        raise ModelError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(obj, expect):
        raise ModelError(f"{path}: expected a JSON {'object' if expect is dict else expect.__name__}, "
                         f"got {type(obj).__name__}")
    return obj


def save_weights(state: dict, path: Path) -> None:
    """safetensors' save_file, with the mode a plain open() would give (it writes 0600)."""
    fd, tmp = private_temp(path)  # then a rename: a reader never sees half a file
    os.close(fd)
    try:
        try:
            save_file(_each_once(state), tmp)
        except SafetensorError as e:
            raise storage_error(e, path) or e from None
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def storage_error(e: Exception, path) -> OSError | None:
    """safetensors' I/O failures are not OSErrors: a full disk (helper-46) and `ulimit -f` (helper-82)
    were tracebacks. The OSError they are, or None for another failure."""
    if "File too large" in str(e) or "FileTooLarge" in str(e):
        return OSError(errno.EFBIG, "File too large", str(path))
    if "StorageFull" in str(e) or "No space" in str(e):
        return OSError(errno.ENOSPC, "No space left on device", str(path))
    return None


def _view(t: torch.Tensor) -> tuple:
    return t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype


def _each_once(state: dict) -> dict:
    """The tensors to save, each once: a tied weight (two keys, one tensor) under its first key, as
    safetensors' own save_model stores it (helper-81: save_file refused it), restored by `load_into`;
    other tensors that share memory copied apart."""
    out, seen, storages = {}, set(), set()
    for k, v in state.items():
        v = v.detach().cpu()
        if v.numel() and _view(v) in seen:
            continue
        seen.add(_view(v))
        shared = v.numel() and v.untyped_storage().data_ptr() in storages
        storages.add(v.untyped_storage().data_ptr())
        out[k] = v.clone(memory_format=torch.contiguous_format) if shared else v.contiguous()  # (a transposed view)
    return out


def load_into(model: nn.Module, state: dict) -> None:
    """model.load_state_dict(state, strict=True), where a tied weight the file holds once (`_each_once`)
    fills every key of the model that is the same tensor."""
    model.load_state_dict({**state, **_tied_keys(model.state_dict(), state)}, strict=True)


def _tied_keys(own: dict, state: dict) -> dict:
    """The keys of `own` (a model's state dict) that `state` lacks but holds under another key of the
    same tensor, with that tensor."""
    held = {_view(v): k for k, v in own.items() if k in state and v.numel()}
    return {k: state[held[_view(v)]] for k, v in own.items() if k not in state and v.numel() and _view(v) in held}


def weights_digest(folder: Path) -> str | None:
    """A digest of a model folder's weights file: a run records its teacher's, and checks it."""
    return file_digest(Path(folder) / "model.safetensors")


def file_digest(path: Path) -> str | None:
    """A digest of a file's bytes (None when there is no file)."""
    import hashlib

    if not Path(path).is_file():
        return None
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def bytes_digest(data: bytes) -> str:
    """`file_digest` of a file holding `data`."""
    import hashlib

    return hashlib.sha1(data).hexdigest()[:16]


def load_weights(path: Path) -> dict:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error type for damaged files
        raise _unreadable(path, e) from None


def _unreadable(path: Path, e: Exception) -> ModelError:
    return ModelError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})")


def weights_mismatch(model: nn.Module, path: Path, error: RuntimeError) -> str:
    """Why strict loading of `path` into `model` failed, naming tensors: torch's message, cut to its
    first line, named nothing ("Error(s) in loading state_dict for X:"). Strict loading itself
    decides (it fills in what modules supply, a BatchNorm's num_batches_tracked); this only words it."""
    try:
        expected, found = model.state_dict(), load_weights(path)
        shapes = {k: list(v.shape) for k, v in expected.items()}  # a lazy module's unset shapes raise
    except (RuntimeError, ValueError):
        return str(error).splitlines()[0].strip()
    found = {**found, **_tied_keys(expected, found)}  # a tied weight, stored once (load_into)
    missing = [k for k in expected if k not in found and not k.endswith("num_batches_tracked")]  # (filled in)
    unexpected = [k for k in found if k not in expected]
    shaped = [k for k in expected if k in found and shapes[k] != list(found[k].shape)]
    said = []
    if missing:
        said.append(f"{len(missing)} tensors missing from the file ({', '.join(missing[:3])}{', ...' * (len(missing) > 3)})")
    if unexpected:
        said.append(f"{len(unexpected)} tensors the model has no place for ({', '.join(unexpected[:3])}"
                    f"{', ...' * (len(unexpected) > 3)})")
    if shaped:
        k = shaped[0]
        said.append(f"{len(shaped)} tensors of another shape ({k}: the file holds {list(found[k].shape)}, the model "
                    f"built from arch.json takes {shapes[k]}{', ...' * (len(shaped) > 1)})")
    return "; ".join(said) or str(error).splitlines()[0].strip()


def _check_size(arch: dict, weights: Path) -> None:
    """Refuse an arch.json of n2n's own families that asks for far more memory than its weights file
    holds, before any of it is allocated: those families are built from the file's numbers alone, so a
    folder of a few kilobytes asking for widths of millions had the load fill the machine's memory (or
    a few GB of it) before strict loading refused the weights. Built on torch's meta device first (no
    memory); the slack allows other dtypes in the file and buffers."""
    if arch.get("family") not in ("vgg", "mlp", "resnet", "sequential", "hf-encoder"):
        return  # a factory's (the user's code, named by them) or a Hugging Face folder's (config.json)
    try:  # first, that the file is one (helper-64: a Git LFS pointer was said to be too small for arch.json)
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            f.keys()
    except Exception as e:  # safetensors raises its own error type for damaged files
        raise _unreadable(weights, e) from None
    try:
        with torch.device("meta"):
            shell = build_model(arch)
    except Exception:  # malformed: the real build says how
        return
    _refuse_oversized(shell, weights.stat().st_size, weights.parent, "arch.json", f"{weights.name} holds")


def _refuse_oversized(shell: nn.Module, have: int, folder: Path, described_by: str, holder: str) -> None:
    """The rule `_check_size` and `_check_hf_size` share: a model `shell` (on the meta device) asking
    for over 4x the `have` bytes of its weights plus 64 MiB does not belong with them."""
    params = sum(p.numel() for p in shell.parameters())
    need = sum(p.numel() * p.element_size() for p in shell.parameters())
    if need > 4 * have + (64 << 20):
        raise ModelError(f"{folder}: {described_by} describes a model of {params:,} parameters ({need / 2**20:,.0f} "
                         f"MiB), far more than {holder} ({have / 2**20:,.1f} MiB): they do not belong together (was "
                         f"{described_by} edited, or copied from another model?)")


def load_model(folder, factories=()) -> tuple[nn.Module, dict, dict]:
    """(module in eval mode, arch, metrics) from a saved folder; strict weight loading.

    A Hugging Face folder (config.json, no arch.json) loads through `from_pretrained` with
    ``local_files_only`` and without remote code. `factories`: see `build_model`."""
    from .data import found_at

    folder = Path(folder)
    metrics_path = folder / "metrics.json"
    if (folder / "config.json").is_file() and not (folder / "arch.json").is_file():
        metrics = read_json(metrics_path) if metrics_path.is_file() else {}
        model = load_hf_classifier(folder)
        return model, {"family": "hf-pretrained", "path": str(folder.resolve()), "config": model.config.to_dict(),
                       "attn_implementation": model.config._attn_implementation}, metrics
    if not folder.is_dir():  # (helper-51: "expected a model folder with model.safetensors" of a folder that is not there)
        where = "" if folder.is_absolute() else f" (a relative path is read from the folder the command runs in, {Path.cwd()})"
        raise ModelError(f"{folder}: expected a model folder, found {found_at(folder)} there{where}")

    for name in ("model.safetensors", "arch.json"):
        if not (folder / name).is_file():
            from .runfolder import folder_kind

            kind = folder_kind(folder)
            raise ModelError(f"{folder}: expected a model folder with {name}, found {found_at(folder / name)} there"
                             + (f": it is {kind}" + ("; its teacher is the folder its n2n.json names as teacher_folder"
                                                     if kind == "an n2n run folder" else "") if kind else ""))
    arch = read_json(folder / "arch.json")
    if arch.get("family") == "hf-pretrained":  # (helper-68: an arch.json could load another folder, any path)
        raise ModelError(f"{folder}/arch.json: family 'hf-pretrained' names a Hugging Face folder n2n loaded, in "
                         f"memory; n2n never writes it to a file (a Hugging Face folder has config.json, no arch.json)")
    pre = arch.get("input")
    if pre is not None and not (isinstance(pre, dict) and all(is_number(pre.get(k)) for k in ("scale", "shift"))
                                and isinstance(pre.get("shape"), list)
                                and all(isinstance(n, int) and n >= 1 for n in pre["shape"])):
        raise ModelError(f"{folder}/arch.json: expected \"input\" to hold numbers scale and shift and a shape of whole "
                         f"numbers >= 1, as n2n writes it; found {pre!r}")
    takes = arch.get("input_shape") or (arch.get("hparams") or {}).get("input_shape")
    if pre is not None and isinstance(takes, list) and pre["shape"] != takes:  # (helper-68: failed at the first call)
        raise ModelError(f"{folder}/arch.json: \"input\" prepares inputs of shape {pre['shape']} for a model that takes "
                         f"{takes}; n2n writes them equal")
    probe = arch.get("probe")
    if probe is not None and not (  # (helper-57: a string, or no input_shape, was a traceback)
            isinstance(probe, list) and len(probe) == 2 and all(isinstance(row, list) and row and all(
                is_number(v) for v in row) for row in probe) and isinstance(arch.get("input_shape"), list)
            and arch["input_shape"] and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1
                                            for n in arch["input_shape"])):
        raise ModelError(f"{folder}/arch.json: expected \"probe\" to hold two rows of outputs and \"input_shape\" a list "
                         f"of whole numbers >= 1, as n2n writes them; found probe {reprlib.repr(probe)}, input_shape "
                         f"{reprlib.repr(arch.get('input_shape'))}")
    _check_size(arch, folder / "model.safetensors")
    from search_spaces import UnsupportedModel

    try:
        model = build_model(arch, factories)  # refuses an unnamed factory before reading anything else
    except UnsupportedModel as e:  # which folder (helper-68: a run's teacher, unnamed)
        raise type(e)(f"{folder}: {e}") from None
    try:
        load_into(model, load_weights(folder / "model.safetensors"))
    except RuntimeError as e:
        raise ModelError(f"{folder}: weights do not match arch.json: {weights_mismatch(model, folder / 'model.safetensors', e)}") from None
    if arch.get("probe") is not None:  # a student of the user's own code: does that code still build it?
        from search_spaces import probe_gap

        gap = probe_gap(model, arch["input_shape"], arch["probe"])
        if gap is not None:
            raise ModelError(
                f"{folder}: this model computes other outputs than when it was saved (up to {gap:.3g} apart on n2n's "
                f"probe input), so the code that builds it ({(arch.get('base') or {}).get('factory')}) changed since; "
                "its weights and figures belong to the old network: restore that code, or, to accept the new "
                "network as it is, delete \"probe\" from arch.json")
    metrics = read_json(metrics_path) if metrics_path.is_file() else {}
    return model.eval(), arch, metrics


def valid_device(name: str) -> bool:
    """Devices n2n can train on: checked when a config or command line is read, not inside a trial."""
    return isinstance(name, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name) is not None


def device_for(requested: str = "auto") -> torch.device:
    """The device to train on; one this machine's torch cannot use is refused (ModelError), not left
    to fail inside the first step."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not (torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()):
        have = f"{torch.cuda.device_count()} CUDA devices"
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        have = "no MPS"
    else:
        return dev
    raise ModelError(f"device {requested}: the torch {torch.__version__} of this machine ({socket.gethostname()}) "
                     f"cannot use it ({have})")  # on a cluster, a worker node: named (helper-44)
