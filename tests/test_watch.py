"""A training loop of the user's own, with traintop.watch: driven over the real socket, in real processes."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from traintop.engine import commands as cmd
from traintop.engine import events as ev
from traintop.engine.client import LiveRun
from traintop.engine.runstore import read_events, resolve_run

from watched import (EXAMPLES, PROBE, TRAINTOP, env_for, finished_dashboard, live_folder, start, steps_in, traintop,
                     wait_for)

@pytest.fixture
def watched(tmp_path):
    """Start an example under watch; whatever is left running is killed after the test."""
    procs = []

    def run(script: str, *args: str) -> tuple[subprocess.Popen, object]:
        proc = start(EXAMPLES / script, *args, runs=tmp_path / "runs", cwd=tmp_path)
        procs.append(proc)
        return proc, live_folder(tmp_path / "runs", proc)

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_pause_holds_a_watched_loop_until_resume_and_stop_ends_it_cleanly(watched, tmp_path):
    proc, folder = watched("watch_digits.py", "--epochs", "100000")
    source = await LiveRun.connect(folder)
    await wait_for(source, lambda e: isinstance(e, ev.Steps) and e.step[-1] >= 30)
    reply = await source.send(cmd.Pause())
    assert reply.ok, reply.message
    paused_at = int(reply.message.split()[-1])
    await asyncio.sleep(1.0)
    assert max(steps_in(read_events(folder.events)[0])) == paused_at  # not one step while paused
    assert (await source.send(cmd.Resume())).ok
    await wait_for(source, lambda e: isinstance(e, ev.Steps) and e.step[-1] > paused_at + 20)
    assert (await source.send(cmd.Checkpoint())).ok
    assert (await source.send(cmd.Stop())).ok
    rest = await wait_for(source, lambda e: isinstance(e, ev.RunFinished))
    await source.close()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert rest[-1].status == "stopped"
    assert (tmp_path / "digits_mlp.pt").exists()  # the script went on to its end and saved its model
    events = read_events(folder.events)[0]
    assert steps_in(events) == list(range(1, max(steps_in(events)) + 1))
    assert any(isinstance(e, ev.Validation) and "accuracy" in e.metrics for e in events)
    state = torch.load(folder.last, weights_only=True)  # `c` saved the model and the optimizer
    assert set(state["model"]) == {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}
    assert "state" in state["optimizer"]
    started = events[0]
    assert started.source == "watch" and started.config["epochs"] == 100000
    assert [layer["describe"] for layer in started.layers] == ["Linear 64→128", "Linear 128→128", "Linear 128→10"]


@pytest.mark.parametrize("schedule", ["step", "cosine", "onecycle"])
def test_lr_x2_doubles_the_rate_the_optimizer_uses_and_the_schedule_goes_on(tmp_path, schedule):
    runs = tmp_path / "runs"
    reference = tmp_path / "reference.json"
    subprocess.run([sys.executable, str(PROBE), str(reference), schedule, "120"], env=env_for(runs),
                   check=True, timeout=120, capture_output=True)
    out = tmp_path / "out.json"
    proc = subprocess.Popen([sys.executable, str(PROBE), str(out), schedule, "120", "--sleep", "0.02"],
                            env=env_for(runs), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        folder = live_folder(runs, proc)
        while max(steps_in(read_events(folder.events)[0]) or [0]) < 30:
            time.sleep(0.05)
        ctl = traintop("ctl", folder.run_id, "lr", "x2", runs=runs)
        assert ctl.returncode == 0, ctl.stderr
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    finally:
        proc.kill()
    used, believed = json.loads(out.read_text())["used"], json.loads(out.read_text())["believed"]
    assert believed == json.loads(reference.read_text())["believed"]  # the schedule never saw the change
    changed = next(e for e in read_events(folder.events)[0] if isinstance(e, ev.LrChanged))
    first = changed.step - 1  # the step whose update first used the new rate
    assert 30 <= first < 120
    assert used[:first] == pytest.approx(believed[:first], rel=1e-12)
    assert used[first:] == pytest.approx([2 * b for b in believed[first:]], rel=1e-12)
    recorded = [lr for e in read_events(folder.events)[0] if isinstance(e, ev.Steps) for lr in e.lr]
    assert recorded == pytest.approx(used, rel=1e-6)  # the curve shows the rate actually used


def test_a_killed_watched_script_reads_as_killed(watched, tmp_path):
    proc, folder = watched("watch_digits.py", "--epochs", "100000")
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    listing = traintop("ls", runs=tmp_path / "runs")
    assert listing.returncode == 0, listing.stderr
    assert "killed" in listing.stdout.splitlines()[1]


def test_the_watched_example_adds_three_lines_to_the_plain_script():
    import difflib

    def code(path):
        lines = path.read_text().splitlines()
        body = lines[lines.index('"""', 1) + 1:]  # past the docstring
        return [line for line in body if line.strip()]

    diff = list(difflib.ndiff(code(EXAMPLES / "train_digits.py"), code(EXAMPLES / "watch_digits.py")))
    added = [d for d in diff if d.startswith("+ ")]
    removed = [d for d in diff if d.startswith("- ")]
    assert len(added) - len(removed) <= 3, added


def test_watch_in_process_records_every_step_and_reports_a_failure(tmp_path):
    import traintop

    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ZeroDivisionError):
        with traintop.watch(model, optimizer, name="fails", runs_dir=tmp_path / "runs") as run:
            for _ in range(5):
                loss = model(torch.randn(8, 3)).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                run.step(loss, extra=loss * 2)
                optimizer.step()
            1 / 0
    events = read_events(run.session.folder.events)[0]
    assert steps_in(events) == [1, 2, 3, 4, 5]
    steps = [e for e in events if isinstance(e, ev.Steps)]
    assert [x for e in steps for x in e.scalars["extra"]] == pytest.approx(
        [2 * x for e in steps for x in e.loss], rel=1e-5)
    assert events[-1].status == "failed" and "ZeroDivisionError" in events[-1].error
    assert not run.session.folder.socket.exists()


@pytest.mark.parametrize("code, status", [(None, "completed"), (0, "completed"), (3, "failed"),
                                          ("bad data", "failed")])
def test_leaving_a_watched_block_with_sys_exit_ends_the_run_as_the_exit_status_says(tmp_path, code, status):
    import traintop

    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(SystemExit):
        with traintop.watch(model, optimizer, name="exits", runs_dir=tmp_path / "runs") as run:
            for _ in range(3):
                loss = model(torch.randn(8, 3)).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                run.step(loss)
                optimizer.step()
            sys.exit(code)
    finished = read_events(run.session.folder.events)[0][-1]
    assert finished.event == "run_finished" and finished.status == status and finished.step == 3
    if status == "failed":
        assert f"SystemExit: {code}" in finished.error


BAD_CALLS = [
    (lambda run: run.step("abc"), "the step's loss is 'abc', not a number"),
    (lambda run: run.step(None), "the step's loss is None, not a number"),
    (lambda run: run.step(torch.ones(3)), "the step's loss holds 3 values; give one number"),
    (lambda run: run.step(1.0, acc="x"), "step scalar 'acc' is 'x', not a number"),
    (lambda run: run.step(1.0, acc=[1, 2]), "step scalar 'acc' is [1, 2], not a number"),
    (lambda run: run.step(1.0, grad_norm="x"), "the step's grad_norm is 'x', not a number"),
    (lambda run: run.step(1.0, grad_norm=-1.0), "the step's grad_norm is -1.0; a norm is never negative"),
    (lambda run: run.step(1.0, grad_norm=torch.tensor(-2.0)), "the step's grad_norm is -2.0; a norm is never"),
    (lambda run: run.step(torch.empty((), device="meta")), "the step's loss is on the meta device"),
    (lambda run: run.step(1.0, acc=torch.empty((), device="meta")), "step scalar 'acc' is on the meta device"),
    (lambda run: run.validate(val_loss="abc"), "validate: val_loss is 'abc', not a number"),
    (lambda run: run.validate(val_loss=torch.ones(2)), "validate: val_loss holds 2 values"),
    (lambda run: list(run.epochs("x")), "run.epochs: n is 'x'; give a whole number"),
    (lambda run: run.on_checkpoint(3), "run.on_checkpoint takes a function; got 3"),
    (lambda run: run.on_predict("f"), "run.on_predict takes a function"),
    (lambda run: run.samples(5), "run.samples takes a dataset"),
    (lambda run: run.lr_find(3), "run.lr_find takes a function that trains one step and returns its loss; got 3"),
]


def test_a_bad_value_handed_to_a_watched_run_is_refused_where_it_is_handed_over_and_the_run_goes_on(tmp_path):
    """A bad number raises there, naming it, and never reaches the buffer: the steps around it
    are recorded and the run finishes cleanly (before, a bad scalar broke the flush, and finish)."""
    import traintop

    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = traintop.watch(model, optimizer, name="bad-values", runs_dir=tmp_path / "runs")
    for call, message in BAD_CALLS:
        loss = model(torch.randn(8, 3)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        run.step(loss)
        optimizer.step()
        with pytest.raises(traintop.UserError) as refused:
            call(run)
        assert message in str(refused.value)
    run.validate(val_loss=0.5, accuracy=torch.tensor(0.75))
    run.finish()
    events = read_events(run.session.folder.events)[0]
    assert steps_in(events) == list(range(1, len(BAD_CALLS) + 1))
    assert [e.metrics for e in events if isinstance(e, ev.Validation)] == [{"accuracy": 0.75}]
    assert events[-1].status == "completed"
    steps = [e for e in events if isinstance(e, ev.Steps)]
    assert all(len(e.lr) == len(e.step) == len(e.loss) == len(e.grad_norm) for e in steps)


@pytest.mark.parametrize("arguments, message", [
    (dict(model="model"), "watch: model is 'model'; give a torch.nn.Module"),
    (dict(optimizer="adam"), "watch: optimizer is 'adam'; give a torch.optim.Optimizer"),
    (dict(config=[1, 2]), "watch: config is [1, 2]; give a dict"),
    (dict(early_stopping=dict(patience=-1)), "watch(early_stopping=...): early_stopping.patience is -1; allowed"),
    (dict(early_stopping=dict(mode="up")), "watch(early_stopping=...): early_stopping.mode is 'up'"),
    (dict(early_stopping=dict(wait=3)), "unknown key 'wait'"),
    (dict(early_stopping="val_loss"), "watch(early_stopping=...): 'val_loss' is not a dict"),
    (dict(runs_dir="FILE"), "watch: runs_dir {file} is a file, not a folder"),
    (dict(runs_dir=5), "watch: runs_dir is 5; give a path"),
    (dict(runs_dir=""), "watch: runs_dir is ''; give a path, or leave it out for the default"),
    (dict(checkpoint_every_seconds="10"), "watch: checkpoint_every_seconds is '10'; give a number of seconds"),
    (dict(checkpoint_every_seconds=-1), "watch: checkpoint_every_seconds is -1; give a number of seconds, 0 or more"),
    (dict(checkpoint_every_seconds=float("nan")), "watch: checkpoint_every_seconds is nan"),
    (dict(epochs="5"), "watch: epochs is '5'; give a whole number above 0"),
    (dict(epochs=2.5), "watch: epochs is 2.5; give a whole number above 0"),
    (dict(epochs=-3), "watch: epochs is -3; give a whole number above 0"),
    (dict(scaler="s"), "watch: scaler is 's'; give the loop's torch.amp.GradScaler"),
    (dict(sync_every=0), "watch: sync_every is 0; give a whole number of steps above 0"),
    (dict(name=["a"]), "watch: name is ['a']; give a string"),
    (dict(model="META"), "watch: the model's parameters are on the meta device"),
])
def test_watch_refuses_what_it_cannot_use_naming_it(tmp_path, arguments, message):
    import traintop
    from traintop.engine.errors import UserError

    model = torch.nn.Linear(3, 1)
    given = dict(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), runs_dir=tmp_path / "runs")
    if arguments.get("runs_dir") == "FILE":
        (tmp_path / "a-file").write_text("")
        arguments = dict(runs_dir=tmp_path / "a-file")
    if arguments.get("model") == "META":  # made on the meta device, to be materialised later
        with torch.device("meta"):
            model = torch.nn.Linear(3, 1)
        arguments = dict(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    given.update(arguments)
    with pytest.raises(UserError) as refused:
        traintop.watch(given.pop("model"), given.pop("optimizer"), **{"name": "refused", **given})
    assert message.format(file=tmp_path / "a-file") in str(refused.value)
    assert not (tmp_path / "runs").exists()  # refused before anything is made


def test_watch_takes_numpy_numbers_and_none_for_its_options(tmp_path):
    import numpy as np

    import traintop

    model = torch.nn.Linear(3, 1)
    with traintop.watch(model, name="numpy", runs_dir=tmp_path / "runs", epochs=np.int64(5),
                        checkpoint_every_seconds=np.float32(60), sync_every=np.int64(1)) as run:
        run.step(1.0)
    with traintop.watch(model, name="off", runs_dir=tmp_path / "runs", checkpoint_every_seconds=None) as off:
        off.step(1.0)
    assert read_events(run.session.folder.events)[0][0].epochs == 5 and run.save_every == 60 and off.save_every == 0


@pytest.mark.parametrize("module", ["traintop.lightning", "traintop.transformers"])
@pytest.mark.parametrize("arguments, message", [
    (dict(early_stopping=dict(patience="x")), "TraintopCallback(early_stopping=...): early_stopping.patience"),
    (dict(predict=3), "TraintopCallback(predict=...) takes a function; got 3"),
    (dict(samples=7), "TraintopCallback(samples=...) takes a dataset"),
    (dict(config="lr=1"), "TraintopCallback: config is 'lr=1'; give a dict"),
    (dict(runs_dir="FILE"), "TraintopCallback: runs_dir {file} is a file, not a folder"),
    (dict(runs_dir=" "), "TraintopCallback: runs_dir is ' '; give a path, or leave it out for the default"),
])
def test_a_callback_refuses_a_bad_argument_when_it_is_made(tmp_path, module, arguments, message):
    """Not later, inside the trainer, when training starts."""
    import importlib

    from traintop.engine.errors import UserError

    if arguments.get("runs_dir") == "FILE":
        (tmp_path / "a-file").write_text("")
        arguments = dict(runs_dir=tmp_path / "a-file")
    callback = importlib.import_module(module).TraintopCallback
    with pytest.raises(UserError) as refused:
        callback(**arguments)
    assert message.format(file=tmp_path / "a-file") in str(refused.value)


@pytest.mark.parametrize("monitor, mode", [("val_loss", "min"), ("val_accuracy", "max"), ("val_f1", "max"),
                                           ("val_auc", "max"), ("val_mae", "min"), ("val_acc", "max"),
                                           ("val_top1_acc", "max"), ("val_f1_macro", "max"), ("val_auroc", "max"),
                                           ("val_map", "max"), ("val_iou", "max"), ("val_bleu", "max"),
                                           ("val_precision", "max"), ("val_recall", "max"), ("val_rmse", "min"),
                                           ("val_error_rate", "min"), ("val_perplexity", "min"),
                                           ("val_wer", "min"), ("val_nll_loss", "min"), ("val_acc1", "max"),
                                           ("val_map50", "max"), ("val_exact_match", "max"),
                                           ("val_matthews_correlation", "max"), ("val_acc_gap", "min"),
                                           ("val_em_distance", "min"), ("val_brier_score", "min")])
def test_watch_early_stopping_on_auto_follows_what_its_monitor_means(tmp_path, monitor, mode):
    import traintop

    model = torch.nn.Linear(3, 1)
    with traintop.watch(model, name="es", runs_dir=tmp_path / "runs", early_stopping=dict(monitor=monitor)) as run:
        assert run.policies.early.mode == mode and run.policies.early.enabled


@pytest.mark.parametrize("config", [None, {"early_stopping": True}, {"early_stopping": {"monitor": "val_f1"}},
                                    {"early_stopping": 3}])
def test_the_report_names_the_best_by_the_runs_own_monitor_whatever_the_loops_config_holds(tmp_path, config):
    """`watch(early_stopping=dict(monitor="val_acc"))`: the best is the highest accuracy, in
    report.json and `ls`, and its weights are the ones kept. The loop's own config is only recorded:
    an `early_stopping` key in it (a flag from argparse, say) is not read as traintop's."""
    import traintop

    model = torch.nn.Linear(3, 1)
    runs = tmp_path / "runs"
    with traintop.watch(model, name="acc", runs_dir=runs, config=config,
                        early_stopping=dict(monitor="val_acc", patience=2)) as run:
        for acc in (0.5, 0.6, 0.7, 0.95, 0.9, 0.8, 0.7):
            run.step(1.0)
            run.validate(val_loss=1 - acc / 2, acc=acc)
            if run.should_stop:
                break
    report = json.loads((run.session.folder.path / "report.json").read_text())
    assert report["status"] == "early_stopped" and report["steps"] == 6, report
    assert report["best"] == {"monitor": "val_acc", "value": 0.95, "epoch": 1, "step": 4}, report  # no run.iter: epoch 1
    listed = subprocess.run([*TRAINTOP, "ls", "--runs-dir", str(runs)], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "val_acc 0.95" in listed.stdout and "unreadable" not in listed.stdout


def test_a_step_or_validation_after_the_run_finished_is_said_once_and_changes_nothing(tmp_path):
    """A loop that finishes its run too early (finish() inside the epoch loop, a `with` block that
    ends before training does) goes on; what it hands over after is not recorded, and one Python
    warning each says so at the loop's own line."""
    import traintop

    model = torch.nn.Linear(3, 1)
    with traintop.watch(model, name="early-end", runs_dir=tmp_path / "runs") as run:
        run.step(1.0)
        run.validate(val_loss=0.5)
    before = run.session.folder.events.read_bytes()
    with pytest.warns(RuntimeWarning, match=r"run.step after run \S+ finished .* is not recorded") as said:
        for _ in range(3):
            run.step(0.5)
    assert len(said) == 1 and said[0].filename == __file__
    with pytest.warns(RuntimeWarning, match="run.validate after run"):
        assert run.validate(val_loss=0.1) is False and run.validate(val_loss=0.05) is False
    assert run.session.folder.events.read_bytes() == before


@pytest.mark.parametrize("mode, warned", [("auto", True), ("max", False)])
def test_a_monitor_whose_name_does_not_say_which_way_is_better_is_named_when_auto_guesses(tmp_path, mode, warned):
    import traintop

    model = torch.nn.Linear(3, 1)
    with traintop.watch(model, name="es", runs_dir=tmp_path / "runs",
                        early_stopping=dict(monitor="val_quality", mode=mode)) as run:
        run.step(1.0)
    said = [e for e in read_events(run.session.folder.events)[0] if isinstance(e, ev.RunWarning)]
    assert run.policies.early.mode == ("min" if mode == "auto" else "max")
    assert [w.kind for w in said] == (["config"] if warned else [])
    if warned:
        assert 'val_quality" does not say which way is better' in said[0].message


def test_early_stopping_on_a_metric_the_loop_never_reports_says_so_once(tmp_path):
    import traintop

    model = torch.nn.Linear(3, 1)
    with traintop.watch(model, name="es", runs_dir=tmp_path / "runs",
                        early_stopping=dict(monitor="val_f1", patience=1)) as run:
        for _ in range(4):
            run.step(1.0)
            run.validate(val_loss=0.5, accuracy=0.9)
    warnings = [e for e in read_events(run.session.folder.events)[0] if isinstance(e, ev.RunWarning)]
    assert {w.id for w in warnings} == {"early_stopping:monitor"} and warnings[-1].count == 4
    assert "watches val_f1, which this validation did not report (it reported val_loss, val_accuracy)" in \
        warnings[0].message


@pytest.mark.parametrize("leave", ["to the end", "with break"])
def test_run_epochs_without_run_iter_ends_each_epoch_with_its_own_train_loss(tmp_path, leave):
    """The README's epoch loop with the optional run.iter left out: each epoch still ends (epoch_end,
    ls's EPOCHS), and a validation inside it carries that epoch's training loss, not the last one's."""
    import traintop

    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with traintop.watch(model, optimizer, name="epochs", runs_dir=tmp_path / "runs") as run:
        for epoch in run.epochs(3):
            for _ in range(5):
                run.step(float(10 * (epoch + 1)))  # each epoch's losses are its own number
            run.validate(val_loss=1.0)
            if leave == "with break" and epoch == 1:
                break
    events = read_events(run.session.folder.events)[0]
    trained = 3 if leave == "to the end" else 2
    ends = [e for e in events if isinstance(e, ev.EpochEnd)]
    assert [(e.epoch, e.step, e.train_loss) for e in ends] == [(k, 5 * k, 10.0 * k) for k in range(1, trained + 1)]
    assert [e.epoch for e in events if isinstance(e, ev.Validation)] == list(range(1, trained + 1))
    assert run.session.folder.read_json("report.json")["epochs"] == trained
    assert all(e.seconds < 5 for e in ends)
    assert [t for _, t in run.policies.history] == [10.0 * k for k in range(1, trained + 1)]


@pytest.mark.parametrize("epochs", ["range", "run.epochs"])
def test_run_iter_under_range_labels_each_validation_with_the_epoch_just_trained(tmp_path, epochs):
    import traintop

    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [torch.randn(8, 3) for _ in range(4)]
    with traintop.watch(model, optimizer, name="epochs", runs_dir=tmp_path / "runs") as run:
        for epoch in (range(3) if epochs == "range" else run.epochs(3)):
            for xb in run.iter(batches):
                loss = model(xb).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                run.step(loss)
                optimizer.step()
            run.validate(val_loss=1.0 / (epoch + 1))
    events = read_events(run.session.folder.events)[0]
    assert [e.epoch for e in events if isinstance(e, ev.EpochEnd)] == [1, 2, 3]
    assert [e.epoch for e in events if isinstance(e, ev.Validation)] == [1, 2, 3]
    assert events[-1].epoch == 3 and events[-1].step == 12


@pytest.mark.parametrize("epochs", ["range", "run.epochs"])
@pytest.mark.parametrize("given", [False, True])
def test_a_run_iter_pass_that_trains_no_step_is_no_epoch(tmp_path, epochs, given):
    """Validation through run.iter too: only the passes that train are epochs, each ended once."""
    import traintop

    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [torch.randn(8, 3) for _ in range(4)]
    with traintop.watch(model, optimizer, name="epochs", runs_dir=tmp_path / "runs") as run:
        for epoch in (range(3) if epochs == "range" else run.epochs(3)):
            label = {"epoch": epoch} if given else {}
            for xb in run.iter(batches, **label):
                loss = model(xb).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                run.step(loss)
                optimizer.step()
            with torch.no_grad():
                val_loss = sum(model(xb).pow(2).mean().item() for xb in run.iter(batches[:2], **label))
            run.validate(val_loss=val_loss)
            for _ in run.iter([]):
                pass
    events = read_events(run.session.folder.events)[0]
    ends = [e for e in events if isinstance(e, ev.EpochEnd)]
    assert [(e.epoch, e.step) for e in ends] == [(1, 4), (2, 8), (3, 12)]
    assert all(e.train_loss > 0 for e in ends)
    assert [e.epoch for e in events if isinstance(e, ev.Validation)] == [1, 2, 3]
    assert events[0].steps_per_epoch == 4 and events[-1].epoch == 3


def test_a_validation_pass_after_a_stop_leaves_the_epoch_the_run_ended_in(tmp_path):
    import traintop

    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [torch.randn(8, 3) for _ in range(3)]
    with traintop.watch(model, optimizer, name="stopped", runs_dir=tmp_path / "runs") as run:
        for epoch in range(5):
            for i, xb in enumerate(run.iter(batches)):
                if epoch == 1 and i == 1:
                    run.session.inbox.submit(cmd.Stop())  # as ctl stop does, applied at this step
                loss = model(xb).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                run.step(loss)
                optimizer.step()
            with torch.no_grad():
                val_loss = sum(model(xb).pow(2).mean().item() for xb in run.iter(batches))
            run.validate(val_loss=val_loss)
    events = read_events(run.session.folder.events)[0]
    assert [(e.epoch, e.step) for e in events if isinstance(e, ev.EpochEnd)] == [(1, 3), (2, 5)]
    assert [e.epoch for e in events if isinstance(e, ev.Validation)] == [1, 2]
    assert events[-1].status == "stopped" and events[-1].epoch == 2


@pytest.mark.parametrize("first", [0, 1])
def test_epochs_counted_from_1_past_the_plan_are_named_once(tmp_path, first):
    """`for epoch in range(1, epochs + 1): run.iter(loader, epoch=epoch)` labels every epoch one
    later than it is: the first epoch past the plan says so, once; a loop counting from 0 is silent."""
    import traintop

    model = torch.nn.Linear(3, 1)
    with traintop.watch(model, name="epochs", runs_dir=tmp_path / "runs", epochs=3) as run:
        for epoch in range(first, first + 3):
            for xb in run.iter([torch.randn(4, 3)] * 2, epoch=epoch):
                run.step(model(xb).pow(2).mean())
    warned = [e for e in read_events(run.session.folder.events)[0] if isinstance(e, ev.RunWarning)]
    if first == 0:
        assert not warned, [w.message for w in warned]
    else:
        (w,) = warned
        assert w.kind == "config" and "epoch=3 with 3 epochs planned" in w.message and "range(epochs)" in w.advice


def test_a_watched_loop_with_samples_and_on_predict_answers_the_inference_view(tmp_path):
    """run_started says how many samples there are to browse (the view opens on them); a predict for
    one of them is answered by the loop's function, with the sample's truth beside it."""
    import traintop
    from torch.utils.data import TensorDataset

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    held_out = TensorDataset(torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1]))
    run = traintop.watch(model, optimizer, name="predicts", runs_dir=tmp_path / "runs")
    run.samples(held_out)
    run.on_predict(lambda inputs: [int(model(torch.as_tensor(x)).argmax()) for x in inputs])
    answers = []
    for step in range(3):
        loss = model(torch.randn(8, 3)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        if step == 1:
            answers.append(run.session.send_nowait(cmd.Predict(inputs=[{"split": "val", "index": 3}])))
        run.step(loss)  # the command is answered here, at the step boundary
        optimizer.step()
    reply = answers[0].result(timeout=5)
    run.finish()
    assert reply.ok, reply.message
    (out,) = reply.data["outputs"]
    assert out["true"] == 1 and out["label"] in (0, 1)
    started = read_events(run.session.folder.events)[0][0]
    assert started.data == {"n_val": 5}


def test_a_loops_function_that_fails_or_answers_odd_values_never_ends_its_run(tmp_path):
    """c, v and predictions call the loop's own functions: one that raises is refused with its error,
    an answer of numpy arrays or bytes is sent as plain values, a wrong count is named; the
    training goes on and ends completed."""
    import numpy as np

    import traintop

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = traintop.watch(model, optimizer, name="odd", runs_dir=tmp_path / "runs", checkpoint_every_seconds=0)
    run.on_checkpoint(lambda path: 1 / 0)
    run.on_validate(lambda: {}["missing"])
    answers = {"arrays": lambda xs: [np.array([1.0, 2.0]) for _ in xs], "bytes": lambda xs: [b"\xff" for _ in xs],
               "too few": lambda xs: []}
    commands = [cmd.Checkpoint(), cmd.Validate(), *(cmd.Predict(inputs=[{"input": [1, 2, 3]}]) for _ in answers),
                cmd.Checkpoint(), cmd.Validate(), cmd.Validate(), cmd.Validate()]
    odd = {5: lambda: run.on_checkpoint(lambda path: 42), 6: lambda: run.on_validate(lambda: "hello"),
           7: lambda: run.on_validate(lambda: None),
           8: lambda: run.on_validate(lambda: run.validate(val_loss=0.5))}  # returns run.validate's True
    replies = []
    for step, command in enumerate(commands):
        if isinstance(command, cmd.Predict):
            run.on_predict(list(answers.values())[step - 2])
        if step in odd:
            odd[step]()
        replies.append(run.session.send_nowait(command))
        loss = model(torch.randn(8, 3)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        run.step(loss)  # each command is answered here
        optimizer.step()
    replies = [r.result(timeout=5) for r in replies]
    run.finish()
    saved, validated, arrays, text, few, number, hello, nothing, itself = replies
    assert not saved.ok and "run.on_checkpoint failed (ZeroDivisionError" in saved.message
    assert not number.ok and "run.on_checkpoint returned 42, not a path" in number.message
    assert not hello.ok and "run.on_validate returned 'hello' and did not call run.validate" in hello.message
    assert not nothing.ok and "returned nothing and did not call run.validate" in nothing.message
    assert itself.ok, itself.message
    assert not validated.ok and "run.on_validate failed (KeyError" in validated.message
    assert arrays.ok and arrays.data["outputs"] == [{"label": [1.0, 2.0]}]
    assert text.ok and text.data["outputs"] == [{"label": "\ufffd"}]
    assert not few.ok and "returned 0 answer(s) for 1 input(s)" in few.message
    events = read_events(run.session.folder.events)[0]
    assert events[-1].status == "completed" and steps_in(events) == list(range(1, 10))
    assert [e.val_loss for e in events if isinstance(e, ev.Validation)] == [0.5]  # the one that validated
    assert not [e for e in events if isinstance(e, ev.CheckpointSaved)]


def test_a_checkpoint_function_is_believed_only_about_files_that_exist(tmp_path):
    """`c` through run.on_checkpoint: the path it writes or returns is named; a returned path with
    no file there is refused by name; one that saved in a store of its own (no file) is not named as a file."""
    import traintop

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = traintop.watch(model, optimizer, name="ckfn", runs_dir=tmp_path / "runs", checkpoint_every_seconds=0)
    elsewhere = tmp_path / "mine.pt"
    functions = [lambda path: torch.save(model.state_dict(), path),  # the path it is given
                 lambda path: torch.save(model.state_dict(), elsewhere) or str(elsewhere),  # its own, returned
                 lambda path: tmp_path / "never-written.pt",  # a path with nothing there
                 lambda path: None]  # somewhere of its own, say a store: no file to name
    replies = []
    for fn in functions:
        run.on_checkpoint(fn)
        reply = run.session.send_nowait(cmd.Checkpoint())
        loss = model(torch.randn(8, 3)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        run.step(loss)
        optimizer.step()
        replies.append(reply.result(timeout=5))  # last.pt of the first stays: the last writes nothing there
    run.finish()
    given, returned, missing, own = replies
    assert given.ok and given.message == f"saved {run.session.folder.last}"
    assert returned.ok and returned.message == f"saved {elsewhere}"
    assert not missing.ok and "never-written.pt" in missing.message and "where there is no file" in missing.message
    assert own.ok and "wrote no file" in own.message
    saved = [e for e in read_events(run.session.folder.events)[0] if isinstance(e, ev.CheckpointSaved)]
    assert [e.path for e in saved] == [str(run.session.folder.last), str(elsewhere), ""]


def test_what_a_loop_hands_over_under_a_name_traintop_records_or_as_a_complex_number_is_refused(tmp_path):
    import traintop

    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with traintop.watch(model, optimizer, name="names", runs_dir=tmp_path / "runs") as run:
        loss = model(torch.randn(8, 3)).pow(2).mean()
        loss.backward()
        for scalars, why in [({"timing": 1.5}, r"'timing' name\(s\) traintop records itself"),
                             ({"lr": 0.1}, r"'lr' name\(s\) traintop records itself"),
                             ({"c": torch.tensor(1 + 1j)}, "is a complex number"),
                             ({"big": 10 ** 400}, "too large for a float")]:
            with pytest.raises(traintop.UserError, match=why):
                run.step(loss, **scalars)
        with pytest.raises(traintop.UserError, match="is a complex number"):
            run.step(torch.tensor(1 + 2j))
        run.step(loss, acc=0.5)
        for metrics, why in [({"step": 3}, r"'step' name\(s\) a validation event has already"),
                             ({"loss": 1.0, "val_loss": 2.0}, "loss and val_loss are the same metric")]:
            with pytest.raises(traintop.UserError, match=why):
                run.validate(**metrics)
        with pytest.raises(traintop.UserError, match="run.iter: epoch is -5"):
            next(iter(run.iter([1], epoch=-5)))
    events = read_events(run.session.folder.events)[0]  # the log reads back whole
    assert events[-1].status == "completed" and steps_in(events) == [1]
    exported = subprocess.run([*TRAINTOP, "export", str(run.session.folder.path), "--out", str(tmp_path / "out")],
                              capture_output=True, text=True, timeout=60)
    assert exported.returncode == 0, exported.stderr
    header, row = (tmp_path / "out" / "steps.csv").read_text().splitlines()
    assert header.endswith(",acc") and row.endswith(",0.5")  # the loop's own scalar is a column


def test_leaving_run_iter_with_break_still_ends_the_epoch(tmp_path):
    import traintop

    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with traintop.watch(model, optimizer, name="breaks", runs_dir=tmp_path / "runs") as run:
        for epoch in range(3):
            for i, x in enumerate(run.iter([torch.randn(8, 3)] * 4)):
                loss = model(x).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                run.step(loss)
                optimizer.step()
                if i == 1:
                    break
            run.validate(val_loss=loss.item())
    events = read_events(run.session.folder.events)[0]
    assert [e.epoch for e in events if isinstance(e, ev.EpochEnd)] == [1, 2, 3]
    assert [e.epoch for e in events if isinstance(e, ev.Validation)] == [1, 2, 3]


def test_a_model_with_nothing_of_its_own_to_train_sparse_gradients_and_an_optimizer_without_lr_are_watched(
        tmp_path):
    """A frozen backbone whose trained parameter lives elsewhere, an embedding with sparse gradients
    under SparseAdam, and an optimizer of one's own without an 'lr': each trains, recorded; the
    last refuses a rate change, saying why."""
    import traintop

    class NoLr(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {"alpha": 0.1})

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    p.add_(p.grad, alpha=-group["alpha"])

    frozen = torch.nn.Linear(4, 1).requires_grad_(False)
    offset = torch.nn.Parameter(torch.zeros(1))
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    plain = torch.nn.Linear(4, 1)
    cases = [(frozen, torch.optim.SGD([offset], lr=0.1), lambda: (frozen(torch.randn(8, 4)) + offset).pow(2).mean()),
             (embedding, torch.optim.SparseAdam(embedding.parameters(), lr=0.01),
              lambda: embedding(torch.randint(0, 10, (8,))).pow(2).mean()),
             (plain, NoLr(plain.parameters()), lambda: plain(torch.randn(8, 4)).pow(2).mean())]
    for model, optimizer, loss_of in cases:
        with traintop.watch(model, optimizer, name="odd", runs_dir=tmp_path / "runs") as run:
            reply = None
            for step in range(5):
                loss = loss_of()
                optimizer.zero_grad()
                loss.backward()
                if step == 2:
                    reply = run.session.send_nowait(cmd.SetLr(factor=2.0))
                run.step(loss)
                optimizer.step()
        events = read_events(run.session.folder.events)[0]
        assert events[-1].status == "completed" and steps_in(events) == [1, 2, 3, 4, 5]
        assert reply.result(timeout=5).ok == (not isinstance(optimizer, NoLr))
        norms = [g for e in events if isinstance(e, ev.Steps) for g in e.grad_norm]
        assert len(norms) == 5 and all(g > 0 for g in norms)  # the frozen model's: the optimizer's parameter
    assert "NoLr has no 'lr' in its parameter groups" in reply.result().message


def test_a_rate_change_scales_every_parameter_group_and_none_may_leave_the_allowed_range(tmp_path):
    import traintop

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    optimizer = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.001},
                                 {"params": model[1].parameters(), "lr": 5.0}])
    with traintop.watch(model, optimizer, name="groups", runs_dir=tmp_path / "runs") as run:
        replies = []
        for command in (cmd.SetLr(value=0.01), cmd.SetLr(factor=2.0), cmd.SetLr(factor=2.0)):
            replies.append(run.session.send_nowait(command))
            loss = model(torch.randn(8, 3)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            run.step(loss)
            optimizer.step()
    tenfold, doubled, again = (r.result(timeout=5) for r in replies)
    assert not tenfold.ok and "group 1's rate would be 50" in tenfold.message and "it stays 0.001" in tenfold.message
    assert doubled.ok and "0.001 -> 0.002 (all 2 parameter groups scaled alike, x2)" in doubled.message
    assert not again.ok and "group 1's rate would be 20" in again.message


def test_a_config_that_holds_itself_or_values_of_its_own_kinds_is_recorded_as_text(tmp_path):
    """config= is recorded, never run: a dict inside itself, a tensor, a set or a function are kept
    as their (short) repr in config.toml and in run_started, and the run is a run like any other."""
    import tomllib

    import traintop

    config = {"lr": 0.1, "weights": torch.ones(3), "tags": {"a"}, "act": torch.relu, "layers": [64]}
    config["self"] = config
    config["layers"].append(config["layers"])
    runs = tmp_path / "runs"
    with traintop.watch(torch.nn.Linear(3, 1), name="odd-config", runs_dir=runs, config=config) as run:
        run.step(1.0)
    written = tomllib.loads((run.session.folder.path / "config.toml").read_text())
    assert written["lr"] == 0.1 and written["weights"] == "tensor([1., 1., 1.])" and written["tags"] == "{'a'}"
    assert written["self"] == "{...}" and written["layers"] == [64, "[...]"]
    started = read_events(run.session.folder.events)[0][0]
    assert started.config == written
    listed = subprocess.run([*TRAINTOP, "ls", "--runs-dir", str(runs)], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "completed" in listed.stdout


@pytest.mark.parametrize("name, id_end", [("модель", "-run"), ("my first\nrun", "-my-first-run"),
                                           ("résumé v2", "-r-sum-v2")])
def test_a_name_in_any_script_is_kept_for_the_listing_and_lookup_and_the_folder_is_named_in_ascii(
        tmp_path, name, id_end):
    from traintop import watch

    model = torch.nn.Linear(3, 1)
    with watch(model, name=name, runs_dir=tmp_path / "runs") as run:
        run.step(model(torch.randn(4, 3)).pow(2).mean())
    folder = run.session.folder
    shown = " ".join(name.split())
    assert folder.run_id.endswith(id_end) and folder.run_id.isascii()
    assert folder.read_json("meta.json")["name"] == shown
    assert read_events(folder.events)[0][0].name == shown
    listed = traintop("ls", runs=tmp_path / "runs")
    assert listed.returncode == 0 and shown in listed.stdout
    shown_run = traintop("export", shown, "--format", "csv", runs=tmp_path / "runs")
    assert shown_run.returncode == 0, shown_run.stderr


def test_watch_takes_an_argparse_namespace_as_its_config(tmp_path):
    import argparse

    import traintop

    model = torch.nn.Linear(3, 1)
    args = argparse.Namespace(lr=0.1, epochs=3)
    with traintop.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), config=args,
                        runs_dir=tmp_path / "runs") as run:
        pass
    started = read_events(run.session.folder.events)[0][0]
    assert started.config == {"lr": 0.1, "epochs": 3} and started.epochs == 3


def test_importing_traintop_does_not_import_torch():
    code = "import sys, traintop; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_a_watched_run_lists_exports_shows_and_compares_with_a_config_run(tmp_path):
    from traintop.engine.client import open_run
    from traintop.tui.compare import CompareTop

    runs = tmp_path / "runs"
    env = env_for(runs)
    mine = subprocess.run([sys.executable, str(EXAMPLES / "watch_digits.py"), "--epochs", "3"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert mine.returncode == 0, mine.stderr
    config = subprocess.run([*TRAINTOP, "run", "--headless", "--set", "train.epochs=3", "--runs-dir", str(runs)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert config.returncode == 0, config.stderr
    listing = traintop("ls", runs=runs)
    assert [line.split()[2] for line in listing.stdout.splitlines()[1:3]] == ["completed", "completed"]
    assert "digits-watch" in listing.stdout and "digits-mlp" in listing.stdout
    exported = traintop("export", "digits-watch", "--out", str(tmp_path / "out"), runs=runs)
    assert exported.returncode == 0 and "(72 steps)" in exported.stdout and "(3 validations)" in exported.stdout
    folders = [resolve_run(name, runs) for name in ("digits-watch", "digits-mlp")]

    def opener(folder):
        async def open_it():
            return await open_run(folder)
        return open_it

    async with finished_dashboard(folders[0], tries=100) as (app, pilot):  # 120x40: all four plots
        assert app.state.status == "finished" and app.state.source == "watch"
        assert len(app.state.loss) == 72 and app.state.metric_name == "accuracy"
        assert app.query_one("#metric-plot").figure.title.startswith("val accuracy")
        app.query_one("#views").active = "output"  # the loop printed in its own terminal: it says so
        await pilot.pause(0.3)
        assert "no output kept" in "".join(line.text for line in app.query_one("#output-log").lines)
        await pilot.press("i")  # no samples registered: the view says how, at once
        await pilot.pause(0.3)
        assert "register them with run.samples" in str(app.query_one("#inf-status").render())
    both = CompareTop([(folder.read_json("meta.json")["name"], opener(folder)) for folder in folders])
    async with both.run_test(size=(100, 30)) as pilot:
        for _ in range(100):
            if all(r.state is not None and r.state.status == "finished" for r in both.runs):
                break
            await pilot.pause(0.05)
        await pilot.pause(0.3)
        labels = [line.label for line in both.query_one("#loss-plot").figure.lines if line.joined]
    assert labels == ["digits-watch", "digits-mlp"]


SCRIPT_HEAD = """
import sys, time, torch, traintop
model = torch.nn.Linear(3, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
run = traintop.watch(model, optimizer, name="plain")

def train(steps):
    for _ in range(steps):
        loss = model(torch.randn(8, 3)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        run.step(loss)
        optimizer.step()
"""


@pytest.mark.parametrize("ending, status, error", [
    ("train(3)\nraise KeyboardInterrupt", "stopped", ""),  # Ctrl-C
    ("train(3)\nsys.excepthook = lambda *exc: print('own hook', file=sys.stderr)\nraise RuntimeError('crash')",
     "failed", "RuntimeError: crash"),
    ("train(3)", "completed", ""),
    ("train(3)\nsys.exit(0)", "completed", ""),
    ("train(3)\nsys.exit(3)", "failed", "the script exited with status 3"),
    ("train(3)\nsys.exit('no data left')", "failed", "the script exited with status 1: no data left"),
    ("import argparse\ntrain(3)\nargparse.ArgumentParser().error('bad flag')", "failed",
     "the script exited with status 2"),
    ("train(3)\nexit(5)", "failed", "the script exited with status 5"),
    # a sys.exit the script catches, and trains on after: no end of it
    ("train(2)\ntry:\n    sys.exit(4)\nexcept SystemExit:\n    pass\ntrain(1)", "completed", ""),
])
def test_a_plain_script_without_with_is_finished_by_how_it_ended(tmp_path, ending, status, error):
    """No `with`, no finish(): the exit handler decides, whatever exception hook the script set."""
    runs = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-c", SCRIPT_HEAD + ending], cwd=tmp_path, env=env_for(runs),
                          capture_output=True, text=True, timeout=120)
    finished = read_events(next(runs.iterdir()) / "events.jsonl")[0][-1]
    assert finished.event == "run_finished" and finished.status == status, proc.stderr[-2000:]
    assert finished.error == error and finished.step == 3


def test_stop_ends_a_plain_loop_that_never_reads_should_stop_as_stopped(tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT_HEAD + "train(10**9)"], cwd=tmp_path, env=env_for(runs),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        folder = live_folder(runs, proc)
        stop = traintop("ctl", str(folder.path), "stop", runs=runs)
        assert stop.returncode == 0, stop.stderr
        proc.wait(timeout=60)
    finally:
        proc.kill()
    listing = traintop("ls", runs=runs)
    assert "stopped" in listing.stdout.splitlines()[1], listing.stdout
    events = read_events(folder.events)[0]
    assert events[-1].status == "stopped"
    saved = [e for e in events if isinstance(e, ev.CheckpointSaved)]  # the stop saved last.pt, as it says
    assert [e.kind for e in saved] == ["last"] and saved[0].step == events[-1].step
    assert torch.load(folder.last, weights_only=True)["step"] == events[-1].step


@pytest.mark.parametrize("rate", ["float", "tensor"])
def test_a_step_that_raises_leaves_the_rate_change_as_it_was_never_compounded(tmp_path, rate):
    """The scale's post-hook never runs for an optimizer step that raised (an error in an LBFGS
    closure the loop catches): the next step still uses the schedule's rate times the scale, and
    a rate the schedule wrote in between (in place, for a tensor rate) is kept."""
    import traintop
    from traintop.engine import commands as cmd

    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1 if rate == "float" else torch.tensor(0.1), foreach=False)
    run = traintop.watch(model, optimizer, name="raising-step", runs_dir=tmp_path / "runs")

    def used_rate():
        """The rate one plain SGD step moves the bias by, for a gradient of 1."""
        before = model.bias.detach().clone()
        optimizer.zero_grad()
        model.bias.grad = torch.ones_like(model.bias)
        model.weight.grad = torch.zeros_like(model.weight)
        run.step(1.0)
        optimizer.step()
        return float(before - model.bias.detach())

    def failing_closure():
        raise RuntimeError("out of memory")

    def schedule(value):  # as torch's schedulers write a rate: a tensor in place
        if rate == "tensor":
            optimizer.param_groups[0]["lr"].fill_(value)
        else:
            optimizer.param_groups[0]["lr"] = value

    assert used_rate() == pytest.approx(0.1)
    run.lr.apply(cmd.SetLr(factor=2.0))
    for _ in range(3):  # nothing reads the rate between them
        with pytest.raises(RuntimeError):
            optimizer.step(failing_closure)
    assert used_rate() == pytest.approx(0.2) and float(optimizer.param_groups[0]["lr"]) == pytest.approx(0.1)
    with pytest.raises(RuntimeError):
        optimizer.step(failing_closure)
    schedule(0.05)  # the schedule moves on after the failed step
    assert used_rate() == pytest.approx(0.1) and float(optimizer.param_groups[0]["lr"]) == pytest.approx(0.05)
    with pytest.raises(RuntimeError):
        optimizer.step(failing_closure)
    run.finish()  # the hooks come off: the schedule's own rate stays, unscaled
    assert float(optimizer.param_groups[0]["lr"]) == pytest.approx(0.05)
