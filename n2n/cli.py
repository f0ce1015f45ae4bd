"""The `n2n` command line. User mistakes exit with status 2 and a one-line message, no traceback."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import USER_ERRORS


def _teacher_train(args) -> int:
    from .teachers import TeacherRecipe, train_teacher

    recipe = TeacherRecipe(dataset=args.dataset, arch=args.arch, preset=args.preset, width_mult=args.width_mult,
                           hidden=args.hidden, epochs=args.epochs, lr=args.lr, seed=args.seed)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
    train_teacher(recipe, out=out, device=args.device)
    print(f"saved teacher to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="n2n", description="Compress a trained network by policy search (N2N learning).")
    sub = p.add_subparsers(dest="command", required=True)

    teacher = sub.add_parser("teacher", help="train or inspect teachers").add_subparsers(dest="teacher_cmd", required=True)
    t = teacher.add_parser("train", help="train a teacher and save it as a folder (safetensors + JSON)")
    t.add_argument("--dataset", default="mnist1d", help="mnist1d | digits | npz:PATH | folder:PATH")
    t.add_argument("--arch", default="vgg", choices=["vgg", "mlp"])
    t.add_argument("--preset", default="vgg1d", help="vgg preset: vgg1d, vgg11, vgg13, vgg16, vgg19, small")
    t.add_argument("--width-mult", type=float, default=1.0)
    t.add_argument("--hidden", type=int, nargs="*", default=[256], help="classifier widths")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--out", required=True, help="folder to write (must not exist)")
    t.add_argument("--overwrite", action="store_true")
    t.set_defaults(func=_teacher_train)
    return p


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"n2n: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("n2n: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
