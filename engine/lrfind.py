"""The learning-rate range test: train a few steps at rates growing from tiny to huge, watch the
loss, suggest a rate, and put the model and optimizer back as they were.

    result = range_test(step_fn, model, optimizer, emit=...)   # step_fn(): one step, its loss
    result.suggested                                           # the rate to train with

The rate grows geometrically from `lr_min` to `lr_max` over `steps` steps. The loss is smoothed
(an exponential average, bias-corrected) and the test stops early once the smoothed loss is 4
times its lowest and has climbed back a tenth of the way it fell (near zero, noise of a few
times the lowest is no divergence), or is not finite: past there the rate only diverges. The
suggestion is the rate of the lowest smoothed loss divided by 10 (fastai's rule of thumb): well
inside the range where the loss still falls fast, below the edge where it blows up.
"""

from __future__ import annotations

import copy
import math
import shlex
import time
from dataclasses import dataclass, field
from typing import Callable

from . import events as ev
from .errors import UserError
from .recorder import one_number

SMOOTHING = 0.9  # weight of the past in the smoothed loss
DIVERGED = 4.0  # the test stops once the smoothed loss is this many times its lowest
CLIMBED_BACK = 0.1  # ... and has risen back this share of its fall from the first smoothed loss
EMIT_SECONDS = 0.1  # points go out in batches, about ten times a second
MIN_POINTS = 10  # fewer points than this suggest nothing


@dataclass
class RangeTest:
    """What the test saw: each rate tried, its loss and smoothed loss; the suggested rate (0 when
    none could be suggested) and why it stopped."""

    lr: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    suggested: float = 0.0
    reason: str = ""


LOWEST = 1e-10  # lr_min: below it, the test's steps would spread over rates that all train alike


def check_range(lr_min: float, lr_max: float, steps: int) -> None:
    """The range must grow within the rates a run can train at: LOWEST <= lr_min < lr_max <= the
    config's highest rate, and at least MIN_POINTS steps."""
    from .config import LR_RANGE

    if not (math.isfinite(lr_min) and math.isfinite(lr_max) and LOWEST <= lr_min < lr_max <= LR_RANGE[1]):
        raise UserError(f"lr_find: the rates must satisfy {LOWEST:g} <= lr_min < lr_max <= {LR_RANGE[1]:g} (the "
                        f"highest rate a run trains at); got lr_min={lr_min!r}, lr_max={lr_max!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not MIN_POINTS <= steps <= 100_000:
        raise UserError(f"lr_find: steps is {steps!r}; allowed: an integer from {MIN_POINTS} to 100000")


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, str]:
    """The rate of the lowest smoothed loss, divided by 10; and how it was chosen."""
    finite = [(s, lr) for lr, s in zip(lrs, smoothed) if math.isfinite(s)]
    if len(finite) < MIN_POINTS:
        return 0.0, "too few finite losses to suggest a rate"
    low, at = min(finite)
    first = finite[0][0]
    if low > 0.95 * first:
        return 0.0, (f"the loss never fell at rates from {lrs[0]:.3g} to {lrs[-1]:.3g}: try a range that reaches "
                     "higher (--lr-max, or lr_max), or, if it went high enough, check the data and the model")
    # Three significant digits: the rate a person reads, types and passes on (--set optim.lr=) is
    # then exactly the rate suggested.
    return float(f"{at / 10:.3g}"), (f"the smoothed loss was lowest ({low:.4g}) at {at:.3g}; a tenth of that "
                                     "trains fast and stays stable")


def range_test(step_fn: Callable[[], object], model, optimizer, *, lr_min: float = 1e-7, lr_max: float = 10.0,
               steps: int = 100, emit: Callable[..., None] = lambda **fields: None,
               set_lr: Callable[[float], None] | None = None) -> RangeTest:
    """Run the test: before each call of `step_fn` (one training step, returning its loss) the
    optimizer's rate is set to the next rate of the range; `emit(**fields)` gets `lr_find` event
    fields as points come in, and at the end. The model's and optimizer's state are restored
    afterwards, whatever happens."""
    check_range(lr_min, lr_max, steps)
    saved_model = copy.deepcopy(model.state_dict()) if model is not None else None
    saved_optim = copy.deepcopy(optimizer.state_dict())
    set_lr = set_lr or (lambda lr: [g.__setitem__("lr", lr) for g in optimizer.param_groups])
    result, sent, avg, lowest, first = RangeTest(), 0, 0.0, math.inf, math.nan
    factor = (lr_max / lr_min) ** (1 / (steps - 1))
    next_emit = time.perf_counter() + EMIT_SECONDS
    try:
        for i in range(steps):
            lr = lr_min * factor ** i
            set_lr(lr)
            loss = _number(step_fn())
            avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
            smooth = avg / (1 - SMOOTHING ** (i + 1)) if math.isfinite(loss) else math.nan
            result.lr.append(lr)
            result.loss.append(loss)
            result.smoothed.append(smooth)
            if not math.isfinite(smooth):
                result.reason = f"the loss became non-finite at {lr:.3g}"
                break
            first = smooth if i == 0 else first
            lowest = min(lowest, smooth)
            risen = smooth - lowest
            if i >= MIN_POINTS and smooth > DIVERGED * lowest and risen > CLIMBED_BACK * (first - lowest):
                result.reason = f"the loss diverged at {lr:.3g} ({DIVERGED:g}× its lowest)"
                break
            if time.perf_counter() >= next_emit:
                emit(**_points(result, sent))
                sent, next_emit = len(result.lr), time.perf_counter() + EMIT_SECONDS
        else:
            result.reason = f"reached the end of the range ({lr_max:g})"
    finally:
        if model is not None:
            model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optim)
    result.suggested, how = suggest(result.lr, result.smoothed)
    result.reason = f"{result.reason}; {how}"
    emit(**_points(result, sent), done=True, suggested=result.suggested, reason=result.reason)
    return result


def _points(result: RangeTest, start: int) -> dict:
    return {"lr": result.lr[start:], "loss": result.loss[start:], "smoothed": result.smoothed[start:]}


def _number(loss) -> float:
    """A step's loss as a float (one host sync: the test is short, and each point is judged)."""
    return float(one_number(loss, "lr_find: the step function's return value (it must be the step's loss)"))


def emitter(session) -> Callable[..., None]:
    """`emit` for `range_test`: each lr_find event emitted on a session and delivered at once."""
    def emit(**fields):
        session.emit(ev.LrFind, **fields)
        session.deliver()
    return emit


def config_range_test(run, *, run_args: list[str], lr_min: float = 1e-7, lr_max: float = 10.0,
                      steps: int = 100) -> RangeTest:
    """`traintop lr-find CONFIG`: the test on a config run's model, optimizer and training data
    (prepared with `Run.prepare(..., source="lr_find")`), logged in its run folder. `run_args`:
    the `traintop` arguments that train the same config; the final event carries them with
    `--set optim.lr=<the suggestion>` added (`run_args`), and as a command line (`command`)."""
    t, session = run.trainer, run.session
    check_range(lr_min, lr_max, steps)
    session.emit(
        ev.RunStarted, t=0.0, run_id=run.run_id, name=run.cfg.run.name, config=run.cfg.to_dict(),
        device=str(t.device), params=sum(p.numel() for p in t.params),
        data=t.data.summary(run.cfg.data.batch_size), epochs=0, steps_per_epoch=t.steps_per_epoch,
        world_size=1, source="lr_find")
    session.deliver()

    def batches():
        epoch = 0
        while True:
            yield from t.feeds["train"].batches(t.permutation(epoch), t.batch_size, augment=t.data.augment)
            epoch += 1

    feed = batches()
    t.model.train()

    def step_fn():
        xb, yb = next(feed)
        loss = t.objective(t.model(xb), yb)
        t.gradients.backward(loss)
        t.optimizer.step()
        return loss

    emit_now = emitter(session)

    def emit(**fields):
        if fields.get("done") and fields.get("suggested"):
            fields["run_args"] = [*run_args, "--set", f"optim.lr={fields['suggested']!r}"]
            fields["command"] = shlex.join(["traintop", *fields["run_args"]])
        emit_now(**fields)

    status, error = "completed", ""
    try:
        result = range_test(step_fn, t.model, t.optimizer, lr_min=lr_min, lr_max=lr_max, steps=steps,
                            emit=emit, set_lr=t.set_optimizer_lr)
    except BaseException as e:
        status, error = ("stopped", "") if isinstance(e, KeyboardInterrupt) else ("failed", f"{type(e).__name__}: {e}")
        raise
    finally:
        session.close(status, error, step=0, epoch=0, name=run.cfg.run.name)
    return result
