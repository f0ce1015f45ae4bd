import json
import random

import pytest
import torch
from torch import nn

from envs import CompressionEnv, ProxyEvaluator
from agents import make_agent, run
from helpers import count_macs, random_spec, randomise_bn
from n2n.models import build_model
from search_spaces import (ResNet, ResNetSpace, StudentSpec, UnsupportedModel, count_params, from_torchvision, resnet_arch,
                           space_for)

SHAPES = {"1d": (1, 40), "2d": (3, 12, 12)}


def _space(preset, dim, width=8, cifar=True):
    torch.manual_seed(0)
    shape = SHAPES[dim]
    return ResNetSpace(randomise_bn(ResNet(resnet_arch(shape, 10, preset, width, cifar))), shape)


@pytest.mark.parametrize("preset,dim,cifar", [("resnet18", "1d", True), ("resnet34", "2d", True),
                                              ("resnet50", "1d", True), ("resnet18", "2d", False)])
def test_identity_and_random_specs(preset, dim, cifar):
    space = _space(preset, dim, cifar=cifar)
    x = torch.randn(4, *space.input_shape)
    assert torch.allclose(space.build(space.identity())(x), space.teacher(x), atol=1e-5)
    assert space.teacher_params() == count_params(space.teacher)
    assert space.flops(space.identity()) == count_macs(space.teacher, x)
    rng = random.Random(0)
    for _ in range(25):
        spec = random_spec(space, rng)
        assert space.validate(spec) is None
        student = space.build(spec)
        assert student(x).shape == (4, 10)
        assert count_params(student) == space.params(spec)
        assert count_macs(student, x) == space.flops(spec)
        rebuilt = build_model(json.loads(json.dumps(space.arch(spec))))
        rebuilt.load_state_dict(student.state_dict(), strict=True)


def test_units_removable_only_with_identity_shortcuts():
    space = _space("resnet18", "1d")
    kinds = [(u.kind, u.removable) for u in space.units]
    blocks = [u for u in space.units if u.kind == "block"]
    assert len(blocks) == 8 and sum(u.removable for u in blocks) == 5  # first block of stages 2-4 projects
    assert sum(u.name.startswith("stream") for u in space.units) == 4
    assert kinds[-1] == ("linear", False)
    assert all(u.skip_start and u.skip_end for u in blocks)
    proj = next(i for i, u in enumerate(space.units) if u.kind == "block" and not u.removable)
    assert "projection" in space.validate(space.identity().with_removed([proj]))


def test_each_removal_action_lands_on_the_block_it_names():
    """N2N's original code counted shortcut layers but did not apply them: actions slid by one."""
    space = _space("resnet18", "1d")
    env = CompressionEnv(space, evaluator=None)
    for u, unit in enumerate(space.units):
        if not unit.removable:
            continue
        obs, _ = env.reset()
        while True:
            a = 1 if obs["index"] == u else 0
            obs, _, done, _, info = env.step(a)
            if done:
                break
        assert info["spec"].removed == (u,)
        student = space.build(info["spec"])
        teacher_idx = int(unit.name.removeprefix("block"))
        kept = [i for i in range(len(space.teacher.blocks)) if i != teacher_idx]
        assert len(student.blocks) == len(kept)
        for sb, i in zip(student.blocks, kept):  # the other blocks are the teacher's, untouched
            assert torch.equal(sb.conv1.weight, space.teacher.blocks[i].conv1.weight)


def test_stream_width_is_one_decision_and_inner_width_another():
    space = _space("resnet18", "1d", width=8)
    stream1 = space.units.index(next(u for u in space.units if u.name == "stream1"))
    block = stream1 + 2  # the second block of stage 1 (identity shortcut)
    ratios = [1.0] * space.n_units
    ratios[stream1], ratios[block] = 0.5, 0.25
    student = space.build(StudentSpec((), ratios))
    stage = [b for b, st in zip(student.blocks, space.stage_of) if st == 1]
    assert all(b.conv2.out_channels == 8 for b in stage)  # stage width 16 -> 8 for every block
    assert stage[0].downsample[0].out_channels == 8
    assert stage[1].conv1.out_channels == 4  # inner width 16 -> 4, that block only
    assert stage[0].conv1.out_channels == 16


class _TVBasic(nn.Module):
    """torchvision's BasicBlock, re-typed here so no torchvision import is needed."""

    def __init__(self, cin, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class _TVResNet(nn.Module):
    def __init__(self, layers=(2, 2), width=8, num_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = width
        for i, n in enumerate(layers):
            planes, blocks = width * 2**i, []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                ds = (nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
                      if stride != 1 or cin != planes else None)
                blocks.append(_TVBasic(cin, planes, stride, ds))
                cin = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def test_torchvision_style_resnet_is_accepted():
    torch.manual_seed(0)
    tv = randomise_bn(_TVResNet())
    x = torch.randn(3, 3, 32, 32)
    converted = from_torchvision(tv, (3, 32, 32))
    assert torch.allclose(converted(x), tv(x), atol=1e-5)
    space = space_for(tv, (3, 32, 32))
    assert isinstance(space, ResNetSpace) and space.teacher_params() == count_params(tv)
    spec = space.identity().with_ratios([0.5 if u.shrinkable else 1.0 for u in space.units])
    assert space.build(spec)(x).shape == (3, 5)


def test_a_resnet_laid_out_otherwise_is_not_read_as_torchvisions():
    """The reading assumed torchvision's stem pool (3, 2, 1): a MaxPool(2, 2) stem made every student
    inherit into another network, with nothing said."""
    from search_spaces import GenericSpace

    torch.manual_seed(0)
    tv = randomise_bn(_TVResNet())
    tv.maxpool = nn.MaxPool2d(2, 2)
    with pytest.raises(UnsupportedModel, match="does not reproduce this network"):
        from_torchvision(tv, (3, 32, 32))
    space = space_for(tv.eval(), (3, 32, 32))  # the generic space slices the module itself
    assert isinstance(space, GenericSpace) and space.teacher_params() == count_params(tv)


def test_same_env_and_agents_search_a_resnet():
    space = _space("resnet18", "1d")
    proxy = ProxyEvaluator(space)
    for stage in ("removal", "shrink"):
        env = CompressionEnv(space, evaluator=None, stage=stage)
        hist = run(make_agent("reinforce", env, seed=0), proxy, 20)
        assert len(hist) == 20 and all(space.validate(s) is None for s, _ in hist)
        assert max(r for _, r in hist) > 0
