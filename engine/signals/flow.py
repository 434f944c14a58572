"""Gradients through the layers, and the time a step waits for its data."""

from __future__ import annotations

import math
from collections import deque

from ..config import SignalsConfig
from .loss import finding, median

WEIGHT_LAYERS = ("Linear", "Conv1d", "Conv2d", "Conv3d", "Bilinear")  # layers whose gradients are compared
ROWS = 8  # per-layer samples the vanishing ratio is the median of
EARLY_STEPS = 20  # the gradient norm's early level: the median of this many first steps
EXPLODE_STEPS = 5  # exploding: the median of this many latest steps
TIMING_SAMPLES = 8  # data_bound: the median share of this many latest timing samples
MIN_TIMING = 4  # ... once there are this many


class GradientFlow:
    """Vanishing and exploding gradients, from the per-layer norms each flush carries.

    Only weight layers (Linear, Conv) are compared, by their RMS gradient (the norm over the
    square root of the parameter count), so wide and narrow layers compare fairly; embeddings and
    normalisation layers are left out, their gradients are sparse or small by nature. A layer that
    has never had a gradient (unused) is left out too.

    `vanishing_gradients`: over the last 8 sampled steps, the median ratio of the smallest layer's
    RMS gradient to the largest's is below `vanishing_ratio`: the early layers hardly learn.

    `exploding_gradients`: the total gradient norm (median of the last 5 steps) is
    `exploding_factor` times its early level (median of the first 20 steps).
    """

    def __init__(self, settings: SignalsConfig, layers: list[dict]):
        self.s = settings
        self.early: list[float] = []
        self.early_level: float | None = None
        self.recent: deque[float] = deque(maxlen=EXPLODE_STEPS)
        self.rows: deque[tuple[float | None, dict[str, float]]] = deque(maxlen=ROWS)
        self.reached: set[str] = set()  # layers that have had a gradient
        self.vanishing = self.exploding = None
        self.set_layers(layers)

    def set_layers(self, layers: list[dict]) -> None:
        """The weight layers to compare: (name, description, parameter count, parameter names)."""
        self.layers = layers
        self.weights = [(m["name"], m.get("describe", ""), max(1, m.get("params", 1)), m.get("parameters", []))
                        for m in layers if m.get("describe", "").split(" ")[0] in WEIGHT_LAYERS
                        and m.get("parameters")]

    def steps(self, batch: dict) -> list:
        """The conditions holding after this batch."""
        norms = [norm for norm in batch["grad_norm"] if norm is not None and math.isfinite(norm)]
        if self.early_level is None:
            self.early.extend(norms[:EARLY_STEPS - len(self.early)])
            if len(self.early) == EARLY_STEPS:
                self.early_level = median(self.early)
        self.recent.extend(norms)
        self._rows(batch.get("layer_norms") or {}, len(batch.get("layer_steps") or []))
        step = batch["step"][-1]
        self._vanishing(step)
        self._exploding(step)
        return [f for f in (self.vanishing, self.exploding) if f is not None]

    def _rows(self, norms: dict, k: int) -> None:
        """Each sampled row as (the weakest over the strongest RMS gradient, the row), computed
        once as it comes: a flush reads the last ROWS of them."""
        for j in range(max(0, k - ROWS), k):
            row = {}
            for name, _, params, names in self.weights:
                values = [norms[p][j] for p in names if p in norms and j < len(norms[p])]
                if not values or any(v is None or not math.isfinite(v) for v in values):
                    break
                rms = math.sqrt(sum(v * v for v in values) / params)
                if rms > 0:
                    self.reached.add(name)
                row[name] = rms
            else:
                kept = {n: v for n, v in row.items() if n in self.reached}
                top = max(kept.values(), default=0.0)
                ratio = min(kept.values()) / top if len(kept) >= 2 and top > 0 else None
                self.rows.append((ratio, kept))

    def _vanishing(self, step: int) -> None:
        ratios = [ratio for ratio, _ in self.rows if ratio is not None]
        if len(ratios) < min(4, ROWS) or median(ratios) >= self.s.vanishing_ratio:
            self.vanishing = None
            return
        smallest: dict[str, list[float]] = {}
        for ratio, kept in self.rows:
            if ratio is not None:
                for n, v in kept.items():
                    smallest.setdefault(n, []).append(v)
        level = {n: median(v) for n, v in smallest.items()}
        top = max(level.values())
        weak = sorted((n for n in level if level[n] < self.s.vanishing_ratio * top), key=level.get)
        describe = {name: d for name, d, _, _ in self.weights}
        named = ", ".join(f"{n} ({describe[n]}: {level[n]:.1e})" for n in weak[:4]) + (
            f" and {len(weak) - 4} more" if len(weak) > 4 else "")
        strongest = max(level, key=level.get)
        ratio = median(ratios)
        what = "get no gradient at all" if ratio == 0 else "get almost no gradient"
        self.vanishing = finding(
            "vanishing_gradients", step, id="vanishing_gradients",
            message=f"layers {named} {what}: their RMS gradient is {ratio:.1e} of {strongest}'s ({top:.1e}), "
                    "so they hardly learn; deep stacks of sigmoid or tanh, or dead ReLUs, cause this",
            advice="ReLU or GELU activations, normalisation layers (batch or layer norm), residual connections, "
                   "or a careful initialisation (Kaiming/Xavier); fewer layers",
            values={"ratio": ratio, "layers": weak, "rms": {n: level[n] for n in weak}})

    def _exploding(self, step: int) -> None:
        if self.early_level is None or self.early_level <= 0 or len(self.recent) < EXPLODE_STEPS:
            return
        now = median(self.recent)
        if now < self.s.exploding_factor * self.early_level:
            if now < self.s.exploding_factor * self.early_level / 2:
                self.exploding = None
            return
        grown = ""
        if self.rows:
            row = self.rows[-1][1]
            top = sorted(row, key=row.get, reverse=True)[:3]
            describe = {name: d for name, d, _, _ in self.weights}
            grown = "; largest in " + ", ".join(f"{n} ({describe[n]})" for n in top)
        self.exploding = finding(
            "exploding_gradients", step, id="exploding_gradients",
            message=f"the gradient norm is {now:.3g}, {now / self.early_level:.0f}× its level over the first "
                    f"{EARLY_STEPS} steps ({self.early_level:.3g}){grown}: the updates are too large to be stable",
            advice="clip gradients (train.grad_clip, e.g. 1.0), lower the learning rate (-), or add "
                   "normalisation layers",
            values={"grad_norm": now, "early": self.early_level})

    def state_dict(self) -> dict:
        return {"early_level": self.early_level}

    def load_state_dict(self, state: dict) -> None:
        self.early_level = state.get("early_level", self.early_level)


class DataBound:
    """`data_bound`: the median share of a step spent waiting for its batch, over the last 8
    timing samples, is above `data_bound_share`: the model waits on the data pipeline."""

    def __init__(self, settings: SignalsConfig):
        self.s = settings
        self.shares: deque[tuple[float, float]] = deque(maxlen=TIMING_SAMPLES)  # (data share, step seconds)
        self.finding = None

    def steps(self, timing: dict) -> list:
        """The condition after these timing samples (a steps batch's `timing`)."""
        phases = [k for k in timing if k != "step"]
        if "data" in phases:
            for i in range(len(timing["data"])):
                total = sum(timing[p][i] for p in phases)
                if total > 0:
                    self.shares.append((timing["data"][i] / total, total))
            self._judge(timing["step"][-1] if timing.get("step") else 0)
        return [self.finding] if self.finding is not None else []

    def _judge(self, step: int) -> None:
        if len(self.shares) < MIN_TIMING:
            return
        share = median(s for s, _ in self.shares)
        if share <= self.s.data_bound_share:
            self.finding = None
            return
        seconds = median(t for _, t in self.shares)
        self.finding = finding(
            "data_bound", step, id="data_bound",
            message=f"each step spends {share:.0%} of its time waiting for the next batch ({share * seconds * 1000:.3g} "
                    f"of {seconds * 1000:.3g} ms): the data pipeline, not the model, sets the pace",
            advice="more DataLoader workers (num_workers), pin_memory and prefetching; decode or augment once "
                   "and cache; keep the data in memory (data.memory_limit_mb) or on the device",
            values={"share": share, "step_ms": seconds * 1000})
