"""A transformer teacher goes through the same search, trials and export as a CNN."""

import json

import numpy as np
import pytest
import torch

import n2n
from helpers import onnx_check
from n2n.config import load_config
from n2n.data import load_dataset
from n2n.export import export_best
from n2n.search import run_search
from n2n.train import accuracy, train_classifier
from search_spaces import HFClassifier

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def token_task(tmp_path_factory):
    """A token classification task (does token 7 occur in the sequence?) and a small BERT teacher."""
    from transformers import BertConfig, BertForSequenceClassification

    root = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(0)
    x = rng.integers(1, 30, size=(1000, 12))
    y = (x == 7).any(1).astype(np.int64)
    np.savez(root / "tokens.npz", x=x, y=y)
    ds = load_dataset(f"npz:{root / 'tokens.npz'}")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=16, num_labels=2, pad_token_id=0)
    teacher = HFClassifier(BertForSequenceClassification(cfg))
    train_classifier(teacher, ds.x_train, ds.y_train, epochs=12, lr=3e-3, seed=0)
    teacher.model.save_pretrained(root / "teacher")
    return root, accuracy(teacher, ds.x_val, ds.y_val)


def test_transformer_search_and_hf_export(ray_session, token_task, tmp_path):
    from transformers import AutoModelForSequenceClassification

    root, teacher_acc = token_task
    assert teacher_acc > 0.75
    cfg = load_config(None, {"teacher.path": str(root / "teacher"), "teacher.dataset": f"npz:{root / 'tokens.npz'}",
                             "search.removal_budget": 4, "search.shrink_budget": 3, "search.refine_budget": 2, "search.uniform_widths": True,
                             "search.agent_options": {"batch_size": 2}, "distill.epochs": 2, "finalists.k": 0})
    run = tmp_path / "runs" / "bert"
    said = []
    summary = run_search(cfg, run, log=said.append)
    per_stage = summary["candidates_per_stage"]
    assert {k: per_stage[k] for k in ("removal", "shrink")} == {"removal": 4, "shrink": 3}
    # one FFN width for all layers: a shrink best at the smallest width leaves refine nothing narrower
    nothing = "stage refine ended after 0 of 2 candidates: every unit the shrink stage's best keeps is already at the smallest"
    assert per_stage["refine"] == 2 or (per_stage["refine"] == 0 and any(s.startswith(nothing) for s in said)), said
    assert summary["teacher"]["val_accuracy"] == pytest.approx(teacher_acc)
    metrics = export_best(run, tmp_path / "student", log=lambda *_: None, onnx=True)
    assert metrics["val_accuracy"] == summary["best"]["val_accuracy"]
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student" / "hf", local_files_only=True)
    ds = load_dataset(f"npz:{root / 'tokens.npz'}")
    assert accuracy(HFClassifier(hf.eval()), ds.x_val, ds.y_val) == metrics["val_accuracy"]
    onnx_check(tmp_path / "student", n2n.load_student(tmp_path / "student"), ds.x_val, ds.y_val, metrics)  # ids in
    arch = json.loads((tmp_path / "student" / "arch.json").read_text())
    assert arch["family"] == "hf-encoder" and len(arch["layers"]) == hf.config.num_hidden_layers
    guide = (tmp_path / "student" / "README-n2n.md").read_text()  # how to load it without n2n (helper-75)
    shape = ", ".join(map(str, metrics["onnx"]["input"]["shape"]))
    assert f"`model.onnx`, input `input` of shape ({shape}) and type int64" in guide
    # ids of the run's length, however the data came (helper-79: npz ids read "None tokens per text")
    assert f"- Inputs: int64 token ids of shape (N, {metrics['onnx']['input']['shape'][-1]})" in guide
    assert "- Without n2n: `hf/` is a Hugging Face model" in guide and "None tokens" not in guide
