"""Steering a run from a terminal as a new user does: a lost dashboard, early stopping turned on
late, the last lines of a run. The real CLI in real processes, the real socket, real terminals (ptys)."""

from __future__ import annotations

import asyncio
import json
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

from traintop.engine import commands as cmd
from traintop.engine import events as ev
from traintop.engine.client import LiveRun
from traintop.engine.runstore import RunFolder, read_events, resolve_run, socket_is_live
from traintop.tui.app import TrainTop

TRAINTOP = [sys.executable, "-m", "traintop.tui"]
TERMINAL = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"}


def traintop(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*TRAINTOP, *args], capture_output=True, text=True, timeout=timeout)


def status_in_ls(folder: RunFolder) -> str:
    proc = traintop("ls", "--runs-dir", str(folder.path.parent))
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith(folder.run_id))
    return re.split(r"\s{2,}", line)[2]


def wait_until(condition, seconds: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)


def steps_logged(folder: RunFolder) -> int:
    events, _ = read_events(folder.events)
    return max((s for e in events if isinstance(e, ev.Steps) for s in e.step), default=0)


def test_a_paused_run_outlives_its_killed_terminal_is_listed_paused_and_resumes_from_ctl(tmp_path, engines):
    runs = tmp_path / "runs"
    command = (f"{sys.executable} -m traintop.tui run --runs-dir {runs} --set train.epochs=100000 "
               "--set early_stopping.enabled=false")
    terminal = subprocess.Popen(["script", "-qfec", command, "/dev/null"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=TERMINAL,
                                start_new_session=True)
    try:
        wait_until(lambda: any(socket_is_live(s) for s in runs.glob("*/control.sock")), what="the engine serves")
        folder = resolve_run("latest", runs)
        engines.append(folder)
        dashboards = open(f"/proc/{terminal.pid}/task/{terminal.pid}/children").read().split()
        assert len(dashboards) == 1  # `traintop run` itself: the dashboard, which started the engine
        assert traintop("ctl", folder.run_id, "pause", "--runs-dir", str(runs)).returncode == 0
    finally:
        os.kill(terminal.pid, signal.SIGKILL)  # the terminal window is closed: its session gets SIGHUP
        terminal.wait()
    wait_until(lambda: not os.path.exists(f"/proc/{dashboards[0]}"), 30, "the dashboard ends with its terminal")
    time.sleep(0.5)
    paused_at = steps_logged(folder)
    assert status_in_ls(folder) == "paused" and socket_is_live(folder.socket)

    resumed = traintop("ctl", folder.run_id, "resume", "--runs-dir", str(runs))
    assert resumed.returncode == 0 and "resumed" in resumed.stdout, resumed.stderr
    wait_until(lambda: steps_logged(folder) > paused_at + 100, 30, "training goes on")
    assert status_in_ls(folder) == "running"
    assert traintop("ctl", folder.run_id, "stop", "--runs-dir", str(runs)).returncode == 0
    wait_until(lambda: folder.report.exists(), 60, "the run stops")
    assert status_in_ls(folder) == "stopped"


async def test_early_stopping_turned_on_with_its_patience_used_up_says_the_run_stops_at_the_next_validation(
        tmp_path, engines):
    runs = tmp_path / "runs"
    # min_delta 5 on a loss near 2: after the first validation nothing counts as an improvement
    started = traintop("run", "--detach", "--runs-dir", str(runs), "--set", "train.epochs=100000",
                       "--set", "train.val_every_steps=2", "--set", "early_stopping.enabled=false",
                       "--set", "early_stopping.patience=2", "--set", "early_stopping.min_delta=5")
    assert started.returncode == 0, started.stderr
    folder = resolve_run("latest", runs)
    engines.append(folder)

    async def ctl(*args: str) -> subprocess.CompletedProcess:
        return await asyncio.to_thread(traintop, "ctl", folder.run_id, *args, "--runs-dir", str(runs))

    def patience_used_up() -> bool:
        return any(isinstance(e, ev.Validation) and e.since_best >= 3 for e in read_events(folder.events)[0])
    await asyncio.to_thread(wait_until, patience_used_up, 60, "three validations without improvement")
    live = await LiveRun.connect(folder, parse_events=False)
    try:
        assert (await live.send(cmd.Pause())).ok

        # the dashboard's `e`: its confirmation is the engine's message, shown as a warning
        async def opener():
            return await LiveRun.connect(folder)
        app = TrainTop(opener, title=folder.run_id)
        async with app.run_test(size=(120, 40)) as pilot:
            for _ in range(300):
                if app.state.status == "paused":
                    break
                await pilot.pause(0.1)
            assert app.state.early_enabled is False
            await pilot.press("e")
            for _ in range(100):
                if toasts(app):
                    break
                await pilot.pause(0.1)
            (toast,) = toasts(app)
            assert toast.severity == "warning" and "patience 2 is already used up" in toast.message
            assert "stops at the next validation" in toast.message and "--patience" in toast.message
            assert app.state.early_enabled is True
            await pilot.press("e")
            await pilot.pause(0.5)
            assert app.state.early_enabled is False
            assert "early stopping off" in toasts(app)[-1].message

        on = await ctl("early-stopping", "on")
        assert on.returncode == 0, on.stderr
        since = int(re.search(r"\((\d+) validations since the best\)", on.stdout).group(1))
        assert since > 2 and f"early-stopping on --patience {since + 2}" in on.stdout
        larger = await ctl("early-stopping", "on", "--patience", str(since + 50))
        assert larger.returncode == 0 and "used up" not in larger.stdout
        assert f"patience {since + 50}" in larger.stdout
        for bad in (["early-stopping", "maybe"], ["early-stopping"], ["early-stopping", "on", "--patience", "-1"],
                    ["pause", "--patience", "3"]):
            refused = await ctl(*bad)
            assert refused.returncode == 2 and "Traceback" not in refused.stderr and refused.stderr

        back = await live.send(cmd.EarlyStopping(patience=2))
        assert back.ok and back.data["stops_next"] and "already used up" in back.message
        paused_at = steps_logged(folder)
        await live.send(cmd.Resume())  # the run may end before this reply is on its way: not checked
    finally:
        await live.close()
    await asyncio.to_thread(wait_until, lambda: folder.report.exists(), 60, "the run stops")
    events, _ = read_events(folder.events)
    stopped = next(e for e in events if isinstance(e, ev.EarlyStopped))
    assert paused_at < stopped.step <= paused_at + 2  # the very next validation, two steps on
    assert events[-1].status == "early_stopped"


def toasts(app: TrainTop) -> list:
    """The dashboard's notifications about early stopping, oldest first."""
    return [n for n in app._notifications if "early stopping" in n.message]


def test_the_end_of_a_run_in_a_terminal_prints_its_test_like_the_headless_report(tmp_path):
    runs = tmp_path / "runs"
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen([*TRAINTOP, "run", "--runs-dir", str(runs), "--set", "train.epochs=2",
                             "--set", "data.batch_size=64", "--set", "optim.lr=0.001"],
                            stdin=slave, stdout=slave, stderr=slave, env=TERMINAL, start_new_session=True)
    os.close(slave)
    shown, quit_sent = b"", False
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the terminal closed: the process has exited
                    break
                if not chunk:
                    break
                shown += chunk
            if not quit_sent and b"completed" in shown:  # the header says so: q now leaves at once
                os.write(master, b"q")
                quit_sent = True
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    folder = resolve_run("latest", runs)
    report = folder.read_json("report.json")
    text = shown.decode(errors="replace")
    test = report["test"]
    assert f"test    accuracy {test['accuracy']:.4f}  loss {test['loss']:.4f}" in text
    assert f"{folder.run_id}: completed" in text and f"folder  {folder.path}" in text
    assert "{'" not in text


def test_an_engine_killed_under_the_dashboard_is_said_in_words_and_exits_1(tmp_path):
    """kill -9 (or the OOM killer) on the engine: the dashboard shows the run killed; leaving it
    exits 1 with a line saying so and how the run goes on, not the signal as an exit status."""
    runs = tmp_path / "runs"
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen([*TRAINTOP, "run", "--runs-dir", str(runs), "--set", "train.epochs=500",
                             "--set", "checkpoint.every_epochs=1"],
                            stdin=slave, stdout=slave, stderr=slave, env=TERMINAL, start_new_session=True)
    os.close(slave)
    shown, killed, quit_sent = b"", False, False
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                shown += chunk
            folders = sorted(runs.glob("*")) if runs.is_dir() else []
            if not killed and folders and (folders[0] / "checkpoints" / "last.pt").exists():
                os.kill(json.loads((folders[0] / "meta.json").read_text())["pid"], signal.SIGKILL)
                killed = True
            if killed and not quit_sent and b"killed" in shown:
                os.write(master, b"q")
                quit_sent = True
        assert killed and proc.wait(timeout=30) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = shown.decode(errors="replace")
    folder = resolve_run("latest", runs)
    assert "the engine was killed by SIGKILL" in text and f"traintop resume {folder.run_id}" in text


def test_lr_find_in_a_terminal_draws_the_test_and_its_key_trains_with_the_suggested_rate(tmp_path):
    """`traintop lr-find` opens the dashboard on the range test; once it suggests a rate, `u` closes
    it and trains the same config with that rate, the dashboard on the new run."""
    runs = tmp_path / "runs"
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen([*TRAINTOP, "lr-find", "--steps", "40", "--runs-dir", str(runs),
                             "--set", "train.epochs=1"],
                            stdin=slave, stdout=slave, stderr=slave, env=TERMINAL, start_new_session=True)
    os.close(slave)
    shown, sent, since = b"", [], 0
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    shown += os.read(master, 65536)
                except OSError:
                    break
            folders = sorted(runs.glob("*")) if runs.is_dir() else []
            if not sent and b"train at this lr" in shown:  # the footer offers the key once a rate is suggested
                os.write(master, b"u")
                sent.append("u")
                since = len(shown)
            elif sent == ["u"] and len(folders) == 2 and b"completed" in shown[since:]:
                os.write(master, b"q")  # the new run has finished: q leaves at once
                sent.append("q")
            elif len(sent) == 2:
                break
        assert sent == ["u", "q"], shown.decode(errors="replace")[-3000:]
        leaving = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < leaving:  # read on: a full terminal would hold it
            if select.select([master], [], [], 0.2)[0]:
                try:
                    shown += os.read(master, 65536)
                except OSError:
                    break
        assert proc.wait(timeout=5) == 0, shown.decode(errors="replace")[-3000:]
        while select.select([master], [], [], 1)[0]:  # the report printed after the dashboard closed
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    [found_folder] = [RunFolder(p) for p in runs.iterdir() if p.name.endswith("-lr-find")]
    [run_folder] = [RunFolder(p) for p in runs.iterdir() if not p.name.endswith("-lr-find")]
    found = [e for e in read_events(found_folder.events)[0] if isinstance(e, ev.LrFind) and e.done][0]
    started = read_events(run_folder.events)[0][0]
    assert isinstance(started, ev.RunStarted) and started.source == "config"
    assert found.suggested > 0 and started.config["optim"]["lr"] == found.suggested
    assert started.config["train"]["epochs"] == 1  # the same config: lr-find's --set went with it
    assert started.name == "digits-mlp"
    assert f"{run_folder.run_id}: completed" in shown.decode(errors="replace")


def test_the_output_tab_of_a_script_under_the_dashboard_shows_what_it_prints(tmp_path, engines):
    """`traintop run train.py` in a terminal: the script's prints reach the Output tab as it runs,
    as a terminal would show them: the title a script sets is not printed as text."""
    runs = tmp_path / "runs"
    script = tmp_path / "says.py"
    script.write_text(
        "import time, torch\n"
        "model = torch.nn.Linear(2, 1)\n"
        "optimizer = torch.optim.SGD(model.parameters(), lr=0.01)\n"
        "for step in range(100000):\n"
        "    loss = model(torch.ones(4, 2)).pow(2).mean()\n"
        "    optimizer.zero_grad()\n"
        "    loss.backward()\n"
        "    optimizer.step()\n"
        "    if step % 50 == 0:\n"
        "        print(f'\\x1b]0;TITLE-{step}\\x07the script says {step}', flush=True)\n"
        "    time.sleep(0.002)\n")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    env = {**TERMINAL, "TRAINTOP_RUNS_DIR": str(runs)}
    proc = subprocess.Popen([*TRAINTOP, "run", str(script)], stdin=slave, stdout=slave, stderr=slave, env=env,
                            cwd=tmp_path, start_new_session=True)
    os.close(slave)
    shown, pressed = b"", False
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and b"the script says" not in shown[pressed or 0:]:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    shown += os.read(master, 65536)
                except OSError:
                    break
            if not pressed and b"step" in shown and runs.is_dir() and any(runs.glob("*/engine.log")):
                time.sleep(1)
                os.write(master, b"6")  # the Output tab
                pressed = len(shown)
        assert pressed and b"the script says" in shown[pressed:], shown.decode(errors="replace")[-2000:]
        assert b"TITLE-" not in shown[pressed:]
    finally:
        engines.extend(resolve_run(p.name, runs) for p in runs.glob("*") if p.is_dir())  # the script's engine
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        os.close(master)
