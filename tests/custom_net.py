"""A user-style module outside every built-in family: residual blocks with BN, a pooling, a
concatenation of two branches and a bare parameter. Used by tests/test_generic.py."""

import torch
from torch import nn


class Res(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a = nn.Conv1d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm1d(c)
        self.b = nn.Conv1d(c, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.b(torch.relu(self.bn(self.a(x)))))


class MyNet(nn.Module):
    def __init__(self, width=16, classes=10):
        super().__init__()
        self.stem = nn.Conv1d(1, width, 5, padding=2)
        self.body = nn.Sequential(Res(width), Res(width), nn.MaxPool1d(2), Res(width))
        self.side = nn.Conv1d(width, 8, 1)
        self.scale = nn.Parameter(torch.ones(1))  # a bare parameter no group reaches
        self.head = nn.Linear(8 + width, classes)

    def forward(self, x):  # (B, 1, L)
        h = self.body(torch.relu(self.stem(x)))  # (B, W, L/2)
        g = torch.relu(self.side(h)).mean(-1)  # (B, 8)
        return self.head(torch.cat([g, h.mean(-1)], 1) * self.scale)


def make(width=16, classes=10):
    return MyNet(width, classes)


def make_class(width=16, classes=10):  # a user's slip: the class, not an instance
    return MyNet


def make_pair(width=16, classes=10):  # another: the model and something else
    return MyNet(width, classes), {"width": width}


class Tied(nn.Module):
    """An MLP whose two hidden layers share one weight matrix (tied weights)."""

    def __init__(self, width=16, classes=10):
        super().__init__()
        self.inp, self.h1, self.h2 = nn.Linear(40, width), nn.Linear(width, width), nn.Linear(width, width)
        self.h2.weight = self.h1.weight
        self.out = nn.Sequential(nn.Linear(width, 32), nn.ReLU())
        self.head = nn.Linear(32, classes)

    def forward(self, x):  # (B, 1, 40)
        x = torch.relu(self.inp(x.flatten(1)))
        return self.head(self.out(torch.relu(self.h2(torch.relu(self.h1(x))))))


def make_tied(width=16, classes=10):
    return Tied(width, classes)
