"""The inference view driven as a user drives it, against a real engine process training digits (or a big table)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from traintop.engine.client import open_run
from traintop.engine.runstore import resolve_run
from traintop.tui.app import TrainTop

TRAINTOP = [sys.executable, "-m", "traintop.tui"]


async def wait_for(pilot, condition, seconds: float = 30) -> None:
    for _ in range(int(seconds / 0.1)):
        if condition():
            return
        await pilot.pause(0.1)
    raise AssertionError("the dashboard never got there")


def text_of(app, selector: str) -> str:
    return str(app.main.query_one(selector).render())


async def test_a_sample_shows_its_true_and_predicted_label_and_follows_training(live_run):
    async def opener():
        return await open_run(live_run)

    app = TrainTop(opener, title=live_run.run_id)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.state.step > 0)
        await pilot.press("i")
        assert app.main.query_one("#views").active == "inference"
        view = app.main.query_one("#inference-view")
        await wait_for(pilot, lambda: view.answer is not None)  # it opens on the first sample
        answer = text_of(app, "#inf-answer")
        true = view.answer["true"]
        assert f"true       {true}" in answer and f"predicted  {view.answer['label']}" in answer
        assert ("✓ right" in answer) == (view.answer["label"] == true)
        assert "validation sample 1 of 270" in text_of(app, "#inf-input")
        assert "▀" in text_of(app, "#inf-input")  # an 8×8 digit is drawn as a picture
        first_step = view.answered_step
        assert f"current weights, step {first_step}" in answer
        # training goes on; with current weights the answer follows it
        await wait_for(pilot, lambda: view.answered_step > first_step, seconds=20)
        assert f"current weights, step {view.answered_step}" in text_of(app, "#inf-answer")
        assert "browsed: " in text_of(app, "#inf-status")

        await pilot.press("w")  # the best weights answer, and say so
        await wait_for(pilot, lambda: "best weights" in text_of(app, "#inf-answer"))

        await pilot.press("t")  # a typed input: a non-number is refused inline
        field = app.main.query_one("#inf-form Input")
        assert app.focused is field
        for ch in "abc":
            await pilot.press(ch)
        await pilot.press("enter")
        beside = next(e for e in app.main.query(".field-error") if e.name == field.name)  # under its field
        assert beside.display and "is not a number" in str(beside.render()) and field.name in str(beside.render())
        assert app.focused is field
        assert app.state.status in ("running", "paused")

        await pilot.press("escape", "a")  # back to samples; the whole validation split at once
        await wait_for(pilot, lambda: "validation split:" in text_of(app, "#inf-answer"))
        assert "of 270 right" in text_of(app, "#inf-answer")


async def test_after_a_live_run_finishes_its_saved_weights_answer(tmp_path, engines):
    runs = tmp_path / "runs"
    proc = subprocess.run([*TRAINTOP, "run", "--detach", "--runs-dir", str(runs), "--set", "train.epochs=150",
                           "--set", "early_stopping.enabled=false", "--set", "data.batch_size=64",
                           "--set", "model.hidden=[128,128]", "--set", "optim.lr=0.001"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    folder = resolve_run(proc.stdout.split()[0], runs)
    engines.append(folder)

    async def opener():
        return await open_run(folder)

    app = TrainTop(opener, title=folder.run_id)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.state.final_status == "completed")
        assert app.source.live  # it was attached while the engine still ran
        await pilot.press("i", "n")
        view = app.main.query_one("#inference-view")
        await wait_for(pilot, lambda: view.answer is not None)
        assert "current weights, step 3000" in text_of(app, "#inf-answer")  # last.pt: 150 epochs x 20 steps


async def test_a_validation_split_bigger_than_one_request_is_asked_in_pages_and_shown_whole(tmp_path, engines):
    import numpy as np
    import pandas as pd

    from traintop.engine import commands as cmd
    from traintop.engine import events as ev
    from traintop.engine.runstore import read_events

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({name: rng.normal(size=70_000).round(3) for name in ("height", "width", "depth")})
    frame["fits"] = np.where(frame["height"] + frame["width"] > 0, "yes", "no")
    path = tmp_path / "boxes.csv"
    frame.to_csv(path, index=False)
    runs = tmp_path / "runs"
    proc = subprocess.run([*TRAINTOP, "run", "--detach", "--runs-dir", str(runs), "--set", 'data.source="csv"',
                           "--set", f'data.path="{path}"', "--set", 'data.target="fits"',
                           "--set", "train.epochs=1000", "--set", "early_stopping.enabled=false"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    folder = resolve_run(proc.stdout.split()[0], runs)
    engines.append(folder)

    async def opener():
        return await open_run(folder)

    app = TrainTop(opener, title=folder.run_id)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.state.step > 0)
        n_val = app.state.data["n_val"]
        assert cmd.MAX_PREDICT_INPUTS < n_val <= 2 * cmd.MAX_PREDICT_INPUTS  # more than one request holds
        await pilot.press("i", "a")
        await wait_for(pilot, lambda: "validation split:" in text_of(app, "#inf-answer"), seconds=60)
        assert f"of {n_val} right" in text_of(app, "#inf-answer")
        assert "in 2 requests of up to 10,000" in text_of(app, "#inf-input")
        assert (await app.source.send(cmd.Stop(save=False))).ok
    for _ in range(100):
        if folder.read_json("report.json"):
            break
        await asyncio.sleep(0.1)
    # after the sample the view opens on, the split's pages
    pages = [e for e in read_events(folder.events)[0] if isinstance(e, ev.Prediction)][-2:]
    assert [p.n_outputs for p in pages] == [cmd.MAX_PREDICT_INPUTS, n_val - cmd.MAX_PREDICT_INPUTS]
    assert all(p.outputs == [] and p.summary["held_out"] == p.n_outputs for p in pages)


def test_the_confusion_table_lines_up_and_fits_beside_the_samples_at_80_columns():
    """Ten classes: the column headings sit over their counts, and no line is wider than the
    39 columns the view has at 80×24 (the table wrapped there, and its headings sat askew)."""
    from traintop.tui.inference_draw import summary_text

    classes = [str(i) for i in range(10)]
    outputs = [{"label": str((i * 7) % 10 if i % 3 else i % 10), "true": str(i % 10), "probabilities": {}}
               for i in range(270)]
    lines = summary_text(outputs, classes).plain.splitlines()
    at = next(i for i, line in enumerate(lines) if "pred→" in line)
    table = lines[at + 1:at + 12]
    assert all(len(line) <= 39 for line in lines[at:at + 12]), lines
    heading, rows = table[0], table[1:]
    assert heading.split()[0] == "true↓" and [row.split()[0] for row in rows] == classes
    for c in classes:  # each class's heading ends where its column of counts ends
        end = heading.index(f" {c}") + 1 + len(c)
        assert all(row[end - 1] != " " for row in rows), (c, heading, rows)
