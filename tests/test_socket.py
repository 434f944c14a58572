"""The run stays reachable: whatever a client sends, however long the history, however big a
request. Real engine processes, their real control socket, raw clients and the real CLI."""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest

from traintop.engine import client as client_module
from traintop.engine import commands as cmd
from traintop.engine import events as ev
from traintop.engine.client import FinishedRun, LiveRun
from traintop.engine.config import load_config
from traintop.engine.run import Run
from traintop.engine.runstore import read_events, resolve_run, socket_address
from traintop.engine.server import ControlServer

TRAINTOP = [sys.executable, "-m", "traintop.tui"]
LONG = ["--set", "train.epochs=100000", "--set", "early_stopping.enabled=false"]


def traintop(*args, runs_dir, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*TRAINTOP, *args, "--runs-dir", str(runs_dir)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def detached(tmp_path, engines):
    """Start `traintop run --detach ARGS`; whatever engine is left is killed at the end."""

    def start(*args: str) -> object:
        proc = traintop("run", "--detach", *args, runs_dir=tmp_path / "runs")
        assert proc.returncode == 0, proc.stderr
        folder = resolve_run(proc.stdout.split()[0], tmp_path / "runs")
        engines.append(folder)
        return folder

    return start


async def connect_raw(folder):
    with socket_address(folder.socket) as address:  # tmp paths can pass the socket path limit
        return await asyncio.open_unix_connection(address, limit=1 << 27)


async def next_reply(reader, seconds: float = 30) -> tuple[dict, bool]:
    """The next reply line, and whether the history had ended before it."""
    history_ended = False
    deadline = time.monotonic() + seconds
    while True:
        assert time.monotonic() < deadline, f"no reply within {seconds} s"
        line = await asyncio.wait_for(reader.readline(), seconds)
        assert line, "the engine closed the connection"
        if line.startswith(b'{"history_end"'):
            history_ended = True
        elif line.startswith(b'{"reply"'):
            return json.loads(line), history_ended


async def grow_history(folder, megabytes: float) -> None:
    """Make the run's history long the way a user can: predict requests of 100 validation samples,
    whose answers the run logs, until events.jsonl holds `megabytes` MB."""
    sources = [await LiveRun.connect(folder, parse_events=False) for _ in range(4)]

    async def ask(source, k: int) -> None:
        while folder.events.stat().st_size < megabytes * 1e6:
            inputs = [{"split": "val", "index": (k * 37 + i) % 270} for i in range(100)]
            reply = await source.send(cmd.Predict(request_id="fill", inputs=inputs, with_inputs=False))
            assert reply.ok, reply.message
            k += 4

    await asyncio.gather(*(ask(s, k) for k, s in enumerate(sources)))
    for s in sources:
        await s.close()


async def collect(source, until=lambda e: False) -> list[ev.Event]:
    out = []
    async for e in source.events():
        out.append(e)
        if until(e):
            break
    return out


def wait_for_report(folder, seconds: float = 60) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        report = folder.read_json("report.json")
        if report:
            return report
        time.sleep(0.1)
    raise AssertionError(f"run {folder.run_id} wrote no report.json within {seconds} s")


# -- every line gets a reply --------------------------------------------------------------------

HOSTILE = [
    b'{"command": "set_lr", "value": ' + b"9" * 400 + b', "id": 1}',  # no float holds it
    b'{"command": "early_stopping", "patience": ' + b"9" * 5000 + b"}",  # more digits than int() takes
    b'{"command": "early_stopping", "patience": ' + b"9" * 700 + b"}",  # would make last.pt unloadable
    b'{"command": "early_stopping", "patience": 1000001}',  # past what a config's patience takes
    b'{"command": "predict", "request_id": "' + b"r" * 201 + b'", "inputs": []}',  # logged with the answer
    b"[" * 100_000,  # nested deeper than the JSON parser recurses
    b'{"command": "set_lr", "value": 1e999999}',  # parses as infinity
    b'{"command": "pause", "id": 2}\xff\xfe',  # not UTF-8
    b"[1, 2, 3]", b"null", b"42", b'"pause"', b"", b"   ",
    b'{"command": "paws", "id": {"an": ["object"]}}',  # an id no reply can echo
    b'{"command": {"nested": 1}}',
    b'{"command": "predict", "inputs": "everything"}',
    b'{"command": "stop", "save": "yes please"}',
    b'{"command": "predict", "inputs": [{"split": "val", "index": ' + b"7" * 300 + b'}]}',
]


async def test_every_hostile_command_line_gets_a_refusal_and_the_connection_keeps_working(detached):
    folder = detached(*LONG)
    reader, writer = await connect_raw(folder)
    for line in HOSTILE:
        writer.write(line + b"\n")
        await writer.drain()
        reply, _ = await next_reply(reader)
        assert reply["ok"] is False and reply["message"], (line[:60], reply)
        assert "Traceback" not in reply["message"]
    # a line longer than a command may be is refused too, naming its id and the limit
    writer.write(b'{"id": "long", "command": "predict", "inputs": ["' + b"x" * (65 << 20) + b'"]}\n')
    await writer.drain()
    reply, _ = await next_reply(reader)
    assert reply["reply"] == "long" and not reply["ok"] and "64 MB" in reply["message"]
    # and the same connection still steers the run
    writer.write(b'{"command": "pause", "id": 99}\n')
    await writer.drain()
    reply, _ = await next_reply(reader)
    assert reply == {"reply": 99, "ok": True, "message": reply["message"], "data": {}}
    assert reply["message"].startswith("paused at step")
    writer.close()
    stopped = traintop("ctl", folder.run_id, "stop", runs_dir=folder.path.parent)
    assert stopped.returncode == 0, stopped.stderr
    assert wait_for_report(folder)["status"] == "stopped"
    events, _ = read_events(folder.events)
    assert [e.event for e in events].count("paused") == 1  # only the valid pause took effect
    assert not any(isinstance(e, ev.LrChanged) for e in events)


async def test_a_client_that_goes_with_commands_still_waiting_leaves_the_run_training(detached):
    """Its replies find no one to read them; the loop answers them all the same and trains on."""
    folder = detached(*LONG)
    for _ in range(3):
        reader, writer = await connect_raw(folder)
        writer.write(b'{"command": "validate"}\n' * 50)
        await writer.drain()
        writer.close()
        await asyncio.sleep(0.5)
    source = await LiveRun.connect(folder)
    reply = await source.send(cmd.Pause())
    assert reply.ok, reply.message
    await source.close()
    stopped = traintop("ctl", folder.run_id, "stop", runs_dir=folder.path.parent)
    assert stopped.returncode == 0, stopped.stderr
    assert wait_for_report(folder)["status"] == "stopped"
    assert "Traceback" not in (folder.path / "engine.log").read_text()


async def test_a_reply_carries_the_request_id_whenever_the_line_has_a_usable_one(detached):
    folder = detached(*LONG)
    reader, writer = await connect_raw(folder)
    writer.write(HOSTILE[0] + b"\n" + b'{"command": "validate", "id": {"an": "object"}}\n')
    await writer.drain()
    first, _ = await next_reply(reader)
    assert first["reply"] == 1 and "out of range" in first["message"]
    second, _ = await next_reply(reader)
    assert second["reply"] is None and second["ok"] is True  # a valid command; its id cannot be echoed
    writer.write(b'{"command": "stop", "id": "end"}\n')
    await writer.drain()
    assert (await next_reply(reader))[0]["reply"] == "end"
    writer.close()


# -- big predicts -------------------------------------------------------------------------------


async def test_a_predict_past_the_limit_is_refused_and_a_whole_split_is_logged_as_a_summary(detached):
    folder = detached(*LONG)
    reader, writer = await connect_raw(folder)
    too_many = [{"split": "val", "index": i % 270} for i in range(cmd.MAX_PREDICT_INPUTS + 1)]
    writer.write(json.dumps({"command": "predict", "id": 5, "inputs": too_many}).encode() + b"\n")
    await writer.drain()
    refused, _ = await next_reply(reader)
    assert refused["reply"] == 5 and not refused["ok"]
    assert "10,001" in refused["message"] and "at most 10,000" in refused["message"]
    writer.close()

    source = await LiveRun.connect(folder, parse_events=False)
    whole = await source.send(cmd.Predict(request_id="split", with_inputs=False,
                                          inputs=[{"split": "val", "index": i} for i in range(270)]))
    few = await source.send(cmd.Predict(request_id="few", inputs=[{"split": "val", "index": i} for i in range(3)]))
    assert whole.ok and few.ok
    await source.send(cmd.Stop(save=False))
    await source.close()
    wait_for_report(folder)
    outputs = whole.data["outputs"]
    assert len(outputs) == 270 and all(set(o) == {"label", "probabilities", "true"} for o in outputs)
    right = sum(o["label"] == o["true"] for o in outputs)
    logged = {e.request_id: e for e in read_events(folder.events)[0] if isinstance(e, ev.Prediction)}
    assert logged["split"].outputs == [] and logged["split"].n_outputs == 270  # the asker got them all
    assert logged["split"].summary == {"inputs": 270, "held_out": 270, "accuracy": pytest.approx(right / 270)}
    assert logged["split"].step == whole.data["step"] and logged["split"].weights == "current"
    assert len(logged["few"].outputs) == 3 and logged["few"].n_outputs == 3  # a small one is logged whole
    assert max(len(line) for line in folder.events.read_bytes().splitlines()) < 200_000


def table(rows: int, seed: int = 0) -> pd.DataFrame:
    """Plants: numeric and categorical columns and a class that depends on them."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f"x{i}": rng.normal(size=rows).round(3) for i in range(8)})
    frame["soil"] = rng.choice(["clay", "loam", "sand"], size=rows)
    frame["shade"] = rng.choice(["full", "part", "none"], size=rows)
    frame["fate"] = np.where(frame["x0"] + (frame["soil"] == "loam") > 0.3, "thrived", "wilted")
    return frame


async def test_five_thousand_records_are_answered_in_one_short_pause_of_training(detached, write_csv):
    path = write_csv(table(600))
    folder = detached(*LONG, "--set", 'data.source="csv"', "--set", f'data.path="{path}"',
                      "--set", 'data.target="fate"')
    records = table(5000, seed=1).drop(columns="fate").to_dict("records")
    source = await LiveRun.connect(folder)
    await collect(source, until=lambda e: isinstance(e, ev.Steps))
    start = time.monotonic()
    reply = await source.send(cmd.Predict(request_id="many", inputs=records))
    seconds = time.monotonic() - start
    assert reply.ok, reply.message
    assert seconds < 3, f"5,000 records took {seconds:.1f} s of the training thread"
    outputs = reply.data["outputs"]
    assert len(outputs) == 5000 and {o["label"] for o in outputs} <= {"thrived", "wilted"}
    # with the weights held still, a record asked alone gets the answer it got among the many
    assert (await source.send(cmd.Pause())).ok
    many = (await source.send(cmd.Predict(request_id="again", inputs=records))).data["outputs"]
    for i in (0, 1234, 4999):
        alone = (await source.send(cmd.Predict(request_id="one", inputs=[records[i]]))).data["outputs"][0]
        assert alone["label"] == many[i]["label"]
        assert alone["probabilities"] == pytest.approx(many[i]["probabilities"], abs=1e-6)
    await source.send(cmd.Stop(save=False))
    await collect(source)
    await source.close()
    prediction = next(e for e in read_events(folder.events)[0]
                      if isinstance(e, ev.Prediction) and e.request_id == "many")
    assert prediction.outputs == [] and prediction.summary == {"inputs": 5000, "held_out": 0}


# -- lines longer than a client reads -----------------------------------------------------------


async def test_a_client_skips_a_line_longer_than_it_reads_and_keeps_following_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(client_module, "LINE_LIMIT", 1 << 20)
    run = Run.prepare(load_config(None, ["train.epochs=30", "early_stopping.enabled=false"]), tmp_path)
    # an older engine logged every answer of a whole-split request: one line of several MB
    answer = {"label": "3", "probabilities": {str(c): 0.1 for c in range(10)}, "true": "3"}
    run.session.publish(ev.Prediction(t=0.0, request_id="old", outputs=[answer] * 20_000))
    run.session.deliver()
    server = ControlServer(run)
    await server.start()
    source = await LiveRun.connect(run.folder)
    validated = asyncio.create_task(source.send(cmd.Validate()))  # answered once training starts
    run.start()
    try:
        seen = await collect(source)
        assert (await validated).ok  # replies still reach this client
    finally:
        await source.close()
        await run.wait()
        await server.close()
    notes = [e for e in seen if isinstance(e, ev.RunWarning) and e.kind == "stream"]
    assert len(notes) == 1 and "prediction event" in notes[0].message and "1 MB" in notes[0].message
    assert source.notes == [notes[0].message]
    assert not any(isinstance(e, ev.Prediction) for e in seen)
    steps = [s for e in seen if isinstance(e, ev.Steps) for s in e.step]
    started = next(e for e in seen if isinstance(e, ev.RunStarted))
    assert steps == list(range(1, 30 * started.steps_per_epoch + 1)) and seen[-1].event == "run_finished"
    assert any(isinstance(e, ev.Validation) and e.source == "user" for e in seen)


async def test_a_finished_runs_answer_too_long_to_read_is_refused_and_the_next_one_works(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    assert traintop("run", "--headless", "--set", "train.epochs=2", runs_dir=runs).returncode == 0
    monkeypatch.setattr(client_module, "LINE_LIMIT", 1 << 20)
    run = FinishedRun(resolve_run("latest", runs))
    n_train = read_events(run.folder.events)[0][0].data["n_train"]
    try:
        big = await run.send(cmd.Predict(request_id="big", inputs=[{"split": "train", "index": i}
                                                                    for i in range(n_train)]))
        assert not big.ok and "MB" in big.message and "fewer inputs" in big.message
        small = await run.send(cmd.Predict(request_id="small", inputs=[{"split": "val", "index": 0}]))
        assert small.ok and len(small.data["outputs"]) == 1
    finally:
        await run.close()


# -- a long history never holds a reply back ----------------------------------------------------


async def test_ctl_stop_on_a_run_with_a_long_history_prints_the_engines_reply(detached):
    folder = detached(*LONG)
    await grow_history(folder, 8)
    proc = traintop("ctl", folder.run_id, "stop", runs_dir=folder.path.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("stopping at step")
    assert wait_for_report(folder)["status"] == "stopped"


async def test_fifty_clients_attaching_at_once_each_get_their_reply_before_their_history_ends(detached):
    folder = detached(*LONG)
    await grow_history(folder, 8)
    size = folder.events.stat().st_size

    async def attach(i: int) -> tuple[float, bool, int]:
        start = time.monotonic()
        reader, writer = await connect_raw(folder)
        writer.write(b'{"command": "early_stopping", "id": %d}\n' % i)  # a query: changes nothing
        await writer.drain()
        received = 0
        while True:
            assert time.monotonic() < start + 60, "no reply within 60 s"
            line = await asyncio.wait_for(reader.readline(), 60)
            assert line, "the engine closed the connection"
            if line.startswith(b'{"reply"'):
                assert json.loads(line)["reply"] == i
                break
            if line.startswith(b'{"history_end"'):
                return time.monotonic() - start, True, received
            received += len(line)
        writer.close()
        return time.monotonic() - start, False, received

    results = await asyncio.gather(*(attach(i) for i in range(50)))
    assert not any(ended for _, ended, _ in results)  # no reply waited for its client's history
    assert max(received for _, _, received in results) < size / 2
    assert max(seconds for seconds, _, _ in results) < 10
    source = await LiveRun.connect(folder, parse_events=False)
    assert (await source.send(cmd.Stop(save=False))).ok  # the run is still steered as usual
    await source.close()


# -- attach --tail --------------------------------------------------------------------------------


def test_attach_headless_prints_the_header_then_only_the_last_lines_of_a_finished_runs_history(tmp_path):
    runs = tmp_path / "runs"
    whole = traintop("run", "--headless", "--set", "train.epochs=12", "--set", "early_stopping.enabled=false",
                     runs_dir=runs)
    assert whole.returncode == 0, whole.stderr
    everything = traintop("attach", "latest", "--headless", "--tail", "all", runs_dir=runs)
    assert everything.returncode == 0, everything.stderr
    lines = everything.stdout.splitlines()
    assert len(lines) > 20 and sum(line.startswith("  val ") for line in lines) == 12
    header = lines[:lines.index(next(line for line in lines if line.startswith("  plan"))) + 1]

    tail = traintop("attach", "latest", "--headless", "--tail", "4", runs_dir=runs)
    assert tail.returncode == 0, tail.stderr
    shown = tail.stdout.splitlines()
    assert shown[:len(header)] == header
    assert shown[len(header)] == f"… {len(lines) - len(header) - 4} earlier line(s) of history not shown " \
                                 "(--tail all shows every line)"
    assert shown[len(header) + 1:] == lines[-4:]
    default = traintop("attach", "latest", "--headless", runs_dir=runs).stdout.splitlines()
    assert default[len(header) + 1:] == lines[-10:]  # ten lines unless asked

    bad = traintop("attach", "latest", "--headless", "--tail", "-3", runs_dir=runs)
    assert bad.returncode == 2 and "--tail" in bad.stderr and "all" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_attach_headless_on_a_live_run_shows_a_short_tail_then_live_lines(detached):
    folder = detached(*LONG)
    runs = folder.path.parent
    time.sleep(1.0)  # a history of many validation lines
    paused = traintop("ctl", folder.run_id, "pause", runs_dir=runs)
    assert paused.returncode == 0, paused.stderr
    attach = subprocess.Popen([*TRAINTOP, "attach", folder.run_id, "--headless", "--tail", "2",
                               "--runs-dir", str(runs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    printed: queue.Queue = queue.Queue()
    reading = threading.Thread(target=lambda: [printed.put(line.rstrip("\n")) for line in attach.stdout], daemon=True)
    reading.start()
    try:
        lines = [printed.get(timeout=60)]
        while "paused at step" not in lines[-1]:  # the history's last line
            lines.append(printed.get(timeout=60))
        assert traintop("ctl", folder.run_id, "validate", runs_dir=runs).returncode == 0
        assert traintop("ctl", folder.run_id, "stop", runs_dir=runs).returncode == 0
        attach.wait(timeout=60)
        err = attach.stderr.read()
        reading.join(10)
        while not printed.empty():
            lines.append(printed.get())
    finally:
        if attach.poll() is None:
            attach.kill()
    assert attach.returncode == 0, err
    notice = next(i for i, line in enumerate(lines) if "earlier line(s) of history not shown" in line)
    assert lines[notice - 1].startswith("  plan")  # the header came whole, before it
    assert "paused at step" in lines[notice + 2]  # two history lines, the last of them the pause
    assert "val (requested)" in lines[notice + 3]  # then what happened live
    assert any(line.startswith("finished: stopped") for line in lines[notice + 3:])
