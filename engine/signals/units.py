"""Dead ReLU units, measured on a validation batch by running the model's layers one by one."""

from __future__ import annotations

import time
from typing import Callable, Iterator

from ..config import SignalsConfig
from .loss import finding

PROBE_SAMPLES = 256  # validation inputs the units are measured on
MIN_PROBE = 64  # fewer validation inputs than this: a unit silent on all of them proves nothing
EVERY_SECONDS = 2.0  # at most this often, at a scheduled validation


class DeadUnits:
    """`dead_units`: `dead_fraction` or more of a layer's ReLU units (or conv channels) output zero
    for every one of up to 256 validation inputs (at least 64: on fewer, silence proves nothing):
    they no longer learn (no gradient passes a zero ReLU). A rate too high for the model is the
    usual cause.

    Measured at a scheduled validation, at most every 2 s, for the built-in models (mlp, cnn,
    text), whose layers run in order: the layers are called one by one on the plain module, so
    no hook is ever added to the model and a compiled model never recompiles.
    """

    def __init__(self, settings: SignalsConfig, model, inputs: Callable[[int], object]):
        """`inputs(n)`: up to n validation inputs on the model's device."""
        self.s = settings
        self.model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper holds the plain module
        self.inputs = inputs
        self.next_at = 0.0
        self.finding = None

    @staticmethod
    def measurable(model) -> bool:
        """Whether the model's layers can be run one by one (a built-in model with a ReLU)."""
        import torch
        from torch import nn

        from ..models import ConvNet, TextModel

        model = getattr(model, "_orig_mod", model)
        return isinstance(model, (nn.Sequential, ConvNet, TextModel)) and any(
            isinstance(m, torch.nn.ReLU) for m in model.modules())

    def __call__(self, step: int) -> list:
        """The condition at the validation of `step` (measured again at most every 2 s)."""
        now = time.monotonic()
        if now >= self.next_at:
            self.next_at = now + EVERY_SECONDS
            self._measure(step)
        return [self.finding] if self.finding is not None else []

    def _measure(self, step: int) -> None:
        import torch

        model = self.model
        was_training = model.training
        dead: list[tuple[str, str, int, int]] = []  # (layer, describe, dead, units)
        try:
            model.eval()
            with torch.no_grad():
                x = self.inputs(PROBE_SAMPLES)
                if len(x) < MIN_PROBE:
                    return
                for layer, describe, out in activations(model, x):
                    alive = (out > 0).transpose(0, 1).reshape(out.shape[1], -1).any(dim=1)
                    n = int(alive.numel())
                    silent = n - int(alive.sum())
                    if n and silent >= self.s.dead_fraction * n:
                        dead.append((layer, describe, silent, n))
        finally:
            model.train(was_training)
        if not dead:
            self.finding = None
            return
        named = ", ".join(f"{silent}/{n} after {layer} ({describe})" for layer, describe, silent, n in dead)
        self.finding = finding(
            "dead_units", step, id="dead_units",
            message=f"dead ReLU units: {named} output zero for every one of {len(x)} validation inputs, so "
                    "they get no gradient and no longer learn",
            advice="lower the learning rate (-) or warm it up (schedule.warmup_steps); in a model of your own, "
                   "LeakyReLU or GELU, or normalisation before the activation",
            values={"layers": {layer: silent / n for layer, _, silent, n in dead}})


def activations(model, x) -> Iterator[tuple[str, str, object]]:
    """Each ReLU's output as the model computes `x`, with the weight layer before it (its name and
    description)."""
    from torch import nn

    from ..models import ConvNet, TextModel, describe_module

    last = ["input", "the inputs"]

    def walk(module, prefix, h):
        for name, child in module.named_children():
            if isinstance(child, nn.Sequential):
                h = yield from walk(child, f"{prefix}{name}.", h)
                continue
            h = child(h)
            if any(True for _ in child.parameters(recurse=False)) and not isinstance(child, nn.modules.batchnorm._NormBase):
                last[:] = [f"{prefix}{name}", describe_module(child)]
            if isinstance(child, nn.ReLU):
                yield last[0], last[1], h
        return h

    if isinstance(model, TextModel):
        words = model.embed(x[:, model.n_table:].long())
        yield from walk(model.head, "head.", torch_cat([words, x[:, :model.n_table]]))
    elif isinstance(model, ConvNet):
        h = yield from walk(model.features, "features.", x)
        yield from walk(model.head, "head.", h)
    else:
        yield from walk(model, "", x)


def torch_cat(tensors):
    import torch

    return torch.cat(tensors, dim=1)
