"""The plots' content, from one run's state or several: which series, in which window of the run,
against which x axis, titled and marked. Shared by the run screen and the comparison.
"""

from __future__ import annotations

import numpy as np

from .marks import Marker
from .plot import Figure, Line
from .state import RunState
from .view import View, smoothing_alpha

LOSS_NAMES = {"mse": "mse", "l1": "l1", "huber": "huber", "bce": "bce", "cross_entropy": "cross-entropy"}


class Plots:
    """Builds each plot's Figure for one run, `buckets` points wide."""

    def __init__(self, state: RunState, view: View, buckets: int):
        self.s, self.view, self.buckets = state, view, buckets
        self.window = view.steps(float(state.step))
        self.axis = view.x_axis if view.x_axis != "epoch" or state.has_epochs() else "step"

    def line(self, series, label: str, color: str, axis: str | None = None, **style) -> Line:
        """`series` in the window, cut to the plot's width, against the x axis."""
        lo, hi = self.window if self.window is not None else (None, None)
        x, y = series.view(self.buckets, lo, hi)
        return Line(self.s.x_of(axis or self.axis, x), y, label, color, **style)

    def figure(self, title: str, lines: list[Line], axis: str | None = None, **kwargs) -> Figure:
        axis = axis or self.axis
        x_range = None
        if self.window is not None:
            ends = self.s.x_of(axis, np.asarray(self.window, dtype=np.float64))
            x_range = (float(ends[0]), float(ends[1]))
        return Figure(title, lines, self.marks(axis), x_title=axis, x_kind={"step": "number"}.get(axis, axis),
                      x_range=x_range, **kwargs)

    def marks(self, axis: str) -> list[Marker]:
        markers = self.s.markers
        if not markers:
            return []
        xs = self.s.x_of(axis, np.asarray([m.step for m in markers], dtype=np.float64))
        return [Marker(float(x), m.kind, m.label, m.t) for m, x in zip(markers, xs)]

    # -- the plots --------------------------------------------------------------------------------

    def loss(self) -> Figure:
        s, alpha = self.s, smoothing_alpha(self.view)
        lines = [self.line(s.loss, "raw" if alpha else "train", "cyan", faint=bool(alpha))]
        if alpha:
            lines.append(self.line(s.smoothed(alpha), f"ema {alpha}", "bright_cyan"))
        lines.append(self.line(s.val_loss, "val", "magenta", points="•"))
        loss = loss_name(s)
        title = f"loss ({loss})" if loss else "loss"
        return self.figure(title + (" · log" if self.view.log_y else ""), lines, log_y=self.view.log_y,
                           follow=True, mark_labels=True)

    def grad(self) -> Figure:
        return self.figure("gradient norm · log", [self.line(self.s.grad_norm, "grad norm", "green")], log_y=True)

    def lr(self) -> Figure:
        return self.figure("learning rate", [self.line(self.s.lr_series, "lr", "yellow")])

    def throughput(self) -> Figure:
        raw = self.line(self.s.throughput, "per batch", "blue", axis="time", faint=True)
        lines = [raw]
        if len(raw.y) >= 10:  # one batch's rate is jumpy: a running mean over five reads better
            lines.append(Line(raw.x[4:], np.convolve(raw.y, np.ones(5) / 5, mode="valid"), "mean of 5",
                              "bright_blue"))
        return self.figure("samples/s", lines, axis="time", follow=True)

    def choices(self, narrow: bool) -> list[tuple[str, object]]:
        """What the cycled plot (`m`) can show: at 80 columns every plot but the loss; else each
        validation metric, each extra scalar of the loop, and the throughput."""
        s = self.s
        first = [s.metric_name] if s.metric_name else []
        names = first + [n for n in s.metrics if n not in first]
        out: list[tuple[str, object]] = [("gradient norm", self.grad), ("learning rate", self.lr)] if narrow else []
        out += [(f"val {n}", n) for n in names]
        out += [(n, series) for n, series in s.scalars.items()]
        out.append(("samples/s", self.throughput))
        return out

    def chosen(self, narrow: bool) -> Figure:
        """The plot `m` cycles through, with a note of how many more there are."""
        choices = self.choices(narrow)
        title, what = choices[self.view.choice % len(choices)]
        more = f"m: {len(choices) - 1} more" if len(choices) > 1 else ""
        if callable(what):
            fig = what()
        elif isinstance(what, str):  # a validation metric, by name
            series = self.s.metrics.get(what, self.s.val_metric)
            unit = " (target units)" if what in ("rmse", "mae") and self.s.data.get("task") == "regression" else ""
            fig = self.figure(title + unit, [self.line(series, title, "magenta", points="•")],
                              empty_text="after the first validation")
        else:
            fig = self.figure(title, [self.line(what, title, "magenta")])
        fig.note = more
        return fig


def loss_name(s: RunState) -> str:
    """The loss function by name when it says what the numbers are (a regression's mse, say)."""
    loss = str(s.config.get("train", {}).get("loss", "auto"))
    if loss == "auto":
        return "mse" if s.data.get("task") == "regression" else ""
    return LOSS_NAMES.get(loss, loss)


def compared(states: list[RunState], runs, view: View, buckets: int) -> dict[str, Figure]:
    """The comparison's plots: each run one line (its colour, or its symbol without colour)."""
    alpha = smoothing_alpha(view)
    last = max((float(s.step) for s in states), default=0.0)
    window = view.steps(last)
    axis = view.x_axis if view.x_axis != "epoch" or all(s.has_epochs() for s in states) else "step"
    figures: dict[str, list[Line]] = {"loss": [], "metric": [], "grad": [], "lr": []}

    def line(s: RunState, series, run, **style) -> Line:
        lo, hi = window if window is not None else (None, None)
        x, y = series.view(buckets, lo, hi)
        return Line(s.x_of(axis, x), y, run.label, run.color, symbol=run.symbol, legend=False, **style)

    for s, run in zip(states, runs):
        figures["loss"].append(line(s, s.smoothed(alpha) if alpha else s.loss, run))
        figures["loss"].append(line(s, s.val_loss, run, joined=False, points="•" if run.symbol == "braille" else ""))
        figures["metric"].append(line(s, s.val_metric, run, points="•" if run.symbol == "braille" else ""))
        figures["grad"].append(line(s, s.grad_norm, run))
        figures["lr"].append(line(s, s.lr_series, run))
    x_range = None
    if window is not None and axis == "step":
        x_range = window
    kind = {"step": "number"}.get(axis, axis)
    smooth = f"ema {alpha}" if alpha else "raw"
    names = sorted({s.metric_name for s in states if s.metric_name})
    common = {"x_title": axis, "x_kind": kind, "x_range": x_range}
    return {
        "loss": Figure(f"loss (train {smooth}; • val)" + (" · log" if view.log_y else ""), figures["loss"],
                       log_y=view.log_y, follow=True, **common),
        "metric": Figure(f"val {' / '.join(names) or 'metric'}", figures["metric"],
                         empty_text="after the first validation", **common),
        "grad": Figure("gradient norm · log", figures["grad"], log_y=True, **common),
        "lr": Figure("learning rate", figures["lr"], **common),
    }
