"""Models and losses built from the config and the data's shape."""

from __future__ import annotations

import torch
from torch import nn

from .config import Config
from .errors import UserError


def build_model(cfg: Config, input_dim: int, n_outputs: int) -> nn.Module:
    """The configured model for `input_dim` inputs and `n_outputs` outputs."""
    m = cfg.model
    if m.kind == "linear":
        return nn.Sequential(nn.Linear(input_dim, n_outputs))
    if m.kind == "mlp":
        layers: list[nn.Module] = []
        width = input_dim
        for h in m.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if m.dropout:
                layers.append(nn.Dropout(m.dropout))
            width = h
        layers.append(nn.Linear(width, n_outputs))
        return nn.Sequential(*layers)
    raise UserError(f"model.kind = {m.kind!r} is not available in this version of traintop")


LOSSES = {
    "mse": nn.MSELoss,
    "l1": nn.L1Loss,
    "huber": nn.HuberLoss,
    "cross_entropy": nn.CrossEntropyLoss,
    "bce": nn.BCEWithLogitsLoss,
}


def loss_name(cfg: Config, task: str, n_classes: int) -> str:
    """The loss to train with: named in the config, or chosen by the task."""
    name = cfg.train.loss
    if name == "auto":
        return "cross_entropy" if task == "classification" else "mse"
    if task == "regression" and name in ("cross_entropy", "bce"):
        raise UserError(f"train.loss = {name!r} needs classes, but the data is a regression task; "
                        "allowed for regression: mse, l1, huber")
    if task == "classification" and name in ("mse", "l1", "huber"):
        raise UserError(f"train.loss = {name!r} is for regression, but the data is a classification "
                        "task; allowed: cross_entropy, bce")
    if name == "bce" and n_classes != 2:
        raise UserError(f"train.loss = \"bce\" needs two classes; the data has {n_classes}; "
                        "use cross_entropy")
    return name


def n_model_outputs(loss: str, task: str, n_classes: int) -> int:
    """One logit for bce and regression, one per class for cross-entropy."""
    return n_classes if loss == "cross_entropy" else 1


class Objective:
    """The loss in the model's terms, and how outputs become predictions and probabilities."""

    def __init__(self, name: str):
        self.name = name
        self.fn = LOSSES[name]()

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.name == "bce":
            return self.fn(out.squeeze(1), y.to(out.dtype))
        if self.name in ("mse", "l1", "huber"):
            return self.fn(out.squeeze(1), y)
        return self.fn(out, y)

    def probabilities(self, out: torch.Tensor) -> torch.Tensor:
        """Class probabilities, one column per class."""
        if self.name == "bce":
            p = torch.sigmoid(out.squeeze(1))
            return torch.stack([1 - p, p], dim=1)
        return torch.softmax(out, dim=1)
