"""Helpers for tests of watched loops: start a script, find its run once it serves, follow its events."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

from traintop.engine import events as ev
from traintop.engine.runstore import resolve_run

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PROBE = Path(__file__).resolve().parent / "scripts" / "lr_probe.py"
TRAINTOP = [sys.executable, "-m", "traintop.tui"]


def env_for(runs: Path) -> dict:
    return {**os.environ, "TRAINTOP_RUNS_DIR": str(runs), "OMP_NUM_THREADS": "1"}


def start(script: Path, *args: str, runs: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), *args], cwd=cwd, env=env_for(runs),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def live_folder(runs: Path, proc: subprocess.Popen, timeout: float = 60):
    """The run folder once its socket answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if runs.is_dir():
            for d in runs.iterdir():
                if (d / "control.sock").exists():
                    return resolve_run(str(d), runs)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the watched script never served its socket")


async def wait_for(source, predicate, timeout: float = 60) -> list[ev.Event]:
    seen = []

    async def collect():
        async for e in source.events():
            seen.append(e)
            if predicate(e):
                return

    await asyncio.wait_for(collect(), timeout)
    return seen


def steps_in(events) -> list[int]:
    return [s for e in events if isinstance(e, ev.Steps) for s in e.step]


def traintop(*args, runs: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*TRAINTOP, *args, "--runs-dir", str(runs)], capture_output=True, text=True, timeout=120)


@contextlib.asynccontextmanager
async def finished_dashboard(folder, size=(120, 40), tries: int = 200):
    """The dashboard on a finished run, once it has drawn the whole log: (app, pilot)."""
    from traintop.engine.client import open_run
    from traintop.tui.app import TrainTop

    async def open_it():
        return await open_run(folder)

    app = TrainTop(open_it, title=folder.run_id)
    async with app.run_test(size=size) as pilot:
        for _ in range(tries):
            if app.state.status == "finished" and app.drawn_version == app.state.version:
                break
            await pilot.pause(0.05)
        yield app, pilot
