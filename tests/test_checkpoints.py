"""Nothing a run has trained is lost: periodic checkpoints, the run-folder lock, runs that blow
up or fill the disk, and finished runs extended by `resume`. Real engine processes, real files."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from traintop.engine import checkpoint
from traintop.engine import commands as cmd
from traintop.engine import events as ev
from traintop.engine.checkpoint import load_checkpoint
from traintop.engine.config import load_config
from traintop.engine.run import Run
from traintop.engine.runstore import RunFolder, read_events, resolve_run, socket_is_live

TRAINTOP = [sys.executable, "-m", "traintop.tui"]
NO_EARLY_STOP = ["--set", "early_stopping.enabled=false"]
# The digits MLP at the defaults (64 per batch: 20 steps an epoch), not the demo's half-minute settings.
QUICK = ["--set", "data.batch_size=64", "--set", "model.hidden=[128,128]", "--set", "optim.lr=0.001"]


def traintop(*args, runs_dir, timeout=300, check=False) -> subprocess.CompletedProcess:
    proc = subprocess.run([*TRAINTOP, *args, "--runs-dir", str(runs_dir)], capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def wait_for(condition, timeout: float = 60, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def detach(runs, *args, engines) -> RunFolder:
    proc = traintop("run", "--detach", *args, runs_dir=runs, check=True)
    folder = resolve_run(proc.stdout.split()[0], runs)
    engines.append(folder)
    return folder


def steps_of(events) -> list[int]:
    return [s for e in events if isinstance(e, ev.Steps) for s in e.step]


def of_kind(events, kind: str) -> list:
    return [e for e in events if e.event == kind]


def finished(folder: RunFolder) -> dict | None:
    return folder.read_json("report.json")


# -- periodic checkpoints -------------------------------------------------------------------------

def test_a_run_killed_at_a_random_moment_resumes_to_the_same_test_metrics(tmp_path, engines):
    runs = tmp_path / "runs"
    config = ["--set", "train.epochs=400", *NO_EARLY_STOP, *QUICK, "--set", "checkpoint.every_seconds=1"]
    victim = detach(runs, *config, "--name", "victim", engines=engines)
    whole = subprocess.Popen([*TRAINTOP, "run", "--headless", *config, "--name", "whole", "--runs-dir", str(runs)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(victim.last.exists, what="the first periodic last.pt")
    time.sleep(random.Random(20261203).uniform(0.2, 1.0))
    assert finished(victim) is None, "the run ended before the kill: give it more epochs"
    os.kill(victim.read_json("meta.json")["pid"], signal.SIGKILL)
    assert whole.wait(timeout=300) == 0, whole.stderr.read()
    killed = read_events(victim.events)[0]
    saved = [e.step for e in of_kind(killed, "checkpoint_saved") if e.kind == "periodic"]
    assert saved and killed[-1].event != "run_finished"
    assert traintop("ls", runs_dir=runs).stdout.count("killed") == 1

    proc = traintop("resume", "victim", "--headless", runs_dir=runs)
    assert proc.returncode == 0, proc.stderr
    expected, got = resolve_run("whole", runs).read_json("report.json"), victim.read_json("report.json")
    assert got["status"] == "completed" and got["test"] == expected["test"]  # bit for bit
    events = read_events(victim.events)[0]
    assert steps_of(events) == list(range(1, 400 * events[0].steps_per_epoch + 1))
    resumed = [e for e in of_kind(events, "resumed") if e.source == "checkpoint"]
    assert len(resumed) == 1 and resumed[0].step >= saved[-1]


async def test_a_periodic_checkpoint_is_announced_once_in_place_and_matches_the_log_it_points_into(tmp_path):
    run = Run.prepare(load_config(None, ["train.epochs=200", "early_stopping.enabled=false",
                                         "checkpoint.every_seconds=0.3"]), tmp_path / "runs")
    run.start()
    checked, mid_epoch = 0, 0
    async for e in run.events():
        if isinstance(e, ev.CheckpointSaved) and e.kind == "periodic" and checked < 4:
            state = load_checkpoint(run.folder.last)
            assert state["step"] >= e.step  # the file was in place before the event
            # The log up to the offset in the state holds exactly the steps the state has trained.
            head = run.folder.events.read_bytes()[:state["events_offset"]]
            assert head.endswith(b"\n")
            logged = steps_of(ev.parse_line(line) for line in head.decode().splitlines())
            assert logged == list(range(1, state["step"] + 1))
            checked += 1
            mid_epoch += state["batch"] != 0
    assert await run.wait() == "completed"
    assert checked == 4 and mid_epoch  # saved where the time fell due, mid-epoch included


async def test_a_slow_checkpoint_write_never_holds_training_up(tmp_path, monkeypatch):
    real = checkpoint.save_checkpoint

    def slow(path, state):
        time.sleep(1.0)  # a model of several GB on a slow disk
        real(path, state)

    monkeypatch.setattr(checkpoint, "save_checkpoint", slow)
    run = Run.prepare(load_config(None, ["train.epochs=100000", "early_stopping.enabled=false",
                                         "checkpoint.every_seconds=0.2"]), tmp_path / "runs")
    run.start()
    times, periodic = [], 0
    async for e in run.events():
        if isinstance(e, ev.Steps):
            times.append(e.t)
        periodic += isinstance(e, ev.CheckpointSaved) and e.kind == "periodic"
        if periodic == 2:
            break
    assert (await run.send(cmd.Stop(save=True))).ok
    assert await run.wait() == "stopped"
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) < 0.5, f"training stalled {max(gaps):.2f}s while a checkpoint was written"
    # Saves fall due every 0.2 s but take 1 s each: a newer state replaced the queued ones.
    events = read_events(run.folder.events)[0]
    assert len([e for e in events if isinstance(e, ev.CheckpointSaved) and e.kind == "periodic"]) <= 4
    last = [e for e in events if isinstance(e, ev.CheckpointSaved) and e.kind == "last"]
    assert len(last) == 1 and load_checkpoint(run.folder.last)["step"] == run.trainer.step == events[-1].step
    assert not list(run.folder.path.rglob("*.tmp"))


# -- one writer per run folder ----------------------------------------------------------------------

def test_a_live_run_cannot_be_resumed_and_is_listed_as_running(tmp_path, engines):
    runs = tmp_path / "runs"
    folder = detach(runs, "--set", "train.epochs=100000", *NO_EARLY_STOP, engines=engines)
    pid = folder.read_json("meta.json")["pid"]
    meta = folder.meta.read_bytes()
    refused = traintop("resume", folder.run_id, "--headless", runs_dir=runs)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"run {folder.run_id} is in use by process {pid}" in refused.stderr
    assert folder.meta.read_bytes() == meta
    assert " running " in traintop("ls", runs_dir=runs).stdout
    os.kill(pid, signal.SIGKILL)  # the OS lets go of the lock with the process
    wait_for(lambda: " killed " in traintop("ls", runs_dir=runs).stdout, what="ls to say killed")


def test_two_resumes_at_once_one_trains_and_the_other_changes_nothing(tmp_path, engines):
    runs = tmp_path / "runs"
    folder = detach(runs, "--set", "train.epochs=100000", *NO_EARLY_STOP, engines=engines)
    wait_for(lambda: len(of_kind(read_events(folder.events)[0], "steps")) > 2, what="steps")
    assert traintop("ctl", folder.run_id, "stop", runs_dir=runs).returncode == 0
    wait_for(lambda: finished(folder), what="the stop")
    both = [subprocess.Popen([*TRAINTOP, "resume", folder.run_id, "--headless", "--runs-dir", str(runs)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    refused = wait_for(lambda: [p for p in both if p.poll() is not None], what="one resume to be refused")
    assert len(refused) == 1 and refused[0].returncode == 2
    assert "is in use by process" in refused[0].stderr.read()
    winner = next(p for p in both if p is not refused[0])
    try:
        wait_for(lambda: folder.socket.exists() and socket_is_live(folder.socket), what="the winner's socket")
        assert traintop("ctl", folder.run_id, "pause", runs_dir=runs).returncode == 0
        files = {f: f.read_bytes() for f in (folder.events, folder.meta, folder.config)}
        third = traintop("resume", folder.run_id, "--set", "train.epochs=9", "--headless", runs_dir=runs)
        assert third.returncode == 2 and "in use by process" in third.stderr
        # nothing cut, nothing rewritten (the paused run still appends its resources samples)
        assert all(f.read_bytes().startswith(data) for f, data in files.items())
        assert folder.meta.read_bytes() == files[folder.meta] and folder.config.read_bytes() == files[folder.config]
        assert traintop("ctl", folder.run_id, "stop", runs_dir=runs).returncode == 0
        assert winner.wait(timeout=120) == 0
    finally:
        winner.kill()
    events = read_events(folder.events)[0]
    assert len([e for e in of_kind(events, "resumed") if e.source == "checkpoint"]) == 1
    assert steps_of(events) == list(range(1, events[-1].step + 1))
    assert len(folder.read_json("meta.json")["resumes"]) == 1


# -- a run that blows up ----------------------------------------------------------------------------

async def test_an_absurd_learning_rate_is_refused_naming_the_limit_and_the_run_goes_on(tmp_path):
    run = Run.prepare(load_config(None, ["train.epochs=100000", "early_stopping.enabled=false"]), tmp_path / "runs")
    run.start()
    try:
        for command, said in [(cmd.SetLr(value=1e308), "1e+308"), (cmd.SetLr(value=10.5), "10.5"),
                              (cmd.SetLr(factor=1e5), "x100000 (which gives 100)")]:
            reply = await run.send(command)
            assert not reply.ok and said in reply.message and "allowed 0 < lr <= 10" in reply.message
            assert "it stays 0.001" in reply.message
        step = run.trainer.step
        assert (await run.send(cmd.SetLr(value=10))).ok  # the limit itself is allowed
        await asyncio.sleep(0.3)
        assert run.trainer.step > step
    finally:
        await run.send(cmd.Stop(save=False))
        await run.wait()
    changes = of_kind(read_events(run.folder.events)[0], "lr_changed")
    assert [c.new for c in changes] == [10]


def test_a_run_blown_up_by_its_learning_rate_keeps_a_finite_checkpoint_and_resumes_at_a_lower_rate(tmp_path, engines):
    runs = tmp_path / "runs"
    folder = detach(runs, "--set", "optim.name=sgd", "--set", "train.epochs=60", *NO_EARLY_STOP, engines=engines)
    wait_for(lambda: len(of_kind(read_events(folder.events)[0], "steps")) > 2, what="steps")
    assert traintop("ctl", folder.run_id, "pause", runs_dir=runs).returncode == 0
    for rate in ("1e308", "0", "-1"):  # the engine refuses, saying the rate it keeps
        refused = traintop("ctl", folder.run_id, "lr", rate, runs_dir=runs)
        assert refused.returncode == 1 and "allowed 0 < lr <= 10; it stays" in refused.stderr, refused.stderr
    time.sleep(5.2)  # the last save (the start) is now older than a few seconds
    assert traintop("ctl", folder.run_id, "lr", "10", runs_dir=runs).returncode == 0
    assert traintop("ctl", folder.run_id, "resume", runs_dir=runs).returncode == 0
    report = wait_for(lambda: finished(folder), what="the run to fail")
    assert report["status"] == "failed" and "non-finite" in report["error"]
    events = read_events(folder.events)[0]
    change = next(e for e in of_kind(events, "lr_changed") if e.new == 10)
    state = load_checkpoint(folder.last)
    # Saved just before the new rate was applied, and never after the weights went bad.
    assert state["step"] == change.step
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    warning = next(e for e in of_kind(events, "warning") if e.kind == "nan_loss")
    assert f"checkpoints/last.pt keeps step {change.step}" in warning.message
    assert " failed " in traintop("ls", runs_dir=runs).stdout

    proc = traintop("resume", folder.run_id, "--set", "optim.lr=0.01", "--headless", runs_dir=runs)
    assert proc.returncode == 0, proc.stderr
    assert finished(folder)["status"] == "completed"
    events = read_events(folder.events)[0]
    assert steps_of(events) == list(range(1, 60 * events[0].steps_per_epoch + 1))
    after = [e for e in of_kind(events, "steps") if e.step[0] > change.step]
    assert after and all(lr == 0.01 for e in after for lr in e.lr)
    assert folder.read_json("meta.json")["resumes"][-1]["set"] == {"optim.lr": 0.01}
    assert folder.read_json("meta.json")["resumes"][-1]["from"] == "failed"
    assert "lr = 0.01" in folder.config.read_text()


# -- a full disk --------------------------------------------------------------------------------------

@contextlib.contextmanager
def small_disk(where: Path, how: str):
    """A real, small file system at `where` ("tmpfs"), or where this machine does not let us
    mount one, a real limit on the size of the engine's files ("limit": RLIMIT_FSIZE)."""
    where.mkdir()
    if how == "tmpfs" and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)],
                                         capture_output=True).returncode == 0:
        try:
            yield "tmpfs"
        finally:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)
        return
    yield "limit"


def fill(disk: Path) -> Path:
    """Write a file until the disk has no space left; its path."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"x" * size)
    return filler


def file_size_limit(limit: int):
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal that kills
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


@pytest.mark.parametrize("how", ["tmpfs", "limit"])
def test_a_full_disk_fails_the_run_in_one_line_and_it_resumes_once_space_is_freed(tmp_path, how):
    disk = tmp_path / "disk"
    with small_disk(disk, how) as kind:
        config = ["--set", "train.epochs=600", *NO_EARLY_STOP, *QUICK, "--set", "checkpoint.every_seconds=1"]
        if kind == "limit":
            config += ["--set", "model.hidden=[16]"]  # checkpoints well under the limit; events.jsonl passes it
        engine = subprocess.Popen([*TRAINTOP, "run", "--headless", *config, "--runs-dir", str(disk)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  preexec_fn=file_size_limit(300_000) if kind == "limit" else None)
        try:
            folder = RunFolder(wait_for(lambda: next(disk.glob("*/checkpoints/last.pt"), None),
                                        what="the first periodic last.pt").parents[1])
            filler = fill(disk) if kind == "tmpfs" else None
            out, err = engine.communicate(timeout=120)
        finally:
            engine.kill()
        assert engine.returncode == 1 and "Traceback" not in err, err
        errors = [line for line in err.splitlines() if line.startswith("traintop: error:")]
        what = "no space left" if kind == "tmpfs" else "a file reached the size limit (ulimit -f)"
        assert len(errors) == 1 and f"{what} on the disk holding {folder.path} (" in errors[0], err
        if kind == "tmpfs":
            assert f"tmpfs mounted at {disk})" in errors[0]
        assert f"then `traintop resume {folder.run_id}` continues from step {load_checkpoint(folder.last)['step']}" in errors[0]
        assert "finished: failed" in out
        assert not list(folder.path.rglob("*.tmp")) and not folder.socket.exists()
        events, torn = read_events(folder.events)
        assert not torn
        if events[-1].event == "run_finished":
            assert events[-1].status == "failed" and what in events[-1].error
        else:
            assert "could not write the run_finished event in events.jsonl" in errors[0]
        if kind == "tmpfs":  # the space the run keeps in reserve let it record its end
            assert events[-1].event == "run_finished" and finished(folder)["status"] == "failed"
        kept = load_checkpoint(folder.last)
        assert all(torch.isfinite(v).all() for v in kept["model"].values())

        if filler is not None:
            filler.unlink()  # space is freed
        proc = traintop("resume", folder.run_id, "--headless", runs_dir=disk)
        assert proc.returncode == 0, proc.stderr
        events = read_events(folder.events)[0]
        assert finished(folder)["status"] == "completed"
        assert steps_of(events) == list(range(1, 600 * events[0].steps_per_epoch + 1))
        assert of_kind(events, "resumed")[-1].step == kept["step"]


# -- finished runs, extended -----------------------------------------------------------------------

def test_a_completed_run_extended_by_resume_is_tested_again_and_keeps_its_first_test_as_its_score(tmp_path):
    runs = tmp_path / "runs"
    traintop("run", "--headless", "--set", "train.epochs=3", *NO_EARLY_STOP, *QUICK, runs_dir=runs, check=True)
    folder = resolve_run("latest", runs)
    first = finished(folder)["test"]
    files = {f: f.read_bytes() for f in (folder.events, folder.meta, folder.config)}
    more = traintop("resume", "latest", "--detach", runs_dir=runs)
    assert more.returncode == 2 and "--set train.epochs=N (N > 3)" in more.stderr
    assert not folder.log.exists()  # refused before an engine was started
    fixed = traintop("resume", "latest", "--set", "train.epochs=5", "--set", "model.hidden=[32]",
                     "--set", "run.seed=4", runs_dir=runs)
    assert fixed.returncode == 2 and "--set model.hidden, run.seed: cannot change" in fixed.stderr.replace(
        "run.seed, model.hidden", "model.hidden, run.seed")
    assert all(f.read_bytes() == data for f, data in files.items())

    proc = traintop("resume", "latest", "--set", "train.epochs=5", "--headless", runs_dir=runs)
    assert proc.returncode == 0, proc.stderr
    assert "training to epoch 5" in proc.stdout
    assert "(the first test, step 60: the run's score)" in proc.stdout
    assert "retest" in proc.stdout and "(after the extension, step 100)" in proc.stdout
    events = read_events(folder.events)[0]
    tests = of_kind(events, "test_result")
    assert [(t.step, t.extension) for t in tests] == [(60, False), (100, True)]
    assert tests[0].metrics == first
    assert steps_of(events) == list(range(1, 101))
    report = finished(folder)
    assert report["test"] == first and report["extension_test"]["step"] == 100
    assert report["extension_test"]["metrics"] == tests[1].metrics
    row = next(line for line in traintop("ls", runs_dir=runs).stdout.splitlines() if folder.run_id in line)
    assert f"accuracy {first['accuracy']:.4g}" in row
    assert "epochs = 5" in folder.config.read_text()
    assert folder.read_json("meta.json")["resumes"][-1]["set"] == {"train.epochs": 5}


def test_an_early_stopped_run_resumed_gets_its_whole_patience_again(tmp_path):
    runs = tmp_path / "runs"
    # Nothing improves on the first validation by 10: patience 2 stops the run at epoch 3.
    config = ["--set", "early_stopping.patience=2", "--set", "early_stopping.min_delta=10"]
    traintop("run", "--headless", *config, runs_dir=runs, check=True)
    folder = resolve_run("latest", runs)
    assert finished(folder)["status"] == "early_stopped" and finished(folder)["epochs"] == 3
    proc = traintop("resume", "latest", "--headless", runs_dir=runs)
    assert proc.returncode == 0, proc.stderr
    assert "early stopping counts again from here (patience 2)" in proc.stdout
    events = read_events(folder.events)[0]
    assert [e.epoch for e in of_kind(events, "early_stopped")] == [3, 5]
    assert [t.extension for t in of_kind(events, "test_result")] == [False, True]
    assert finished(folder)["status"] == "early_stopped"


def test_a_run_failed_by_an_error_in_training_keeps_its_best_and_last_weights_and_resumes(tmp_path):
    """An error in the model's own code at step 2 epochs + 5: best.pt holds the best the log names
    (its write was still deferred), last.pt the weights the last whole step left, and resume goes on."""
    runs = tmp_path / "runs"
    run = Run.prepare(load_config(None, ["train.epochs=5", *NO_EARLY_STOP[1:], *QUICK[1::2]]), runs)
    model, spe = run.trainer.model, run.trainer.steps_per_epoch
    forward, calls = model.forward, [0]

    def failing(x):
        if model.training:
            calls[0] += 1
            if calls[0] == 2 * spe + 5:
                raise RuntimeError("late boom")
        return forward(x)

    model.forward = failing
    assert run.train() == "failed"
    folder = run.folder
    finished_event = read_events(folder.events)[0][-1]
    assert finished_event.status == "failed" and "late boom" in finished_event.error
    best = folder.read_json("report.json")["best"]
    assert load_checkpoint(folder.best)["step"] == best["step"] == 2 * spe
    assert load_checkpoint(folder.last)["step"] == 2 * spe + 4
    proc = traintop("resume", folder.run_id, "--headless", runs_dir=runs)
    assert proc.returncode == 0, proc.stderr
    assert steps_of(read_events(folder.events)[0])[-1] == 5 * spe


@pytest.mark.parametrize("damage, why", [
    (lambda log: log.unlink(), "has no events.jsonl"),
    (lambda log: log.write_bytes(b""), "does not begin with its run_started event"),
    (lambda log: log.write_bytes(b"\n".join(log.read_bytes().splitlines()[5:]) + b"\n"),
     "does not begin with its run_started event"),
    (lambda log: log.write_bytes(log.read_bytes()[:log.read_bytes().index(b"\n") + 300]), "shorter than the"),
])
def test_a_run_whose_log_was_lost_is_not_resumed_onto_nothing(tmp_path, damage, why):
    runs = tmp_path / "runs"
    traintop("run", "--headless", "--set", "train.epochs=3", *NO_EARLY_STOP, *QUICK, runs_dir=runs, check=True)
    folder = resolve_run("latest", runs)
    damage(folder.events)
    kept = {f: f.read_bytes() for f in (folder.last, folder.meta) if f.exists()}
    proc = traintop("resume", folder.run_id, "--set", "train.epochs=5", "--headless", runs_dir=runs)
    assert proc.returncode == 2 and why in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "its history is lost" in proc.stderr
    assert all(f.read_bytes() == data for f, data in kept.items())  # nothing written


def test_a_run_that_fails_in_its_final_test_keeps_its_final_last_pt(tmp_path, monkeypatch):
    """The test runs on the restored best weights after last.pt is written: its failure must not
    put those best weights into last.pt under the final step."""
    from traintop.engine import loop

    run = Run.prepare(load_config(None, ["train.epochs=3", *NO_EARLY_STOP[1:], *QUICK[1::2]]), tmp_path / "runs")
    evaluate = loop.evaluate

    def failing_test(model, objective, feed, *args, **kwargs):
        if feed is run.trainer.feeds["test"]:
            raise RuntimeError("out of memory at the test's batch size")
        return evaluate(model, objective, feed, *args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", failing_test)
    final = {}
    finish = run.trainer.finish

    def finish_noting_the_final_weights(status):
        final.update({k: v.clone() for k, v in run.trainer.model.state_dict().items()})
        run.trainer.best_state = {k: v + 1 for k, v in final.items()}  # a best unlike the final weights
        finish(status)

    run.trainer.finish = finish_noting_the_final_weights
    assert run.train() == "failed"
    saved = load_checkpoint(run.folder.last)
    assert saved["step"] == 3 * run.trainer.steps_per_epoch
    assert all(torch.equal(saved["model"][k], v.cpu()) for k, v in final.items())
