"""`traintop run train.py`: a script that never imports traintop, watched through its optimizer, in
real processes and over the real socket."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from pathlib import Path

from traintop.engine import events as ev
from traintop.engine.runstore import read_events

from watched import EXAMPLES, env_for, live_folder, steps_in

SCRIPTS = Path(__file__).resolve().parent / "scripts"
TRAINTOP = [sys.executable, "-m", "traintop.tui"]


def traintop(*args, runs: Path, cwd: Path, env: dict | None = None, timeout: float = 180):
    return subprocess.run([*TRAINTOP, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**env_for(runs), **(env or {})})


def only_run(runs: Path):
    (folder,) = [d for d in runs.iterdir() if d.is_dir()]
    return folder


def printed(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("epoch ") and ": val_loss" in line]


def test_an_unchanged_script_is_watched_and_its_numbers_do_not_change(tmp_path):
    runs = tmp_path / "runs"
    plain = subprocess.run([sys.executable, str(EXAMPLES / "train_digits.py"), "--epochs", "2"], cwd=tmp_path,
                           env=env_for(runs), capture_output=True, text=True, timeout=120, check=True)
    watched = traintop("run", str(EXAMPLES / "train_digits.py"), "--headless", "--", "--epochs", "2",
                       runs=runs, cwd=tmp_path)
    assert watched.returncode == 0, watched.stderr
    assert printed(watched.stdout) == printed(plain.stdout) and len(printed(plain.stdout)) == 2
    events = read_events(only_run(runs) / "events.jsonl")[0]
    started = events[0]
    assert started.source == "script" and started.epochs == 2 and started.steps_per_epoch == 24
    assert [layer["describe"] for layer in started.layers] == ["Linear 64→128", "Linear 128→128", "Linear 128→10"]
    assert steps_in(events) == list(range(1, 49))
    assert [e.epoch for e in events if isinstance(e, ev.EpochEnd)] == [1, 2]
    assert events[-1].status == "completed"
    assert "finished: completed" in watched.stdout  # traintop's own log lines, beside the script's


def test_stop_ends_an_unchanged_script_cleanly_and_traintop_exits_0(tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.Popen([*TRAINTOP, "run", str(EXAMPLES / "train_digits.py"), "--headless", "--",
                             "--epochs", "100000"], cwd=tmp_path, env=env_for(runs), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        folder = live_folder(runs, proc)
        while max(steps_in(read_events(folder.events)[0]) or [0]) < 30:
            time.sleep(0.05)
        assert traintop("ctl", folder.run_id, "pause", runs=runs, cwd=tmp_path).returncode == 0
        time.sleep(0.5)
        held = max(steps_in(read_events(folder.events)[0]))
        time.sleep(0.7)
        assert max(steps_in(read_events(folder.events)[0])) == held  # pause holds the script's own loop
        lr = traintop("ctl", folder.run_id, "lr", "x2", runs=runs, cwd=tmp_path)
        assert lr.returncode == 0, lr.stderr
        assert traintop("ctl", folder.run_id, "resume", runs=runs, cwd=tmp_path).returncode == 0
        stop = traintop("ctl", folder.run_id, "stop", runs=runs, cwd=tmp_path)
        assert stop.returncode == 0, stop.stderr
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    events = read_events(folder.events)[0]
    assert events[-1].status == "stopped"
    rates = {s: r for e in events if isinstance(e, ev.Steps) for s, r in zip(e.step, e.lr)}
    changed = next(e for e in events if isinstance(e, ev.LrChanged))
    assert changed.new == 2 * changed.old
    assert rates[changed.step + 1] > 1.9 * rates[changed.step]  # the cosine's next rate, doubled
    import torch

    state = torch.load(folder.last, weights_only=True)  # the stop saved the script's model, as it says
    assert state["step"] == events[-1].step and "0.weight" in state["model"] and "state" in state["optimizer"]


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_or_ctrl_c_on_a_script_saves_last_pt_before_it_ends_stopped(tmp_path, sig, code):
    runs = tmp_path / "runs"
    proc = subprocess.Popen([*TRAINTOP, "run", str(EXAMPLES / "train_digits.py"), "--headless", "--",
                             "--epochs", "100000"], cwd=tmp_path, env=env_for(runs), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        folder = live_folder(runs, proc)
        while max(steps_in(read_events(folder.events)[0]) or [0]) < 30:
            time.sleep(0.05)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    events = read_events(folder.events)[0]
    assert events[-1].status == "stopped"
    import torch

    state = torch.load(folder.last, weights_only=True)
    assert state["step"] == events[-1].step >= 30 and "0.weight" in state["model"]


def test_ctl_on_a_script_between_its_steps_says_why_it_waits_and_the_stop_applies_at_the_next_step(tmp_path):
    runs = tmp_path / "runs"
    script = tmp_path / "sleepy.py"
    script.write_text(
        "import time, torch\n"
        "m = torch.nn.Linear(4, 1); opt = torch.optim.SGD(m.parameters(), lr=0.01)\n"
        "def train(n):\n"
        "    for _ in range(n):\n"
        "        loss = m(torch.randn(8, 4)).pow(2).mean(); opt.zero_grad(); loss.backward(); opt.step()\n"
        "train(20)\n"
        "open('sleeping', 'w').close()\n"
        "time.sleep(6)  # its own work, between two steps\n"
        "train(20)\n")
    proc = subprocess.Popen([*TRAINTOP, "run", str(script), "--headless"], cwd=tmp_path, env=env_for(runs),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        folder = live_folder(runs, proc)
        while not (tmp_path / "sleeping").exists():
            time.sleep(0.05)
        stop = traintop("ctl", folder.run_id, "stop", runs=runs, cwd=tmp_path)
        proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert stop.returncode == 0 and "stopping at step 21" in stop.stdout, stop.stderr
    assert "is between two now" in stop.stderr and "waiting for its next step" in stop.stderr
    assert read_events(folder.events)[0][-1].status == "stopped"


def test_a_script_that_trains_in_a_thread_is_stopped_without_a_traceback(tmp_path):
    runs = tmp_path / "runs"
    script = tmp_path / "threaded.py"
    script.write_text(
        "import threading, torch\n"
        "m = torch.nn.Linear(4, 1); opt = torch.optim.SGD(m.parameters(), lr=0.01)\n"
        "def train():\n"
        "    while True:\n"
        "        loss = m(torch.randn(8, 4)).pow(2).mean(); opt.zero_grad(); loss.backward(); opt.step()\n"
        "worker = threading.Thread(target=train); worker.start(); worker.join()\n")
    proc = subprocess.Popen([*TRAINTOP, "run", str(script), "--headless"], cwd=tmp_path, env=env_for(runs),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        folder = live_folder(runs, proc)
        while max(steps_in(read_events(folder.events)[0]) or [0]) < 30:
            time.sleep(0.05)
        assert traintop("ctl", folder.run_id, "stop", runs=runs, cwd=tmp_path).returncode == 0
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err and "Exception in thread" not in err, err
    assert read_events(folder.events)[0][-1].status == "stopped"


def test_a_script_that_exits_with_a_status_of_its_own_fails_its_run_and_passes_the_status_on(tmp_path):
    runs = tmp_path / "runs"
    script = tmp_path / "exits.py"
    script.write_text(
        "import sys, torch\n"
        "m = torch.nn.Linear(4, 1); opt = torch.optim.SGD(m.parameters(), lr=0.01)\n"
        "for _ in range(5):\n"
        "    loss = m(torch.randn(8, 4)).pow(2).mean(); opt.zero_grad(); loss.backward(); opt.step()\n"
        "sys.exit(3)\n")
    done = traintop("run", str(script), "--headless", runs=runs, cwd=tmp_path)
    assert done.returncode == 3 and "Traceback" not in done.stderr
    finished = read_events(only_run(runs) / "events.jsonl")[0][-1]
    assert finished.status == "failed" and finished.error == "the script exited with status 3" and finished.step == 5


def test_a_plain_lightning_script_stopped_by_traintop_exits_0(tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.Popen([*TRAINTOP, "run", str(SCRIPTS / "lightning_plain.py"), "--headless", "--", "100000"],
                            cwd=tmp_path, env=env_for(runs), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        folder = live_folder(runs, proc, timeout=120)
        while max(steps_in(read_events(folder.events)[0]) or [0]) < 20:
            time.sleep(0.05)
        assert traintop("ctl", folder.run_id, "stop", runs=runs, cwd=tmp_path).returncode == 0
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]  # Lightning itself exits 1 on the interrupt
    assert read_events(folder.events)[0][-1].status == "stopped"


def test_a_script_that_calls_watch_itself_is_watched_through_it_in_one_run(tmp_path):
    runs = tmp_path / "runs"
    done = traintop("run", str(EXAMPLES / "watch_digits.py"), "--headless", "--", "--epochs", "2",
                    runs=runs, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    events = read_events(only_run(runs) / "events.jsonl")[0]  # one run folder, not two
    assert events[0].source == "watch"
    assert steps_in(events) == list(range(1, 49))
    assert len([e for e in events if isinstance(e, ev.Validation)]) == 2
    listing = traintop("ls", "--name", "digits-watch", runs=runs, cwd=tmp_path)  # the name the script gave watch
    assert listing.returncode == 0 and "digits-watch" in listing.stdout.splitlines()[1], listing.stdout + listing.stderr


@pytest.mark.parametrize("how", ["--headless", "--detach"])
def test_a_script_run_under_a_name_is_listed_and_exported_by_it(tmp_path, how):
    runs = tmp_path / "runs"
    done = traintop("run", str(EXAMPLES / "train_digits.py"), how, "--name", "my-run", "--", "--epochs", "1",
                    runs=runs, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 120
    while "completed" not in (listing := traintop("ls", "--name", "my-run", runs=runs, cwd=tmp_path)).stdout:
        assert time.monotonic() < deadline, listing.stdout + listing.stderr
        time.sleep(0.5)
    assert read_events(only_run(runs) / "events.jsonl")[0][0].name == "my-run"
    exported = traintop("export", "my-run", "--format", "csv", runs=runs, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr


def test_autowatch_off_runs_the_script_unwatched(tmp_path):
    runs = tmp_path / "runs"
    done = traintop("run", str(EXAMPLES / "train_digits.py"), "--headless", "--", "--epochs", "1",
                    runs=runs, cwd=tmp_path, env={"TRAINTOP_AUTOWATCH": "0"})
    assert done.returncode == 0, done.stderr
    assert len(printed(done.stdout)) == 1
    events = read_events(only_run(runs) / "events.jsonl")[0]
    assert not steps_in(events) and events[-1].status == "completed"


def test_a_script_without_an_optimizer_is_told_to_use_watch(tmp_path):
    runs = tmp_path / "runs"
    done = traintop("run", str(SCRIPTS / "no_optimizer.py"), "--headless", runs=runs, cwd=tmp_path)
    assert done.returncode == 1
    assert "done" in done.stdout and "only through traintop.watch" in done.stderr
    assert "Traceback" not in done.stderr
    assert read_events(only_run(runs) / "events.jsonl")[0][-1].status == "failed"


def test_a_script_that_fails_before_its_first_step_ends_failed_with_its_own_error(tmp_path):
    """Its error, shown from its own frame as python would show it, is the run's: not that there
    was nothing to watch."""
    runs = tmp_path / "runs"
    (tmp_path / "broken.py").write_text("import torch\n\ndef load():\n    raise ValueError('no data here')\n\nload()\n")
    done = traintop("run", "broken.py", "--headless", runs=runs, cwd=tmp_path)
    assert done.returncode == 1
    assert 'File "broken.py", line 6, in <module>' in done.stderr and "ValueError: no data here" in done.stderr
    assert "runpy" not in done.stderr and "traintop" not in done.stderr.split("Traceback")[1].split("ValueError")[0]
    assert "nothing to watch" not in done.stderr + done.stdout
    finished = read_events(only_run(runs) / "events.jsonl")[0][-1]
    assert finished.status == "failed" and finished.error == "ValueError: no data here"


def test_a_detached_script_reading_stdin_is_told_it_has_none(tmp_path):
    runs = tmp_path / "runs"
    started = traintop("run", str(SCRIPTS / "reads_stdin.py"), "--detach", runs=runs, cwd=tmp_path)
    folder = only_run(runs)
    deadline = time.monotonic() + 60
    while not (folder / "report.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "no standard input" in (folder / "engine.log").read_text(), started.stdout + started.stderr
    assert read_events(folder / "events.jsonl")[0][-1].status == "failed"


def test_a_detached_script_may_ask_its_stdin_what_it_is_and_train(tmp_path):
    """isatty() and encoding answer as for `python script.py </dev/null`; only reading refuses."""
    runs = tmp_path / "runs"
    (tmp_path / "asks.py").write_text(
        "import sys, torch\n"
        "print('interactive', sys.stdin.isatty(), sys.stdin.encoding, flush=True)\n"
        "model = torch.nn.Linear(2, 1)\n"
        "optimizer = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for _ in range(5):\n"
        "    loss = model(torch.ones(4, 2)).pow(2).mean()\n"
        "    optimizer.zero_grad()\n"
        "    loss.backward()\n"
        "    optimizer.step()\n")
    started = traintop("run", "asks.py", "--detach", runs=runs, cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    folder = only_run(runs)
    deadline = time.monotonic() + 60
    while not (folder / "report.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "interactive False utf-8" in (folder / "engine.log").read_text()
    assert read_events(folder / "events.jsonl")[0][-1].status == "completed"


def test_a_script_that_changes_its_directory_still_obeys_and_ends_in_its_run_folder(tmp_path):
    """With a relative --runs-dir: the run folder is where the run began, whatever the script's cwd."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "moves.py").write_text(
        "import os, time, torch\n"
        "model = torch.nn.Linear(2, 1)\n"
        "optimizer = torch.optim.SGD(model.parameters(), lr=0.01)\n"
        "os.chdir('elsewhere')\n"
        "for _ in range(3000):\n"
        "    loss = model(torch.ones(4, 2)).pow(2).mean()\n"
        "    optimizer.zero_grad()\n"
        "    loss.backward()\n"
        "    optimizer.step()\n"
        "    time.sleep(0.01)\n")
    started = traintop("run", "moves.py", "--detach", "--runs-dir", "rel-runs", runs=tmp_path / "unused", cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    folder = only_run(tmp_path / "rel-runs")
    deadline = time.monotonic() + 60
    while not steps_in(read_events(folder / "events.jsonl")[0]) and time.monotonic() < deadline:
        time.sleep(0.2)
    saved = traintop("ctl", folder.name, "checkpoint", "--runs-dir", "rel-runs", runs=tmp_path / "unused", cwd=tmp_path)
    assert saved.returncode == 0, saved.stdout + saved.stderr
    stopped = traintop("ctl", folder.name, "stop", "--runs-dir", "rel-runs", runs=tmp_path / "unused", cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    while not (folder / "report.json").exists() and time.monotonic() < deadline + 30:
        time.sleep(0.1)
    assert read_events(folder / "events.jsonl")[0][-1].status == "stopped"
    assert (folder / "checkpoints" / "last.pt").exists() and not (folder / "control.sock").exists()
    assert not (tmp_path / "elsewhere" / "rel-runs").exists()


def test_a_script_that_trains_a_second_model_after_the_first_is_followed_to_it_and_obeys(tmp_path):
    runs = tmp_path / "runs"
    started = traintop("run", str(SCRIPTS / "two_models.py"), "--detach", runs=runs, cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    folder = only_run(runs)
    deadline = time.monotonic() + 60
    while len(steps_in(read_events(folder / "events.jsonl")[0])) < 25 and time.monotonic() < deadline:
        time.sleep(0.2)  # past the first model's 16 steps and into the second's
    doubled = traintop("ctl", folder.name, "lr", "x2", runs=runs, cwd=tmp_path)
    assert doubled.returncode == 0, doubled.stdout + doubled.stderr
    time.sleep(1)
    stopped = traintop("ctl", folder.name, "stop", runs=runs, cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    while not (folder / "report.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    events = read_events(folder / "events.jsonl")[0]
    steps = steps_in(events)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > 25
    rates = [lr for e in events if isinstance(e, ev.Steps) for lr in e.lr]
    assert rates[0] == pytest.approx(0.1) and rates[-1] == pytest.approx(0.2)  # the second model's rate, doubled
    assert events[-1].status == "stopped"


def test_ctl_stop_on_a_detached_script_gets_its_reply_before_the_run_closes(tmp_path):
    """The stop ends the run at once; its reply still reaches ctl (it raced the connection's close)."""
    for attempt in range(3):
        runs = tmp_path / f"runs{attempt}"
        started = traintop("run", str(EXAMPLES / "train_digits.py"), "--detach", "--", "--epochs", "100000",
                           runs=runs, cwd=tmp_path, env={"OMP_NUM_THREADS": "2"})  # busier: the race shows
        assert started.returncode == 0, started.stderr
        folder = only_run(runs)
        deadline = time.monotonic() + 60
        while not steps_in(read_events(folder / "events.jsonl")[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
        stop = traintop("ctl", folder.name, "stop", runs=runs, cwd=tmp_path)
        assert stop.returncode == 0 and stop.stdout.startswith("stopping at step"), stop.stdout + stop.stderr
        while not (folder / "report.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert read_events(folder / "events.jsonl")[0][-1].status == "stopped"


def test_a_script_that_makes_its_loader_each_epoch_is_counted_epoch_by_epoch(tmp_path):
    runs = tmp_path / "runs"
    done = traintop("run", str(SCRIPTS / "loader_each_epoch.py"), "--headless", runs=runs, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    events = read_events(only_run(runs) / "events.jsonl")[0]
    assert [e.epoch for e in events if isinstance(e, ev.EpochEnd)] == [1, 2, 3]
    assert [x for e in events if isinstance(e, ev.Steps) for x in e.epoch] == [1] * 4 + [2] * 4 + [3] * 4
    assert events[-1].status == "completed" and events[-1].epoch == 3
    # samples/s from the first epoch on (its loader is known from its first step); the step before, none
    assert all(e.samples_per_s > 0 for e in events if isinstance(e, ev.Steps) and e.step[0] > 1)


def test_a_script_without_a_loader_is_logged_in_steps_a_second(tmp_path):
    """Without a DataLoader traintop cannot count samples: the log says how many steps a second,
    never "0 samples/s"."""
    runs = tmp_path / "runs"
    script = tmp_path / "tensors.py"
    script.write_text("import time, torch\n"
                      "model = torch.nn.Linear(4, 1)\n"
                      "optimizer = torch.optim.SGD(model.parameters(), lr=0.01)\n"
                      "for step in range(250):\n"
                      "    loss = model(torch.ones(8, 4)).pow(2).mean()\n"
                      "    optimizer.zero_grad(); loss.backward(); optimizer.step()\n"
                      "    time.sleep(0.02)\n")
    done = traintop("run", str(script), "--headless", runs=runs, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("epoch ") and " loss " in line]
    assert len(lines) >= 2 and "0 samples/s" not in done.stdout, done.stdout
    assert any(line.endswith(" steps/s") and float(line.split()[-2]) > 5 for line in lines), done.stdout


def test_script_arguments_go_after_the_double_dash_and_resume_says_how_to_go_on(tmp_path):
    runs = tmp_path / "runs"
    wrong = traintop("run", str(EXAMPLES / "train_digits.py"), "--epochs", "1", runs=runs, cwd=tmp_path)
    assert wrong.returncode == 2 and "go after --" in wrong.stderr and "Traceback" not in wrong.stderr
    done = traintop("run", str(EXAMPLES / "train_digits.py"), "--headless", "--", "--epochs", "1",
                    runs=runs, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    resumed = traintop("resume", only_run(runs).name, runs=runs, cwd=tmp_path)
    assert resumed.returncode == 2 and "trained by your script" in resumed.stderr
    listing = traintop("ls", runs=runs, cwd=tmp_path)
    assert "completed" in listing.stdout
    exported = traintop("export", only_run(runs).name, runs=runs, cwd=tmp_path)
    assert exported.returncode == 0 and "(24 steps)" in exported.stdout


def test_a_script_that_takes_its_gradients_from_autograd_grad_records_its_loss(tmp_path):
    """Gradients set by hand from torch.autograd.grad: that loss is the step's, with no false
    nan_loss warning. In a step with a backward pass, a gradient penalty's autograd.grad is part of
    the loss, not the step's loss. The script's numbers are the same watched or not."""
    runs = tmp_path / "runs"
    script = tmp_path / "by_grad.py"
    script.write_text(
        "import torch\n"
        "torch.manual_seed(0)\n"
        "model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))\n"
        "optimizer = torch.optim.SGD(model.parameters(), lr=0.05)\n"
        "x = torch.randn(64, 4, requires_grad=True); y = x.detach().sum(1, keepdim=True)\n"
        "for step in range(60):\n"
        "    loss = (model(x) - y).pow(2).mean()\n"
        "    if step < 30:  # gradients taken and set by hand\n"
        "        grads = torch.autograd.grad(loss, list(model.parameters()))\n"
        "        for p, g in zip(model.parameters(), grads):\n"
        "            p.grad = g\n"
        "    else:  # a gradient penalty: autograd.grad of a scalar, inside a step with backward\n"
        "        (gx,) = torch.autograd.grad(model(x).sum(), x, create_graph=True)\n"
        "        optimizer.zero_grad()\n"
        "        (loss + 0.01 * gx.pow(2).mean()).backward()\n"
        "    optimizer.step()\n"
        "    with open('losses.txt', 'a') as f:  # not stdout, where traintop's own lines go beside it\n"
        "        f.write(repr(loss.item()) + '\\n')\n")
    subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    plain = (tmp_path / "losses.txt").read_text()
    (tmp_path / "losses.txt").unlink()
    done = traintop("run", str(script), "--headless", runs=runs, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "losses.txt").read_text() == plain  # the same numbers, watched or not
    printed_losses = [float(line) for line in plain.splitlines()]
    events = read_events(only_run(runs) / "events.jsonl")[0]
    recorded = [x for e in events if isinstance(e, ev.Steps) for x in e.loss]
    penalised = [x for e in events if isinstance(e, ev.Steps) for x in e.loss][30:]
    assert len(recorded) == 60 and recorded[:30] == pytest.approx(printed_losses[:30], rel=1e-5)
    # with the penalty, the step's loss is the whole backward'd loss: a little above the plain one
    assert all(p >= x for p, x in zip(penalised, printed_losses[30:])) and penalised != printed_losses[30:]
    assert not [e for e in events if isinstance(e, ev.RunWarning) and e.kind == "nan_loss"]


@pytest.mark.parametrize("divide", ["loss / accumulate", "loss * (1 / accumulate)", "scaler.scale(loss / accumulate)",
                                    "loss", "a loss divided by its batch's rows"])
def test_accumulation_that_divides_each_loss_by_its_passes_records_the_undivided_mean(tmp_path, divide):
    """The usual accumulation loop backpropagates loss / N for each of N batches (fewer in the
    epoch's last group): the step's loss is the mean of the batches' own losses, as the script
    prints them; a loop that does not divide has that mean too."""
    runs = tmp_path / "runs"
    script = tmp_path / "accumulates.py"
    if "rows" in divide:  # 8 rows: a divisor that is not the number of passes, undone by nothing
        compute, backward = "(model(x) - y).pow(2).sum() / len(x)", "loss.backward()"
    else:
        compute = "(model(x) - y).pow(2).mean()"
        backward = "scaler.scale(loss / accumulate).backward()" if "scaler" in divide else f"({divide}).backward()"
    update = "scaler.step(optimizer); scaler.update()" if "scaler" in divide else "optimizer.step()"
    script.write_text(
        "import torch\n"
        "torch.manual_seed(0)\n"
        "model = torch.nn.Linear(4, 1)\n"
        "optimizer = torch.optim.SGD(model.parameters(), lr=0.05)\n"
        "scaler = torch.amp.GradScaler('cpu', init_scale=1024.0)\n"
        "batches = [(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(10)]\n"
        "accumulate, seen = 4, []\n"
        "for epoch in range(2):\n"
        "    for i, (x, y) in enumerate(batches):\n"
        f"        loss = {compute}\n"
        "        seen.append(loss.item())\n"
        f"        {backward}\n"
        "        if (i + 1) % accumulate == 0 or i + 1 == len(batches):  # 4, 4, then the last 2\n"
        f"            {update}\n"
        "            optimizer.zero_grad()\n"
        "            with open('means.txt', 'a') as f:\n"
        "                f.write(repr(sum(seen) / len(seen)) + '\\n')\n"
        "            seen = []\n")
    done = traintop("run", str(script), "--headless", runs=runs, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    means = [float(line) for line in (tmp_path / "means.txt").read_text().splitlines()]
    events = read_events(only_run(runs) / "events.jsonl")[0]
    recorded = [x for e in events if isinstance(e, ev.Steps) for x in e.loss]
    assert len(means) == 6 and recorded == pytest.approx(means, rel=1e-5)


FORKS = {
    "a fork pool": (
        "import multiprocessing as mp\n"
        "def work(seed):\n"
        "    torch.manual_seed(seed); m = model(); opt = torch.optim.SGD(m.parameters(), lr=0.1)\n"
        "    train(m, opt)\n"
        "if __name__ == '__main__':\n"
        "    with mp.get_context('fork').Pool(2) as pool:\n"
        "        pool.map(work, [1, 2])\n"
        "    m = model(); train(m, torch.optim.SGD(m.parameters(), lr=0.1))\n"),
    "os.fork": (
        "import os\n"
        "m = model(); opt = torch.optim.SGD(m.parameters(), lr=0.1)\n"
        "train(m, opt)\n"
        "child = os.fork()\n"
        "train(m, opt)  # both processes: the child's steps are its own\n"
        "if child:\n"
        "    os.waitpid(child, 0)\n"),
}


@pytest.mark.parametrize("fork", list(FORKS))
def test_a_forked_process_that_trains_records_nothing_into_the_parents_run(tmp_path, fork):
    runs = tmp_path / "runs"
    script = tmp_path / "forks.py"
    script.write_text(
        "import torch, torch.nn as nn\n"
        "torch.set_num_threads(1)  # a forked child of a multi-threaded parent would wait on its pool\n"
        "X = torch.randn(256, 8); y = (X.sum(1) > 0).long()\n"
        "def model(): return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))\n"
        "def train(m, opt):\n"
        "    for i in range(0, 256, 32):\n"
        "        loss = nn.functional.cross_entropy(m(X[i:i + 32]), y[i:i + 32])\n"
        "        opt.zero_grad(); loss.backward(); opt.step()\n" + FORKS[fork])
    done = traintop("run", str(script), "--headless", runs=runs, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    events = read_events(only_run(runs) / "events.jsonl")[0]
    steps = [x for e in events if isinstance(e, ev.Steps) for x in e.step]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == (8 if fork == "a fork pool" else 16)
    assert sum(isinstance(e, ev.RunStarted) for e in events) == 1
    assert [e.status for e in events if isinstance(e, ev.RunFinished)] == ["completed"]
    assert isinstance(events[-1], ev.RunFinished)


def test_an_optimizer_given_a_closure_records_the_loss_its_step_returns(tmp_path):
    """LBFGS evaluates its closure several times a step (a line search); the step's loss is the
    first, the one `step(closure)` returns, not a mean with the trial points'."""
    runs = tmp_path / "runs"
    script = tmp_path / "lbfgs.py"
    script.write_text(
        "import torch, torch.nn as nn\n"
        "torch.manual_seed(0)\n"
        "X = torch.randn(256, 8); y = (X.sum(1) > 0).long()\n"
        "m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))\n"
        "opt = torch.optim.LBFGS(m.parameters(), lr=0.5, max_iter=5)\n"
        "with open('printed.txt', 'w') as out:\n"
        "    for i in range(0, 256, 64):\n"
        "        def closure():\n"
        "            opt.zero_grad(); loss = nn.functional.cross_entropy(m(X[i:i + 64]), y[i:i + 64])\n"
        "            loss.backward(); return loss\n"
        "        out.write(repr(opt.step(closure).item()) + '\\n')\n")
    done = traintop("run", str(script), "--headless", runs=runs, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    printed = [float(x) for x in (tmp_path / "printed.txt").read_text().split()]
    recorded = [x for e in read_events(only_run(runs) / "events.jsonl")[0] if isinstance(e, ev.Steps) for x in e.loss]
    assert len(printed) == 4 and recorded == pytest.approx(printed, rel=1e-5)


def test_a_gans_two_optimizers_record_the_first_ones_loss_alone(tmp_path):
    """A GAN steps its discriminator and then its generator, turn by turn: the steps recorded are
    the discriminator's, each with the mean of its own backward passes; the generator's loss, which
    comes between, is never mixed into them."""
    runs = tmp_path / "runs"
    script = tmp_path / "gan.py"
    script.write_text(
        "import torch\n"
        "import torch.nn.functional as F\n"
        "torch.manual_seed(0)\n"
        "G = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))\n"
        "D = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))\n"
        "opt_d = torch.optim.Adam(D.parameters(), lr=1e-3)\n"
        "opt_g = torch.optim.Adam(G.parameters(), lr=1e-3)\n"
        "real = torch.randn(256, 2) * 0.5 + 2\n"
        "ones, zeros = torch.ones(64, 1), torch.zeros(64, 1)\n"
        "for step in range(40):\n"
        "    batch = real[torch.randint(0, 256, (64,))]\n"
        "    fake = G(torch.randn(64, 2))\n"
        "    D.zero_grad()\n"
        "    err_real = F.binary_cross_entropy_with_logits(D(batch), ones)\n"
        "    err_real.backward()\n"
        "    err_fake = F.binary_cross_entropy_with_logits(D(fake.detach()), zeros)\n"
        "    err_fake.backward()\n"
        "    opt_d.step()\n"
        "    G.zero_grad()\n"
        "    err_g = F.binary_cross_entropy_with_logits(D(fake), ones)\n"
        "    err_g.backward()\n"
        "    opt_g.step()\n"
        "    with open('d_losses.txt', 'a') as f:  # not stdout, where traintop's own lines go beside it\n"
        "        f.write(repr((err_real.item() + err_fake.item()) / 2) + '\\n')\n")
    done = traintop("run", str(script), "--headless", runs=runs, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    d_losses = [float(line) for line in (tmp_path / "d_losses.txt").read_text().splitlines()]
    events = read_events(only_run(runs) / "events.jsonl")[0]
    recorded = [x for e in events if isinstance(e, ev.Steps) for x in e.loss]
    assert len(d_losses) == 40 and recorded == pytest.approx(d_losses, rel=1e-5)


def test_traintops_lines_never_land_inside_a_line_the_script_is_printing(tmp_path):
    """Headless, the script's stdout and traintop's log lines share one stream. A script that prints
    each line in pieces (print with several arguments, a progress line built up) has a line open
    most of the time; traintop's lines wait for it to end, and neither is cut."""
    runs = tmp_path / "runs"
    script = tmp_path / "pieces.py"
    script.write_text(
        "import sys, time\n"
        "import torch\n"
        "model = torch.nn.Linear(4, 1)\n"
        "optimizer = torch.optim.SGD(model.parameters(), lr=0.01)\n"
        "x, y = torch.randn(32, 4), torch.randn(32, 1)\n"
        "for epoch in range(4):\n"
        "    for step in range(50):\n"
        "        sys.stdout.write('partial')  # the line is open across the step, when traintop's are printed\n"
        "        optimizer.zero_grad()\n"
        "        (model(x) - y).pow(2).mean().backward()\n"
        "        optimizer.step()\n"
        "        for piece in (' line', ' of', ' the', ' script'):\n"
        "            time.sleep(0.002)\n"
        "            sys.stdout.write(piece)\n"
        "        print(' done', epoch, step, sep=' ')\n"
        "    print('end of epoch', epoch, 'val_loss', 0.5, file=sys.stdout)\n")
    done = traintop("run", str(script), "--headless", runs=runs, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    ours = [line for line in lines if not line.startswith(("partial line", "end of epoch "))]
    theirs = [line for line in lines if line.startswith("partial line")]
    assert [line.removeprefix("partial line of the script done ") for line in theirs] == [
        f"{e} {s}" for e in range(4) for s in range(50)]
    assert [line for line in lines if line.startswith("end of epoch ")] == [
        f"end of epoch {e} val_loss 0.5" for e in range(4)]
    assert ours[0].startswith("traintop · run ") and any("completed" in line for line in ours)
    assert any(line.startswith("epoch ") and " step " in line for line in ours)  # step lines too
    assert not [line for line in ours if "part" in line or "script done" in line], ours


def test_steps_whose_gradients_are_set_by_hand_are_not_called_non_finite(tmp_path):
    """A script that sets its gradients without a backward pass traintop can see (an estimate, a
    gradient from elsewhere) steps with no loss: traintop says so once, and never calls those steps
    non-finite (a NaN loss still is); the run completes, its steps counted, its gradient norms
    recorded."""
    runs = tmp_path / "runs"
    script = tmp_path / "by_hand.py"
    script.write_text(
        "import torch\n"
        "torch.manual_seed(0)\n"
        "w = torch.nn.Parameter(torch.zeros(4))\n"
        "optimizer = torch.optim.SGD([w], lr=0.1)\n"
        "target = torch.ones(4)\n"
        "for step in range(60):\n"
        "    with torch.no_grad():\n"
        "        w.grad = 2 * (w - target)  # the gradient of |w - target|^2, worked out by hand\n"
        "    optimizer.step()\n"
        "print('w', [round(v, 3) for v in w.tolist()])\n"
        "optimizer.zero_grad()\n"
        "(w.sum() * float('nan')).backward()  # a loss that is NaN: that one is called so\n"
        "optimizer.step()\n")
    done = traintop("run", str(script), "--headless", runs=runs, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "w [1.0, 1.0, 1.0, 1.0]" in done.stdout
    events = read_events(only_run(runs) / "events.jsonl")[0]
    warned = [e for e in events if isinstance(e, ev.RunWarning)]
    assert [(w.kind, w.step) for w in warned if w.kind == "nan_loss"] == [("nan_loss", 61)], [w.message for w in warned]
    (no_loss,) = {w.id: w for w in warned if w.kind == "no_loss"}.values()
    steps = [e for e in events if isinstance(e, ev.Steps)]
    assert no_loss.step == steps[0].step[0] == 1 and "no backward pass" in no_loss.message
    assert "run.step(loss)" in no_loss.advice
    assert sum(len(e.step) for e in steps) == 61 and steps[0].grad_norm[0] == pytest.approx(4.0)
    assert read_events(only_run(runs) / "events.jsonl")[0][-1].status == "completed"
