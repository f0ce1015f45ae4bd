import math

import pytest
import torch
from torch import nn

from n2n.train import DistillConfig, distill, distill_loss, predict


def test_diverging_distillation_stops_with_a_reason():
    torch.manual_seed(0)
    x, y = torch.randn(256, 8), torch.randint(0, 3, (256,))
    teacher_logits = torch.randn(256, 3) * 1e30  # overflows the L2 loss to inf at once
    student = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    res = distill(student, x, y, teacher_logits, x[:32], y[:32], DistillConfig(epochs=3))
    assert res.failure is not None and "loss became inf" in res.failure and res.epochs == 0


def test_losses_match_their_definitions():
    s, t, y = torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[0.0, 2.0, 1.0]]), torch.tensor([1])
    assert distill_loss(DistillConfig(loss="l2"), s, t, y).item() == pytest.approx(2 / 3)
    ce = torch.nn.functional.cross_entropy(s, y).item()
    assert distill_loss(DistillConfig(loss="l2", ce_weight=0.5), s, t, y).item() == pytest.approx(2 / 3 + 0.5 * ce)
    T = 2.0
    p_t = torch.softmax(t / T, 1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / T, 1))).sum().item() * T * T
    assert distill_loss(DistillConfig(loss="kl", temperature=T), s, t, y).item() == pytest.approx(kl, rel=1e-5)
    assert math.isclose(distill_loss(DistillConfig(loss="kl"), t, t, y).item(), 0.0, abs_tol=1e-6)


def test_distillation_moves_the_student_toward_the_teacher():
    torch.manual_seed(0)
    x = torch.randn(512, 8)
    teacher = nn.Linear(8, 3)
    with torch.no_grad():
        t = teacher(x)
    y = t.argmax(1)
    student = nn.Linear(8, 3)
    before = (student(x).argmax(1) == y).float().mean().item()
    res = distill(student, x, y, t, x, y, DistillConfig(epochs=20, lr=1e-2))
    assert res.failure is None and res.epochs == 20 and res.val_accuracy > max(0.95, before + 0.2)


def test_trials_inherit_the_teachers_weights_unless_told_not_to(small_teacher, mnist1d):
    """`distill.inherit: false` is N2N as published: the same student, freshly initialised."""
    from dataclasses import replace

    from envs import Reference, RewardConfig
    from n2n.trial import Context, evaluate
    from search_spaces import StudentSpec, space_for

    model, arch, val_acc = small_teacher
    space = space_for(model, (1, 40))
    spec = StudentSpec([], [0.9 if u.shrinkable else 1.0 for u in space.units])  # every layer at 90%
    ds = mnist1d
    tiny_lr = DistillConfig(epochs=1, lr=1e-9)  # distillation changes nothing: what the student starts from shows
    ctx = Context(arch, model.state_dict(), (1, 40), tuple(space.ratios), ds.x_train, ds.y_train, predict(model, ds.x_train),
                  ds.x_val, ds.y_val, tiny_lr, Reference(1, 1, val_acc), RewardConfig(), "unused")
    inherited, _ = evaluate(space, spec, ctx)
    fresh, _ = evaluate(space, spec, replace(ctx, distill=replace(tiny_lr, inherit=False)))
    # here: inherited 0.92 of the teacher's 0.98, fresh 0.10 (chance)
    assert inherited.accuracy > val_acc - 0.25 and fresh.accuracy < 0.25, (inherited.accuracy, fresh.accuracy, val_acc)


def test_figures_are_measured_without_tf32_and_the_users_setting_is_kept():
    """cuDNN's default TF32 convolutions (10 mantissa bits) made a GPU trial's accuracy differ from the
    one export measures on the CPU; evaluation on CUDA turns TF32 off through whichever API the process
    uses (reading the legacy flags after the newer one was set raises) and restores it. In a fresh
    process: the settings are global."""
    import subprocess
    import sys

    legacy = """
torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
with no_tf32(cuda):
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (False, False)
assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
"""
    newer = """
torch.backends.cuda.matmul.fp32_precision = "tf32"  # the legacy flags now raise when read
with no_tf32(cuda):
    assert (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == ("ieee", "ieee")
assert torch.backends.cuda.matmul.fp32_precision == "tf32"
assert predict(nn.Linear(4, 3), torch.randn(5, 4)).shape == (5, 3)  # on the CPU: nothing touched, no error
"""
    for api in (legacy, newer):  # one process each: the settings are global, and a process uses one API
        script = ("import torch\nfrom torch import nn\nfrom n2n.train import no_tf32, predict\n"
                  "cuda = torch.device('cuda')  # the flags exist on CPU builds too; nothing runs on a GPU\n"
                  + api + "print('ok')\n")
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
