"""Training speed while a user browses samples in the inference view, against idle.

Starts the digits demo as a detached engine process, connects as the dashboard does, and
alternates windows: idle, and browsing (one `predict` of a random validation sample a second,
current weights, as the inference view asks when it follows training). Each window's steps/s is
read from the run's own step counter; the figure is the median ratio of browsing to the idle
windows beside it.

With `--big`, big requests instead: a run on a synthetic table (`--rows` rows: 16 numeric and 2
categorical columns, 5 classes) is asked for `--records` raw records in one request, then for its
whole validation split (held-out references, answers only, in pages of at most
MAX_PREDICT_INPUTS as the dashboard's `a` asks). Each is timed from send to reply, with the longest
gap between two steps events meanwhile: how long training stood still.

    python bench/inference.py [--rounds 8] [--window 5]
    python bench/inference.py --big [--rows 60000] [--records 5000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from traintop.engine import commands as cmd
from traintop.engine import events as ev
from traintop.engine.client import LiveRun
from traintop.engine.runstore import resolve_run


async def measure(folder, rounds: int, window: float) -> list[float]:
    live = await LiveRun.connect(folder)
    latest = {"step": 0, "n_val": 0}

    async def follow():
        async for e in live.events():
            if isinstance(e, ev.Steps):
                latest["step"] = e.step[-1]
            elif isinstance(e, ev.RunStarted):
                latest["n_val"] = e.data["n_val"]

    follower = asyncio.create_task(follow())
    while latest["step"] == 0:
        await asyncio.sleep(0.1)
    n_val = latest["n_val"]
    await asyncio.sleep(2.0)  # past start-up

    async def window_speed(browse: bool) -> float:
        start_step, start = latest["step"], time.perf_counter()
        answers = 0
        while (elapsed := time.perf_counter() - start) < window:
            if browse:
                reply = await live.send(cmd.Predict(request_id=f"b{answers}",
                                                    inputs=[{"split": "val", "index": random.randrange(n_val)}]))
                assert reply.ok, reply.message
                answers += 1
                await asyncio.sleep(max(0.0, answers - (time.perf_counter() - start)))  # one a second
            else:
                await asyncio.sleep(min(0.2, window - elapsed))
        return (latest["step"] - start_step) / (time.perf_counter() - start)

    ratios = []
    for r in range(rounds):
        # idle, browse, idle: each browsing window against the mean of the idle ones around it
        before = await window_speed(False)
        browsing = await window_speed(True)
        after = await window_speed(False)
        ratio = browsing / ((before + after) / 2)
        ratios.append(ratio)
        print(f"round {r + 1}: idle {before:6.0f} / {after:6.0f} steps/s  browsing {browsing:6.0f} steps/s  "
              f"ratio {ratio:.3f}", file=sys.stderr)
    await live.send(cmd.Stop(save=False))
    follower.cancel()
    await live.close()
    return ratios


def write_table(path: Path, rows: int) -> list[dict]:
    """A synthetic classification table as a CSV; its feature records (without the label)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({f"x{i}": rng.normal(size=rows).round(4) for i in range(16)})
    frame["colour"] = rng.choice(["red", "green", "blue", "grey"], size=rows)
    frame["size"] = rng.choice(["S", "M", "L"], size=rows)
    score = frame["x0"] + frame["x1"] * frame["x2"] + (frame["colour"] == "red")
    frame["label"] = pd.cut(score, 5, labels=["a", "b", "c", "d", "e"]).astype(str)
    frame.to_csv(path, index=False)
    return frame.drop(columns="label").to_dict("records")


async def big_requests(folder, records: list[dict], repeats: int) -> dict[str, list[tuple[float, float]]]:
    """(seconds to the reply, longest gap between steps events) per request, by request kind."""
    live = await LiveRun.connect(folder)
    arrivals: list[float] = []
    n_val = []

    async def follow():
        async for e in live.events():
            if isinstance(e, ev.Steps):
                arrivals.append(time.perf_counter())
            elif isinstance(e, ev.RunStarted):
                n_val.append(e.data["n_val"])

    follower = asyncio.create_task(follow())
    while len(arrivals) < 20:
        await asyncio.sleep(0.1)
    limit = getattr(cmd, "MAX_PREDICT_INPUTS", None) or 1 << 62

    async def timed(inputs: list[dict], with_inputs: bool) -> tuple[float, float]:
        await asyncio.sleep(1.0)  # training goes on between requests
        start = time.perf_counter()
        for first in range(0, len(inputs), limit):  # pages, as the dashboard asks
            reply = await live.send(cmd.Predict(request_id="big", inputs=inputs[first:first + limit],
                                                with_inputs=with_inputs), timeout=600)
            assert reply.ok, reply.message
        end = time.perf_counter()
        await asyncio.sleep(0.5)  # the first steps event after the reply
        times = [start] + [t for t in arrivals if t > start] + [time.perf_counter()]
        return end - start, max(b - a for a, b in zip(times, times[1:]))

    out: dict[str, list[tuple[float, float]]] = {"records": [], "split": []}
    for _ in range(repeats):
        out["records"].append(await timed(records, True))
        out["split"].append(await timed([{"split": "val", "index": i} for i in range(n_val[0])], False))
    await live.send(cmd.Stop(save=False))
    follower.cancel()
    await live.close()
    out["n_val"] = n_val[0]
    return out


def big_main(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "table.csv"
        records = write_table(table, args.rows)[:args.records]
        runs = Path(tmp) / "runs"
        proc = subprocess.run([sys.executable, "-m", "traintop.tui", "run", "--detach", "--runs-dir", str(runs),
                               "--set", 'data.source="csv"', "--set", f'data.path="{table}"',
                               "--set", 'data.target="label"', "--set", "train.epochs=100000",
                               "--set", "early_stopping.enabled=false", "--set", "run.device=\"cpu\""],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        folder = resolve_run(proc.stdout.split()[0], runs)
        try:
            out = asyncio.run(big_requests(folder, records, args.repeats))
        finally:
            pid = (folder.read_json("meta.json") or {}).get("pid")
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    print(f"a {args.rows:,}-row table (16 numeric, 2 categorical columns, 5 classes), MLP; "
          f"median of {args.repeats}")
    for kind, what in (("records", f"{len(records):,} raw records"),
                       ("split", f"the whole validation split ({out['n_val']:,} samples, answers only)")):
        reply = statistics.median(r for r, _ in out[kind])
        gap = statistics.median(g for _, g in out[kind])
        print(f"  {what:55s} reply {reply:7.3f} s   training stood still {gap:7.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--window", type=float, default=5.0, help="seconds per window")
    parser.add_argument("--big", action="store_true", help="time big requests instead")
    parser.add_argument("--rows", type=int, default=60_000, help="--big: rows of the table")
    parser.add_argument("--records", type=int, default=5_000, help="--big: raw records in one request")
    parser.add_argument("--repeats", type=int, default=3, help="--big: requests of each kind")
    args = parser.parse_args()
    if args.big:
        return big_main(args)
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        proc = subprocess.run([sys.executable, "-m", "traintop.tui", "run", "--detach", "--runs-dir", str(runs),
                               "--set", "train.epochs=100000", "--set", "early_stopping.enabled=false",
                               "--set", "run.device=\"cpu\""], capture_output=True, text=True, check=True)
        folder = resolve_run(proc.stdout.split()[0], runs)
        try:
            ratios = asyncio.run(measure(folder, args.rounds, args.window))
        finally:
            pid = (folder.read_json("meta.json") or {}).get("pid")
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    print(f"digits MLP, one predict a second vs idle, {args.rounds} rounds of {args.window:g} s windows")
    print(f"ratio      median {statistics.median(ratios):.3f}  (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
