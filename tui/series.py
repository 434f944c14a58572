"""Growing numeric series for the dashboard, and min/max bucketing so plots cost the same at
a thousand points or a million."""

from __future__ import annotations

import numpy as np


BLOCK = 64


class Series:
    """An append-only (x, y) series backed by numpy arrays that double when full.

    Alongside the raw points it keeps each full block of BLOCK points' min and max, so a view of
    a million points buckets ~30 thousand instead.
    """

    def __init__(self, capacity: int = 1024, summarize: bool = True):
        self._x = np.empty(capacity, dtype=np.float64)
        self._y = np.empty(capacity, dtype=np.float64)
        self.n = 0
        self._blocks: Series | None = Series(64, summarize=False) if summarize else None
        self._blocked = 0  # raw points already summarized into blocks

    def __len__(self) -> int:
        return self.n

    def extend(self, xs, ys) -> None:
        """Append points; xs and ys have equal length."""
        k = len(xs)
        if k == 0:
            return
        if self.n + k > len(self._x):
            size = max(2 * len(self._x), self.n + k)
            self._x = np.resize(self._x, size)
            self._y = np.resize(self._y, size)
        self._x[self.n:self.n + k] = xs
        self._y[self.n:self.n + k] = ys
        self.n += k
        if self._blocks is not None:
            self._summarize()

    def _summarize(self) -> None:
        full = (self.n - self._blocked) // BLOCK
        if not full:
            return
        start, end = self._blocked, self._blocked + full * BLOCK
        y = self._y[start:end].reshape(full, BLOCK)
        y = np.where(np.isfinite(y), y, np.nan)
        finite = ~np.isnan(y).all(axis=1)
        safe = np.where(np.isnan(y), np.inf, y)
        lo = safe.argmin(axis=1)
        hi = np.where(np.isnan(y), -np.inf, y).argmax(axis=1)
        base = start + np.arange(full) * BLOCK
        idx = np.sort(np.stack([base + lo, base + hi], axis=1), axis=1)[finite].ravel()
        self._blocks.extend(self._x[idx], self._y[idx])
        self._blocked = end

    def append(self, x: float, y: float) -> None:
        self.extend((x,), (y,))

    @property
    def x(self) -> np.ndarray:
        return self._x[:self.n]

    @property
    def y(self) -> np.ndarray:
        return self._y[:self.n]

    def view(self, buckets: int, lo: float | None = None, hi: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """At most ~2*buckets points of the series (of its x from `lo` to `hi` when given), each
        bucket's min and max kept."""
        x, y = self.x, self.y
        if lo is not None or hi is not None:
            start = 0 if lo is None else int(np.searchsorted(x, lo, side="left"))
            end = self.n if hi is None else int(np.searchsorted(x, hi, side="right"))
        else:
            start, end = 0, self.n
        if self._blocks is None or end - start <= 4 * BLOCK * buckets or not len(self._blocks):
            return minmax_buckets(x[start:end], y[start:end], buckets)
        # Long: the block summaries of the full blocks inside the range, the raw points at its ends.
        first_block = -(-start // BLOCK)
        last_block = min(end, self._blocked) // BLOCK
        if last_block <= first_block:
            return minmax_buckets(x[start:end], y[start:end], buckets)
        bx = self._blocks.x
        b_start = int(np.searchsorted(bx, x[first_block * BLOCK], "left"))
        b_end = int(np.searchsorted(bx, x[last_block * BLOCK - 1], "right"))
        head = slice(start, first_block * BLOCK)
        tail = slice(last_block * BLOCK, end)
        xs = np.concatenate([x[head], bx[b_start:b_end], x[tail]])
        ys = np.concatenate([y[head], self._blocks.y[b_start:b_end], y[tail]])
        return minmax_buckets(xs, ys, buckets)


def minmax_buckets(x: np.ndarray, y: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """At most 2*buckets points keeping each bucket's min and max (in x order), so spikes survive.

    Non-finite values are left out. Linear in the number of points, all in numpy.
    """
    keep = np.isfinite(y)
    if not keep.all():
        x, y = x[keep], y[keep]
    n = len(y)
    if n <= 2 * buckets:
        return x, y
    width = -(-n // buckets)
    rows = -(-n // width)
    padded = np.empty(rows * width)
    padded[:n] = y
    padded[n:] = y[-1]
    grid = padded.reshape(rows, width)
    base = np.arange(rows) * width
    lo = np.minimum(base + grid.argmin(axis=1), n - 1)
    hi = np.minimum(base + grid.argmax(axis=1), n - 1)
    idx = np.unique(np.concatenate([[0], lo, hi, [n - 1]]))  # the ends too: a curve starts where the run does
    return x[idx], y[idx]


class Ema:
    """An exponential moving average kept up to date as points arrive (debiased at the start)."""

    def __init__(self, alpha: float):
        self.alpha = alpha
        self.values = Series()
        self._acc = 0.0
        self._weight = 0.0

    def extend(self, xs: np.ndarray, ys: np.ndarray) -> None:
        a = self.alpha
        ys = np.where(np.isfinite(ys), ys, np.nan)
        # Closed form over chunks short enough that a**-k stays representable:
        # acc_k = a^k acc_0 + (1 - a) sum_i a^(k-i) y_i
        chunk = max(1, min(512, int(200 / max(1e-9, -np.log10(a))))) if a > 0 else len(ys)
        out = np.empty(len(ys))
        for start in range(0, len(ys), chunk):
            y = ys[start:start + chunk]
            valid = np.isfinite(y)
            y0 = np.where(valid, y, 0.0)
            k = np.arange(1, len(y) + 1)
            powers = a ** k
            acc = powers * self._acc + (1 - a) * powers * np.cumsum(np.where(valid, y0, 0.0) / powers)
            weight = powers * self._weight + (1 - a) * powers * np.cumsum(valid / powers)
            # a step without a finite loss has no average either: a gap, not the last one carried on
            out[start:start + len(y)] = np.where(valid & (weight > 0), acc / np.where(weight > 0, weight, 1), np.nan)
            self._acc, self._weight = float(acc[-1]), float(weight[-1])
        self.values.extend(xs, out)
