"""A config run's numeric precision: autocast around forward and loss, and for fp16 a gradient scaler.

`train.precision = "32"` changes nothing in the step (autocast is a shared no-op context). bf16
has float32's range, so it needs no scaler. fp16 does: the loss is scaled up before backward, the
gradients are unscaled before they are measured or clipped (so the recorded norms are the true
ones), and a step whose gradients overflowed is skipped by the scaler, which then lowers its scale.
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_OFF = contextlib.nullcontext()


class Precision:
    """Autocast and, for fp16, the gradient scaler of one optimizer."""

    def __init__(self, precision: str, device: torch.device, optimizer: torch.optim.Optimizer):
        self.name = precision
        self.device_type = device.type
        self.dtype = DTYPES.get(precision)
        self.optimizer = optimizer
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self):
        """The context the forward pass and the loss run in."""
        if self.dtype is None:
            return _OFF
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to backpropagate: scaled up under fp16, so small gradients do not vanish."""
        return loss if self.scaler is None else self.scaler.scale(loss)

    def unscale(self) -> None:
        """The true gradients back, before they are measured or clipped (fp16 only)."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)

    def step(self, step) -> None:
        """The optimizer's step through `step()`; under fp16 the scaler skips it when the
        gradients overflowed, and adjusts its scale either way."""
        if self.scaler is None:
            step()
            return
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def skip(self) -> None:
        """No update this step (on_nan = "skip"): the scaler still learns from the overflow."""
        if self.scaler is not None:
            self.scaler.update()

    def current_scale(self) -> float:
        """The scaler's scale (a host sync; for messages only), 1 without a scaler."""
        return float(self.scaler.get_scale()) if self.scaler is not None else 1.0

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def pending_scale(scaler, optimizer) -> torch.Tensor | None:
    """The scale a user's GradScaler has left on `optimizer`'s gradients (a device tensor), or
    None once they are unscaled (`scaler.unscale_`, as before clipping) or the scaler is off."""
    if scaler is None or not scaler.is_enabled() or getattr(scaler, "_scale", None) is None:
        return None
    from torch.amp.grad_scaler import OptState

    # torch says nothing public of whether unscale_ ran for this optimizer since the last update
    state = getattr(scaler, "_per_optimizer_states", {}).get(id(optimizer)) or {}
    return None if state.get("stage") is OptState.UNSCALED else scaler._scale
