"""Two interleaved spirals: a Dataset and a model of our own, for sample_configs/python_factory.toml."""

import math

import torch
from torch import nn
from torch.utils.data import Dataset


class Spirals(Dataset):
    """Points on two spirals with a little noise; the target is the spiral (0 or 1)."""

    classes = ["inner", "outer"]

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        t = torch.rand(n, generator=g) * 3 * math.pi + 0.5
        self.y = torch.randint(0, 2, (n,), generator=g)
        angle = t + self.y * math.pi
        self.x = torch.stack([t * torch.cos(angle), t * torch.sin(angle)], dim=1) / 5
        self.x += 0.05 * torch.randn(n, 2, generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def make_datasets():
    """The train, validation and test sets."""
    return Spirals(1400, seed=1), Spirals(300, seed=2), Spirals(300, seed=3)


class SpiralNet(nn.Module):
    """An MLP with a residual middle: what a user would write for themselves."""

    def __init__(self, n_inputs: int, n_outputs: int, width: int = 64):
        super().__init__()
        self.inp = nn.Linear(n_inputs, width)
        self.mid = nn.Sequential(nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        self.out = nn.Sequential(nn.ReLU(), nn.Linear(width, n_outputs))

    def forward(self, x):
        h = self.inp(x)
        return self.out(h + self.mid(h))


def make_model(info):
    """Called with traintop's data info: info.input_shape, info.n_outputs, info.classes, ..."""
    return SpiralNet(info.input_shape[0], info.n_outputs)
