"""The demo's data and model: a small CNN trained on scikit-learn's 8x8 digits (no downloads).

Kept apart from the demo's attribution code so tests and docs can reuse a trained model.
Everything is seeded: the same seed gives the same split, initial weights and batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class Digits:
    """Train/test split of the digits, images scaled to [0, 1] with shape (N, 1, 8, 8)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits(seed: int = 0, test_fraction: float = 0.25) -> Digits:
    """Loads scikit-learn's bundled digits (1797 images) and splits them with a fixed seed."""
    from sklearn.datasets import load_digits as _load

    data = _load()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
    n_test = int(round(test_fraction * len(y)))
    test, train = perm[:n_test], perm[n_test:]
    return Digits(x[train], y[train], x[test], y[test])


class DigitsCNN(nn.Sequential):
    """conv(16) -> relu -> conv(32) -> relu -> maxpool -> linear(64) -> relu -> linear(10): logits."""

    def __init__(self):
        super().__init__(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )


def train(data: Digits, *, epochs: int = 8, batch_size: int = 64, lr: float = 3e-3, seed: int = 0) -> DigitsCNN:
    """Trains a `DigitsCNN` with Adam; returns it in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    n = len(data.y_train)
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())
