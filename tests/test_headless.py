"""`traintop run --headless` as a user runs it: the real console script in a real process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from traintop.engine.runstore import RunFolder, read_events

TRAINTOP = [sys.executable, "-m", "traintop.tui"]


def only_run(runs_dir) -> RunFolder:
    (path,) = [p for p in runs_dir.iterdir() if p.is_dir()]
    return RunFolder(path)


def test_demo_reaches_test_accuracy_and_logs_the_whole_loop(tmp_path):
    runs = tmp_path / "runs"
    # The demo, its rate raised so that a few epochs reach the band: its 300 epochs take half a minute.
    proc = subprocess.run([*TRAINTOP, "run", "--headless", "--runs-dir", str(runs), "--set", "train.epochs=8",
                           "--set", "optim.lr=0.001"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "digits-mlp" in out and "301,066 parameters" in out and "1258 train / 270 val / 269 test" in out
    assert "plan    8 epochs × 79 steps" in out
    assert "* best" in out and "finished: completed" in out
    folder = only_run(runs)
    for name in ("config.toml", "meta.json", "events.jsonl", "preprocess.json", "report.json"):
        assert (folder.path / name).is_file(), name
    assert folder.best.is_file() and folder.last.is_file()
    assert not list(folder.path.rglob("*.tmp"))
    events, torn = read_events(folder.events)
    assert not torn
    kinds = [e.event for e in events]
    started = events[0]
    assert kinds.count("run_started") == 1 and kinds[0] == "run_started"
    assert kinds.count("run_finished") == 1 and kinds[-1] == "run_finished"
    assert kinds.count("test_result") == 1
    epochs = started.config["train"]["epochs"]
    assert kinds.count("validation") == epochs
    steps = [s for e in events if e.event == "steps" for s in e.step]
    assert steps == list(range(1, epochs * started.steps_per_epoch + 1))
    test = next(e for e in events if e.event == "test_result")
    assert test.metrics["accuracy"] >= 0.93
    report = json.loads(folder.report.read_text())
    assert report["status"] == "completed" and report["test"]["accuracy"] == test.metrics["accuracy"]
    assert f"accuracy {test.metrics['accuracy']:.4f}" in out


def test_the_log_gives_a_small_learning_rate_to_three_figures(tmp_path):
    proc = subprocess.run([*TRAINTOP, "run", "--headless", "--runs-dir", str(tmp_path / "runs"), "--set",
                           "train.epochs=1", "--set", "optim.lr=0.00195", "--set", 'schedule.name="none"'],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch ") and " loss " in line]
    assert lines and all(" lr 0.00195 " in line for line in lines), proc.stdout


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_cleanly_after_saving_last_checkpoint(tmp_path, sig, code):
    runs = tmp_path / "runs"
    proc = subprocess.Popen([*TRAINTOP, "run", "--headless", "--runs-dir", str(runs),
                             "--set", "train.epochs=100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # wait until it is training
            if line.startswith("epoch"):
                break
        time.sleep(0.3)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    folder = only_run(runs)
    assert folder.last.is_file()
    events, torn = read_events(folder.events)
    assert events[-1].event == "run_finished" and events[-1].status == "stopped"
    assert any(e.event == "checkpoint_saved" and e.kind == "last" for e in events)
    assert json.loads(folder.report.read_text())["status"] == "stopped"


def test_a_failed_run_exits_1_and_keeps_its_log(tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.run([*TRAINTOP, "run", "--headless", "--runs-dir", str(runs),
                           "--set", "optim.name=sgd", "--set", "optim.lr=10", "--set", "train.epochs=50"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "nan_loss" in proc.stdout and "finished: failed" in proc.stdout
    folder = only_run(runs)
    events, _ = read_events(folder.events)
    assert events[-1].status == "failed"
    assert json.loads(folder.report.read_text())["status"] == "failed"
    assert "  kept    no checkpoint: the run failed before its first save" in proc.stdout


def test_a_failed_runs_last_lines_name_the_checkpoint_it_keeps():
    """The end of a failed run says what is left to go on from: the last save's file and step."""
    import io

    from traintop.engine import events as ev
    from traintop.tui.headless import HeadlessPrinter

    out = io.StringIO()
    printer = HeadlessPrinter(out)
    printer.apply(ev.CheckpointSaved(t=1.0, path="/runs/r/checkpoints/last.pt", kind="periodic", step=79))
    printer.apply(ev.CheckpointSaved(t=1.5, path="/runs/r/checkpoints/best.pt", kind="best", step=100))
    printer.apply(ev.RunFinished(t=2.0, status="failed", error="non-finite loss or gradient at step 120", step=130,
                                 epoch=2))
    assert "  kept    /runs/r/checkpoints/last.pt, saved at step 79\n" in out.getvalue()
    out = io.StringIO()  # a run that failed before its first last.pt, with a best.pt (a rank gone)
    printer = HeadlessPrinter(out)
    printer.apply(ev.CheckpointSaved(t=1.5, path="/runs/r/checkpoints/best.pt", kind="best", step=100))
    printer.apply(ev.RunFinished(t=2.0, status="failed", error="rank 1 ended", step=130, epoch=2))
    assert ("  kept    no last.pt to resume from; /runs/r/checkpoints/best.pt (step 100) holds the best weights, "
            "for predict\n") in out.getvalue()


def test_a_loops_own_monitor_names_its_best_and_steps_without_a_loss_leave_the_mean_alone():
    """A loop of your own says its monitor in early_stopping_changed (its config is its own): the
    last lines name the best by it. Steps with no loss (NaN, or null in the log) are left out of
    a step line's mean loss."""
    import io

    from traintop.engine import events as ev
    from traintop.tui.headless import HeadlessPrinter

    out = io.StringIO()
    printer = HeadlessPrinter(out)
    printer.apply(ev.RunStarted(t=0.0, run_id="r", name="r", source="watch",
                                config={"early_stopping": True}))  # the loop's own flag, not traintop's
    printer.apply(ev.EarlyStoppingChanged(t=0.0, monitor="val_accuracy", mode="max", patience=3))
    assert "early stopping" not in out.getvalue()  # how the run starts: its plan, not a change
    printer.apply(ev.Steps(t=0.5, step=[1, 2, 3, 4], epoch=[1] * 4, loss=[0.5, float("nan"), None, 0.3],
                           grad_norm=[1.0] * 4, lr=[0.1] * 4))
    printer.apply(ev.Validation(t=1.0, step=4, epoch=1, val_loss=0.7, metrics={"accuracy": 0.9}, best=True))
    printer.apply(ev.EarlyStoppingChanged(t=1.5, step=4, enabled=False, monitor="val_accuracy", patience=3))
    printer.apply(ev.RunFinished(t=2.0, status="completed", step=4, epoch=1))
    text = out.getvalue()
    assert "  early stopping off at step 4: patience 3, watching val_accuracy\n" in text, text
    assert "loss 0.4000" in text and "loss nan" not in text, text
    assert "  best    val_accuracy 0.9000 at epoch 1 (step 4)" in text, text


def test_a_log_written_by_an_earlier_traintop_reads_the_same_and_attach_shows_its_checkpoints_and_warnings(tmp_path):
    # Lines exactly as earlier versions wrote them: checkpoints and warnings carry "kind" on the wire.
    lines = [
        '{"event":"checkpoint_saved","t":1.5,"path":"checkpoints/last.pt","kind":"manual","step":30}',
        '{"event":"warning","t":2.0,"kind":"overfitting","message":"validation loss rose 3 times",'
        '"step":40,"advice":"add dropout","id":"overfitting","count":2,"first_step":20,"last_step":40,'
        '"values":{"rises":3}}',
        '{"event":"run_finished","t":2.5,"status":"completed","error":"","step":40,"epoch":2}',
    ]
    folder = tmp_path / "20261201-120000-earlier"
    folder.mkdir()
    (folder / "events.jsonl").write_text("".join(line + "\n" for line in lines))
    events, torn = read_events(RunFolder(folder).events)
    assert not torn and [e.to_line() for e in events] == lines  # the wire format, byte for byte
    saved, warning, _ = events
    assert (saved.event, saved.kind, warning.event, warning.kind) == ("checkpoint_saved", "manual", "warning",
                                                                      "overfitting")
    proc = subprocess.run([*TRAINTOP, "attach", str(folder), "--headless"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "saved   manual checkpoint at step 30: checkpoints/last.pt" in proc.stdout
    assert "warning [overfitting] again at step 40 (2 times since step 20)" in proc.stdout


def test_a_line_of_traintops_that_cannot_be_written_never_fails_the_scripts_print():
    """traintop's waiting line is written by the script's write that ends its line: if writing it
    fails (a closed pipe, an encoding the terminal lacks), that line is lost and the script's own
    print goes on, then and after."""
    import io
    import threading

    from traintop.tui.terminal import LineGate

    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii", write_through=True)
    gate = LineGate(out)
    gate.HOLD_SECONDS = 30
    gate.write("open")
    writer = threading.Thread(target=gate.beside().write, args=("traintop \u00b7 run\n",))
    writer.start()
    while not gate.waiting:
        time.sleep(0.001)
    gate.write(" done\n")  # writes traintop's waiting line, which ascii cannot encode
    writer.join()
    gate.write("next\n")
    assert raw.getvalue().decode() == "open done\nnext\n"


def test_a_line_the_script_leaves_open_holds_traintops_lines_only_briefly():
    """A progress bar redrawn with \\r never ends its line: traintop's line waits a moment, then
    starts on a line of its own, whole; a line the script ends lets it through at once."""
    import io
    import threading

    from traintop.tui.terminal import LineGate

    out = io.StringIO()
    gate = LineGate(out)
    ours = gate.beside()
    gate.write("progress 10%\r")
    started = time.perf_counter()
    ours.write("epoch 1 step 5 loss 0.3\n")
    assert time.perf_counter() - started >= LineGate.HOLD_SECONDS * 0.9
    assert out.getvalue() == "progress 10%\r\nepoch 1 step 5 loss 0.3\n"

    gate.HOLD_SECONDS = 30  # a slow machine must not make it give up waiting
    gate.write("loss ")
    writer = threading.Thread(target=ours.write, args=("traintop line\n",))
    writer.start()
    while not gate.waiting:  # traintop's line is waiting for the script's
        time.sleep(0.001)
    gate.write("0.25")
    gate.write("\n")  # the line ends: traintop's goes right after it, before the script's next
    gate.write("next")
    writer.join()
    assert out.getvalue().endswith("loss 0.25\ntraintop line\nnext")
