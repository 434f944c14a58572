"""Training speed while a user browses samples in the inference view, against idle.

Starts the digits demo as a detached engine process, connects as the dashboard does, and
alternates windows: idle, and browsing (one `predict` of a random validation sample a second,
current weights, as the inference view asks when it follows training). Each window's steps/s is
read from the run's own step counter; the figure is the median ratio of browsing to the idle
windows beside it.

    python bench/inference.py [--rounds 8] [--window 5]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--window", type=float, default=5.0, help="seconds per window")
    args = parser.parse_args()
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
