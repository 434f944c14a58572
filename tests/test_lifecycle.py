"""Runs that outlive the terminal: a real engine process, its real control socket, real clients."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest
import torch

from traintop.engine import commands as cmd
from traintop.engine import events as ev
from traintop.engine import server as server_module
from traintop.engine.client import FinishedRun, LiveRun, open_run
from traintop.engine.config import load_config
from traintop.engine.run import Run
from traintop.engine.runstore import RunFolder, read_events, resolve_run, socket_address
from traintop.engine.server import ControlServer

TRAINTOP = [sys.executable, "-m", "traintop.tui"]
LONG = ["--set", "train.epochs=5000", "--set", "early_stopping.enabled=false"]


def traintop(*args, runs_dir, timeout=300, check=False) -> subprocess.CompletedProcess:
    proc = subprocess.run([*TRAINTOP, *args, "--runs-dir", str(runs_dir)], capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def detached(tmp_path, engines):
    """Start `traintop run --detach`; whatever engine is left is killed at the end."""

    def start(*args: str) -> RunFolder:
        proc = traintop("run", "--detach", *args, runs_dir=tmp_path / "runs", check=True)
        run_id = proc.stdout.split()[0]
        folder = resolve_run(run_id, tmp_path / "runs")
        engines.append(folder)
        return folder

    return start


async def collect(source, until=lambda e: False) -> list[ev.Event]:
    out = []
    async for e in source.events():
        out.append(e)
        if until(e):
            break
    return out


def steps_of(events) -> list[int]:
    return [s for e in events if isinstance(e, ev.Steps) for s in e.step]


async def test_attach_mid_run_receives_every_step_once_and_the_socket_is_private(detached):
    folder = detached(*LONG)
    mode = os.stat(folder.socket)
    assert stat.S_ISSOCK(mode.st_mode)
    assert stat.S_IMODE(mode.st_mode) == 0o600 and mode.st_uid == os.getuid()
    await asyncio.sleep(1.0)  # attach mid-run
    source = await LiveRun.connect(folder)
    seen = await collect(source, until=lambda e: isinstance(e, ev.Steps) and e.step[-1] > 1500)
    assert (await source.send(cmd.Stop())).ok
    seen += await collect(source)
    await source.close()
    assert seen[0].event == "run_started" and seen[-1].event == "run_finished"
    assert steps_of(seen) == list(range(1, seen[-1].step + 1))
    on_disk, _ = read_events(folder.events)
    assert [e.event for e in on_disk] == [e.event for e in seen]
    for _ in range(100):
        if not folder.socket.exists():
            break
        await asyncio.sleep(0.05)
    assert not folder.socket.exists()  # removed when the run ends


def test_a_run_folder_deeper_than_the_socket_path_limit_is_still_reachable(tmp_path, engines):
    runs = tmp_path / ("deep-" * 12) / ("runs-" * 12)  # the socket path passes 108 bytes
    proc = traintop("run", "--detach", *LONG, runs_dir=runs, check=True)
    folder = resolve_run(proc.stdout.split()[0], runs)
    engines.append(folder)
    assert len(str(folder.socket)) > 108
    paused = traintop("ctl", folder.run_id, "pause", runs_dir=runs)
    assert paused.returncode == 0 and "paused" in paused.stdout, paused.stderr
    stopped = traintop("ctl", folder.run_id, "stop", runs_dir=runs)
    assert stopped.returncode == 0, stopped.stderr
    for _ in range(200):
        if folder.read_json("report.json"):
            break
        time.sleep(0.1)
    assert (folder.read_json("report.json") or {}).get("status") == "stopped"


async def test_commands_from_a_client_take_effect_and_are_logged(detached):
    folder = detached(*LONG)
    source = await LiveRun.connect(folder)
    await collect(source, until=lambda e: isinstance(e, ev.Steps))
    assert (await source.send(cmd.Pause())).ok
    paused = (await collect(source, until=lambda e: e.event == "paused"))[-1]
    await asyncio.sleep(0.5)
    assert (await source.send(cmd.SetLr(value=0.0123))).ok
    assert (await source.send(cmd.Resume())).ok
    await collect(source, until=lambda e: isinstance(e, ev.Steps))
    assert (await source.send(cmd.SetLr(factor=2))).ok
    assert (await source.send(cmd.Stop())).ok
    await collect(source)
    await source.close()
    events, _ = read_events(folder.events)
    kinds = [e.event for e in events]
    p, r = kinds.index("paused"), kinds.index("resumed")
    assert "steps" not in kinds[p:r]
    changes = [e for e in events if isinstance(e, ev.LrChanged)]
    assert [(c.new, c.source) for c in changes] == [(pytest.approx(0.0123), "user"), (pytest.approx(0.0246), "user")]
    assert changes[0].step == paused.step
    after = next(e for e in events[r:] if isinstance(e, ev.Steps))
    assert after.step[0] == paused.step + 1 and after.lr[0] == pytest.approx(0.0123)
    assert events[-1].event == "run_finished" and events[-1].status == "stopped"


async def test_two_clients_at_once_both_see_every_event(detached):
    folder = detached("--set", "train.epochs=60", "--set", "early_stopping.enabled=false")
    a, b = await LiveRun.connect(folder), await LiveRun.connect(folder)
    seen_a, seen_b = await asyncio.gather(collect(a), collect(b))
    await a.close(), await b.close()
    on_disk, _ = read_events(folder.events)
    lines = [e.to_line() for e in on_disk]
    assert [e.to_line() for e in seen_a] == lines == [e.to_line() for e in seen_b]
    assert steps_of(seen_a) == list(range(1, 60 * on_disk[0].steps_per_epoch + 1))


async def test_a_client_killed_mid_stream_leaves_the_run_training(detached):
    folder = detached(*LONG)
    code = ("import asyncio, sys\n"
            "from traintop.engine.client import LiveRun\nfrom traintop.engine.runstore import RunFolder\n"
            "async def main():\n"
            "    source = await LiveRun.connect(RunFolder(__import__('pathlib').Path(sys.argv[1])))\n"
            "    async for e in source.events():\n"
            "        print(e.event, flush=True)\n"
            "asyncio.run(main())\n")
    client = subprocess.Popen([sys.executable, "-c", code, str(folder.path)], stdout=subprocess.PIPE, text=True)
    for line in client.stdout:
        if line.strip() == "validation":
            break
    client.kill()
    client.wait()
    source = await LiveRun.connect(folder)
    before = steps_of(await collect(source, until=lambda e: isinstance(e, ev.Validation)))[-1]
    later = await collect(source, until=lambda e: isinstance(e, ev.Validation))
    assert steps_of(later)[-1] > before  # still training
    await source.send(cmd.Stop(save=False))
    await collect(source)
    await source.close()


async def test_bad_commands_get_an_error_reply_and_change_nothing(detached):
    folder = detached(*LONG)
    with socket_address(folder.socket) as address:  # tmp paths can pass the socket path limit
        reader, writer = await asyncio.open_unix_connection(address, limit=1 << 26)
    writer.write(b'not json\n{"command": "paws", "id": 7}\n{"command": "set_lr", "id": 8}\n')
    await writer.drain()
    replies = []
    while len(replies) < 3:
        line = await asyncio.wait_for(reader.readline(), 30)
        if line.startswith(b'{"reply"'):
            replies.append(json.loads(line))
    assert [r["ok"] for r in replies] == [False, False, False]
    assert "JSON" in replies[0]["message"]
    assert replies[1]["reply"] == 7 and "pause" in replies[1]["message"]
    assert replies[2]["reply"] == 8 and "exactly one" in replies[2]["message"]
    writer.close()
    source = await LiveRun.connect(folder)
    await collect(source, until=lambda e: isinstance(e, ev.Steps))
    await source.send(cmd.Stop(save=False))
    events = await collect(source)
    await source.close()
    assert not any(isinstance(e, ev.LrChanged) for e in events)


async def test_a_slow_client_is_dropped_and_never_stalls_the_run(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(server_module, "MAX_BACKLOG", 50_000)  # several batches
    # A validation every step makes a log far larger than the socket's kernel buffer.
    run = Run.prepare(load_config(None, ["train.epochs=100", "early_stopping.enabled=false",
                                         "train.val_every_steps=1"]), tmp_path)
    server = ControlServer(run)
    await server.start()
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with socket_address(run.folder.socket) as address:
        slow.connect(address)  # connects, then never reads while the run trains
    run.start()
    assert await asyncio.wait_for(run.wait(), 120) == "completed"
    for _ in range(200):  # the dropped client's connection ends by itself, not at close
        if not server.tasks:
            break
        await asyncio.sleep(0.05)
    assert not server.tasks
    await server.close()
    assert "dropped a client that read too slowly" in capfd.readouterr().err
    slow.settimeout(5)
    received = b""
    while chunk := slow.recv(1 << 20):  # what reached it before the cut, then the end
        received += chunk
    slow.close()
    assert 0 < len(received) < len(run.folder.events.read_bytes())
    assert not run.folder.socket.exists()


def test_torn_last_line_is_skipped_and_said(tmp_path):
    runs = tmp_path / "runs"
    traintop("run", "--headless", "--set", "train.epochs=2", runs_dir=runs, check=True)
    folder = resolve_run("latest", runs)
    whole, torn = read_events(folder.events)
    assert not torn
    with open(folder.events, "a") as f:
        f.write('{"event":"steps","t":9.5,"step":[41,42],"loss":[0.1')
    events, torn = read_events(folder.events)
    assert torn and [e.to_line() for e in events] == [e.to_line() for e in whole]
    proc = traintop("attach", "latest", "--headless", runs_dir=runs)
    assert proc.returncode == 0 and "torn" in proc.stderr and "finished: completed" in proc.stdout
    source = asyncio.run(open_run(folder))
    assert isinstance(source, FinishedRun) and source.torn
    refused = asyncio.run(source.send(cmd.Pause()))
    assert not refused.ok and "completed" in refused.message
    proc = traintop("ctl", "latest", "pause", runs_dir=runs)  # refused by the run's state, as a refused command is
    assert proc.returncode == 1 and "has ended (completed): nothing to steer" in proc.stderr, proc.stderr
    folder.report.unlink()
    with open(folder.events, "r+") as f:  # its end lost: killed
        lines = f.read().splitlines(keepends=True)
        f.seek(0)
        f.truncate()
        f.writelines(line for line in lines if '"run_finished"' not in line)
    proc = traintop("ctl", "latest", "pause", runs_dir=runs)
    assert proc.returncode == 1 and "nothing to steer" in proc.stderr and "it was killed" in proc.stderr


def test_export_writes_one_row_per_step_and_per_validation(tmp_path):
    runs = tmp_path / "runs"
    traintop("run", "--headless", "--set", "train.epochs=3", "--set", "data.batch_size=64", runs_dir=runs, check=True)
    out = tmp_path / "tables"
    traintop("export", "latest", "--format", "csv", "--out", str(out), runs_dir=runs, check=True)
    steps = (out / "steps.csv").read_text().splitlines()
    vals = (out / "validation.csv").read_text().splitlines()
    assert steps[0].startswith("step,epoch,loss,grad_norm,lr") and len(steps) == 1 + 3 * 20
    assert [int(r.split(",")[0]) for r in steps[1:]] == list(range(1, 61))
    assert vals[0].startswith("step,epoch,val_loss,accuracy") and len(vals) == 1 + 3


def test_resume_after_sigkill_reproduces_the_uninterrupted_run(tmp_path, detached):
    runs = tmp_path / "runs"
    config = ["--set", "train.epochs=120", "--set", "early_stopping.enabled=false", "--set", "data.batch_size=64",
              "--set", "model.hidden=[128,128]", "--set", "model.dropout=0.2", "--set", "checkpoint.every_epochs=1"]
    traintop("run", "--headless", *config, "--name", "whole", runs_dir=runs, check=True)
    whole = resolve_run("whole", runs)
    victim = detached(*config, "--name", "victim")
    deadline = time.monotonic() + 60
    while not victim.last.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(victim.read_json("meta.json")["pid"], signal.SIGKILL)
    time.sleep(0.2)
    assert victim.socket.exists()  # the killed engine left a stale socket behind
    listing = traintop("ls", runs_dir=runs, check=True).stdout
    assert any("victim" in line and "killed" in line for line in listing.splitlines())
    killed_events, _ = read_events(victim.events)
    assert killed_events[-1].event != "run_finished"

    proc = traintop("resume", "victim", "--headless", runs_dir=runs)
    assert proc.returncode == 0, proc.stderr
    assert "resumed from checkpoints/last.pt" in proc.stdout
    expected, got = whole.read_json("report.json"), victim.read_json("report.json")
    assert got["status"] == "completed" and got["test"] == expected["test"]  # exactly equal
    for name in ("best.pt", "last.pt"):
        a = torch.load(whole.checkpoints / name, weights_only=True)["model"]
        b = torch.load(victim.checkpoints / name, weights_only=True)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    events, torn = read_events(victim.events)
    kinds = [e.event for e in events]
    assert kinds.count("run_started") == 1 and kinds.count("test_result") == 1
    resumed = [e for e in events if isinstance(e, ev.Resumed) and e.source == "checkpoint"]
    assert len(resumed) == 1
    assert steps_of(events) == list(range(1, 120 * events[0].steps_per_epoch + 1))
    assert "completed" in [line for line in traintop("ls", runs_dir=runs).stdout.splitlines() if "victim" in line][0]
    again = traintop("resume", "victim", runs_dir=runs)
    assert again.returncode == 2 and "completed" in again.stderr
