"""One output boundary: text from data reaches a terminal with its control characters escaped, the
dashboard never reads data as markup, and events.jsonl is strict JSON whose nulls every reader
takes as NaN.

The hostile table's column names, categorical values and class names hold a terminal-title escape
sequence, a colour sequence, a C1 control, a right-to-left override and Textual markup.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from rich.text import Text

from traintop.engine import events as ev
from traintop.engine.client import FinishedRun, open_run
from traintop.engine.runstore import RunFolder, read_events, resolve_run
from traintop.tui.app import TrainTop
from traintop.tui.compare import CompareTop
from traintop.tui.literal import LiteralText, shown
from traintop.tui.terminal import terminal_safe

TRAINTOP = [sys.executable, "-m", "traintop.tui"]

TITLE = "\x1b]0;owned\x07"  # sets the terminal window's title
RED = "\x1b[31m"
C1 = "\x9b"  # CSI as a single C1 character
RLO = "\u202e"  # right-to-left override: the rest of the line reads backwards
# What must never reach a terminal raw: C0 controls but newline and tab, DEL, C1, bidi controls.
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

CLASSES = [f"{RED}hot", "[bold]x", f"[link=https://example.invalid]y{RLO}"]
COLUMNS = [f"{TITLE}x", "[/]", "[bold]z"]
COLOUR = f"colour{RLO}"
EMPTY = f"empty{TITLE}"  # a column with no values: its warning quotes its name
EMPTY_SHOWN = "empty\\x1b]0;owned\\x07"


def assert_terminal_safe(text: str) -> None:
    found = sorted({hex(ord(c)) for c in RAW.findall(text)})
    assert not found, f"raw control characters reached the terminal: {found}\n{text[:2000]}"


def traintop(*args, cwd=None, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([*TRAINTOP, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def hostile_table(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b, c = rng.normal(size=(3, n))
    label = np.where(a + b > 0.6, CLASSES[0], np.where(a - b > 0, CLASSES[1], CLASSES[2]))
    return pd.DataFrame({COLUMNS[0]: a, COLUMNS[1]: b, COLUMNS[2]: c,
                         COLOUR: rng.choice([f"{RED}red", f"b{C1}c", "[i]plain"], size=n),
                         EMPTY: [None] * n, "label": label})


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A finished two-epoch run on the hostile table, and its headless log."""
    root = tmp_path_factory.mktemp("hostile")
    hostile_table().to_csv(root / "hostile.csv", index=False)
    config = root / "hostile.toml"
    config.write_text('[run]\nname = "hostile"\n[data]\nsource = "csv"\npath = "hostile.csv"\n'
                      'target = "label"\n[train]\nepochs = 2\n', encoding="utf-8")
    runs = root / "runs"
    proc = traintop("run", config, "--headless", "--runs-dir", runs)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return SimpleNamespace(root=root, config=config, runs=runs, folder=resolve_run("latest", runs), proc=proc)


# -- the boundary itself -------------------------------------------------------------------------------

def test_every_control_character_is_escaped_visibly_and_printable_text_is_kept():
    for code in [*range(0x20), 0x7F, *range(0x80, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)]:
        ch = chr(code)
        if ch in "\n\t":
            assert terminal_safe(ch) == ch
            continue
        out = terminal_safe(f"a{ch}b")
        assert_terminal_safe(out)
        assert out.startswith("a\\") and out.endswith("b") and len(out) > 3, (hex(code), out)
    assert terminal_safe(f"{TITLE}x") == "\\x1b]0;owned\\x07x"
    assert terminal_safe("label\r") == "label\\r"
    kept = "Ünïcödé · 数字 ✓ 👩‍👩‍👧 [bold]x [/] tab\tnewline\n"
    assert terminal_safe(kept) is kept


def test_escaping_leaves_nothing_a_terminal_acts_on_and_is_stable():
    rng = np.random.default_rng(12)
    # Mostly the ranges where trouble lives (C0, C1, bidi, surrogates, tags), then anything at all.
    pools = [range(0, 0xA0), range(0x2000, 0x2070), range(0xD800, 0xE000), range(0xE0000, 0xE0080),
             range(0x20, 0x7F), range(0, 0x110000)]
    for _ in range(3000):
        pool = pools[rng.integers(len(pools))]
        text = "".join(chr(pool[i]) for i in rng.integers(len(pool), size=rng.integers(0, 12)))
        once = terminal_safe(text)
        assert not RAW.search(once) and not re.search("[\ud800-\udfff]", once), repr(text)
        once.encode("utf-8")  # a lone surrogate (an undecodable file name) would fail at the terminal
        assert terminal_safe(once) == once
        if text.isprintable():  # no control, format or separator characters: nothing to escape
            assert once == text


def test_dashboard_text_keeps_its_styles_and_shows_what_rich_would_drop():
    styled = Text()
    styled.append("best ", style="bold").append(f"{RED}hot", style="red").append(" end")
    out = shown(styled)
    assert out.plain == "best \\x1b[31mhot end"
    assert [(out.plain[s.start:s.end], str(s.style)) for s in out.spans] == [("best ", "bold"),
                                                                              ("\\x1b[31mhot", "red")]
    assert shown("[/] [bold]x").plain == "[/] [bold]x" and not shown("[bold]x").spans
    assert Text("a\x07b").plain == "ab"  # Rich drops a bell unseen...
    assert LiteralText("a\x07b").plain == "a\\x07b"  # ...the dashboard's text shows it
    assert LiteralText().append("c\rd").plain == "c\\rd"


# -- the command line ----------------------------------------------------------------------------------

def test_check_of_a_hostile_table_shows_its_names_escaped(hostile):
    proc = traintop("check", hostile.config, cwd=hostile.root)
    assert proc.returncode == 0, proc.stderr
    assert_terminal_safe(proc.stdout + proc.stderr)
    out = proc.stdout
    assert "\\x1b[31mhot" in out and "[bold]x" in out and "[link=https://example.invalid]y\\u202e" in out
    assert EMPTY_SHOWN in out  # the warning about the empty column names it


def test_the_headless_log_of_a_hostile_run_escapes_what_came_from_data(hostile):
    out = hostile.proc.stdout + hostile.proc.stderr
    assert_terminal_safe(out)
    assert "warning [data]" in out and EMPTY_SHOWN in out
    assert "finished: completed" in out


def test_attach_headless_and_ls_show_a_hostile_run_escaped(hostile):
    attach = traintop("attach", hostile.folder.run_id, "--headless", "--tail", "all", "--runs-dir", hostile.runs)
    assert attach.returncode == 0, attach.stderr
    assert_terminal_safe(attach.stdout + attach.stderr)
    assert EMPTY_SHOWN in attach.stdout and "finished: completed" in attach.stdout

    # A copied or crafted run folder: its folder name and recorded name are data too.
    runs = hostile.root / "crafted"
    crafted = runs / f"20261126-120000-{TITLE}x"
    shutil.copytree(hostile.folder.path, crafted)
    meta = json.loads((crafted / "meta.json").read_text())
    (crafted / "meta.json").write_text(json.dumps({**meta, "name": f"{RED}[bold]evil{RLO}"}))
    ls = traintop("ls", "--runs-dir", runs)
    assert ls.returncode == 0, ls.stderr
    assert_terminal_safe(ls.stdout + ls.stderr)
    assert "\\x1b]0;owned\\x07x" in ls.stdout and "\\x1b[31m[bold]evil\\u202e" in ls.stdout


def test_predict_to_stdout_escapes_class_names_and_a_file_keeps_them_as_data(hostile):
    inputs = hostile.root / "inputs.csv"
    hostile_table(5, seed=1).drop(columns=["label"]).to_csv(inputs, index=False)
    proc = traintop("predict", hostile.folder.path, inputs)
    assert proc.returncode == 0, proc.stderr
    assert_terminal_safe(proc.stdout + proc.stderr)
    header = proc.stdout.splitlines()[0]
    assert "p_\\x1b[31mhot" in header and "p_[bold]x" in header and "y\\u202e" in header

    out = hostile.root / "predictions.csv"
    proc = traintop("predict", hostile.folder.path, inputs, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert_terminal_safe(proc.stdout + proc.stderr)
    written = pd.read_csv(out)
    assert f"p_{CLASSES[0]}" in written.columns  # a file is data, not a terminal: kept as it was
    assert set(written["prediction"]) <= set(CLASSES)


def test_errors_quoting_a_hostile_value_are_escaped(hostile, tmp_path):
    bad_target = traintop("check", hostile.config, "--set", 'data.target="\\u001b]0;owned\\u0007t"',
                          cwd=hostile.root)
    assert bad_target.returncode == 2
    assert_terminal_safe(bad_target.stdout + bad_target.stderr)
    assert bad_target.stderr.startswith("traintop: error: ") and "Traceback" not in bad_target.stderr
    assert "\\x1b]0;owned\\x07t" in bad_target.stderr

    missing = traintop("check", tmp_path / f"{RED}nope{RLO}.toml")
    assert missing.returncode == 2
    assert_terminal_safe(missing.stderr)
    assert "\\x1b[31mnope\\u202e.toml" in missing.stderr

    usage = traintop("ctl", "latest", f"{TITLE}go", "--runs-dir", hostile.runs)  # argparse's own message
    assert usage.returncode == 2
    assert_terminal_safe(usage.stderr)
    assert "\\x1b]0;owned\\x07go" in usage.stderr


def test_the_dashboard_in_a_terminal_draws_its_own_escapes_and_escapes_the_data(hostile):
    """`traintop show` on a real pseudo-terminal: Textual's escape sequences reach it as sequences
    (the guarded streams never wrap the dashboard's own output); the data's title sequence does not."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([*TRAINTOP, "show", str(hostile.folder.path)], stdin=slave, stdout=slave,
                            stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    out = b""

    def read(seconds: float, until: bytes | None = None) -> None:
        nonlocal out
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (until and until in out):
            if select.select([master], [], [], 0.1)[0]:
                try:
                    chunk = os.read(master, 1 << 16)
                except OSError:  # the dashboard has gone and closed the terminal
                    return
                if not chunk:
                    return
                out += chunk

    try:
        read(60, until=b"completed")
        read(1.0)  # the side panel's warnings, drawn with the rest of the run
        os.write(master, b"q")
        proc.wait(timeout=20)
        read(0.5)
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
    screen = out.decode("utf-8", errors="replace")
    assert proc.returncode == 0, screen[-2000:]
    assert "\x1b[?1049h" in screen  # Textual's alternate screen: a sequence, not text
    assert "\\x1b[?1049h" not in screen
    assert "completed" in screen and "owned" in screen  # the run, and its warning, were drawn
    assert "\x1b]0;owned" not in screen  # the data's title sequence never reached the terminal
    assert "Traceback" not in screen


# -- the dashboard ---------------------------------------------------------------------------------

async def wait_for(pilot, condition, seconds: float = 60) -> None:
    for _ in range(int(seconds / 0.1)):
        if condition():
            return
        await pilot.pause(0.1)
    raise AssertionError("the dashboard never got there")


def screen_text(app) -> str:
    """What the terminal is given to show: the text of every cell of the screen."""
    return "\n".join(strip.text.rstrip() for strip in app.screen._compositor.render_strips())


def dashboard(folder: RunFolder) -> TrainTop:
    async def opener():
        return await open_run(folder)
    return TrainTop(opener, title=folder.run_id)


async def test_the_typed_input_form_of_markup_named_columns_opens_and_submits(hostile):
    app = dashboard(hostile.folder)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.state.status == "finished")
        await pilot.press("i", "t")
        await pilot.pause(0.3)
        view = app.main.query_one("#inference-view")
        labels = [str(label.render()) for label in app.main.query("#inf-form .field-label")]
        assert labels[:3] == [terminal_safe(c) for c in COLUMNS]  # "[/]" is a name, not markup
        assert labels[3] == "colour\\u202e"
        for field, value in zip(app.main.query("#inf-form Input"), ("0.5", "0.2", "-1")):
            field.value = value
        app.main.query("#inf-form Input").first().focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: view.answer is not None)
        answer = str(app.main.query_one("#inf-answer").render())
        assert "predicted" in answer and any(terminal_safe(c) in answer for c in CLASSES)
        text = screen_text(app)
        assert "[/]" in text and "\\x1b]0;owned\\x07x" in text
        assert_terminal_safe(text)


async def test_class_names_warnings_and_toasts_with_markup_show_literally(hostile, tmp_path):
    # A folder name with markup reaches a toast: a finished run refuses a command, naming itself.
    folder = RunFolder(tmp_path / "20261126-120000-[reverse]b")
    shutil.copytree(hostile.folder.path, folder.path)
    app = dashboard(folder)
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await wait_for(pilot, lambda: app.state.status == "finished")
        await pilot.pause(0.3)
        side = str(app.main.query_one("#side").render())
        assert "▲ data\n   step 0" in side and EMPTY_SHOWN in side  # the warning, its values escaped
        from traintop.engine import commands as cmd

        await app.command(cmd.Pause())  # its key is dimmed on a finished run; the reply is the same

        def toasts() -> str:
            return " ".join(str(toast.render()) for toast in app.screen.query("Toast"))
        await wait_for(pilot, lambda: "20261126-120000-[reverse]b has completed" in toasts(), seconds=10)

        await pilot.press("i", "n")  # a held-out sample: its true and predicted class names
        view = app.main.query_one("#inference-view")
        await wait_for(pilot, lambda: view.answer is not None)
        answer = str(app.main.query_one("#inf-answer").render())
        assert f"true       {terminal_safe(view.answer['true'])}" in answer
        assert_terminal_safe(screen_text(app))

        app.main.query_one("#views").active = "events"
        await pilot.pause(0.3)
        events = screen_text(app)
        assert "warning" in events and EMPTY_SHOWN in events
        assert_terminal_safe(events)


async def test_the_config_tab_shows_its_section_headers(hostile):
    app = dashboard(hostile.folder)
    async with app.run_test(size=(100, 60)) as pilot:
        await wait_for(pilot, lambda: app.state.status == "finished" and app.config_shown)
        app.main.query_one("#views").active = "config"
        await pilot.pause(0.3)
        config = str(app.main.query_one("#config-view").render())
        for section in ("[run]", "[data]", "[model]", "[optim]", "[train]", "[early_stopping]"):
            assert f"\n{section}\n" in f"\n{config}"
        text = screen_text(app)
        assert "[run]" in text and 'name = "hostile"' in text and "[data]" in text


async def test_a_comparison_labels_hostile_runs_literally(hostile):
    labels = [f"{RED}[/]one", f"[bold]two{RLO}"]

    def opener():
        async def open_it():
            return FinishedRun(hostile.folder)
        return open_it

    app = CompareTop([(label, opener()) for label in labels])
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.runs[0].state is not None
                       and all(run.state.status == "finished" for run in app.runs))
        await pilot.pause(0.3)
        text = screen_text(app)
        assert "\\x1b[31m[/]one" in text and "[bold]two\\u202e" in text
        assert_terminal_safe(text)


# -- strict JSON -------------------------------------------------------------------------------------

def strict(line: str):
    """json.loads as strict parsers (jq, JavaScript's JSON.parse) read: NaN and Infinity are errors."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(line, parse_constant=refuse)


NAN_MODEL = '''from torch import nn


class NanWhenEvaluated(nn.Module):
    """Trains normally; every answer in evaluation is NaN, so validation and test losses are."""

    def __init__(self, info):
        super().__init__()
        self.net = nn.Linear(info.input_shape[0], info.n_outputs)

    def forward(self, x):
        out = self.net(x)
        return out if self.training else out * float("nan")


def model(info):
    return NanWhenEvaluated(info)
'''


def test_a_run_with_a_nan_validation_loss_writes_strict_json_that_every_reader_reads(tmp_path):
    (tmp_path / "nan_model.py").write_text(NAN_MODEL)
    config = tmp_path / "nan.toml"
    config.write_text('[model]\nkind = "python"\nfactory = "nan_model:model"\n[train]\nepochs = 2\n')
    runs = tmp_path / "runs"
    proc = traintop("run", config, "--headless", "--runs-dir", runs)
    assert proc.returncode == 0, proc.stderr
    assert "val_loss nan" in proc.stdout and "loss nan" in proc.stdout
    folder = resolve_run("latest", runs)
    lines = folder.events.read_text().splitlines()
    objects = [strict(line) for line in lines]  # every line, as jq would read it
    validations = [o for o in objects if o["event"] == "validation"]
    assert validations and all(o["val_loss"] is None for o in validations)
    assert strict(folder.report.read_text())["test"]["loss"] is None

    events, torn = read_events(folder.events)
    assert not torn and all(math.isnan(e.val_loss) for e in events if isinstance(e, ev.Validation))

    ls = traintop("ls", "--runs-dir", runs)
    assert ls.returncode == 0 and folder.run_id in ls.stdout and "completed" in ls.stdout, ls.stderr
    export = traintop("export", folder.run_id, "--runs-dir", runs)
    assert export.returncode == 0, export.stderr
    table = pd.read_csv(folder.path / "validation.csv")
    assert table["val_loss"].isna().all() and len(table) == 2
    attach = traintop("attach", folder.run_id, "--headless", "--runs-dir", runs)
    assert attach.returncode == 0 and "val_loss nan" in attach.stdout, attach.stderr


def nonfinite_run(runs, name: str = "nonfinite") -> RunFolder:
    """A finished run folder whose every number field holds NaN or an infinity somewhere."""
    folder = RunFolder(runs / f"20261126-120000-{name}")
    folder.checkpoints.mkdir(parents=True)
    folder.meta.write_text(json.dumps({"name": name, "pid": 0, "started": "2026-11-26T12:00:00"}))
    nan, inf = math.nan, math.inf
    config = {"run": {"name": name}, "data": {"source": "digits", "batch_size": 64}, "train": {"epochs": 2},
              "early_stopping": {"enabled": True, "monitor": "val_accuracy", "mode": "max", "patience": 3}}
    events = [
        ev.RunStarted(t=0.0, run_id=folder.run_id, name=name, config=config, device="cpu", params=10,
                      data={"task": "classification", "n_train": 10, "n_val": 5, "n_test": 5, "features": ["a", "b"],
                            "classes": ["a", "b"]}, epochs=2, steps_per_epoch=3),
        ev.Steps(t=0.1, step=[1, 2, 3], epoch=[1, 1, 1], loss=[0.9, nan, inf], grad_norm=[1.0, inf, nan],
                 lr=[1e-3, 1e-3, nan], samples_per_s=nan, layer_norms={"0.weight": [nan, 1.0]},
                 layer_steps=[1, 3]),
        ev.Validation(t=0.2, step=3, epoch=1, val_loss=nan, metrics={"accuracy": inf}, best=True),
        ev.EpochEnd(t=0.2, epoch=1, step=3, train_loss=nan, seconds=inf),
        ev.LrChanged(t=0.3, step=3, old=1e-3, new=inf, source="user"),
        ev.Steps(t=0.4, step=[4, 5, 6], epoch=[2, 2, 2], loss=[-inf, 0.5, 0.4], grad_norm=[1.0, 1.0, 1.0],
                 lr=[inf, inf, inf], samples_per_s=inf),
        ev.Validation(t=0.5, step=6, epoch=2, val_loss=0.7, metrics={"accuracy": nan}, since_best=1),
        ev.EpochEnd(t=0.5, epoch=2, step=6, train_loss=0.45, seconds=0.1),
        ev.EarlyStopped(t=0.5, step=6, epoch=2, best_epoch=1, best_value=nan, monitor="val_accuracy"),
        ev.TestResult(t=0.6, metrics={"accuracy": nan, "loss": inf}, step=6),
        ev.RunFinished(t=0.6, status="early_stopped", step=6, epoch=2),
    ]
    folder.events.write_text("".join(e.to_line() + "\n" for e in events))
    return folder


def test_non_finite_numbers_are_written_as_null_and_read_back_as_nan(tmp_path):
    folder = nonfinite_run(tmp_path)
    lines = folder.events.read_text().splitlines()
    steps = strict(lines[1])
    assert steps["loss"] == [0.9, None, None] and steps["samples_per_s"] is None
    assert steps["layer_norms"] == {"0.weight": [None, 1.0]}
    events, _ = read_events(folder.events)
    first = events[1]
    assert first.loss[0] == 0.9 and math.isnan(first.loss[1]) and math.isnan(first.samples_per_s)
    assert math.isnan(events[2].metrics["accuracy"]) and math.isnan(events[4].new)
    # The common, all-finite event is written exactly as before.
    finite = ev.Steps(t=0.5, step=[1, 2], epoch=[1, 1], loss=[0.25, 1e-8], grad_norm=[3.0, 4.0], lr=[0.1, 0.1])
    assert finite.to_line() == json.dumps(finite.to_json(), separators=(",", ":"))


def test_every_reader_takes_a_run_full_of_nulls(tmp_path):
    runs = tmp_path / "runs"
    folder = nonfinite_run(runs)
    attach = traintop("attach", folder.run_id, "--headless", "--runs-dir", runs)
    assert attach.returncode == 0 and "Traceback" not in attach.stderr, attach.stderr
    assert "finished: early stopped" in attach.stdout and "lr      0.001 -> nan" in attach.stdout
    ls = traintop("ls", "--runs-dir", runs)
    assert ls.returncode == 0 and folder.run_id in ls.stdout, ls.stderr
    export = traintop("export", folder.run_id, "--runs-dir", runs)
    assert export.returncode == 0, export.stderr
    steps = pd.read_csv(folder.path / "steps.csv")
    assert len(steps) == 6 and steps["loss"].isna().sum() == 3


async def test_the_dashboard_and_a_comparison_draw_a_run_full_of_nulls(tmp_path):
    folder = nonfinite_run(tmp_path)
    app = dashboard(folder)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.state.status == "finished" and app.drawn_version == app.state.version)
        assert len(app.state.loss) == 6 and math.isnan(app.state.loss.y[1])
        for view in ("layers", "events", "config", "curves"):
            app.main.query_one("#views").active = view
            await pilot.pause(0.2)
        assert "early stopped" in screen_text(app)
    other = nonfinite_run(tmp_path, "other")

    def opener(f):
        async def open_it():
            return FinishedRun(f)
        return open_it

    compare = CompareTop([("one", opener(folder)), ("two", opener(other))])
    async with compare.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: compare.runs[0].state is not None
                       and all(run.state.status == "finished" for run in compare.runs))
        await pilot.pause(0.3)
        assert "comparing 2 runs" in screen_text(compare)
