"""The loss of each backward pass, captured by wrapping `torch.Tensor.backward` and
`torch.autograd.backward`: no global backward hook exists, and loops that never hand their loss
to anyone (a script, the Hugging Face Trainer with a custom `compute_loss`) still call one of them.
A loop that takes its gradients from `torch.autograd.grad` and sets them itself is read from that
(wrapped too), but only in a step with no backward pass: elsewhere such a call is a part of the
loss (a gradient penalty), not the loss.

The wrappers call the originals with exactly the arguments they were given, so the user's numbers
do not change; the captured loss is a detached view, kept on the device.
`torch.amp.GradScaler.scale` is wrapped too, only to mark the loss it scales with its scaler:
a script's mixed-precision loss is recorded divided back to its true value.
"""

from __future__ import annotations

import threading

import torch

_local = threading.local()
_captures: list[LossCapture] = []
_originals: dict[str, object] = {}
_lock = threading.Lock()


class LossCapture:
    """Collects the scalar losses backpropagated since the last `take`, on the device."""

    def __init__(self, scaler=None):
        self.losses: list[torch.Tensor] = []
        self.divisors: list[float | None] = []  # what each loss was divided by as its last operation
        self.divided_by: float | None = None  # at `take`: the divisor all its losses share, if any
        self.grad_losses: list[torch.Tensor] = []  # the scalars differentiated by torch.autograd.grad
        self.scaler = scaler  # a GradScaler whose scale divides captured losses back

    def add(self, tensor: torch.Tensor, by_grad: bool = False) -> None:
        if tensor.numel() != 1 or not tensor.is_floating_point():
            return
        loss = tensor.detach().reshape(())
        scaler = getattr(tensor, "_traintop_scaler", None) or self.scaler  # a script's own GradScaler
        scale = getattr(scaler, "_scale", None)
        fn = tensor.grad_fn
        if isinstance(scale, torch.Tensor):  # a mixed-precision loss comes scaled: divide on the device
            loss = loss / scale.reshape(()).to(loss.device)
            if type(fn).__name__ == "MulBackward0" and fn.next_functions:  # the loss before its scaling
                fn = fn.next_functions[0][0]
        if by_grad:
            self.grad_losses.append(loss)
        else:
            self.losses.append(loss)
            self.divisors.append(divisor(fn))

    def take(self) -> list[torch.Tensor]:
        """The losses since the last call, oldest first: those of backward passes, or when there was
        none, those given to `torch.autograd.grad`."""
        losses, divisors = self.losses or self.grad_losses, self.divisors if self.losses else []
        self.divided_by = divisors[0] if divisors and divisors[0] and divisors.count(divisors[0]) == len(divisors) \
            else None
        self.losses, self.grad_losses, self.divisors = [], [], []
        return losses

    def __enter__(self) -> LossCapture:
        install(self)
        return self

    def __exit__(self, *exc) -> None:
        uninstall(self)


def divisor(fn) -> float | None:
    """The number a loss was divided by as its last operation (`loss / 4`, `loss * 0.25`: a loop
    that accumulates gradients scales each pass so), when it is a constant; else None. Read from
    the autograd node before the backward pass frees what it saved."""
    name = type(fn).__name__
    if name not in ("DivBackward0", "MulBackward0"):
        return None
    other = getattr(fn, "_saved_other", None)
    if not isinstance(other, torch.Tensor) or other.dim() or other.requires_grad or other.device.type != "cpu":
        return None  # the loss times a tensor of the model's, or a number a host read would wait for
    value = float(other)
    if name == "MulBackward0":
        return 1 / value if value else None
    return value


def install(capture: LossCapture) -> None:
    """Start feeding `capture`; the wrappers go in with the first capture."""
    with _lock:
        _captures.append(capture)
        if _originals:
            return
        _originals["tensor"] = torch.Tensor.backward
        _originals["autograd"] = torch.autograd.backward
        _originals["scale"] = torch.amp.GradScaler.scale
        _originals["grad"] = torch.autograd.grad
        torch.Tensor.backward = _tensor_backward
        torch.autograd.backward = _autograd_backward
        torch.autograd.grad = _autograd_grad
        torch.amp.GradScaler.scale = _scaler_scale


def uninstall(capture: LossCapture) -> None:
    """Stop feeding `capture`; the originals come back with the last one."""
    with _lock:
        if capture in _captures:
            _captures.remove(capture)
        if _captures or not _originals:
            return
        torch.Tensor.backward = _originals.pop("tensor")
        torch.autograd.backward = _originals.pop("autograd")
        torch.amp.GradScaler.scale = _originals.pop("scale")
        torch.autograd.grad = _originals.pop("grad")


def _offer(tensors, by_grad: bool = False) -> None:
    if getattr(_local, "inside", False):  # Tensor.backward calls autograd.backward: count it once
        return
    for tensor in tensors if isinstance(tensors, (list, tuple)) else (tensors,):
        if isinstance(tensor, torch.Tensor):
            for capture in _captures:
                capture.add(tensor, by_grad)


def _tensor_backward(self, *args, **kwargs):
    _offer(self)
    _local.inside = True
    try:
        return _originals["tensor"](self, *args, **kwargs)
    finally:
        _local.inside = False


def _autograd_backward(tensors, *args, **kwargs):
    _offer(tensors)
    was = getattr(_local, "inside", False)
    _local.inside = True
    try:
        return _originals["autograd"](tensors, *args, **kwargs)
    finally:
        _local.inside = was


def _autograd_grad(*args, **kwargs):
    if not torch.compiler.is_compiling():  # torch.compile calls it on traced tensors while it builds a graph
        _offer(args[0] if args else kwargs.get("outputs"), by_grad=True)
    return _originals["grad"](*args, **kwargs)


def _scaler_scale(self, outputs):
    # A loss scaled for mixed precision is marked with its scaler, so that its capture is divided back.
    scaled = _originals["scale"](self, outputs)
    if isinstance(scaled, torch.Tensor):
        scaled._traintop_scaler = self
    return scaled
