"""A tiny non-HF model and objectives whose scores are known by hand (the objective API tests load this file
as `laser search toy_objective.py:build --objective toy_objective.py:objective` would)."""

from __future__ import annotations

import os
import time

import torch
from torch import nn

import laserlm


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(3))

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def build() -> Net:
    torch.manual_seed(0)
    return Net()


def ranks(model) -> list[int]:
    return [int(torch.linalg.matrix_rank(b.fc1.weight.detach()).item()) for b in model.blocks]


def score(model, split):
    """Best when block 1's fc1 has rank 4, a little better the lower the other fc1 ranks; test = val + 100."""
    r = ranks(model)
    if os.environ.get("TOY_CALLS"):
        with open(os.environ["TOY_CALLS"], "a") as f:
            f.write(split + "\n")
    time.sleep(float(os.environ.get("TOY_DELAY", "0")))
    value = -abs(r[1] - 4) - 0.01 * (r[0] + r[2])
    return {"score": value + (100 if split == "test" else 0), "rank1": r[1], "n": 8}


objective = laserlm.Objective(score, metric="score", name="toy.score", version=os.environ.get("TOY_VERSION", "1"))


def loss(model, split):
    return {"loss": abs(ranks(model)[1] - 2)}


loss_objective = laserlm.Objective(loss, metric="loss", higher_is_better=False, name="toy.loss")


def not_a_dict(model, split):
    return [1.0]


def no_score(model, split):
    return {"other": 1.0}
