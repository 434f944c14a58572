"""The model's gradients: cleared before each backward pass, measured without a host sync."""

from __future__ import annotations

import torch


class Gradients:
    """Each trainable parameter's gradient, and its norms as device tensors.

    On the CPU the gradients live in one flat buffer, each parameter's `.grad` a view of it, and
    autograd adds into the views in place: clearing them is one fill and the total norm one dot
    product, where a norm per parameter costs a dispatch each (digits MLP: 45 µs a step, against
    a 0.9 ms step). On a GPU, `_foreach_norm` takes every parameter's norm in one fused kernel,
    so there the gradients stay autograd's own and are set to None before each backward pass.
    """

    def __init__(self, params: list[torch.nn.Parameter], device: torch.device):
        self.params = params
        self.flat = flat_buffer(params) if device.type == "cpu" else None
        self.views = self.flat_views() if self.flat is not None else []
        self.zero_norm = torch.zeros((), device=device)  # a parameter the loss did not reach

    def flat_views(self) -> list[torch.Tensor]:
        """Point every parameter's `.grad` at its slice of the flat buffer."""
        views, offset = [], 0
        for p in self.params:
            view = self.flat[offset:offset + p.numel()].view_as(p)
            p.grad = view
            views.append(view)
            offset += p.numel()
        return views

    def zero(self) -> None:
        """Clear every gradient before a backward pass."""
        if self.flat is not None:
            self.flat.zero_()
        else:
            for p in self.params:
                p.grad = None

    def tensors(self) -> list[torch.Tensor]:
        """Each parameter's gradient; one the loss did not reach counts as zero."""
        if self.flat is not None:
            return self.views
        return [p.grad if p.grad is not None else self.zero_norm for p in self.params]

    def layer_norms(self) -> list[torch.Tensor]:
        """Every parameter's gradient norm, from one `_foreach_norm`."""
        return torch._foreach_norm(self.tensors())

    def squared_total(self) -> torch.Tensor:
        """The squared total norm in one op; flat gradients only."""
        return torch.dot(self.flat, self.flat)

    def clip_(self, total: torch.Tensor, max_norm: float) -> None:
        """Scale the gradients so that their total norm is at most `max_norm`."""
        torch._foreach_mul_(self.tensors(), (max_norm / (total + 1e-6)).clamp(max=1.0))


def flat_buffer(params: list[torch.nn.Parameter]) -> torch.Tensor | None:
    """A zeroed buffer for every parameter's gradient, or None when they cannot share one."""
    dtype, device = params[0].dtype if params else None, params[0].device if params else None
    if dtype not in (torch.float32, torch.float64) or any(
            p.is_sparse or p.dtype != dtype or p.device != device for p in params):
        return None
    return torch.zeros(sum(p.numel() for p in params), dtype=dtype, device=device)
