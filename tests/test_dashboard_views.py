"""The dashboard's screens as text, from fixed event logs: one run and several overlaid, at 80x24
and 120x40; the command palette; and what the dashboard loads before its first frame.

The snapshots live in tests/snapshots/. After a deliberate change to the screen, rewrite them with
`TRAINTOP_UPDATE_SNAPSHOTS=1 python -m pytest tests/test_dashboard_views.py` and read the diff.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from traintop.engine import events as ev
from traintop.engine.client import open_run
from traintop.engine.runstore import RunFolder
from traintop.tui.app import TrainTop
from traintop.tui.compare import CompareTop
from traintop.tui.keys import LR_FIND_KEYS

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("TRAINTOP_UPDATE_SNAPSHOTS") == "1"
TRAINTOP = [sys.executable, "-m", "traintop.tui"]


def write_run(runs: Path, name: str, lr: float, decay: float, epochs: int = 8, steps_per_epoch: int = 25,
              stop_at: int | None = None) -> RunFolder:
    """A finished run folder whose events.jsonl is made here, every number and time fixed."""
    folder = RunFolder(runs / f"20261126-120000-{name}")
    folder.checkpoints.mkdir(parents=True)
    folder.meta.write_text(json.dumps({"name": name, "pid": 0, "started": "2026-11-26T12:00:00"}))
    config = {"run": {"name": name}, "data": {"source": "digits", "batch_size": 64},
              "optim": {"name": "adam", "lr": lr}, "train": {"epochs": epochs},
              "early_stopping": {"enabled": True, "monitor": "val_loss", "mode": "min", "patience": 3}}
    events: list[ev.Event] = [ev.RunStarted(
        t=0.0, run_id=folder.run_id, name=name, config=config, device="cpu", params=26122,
        data={"task": "classification", "n_train": 1258, "n_val": 270, "n_test": 269, "features": 64,
              "classes": [str(i) for i in range(10)]},
        epochs=epochs, steps_per_epoch=steps_per_epoch)]
    rate, best, since_best, step, t = lr, math.inf, 0, 0, 0.0
    last_epoch = stop_at or epochs
    for epoch in range(1, last_epoch + 1):
        steps = list(range(step + 1, step + steps_per_epoch + 1))
        step = steps[-1]
        t = round(t + 0.25, 3)
        loss = [round(0.05 + 2.2 * math.exp(-s / decay) + 0.08 * math.sin(1.7 * s) ** 2, 7) for s in steps]
        grad = [round(0.05 + math.exp(-s / (2 * decay)) * (1 + 0.5 * math.cos(0.9 * s) ** 2), 7) for s in steps]
        events.append(ev.Steps(t=t, step=steps, epoch=[epoch] * len(steps), loss=loss, grad_norm=grad,
                               lr=[rate] * len(steps), samples_per_s=6400.0,
                               layer_norms={"0.weight": grad[::5], "2.weight": [g / 2 for g in grad[::5]]},
                               layer_steps=steps[::5]))
        val_loss = round(0.12 + 2.0 * math.exp(-step / decay) + 0.004 * max(0, epoch - 5) ** 2, 7)
        improved = val_loss < best
        best, since_best = (val_loss, 0) if improved else (best, since_best + 1)
        events.append(ev.Validation(t=t, step=step, epoch=epoch, val_loss=val_loss,
                                    metrics={"accuracy": round(min(0.98, 1 - val_loss / 2.5), 4)},
                                    best=improved, since_best=since_best))
        events.append(ev.EpochEnd(t=t, epoch=epoch, step=step, train_loss=round(sum(loss) / len(loss), 7),
                                  seconds=0.25))
        if epoch == 4:
            events.append(ev.LrChanged(t=t, step=step, old=rate, new=rate / 2, source="user"))
            rate /= 2
    if stop_at:
        events.append(ev.RunWarning(t=t, kind="overfitting", step=step,
                                    message="validation loss rose 3 times in a row while training loss fell"))
        events.append(ev.EarlyStopped(t=t, step=step, epoch=stop_at, best_epoch=stop_at - since_best,
                                      best_value=best, monitor="val_loss"))
    events.append(ev.TestResult(t=t + 0.05, metrics={"accuracy": 0.9665, "loss": 0.1234}, step=step))
    events.append(ev.RunFinished(t=t + 0.05, status="early_stopped" if stop_at else "completed",
                                 step=step, epoch=last_epoch))
    folder.events.write_text("".join(e.to_line() + "\n" for e in events))
    return folder


def opener(folder: RunFolder):
    async def open_it():
        return await open_run(folder)
    return open_it


def screen_text(app) -> str:
    """The screen as a person reads it: one line per row, trailing blanks dropped."""
    return "\n".join(strip.text.rstrip() for strip in app.screen._compositor.render_strips()) + "\n"


def check_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / f"{name}.txt"
    if UPDATE or not path.exists():
        assert UPDATE, f"no snapshot {path}; make it with TRAINTOP_UPDATE_SNAPSHOTS=1"
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    expected = path.read_text(encoding="utf-8")
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            f"{path.name} (stored)", "on screen now"))
        from importlib.metadata import version

        raise AssertionError(f"the screen differs from {path} (made with textual 8.2.8 and plotext 6.1.0; "
                             f"this is textual {version('textual')}, plotext {version('plotext')}):\n{diff}")


async def settle(pilot, done) -> None:
    """Wait until `done()` holds and the screen has caught up with it."""
    for _ in range(200):
        if done():
            break
        await pilot.pause(0.05)
    else:
        raise AssertionError("the dashboard never got there")
    await pilot.pause(0.3)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_one_run_reads_the_same_as_its_snapshot(tmp_path, size, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    folder = write_run(tmp_path, "digits-mlp", lr=0.001, decay=30, stop_at=7)
    app = TrainTop(opener(folder), title=folder.run_id)
    async with app.run_test(size=size) as pilot:
        await settle(pilot, lambda: app.state.status == "finished" and app.drawn_version == app.state.version)
        text = screen_text(app)
    assert "early stopped" in text and "elapsed 1.8s" in text
    check_snapshot(f"show-one-{size[0]}x{size[1]}", text)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_several_runs_overlay_with_a_legend_as_in_the_snapshot(tmp_path, size, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")  # runs told apart by symbol, so the text shows which is which
    runs = [write_run(tmp_path, "adam", lr=0.001, decay=30),
            write_run(tmp_path, "sgd", lr=0.05, decay=70),
            write_run(tmp_path, "rmsprop", lr=0.002, decay=45, stop_at=6)]
    app = CompareTop([(folder.run_id.split("-")[-1], opener(folder)) for folder in runs])
    async with app.run_test(size=size) as pilot:
        await settle(pilot, lambda: app.runs[0].state is not None
                     and all(run.state.status == "finished" for run in app.runs)
                     and app.drawn_version and app.drawn_version[0] == tuple(r.state.version for r in app.runs))
        text = screen_text(app)
        loss = app.query_one("#loss-plot").figure
        assert [line.label for line in loss.lines if line.joined] == ["adam", "sgd", "rmsprop"]
        assert len({line.symbol for line in loss.lines if line.joined}) == 3  # each run its own look
    assert "comparing 3 runs  2 completed, 1 early stopped" in text
    assert "⣿⣿ adam   •• sgd   xx rmsprop" in text  # the legend names every run
    check_snapshot(f"show-three-{size[0]}x{size[1]}", text)


async def test_every_key_is_in_the_command_palette_with_its_description(tmp_path):
    folder = write_run(tmp_path, "digits-mlp", lr=0.001, decay=30)
    app = TrainTop(opener(folder), title=folder.run_id)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, lambda: app.state.status == "finished")
        commands = list(app.get_system_commands(app.screen))
        titles = [c.title for c in commands]
        for binding in app.BINDINGS:
            key = binding.key_display or binding.key
            found = [c for c in commands if c.help == f"key {key}: {binding.description}"]
            if binding in LR_FIND_KEYS:  # only on an lr-find run that suggested a rate
                assert not found
                continue
            assert len(found) == 1, f"key {key} ({binding.action}) is not in the palette"
            assert found[0].title and found[0].title == (binding.tooltip or binding.description)
        assert titles.count("Quit") == 0  # Textual's Quit would leave a live run without asking
        assert "Theme" in titles

        # Driven as a user drives it: open the palette, type, pick.
        assert not app.log_y
        await pilot.press("ctrl+p")
        await pilot.pause(0.3)
        await pilot.press(*"loss axis")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert app.log_y
        assert app.query_one("#loss-plot").figure.log_y

        smoothing = app.smoothing
        await next(c for c in commands if c.title.startswith("Loss smoothing")).callback()
        assert app.smoothing != smoothing
        await pilot.press("ctrl+q")  # quits as `q` does: a finished run has nothing to ask about
        await pilot.pause(0.2)
    assert app.return_value == ""


async def test_a_comparison_reads_a_killed_run_as_killed(tmp_path):
    """A run whose log ends with no run_finished (its engine killed), beside a finished one: the
    comparison says killed, as ls and show do, not running."""
    done, killed = write_run(tmp_path, "adam", lr=0.001, decay=30), write_run(tmp_path, "sgd", lr=0.05, decay=70)
    lines = killed.events.read_text().splitlines(keepends=True)
    killed.events.write_text("".join(line for line in lines if '"test_result"' not in line
                                     and '"run_finished"' not in line))
    app = CompareTop([(folder.run_id, opener(folder)) for folder in (done, killed)])
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: all(run.state is not None and run.state.status in ("finished", "failed")
                                        for run in app.runs))
        states = {run.label: run.state for run in app.runs}
        assert states[killed.run_id].final_status == "killed" and states[done.run_id].final_status == "completed"
        assert "1 killed" in screen_text(app) and "running" not in screen_text(app)
        await pilot.press("q")


async def test_the_comparison_keys_are_in_its_palette(tmp_path):
    runs = [write_run(tmp_path, "adam", lr=0.001, decay=30), write_run(tmp_path, "sgd", lr=0.05, decay=70)]
    app = CompareTop([(folder.run_id, opener(folder)) for folder in runs])
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.3)
        helps = [c.help for c in app.get_system_commands(app.screen)]
        for binding in app.BINDINGS:
            assert f"key {binding.key_display or binding.key}: {binding.description}" in helps
        await pilot.press("q")
    assert app.return_value == ""


def test_show_with_several_runs_rejects_a_run_named_twice(tmp_path):
    folder = write_run(tmp_path / "runs", "adam", lr=0.001, decay=30)
    proc = subprocess.run([*TRAINTOP, "show", "adam", str(folder.path), "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "named twice" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([*TRAINTOP, "show", "adam", "nosuch", "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "no run matches 'nosuch'" in proc.stderr and "Traceback" not in proc.stderr


def test_the_first_frame_paints_before_numpy_plotext_or_the_client_load():
    """Start-up: the first frame needs none of them; they load once it is on screen."""
    probe = """
import asyncio, json, sys
from traintop.tui.app import TrainTop

LATER = ("numpy", "plotext", "torch", "traintop.engine.client", "textual.widgets._data_table")

async def main():
    async def opener():
        from traintop.engine.client import open_run
        await asyncio.Event().wait()

    app = TrainTop(opener, title="probe")
    loaded = []
    first_frame_done = app.start

    async def start():
        loaded.append(sorted(m for m in LATER if m in sys.modules))
        await first_frame_done()
    app.start = start
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.5)
        loaded.append(sorted(m for m in LATER if m in sys.modules))
    print(json.dumps(loaded))

asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    at_first_frame, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert at_first_frame == []
    assert "traintop.engine.client" in after and "textual.widgets._data_table" in after  # then they come


def test_export_of_a_name_two_runs_share_says_which_it_took(tmp_path):
    runs = tmp_path / "runs"
    older = write_run(runs, "adam", 1e-3, 40.0)
    newer = runs / "20261126-130000-adam"
    shutil.copytree(older.path, newer)
    proc = subprocess.run([*TRAINTOP, "export", "adam", "--runs-dir", str(runs)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"2 runs are named 'adam'; exporting the latest, {newer.name}" in proc.stderr
    assert older.run_id in proc.stderr  # and how to take the other
    assert (newer / "steps.csv").is_file() and not (older.path / "steps.csv").exists()


@pytest.mark.parametrize("width", [140, 100, 80, 60])
def test_the_headers_resource_figure_gives_way_from_the_end_and_never_runs_past_the_screen(width):
    """A GPU box with a long run name: the GPU's memory stays longest, then the CPU, then the RSS."""
    from traintop.tui.panels import header_text
    from traintop.tui.state import RunState

    state = RunState()
    state.name, state.device, state.status = "resnet50-imagenet-bf16-lr3e-4-warmup", "cuda:0", "running"
    state.resources = [ev.Resources(t=2.0, cpu_percent=104.0, rss_mb=5120.0, devices=[
        {"index": 0, "name": "NVIDIA H200", "allocated_mb": 60000.0, "reserved_mb": 71680.0, "peak_mb": 70000.0,
         "total_mb": 143771.0, "utilization": 97.0}])]
    full = "gpu0 70.0G/140.4G 97%  cpu 104%  rss 5.0G"
    first = str(header_text(state, "", width, "starting")).splitlines()[0]
    assert len(first) <= width - 2, first  # inside the header's padding: nothing wraps or is cut
    shown = first.split("running")[1].strip()
    assert full.startswith(shown)  # whole pieces, from the front
    assert shown == {140: full, 100: full, 80: "gpu0 70.0G/140.4G 97%", 60: ""}[width], shown
    # the words saying how the curves are shown keep their place at the right edge
    first = str(header_text(state, "", width, "starting", view="log y")).splitlines()[0]
    assert len(first) <= width - 2 and first.endswith("log y") == (width >= 80), first  # at 60 not even they fit
    shown = first.split("running")[1].removesuffix("log y").strip()
    assert shown == {140: full, 100: "gpu0 70.0G/140.4G 97%  cpu 104%", 80: "", 60: ""}[width], shown
