"""Datasets with fixed, seeded train / validation / test splits, held in memory as tensors.

Built-ins come from packages that generate or ship them (nothing is downloaded):
- ``mnist1d``: MNIST-1D made by the `mnist1d` package's generator (10,000 sequences of length 40,
  10 classes), cached on disk after the first run;
- ``digits``: scikit-learn's 8x8 digits (1,797 images, 10 classes).
User data: ``npz:PATH`` (arrays ``x`` and ``y``, optionally with your own split), ``folder:PATH``
(``PATH/<class>/<image>``) or ``text:PATH`` (a CSV or JSONL file of ``text,label`` [``split``], tokenised
with the teacher's own tokenizer).

The split belongs to the data and the teacher, never to a search: a teacher folder records the split
it was trained and measured on (``Dataset.split``: dataset, split seed or "given", a fingerprint of
the data) and every search and export of it loads that split again (`load_split`), refusing data
whose fingerprint differs. The reward uses the validation split; the test split is only for reports.

Float features are standardised with training-split statistics as ``x * scale + shift`` on the raw
inputs (``Dataset.preprocess``); exported students carry the same two numbers and apply them, so they
take the raw inputs (`n2n.load_student`). Integer features (token ids) are kept as they are. Like the
split, the two numbers belong to the teacher: a teacher folder records those it was trained with
(``arch.json`` "input") and searches of it use them (`load_split`'s `preprocess`). Computed afresh, they
come from float64 sums in numpy, whatever the thread count (torch's float32 reductions change in
the last bits with it, and with them every distilled student's figures).
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import SEED_LIMIT

SPLIT = (0.7, 0.15, 0.15)  # train / validation / test
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"}
MAX_TOKENS = 131_072  # tokens per text a split record may ask for (past the longest encoders'; a teacher's own
# positions bound it further where the teacher is known, n2n.search.teacher_data)
MAX_SPARSE_CLASSES = 10_000  # class ids past the sample count are refused beyond this (an output unit each)


class DataError(ValueError):
    """User data that cannot be loaded; the message says what was expected."""


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    split: dict  # {"dataset", "seed" (None when the data came split), "fingerprint", "sizes"}
    index: dict  # "train" / "val" / "test" -> positions in the raw arrays, as the loader returned them
    preprocess: dict | None = None  # {"scale", "shift", "shape"}: model input = raw * scale + shift; None for ids
    labels: list[str] | None = None  # class names, when the data has them (text: string labels)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}

    def unused_classes_warning(self, training: bool = True) -> str | None:
        """Labels are class ids: with labels 1, 2, 3 a classifier made for this data has an output 0
        that no sample trains. Said, not changed: renumbering would move every prediction. Classes in
        the validation or test split only (a split of the user's own) are said too (helper-41).
        `training`: a teacher is about to be trained on this data (else a search reads it)."""
        seen = set(torch.cat([self.y_train, self.y_val, self.y_test]).unique().tolist())
        unused = [c for c in range(self.num_classes) if c not in seen]
        untrained = sorted(seen - set(self.y_train.unique().tolist()))
        said = []
        if unused:
            said.append(f"labels are class ids, and {len(unused)} of the ids 0..{self.num_classes - 1} never appear "
                        f"({_listed(unused)}); " + (
                            "a teacher trained here has an output for each id, trained by no sample. Number the "
                            "classes 0..K-1 to avoid that" if training else
                            "the teacher's outputs for them are distilled from, but never scored"))
        if untrained:
            named = _listed([f"{c} ({self.labels[c]})" if self.labels else str(c) for c in untrained])
            said.append(f"class{'es' if len(untrained) > 1 else ''} {named} appear{'' if len(untrained) > 1 else 's'} "
                        f"only in the validation or test split; " + (
                            "no training sample teaches a teacher trained here, so every such sample is scored wrong"
                            if training else "students distil on the training split only, where no sample is of "
                            f"{'these classes' if len(untrained) > 1 else 'that class'}"))
        return f"warning: {self.name}: " + "; and ".join(said) if said else None


def _listed(items: list) -> str:
    return f"{', '.join(map(str, items[:5]))}{', ...' if len(items) > 5 else ''}"


def cache_dir() -> Path:
    root = Path(os.environ.get("N2N_CACHE") or Path.home() / ".cache" / "n2n")
    if root.exists() and not root.is_dir():
        raise DataError(f"N2N_CACHE: expected a folder for n2n's cache, {root} is a file")
    return root


def found_at(path: Path) -> str:
    """What is at `path`, in words, for "expected a file at PATH, found ..." (helper-68: a folder, a
    device and nothing were all "none")."""
    path = Path(path)
    if not path.exists():
        return "a link to nothing" if path.is_symlink() else "nothing"
    return "a folder" if path.is_dir() else "a file" if path.is_file() else "no plain file (a device, FIFO or socket)"


def absolute(name: str) -> str:
    """A dataset name with its file or folder made absolute (``npz:data.npz`` -> ``npz:/home/me/data.npz``).
    Names are recorded (a teacher's metrics.json, a run's n2n.json, an export's metrics.json) and read
    again from other directories, where a relative path names another file or none."""
    kind, sep, path = name.partition(":")
    if sep and kind in ("npz", "folder", "text") and path:  # joined, not normalised: `link/..` is not `.`
        return f"{kind}:{os.path.join(os.getcwd(), os.path.expanduser(path))}"
    return name


def load_dataset(name: str, seed: int = 0, tokenizer=None, max_length: int = 128,
                 preprocess: dict | None = None, images: int | None = None) -> Dataset:
    """A dataset by name: 'mnist1d', 'digits', 'npz:PATH' or 'folder:PATH', split by `seed` (70/15/15)
    unless the data comes with its own split (npz: ``x_train``... or a ``split`` array).

    Raw inputs (what `n2n.load_student` takes): mnist1d the generator's ``x`` as (N, 1, 40); digits
    scikit-learn's ``load_digits().images`` as (N, 1, 8, 8); npz the file's ``x``; folder the pixels as
    (C, H, W) values in 0..255. `images`: how image files are read (IMAGES, or 1 for a split an n2n
    before 2026-12-06 recorded)."""
    if name.startswith("text:"):
        return _text_dataset(name, seed, tokenizer, max_length)
    x, y, parts = load_raw(name, images)
    ds = split(name, x, y, seed, parts, preprocess)
    if name.startswith("folder:"):  # class ids are the sub-folders in sorted order: recorded, so a user can tell
        ds.split["labels"] = ds.labels = _classes(Path(name[7:]))
        ds.split["images"] = images or IMAGES
    return ds


# How an image folder's files are read, recorded with a folder's split. 1: palette images as grey and
# grey-with-alpha as colour (until 2026-12-06); 2: each as the colours it shows (_read). A teacher
# recorded with 1 is read with 1 again: its inputs, and so its fingerprint, stay as it was trained.
IMAGES = 2


def load_raw(name: str, images: int | None = None) -> tuple[np.ndarray, np.ndarray, list | None]:
    """(x, y, parts) before any preprocessing: the inputs an exported student takes. `parts` are the
    train/val/test index arrays of data that brings its own split, else None. ``Dataset.index``
    gives the positions of each split in these arrays. `images`: see load_dataset."""
    if name == "mnist1d":
        return (*_mnist1d(), None)
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images.astype(np.float32)[:, None], d.target, None  # (N, 1, 8, 8), values 0..16
    if name.startswith("npz:"):
        return _npz(Path(name[4:]))
    if name.startswith("folder:"):
        return (*_folder(Path(name[7:]), images or IMAGES), None)
    if name.startswith("text:"):  # (helper-49: it was called an unknown dataset)
        raise DataError(f"{name}: raw arrays are for numeric data; a text dataset's raw inputs are its texts, "
                        f"tokenised by the teacher's tokenizer: load_dataset({name!r}, tokenizer=TEACHER_FOLDER) "
                        f"gives the split, its index the rows of each part")
    raise DataError(f"unknown dataset {name!r}: expected 'mnist1d', 'digits', 'npz:PATH', 'folder:PATH' or 'text:PATH'")


def load_split(name: str, record: dict, tokenizer=None, preprocess: dict | None = None) -> Dataset:
    """The split a teacher recorded (`Dataset.split`), checked against the data found now.
    `tokenizer`: the teacher's folder, for text datasets. `preprocess`: the standardisation the
    teacher was trained with (its arch.json "input"), used instead of recomputing it."""
    if not isinstance(record, dict):
        raise DataError(f"{name}: expected the teacher's split record (metrics.json \"split\") to be an object, "
                        f"found {type(record).__name__}")
    for key, low, high in (("seed", 0, SEED_LIMIT - 1), ("max_length", 1, MAX_TOKENS)):  # (helper-76: a negative seed
        value = record.get(key)                                                            # was a traceback)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
            raise DataError(f"{name}: expected the split record's {key!r} to be a whole number {low}..{high}, found "
                            f"{value!r}")
    old_images = name.startswith("folder:") and record.get("fingerprint") and "images" not in record
    if record.get("images", IMAGES) not in (1, IMAGES):
        raise DataError(f"{name}: expected the split record's \"images\" to be 1 or {IMAGES} (how images are read), "
                        f"found {record['images']!r}")
    ds = load_dataset(name, seed=record.get("seed") or 0, tokenizer=tokenizer, max_length=record.get("max_length", 128),
                      preprocess=preprocess, images=1 if old_images else record.get("images"))
    if record.get("fingerprint") and ds.split["fingerprint"] != record["fingerprint"]:
        raise DataError(f"{name}: expected the data the teacher was trained on ({_described(record)}), found "
                        f"{_differences(record, ds.split)}")
    if record.get("fingerprint") and "parts" not in record:  # a teacher's record from before the parts' digests
        ds.split.pop("parts", None)
    return ds


def _sizes(record: dict) -> list[int] | None:
    sizes = record.get("sizes")
    sizes = [sizes.get(k) for k in ("train", "val", "test")] if isinstance(sizes, dict) else []
    return sizes if len(sizes) == 3 and all(isinstance(n, int) for n in sizes) else None


def _described(record: dict, named: bool = True) -> str:
    sizes = _sizes(record)
    shape = f"{sum(sizes)} samples, train/val/test {'/'.join(map(str, sizes))}, " if sizes else ""
    return f"{str(record.get('dataset')) + ': ' if named else ''}{shape}fingerprint {record['fingerprint']}"


def _differences(record: dict, found: dict) -> str:
    """What differs between the recorded split and the one found: the user must learn whether the
    file gained or lost samples, its labels changed, or only its train/val/test assignment did."""
    was, now = _sizes(record), _sizes(found)
    if was is not None and was != now:
        what = _described(found, named=False)
        if found["dataset"].startswith("folder:") and sum(now) < sum(was) and "parts" not in record:
            # a teacher of an n2n that recorded no parts' digests may have counted them
            what += (" (n2n now skips hidden files and folders, names starting with '.': an earlier n2n counted "
                     "them)")
        return what
    parts = record.get("parts") if isinstance(record.get("parts"), dict) else {}
    changed = [what for what, k in (("its inputs (x)", "x"), ("its labels (y)", "y"),
                                    ("which samples are train, val or test", "split"))
               if k in parts and parts[k] != found["parts"][k]]
    if changed:
        return f"the same sizes but other data: {', '.join(changed)} changed (fingerprint {found['fingerprint']})"
    return f"the same sizes but other inputs, labels or split (fingerprint {found['fingerprint']})"


def fingerprint(x: np.ndarray, y: np.ndarray, parts) -> str:
    """Identifies the samples, the labels and which samples are in train, val and test (not where
    they came from: a moved file keeps its fingerprint)."""
    return _digest(np.ascontiguousarray(x), np.ascontiguousarray(y), *_index_arrays(parts))


def _part_digests(x: np.ndarray, y: np.ndarray, parts) -> dict:
    """The inputs, the labels and the split apart, so a refused dataset can be told what changed
    (the fingerprint says only that something did)."""
    return {"x": _digest(np.ascontiguousarray(x)), "y": _digest(np.ascontiguousarray(y)),
            "split": _digest(*_index_arrays(parts))}


def _index_arrays(parts) -> list[np.ndarray]:
    return [np.asarray(p, dtype=np.int64) for p in parts]


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(f"{a.dtype}{a.shape}".encode())
        try:  # the array's own bytes, not a copy of them (a large x is hashed twice per load)
            h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
        except (TypeError, ValueError):  # a dtype memoryview cannot cast: the bytes are the same
            h.update(a.tobytes())
    return h.hexdigest()[:16]


def split(name: str, x: np.ndarray, y: np.ndarray, seed: int = 0, parts: list | None = None,
          preprocess: dict | None = None) -> Dataset:
    """Split into train/val/test: `parts` (index arrays) when the data brings its own split, else
    seeded 70/15/15. Float features are standardised with `preprocess` when given (a teacher's),
    else with train statistics (see module doc); integer features (token ids) are kept as they are."""
    n = len(y)
    if n < 10:
        raise DataError(f"{name}: expected at least 10 samples, got {n}")
    x_np = np.asarray(x)
    if not np.issubdtype(x_np.dtype, np.integer):
        bad = ~np.isfinite(x_np.reshape(n, -1)).all(axis=1)
        if bad.any():  # one NaN would turn every standardised feature into NaN
            raise DataError(f"{name}: expected finite features, found NaN or inf in {int(bad.sum())} samples "
                            f"(the first at index {int(np.argmax(bad))}); clean or drop them first")
    classes = np.unique(np.asarray(y))
    if len(classes) < 2:
        raise DataError(f"{name}: expected at least 2 classes, every label is {classes.tolist()}")
    given = parts is not None
    if not given:
        perm = np.random.default_rng(seed).permutation(n)
        n_train, n_val = int(SPLIT[0] * n), int(SPLIT[1] * n)
        parts = np.split(perm, [n_train, n_train + n_val])
    # absolute: the record is read again from other folders (helper-51: a text teacher's said `text:train.csv`)
    record = {"dataset": absolute(name), "seed": None if given else seed, "fingerprint": fingerprint(x_np, np.asarray(y), parts),
              "sizes": {k: len(p) for k, p in zip(("train", "val", "test"), parts)},
              "parts": _part_digests(x_np, np.asarray(y), parts)}
    y = torch.as_tensor(np.asarray(y), dtype=torch.long)
    if np.issubdtype(x_np.dtype, np.integer):
        x, preprocess = torch.as_tensor(np.ascontiguousarray(x_np), dtype=torch.long), None
    else:
        if preprocess is not None and not {"scale", "shift", "shape"} <= set(preprocess):
            raise DataError(f"{name}: the teacher's standardisation (arch.json \"input\") needs scale, shift and "
                            f"shape, as n2n writes it; found {sorted(preprocess)}")
        # another shape is other data: the split's fingerprint or the teacher's input shape refuses it
        # later, with the message that says so
        if preprocess is None or list(preprocess["shape"]) != list(x_np.shape[1:]):
            preprocess = _standardisation(x_np[np.asarray(parts[0])])
        x = standardise(torch.as_tensor(np.ascontiguousarray(x_np), dtype=torch.float32), preprocess)
    tr, va, te = (torch.as_tensor(p) for p in parts)
    index = {k: np.asarray(p) for k, p in zip(("train", "val", "test"), parts)}
    return Dataset(name, x[tr], y[tr], x[va], y[va], x[te], y[te], int(y.max()) + 1, record, index, preprocess)


def _standardisation(train: np.ndarray, chunk: int = 1 << 20) -> dict:
    """Scale and shift that standardise `train` (N, *shape), from float64 sums over the float32 values
    the model sees, in chunks (no float64 copy of the whole split). numpy sums the same way with any
    number of threads, unlike torch's float32 reductions, so a process's thread count cannot change
    them; teachers record them (arch.json "input") and every later use takes the recorded ones."""
    flat = train.reshape(-1)
    parts = range(0, len(flat), chunk)
    mean = sum(flat[i:i + chunk].astype(np.float32).sum(dtype=np.float64) for i in parts) / len(flat)
    sq = sum(np.square(flat[i:i + chunk].astype(np.float32).astype(np.float64) - mean).sum() for i in parts)
    std = max(float(np.sqrt(sq / max(len(flat) - 1, 1))), 1e-8)
    return {"scale": 1.0 / std, "shift": -float(mean) / std, "shape": list(train.shape[1:])}


def standardise(x: torch.Tensor, preprocess: dict) -> torch.Tensor:
    """Raw float inputs -> model inputs. The one definition the loader and exported students share,
    so a student on raw inputs computes exactly what it computed in n2n."""
    return x.to(torch.float32) * preprocess["scale"] + preprocess["shift"]


def unstandardise(z: torch.Tensor, preprocess: dict) -> torch.Tensor:
    """Model inputs -> the raw inputs they came from (what an exported student takes)."""
    return (z - preprocess["shift"]) / preprocess["scale"]


def _mnist1d() -> tuple[np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = 10_000
    tag = hashlib.sha1(repr(sorted(vars(args).items())).encode()).hexdigest()[:10]
    path = cache_dir() / "data" / f"mnist1d-{tag}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                return f["x"], f["y"]
        except Exception:  # a damaged copy (cut short, overwritten): it is a cache, so make it again
            pass
    # make_dataset reseeds numpy's global RNG; keep the caller's RNG untouched.
    state = np.random.get_state()
    try:
        d = make_dataset(args)  # the generator, never get_dataset (which downloads)
    finally:
        np.random.set_state(state)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)[:, None]  # (N, 1, 40)
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # two processes filling the cache at once
    try:
        np.savez(tmp, x=x, y=y)
        os.replace(tmp, path)
    except OSError as e:  # (helper-82: a full disk left the half-written file, each retry another)
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None
    return x, y


SPLIT_NAMES = ("train", "val", "test")


@functools.lru_cache(maxsize=1)
def memory_for_data() -> int:
    """Bytes a dataset may take once read: a quarter of this machine's memory, or of the container's
    where a cgroup limits it (helper-79), as n2n holds it whole, with float32 copies and tensors beside
    it. Read once per process (helper-80: twice per image of a folder)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no bound
        return 1 << 62
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):  # cgroup v2, v1
        try:
            memory = min(memory, int(Path(limit).read_text().strip()))
        except (OSError, ValueError):  # none, or "max"
            continue
    return memory // 4


def _check_fits(where: str, need: int, what: str) -> None:
    """Refuse data that would take more than `memory_for_data` once read, before it is read
    (helper-76: a 1 MB npz decompressed to 5.9 GB, a 3.7 MB image folder to 15 GB as float32)."""
    def size(n: int) -> str:
        return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"

    if need > memory_for_data():
        raise DataError(f"{where}: {what} {size(need)} once read, more than a quarter of the memory this machine "
                        f"(or its container) has ({size(4 * memory_for_data())}): n2n holds a dataset in memory, with "
                        f"copies; use fewer or smaller samples")


def _npz_bytes(f, names) -> tuple[int, str]:
    """The bytes the npz arrays `names` declare in their headers, read without the arrays, and the
    largest as 'x (shape, dtype)'."""
    total, largest = 0, (0, "")
    members = set(f.zip.namelist())
    for name in names:
        member = name if name in members else f"{name}.npy"  # as np.load picks (helper-79, helper-80)
        try:
            with f.zip.open(member) as fp:
                version = np.lib.format.read_magic(fp)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(fp)
        except Exception as e:  # what numpy itself could not read either: damaged, or made to get past this
            raise DataError(f"npz dataset {f.zip.filename}: array {name!r} has no readable header ({e})") from None
        # as n2n holds them: integers as int64 token ids, floats as float32 (helper-79: uint8 counted 1 byte)
        size = int(np.prod(shape, dtype=object)) * max(dtype.itemsize, 8 if dtype.kind in "iu" else 4)
        total += size
        largest = max(largest, (size, f"{name} {tuple(shape)} {dtype}"))
    return total, largest[1]


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray, list | None]:
    """Arrays ``x``, ``y`` (seeded split), ``x``, ``y``, ``split`` ('train'/'val'/'test' or 0/1/2 per
    sample), or ``x_train``, ``y_train``, ``x_val``, ``y_val``, ``x_test``, ``y_test`` (used as given)."""
    if not path.is_file():
        raise DataError(f"npz dataset: expected a file at {path}, found {found_at(path)}")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04":  # what np.savez writes; anything else numpy would try to unpickle
        raise DataError(f"npz dataset {path}: expected a .npz archive (numpy.savez), the file starts with {head!r}")
    try:
        f = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(f"npz dataset {path}: not a readable .npz file ({e})") from None
    with f:
        separate = {f"{a}_{s}" for a in "xy" for s in SPLIT_NAMES}
        if not ({"x", "y"} <= set(f.files) or separate <= set(f.files)):
            raise DataError(f"npz dataset {path}: expected arrays 'x' and 'y' (optionally 'split'), or "
                            f"x_train/y_train/x_val/y_val/x_test/y_test; found {sorted(f.files)}")
        need, largest = _npz_bytes(f, dict.fromkeys(n for n in f.files if n in separate | {"x", "y", "split"}))
        _check_fits(f"npz dataset {path}", need, f"its arrays (the largest {largest}) hold")
        try:
            if separate <= set(f.files):
                xs, ys = [f[f"x_{s}"] for s in SPLIT_NAMES], [f[f"y_{s}"] for s in SPLIT_NAMES]
                bad = [s for s, a, b in zip(SPLIT_NAMES, xs, ys) if len(a) != len(b) or len(a) == 0]
                if bad:
                    raise DataError(f"npz dataset {path}: expected as many labels as samples, at least one, in "
                                    f"x_{bad[0]}/y_{bad[0]}")
                shapes = {s: a.shape[1:] for s, a in zip(SPLIT_NAMES, xs)}
                if len(set(shapes.values())) > 1:  # np.concatenate's error read as an object array's
                    raise DataError(f"npz dataset {path}: expected one sample shape in x_train, x_val and x_test, "
                                    f"found {', '.join(f'x_{s} {list(v)}' for s, v in shapes.items())}")
                ends = np.cumsum([len(a) for a in xs])
                x, y, parts = np.concatenate(xs), np.concatenate(ys), list(np.split(np.arange(ends[-1]), ends[:-1]))
            else:
                x, y = f["x"], f["y"]
                parts = _split_array(path, f["split"], len(y)) if "split" in f.files else None
        except DataError:
            raise
        except ValueError as e:  # object arrays need pickle, which n2n never loads
            raise DataError(f"npz dataset {path}: expected numeric arrays, found one that needs pickle ({e}); "
                            "save 'x' and 'y' as numbers") from None
        except Exception as e:
            raise DataError(f"npz dataset {path}: damaged ({e})") from None
    if len(x) != len(y):
        raise DataError(f"npz dataset {path}: expected as many labels as samples, got {len(x)} samples and {len(y)} labels")
    if len(y) == 0:  # helper-36: a numpy traceback from y.min()
        raise DataError(f"npz dataset {path}: expected samples, found none (x and y are empty)")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise DataError(f"npz dataset {path}: expected 'y' to be 1-D non-negative integer labels, got dtype {y.dtype} shape {y.shape}")
    _check_class_ids(f"npz dataset {path}", int(y.max()), len(y), len(np.unique(y)))  # int: uint64 past 2**63
    if np.iscomplexobj(x) or not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(f"npz dataset {path}: expected real-valued 'x' (floats, or integer token ids), got dtype {x.dtype}")
    if x.ndim < 2:  # a model needs a vector (or more) per sample: (N,) is one number each
        raise DataError(f"npz dataset {path}: expected 'x' with a feature axis, (N, L), (N, C, L) or (N, C, H, W), "
                        f"got shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.int64), y.astype(np.int64), parts  # token ids (N, T)
    if x.ndim == 2:
        x = x[:, None]  # (N, L) -> (N, 1, L)
    return x.astype(np.float32), y.astype(np.int64), parts


def _check_class_ids(what: str, top: int, n: int, distinct: int) -> None:
    """The output layer has a unit per id up to the largest: ids far past the sample count would ask
    for a layer no machine holds (2**40 units) or wrap past int64."""
    if top + 1 > max(n, MAX_SPARSE_CLASSES):
        raise DataError(f"{what}: expected class ids 0..K-1, found the id {top} among {n:,} samples ({distinct:,} "
                        f"distinct): a {top + 1:,}-way output layer; number the classes 0..K-1")


def _split_array(path: Path, split: np.ndarray, n: int) -> list:
    """A per-sample split array -> index arrays of train, val, test."""
    names = split.astype(str) if split.dtype.kind in "US" else None
    if len(split) != n or (names is None and not np.isin(split, [0, 1, 2]).all()) or \
            (names is not None and not np.isin(names, SPLIT_NAMES).all()):
        raise DataError(f"npz dataset {path}: expected 'split' to give each of the {n} samples 'train', 'val' or "
                        f"'test' (or 0, 1, 2), got {np.unique(split)[:5].tolist()} for {len(split)} samples")
    parts = [np.flatnonzero(names == s if names is not None else split == i) for i, s in enumerate(SPLIT_NAMES)]
    empty = [s for s, p in zip(SPLIT_NAMES, parts) if len(p) == 0]
    if empty:
        raise DataError(f"npz dataset {path}: the 'split' array gives no sample to {empty[0]!r}")
    return parts


def read_text(path: Path) -> tuple[list[str], list, list | None]:
    """(texts, labels, parts) from a CSV (header with ``text`` and ``label``) or JSONL file (one
    object per line with those keys); an optional ``split`` column/key gives train/val/test."""
    import csv
    import json

    if not path.is_file():
        raise DataError(f"text dataset: expected a CSV or JSONL file at {path}, found {found_at(path)}")
    rows = []
    try:
        if path.suffix.lower() in (".jsonl", ".json"):
            for i, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):  # -sig: a BOM or none
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise DataError(f"text dataset {path}: line {i}: expected a JSON object, got {type(row).__name__}")
                    rows.append(row)
        else:
            # utf-8-sig: Excel's "CSV UTF-8" starts with a BOM, which became part of the first column's name
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                for row in reader:
                    extra = row.pop(None, [])  # fields past the header's (helper-41: an unquoted comma)
                    short = [k for k, v in row.items() if v is None]  # fields the line lacks
                    if any(v.strip() for v in extra) or short:
                        header = reader.fieldnames
                        hint = (f"is the file separated by {sep!r}? n2n reads comma-separated files"
                                if len(header) == 1 and (sep := next((c for c in ";\t|" if c in header[0]), None))
                                else "a comma in a text that is not quoted? Quote such texts (\"nice, fun\"), or "
                                     "write the file as JSONL" if extra else "a line break in a text that is not quoted?")
                        raise DataError(f"text dataset {path}: line {reader.line_num} has {len(row) - len(short) + len(extra)} "
                                        f"fields, the header {len(header)} ({', '.join(header)}); {hint}")
                    rows.append(row)
    except DataError:
        raise
    except (ValueError, csv.Error, RecursionError) as e:  # (ValueError: a number too long for Python too)
        raise DataError(f"text dataset {path}: not a readable CSV/JSONL file of text,label ({e})") from None
    for i, row in enumerate(rows, 1):
        if not {"text", "label"} <= set(row):
            raise DataError(f"text dataset {path}: expected 'text' and 'label' in every row; row {i} has {sorted(row)}")
        if not isinstance(row["text"], str) or row["label"] in (None, ""):  # (helper-49: said "has ['label', 'text']")
            what = "an empty label" if row["label"] in (None, "") else f"a text of type {type(row['text']).__name__}"
            raise DataError(f"text dataset {path}: expected a text (a string) and a label in every row; row {i} has {what}")
    texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
    parts = None
    if rows and all("split" in r for r in rows):
        parts = _split_array(path, np.array([str(r["split"]) for r in rows]), len(rows))
    elif any("split" in r for r in rows):  # a split for some rows only: a seeded one would mix test into training
        i = next(i for i, r in enumerate(rows, 1) if "split" not in r)
        raise DataError(f"text dataset {path}: expected 'split' in every row once any row has one; row {i} has "
                        f"{sorted(rows[i - 1])}")
    return texts, labels, parts


def _label_ids(path: Path, labels: list) -> tuple[np.ndarray, list[str] | None]:
    """Integer labels as they are; any other labels (strings) -> ids in sorted order, with their names."""
    try:
        ints = [int(v) for v in labels]
        integers = all(str(i) == str(v).strip() for i, v in zip(ints, labels)) and min(ints) >= 0
    except (TypeError, ValueError):
        integers = False
    if integers:
        _check_class_ids(f"text dataset {path}", max(ints), len(ints), len(set(ints)))
        return np.asarray(ints, dtype=np.int64), None
    names = sorted({str(v) for v in labels})
    numbers = [n for n in names if n.strip().lstrip("+-").isdigit()]  # -1/0/1 are names, all of them (helper-52)
    if numbers and len(numbers) < len(names):  # (helper-49: 0/1/2 beside food/sports/tech became 6 classes unsaid)
        words = [n for n in names if n not in numbers]
        raise DataError(f"text dataset {path}: expected labels that are all class ids or all names, found both: ids "
                        f"{', '.join(numbers[:5])} and names {', '.join(words[:5])}; write every label one way")
    index = {n: i for i, n in enumerate(names)}
    return np.asarray([index[str(v)] for v in labels], dtype=np.int64), names


def tokenizer_for(folder):
    """The tokenizer saved in a Hugging Face folder (offline, no remote code), loaded from a copy of
    its tokenizer files alone: transformers opens any path its settings name (tokenizer_config.json's
    `vocab`, `merges`, `*_file` and `init_inputs`, special_tokens_map.json's keys, relative to the
    folder the command runs in), so a folder naming ~/.aws/credentials put that file into the teacher
    and every export (helper-58, helper-59). The copy holds none of those: transformers finds each
    file by its own name."""
    import atexit
    import shutil

    from transformers import AutoTokenizer

    from .models import check_own_files, tokenizer_copy
    from .tempdirs import marked_temp, remove_stale_temps

    check_own_files(folder, DataError)
    # kept while the process lives: a slow tokenizer's save_pretrained reads its files again (helper-60);
    # marked, so that the next load removes the copies of processes killed outright
    remove_stale_temps(None, "n2n-tokenizer-")
    temp = marked_temp("n2n-tokenizer-")
    atexit.register(shutil.rmtree, temp, True)
    copy = Path(temp, "tokenizer")  # beside the marker: a folder's own file of its name is linked like any other
    copy.mkdir()
    tokenizer_copy(Path(folder), copy)
    try:
        tokenizer = AutoTokenizer.from_pretrained(copy, local_files_only=True, trust_remote_code=False)
    except Exception as e:  # (helper-59: a WordPiece file missing was a plain Exception)
        raise DataError(f"{folder}: expected a Hugging Face tokenizer there to tokenise a text dataset "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    tokenizer.name_or_path = str(folder)
    for flag in ("is_local", "local_files_only"):  # how the copy was loaded, which save_pretrained would write
        tokenizer.init_kwargs.pop(flag, None)
    return tokenizer


def token_ids(tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    """`texts` as token ids (N, max_length), padded on the right whatever the tokenizer's side: a text's
    positions are then those it has alone, as pipeline() reads one text (helper-92: a left-padding
    tokenizer shifted every BERT position, and n2n measured 0.90 where pipeline() gave 0.867)."""
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        return tokenizer(texts, padding="max_length", truncation=True, max_length=max_length,
                         return_tensors="np")["input_ids"].astype(np.int64)
    finally:
        tokenizer.padding_side = side


def padding_right(tokenizer, log, what: str) -> None:
    """Make `tokenizer`, about to be saved with `what`, pad on the right, as `token_ids` padded what n2n
    measured (helper-95: an export's tokenizer kept "left", and ids made with it, as its README says,
    scored 0.63 where metrics.json said 0.93)."""
    if tokenizer.padding_side != "right":
        tokenizer.padding_side = "right"
        log(f"the tokenizer saved with {what} pads on the right, as n2n measured it (it was set to pad on the left, "
            f"which shifts every text's positions)")


def _text_dataset(name: str, seed: int, tokenizer, max_length: int) -> Dataset:
    path = Path(name[5:])
    if tokenizer is None:
        raise DataError(f"{name}: a text dataset is tokenised with the teacher's tokenizer; use it with a Hugging "
                        "Face teacher folder (teacher.path, or `n2n teacher train --hf CHECKPOINT`; in Python, "
                        "load_dataset(NAME, tokenizer=FOLDER))")
    if max_length < 2:
        raise DataError(f"{name}: expected max_length >= 2, got {max_length}")
    texts, labels, parts = read_text(path)
    y, names = _label_ids(path, labels)
    tok = tokenizer if hasattr(tokenizer, "__call__") and not isinstance(tokenizer, (str, Path)) else tokenizer_for(tokenizer)
    ds = split(name, token_ids(tok, texts, max_length), y, seed, parts)  # (N, max_length) token ids
    ds.split["max_length"] = max_length
    if names:
        ds.split["labels"] = ds.labels = names
    return ds


def _classes(root: Path) -> list[str]:
    """An image folder's class names, class id i the i-th; hidden folders (.git, .ipynb_checkpoints) are no class."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read(img, images: int = IMAGES):
    """An image as "L" (grey) or "RGB" (colour), alpha dropped. A palette image is colour if any colour
    it uses is (helper-36: colour GIFs became grey without a word when every palette image was read
    as "L"); `images` 1 reads as n2n did before (see IMAGES)."""
    if images == 1:
        return img.convert("L" if img.mode in ("L", "1", "P") else "RGB")
    if img.mode in ("1", "L", "LA", "La"):
        return img.convert("L")
    if img.mode not in ("P", "PA"):
        return img.convert("RGB")
    palette = np.asarray(img.getpalette() or [0, 0, 0]).reshape(-1, 3)  # (colours, RGB)
    used = np.unique(np.asarray(img if img.mode == "P" else img.getchannel(0)))  # the palette indices in use
    used = palette[used[used < len(palette)]]
    grey = (used == used[:, :1]).all()
    if "transparency" in img.info:  # through RGBA: Pillow warns when converting such a palette directly
        img = img.convert("RGBA")
    return img.convert("L" if grey else "RGB")


def _folder(root: Path, images: int = IMAGES) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    if not root.is_dir():
        raise DataError(f"image folder: expected a directory at {root}, found none")
    classes = _classes(root)
    if len(classes) < 2:
        raise DataError(f"image folder {root}: expected one sub-folder per class (at least 2), found {classes}")
    xs, ys, size, need = [], [], None, 0
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES or f.name.startswith("."):  # ._x.png: macOS metadata
                continue
            if not f.is_file():  # helper-28: a FIFO named zz.png blocked Image.open forever
                raise DataError(f"image folder {root}: expected image files, {f} is not a regular file")
            try:
                img = Image.open(f)  # the header alone: its size, before the pixels are decoded
                channels = 1 if img.mode in ("1", "L", "LA", "I", "I;16", "F") else 3  # grey, else read as colour
                need += img.width * img.height * channels * 4  # as float32
                _check_fits(f"image folder {root}", need, f"its images up to {f} hold")
                if img.mode.startswith(("I", "F")):  # 16/32-bit: convert() would clip every value to 255
                    raise DataError(f"image folder {root}: expected 8-bit images (pixel values 0..255), {f} is "
                                    f"{img.mode} (16- or 32-bit); convert the folder to 8-bit, or save the pixels in "
                                    f"an npz: dataset")
                img = _read(img, images)
            except DataError:
                raise
            except Exception as e:  # truncated or not an image at all
                raise DataError(f"image folder {root}: cannot read {f} as an image ({e})") from None
            a = np.asarray(img, dtype=np.float32)  # raw pixel values 0..255
            a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # (C, H, W)
            if size is None:
                size = a.shape
            elif a.shape != size:
                raise DataError(f"image folder {root}: expected every image to be {size} (C, H, W; C 1 for grey, 3 for "
                                f"colour), {f} is {a.shape}")
            xs.append(a)
            ys.append(label)
        if label not in ys[-1:]:  # an empty class would be an output no sample teaches
            raise DataError(f"image folder {root}: expected images in every class folder, {root / cls} has none "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    if not xs:
        raise DataError(f"image folder {root}: found no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return np.stack(xs), np.asarray(ys)
