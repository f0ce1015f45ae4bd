"""Deployment: latency as trials measure it, and an exported student as ONNX (checked with onnxruntime)."""

from __future__ import annotations

import contextlib
import errno
import importlib
import io
import logging
import re
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import unstandardise
from .errors import RunError
from .train import predict

ONNX_PACKAGES = "onnx onnxscript onnxruntime"


def require_onnx():
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            importlib.import_module(name)
        except ImportError:
            raise RunError(f"--onnx: expected the packages {ONNX_PACKAGES} (pip install 'n2n[onnx]'), "
                           f"missing {name}") from None


def to_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Write `model` (eval mode, on CPU) as one ONNX file (weights inside, no .data beside it) with a
    dynamic batch axis; input "input", output "logits".

    torch.export's exporter (the supported one) prints its progress and optimiser chatter; the user
    sees only the outcome (a failure names the exporter's reason)."""
    require_onnx()
    model = model.eval()
    chatter = io.StringIO()
    # e.g. "torchvision is not installed. Skipping torchvision::nms", and symbolic shapes' warnings
    # (helper-67), through handlers that hold the terminal itself
    quiet = [logging.getLogger(name) for name in ("torch.onnx", "torch.fx.experimental.symbolic_shapes")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), torch.no_grad(), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's own deprecation notices, not the user's concern
            torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                              dynamo=True, verbose=False, external_data=False, dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as e:
        while e.__cause__ is not None:  # the exporter's own reason, not its "step 1/3 ... Next steps" wrapper
            e = e.__cause__
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):  # the disk, not the
            raise OSError(e.errno, e.strerror, str(path)) from None  # student (helper-82)
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        detail = re.sub(r"\x1b\[[0-9;]*m", "", detail)  # its terminal colours (helper-67)
        raise RunError(f"--onnx: this student ({type(model).__name__}) could not be exported to ONNX: {detail}; "
                       "export without --onnx to get the PyTorch student") from None
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    _drop_stack_traces(path)


def _drop_stack_traces(path: Path) -> None:
    """The exporter records each node's Python stack trace, with the absolute paths of the exporting
    machine's source files (the user's own module's too: helper-33); a deployed file carries none."""
    import onnx

    def nodes(graph):
        for node in graph.node:
            yield node
            for attr in node.attribute:  # If / Loop bodies
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    yield from nodes(sub)

    proto = onnx.load(str(path))
    for node in [*nodes(proto.graph), *(n for f in proto.functions for n in f.node)]:
        kept = [m for m in node.metadata_props if m.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save(proto, str(path))


def check_onnx(model: nn.Module, path: Path, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> dict:
    """Run the ONNX file with onnxruntime on real inputs `x` next to the PyTorch `model`; refuse a file
    whose logits differ by more than 1e-3 relative to their scale (the export would not be the student)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    # (N, classes): batches of more than one and a last short batch exercise the dynamic batch axis
    ours = np.concatenate([session.run(None, {name: x[i : i + batch_size].numpy()})[0]
                           for i in range(0, len(x), batch_size)])
    with torch.no_grad():
        ref = predict(model, x).numpy()
    diff = float(np.abs(ours - ref).max())
    if not diff <= 1e-3 * max(1.0, float(np.abs(ref).max())):
        raise RunError(f"--onnx: onnxruntime's logits differ from PyTorch's by up to {diff:.3g} on the validation "
                       "inputs; the ONNX file would not compute this student, so nothing was written")
    return {"file": "model.onnx", "input": {"name": "input", "shape": ["batch", *x.shape[1:]], "dtype": str(x.dtype)[6:]},
            "output": "logits", "checked_on": f"{len(x)} validation inputs, onnxruntime {ort.__version__} (CPU)",
            "max_abs_diff": diff, "val_accuracy": float((ours.argmax(1) == y.numpy()).mean()),
            "predictions_agree": float((ours.argmax(1) == ref.argmax(1)).mean())}


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to `n` (0: unchanged) for the block, restored after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_as_shipped(student: nn.Module, teacher: nn.Module, x: torch.Tensor, preprocess: dict | None, *,
                    batch_size: int, **timing) -> list[list[float]]:
    """`time_passes` of the student and the teacher as `n2n.load_student` returns them: on raw inputs,
    their standardisation (`preprocess`; None for token ids) timed too, on `batch_size` of the
    validation inputs `x` (model inputs, as n2n's loader gives them). The one measure of trials and
    export: the search had timed the bare student, export the shipped one, and the standardisation is
    up to 70% of a small student's time (helper-38)."""
    from .models import RawInput

    batch = x[torch.arange(batch_size) % len(x)]  # (batch_size, *input): real inputs, repeated if few
    if preprocess:
        student, teacher, batch = RawInput(student, preprocess), RawInput(teacher, preprocess), unstandardise(batch, preprocess)
    return time_passes([student, teacher], batch, **timing)


def fastest_ratio(student: list[float], teacher: list[float]) -> float:
    """The student's latency relative to the teacher's, from passes timed in the same interleaved
    rounds: the fastest of each. A neighbouring trial's load only ever adds time, and more to the
    longer pass (it is preempted more often), so the ratio of medians swung 2.7x for one pair on a
    loaded worker (helper-37); the ratio of the fastest passes spread half as much as the medians'
    in benchmarks/latency.py."""
    return min(student) / min(teacher)


def time_passes(models: list[nn.Module], x: torch.Tensor, *, threads: int = 1, warmup: int = 5,
                repeats: int = 30) -> list[list[float]]:
    """Milliseconds of each of `repeats` forward passes of each model on `x` (on the models' device).

    The models are timed in interleaved rounds (teacher, student, teacher, ...), so a change of load
    on a shared worker during the measurement touches every model alike. With several models each
    timed pass follows an untimed one of the same model: right after the teacher's pass had filled
    the caches, a small student timed 30% slower than alone (0.24 against 0.18 ms, found rereading
    this change), a figure no deployment of it sees; with the untimed pass, within about 6%."""
    device = next(models[0].parameters()).device
    x = x.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: list[list[float]] = [[] for _ in models]
    with torch_threads(threads), torch.inference_mode():
        for m in models:
            m.eval()
            for _ in range(warmup):
                m(x)
        for _ in range(repeats):
            for m, t in zip(models, times):
                if len(models) > 1:
                    m(x)  # untimed: its own caches back after the other model's pass
                sync()
                start = time.perf_counter()
                m(x)
                sync()  # a CUDA launch returns at once: wait for the work
                t.append(time.perf_counter() - start)
    return [[s * 1000.0 for s in t] for t in times]
