"""Shared test helpers (plain functions, imported by the test modules)."""

from pathlib import Path

import torch
from torch import nn


def randomise_bn(model):
    """Untrained BN has identity statistics; make them non-trivial so slicing errors would show."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


def count_macs(model, x):
    """Multiply-accumulates of one forward pass, counted by hooks on the built module (the library's
    hook count: the tests hold each family's predicted `flops` against it)."""
    from search_spaces import count_macs as hooked

    return hooked(model, x)


def random_spec(space, rng, p_remove=0.4):
    """A spec removing each removable unit with probability `p_remove`, random ratios elsewhere."""
    from search_spaces import StudentSpec

    removed = [i for i, u in enumerate(space.units) if u.removable and rng.random() < p_remove]
    ratios = [rng.choice(space.ratios) if u.shrinkable else 1.0 for u in space.units]
    return StudentSpec(removed, ratios)


def onnx_check(folder, student, raw, y, metrics):
    """An exported model.onnx, run by onnxruntime alone on raw inputs, computes the PyTorch student's
    logits and the accuracy metrics.json states (the ONNX figures n2n wrote are true)."""
    import numpy as np
    import onnxruntime as ort

    assert sorted(p.name for p in folder.glob("model.onnx*")) == ["model.onnx"]  # one file, weights inside
    # no absolute path of the exporting machine (the exporter's stack traces named its source files: helper-33)
    source = Path(__file__).resolve().parents[1]
    assert str(source).encode() not in (folder / "model.onnx").read_bytes()
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"] and session.get_inputs()[0].shape[0] == "batch"
    logits = np.concatenate([session.run(None, {"input": raw[i : i + 100].numpy()})[0] for i in range(0, len(raw), 100)])
    with torch.no_grad():
        ref = student(raw).numpy()
    assert np.abs(logits - ref).max() < 1e-4 and metrics["onnx"]["max_abs_diff"] < 1e-4
    acc = float((logits.argmax(1) == y.numpy()).mean())
    assert acc == metrics["onnx"]["val_accuracy"] and abs(acc - metrics["val_accuracy"]) <= 1 / len(y)


TIMED = ("latency_ms", "teacher_latency_ms", "latency_ratio", "latency_measured")  # each export times the student again


def untimed(metrics: dict) -> dict:
    """An export's metrics but for the figures each export measures afresh (its latency)."""
    return {k: v for k, v in metrics.items() if k not in TIMED}
