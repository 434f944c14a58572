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

CHUNK = 8192  # rows the model sees at once when it answers many
STREAM_CHUNK = 256  # samples of streamed data read at a time for an answer


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


def evaluate(model, objective: Objective, feed, data: Dataset, world=None) -> tuple[float, dict[str, float]]:
    """Mean loss and the task's metrics: accuracy, or MAE / RMSE / R² in the target's units.

    `world` (several ranks): each rank measures its share of the split and the ranks add up
    their sums, so every rank gets the metrics of the whole split.
    """
    if world is not None:
        return evaluate_shared(model, objective, feed, data, world)
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


def evaluate_shared(model, objective: Objective, feed, data: Dataset, world) -> tuple[float, dict[str, float]]:
    """`evaluate` on several ranks: rank r measures samples r, r + size, ...; the sums are added up
    over the ranks (one collective), so the metrics are those of the whole split on every rank."""
    rank, size = world.rank, world.size
    if feed.in_memory:
        out, y = forward_all(model, feed.x[rank::size]), feed.y[rank::size]
    else:
        outs, ys = [], []
        with inference(model):
            for x, yb in feed.batches(torch.arange(rank, len(feed), size), EVAL_BATCH):
                outs.append(model(x))
                ys.append(yb)
        out, y = torch.cat(outs), torch.cat(ys)
    n = len(y)
    with torch.no_grad():
        loss = objective(out, y).double() * n if n else torch.zeros((), dtype=torch.float64, device=out.device)
        count = torch.tensor(float(n), dtype=torch.float64, device=out.device)
        if data.task == "classification":
            pred = (out.squeeze(1) > 0).long() if objective.name == "bce" else out.argmax(dim=1)
            sums = torch.stack([loss, (pred == y).double().sum(), count])
        else:
            pre = data.preprocess
            pred = out.squeeze(1).double() * pre.target_std + pre.target_mean
            true = y.double() * pre.target_std + pre.target_mean
            err = pred - true
            sums = torch.stack([loss, count, err.abs().sum(), (err ** 2).sum(), true.sum(), (true ** 2).sum()])
        values = world.sum_(sums).tolist()  # one sync
    if data.task == "classification":
        total, correct, n = values
        return total / max(n, 1), {"accuracy": correct / max(n, 1)}
    total, n, abs_err, sq_err, s1, s2 = values
    n = max(n, 1)
    mse, var = sq_err / n, s2 / n - (s1 / n) ** 2
    return total / n, {"mae": abs_err / n, "rmse": math.sqrt(mse), "r2": 1.0 - mse / var if var > 0 else 0.0}


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

    Batched: the raw records go through the preprocessing as one table, the references to each
    split are gathered at once, and the model sees them in chunks, so a request of thousands
    holds training up for a fraction of a second, not one forward per input.
    """
    records: list[int] = []  # positions of raw records in `inputs`
    held: dict[str, list[tuple[int, int]]] = {}  # split -> (position, index) of its references
    for i, item in enumerate(inputs):
        if "split" not in item:
            records.append(i)
            continue
        split, index = item.get("split"), item.get("index")
        if split not in ("train", "val", "test"):
            raise UserError(f"input {i}: split is {split!r}; allowed: train, val, test")
        if split == "test" and not allow_test:
            raise UserError(f"input {i}: the test split is only shown after the test has run")
        n = len(data.raw[split])
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
            raise UserError(f"input {i}: index must be an integer from 0 to {n - 1}, got {index!r}")
        held.setdefault(split, []).append((i, index))
    results: list[dict[str, Any]] = [{} for _ in inputs]
    feeds = data.feeds(device)
    # Everything held in memory goes through the model as one batch in the order asked: the same
    # rows in the same order give the same numbers, bit for bit, wherever they are asked.
    parts: list[tuple[list[int], torch.Tensor]] = []
    if records:
        try:
            parts.append((records, record_inputs(data.preprocess, [inputs[i] for i in records], device)))
        except BadValue as e:  # its row is the record's place among the records: name the input
            raise UserError(e.at(f"input {records[e.row] if 0 <= e.row < len(records) else e.row}")) from None
    for split, refs in held.items():
        if feeds[split].in_memory:
            parts.append(([i for i, _ in refs], feeds[split].inputs([index for _, index in refs])))
    if parts:
        positions = sorted(i for part, _ in parts for i in part)
        if len(parts) == 1:
            x = parts[0][1]
        else:
            rank = {i: r for r, i in enumerate(positions)}
            x = torch.empty((len(positions), *parts[0][1].shape[1:]), dtype=parts[0][1].dtype, device=device)
            for part, xs in parts:
                x[torch.as_tensor([rank[i] for i in part], device=device)] = xs
        for i, result in zip(positions, answers(objective, data.preprocess, forward_all(model, x))):
            results[i] = result
    for split, refs in held.items():
        indices = [index for _, index in refs]
        if not feeds[split].in_memory:
            for (i, _), result in zip(refs, streamed_answers(model, objective, data, feeds[split], indices)):
                results[i] = result
        for (i, _), extra in zip(refs, held_out_extras(data, split, indices, with_inputs, feeds[split])):
            results[i].update(extra)
    return results


def streamed_answers(model, objective: Objective, data: Dataset, feed, indices: list[int]) -> list[dict[str, Any]]:
    """Answers for samples of a streamed split, read a little at a time: never a whole request of
    images in memory at once."""
    out = [forward_all(model, feed.inputs(indices[first:first + STREAM_CHUNK]))
           for first in range(0, len(indices), STREAM_CHUNK)]
    return answers(objective, data.preprocess, torch.cat(out))


def held_out_extras(data: Dataset, split: str, indices: list[int], with_inputs: bool,
                    feed) -> list[dict[str, Any]]:
    """What a held-out sample's answer carries besides the answer: its true label, and when asked
    its raw record with what the preprocessing's `preview` adds (an image's pixels)."""
    truths = [_raw_value(v) for v in data.raw_target[split].iloc[indices].tolist()]
    if data.task == "classification":
        truths = [category_key(t) for t in truths]
    if not with_inputs:  # a whole split's answers (a confusion table) need no inputs
        return [{"true": t} for t in truths]
    rows = data.raw[split].iloc[indices].to_dict("records")
    extras = []
    for first in range(0, len(indices), STREAM_CHUNK):
        x = feed.inputs(indices[first:first + STREAM_CHUNK]).cpu().numpy()
        for k, row in enumerate(rows[first:first + STREAM_CHUNK]):
            record = {name: _raw_value(v) for name, v in row.items()}
            record.update(data.preprocess.preview(x[k]))
            extras.append({"input": record, "true": truths[first + k]})
    return extras


def predict_records(model, objective: Objective, preprocess, records: list[dict],
                    device: torch.device) -> list[dict[str, Any]]:
    """The model's answer for raw records, through the preprocessing fitted in training.

    The one path every prediction takes (the dashboard, the `predict` command and `traintop
    predict`), so the same input gets the same answer everywhere, and the same refusal: a value
    that is not a finite number names its row and column (a blank is missing, as in training).
    """
    if not records:
        return []
    out = forward_all(model, record_inputs(preprocess, records, device))
    found = answers(objective, preprocess, out)
    finite = torch.isfinite(out.reshape(len(out), -1)).all(dim=1).tolist()
    for row, (ok, answer) in enumerate(zip(finite, found)):
        if not ok or not math.isfinite(answer.get("value", 0.0)):
            raise NotFiniteAnswer(row)
    return found


class NotFiniteAnswer(BadValue):
    """A record the model answers with an infinity or NaN: a wrong answer, refused as one."""

    def __init__(self, row: int):
        super().__init__(row, "", None, "")

    def at(self, where: str) -> str:
        return (f"{where}: the model's answer is not a finite number; its values are far outside those it "
                "was trained on (or its weights are not finite), so there is no answer to give")


def record_inputs(preprocess, records: list[dict], device: torch.device) -> torch.Tensor:
    """Raw records as one batch of model inputs, through the preprocessing fitted in training: the
    one way a raw record reaches the model, so what is checked about records belongs here."""
    try:
        rows = pd.DataFrame(records)
    except OverflowError:  # pandas 2 converts an integer past a float's range as it builds the table
        rows = pd.DataFrame(records, dtype=object)  # kept as given: the preprocessing names it
    return torch.as_tensor(preprocess.transform(rows), device=device)


def answers(objective: Objective, preprocess, out: torch.Tensor) -> list[dict[str, Any]]:
    """Model outputs as answers: a label with class probabilities, or a value in the target's units."""
    if preprocess.task == "classification":
        classes = preprocess.classes
        probabilities = objective.probabilities(out)
        best = probabilities.argmax(dim=1).tolist()
        return [{"label": classes[b], "probabilities": dict(zip(classes, p))}
                for b, p in zip(best, probabilities.tolist())]
    values = preprocess.decode_value(out.squeeze(1).double().cpu().numpy()).tolist()
    return [{"value": v} for v in values]


def prediction_summary(outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """What a big prediction is worth logging: how many inputs, and for held-out ones how well
    the model did (accuracy for classes, mean absolute error for values)."""
    held = [o for o in outputs if o.get("true") is not None]
    summary: dict[str, Any] = {"inputs": len(outputs), "held_out": len(held)}
    if held and "label" in held[0]:
        summary["accuracy"] = sum(str(o["label"]) == str(o["true"]) for o in held) / len(held)
    elif held:
        errors = [abs(o["value"] - o["true"]) for o in held if isinstance(o["true"], (int, float))]
        if errors:
            summary["mae"] = sum(errors) / len(errors)
    return summary
