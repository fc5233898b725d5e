"""A model factory for the run tests' subprocesses (``--model tests._runs_model:tiny``)."""

from __future__ import annotations

import torch
from torch import nn


class Tiny(nn.Module):
    """conv-relu-conv-relu-pool-linear, 5 classes; the same weights at every construction."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)

    def forward(self, x):
        x = self.relu1(self.conv1(x))
        x = self.relu2(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))


def tiny() -> nn.Module:
    return Tiny()
