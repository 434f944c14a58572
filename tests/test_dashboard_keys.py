"""The dashboard's keys as a user presses them (Textual's Pilot): the window of steps shown, the x
axis, a keymap file, Esc leaving a text field, `e` answered by the engine's event, the Layers tab of
a finished run; and the rooms of the house: the dashboard never loads torch, engine/ never imports
a terminal library, the events stay torch-free.
"""

from __future__ import annotations

import ast
import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_dashboard_views import opener, settle, write_run

from traintop.engine import events as ev
from traintop.engine.client import open_run
from traintop.engine.runstore import resolve_run
from traintop.tui.app import TrainTop

TRAINTOP = [sys.executable, "-m", "traintop.tui"]
ENGINE = Path(__file__).parent.parent / "engine"


def finished_app(tmp_path, **kwargs) -> TrainTop:
    folder = write_run(tmp_path / "runs", "adam", 1e-3, 40.0, **kwargs)  # 8 epochs of 25 steps
    return TrainTop(opener(folder), title=folder.run_id)


def loss_figure(app):
    return app.query_one("#loss-plot").figure


async def test_z_shows_the_last_steps_then_the_whole_run_and_g_a_typed_range(tmp_path):
    app = finished_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, lambda: app.state.status == "finished")
        assert loss_figure(app).x_range is None and max(loss_figure(app).lines[0].x) == 200

        await pilot.press("z")  # a 200-step run: the last 100 steps is the only window shorter than it
        await settle(pilot, lambda: loss_figure(app).x_range is not None)
        assert loss_figure(app).x_range == (100.0, 200.0)
        assert min(loss_figure(app).lines[0].x) >= 99
        assert "last 100 steps" in str(app.query_one("#header").render())

        await pilot.press("z")
        await settle(pilot, lambda: loss_figure(app).x_range is None)

        await pilot.press("g")
        await pilot.pause(0.2)
        await pilot.press(*"120-50", "enter")  # backwards: refused under the field, the dialog stays
        await pilot.pause(0.2)
        assert "below the second" in str(app.screen.query_one("#ask-error").render())
        app.screen.query_one("#ask-input").value = ""
        await pilot.press(*"50-120", "enter")
        await settle(pilot, lambda: loss_figure(app).x_range == (50.0, 120.0))
        assert "steps 50–120" in str(app.query_one("#header").render())
        xs = loss_figure(app).lines[0].x
        assert 50 <= min(xs) and max(xs) <= 121


async def test_x_switches_the_curves_between_step_epoch_and_wall_time(tmp_path):
    app = finished_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, lambda: app.state.status == "finished")
        assert loss_figure(app).x_title == "step"

        await pilot.press("x")
        await settle(pilot, lambda: loss_figure(app).x_title == "epoch")
        assert max(loss_figure(app).lines[0].x) == 8.0  # 200 steps of 25 an epoch
        text = app.query_one("#loss-plot").render().plain
        assert text.splitlines()[-1].startswith("epoch")  # the axis says what it counts

        await pilot.press("x")
        await settle(pilot, lambda: loss_figure(app).x_title == "time")
        assert max(loss_figure(app).lines[0].x) == 2.0  # the run's last steps were logged at 2 s
        assert "x: time" in str(app.query_one("#header").render())

        await pilot.press("x")
        await settle(pilot, lambda: loss_figure(app).x_title == "step")


async def test_a_keymap_file_rebinds_a_key_by_its_id(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    (tmp_path / "config" / "traintop").mkdir(parents=True)
    (tmp_path / "config" / "traintop" / "keymap.toml").write_text('log_y = "o"\n')
    app = finished_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, lambda: app.state.status == "finished")
        await pilot.press("y")  # no longer the log key
        await pilot.pause(0.2)
        assert not app.view.log_y
        await pilot.press("o")
        await pilot.pause(0.2)
        assert app.view.log_y and "log" in loss_figure(app).title
        await pilot.press("question_mark")  # the help lists the key the user chose
        await pilot.pause(0.3)
        help_text = str(app.screen.query_one("Literal").render())
        # the help lists the key the user chose, and the id a keymap file names it by
        assert any(line.strip().startswith("o  Loss axis") and line.endswith("[log_y]")
                   for line in help_text.splitlines())


def test_a_keymap_naming_no_binding_is_refused_before_the_dashboard_starts(tmp_path):
    folder = write_run(tmp_path / "runs", "adam", 1e-3, 40.0)
    (tmp_path / "config" / "traintop").mkdir(parents=True)
    keymap = tmp_path / "config" / "traintop" / "keymap.toml"
    keymap.write_text('pasue = "p"\n')
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([*TRAINTOP, "show", folder.run_id, "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(keymap) in proc.stderr and "'pasue'" in proc.stderr and "pause" in proc.stderr
    keymap.write_text('pause = ""\n')
    proc = subprocess.run([*TRAINTOP, "show", folder.run_id, "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "comma-separated" in proc.stderr and "Traceback" not in proc.stderr


async def test_esc_leaves_the_events_filter_and_the_keys_act_again(tmp_path):
    app = finished_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, lambda: app.state.status == "finished" and app.events is not None)
        await pilot.press("5")
        await pilot.pause(0.2)
        app.query_one("#events-filter").focus()
        await pilot.pause(0.1)
        await pilot.press("y", "q")  # typed into the field: neither the log axis nor quit
        await pilot.pause(0.2)
        assert app.query_one("#events-filter").value == "yq" and not app.view.log_y and app.is_running
        footer = app.query_one("Footer")
        assert "leave field" in " ".join(str(w.render()) for w in footer.query("FooterKey"))
        await pilot.press("escape")
        await pilot.pause(0.2)
        assert app.focused is None
        await pilot.press("y")
        await pilot.pause(0.2)
        assert app.view.log_y


async def test_e_turns_early_stopping_on_through_the_engines_event_seen_by_every_client(live_run):
    watcher = await open_run(live_run)
    seen: list[ev.EarlyStoppingChanged] = []

    async def watch():
        async for event in watcher.events():
            if isinstance(event, ev.EarlyStoppingChanged):
                seen.append(event)
    watching = asyncio.create_task(watch())
    app = TrainTop(opener(live_run), title=live_run.run_id)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, lambda: app.state.early_known and app.state.step > 0)
            assert not app.state.early_enabled and " off" in str(app.query_one("#side").render())
            await pilot.press("e")
            await settle(pilot, lambda: app.state.early_enabled)
            changed = [e for e in app.state.log if isinstance(e, ev.EarlyStoppingChanged)]
            assert changed[-1].enabled and changed[-1].patience == 5
            assert "patience left" in str(app.query_one("#side").render())
            for _ in range(100):
                if any(e.enabled for e in seen):
                    break
                await asyncio.sleep(0.05)
            assert any(e.enabled for e in seen)  # the other client was told too
    finally:
        watching.cancel()
        await watcher.close()


async def test_the_layers_tab_of_a_finished_run_names_each_layer_with_its_last_norm_and_trend(tmp_path):
    runs = tmp_path / "runs"
    subprocess.run([*TRAINTOP, "run", "--headless", "--runs-dir", str(runs), "--set", "train.epochs=2"],
                   check=True, capture_output=True, timeout=300)
    folder = resolve_run("latest", runs)
    app = TrainTop(opener(folder), title=folder.run_id)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, lambda: app.state.status == "finished")
        await pilot.press("2")
        await pilot.pause(0.3)
        table = app.query_one("#layers-table")
        rows = [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]
        assert len(rows) == 3  # the MLP's three Linear layers, weights and biases together
        whats = {row[1] for row in rows}
        assert "Linear 64→512" in whats and "Linear 512→10" in whats
        for row in rows:
            assert float(row[3]) > 0 and len(row[4]) > 1  # its last norm and a trend of several


def test_the_dashboard_never_loads_torch_in_a_whole_session(live_run):
    """Every tab, the inference view's answers, the keys, a detach: torch stays in the engine."""
    probe = f"""
import asyncio, sys
from pathlib import Path
from traintop.engine.client import open_run
from traintop.engine.runstore import RunFolder
from traintop.tui.app import TrainTop

async def main():
    folder = RunFolder(Path({str(live_run.path)!r}))
    async def opener():
        return await open_run(folder)
    app = TrainTop(opener, title="probe")
    async with app.run_test(size=(120, 40)) as pilot:
        for _ in range(1200):
            if len(app.state.val_loss) > 1:
                break
            await pilot.pause(0.05)
        for key in ("2", "3", "4", "5", "6", "1", "y", "s", "z", "x", "m", "v", "c", "plus"):
            await pilot.press(key)
            await pilot.pause(0.1)
        await pilot.press("i")
        view = app.query_one("InferenceView")
        for _ in range(600):
            if view.answer is not None:
                break
            await pilot.pause(0.05)
        assert view.answer is not None, (str(app.query_one("#inf-status").render()), app.state.status,
                                         app.state.step, app.state.error, app.state.data)
        await pilot.press("n", "a")
        await pilot.pause(1.0)
        await pilot.press("q")
        await pilot.pause(0.2)
        await pilot.click("#detach")
        await pilot.pause(0.2)
    print("torch" in sys.modules)

asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_engine_never_imports_textual_plotext_or_rich():
    terminal = {"textual", "plotext", "rich"}
    found = []
    for path in sorted(ENGINE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in terminal]
    assert found == []


def test_the_events_and_the_dashboards_modules_load_without_torch():
    probe = """
import json, sys
import traintop.engine.events, traintop.engine.commands, traintop.engine.client, traintop.engine.runstore
import traintop.tui.app, traintop.tui.compare, traintop.tui.state, traintop.tui.figures, traintop.tui.draw
print(json.dumps(sorted(m for m in ("torch", "textual") if m in sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ["textual"]
    events_only = subprocess.run([sys.executable, "-c", "import sys, traintop.engine.events; "
                                  "print('torch' in sys.modules)"], capture_output=True, text=True, timeout=60)
    assert events_only.stdout.strip() == "False", events_only.stderr


@pytest.mark.parametrize("paused, said", [(False, "The run is still training."), (True, "The run is paused.")])
async def test_the_quit_question_says_whether_the_run_trains_or_waits(paused, said):
    from textual.app import App

    from traintop.tui.literal import LiteralLabel
    from traintop.tui.screens import QuitScreen

    class Host(App):
        def on_mount(self) -> None:
            self.push_screen(QuitScreen(paused=paused))

    app = Host()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.2)
        text = str(app.screen.query_one(LiteralLabel).render())
        assert text.startswith(said) and ("leave it paused" in text) == paused
