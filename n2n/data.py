"""Datasets with fixed, seeded train / validation / test splits, held in memory as tensors.

Built-ins come from packages that generate or ship them (nothing is downloaded):
- ``mnist1d``: MNIST-1D made by the `mnist1d` package's generator (10,000 sequences of length 40,
  10 classes), cached on disk after the first run;
- ``digits``: scikit-learn's 8x8 digits (1,797 images, 10 classes).
User data: ``npz:PATH`` (arrays ``x`` and ``y``) or ``folder:PATH`` (``PATH/<class>/<image>``).

The reward uses the validation split; the test split is only for final reports.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SPLIT = (0.7, 0.15, 0.15)  # train / validation / test
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"}


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

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def cache_dir() -> Path:
    root = os.environ.get("N2N_CACHE") or Path.home() / ".cache" / "n2n"
    return Path(root)


def load_dataset(name: str, seed: int = 0) -> Dataset:
    """A dataset by name: 'mnist1d', 'digits', 'npz:PATH' or 'folder:PATH'."""
    if name == "mnist1d":
        x, y = _mnist1d()
    elif name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
        y = d.target
    elif name.startswith("npz:"):
        x, y = _npz(Path(name[4:]))
    elif name.startswith("folder:"):
        x, y = _folder(Path(name[7:]))
    else:
        raise DataError(f"unknown dataset {name!r}: expected 'mnist1d', 'digits', 'npz:PATH' or 'folder:PATH'")
    return split(name, x, y, seed)


def split(name: str, x: np.ndarray, y: np.ndarray, seed: int = 0) -> Dataset:
    """Seeded split into train/val/test; float features are standardised with train statistics,
    integer features (token ids) are kept as they are."""
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
    perm = np.random.default_rng(seed).permutation(n)
    n_train, n_val = int(SPLIT[0] * n), int(SPLIT[1] * n)
    parts = np.split(perm, [n_train, n_train + n_val])
    y = torch.as_tensor(np.asarray(y), dtype=torch.long)
    if np.issubdtype(np.asarray(x).dtype, np.integer):
        x = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.long)
    else:
        x = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
        mean, std = x[parts[0]].mean(), x[parts[0]].std().clamp_min(1e-8)
        x = (x - mean) / std
    tr, va, te = (torch.as_tensor(p) for p in parts)
    return Dataset(name, x[tr], y[tr], x[va], y[va], x[te], y[te], int(y.max()) + 1)


def _mnist1d() -> tuple[np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = 10_000
    tag = hashlib.sha1(repr(sorted(vars(args).items())).encode()).hexdigest()[:10]
    path = cache_dir() / "data" / f"mnist1d-{tag}.npz"
    if path.exists():
        with np.load(path) as f:
            return f["x"], f["y"]
    # make_dataset reseeds numpy's global RNG; keep the caller's RNG untouched.
    state = np.random.get_state()
    try:
        d = make_dataset(args)  # the generator, never get_dataset (which downloads)
    finally:
        np.random.set_state(state)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)[:, None]  # (N, 1, 40)
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x=x, y=y)
    os.replace(tmp, path)
    return x, y


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"npz dataset: expected a file at {path}, found none")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04":  # what np.savez writes; anything else numpy would try to unpickle
        raise DataError(f"npz dataset {path}: expected a .npz archive (numpy.savez), the file starts with {head!r}")
    try:
        f = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(f"npz dataset {path}: not a readable .npz file ({e})") from None
    with f:
        missing = {"x", "y"} - set(f.files)
        if missing:
            raise DataError(f"npz dataset {path}: expected arrays 'x' and 'y', found {sorted(f.files)}")
        try:
            x, y = f["x"], f["y"]
        except ValueError as e:  # object arrays need pickle, which n2n never loads
            raise DataError(f"npz dataset {path}: expected numeric arrays, found one that needs pickle ({e}); "
                            "save 'x' and 'y' as numbers") from None
        except Exception as e:
            raise DataError(f"npz dataset {path}: damaged ({e})") from None
    if len(x) != len(y):
        raise DataError(f"npz dataset {path}: expected as many labels as samples, got {len(x)} samples and {len(y)} labels")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise DataError(f"npz dataset {path}: expected 'y' to be 1-D non-negative integer labels, got dtype {y.dtype} shape {y.shape}")
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.int64), y.astype(np.int64)  # token ids (N, T)
    if x.ndim == 2:
        x = x[:, None]  # (N, L) -> (N, 1, L)
    return x.astype(np.float32), y.astype(np.int64)


def _folder(root: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    if not root.is_dir():
        raise DataError(f"image folder: expected a directory at {root}, found none")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DataError(f"image folder {root}: expected one sub-folder per class (at least 2), found {classes}")
    xs, ys, size = [], [], None
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                img = Image.open(f)
                img = img.convert("L" if img.mode in ("L", "1", "P", "I;16") else "RGB")
            except Exception as e:  # truncated or not an image at all
                raise DataError(f"image folder {root}: cannot read {f} as an image ({e})") from None
            a = np.asarray(img, dtype=np.float32) / 255.0
            a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # (C, H, W)
            if size is None:
                size = a.shape
            elif a.shape != size:
                raise DataError(f"image folder {root}: expected every image to be {size} (C, H, W), {f} is {a.shape}")
            xs.append(a)
            ys.append(label)
    if not xs:
        raise DataError(f"image folder {root}: found no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return np.stack(xs), np.asarray(ys)
