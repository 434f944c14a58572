"""Forward-only work on frozen weights: validation and test metrics, and predictions."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import pandas as pd
import torch

from .data import Dataset
from .data.feed import EVAL_BATCH
from .data.tabular import BadValue, category_key
from .errors import UserError
from .models import Objective

CHUNK = 8192


@contextlib.contextmanager
def inference(model: torch.nn.Module):
    """Eval mode and no gradients, then the model's previous mode back."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def forward_all(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's outputs for every row of `x`, in chunks."""
    with inference(model):
        if len(x) <= CHUNK:
            return model(x)
        return torch.cat([model(x[i:i + CHUNK]) for i in range(0, len(x), CHUNK)])


def outputs_and_targets(model: torch.nn.Module, feed) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's outputs for a whole split, with its targets: at once in memory, or streamed."""
    if feed.in_memory:
        return forward_all(model, feed.x), feed.y
    outs, ys = [], []
    with inference(model):
        for x, y in feed.batches(None, EVAL_BATCH):
            outs.append(model(x))
            ys.append(y)
    return torch.cat(outs), torch.cat(ys)


def evaluate(model, objective: Objective, feed, data: Dataset) -> tuple[float, dict[str, float]]:
    """Mean loss and the task's metrics: accuracy, or MAE / RMSE / R² in the target's units."""
    out, y = outputs_and_targets(model, feed)
    with torch.no_grad():
        loss = objective(out, y)
        if data.task == "classification":
            pred = (out.squeeze(1) > 0).long() if objective.name == "bce" else out.argmax(dim=1)
            loss, accuracy = torch.stack([loss, (pred == y).float().mean()]).tolist()  # one sync
            return loss, {"accuracy": accuracy}
        loss = float(loss)
    pre = data.preprocess
    pred = out.squeeze(1).double() * pre.target_std + pre.target_mean
    true = y.double() * pre.target_std + pre.target_mean
    err = pred - true
    mse = float((err ** 2).mean())
    var = float(((true - true.mean()) ** 2).mean())
    return loss, {"mae": float(err.abs().mean()), "rmse": math.sqrt(mse),
                  "r2": 1.0 - mse / var if var > 0 else 0.0}


def _raw_value(v: Any) -> Any:
    """A pandas cell as plain JSON: NaN as None, numpy scalars as Python numbers."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if hasattr(v, "item") else v


def predict_outputs(model, objective: Objective, data: Dataset, inputs: list[dict], device: torch.device,
                    allow_test: bool = False, with_inputs: bool = True) -> list[dict[str, Any]]:
    """One output per input: a raw record ({feature: value}, or {"path": ...} for an image), or a
    held-out reference {"split": "val", "index": i}.

    A held-out reference is answered with its raw record (`input`) and true label (`true`) too. Its
    `input` is the record as the data holds it ({feature: value}; {"path"} for an image file,
    {"index"} for a dataset without files) plus what the preprocessing's `preview` adds: for
    images, "pixels", grayscale rows of 0-255 at the model's image size (at most 48 a side).
    """
    feeds = data.feeds(device)
    xs, shown = [], []
    for i, item in enumerate(inputs):
        if "split" in item:
            split, index = item.get("split"), item.get("index")
            if split not in ("train", "val", "test"):
                raise UserError(f"input {i}: split is {split!r}; allowed: train, val, test")
            if split == "test" and not allow_test:
                raise UserError(f"input {i}: the test split is only shown after the test has run")
            n = len(data.raw[split])
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
                raise UserError(f"input {i}: index must be an integer from 0 to {n - 1}, got {index!r}")
            x = feeds[split].inputs([index])
            row = None
            if with_inputs:  # a whole split's answers (a confusion table) need no inputs
                row = {k: _raw_value(v) for k, v in data.raw[split].iloc[index].items()}
                row.update(data.preprocess.preview(x[0].cpu().numpy()))
            truth = _raw_value(data.raw_target[split].iloc[index])
            shown.append((row, category_key(truth) if data.task == "classification" else truth))
        else:
            try:
                x = torch.as_tensor(data.preprocess.transform(pd.DataFrame([item])), device=device)
            except BadValue as e:
                raise UserError(e.at(f"input {i}")) from None
            shown.append(None)
        xs.append(x)
    if not xs:
        return []
    results = answers(objective, data.preprocess, forward_all(model, torch.cat(xs)))
    for result, extra in zip(results, shown):
        if extra is not None:
            result.update({"input": extra[0], "true": extra[1]} if extra[0] is not None else {"true": extra[1]})
    return results


def predict_records(model, objective: Objective, preprocess, records: list[dict],
                    device: torch.device) -> list[dict[str, Any]]:
    """The model's answer for raw records, through the preprocessing fitted in training.

    The one path every prediction takes (the dashboard, the `predict` command and `traintop
    predict`), so the same input gets the same answer everywhere, and the same refusal: a value
    that is not a finite number names its row and column (a blank is missing, as in training).
    """
    if not records:
        return []
    x = torch.as_tensor(preprocess.transform(pd.DataFrame(records)), device=device)
    return answers(objective, preprocess, forward_all(model, x))


def answers(objective: Objective, preprocess, out: torch.Tensor) -> list[dict[str, Any]]:
    """Model outputs as answers: a label with class probabilities, or a value in the target's units."""
    if preprocess.task == "classification":
        classes = preprocess.classes
        results = []
        for p in objective.probabilities(out).tolist():
            best = max(range(len(p)), key=p.__getitem__)
            results.append({"label": classes[best], "probabilities": dict(zip(classes, p))})
        return results
    values = preprocess.decode_value(out.squeeze(1).double().cpu().numpy()).tolist()
    return [{"value": v} for v in values]
