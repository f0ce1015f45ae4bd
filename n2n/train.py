"""Training loops on in-memory tensors: teacher training and student distillation.

Data for the built-in datasets fits in memory, so batches are index slices of tensors already on the
device: no DataLoader, no per-epoch worker start-up.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


@contextlib.contextmanager
def no_tf32(device: torch.device):
    """Float32 convolutions and matmuls on CUDA: cuDNN's default TF32 keeps 10 mantissa bits, so an
    accuracy measured in a GPU trial could differ from the one export measures on the CPU. Through
    whichever of torch's two APIs the process uses (reading the legacy flags after the newer
    `fp32_precision` was set raises), restored after; nothing is touched off CUDA."""
    if device.type != "cuda":
        yield
        return
    try:  # the legacy flags, unless the newer API is in use
        flags = [(torch.backends.cudnn, "allow_tf32", False), (torch.backends.cuda.matmul, "allow_tf32", False)]
        before = [getattr(m, name) for m, name, _ in flags]
    except RuntimeError:
        flags = [(torch.backends.cudnn.conv, "fp32_precision", "ieee"),
                 (torch.backends.cuda.matmul, "fp32_precision", "ieee")]
        before = [getattr(m, name) for m, name, _ in flags]
    for m, name, value in flags:
        setattr(m, name, value)
    try:
        yield
    finally:
        for (m, name, _), value in zip(flags, before):
            setattr(m, name, value)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """Logits (N, classes) of `model` in eval mode, computed on the model's device in float32 (no
    TF32), returned on CPU."""
    model.eval()
    device = next(model.parameters()).device
    with no_tf32(device):
        return torch.cat([model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (predict(model, x).argmax(1) == y).float().mean().item()


def _batches(n: int, batch_size: int, gen: torch.Generator):
    perm = torch.randperm(n, generator=gen)
    for i in range(0, n, batch_size):
        yield perm[i : i + batch_size]


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float = 1e-3,
                     weight_decay: float = 5e-4, batch_size: int = 128, seed: int = 0,
                     device: torch.device | str = "cpu",
                     on_epoch: Callable[[int, float], None] | None = None) -> nn.Module:
    """Cross-entropy training with AdamW and a one-cycle schedule (15% warm-up, cosine decay);
    `on_epoch(epoch, mean_loss)`."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    x, y = x.to(device), y.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)
    for epoch in range(epochs):
        model.train()
        total, count = 0.0, 0
        for idx in _batches(len(x), batch_size, gen):
            idx = idx.to(device)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
        if not math.isfinite(total / count):  # diverged: every later step is NaN too
            raise FloatingPointError(f"the training loss became {total / count} in epoch {epoch + 1}")
        if on_epoch:
            on_epoch(epoch, total / count)
    return model.eval()


@dataclass
class DistillConfig:
    """How each candidate student is briefly trained from the teacher."""

    epochs: int = 3  # N2N used 5; 3 keeps the default search within 15 CPU-minutes
    lr: float = 3e-3  # N2N: 5e-4; 3e-3 gave +2-3 points after 3 epochs on the default teacher's students
    # pretrained transformer students (their weights want a small step: at 3e-3 every MiniLM student of
    # helper-24's searches fell to chance, at 1e-4 they kept the teacher's accuracy); None: lr for all
    transformer_lr: float | None = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 128
    loss: str = "l2"  # "l2": MSE between logits (Ba & Caruana, N2N's default); "kl": Hinton's soft targets
    temperature: float = 4.0  # for "kl"
    ce_weight: float = 0.0  # lambda * cross-entropy on the labels, added to the distillation loss
    hidden_weight: float = 0.0  # transformers: + weight * MSE between mapped layers' hidden states (teacher runs per batch)
    inherit: bool = True  # students start from the teacher's weights; false: fresh init, as N2N was published
    reconstruct: int = 0  # training samples for a least-squares re-fit of inherited layers before distilling (0: off)
    optimizer: str = "adam"  # "adam" | "sgd"
    schedule: str = "constant"  # "constant" | "cosine"

    def __post_init__(self):
        checks = [
            (self.loss in ("l2", "kl"), f"distill.loss: expected 'l2' or 'kl', got {self.loss!r}"),
            (self.optimizer in ("adam", "sgd"), f"distill.optimizer: expected 'adam' or 'sgd', got {self.optimizer!r}"),
            (self.schedule in ("constant", "cosine"), f"distill.schedule: expected 'constant' or 'cosine', got {self.schedule!r}"),
            (self.epochs >= 1, f"distill.epochs: expected >= 1, got {self.epochs}"),
            (self.lr > 0, f"distill.lr: expected > 0, got {self.lr}"),
            (self.transformer_lr is None or self.transformer_lr > 0,
             f"distill.transformer_lr: expected > 0 or null, got {self.transformer_lr}"),
            (self.batch_size >= 1, f"distill.batch_size: expected >= 1, got {self.batch_size}"),
            (self.temperature > 0, f"distill.temperature: expected > 0, got {self.temperature}"),
            (self.ce_weight >= 0, f"distill.ce_weight: expected >= 0, got {self.ce_weight}"),
            (self.hidden_weight >= 0, f"distill.hidden_weight: expected >= 0, got {self.hidden_weight}"),
            (self.reconstruct >= 0, f"distill.reconstruct: expected >= 0 (samples), got {self.reconstruct}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    def for_space(self, space) -> DistillConfig:
        """The settings a student of `space` is distilled with: transformer_lr for a transformer."""
        if getattr(space, "pretrained_transformer", False) and self.transformer_lr is not None:
            return replace(self, lr=self.transformer_lr)
        return self


def distill_loss(cfg: DistillConfig, s_logits: torch.Tensor, t_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """s_logits, t_logits: (B, classes); y: (B,)."""
    if cfg.loss == "l2":
        loss = F.mse_loss(s_logits, t_logits)
    else:
        T = cfg.temperature
        loss = F.kl_div(F.log_softmax(s_logits / T, 1), F.log_softmax(t_logits / T, 1), log_target=True,
                        reduction="batchmean") * T * T
    if cfg.ce_weight:
        loss = loss + cfg.ce_weight * F.cross_entropy(s_logits, y)
    return loss


@dataclass
class DistillResult:
    val_accuracy: float
    epochs: int
    train_seconds: float  # time inside optimisation steps only
    failure: str | None = None


@dataclass
class HiddenTarget:
    """Hidden-state distillation: the teacher (run per batch) and (student, teacher) layer pairs."""

    teacher: nn.Module
    pairs: list[tuple[int, int]]
    forward: Callable  # (model, x) -> (logits, hidden states): the family's `SearchSpace.hidden_states`

    def loss(self, s_hidden, xb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            _, t_hidden = self.forward(self.teacher, xb)
        return sum(F.mse_loss(s_hidden[s], t_hidden[t]) for s, t in self.pairs) / len(self.pairs)


def distill(student: nn.Module, x: torch.Tensor, y: torch.Tensor, t_logits: torch.Tensor,
            x_val: torch.Tensor, y_val: torch.Tensor, cfg: DistillConfig, *, seed: int = 0,
            device: torch.device | str = "cpu",
            on_epoch: Callable[[int, float], bool | None] | None = None,
            hidden: HiddenTarget | None = None) -> DistillResult:
    """Train `student` to match the teacher's precomputed logits; validation accuracy after each epoch.

    `t_logits` (N, classes) are the teacher's outputs on `x`, computed once per search.
    `on_epoch(epoch, val_acc)` may return True to stop early (e.g. an ASHA decision).
    With `hidden` and ``cfg.hidden_weight > 0``, mapped hidden states are distilled too.
    A NaN/inf loss ends training with a failure reason.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    student.to(device)
    x, y, t_logits = x.to(device), y.to(device), t_logits.to(device)
    params = [p for p in student.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    steps = max(cfg.epochs * math.ceil(len(x) / cfg.batch_size), 1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if cfg.schedule == "cosine" else None
    train_s, val_acc = 0.0, accuracy(student, x_val, y_val) if cfg.epochs == 0 else 0.0
    for epoch in range(cfg.epochs):
        student.train()
        start = time.perf_counter()
        for idx in _batches(len(x), cfg.batch_size, gen):
            idx = idx.to(device)
            if hidden is not None and cfg.hidden_weight:
                s_logits, s_hidden = hidden.forward(student, x[idx])
                loss = distill_loss(cfg, s_logits, t_logits[idx], y[idx]) + cfg.hidden_weight * hidden.loss(s_hidden, x[idx])
            else:
                loss = distill_loss(cfg, student(x[idx]), t_logits[idx], y[idx])
            if not torch.isfinite(loss):
                return DistillResult(0.0, epoch, train_s + time.perf_counter() - start,
                                     f"loss became {loss.item()} in epoch {epoch + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched:
                sched.step()
        train_s += time.perf_counter() - start
        if on_epoch or epoch == cfg.epochs - 1:  # validation only when someone reads it
            val_acc = accuracy(student, x_val, y_val)
        if on_epoch and on_epoch(epoch, val_acc):
            return DistillResult(val_acc, epoch + 1, train_s)
    return DistillResult(val_acc, cfg.epochs, train_s)


def chance_warning(accuracy: float, y, drop: float | None = None) -> str | None:
    """A warning when a teacher's validation accuracy is not clearly better (3 standard errors) than
    always answering the most common class; `drop`: the target's max_accuracy_drop (points), which a
    student answering that class may already meet."""
    n = len(y)
    base = torch.bincount(y).max().item() / n
    if accuracy >= base + 3 * (base * (1 - base) / n) ** 0.5:
        return None
    said = (f"warning: the teacher's validation accuracy {accuracy:.4f} is not clearly better than always answering "
            f"the most common class ({base:.4f}, {n} samples): is it trained, on this data, with its classes in "
            f"this order?")
    if drop is not None and (accuracy - base) * 100 <= drop:
        said += f" A student that always answers that class meets the {drop:g}-point accuracy target"
    return said
