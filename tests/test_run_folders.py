"""Run folders as users find them: damaged, copied, hostile, many. Real runs, real files, the real CLI."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from traintop.engine import commands as cmd
from traintop.engine.client import FinishedRun
from traintop.engine.errors import UserError
from traintop.engine.predictor import Predictor
from traintop.engine.runstore import RunFolder, resolve_run, seal

TRAINTOP = [sys.executable, "-m", "traintop.tui"]
DIGIT_FEATURES = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]


def traintop(*args, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*TRAINTOP, *args], capture_output=True, text=True, timeout=timeout, **kwargs)


def refused(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Assert a clean refusal: exit 2, a message holding `words`, no traceback; the message."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr
    return proc.stderr


class Planted:
    """An object whose unpickling would write a file: loading it would run code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "the checkpoint ran code"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> RunFolder:
    """A finished digits run (two epochs), made once for the module; tests damage copies of it."""
    runs = tmp_path_factory.mktemp("runs")
    proc = traintop("run", "--headless", "--set", "train.epochs=2", "--runs-dir", str(runs))
    assert proc.returncode == 0, proc.stderr
    return resolve_run("latest", runs)


@pytest.fixture(scope="module")
def digits_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("input") / "digits.csv"
    path.write_text(",".join(DIGIT_FEATURES) + "\n" + ",".join("3" for _ in DIGIT_FEATURES) + "\n")
    return path


def copy_of(run: RunFolder, into: Path, name: str, killed: bool = False) -> RunFolder:
    """A copy of the run's folder; `killed`: as if the engine died before the end (resumable)."""
    into.mkdir(parents=True, exist_ok=True)
    folder = RunFolder(Path(shutil.copytree(run.path, into / name)))
    if killed:
        meta = json.loads(folder.meta.read_text())
        folder.meta.write_text(json.dumps({**meta, "pid": -1}))  # its engine is gone, whatever reuses the pid
        folder.report.unlink()
        lines = folder.events.read_text().splitlines(keepends=True)
        folder.events.write_text("".join(line for line in lines if '"run_finished"' not in line))
    return folder


DAMAGE = {
    "random": lambda path: path.write_bytes(os.urandom(4000)),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[:3000]),
    "empty": lambda path: path.write_bytes(b""),
    "a list": lambda path: torch.save([1, 2, 3], path),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_named_by_predict_and_resume_never_with_a_traceback(finished, tmp_path,
                                                                                     digits_csv, damage):
    folder = copy_of(finished, tmp_path, "copy", killed=True)
    DAMAGE[damage](folder.best)
    DAMAGE[damage](folder.last)
    events_before = folder.events.read_bytes()
    refused(traintop("predict", str(folder.path), str(digits_csv)), "checkpoints/best.pt", "was not loaded")
    refused(traintop("predict", str(folder.path), str(digits_csv), "--checkpoint", "last"), "checkpoints/last.pt")
    refused(traintop("resume", str(folder.path)), "checkpoints/last.pt", "was not loaded")
    assert folder.events.read_bytes() == events_before  # the refused resume touched nothing


EDITED = {  # a last.pt that reads as tensors and numbers, with one thing in it that a resume cannot use
    "no optimizer": (lambda s: {k: v for k, v in s.items() if k != "optimizer"}, "has no 'optimizer'"),
    "a word for a step": (lambda s: {**s, "step": "3"}, "says step '3'"),
    "a log position before its start": (lambda s: {**s, "events_offset": -5}, "says events_offset -5"),
    "NaN weights": (lambda s: {**s, "model": {k: v * float("nan") for k, v in s["model"].items()}},
                    "holds non-finite weights"),
    "a huge world": (lambda s: {**s, "world_size": 10 ** 18}, "says world_size"),
    "junk optimizer state": (lambda s: {**s, "optimizer": {"state": {}, "param_groups": "x"}}, "does not fit this run"),
    "another model's weights": (lambda s: {**s, "model": {**s["model"], "4.weight": torch.zeros(3, 128)}},
                                "does not fit the model the config builds now (4.weight: [3, 128] saved"),
}


@pytest.mark.parametrize("edit", list(EDITED))
def test_resume_from_an_edited_or_foreign_checkpoint_is_refused_naming_it_and_changes_nothing(finished, tmp_path,
                                                                                              edit):
    folder = copy_of(finished, tmp_path, "copy", killed=True)
    change, why = EDITED[edit]
    torch.save(change(torch.load(folder.last, weights_only=True)), folder.last)
    before = folder.events.read_bytes()
    refused(traintop("resume", str(folder.path), "--headless", "--set", "train.epochs=3"), "checkpoints/last.pt", why)
    assert folder.events.read_bytes() == before and not folder.report.exists()


@pytest.mark.parametrize("edit, said", [
    (("seed = 0", "seed = 7"), "run.seed (0 then, 7 now)"),
    (('name = "adam"', 'name = "sgd"'), "optim.name ('adam' then, 'sgd' now)"),
    (("hidden = [512, 512]", "hidden = [64]"), "model.hidden ([512, 512] then, [64] now)"),
    (("split = [0.7, 0.15, 0.15]", "split = [0.5, 0.25, 0.25]"), "data.split ([0.7, 0.15, 0.15] then, [0.5, 0.25, 0.25] now)"),
])
def test_a_config_toml_edited_by_hand_is_refused_on_resume_as_set_would_be_and_the_run_is_as_it_was(
        finished, tmp_path, edit, said):
    folder = copy_of(finished, tmp_path, "copy")
    text = folder.config.read_text()
    assert edit[0] in text
    folder.config.write_text(text.replace(edit[0], edit[1], 1))
    kept = {f: f.read_bytes() for f in (folder.events, folder.report, folder.meta)}
    refused(traintop("resume", str(folder.path), "--headless", "--set", "train.epochs=3"),
            "its config.toml was changed since the run started: " + said, "put them back")
    assert {f: f.read_bytes() for f in kept} == kept


def test_a_run_started_before_a_config_key_existed_still_resumes(finished, tmp_path):
    """An older run's run_started lacks keys added since: no key it never had reads as edited."""
    folder = copy_of(finished, tmp_path, "copy", killed=True)
    log = folder.events.read_bytes()
    first, rest = log.split(b"\n", 1)
    older = first.replace(b',"max_vocab":20000', b" " * len(b',"max_vocab":20000'))  # same length: offsets hold
    assert older != first and len(older) == len(first)
    folder.events.write_bytes(older + b"\n" + rest)
    proc = traintop("resume", str(folder.path), "--headless", "--set", "train.epochs=3")
    assert proc.returncode == 0, proc.stderr


def _table(path: Path, rows: int, seed: int, header: str = "x,y,label") -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    path.write_text(header + "\n" + "".join(f"{rng.normal():.3f},{rng.normal():.3f},{'ab'[i % 2]}\n"
                                             for i in range(rows)))


@pytest.mark.parametrize("change, said", [
    (lambda path: _table(path, 200, 1), "training rows (42 then, 140 now), validation rows (9 then, 30 now)"),
    (lambda path: _table(path, 60, 1, header="x,z,label"), "features (['x', 'y'] then, ['x', 'z'] now)"),
])
def test_a_resume_onto_data_that_changed_since_the_run_started_is_refused_and_the_run_is_as_it_was(
        tmp_path, change, said):
    data, runs = tmp_path / "table.csv", tmp_path / "runs"
    _table(data, 60, 0)
    config = tmp_path / "table.toml"
    config.write_text('[data]\nsource = "csv"\npath = "table.csv"\ntarget = "label"\n[train]\nepochs = 2\n')
    assert traintop("run", str(config), "--headless", "--runs-dir", str(runs)).returncode == 0
    folder = resolve_run("latest", runs)
    change(data)
    kept = {f: f.read_bytes() for f in (folder.events, folder.report, folder.meta, folder.last)}
    refused(traintop("resume", str(folder.path), "--headless", "--set", "train.epochs=3"),
            "started on other data than its data gives now: " + said, "start a new run on the new data")
    assert {f: f.read_bytes() for f in kept} == kept


def test_a_checkpoint_holding_pickled_code_is_refused_as_possibly_hostile_and_never_run(finished, tmp_path,
                                                                                       digits_csv):
    folder = copy_of(finished, tmp_path, "copy", killed=True)
    marker = tmp_path / "ran"
    for path in (folder.best, folder.last):
        torch.save({"model": Planted(marker), "step": 1}, path)
    for args in (["predict", str(folder.path), str(digits_csv)], ["resume", str(folder.path)]):
        message = refused(traintop(*args), "may be hostile", "was not loaded")
        assert "weights_only" not in message and "trust the source" not in message  # torch's advice, never ours
    assert not marker.exists()


async def test_the_inference_view_of_a_run_with_one_checkpoint_points_to_the_key_for_the_other(finished, tmp_path):
    """A run killed before its first last.pt: the view asks for the current weights, and is told
    to press w for the best, not given predict's command-line flag."""
    folder = copy_of(finished, tmp_path, "copy", killed=True)
    folder.last.unlink()
    run = FinishedRun(folder)
    try:
        current = await run.send(cmd.Predict(request_id="c", weights="current", inputs=[{"split": "val", "index": 0}]))
        assert not current.ok and current.message.endswith("has no last.pt yet: press w for the best weights")
        best = await run.send(cmd.Predict(request_id="b", weights="best", inputs=[{"split": "val", "index": 0}]))
        assert best.ok, best.message
    finally:
        await run.close()


async def test_the_inference_view_of_a_finished_run_says_which_checkpoint_is_damaged(finished, tmp_path):
    folder = copy_of(finished, tmp_path, "copy")
    torch.save({"model": Planted(tmp_path / "ran")}, folder.best)
    DAMAGE["truncated"](folder.last)
    run = FinishedRun(folder)  # the dashboard's source: predictions come from a process of its own
    try:
        best = await run.send(cmd.Predict(request_id="b", weights="best", inputs=[{"split": "val", "index": 0}]))
        assert not best.ok and "best.pt" in best.message and "may be hostile" in best.message
        assert "weights_only" not in best.message
        last = await run.send(cmd.Predict(request_id="c", weights="current", inputs=[{"split": "val", "index": 0}]))
        assert not last.ok and "last.pt is damaged" in last.message
    finally:
        await run.close()
    assert not (tmp_path / "ran").exists()


async def test_the_dashboard_on_a_killed_run_says_it_was_killed_and_how_it_goes_on(finished, tmp_path):
    from traintop.engine.client import open_run
    from traintop.tui.app import TrainTop

    folder = copy_of(finished, tmp_path, "copy", killed=True)

    async def open_it():
        return await open_run(folder)

    app = TrainTop(open_it, title=folder.run_id)
    async with app.run_test(size=(120, 40)) as pilot:
        def footer() -> dict[str, bool]:
            return {key.description: key.has_class("-disabled") for key in app.query("FooterKey")}

        for _ in range(600):  # drawn, and the footer (perhaps still mounting) redrawn for the run's end
            if app.state.status != "starting" and app.drawn_version == app.state.version and footer().get("pause"):
                break
            await pilot.pause(0.05)
        header = str(app.query_one("#header").render())
        side = str(app.query_one("#side").render())
        keys = footer()
    assert "killed" in header and "running" not in header and "ETA" not in header
    assert "it was killed" in side and f"traintop resume {folder.run_id}" in side
    assert keys["pause"] and keys["lr×2"]


JUNK_JSON = {
    "not JSON": b"junk{",
    "not UTF-8": b"\xff\xfe\x00junk",
    "a list": b"[1, 2]",
    "nested too deep": b"[" * 100000,
}


@pytest.mark.parametrize("which", ["preprocess.json", "meta.json"])
@pytest.mark.parametrize("junk", list(JUNK_JSON))
def test_a_junk_json_file_is_named_by_predict(finished, tmp_path, digits_csv, which, junk):
    folder = copy_of(finished, tmp_path, "copy")
    (folder.path / which).write_bytes(JUNK_JSON[junk])
    refused(traintop("predict", str(folder.path), str(digits_csv)), which, "damaged")


def test_preprocess_json_that_describes_nothing_and_a_junk_config_are_named(finished, tmp_path, digits_csv):
    folder = copy_of(finished, tmp_path, "copy")
    folder.preprocess.write_text('{"kind": "tabular", "features": 5}')
    refused(traintop("predict", str(folder.path), str(digits_csv)), "preprocess.json", "damaged")
    other = copy_of(finished, tmp_path, "other")
    other.config.write_text("junk = [")
    refused(traintop("predict", str(other.path), str(digits_csv)), "config.toml", "not valid TOML")


def test_a_checkpoint_of_another_model_is_refused_naming_it(finished, tmp_path, digits_csv):
    folder = copy_of(finished, tmp_path, "copy")
    torch.save({"model": {"weight": torch.zeros(2, 2)}, "step": 3}, folder.best)
    refused(traintop("predict", str(folder.path), str(digits_csv)), "best.pt does not fit this run's model")


FORGED_STEPS = {  # a steps line whose columns are lists, but not of what they hold
    "a word for a loss": '"step": [1], "epoch": [1], "loss": ["a"], "grad_norm": [1], "lr": [1]',
    "more steps than losses": '"step": [1, 2], "epoch": [1, 1], "loss": [1], "grad_norm": [1, 1], "lr": [1, 1]',
    "a word in a scalar": '"step": [1], "epoch": [1], "loss": [1], "grad_norm": [1], "lr": [1], "acc": ["x"]',
    "a word in a layer": '"step": [1], "epoch": [1], "loss": [1], "grad_norm": [1], "lr": [1], '
                         '"layer_norms": {"w": ["x"]}, "layer_steps": [1]',
}


@pytest.mark.parametrize("damage", ["missing", "junk line", "not UTF-8", "wrong types", "a word for a metric",
                                    *FORGED_STEPS])
def test_a_missing_or_damaged_events_log_is_named_by_show_attach_and_export(finished, tmp_path, damage):
    folder = copy_of(finished, tmp_path, "copy")
    if damage == "missing":
        folder.events.unlink()
    elif damage == "junk line":
        folder.events.write_text("garbage\n" + folder.events.read_text())
    elif damage == "not UTF-8":
        folder.events.write_bytes(b"\xff\xfe garbage\n" + folder.events.read_bytes())
    elif damage == "wrong types":  # JSON, but not what the events' fields hold
        folder.events.write_text('{"event": "validation", "t": 1, "val_loss": "high", "metrics": []}\n'
                                 + folder.events.read_text())
    elif damage == "a word for a metric":  # the dashboard crashed on it (and exited 0), attach too
        lines = folder.events.read_text().splitlines(keepends=True)
        forged = '{"event": "validation", "t": 1, "step": 1, "val_loss": 1, "metrics": {"accuracy": "x"}}\n'
        folder.events.write_text("".join(lines[:2] + [forged] + lines[2:]))
    else:
        lines = folder.events.read_text().splitlines(keepends=True)
        forged = '{"event": "steps", "t": 1, "samples_per_s": 1, ' + FORGED_STEPS[damage] + "}\n"
        folder.events.write_text("".join(lines[:2] + [forged] + lines[2:]))
    for args in (["show", str(folder.path)], ["attach", str(folder.path)], ["attach", str(folder.path), "--headless"],
                 ["export", str(folder.path), "--out", str(tmp_path / "out")]):
        refused(traintop(*args), "events.jsonl")
    assert not (tmp_path / "out" / "steps.csv").exists()


def test_show_into_a_file_or_a_pipe_says_it_needs_a_terminal_and_how_to_get_lines(finished, tmp_path):
    """Not a dashboard drawn into the pipe for ever."""
    for runs in ([str(finished.path)], [str(finished.path), str(copy_of(finished, tmp_path, "again").path)]):
        proc = subprocess.run([*TRAINTOP, "show", *runs], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
        assert "needs a terminal" in proc.stderr and f"traintop attach {finished.run_id} --headless" in proc.stderr


def ls(runs: Path, *args: str) -> subprocess.CompletedProcess:
    proc = traintop("ls", "--runs-dir", str(runs), *args)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return proc


def rows(listing: str) -> dict[str, list[str]]:
    """The table of `ls` by run id: its columns split on runs of two spaces."""
    lines = [line for line in listing.splitlines() if line and not line.startswith(("RUN ", "unreadable:"))]
    return {line.split()[0]: re.split(r"\s{2,}", line) for line in lines}


def test_ls_lists_every_readable_run_and_marks_each_damaged_one_unreadable_with_why(finished, tmp_path):
    runs = tmp_path / "runs"
    copy_of(finished, runs, "good")
    (copy_of(finished, runs, "junk-meta").meta).write_text("{junk")
    (copy_of(finished, runs, "junk-report").report).write_bytes(b"\x00\x01")
    copy_of(finished, runs, "no-events").events.unlink()
    copy_of(finished, runs, "no-meta").meta.unlink()
    (copy_of(finished, runs, "listed-meta", killed=True).meta).write_text("[]")
    (copy_of(finished, runs, "bad-log", killed=True).events).write_text("{}\nnot json\n{}\n")
    odd = copy_of(finished, runs, "odd-values")
    odd.meta.write_text(json.dumps({"name": ["x"], "started": 5, "pid": "abc"}))
    odd.report.write_text(json.dumps({"status": "completed", "best": 3, "test": "high", "epochs": "two",
                                      "seconds": "long"}))
    for name, status in (("bogus-status", "bogus"), ("number-status", 7)):
        report = json.loads(copy_of(finished, runs, name).report.read_text())
        (runs / name / "report.json").write_text(json.dumps({**report, "status": status}))
    for name, seconds in (("aeons", 1e308), ("days", 3 * 86400 + 4 * 3600 + 5), ("negative", -4.0)):
        report = json.loads(copy_of(finished, runs, name).report.read_text())
        (runs / name / "report.json").write_text(json.dumps({**report, "seconds": seconds}))
    (runs / "not-a-run").mkdir()
    (runs / "stray-file.txt").write_text("hello")

    out = ls(runs).stdout
    table = rows(out)
    assert [table[name][7] for name in ("aeons", "days", "negative")] == [">999d", "3d04h", "-"]
    assert table["good"][2] == "completed" and table["good"][5].startswith("accuracy 0.")
    assert table["odd-values"][2] == "completed"  # odd values shown as unknown, not fatal
    assert "not-a-run" not in table and "stray-file.txt" not in table
    reasons = dict(re.findall(r"^unreadable: (\S+): (.*)$", out, re.M))
    assert {name: table[name][2] for name in reasons} == {name: "unreadable" for name in reasons}
    assert set(reasons) == {"junk-meta", "junk-report", "no-events", "no-meta", "listed-meta", "bad-log",
                            "bogus-status", "number-status"}
    assert reasons["bogus-status"].startswith("report.json gives the status 'bogus', none of running, ")
    assert reasons["junk-meta"].startswith("meta.json is not valid JSON")
    assert reasons["junk-report"].startswith("report.json is not valid JSON")
    assert reasons["no-events"].startswith("events.jsonl is missing")
    assert reasons["no-meta"].startswith("meta.json is missing")
    assert reasons["listed-meta"].startswith("meta.json holds an array, not a JSON object")
    assert reasons["bad-log"].startswith("events.jsonl: line 2 is not a valid event")
    assert "unreadable:" not in ls(runs, "--status", "completed").stdout


def test_ls_sorts_by_start_time_filters_by_status_name_and_last_and_shows_durations(finished, tmp_path):
    runs = tmp_path / "runs"
    starts = {"a-first-by-name": "2026-03-01T10:00:00", "b-oldest": "2025-01-01T10:00:00",
              "c-newest": "2027-05-01T10:00:00"}
    for run_id, started in starts.items():
        folder = copy_of(finished, runs, run_id, killed=run_id == "c-newest")
        meta = json.loads(folder.meta.read_text())
        meta.update(started=started, name="probe" if run_id == "b-oldest" else "digits-mlp", pid=-1)
        folder.meta.write_text(json.dumps(meta))

    table = rows(ls(runs).stdout)
    assert list(table) == ["b-oldest", "a-first-by-name", "c-newest"]
    report = json.loads((runs / "b-oldest" / "report.json").read_text())
    last_t = json.loads((runs / "c-newest" / "events.jsonl").read_text().splitlines()[-1])["t"]
    assert table["b-oldest"][7] == f"{report['seconds']:.1f}s"  # finished: report.json's seconds
    assert table["c-newest"][7] == f"{last_t:.1f}s" and table["c-newest"][2] == "killed"  # else its last event

    assert list(rows(ls(runs, "--status", "killed").stdout)) == ["c-newest"]
    assert list(rows(ls(runs, "--status", "completed").stdout)) == ["b-oldest", "a-first-by-name"]
    assert list(rows(ls(runs, "--name", "probe").stdout)) == ["b-oldest"]
    assert list(rows(ls(runs, "--name", "digits*").stdout)) == ["a-first-by-name", "c-newest"]
    assert list(rows(ls(runs, "--last", "2").stdout)) == ["a-first-by-name", "c-newest"]
    assert list(rows(ls(runs, "--status", "completed", "--last", "1").stdout)) == ["a-first-by-name"]
    assert "match" in ls(runs, "--status", "paused").stdout
    for bad in (["--status", "finished"], ["--last", "0"], ["--last", "x"]):
        proc = traintop("ls", "--runs-dir", str(runs), *bad)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and bad[0] in proc.stderr


def test_a_run_named_like_the_start_of_run_ids_is_found_by_its_name(finished, tmp_path):
    """A run named 2026 among runs started in 2026: the name, not an ambiguous id prefix."""
    runs = tmp_path / "runs"
    for run_id, name in (("20260101-100000-a", "a"), ("20260102-100000-2026", "2026"), ("20260103-100000-b", "b")):
        folder = copy_of(finished, runs, run_id)
        meta = json.loads(folder.meta.read_text())
        meta.update(name=name)
        folder.meta.write_text(json.dumps(meta))
    assert resolve_run("2026", runs).run_id == "20260102-100000-2026"
    assert resolve_run("20260103", runs).run_id == "20260103-100000-b"  # a unique id prefix is still an id
    with pytest.raises(UserError, match="'202601' matches 3 runs"):
        resolve_run("202601", runs)


def test_rm_removes_finished_runs_only_when_told_yes(finished, tmp_path):
    runs = tmp_path / "runs"
    for run_id in ("one", "two", "three"):
        copy_of(finished, runs, run_id)
    refused(traintop("rm", "one", "two", "--runs-dir", str(runs), stdin=subprocess.DEVNULL),
            "no terminal", "--yes", "one", "two")
    assert (runs / "one").is_dir() and (runs / "two").is_dir()
    refused(traintop("rm", "one", "nothing-like-it", "--yes", "--runs-dir", str(runs)), "nothing-like-it")
    assert (runs / "one").is_dir()

    answered = answer_rm(runs, ["one", "two"], b"n\n")
    assert "remove 2 runs (one, two)? [y/N]" in answered and "nothing removed" in answered
    assert (runs / "one").is_dir() and (runs / "two").is_dir()
    answered = answer_rm(runs, ["one", "two"], b"y\n")
    assert "removed one" in answered and "removed two" in answered
    assert not (runs / "one").exists() and not (runs / "two").exists()

    proc = traintop("rm", str(runs / "three"), "--yes", "--runs-dir", str(runs))
    assert proc.returncode == 0 and "removed three" in proc.stdout
    assert not (runs / "three").exists() and finished.path.is_dir()


def answer_rm(runs: Path, specs: list[str], answer: bytes) -> str:
    """`traintop rm` at a terminal (a pty), answering its question; what the terminal showed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*TRAINTOP, "rm", *specs, "--runs-dir", str(runs)], stdin=slave, stdout=slave,
                            stderr=slave)
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + 60
    while b"[y/N]" not in shown and time.monotonic() < deadline:
        if select.select([master], [], [], 0.5)[0]:
            shown += os.read(master, 4096)
    assert b"[y/N]" in shown, shown
    os.write(master, answer)
    proc.wait(timeout=30)
    try:
        while select.select([master], [], [], 0.5)[0] and (chunk := os.read(master, 4096)):
            shown += chunk
    except OSError:  # the terminal closed with the process
        pass
    os.close(master)
    assert proc.returncode == 0, shown
    return shown.decode()


def test_rm_refuses_a_live_run_naming_it_and_removes_nothing(finished, live_run):
    runs = live_run.path.parent
    kept = copy_of(finished, runs, "finished-one")
    message = refused(traintop("rm", "finished-one", live_run.run_id, "--yes", "--runs-dir", str(runs)),
                      live_run.run_id, "live")
    assert "ctl" in message and "stop" in message
    assert kept.path.is_dir() and live_run.path.is_dir()
    assert rows(ls(runs).stdout)[live_run.run_id][2] == "running"


USER_MODEL = '''
from torch import nn


def model(info):
    return nn.Sequential(nn.Linear(info.input_shape[0], 16), nn.ReLU(), nn.Linear(16, info.n_outputs))
'''


@pytest.fixture(scope="module")
def python_run(tmp_path_factory) -> RunFolder:
    """A finished digits run whose model comes from the user's module next to its config."""
    home = tmp_path_factory.mktemp("project")
    (home / "own_model.py").write_text(USER_MODEL)
    (home / "config.toml").write_text('[model]\nkind = "python"\nfactory = "own_model:model"\n'
                                      "[train]\nepochs = 2\n")
    proc = traintop("run", str(home / "config.toml"), "--headless", "--runs-dir", str(home / "runs"))
    assert proc.returncode == 0, proc.stderr
    return resolve_run("latest", home / "runs")


def test_code_is_imported_from_a_copied_run_folder_only_with_trust(python_run, tmp_path, digits_csv):
    own = traintop("predict", str(python_run.path), str(digits_csv))
    assert own.returncode == 0, own.stderr  # the user's own folder, in place
    copied = copy_of(python_run, tmp_path, "copied")
    message = refused(traintop("predict", str(copied.path), str(digits_csv)), "'own_model'",
                      str(python_run.path.parent.parent), "moved", "--trust")
    trusted = traintop("predict", str(copied.path), str(digits_csv), "--trust")
    assert trusted.returncode == 0, trusted.stderr
    assert trusted.stdout == own.stdout
    assert "model.factory" in message


def test_a_run_folder_made_or_owned_by_another_user_is_not_imported_from(python_run, tmp_path, monkeypatch):
    recorded = copy_of(python_run, tmp_path, "recorded")
    meta = json.loads(recorded.meta.read_text())
    meta.update(uid=os.getuid() + 1, folder=str(recorded.path.resolve()))  # as if made here, by another user
    recorded.meta.write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"another user made it .*--trust"):
        Predictor.from_folder(recorded)
    meta.update(uid=os.getuid())  # forged: this user, this path, but the seal is the original's
    recorded.meta.write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"not sealed by your traintop .*--trust"):
        Predictor.from_folder(recorded)
    meta.update(seal=seal(meta["run_id"], meta["folder"], meta["uid"]))  # as traintop made it, here
    recorded.meta.write_text(json.dumps(meta))
    assert Predictor.from_folder(recorded).step > 0  # in place, made and sealed by the user: imported
    monkeypatch.setattr(os, "getuid", lambda: os.stat(recorded.path).st_uid + 1)
    with pytest.raises(UserError, match=r"belongs to another user"):
        Predictor.from_folder(recorded)
    assert Predictor.from_folder(recorded, trust=True).step > 0


def test_resume_of_a_copied_run_imports_its_code_only_when_trusted(python_run, tmp_path):
    copied = copy_of(python_run, tmp_path / "runs", "copied")
    more = ("--set", "train.epochs=3", "--runs-dir", str(tmp_path / "runs"))
    before = copied.events.read_bytes(), copied.meta.read_bytes()
    refused(traintop("resume", "copied", *more), "'own_model'", "moved", "--trust")
    assert (copied.events.read_bytes(), copied.meta.read_bytes()) == before  # nothing trained or written
    resumed = traintop("resume", "copied", *more, "--headless", "--trust")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(copied.report.read_text())["epochs"] == 3


async def test_the_inference_view_of_a_copied_run_imports_its_code_only_when_trusted(python_run, tmp_path):
    copied = copy_of(python_run, tmp_path, "copied")
    sample = cmd.Predict(request_id="s", weights="best", inputs=[{"split": "val", "index": 0}])
    wary = FinishedRun(copied)
    try:
        reply = await wary.send(sample)
        assert not reply.ok and "own_model" in reply.message and "--trust" in reply.message
    finally:
        await wary.close()
    trusting = FinishedRun(copied, trust=True)  # `traintop show RUN --trust`
    try:
        reply = await trusting.send(sample)
        assert reply.ok, reply.message
        assert reply.data["outputs"][0]["label"] in [str(d) for d in range(10)]
    finally:
        await trusting.close()


def test_show_and_attach_take_trust(python_run, tmp_path):
    copied = copy_of(python_run, tmp_path, "copied")
    copied.events.unlink()  # fails after the arguments were taken, before any dashboard starts
    for command in ("show", "attach"):
        refused(traintop(command, str(copied.path), "--trust"), "events.jsonl is missing")
    assert traintop("attach", str(python_run.path), "--headless", "--trust").returncode == 0


def test_rm_removes_only_folders_that_are_runs(finished, tmp_path):
    """A project folder that happens to hold a meta.json is no run: rm, given its path (or `.`),
    refuses and removes nothing. A run folder kept outside the runs folder is still removed by path."""
    runs = tmp_path / "runs"
    runs.mkdir()
    project = tmp_path / "proj"
    (project / "src").mkdir(parents=True)
    (project / "meta.json").write_text('{"x": 1}')
    (project / "src" / "code.py").write_text("keep = 1\n")
    for spec, cwd in ((str(project), tmp_path), (".", project)):
        message = refused(traintop("rm", spec, "--yes", "--runs-dir", str(runs), cwd=cwd),
                          "is not a traintop run folder", "nothing removed")
        assert str(project) in message
        assert (project / "src" / "code.py").read_text() == "keep = 1\n"
    moved = tmp_path / "archive" / finished.run_id
    shutil.copytree(finished.path, moved)
    proc = traintop("rm", str(moved), "--yes", "--runs-dir", str(runs))
    assert proc.returncode == 0 and f"removed {moved}" in proc.stdout and not moved.exists()


def test_no_output_is_written_over_a_runs_own_files(finished, tmp_path):
    """predict --out and export --out, named straight or through a link, never replace a run's log,
    checkpoints or other files: refused, and the files are as they were."""
    run = RunFolder(shutil.copytree(finished.path, tmp_path / "runs" / finished.run_id))
    kept = {f: f.read_bytes() for f in (run.events, run.meta, run.report, run.config, run.best)}
    links = tmp_path / "links"
    links.mkdir()
    (links / "steps.csv").symlink_to(run.events)
    inputs = tmp_path / "in.csv"
    inputs.write_text(",".join(f"p{i}" for i in range(64)) + "\n" + ",".join(["0"] * 64) + "\n")
    for args, said in ((["predict", run.run_id, str(inputs), "--out", str(run.events)], "is a file of the run"),
                       (["predict", run.run_id, str(inputs), "--out", str(run.best)],
                        "best.pt is in the checkpoints folder of the run"),
                       (["predict", run.run_id, str(inputs), "--out", str(links / "steps.csv")], "is a file of the run"),
                       (["export", run.run_id, "--format", "csv", "--out", str(links)], "is a file of the run"),
                       (["export", run.run_id, "--format", "csv", "--out", str(run.path / "checkpoints")],
                        "steps.csv is in the checkpoints folder of the run")):
        refused(traintop(*args, "--runs-dir", str(tmp_path / "runs")), said, "give another path")
    assert {f: f.read_bytes() for f in kept} == kept
    proc = traintop("export", run.run_id, "--format", "csv", "--runs-dir", str(tmp_path / "runs"))
    assert proc.returncode == 0 and (run.path / "steps.csv").is_file()  # its own tables, beside the run's files


def test_a_runs_dir_under_a_file_is_refused_by_the_reading_commands_too(tmp_path):
    """run refuses it; ls, show and the rest say the same instead of "no runs"."""
    (tmp_path / "afile").write_text("x")
    under = str(tmp_path / "afile" / "sub")
    for args, env in ((["ls", "--runs-dir", under], {}), (["ls"], {"TRAINTOP_RUNS_DIR": under}),
                      (["show", "latest", "--runs-dir", under], {})):
        message = refused(traintop(*args, env={**os.environ, **env}), "lies under", "which is a file, not a folder")
        assert ("TRAINTOP_RUNS_DIR" if env else "--runs-dir") in message


def test_odd_arguments_of_the_run_commands_are_refused_by_name(finished):
    """A run argument longer than a file name may be, `--out -`, and a --tail past any count: a
    clear refusal (or, for --tail, every line), never a traceback."""
    runs = str(finished.path.parent)
    long_name = "a" * 300
    for args in (["show", long_name], ["export", long_name], ["resume", long_name], ["rm", long_name, "--yes"],
                 ["ctl", long_name, "pause"]):
        refused(traintop(*args, "--runs-dir", runs), "no run matches", "File name too long")
    for args in (["predict", finished.run_id, "in.csv", "--out", "-"], ["export", finished.run_id, "--out", "-"]):
        refused(traintop(*args, "--runs-dir", runs), "--out", "'-' names no file")
    proc = traintop("attach", finished.run_id, "--headless", "--tail", "9" * 30, "--runs-dir", runs)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "finished: completed" in proc.stdout


def test_attach_says_a_killed_run_resumes_only_when_resume_would_take_it(finished, tmp_path):
    """A killed run with its whole log: attach names the resume command. One whose log has lost
    its start (resume refuses it): attach says it cannot be resumed, and resume does refuse."""
    runs = tmp_path / "runs"
    whole = copy_of(finished, runs, "whole", killed=True)
    cut = copy_of(finished, runs, "cut", killed=True)
    cut.events.write_text("".join(cut.events.read_text().splitlines(keepends=True)[1:]))
    said = {run.run_id: traintop("attach", run.run_id, "--headless", "--runs-dir", str(runs)) for run in (whole, cut)}
    assert "`traintop resume whole` continues it from checkpoints/last.pt" in said["whole"].stdout + said["whole"].stderr
    shown = said["cut"].stdout + said["cut"].stderr
    assert "cannot be resumed" in shown and "traintop resume cut" not in shown
    refused(traintop("resume", "cut", "--headless", "--runs-dir", str(runs)), "its history is lost")


def test_a_refused_resume_leaves_a_folder_that_is_no_run_as_it_was(finished, tmp_path):
    """`traintop resume PATH` on a folder that is no run: refused, and no lock file is left in it;
    a real run's own lock file stays."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "meta.json").write_text("{}")
    refused(traintop("resume", str(folder), "--headless"), "checkpoints/last.pt")
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json"]
    assert finished.lock_file.is_file()
    refused(traintop("resume", str(finished.path), "--headless"), "no epochs left")
    assert finished.lock_file.is_file()
