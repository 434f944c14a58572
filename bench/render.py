"""The dashboard's costs: redraw time, training speed with it attached, and start-up time.

1. Redraw: the whole run screen (header, four plots, side panel) redrawn after new steps arrive,
   with a history of 1,000 and of 1,000,000 steps; median milliseconds per redraw.
2. Training speed of the digits MLP with the dashboard attached (its own process, redrawing ten
   times a second) against headless, interleaved rounds; steps/s from the run's own events.
3. Start-up: `traintop` (the demo: the dashboard, then the engine) and `traintop show RUN` from the
   shell to the first painted frame, and `show` to the first frame with the curves drawn, in
   tmux; as a ratio too, against `python -c "import textual.app"`
   timed the same way in the same rounds (this machine is shared and noisy).

    python bench/render.py [--rounds 3] [--parts redraw,training,startup]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from traintop.engine import events as ev
from traintop.engine.client import open_run
from traintop.engine.runstore import RunFolder, read_events
from traintop.tui.app import TrainTop

TRAINTOP = [sys.executable, "-m", "traintop.tui"]
# The console script beside this Python (not a version manager's shim found first on PATH, whose
# own start-up would be counted).
TRAINTOP_SCRIPT = shutil.which("traintop", path=str(Path(sys.executable).parent)) or "traintop"
LAYERS = ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]


def synthetic_steps(first: int, n: int, rng) -> ev.Steps:
    steps = np.arange(first, first + n)
    loss = 2.3 * np.exp(-steps / 2e5) + 0.05 * rng.random(n)
    picked = steps[np.linspace(0, n - 1, 8).astype(int)]
    return ev.Steps(t=float(first) / 1000, step=steps.tolist(), epoch=(steps // 20 + 1).tolist(),
                    loss=loss.tolist(), grad_norm=(1 + rng.random(n)).tolist(), lr=[1e-3] * n,
                    samples_per_s=60000.0, layer_norms={k: rng.random(8).tolist() for k in LAYERS},
                    layer_steps=picked.tolist())


class Replay:
    """A source that hands the app a prepared history, then stays open like a live run."""

    live = False
    closed_reason = ""

    def __init__(self, events):
        self._events = events

    async def events(self):
        for e in self._events:
            yield e

    async def send(self, command):
        raise RuntimeError

    async def close(self):
        pass


def history(n_steps: int) -> list[ev.Event]:
    rng = np.random.default_rng(0)
    started = ev.RunStarted(t=0.0, run_id="bench", name="bench", device="cpu", params=26122,
                            data={"task": "classification", "classes": [str(i) for i in range(10)]},
                            config={"data": {"batch_size": 64}}, epochs=n_steps // 20, steps_per_epoch=20)
    out: list[ev.Event] = [started]
    for first in range(1, n_steps + 1, 250):
        out.append(synthetic_steps(first, min(250, n_steps - first + 1), rng))
        if first % 5000 == 1:
            out.append(ev.Validation(t=first / 1000, step=first, epoch=first // 20, val_loss=0.1,
                                     metrics={"accuracy": 0.95}, best=first < n_steps // 2))
        if first % (n_steps // 4 or 1) == 1 and first > 1:  # marks to draw: LR changes, a warning
            out.append(ev.LrChanged(t=first / 1000, step=first, old=1e-3, new=5e-4, source="user"))
            out.append(ev.RunWarning(t=first / 1000, kind="plateau", step=first, message="no improvement",
                                     id="plateau"))
    return out


async def redraw_times(n_steps: int, rounds: int = 40) -> list[float]:
    events = history(n_steps)

    async def opener():
        return Replay(events)

    app = TrainTop(opener, title="bench")
    rng = np.random.default_rng(1)
    times = []
    async with app.run_test(size=(120, 40)) as pilot:
        while len(app.state.loss) < n_steps:
            await pilot.pause(0.05)
        await pilot.pause(0.3)
        next_step = n_steps + 1
        for _ in range(rounds):
            app.state.apply(synthetic_steps(next_step, 25, rng))
            next_step += 25
            start = time.perf_counter()
            app.redraw()
            for plot in app.query("PlotWidget"):
                plot.render()
            times.append((time.perf_counter() - start) * 1000)
            await pilot.pause(0.02)
    return times


def steps_per_s(folder: RunFolder) -> float:
    events, _ = read_events(folder.events)
    steps = [e for e in events if isinstance(e, ev.Steps)]
    return (steps[-1].step[-1] - steps[0].step[0]) / (steps[-1].t - steps[0].t)


async def watch(folder: Path) -> None:
    """A dashboard process: attach to the run and redraw until it finishes."""
    async def opener():
        return await open_run(RunFolder(folder))

    app = TrainTop(opener, title="bench")
    async with app.run_test(size=(120, 40)) as pilot:
        while app.state.status not in ("finished", "failed"):
            await pilot.pause(0.1)


def training_speed(rounds: int, epochs: int) -> tuple[list[float], list[float]]:
    alone, watched = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for with_dashboard in (False, True):
                runs = Path(tmp) / f"{r}-{with_dashboard}"
                proc = subprocess.run([*TRAINTOP, "run", "--detach", "--runs-dir", str(runs),
                                       "--set", f"train.epochs={epochs}", "--set", "early_stopping.enabled=false"],
                                      capture_output=True, text=True, check=True)
                folder = RunFolder(runs / proc.stdout.split()[0])
                if with_dashboard:
                    watcher = subprocess.run([sys.executable, __file__, "--watch", str(folder.path)],
                                             capture_output=True, text=True, timeout=900)
                    if watcher.returncode != 0:  # say why, with the run's side of the story
                        log = folder.log.read_text(errors="replace") if folder.log.exists() else ""
                        sys.exit(f"the watching dashboard exited with status {watcher.returncode}:\n"
                                 f"{watcher.stderr[-3000:]}\nengine.log ends:\n{log[-1500:]}")
                while not folder.report.exists():
                    time.sleep(0.1)
                (watched if with_dashboard else alone).append(steps_per_s(folder))
                print(f"round {r + 1} {'dashboard' if with_dashboard else 'headless '}: "
                      f"{(watched if with_dashboard else alone)[-1]:.0f} steps/s", file=sys.stderr)
    return alone, watched


def startup_times(tries: int = 7) -> dict[str, list[tuple[float, float]]]:
    """(seconds from starting a command in a 100x30 tmux window to the moment it reports, the CPU
    seconds its process used by then), per kind: the baseline (importing textual.app), and
    `traintop show`'s first frame and first curves."""
    if not shutil.which("tmux"):
        return {}
    times: dict[str, list[tuple[float, float]]] = {"baseline": [], "demo": [], "frame": [], "curves": []}
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        subprocess.run([*TRAINTOP, "run", "--headless", "--runs-dir", str(runs), "--set", "train.epochs=2"],
                       check=True, capture_output=True)
        # A tmux server of our own, kept up between windows: when the last session of a server
        # ends, the server exits, and a `tmux new` racing with that exit fails.
        server = ["tmux", "-L", f"traintop-bench-{os.getpid()}"]
        subprocess.run([*server, "new", "-d", "-s", "keep", "sleep 3600"], check=True)
        socket = subprocess.run([*server, "display", "-p", "#{socket_path}"], capture_output=True,
                                text=True).stdout.strip()
        try:
            for i in range(tries):
                for kind in times:  # interleaved, so that load from elsewhere hits all three alike
                    mark = Path(tmp) / f"{kind}{i}"
                    if kind == "baseline":
                        command = (f"{sys.executable} -c 'import textual.app, time; open(\"{mark}\", \"w\")"
                                   f".write(f\"{{time.time()}} {{time.process_time()}}\")'")
                    elif kind == "demo":  # quits at its first frame, before it starts the engine
                        command = (f"TRAINTOP_START_UP=frame TRAINTOP_START_UP_FILE={mark} "
                                   f"{TRAINTOP_SCRIPT} --runs-dir {runs}")
                    else:
                        command = (f"TRAINTOP_START_UP={kind} TRAINTOP_START_UP_FILE={mark} "
                                   f"{TRAINTOP_SCRIPT} show latest --runs-dir {runs}")
                    start = time.time()
                    subprocess.run([*server, "new", "-d", "-x", "100", "-y", "30", command], check=True)
                    deadline = start + 60
                    while not (mark.exists() and mark.read_text().strip()) and time.time() < deadline:
                        time.sleep(0.005)
                    wall, cpu = map(float, mark.read_text().split())
                    times[kind].append((wall - start, cpu))
                    time.sleep(0.3)  # let the window close before the next one starts
        finally:
            subprocess.run([*server, "kill-server"], check=False)
            if socket:  # tmux leaves its socket file behind
                Path(socket).unlink(missing_ok=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)  # the demo: 79 steps an epoch
    parser.add_argument("--parts", default="redraw,training,startup",
                        help="which measurements, comma-separated: redraw, training, startup")
    parser.add_argument("--watch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.watch:
        asyncio.run(watch(Path(args.watch)))
        return
    parts = set(args.parts.split(","))
    if "redraw" in parts:
        small = asyncio.run(redraw_times(1_000))
        large = asyncio.run(redraw_times(1_000_000))
        print("redraw of the whole run screen at 120x40 (median of 40):")
        print(f"  1,000 steps      {statistics.median(small):6.1f} ms")
        print(f"  1,000,000 steps  {statistics.median(large):6.1f} ms   "
              f"({statistics.median(large) / statistics.median(small):.2f}x)", flush=True)
    if "training" in parts:
        alone, watched = training_speed(args.rounds, args.epochs)
        print(f"training speed, digits MLP ({args.rounds} interleaved rounds, medians):")
        print(f"  headless            {statistics.median(alone):7.0f} steps/s")
        print(f"  dashboard attached  {statistics.median(watched):7.0f} steps/s   "
              f"(ratio {statistics.median(watched) / statistics.median(alone):.3f})", flush=True)
    starts = startup_times() if "startup" in parts else {}
    if starts:
        def medians(kind):
            return (statistics.median(w for w, _ in starts[kind]), statistics.median(c for _, c in starts[kind]),
                    min(w for w, _ in starts[kind]))
        base, base_cpu, base_min = medians("baseline")
        print(f"start-up of {TRAINTOP_SCRIPT} in a 100x30 tmux window (medians of {len(starts['baseline'])} "
              "interleaved tries; wall clock, then CPU time of the process):")
        print(f"  python -c 'import textual.app'           {base:5.2f} s (min {base_min:.2f})   cpu {base_cpu:5.2f} s")
        for kind, what in (("demo", "traintop, first painted frame"), ("frame", "traintop show RUN, first frame"),
                           ("curves", "traintop show RUN, curves drawn")):
            wall, cpu, low = medians(kind)
            print(f"  {what:<38} {wall:5.2f} s (min {low:.2f})   cpu {cpu:5.2f} s   "
                  f"({wall / base:.2f}x the baseline's wall clock, {cpu / base_cpu:.2f}x its cpu)")


if __name__ == "__main__":
    main()
