"""The dashboard driven as a user drives it (Textual's Pilot), against a real engine process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from traintop.engine.client import FinishedRun, open_run
from traintop.engine.runstore import RunFolder, is_live, resolve_run
from traintop.tui.app import TrainTop

TRAINTOP = [sys.executable, "-m", "traintop.tui"]


def app_for(folder: RunFolder) -> TrainTop:
    async def opener():
        return await open_run(folder)
    return TrainTop(opener, title=folder.run_id)


async def wait_for(pilot, condition, seconds: float = 30) -> None:
    for _ in range(int(seconds / 0.1)):
        if condition():
            return
        await pilot.pause(0.1)
    raise AssertionError("the dashboard never got there")


def header(app) -> str:
    return str(app.query_one("#header").render())


async def test_live_run_fills_the_plots_and_obeys_the_keys(live_run):
    app = app_for(live_run)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: len(app.state.loss) > 50 and len(app.state.val_loss) > 1)
        await pilot.pause(0.3)
        loss_plot = app.query_one("#loss-plot").figure
        assert len(loss_plot.lines[0].x) > 10 and len(app.query_one("#grad-plot").figure.lines[0].x) > 10
        assert "running" in header(app)

        await pilot.press("space")
        await wait_for(pilot, lambda: app.state.status == "paused")
        step = app.state.step
        await pilot.pause(0.5)
        assert app.state.step == step and "paused" in header(app)
        await pilot.press("space")
        await wait_for(pilot, lambda: app.state.status == "running" and app.state.step > step)

        lr = app.state.lr
        await pilot.press("plus")
        await wait_for(pilot, lambda: app.state.lr == pytest.approx(2 * lr))
        assert any(m.kind == "lr" for m in app.state.markers)

        await pilot.press("l")
        await pilot.pause(0.2)
        await pilot.press(*"abc", "enter")
        await pilot.pause(0.2)
        assert "not a positive number" in str(app.screen.query_one("#lr-error").render())
        app.screen.query_one("#lr-input").value = ""
        await pilot.press(*"0.0037", "enter")
        await wait_for(pilot, lambda: app.state.lr == pytest.approx(0.0037))
        # its mark says the rate, never rounded to 0.00
        await wait_for(pilot, lambda: any(m.kind == "lr" and m.label == "lr 0.0037" for m in app.state.markers))

        await pilot.press("q")
        await pilot.pause(0.2)
        await pilot.click("#detach")
        await pilot.pause(0.3)
    assert app.return_value == "detached"
    assert is_live(live_run)  # the engine goes on training

    again = app_for(live_run)  # attach brings the whole history back
    async with again.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: len(again.state.loss) >= step)
        assert again.state.loss.x[0] == 1
        assert any(m.kind == "lr" for m in again.state.markers)


async def test_show_renders_a_finished_run(tmp_path):
    runs = tmp_path / "runs"
    subprocess.run([*TRAINTOP, "run", "--headless", "--runs-dir", str(runs), "--set", "train.epochs=4"],
                   check=True, capture_output=True, timeout=300)
    folder = resolve_run("latest", runs)
    app = app_for(folder)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.state.status == "finished")
        await pilot.pause(0.3)
        assert isinstance(app.source, FinishedRun)
        assert "completed" in header(app)
        side = str(app.query_one("#side").render())
        assert "accuracy" in side and "best" in side
        def footer() -> dict[str, bool]:
            return {key.description: key.has_class("-disabled") for key in app.query("FooterKey")}
        await wait_for(pilot, lambda: footer()["pause"], seconds=10)  # dimmed: the run has ended
        assert footer()["lr×2"] and footer()["ckpt"]
        assert not footer()["infer"]  # the inference view answers from the checkpoint
        await pilot.press("space")
        await pilot.pause(0.3)
        assert app.state.status == "finished" and "completed" in header(app)
        await pilot.press("q")
    assert app.return_value == ""


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (200, 60)])
async def test_layout_reads_at_each_size(tmp_path, size):
    runs = tmp_path / "runs"
    subprocess.run([*TRAINTOP, "run", "--headless", "--runs-dir", str(runs), "--set", "train.epochs=3"],
                   check=True, capture_output=True, timeout=300)
    app = app_for(resolve_run("latest", runs))
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: app.state.status == "finished")
        await pilot.pause(0.3)
        plots = app.query_one("#plots")
        narrow = size[0] < 110 or size[1] < 30
        assert plots.has_class("narrow") == narrow
        for widget in ("#loss-plot", "#grad-plot"):
            region = app.query_one(widget).region
            assert region.width >= 30 and region.height >= 6  # readable, not squeezed away
        assert app.query_one("#header").region.height == 2
        for key in ("y", "s", "question_mark"):
            await pilot.press(key)
            await pilot.pause(0.1)


async def test_the_footer_keeps_help_and_quit_and_the_layout_follows_each_resize_at_once(tmp_path):
    """At 100 columns the inference tab's footer still has help and quit. Shrinking, growing and
    shrinking again: the side panel and the plot grid follow the size the terminal has now, never
    the one before."""
    runs = tmp_path / "runs"
    subprocess.run([*TRAINTOP, "run", "--headless", "--runs-dir", str(runs), "--set", "train.epochs=2"],
                   check=True, capture_output=True, timeout=300)
    app = app_for(resolve_run("latest", runs))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.state.status == "finished")
        await pilot.press("i")  # the inference tab's keys are on its buttons: the footer keeps help and quit
        await pilot.pause(0.3)
        footer = [key.description for key in app.query("FooterKey") if key.region.right <= 100]
        assert "help" in footer and "quit" in footer, footer
        assert str(app.query_one("#inf-next").label) == "n next ▶"
        for width, height in [(60, 15), (80, 24), (130, 40), (80, 24), (120, 40)]:
            await pilot.resize_terminal(width, height)
            await pilot.pause(0.2)
            assert app.query_one("#side").has_class("hidden") == (width < 70), (width, height)
            assert app.query_one("#plots").has_class("narrow") == (width < 110 or height < 30), (width, height)


async def test_a_run_whose_loss_went_non_finite_draws_a_gap_not_a_flat_line(tmp_path):
    """The smoothed loss has no value where the loss has none: after the step that went bad, the
    curve stops, rather than carrying its last (huge) value on as if the loss had stayed there."""
    import numpy as np

    runs = tmp_path / "runs"
    subprocess.run([*TRAINTOP, "run", "--headless", "--runs-dir", str(runs), "--set", "optim.name=sgd",
                    "--set", "optim.lr=10", "--set", "train.epochs=5"], capture_output=True, timeout=300)
    app = app_for(resolve_run("latest", runs))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.state.status == "failed")
        await pilot.pause(0.3)
        lines = app.query_one("#loss-plot").figure.lines
        loss = app.state.loss
        last_finite = loss.x[np.isfinite(loss.y)].max()
    assert loss.x.max() > last_finite  # the run went on a while before the bad loss was read
    raw = next(line for line in lines if line.faint)
    smoothed = next(line for line in lines if line.joined and not line.faint)
    assert raw.x.max() == last_finite and smoothed.x[np.isfinite(smoothed.y)].max() == last_finite
