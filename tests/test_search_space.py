import json
import random

import pytest
import torch
from torch import nn

from helpers import count_macs, randomise_bn as _randomise_bn
from n2n.models import build_model, mlp_layers, vgg_layers
from n2n.train import accuracy
from search_spaces import (FEATURE_DIM, FEATURE_NAMES, SequentialSpace, SpecError, StudentSpec, UnsupportedModel, count_params,
                           layers_to_module)


TEACHERS = {
    "vgg1d_gap": ((1, 40), lambda: layers_to_module(vgg_layers((1, 40), 10, "vgg1d", 0.25, 32))),
    "vgg2d_gap": ((3, 8, 8), lambda: layers_to_module(vgg_layers((3, 8, 8), 5, "vgg11", 0.125, 16))),
    "vgg1d_flatten": ((1, 40), lambda: nn.Sequential(
        nn.Conv1d(1, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(8, 16, 3, padding=1), nn.BatchNorm1d(16), nn.ReLU(),
        nn.Sequential(nn.Conv1d(16, 16, 3, padding=1), nn.ReLU()), nn.MaxPool1d(2),
        nn.Flatten(), nn.Linear(16 * 10, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 10))),
    "mlp": ((1, 40), lambda: layers_to_module(mlp_layers((1, 40), 10, (64, 48, 32)))),
}


@pytest.fixture(params=sorted(TEACHERS))
def space(request):
    shape, make = TEACHERS[request.param]
    torch.manual_seed(0)
    return SequentialSpace(_randomise_bn(make()), shape)


def test_identity_spec_reproduces_teacher(space):
    x = torch.randn(16, *space.input_shape)
    student = space.build(space.identity()).eval()
    assert torch.allclose(student(x), space.teacher(x), atol=1e-6)
    assert space.teacher_params() == count_params(space.teacher)
    assert space.flops(space.identity()) == count_macs(space.teacher, x)


def test_random_specs_are_rejected_with_a_reason_or_build_exactly(space):
    rng = random.Random(0)
    x = torch.randn(4, *space.input_shape)
    built = 0
    for _ in range(200):
        p = rng.random()
        removed = [i for i, u in enumerate(space.units) if rng.random() < p]  # may include fixed units
        ratios = [rng.choice(space.ratios) if u.shrinkable else 1.0 for u in space.units]
        spec = StudentSpec(removed, ratios)
        reason = space.validate(spec)
        if reason is not None:
            assert isinstance(reason, str) and len(reason) > 10
            continue
        student = space.build(spec).eval()
        out = student(x)
        assert out.shape == (4, space.units[-1].width)
        assert count_params(student) == space.params(spec)
        assert count_macs(student, x) == space.flops(spec)
        # the architecture round-trips through JSON with no teacher
        rebuilt = build_model(json.loads(json.dumps(space.arch(spec))))
        rebuilt.load_state_dict(student.state_dict(), strict=True)
        assert torch.equal(rebuilt.eval()(x), out)
        built += 1
    assert built >= 40  # the sampler is not just producing invalid specs


def test_validate_reasons():
    torch.manual_seed(0)
    flat = SequentialSpace(TEACHERS["vgg1d_flatten"][1](), (1, 40))
    kinds = [u.kind for u in flat.units]
    pool = kinds.index("pool")
    assert not flat.units[pool].removable
    assert "spatial size" in flat.validate(flat.identity().with_removed([pool]))
    convs = [i for i, k in enumerate(kinds) if k == "conv"]
    assert "every conv" in flat.validate(flat.identity().with_removed(convs))
    out = flat.n_units - 1
    assert "output layer" in flat.validate(flat.identity().with_removed([out]))
    n = flat.n_units
    assert n == 7  # conv, pool, conv, conv, pool, linear, linear
    assert "expected 7 ratios" in flat.validate(StudentSpec((), (1.0,) * 3))
    assert "ratio 0.33" in flat.validate(flat.identity().with_ratios([0.33] + [1.0] * (n - 1)))
    assert "may not be shrunk" in flat.validate(flat.identity().with_ratios([1.0] * (n - 1) + [0.5]))
    assert "does not exist" in flat.validate(flat.identity().with_removed([17]))
    with pytest.raises(ValueError, match="cannot build an invalid spec"):
        flat.build(flat.identity().with_removed([out]))


def test_spec_json_and_canonical_key(space):
    spec = StudentSpec((1,), tuple(0.5 if u.shrinkable else 1.0 for u in space.units))
    assert StudentSpec.from_json(spec.to_json()) == spec
    # the ratio of a removed unit does not change the student
    other = spec.with_ratios([0.25 if i == 1 and u.shrinkable else r for i, (u, r) in enumerate(zip(space.units, spec.ratios))])
    assert space.key(spec) == space.key(other)
    assert space.key(spec) != space.key(space.identity())
    with pytest.raises(SpecError, match="keys 'removed' and 'ratios'"):
        StudentSpec.from_dict({"removed": []})


def test_ratios_that_round_to_the_same_width_share_a_key():
    torch.manual_seed(0)
    space = SequentialSpace(layers_to_module(mlp_layers((1, 40), 10, (4,))), (1, 40))
    a, b = space.identity().with_ratios([0.5, 1.0]), space.identity().with_ratios([0.6, 1.0])
    assert space.widths(a) == space.widths(b) == [2, 10]  # round(2.4) == round(2.0) == 2
    assert space.key(a) == space.key(b)


def test_features_are_normalised_and_depth_free(space):
    f = space.features()
    assert f.shape == (space.n_units, FEATURE_DIM)
    assert f.dtype.name == "float32" and f.min() >= 0 and f.max() <= 1
    col = {name: i for i, name in enumerate(FEATURE_NAMES)}
    assert f[0, col["position"]] == 0 and f[-1, col["position"]] == 1  # whatever the depth
    assert abs(f[:, col["param_share"]].sum() - 1.0) < 1e-5
    assert f[:, col["width"]].max() == 1.0  # relative to the widest unit, whatever the widths


def test_shapes_after_removal_and_shrink():
    torch.manual_seed(0)
    space = SequentialSpace(layers_to_module(vgg_layers((1, 40), 10, "vgg1d", 0.25, 32)), (1, 40))
    convs = [i for i, u in enumerate(space.units) if u.kind == "conv"]
    ratios = [0.5 if u.shrinkable else 1.0 for u in space.units]
    student = space.build(StudentSpec((convs[1],), ratios))
    widths = [m.out_channels for m in student if isinstance(m, nn.Conv1d)]
    teacher = [u.width for u in space.units if u.kind == "conv"]
    assert len(widths) == len(teacher) - 1
    assert widths == [round(w * 0.5) for i, w in enumerate(teacher) if i != 1]


def test_unsupported_module_is_named():
    with pytest.raises(UnsupportedModel, match="1: LSTM is not supported"):
        SequentialSpace(nn.Sequential(nn.Flatten(), nn.LSTM(4, 4), nn.Linear(4, 2)), (1, 4))
    with pytest.raises(UnsupportedModel, match="expected an nn.Sequential"):
        SequentialSpace(nn.Linear(4, 2), (4,))


@pytest.mark.parametrize("layer,setting", [(nn.LeakyReLU(0.2), "negative_slope"), (nn.ELU(alpha=2.0), "alpha"),
                                           (nn.GELU(approximate="tanh"), "approximate"),
                                           (nn.Conv1d(8, 8, 3, padding=1, padding_mode="circular"), "padding_mode"),
                                           (nn.AvgPool1d(3, 1, 1, count_include_pad=False), "count_include_pad")])
def test_layer_settings_survive_into_students_and_their_json(layer, setting):
    """These settings were dropped: the identity student computed another function (LeakyReLU(0.2):
    logits off by 0.16), every student inherited weights into it, and arch.json exported it."""
    from search_spaces import GenericSpace, space_for

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv1d(1, 8, 3, padding=1), nn.ReLU(), layer, nn.Flatten(), nn.Linear(8 * 40, 5)).eval()
    space = space_for(teacher, (1, 40))
    assert isinstance(space, SequentialSpace)
    x = torch.randn(16, 1, 40)
    assert torch.equal(space.build(space.identity())(x), teacher(x))
    spec = space.identity().with_ratios([0.5 if u.shrinkable else 1.0 for u in space.units])
    student = space.build(spec)
    rebuilt = build_model(json.loads(json.dumps(space.arch(spec))))  # what export writes and load_student reads
    rebuilt.load_state_dict(student.state_dict())
    assert torch.equal(rebuilt.eval()(x), student(x))
    (same,) = [m for m in rebuilt if type(m) is type(layer) and m is not rebuilt[0]]
    assert getattr(same, setting) == getattr(layer, setting)  # the setting itself, not a look-alike
    # a setting the sequential space cannot write down goes to the generic space, which keeps the module
    odd = nn.Sequential(nn.Conv1d(1, 8, 3, padding=1), nn.BatchNorm1d(8, track_running_stats=False), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 40, 5)).eval()
    assert isinstance(space_for(odd, (1, 40)), GenericSpace)


def test_a_linear_on_a_sequence_is_counted_as_pytorch_applies_it():
    """n2n read Linear(38, 8) on a (B, 4, 38) activation as 4 -> 8 features: 146 teacher params, not 658."""
    from search_spaces import space_for

    teacher = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Linear(38, 8), nn.Flatten(), nn.Linear(32, 10)).eval()
    space = space_for(teacher, (1, 40))
    assert not isinstance(space, SequentialSpace) and space.teacher_params() == count_params(teacher) == 658


def test_inherited_student_beats_fresh_init_without_training(small_teacher, mnist1d):
    model, _, teacher_acc = small_teacher
    space = SequentialSpace(model, mnist1d.input_shape)
    spec = space.identity().with_ratios([0.9 if u.shrinkable else 1.0 for u in space.units])
    inherited = accuracy(space.build(spec, inherit=True), mnist1d.x_val, mnist1d.y_val)
    fresh = accuracy(space.build(spec, inherit=False, seed=0), mnist1d.x_val, mnist1d.y_val)
    print(f"teacher {teacher_acc:.3f} inherited {inherited:.3f} fresh {fresh:.3f}")
    assert teacher_acc > 0.8
    assert fresh < 0.25  # chance is 0.1
    # Measured over teachers trained with seeds 0, 1, 2: inherited 0.39, 0.49, 0.57 at ratio 0.9 (chance
    # 0.1); the bound sits below the worst of them, not at one lucky teacher's figure.
    assert inherited > 0.3 and inherited - fresh > 0.2


def test_least_squares_refit_starts_students_near_the_teacher(small_teacher, mnist1d):
    """After removals an inherited student starts near chance; re-fit to the teacher's features it
    does not (measured: 0.10 -> 0.73-0.96 on such specs of a quarter-width vgg1d)."""
    import random

    from helpers import random_spec

    model, _, teacher_acc = small_teacher
    space = SequentialSpace(model, mnist1d.input_shape)
    rng, gains = random.Random(0), []
    while len(gains) < 4:
        spec = random_spec(space, rng)
        if space.validate(spec) or not spec.removed:
            continue
        inherited = accuracy(space.build(spec), mnist1d.x_val, mnist1d.y_val)
        refit = space.reconstruct(space.build(spec), spec, mnist1d.x_train[:512])
        gains.append(accuracy(refit, mnist1d.x_val, mnist1d.y_val) - inherited)
        assert count_params(refit) == space.params(spec)
    assert min(gains) > 0.2 and sum(gains) / len(gains) > 0.4
    same = space.reconstruct(space.build(space.identity()), space.identity(), mnist1d.x_train[:512])
    assert abs(accuracy(same, mnist1d.x_val, mnist1d.y_val) - teacher_acc) < 0.01  # nothing to repair
