"""Mixed precision, gradient accumulation, a compiled step and the resources a run uses, through the
real CLI: bf16 learns like fp32, fp16's scaler shows true gradient norms and says what it skipped,
accumulating 4 batches is one 4x batch, a compiled step takes a new rate without compiling again,
and a paused run still reports its memory."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from traintop.engine.client import open_run
from traintop.engine.config import load_config
from traintop.engine.errors import UserError
from traintop.engine.runstore import RunFolder, resolve_run
from traintop.tui.app import TrainTop
from traintop.tui.resources import size
from watched import finished_dashboard

TRAINTOP = [sys.executable, "-m", "traintop.tui"]


def traintop(*args, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([*TRAINTOP, *args], capture_output=True, text=True, timeout=timeout)


def train(runs: Path, *settings: str, config: Path | None = None) -> list[dict]:
    """A headless run to its end; its events."""
    # Without a config: the digits MLP at the defaults, not the demo's half-minute settings.
    quick = () if config else ("data.batch_size=64", "model.hidden=[128,128]", "optim.lr=0.001")
    sets = [a for s in ("early_stopping.enabled=false", *quick, *settings) for a in ("--set", s)]
    proc = traintop("run", *([str(config)] if config else []), "--headless", "--runs-dir", str(runs), *sets)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return events_of(resolve_run("latest", runs))


def events_of(folder: RunFolder) -> list[dict]:
    return [json.loads(line) for line in folder.events.read_text().splitlines() if line.strip()]


def steps(events: list[dict], column: str) -> list:
    return [v for e in events if e["event"] == "steps" for v in e[column]]


def accuracy_of(events: list[dict]) -> float:
    return next(e for e in events if e["event"] == "test_result")["metrics"]["accuracy"]


def wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)


def test_bf16_on_the_cpu_trains_digits_to_the_same_accuracy_band_as_fp32(tmp_path):
    fp32 = train(tmp_path / "fp32", "train.epochs=6")
    bf16 = train(tmp_path / "bf16", "train.epochs=6", "train.precision=\"bf16\"")
    assert steps(bf16, "loss")[:50] != steps(fp32, "loss")[:50]  # bf16 really computed the forward pass
    assert accuracy_of(fp32) > 0.9
    assert abs(accuracy_of(bf16) - accuracy_of(fp32)) < 0.03


BIG_INPUTS = '''
import torch
from sklearn.datasets import load_digits


class Digits(torch.utils.data.Dataset):
    """Digits with raw pixel values scaled to hundreds: fp16 gradients of the first layer overflow."""

    classes = [str(i) for i in range(10)]

    def __init__(self, x, y):
        self.x, self.y = torch.tensor(x, dtype=torch.float32) * 40, torch.tensor(y)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def make_datasets():
    x, y = load_digits(return_X_y=True)
    return Digits(x[:1200], y[:1200]), Digits(x[1200:1500], y[1200:1500]), Digits(x[1500:], y[1500:])
'''


def test_fp16_records_unscaled_gradient_norms_and_warns_of_the_steps_its_scaler_skipped(tmp_path, write_config):
    (tmp_path / "bigdigits.py").write_text(BIG_INPUTS)
    config = write_config('[data]\nsource = "python"\nfactory = "bigdigits:make_datasets"\n'
                          '[optim]\nlr = 0.0001\n[train]\nepochs = 2\n')
    fp32 = train(tmp_path / "fp32", config=config)
    fp16 = train(tmp_path / "fp16", "train.precision=\"fp16\"", config=config)

    skipped = [e for e in fp16 if e["event"] == "warning" and e["kind"] == "fp16_overflow"]
    assert skipped, "the scaler's skipped steps were not reported"
    assert "skipped" in skipped[-1]["message"] and skipped[-1]["values"]["skipped_total"] >= 1
    norms16 = [n for n in steps(fp16, "grad_norm") if n is not None]
    norms32 = steps(fp32, "grad_norm")
    # unscaled: the same size as fp32's, not thousands of times larger
    assert 0.5 < statistics.median(norms16) / statistics.median(norms32) < 2
    assert next(e for e in fp16 if e["event"] == "run_finished")["status"] == "completed"


def test_accumulating_four_batches_gives_the_same_run_as_a_four_times_larger_batch(tmp_path):
    accumulated = train(tmp_path / "acc", "train.epochs=3", "data.batch_size=64", "train.accumulate=4")
    large = train(tmp_path / "large", "train.epochs=3", "data.batch_size=256")
    assert steps(accumulated, "step") == steps(large, "step")  # one step per four batches
    for a, b in zip(steps(accumulated, "loss"), steps(large, "loss")):
        assert a == pytest.approx(b, rel=1e-3, abs=1e-4)
    assert accuracy_of(accumulated) == pytest.approx(accuracy_of(large), abs=0.01)


def test_a_compiled_run_takes_a_live_learning_rate_change_without_compiling_again(tmp_path, engines):
    runs = tmp_path / "runs"
    proc = traintop("run", "--detach", "--runs-dir", str(runs), "--set", "train.compile=true",
                    "--set", "train.epochs=100000", "--set", "early_stopping.enabled=false")
    assert proc.returncode == 0, proc.stderr
    folder = resolve_run(proc.stdout.split()[0], runs)
    engines.append(folder)

    def logged_steps() -> int:
        return max(steps(events_of(folder), "step"), default=0)

    wait_until(lambda: logged_steps() > 30, 240, "steps of a second epoch")  # compiled, shapes settled
    assert traintop("ctl", str(folder.path), "lr", "x2").returncode == 0
    changed = logged_steps()
    wait_until(lambda: logged_steps() > changed + 60, 120, "steps at the new rate")
    assert traintop("ctl", str(folder.path), "stop").returncode == 0
    wait_until(lambda: any(e["event"] == "run_finished" for e in events_of(folder)), 60, "the run's end")

    events = events_of(folder)
    rates = steps(events, "lr")
    assert rates[-1] == pytest.approx(2 * rates[0])
    recompiles = [e for e in events if e["event"] == "warning" and e["kind"] == "recompile"]
    assert recompiles == [], recompiles[0]["message"]


async def test_a_paused_run_still_reports_the_memory_and_cpu_it_uses_and_the_dashboard_shows_them(live_run):
    assert traintop("ctl", str(live_run.path), "pause").returncode == 0

    def resources_while_paused() -> list[dict]:
        events = events_of(live_run)
        paused = next((i for i, e in enumerate(events) if e["event"] == "paused"), None)
        return [] if paused is None else [e for e in events[paused:] if e["event"] == "resources"]

    wait_until(resources_while_paused, 30, "a resources event while paused")
    sample = resources_while_paused()[0]
    assert 20 < sample["rss_mb"] < 100_000  # the engine's own memory, torch loaded
    assert sample["cpu_percent"] >= 0
    if torch.cuda.is_available():  # the run trains on the GPU: its memory is reported
        assert sample["devices"] and sample["devices"][0]["reserved_mb"] > 0, sample["devices"]
    else:
        assert sample["devices"] == []

    async def open_it():
        return await open_run(live_run)

    app = TrainTop(open_it, title=live_run.run_id)
    async with app.run_test(size=(120, 40)) as pilot:
        for _ in range(200):
            if app.state.status == "paused" and app.state.resources:
                break
            await pilot.pause(0.05)
        await pilot.pause(0.3)
        live_header = str(app.query_one("#header").render())
    assert "paused" in live_header and "cpu " in live_header and "rss " in live_header
    assert traintop("ctl", str(live_run.path), "stop").returncode == 0
    wait_until(lambda: events_of(live_run)[-1]["event"] == "run_finished", 60, "run_finished last")

    async with finished_dashboard(live_run) as (app, pilot):
        header = str(app.query_one("#header").render())
        app.query_one("#views").active = "resources"
        await pilot.pause(0.3)
        view = str(app.query_one("#resources-view").render())
    last = [e for e in events_of(live_run) if e["event"] == "resources"][-1]
    assert "rss " not in header  # a finished run uses nothing: its last sample is in the view
    assert f"engine process: cpu {last['cpu_percent']:.0f}%" in view
    if last["devices"]:  # trained on a GPU: its memory as the engine last sampled it
        gpu = last["devices"][0]
        assert f"cuda:0 {gpu['name']}"[:27] in view and size(gpu["reserved_mb"]) in view
    else:
        assert "no GPU in use by the engine" in view


def test_precision_is_one_of_32_bf16_fp16_written_as_text_or_as_the_number_32():
    assert load_config(None, ["train.precision=32"]).train.precision == "32"
    with pytest.raises(UserError, match=r"train\.precision .*allowed: 32, bf16, fp16"):
        load_config(None, ["train.precision=fp8"])
    with pytest.raises(UserError, match=r"train\.accumulate is 0; allowed"):
        load_config(None, ["train.accumulate=0"])


AMP_LOOP = """
import json, torch, traintop
from sklearn.datasets import load_digits

x, y = load_digits(return_X_y=True)
x, y = torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
run = traintop.watch(model, optimizer, name="amp", scaler=scaler)
true = []
for i in range(0, 640, 64):
    with torch.autocast("cpu", dtype=torch.float16):
        loss = torch.nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
    optimizer.zero_grad()
    scaler.scale(loss).backward()
    run.step(loss)  # before unscale_: the gradients still carry the scale
    scaler.unscale_(optimizer)
    true.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item())
    scaler.step(optimizer)
    scaler.update()
run.finish()
print(json.dumps(true))
"""


def test_a_watched_loop_with_autocast_and_a_grad_scaler_records_the_true_gradient_norms(tmp_path):
    script = tmp_path / "amp_loop.py"
    script.write_text(AMP_LOOP)
    runs = tmp_path / "runs"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TRAINTOP_RUNS_DIR": str(runs)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    true = json.loads(proc.stdout.strip().splitlines()[-1])
    recorded = steps(events_of(resolve_run("latest", runs)), "grad_norm")
    assert recorded == pytest.approx(true, rel=1e-3)  # not 1024 times larger


AMP_SCRIPT = """
import json, torch
from sklearn.datasets import load_digits

x, y = load_digits(return_X_y=True)
x, y = torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
losses = []
for i in range(0, 640, 64):
    with torch.autocast("cpu", dtype=torch.float16):
        loss = torch.nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
    optimizer.zero_grad()
    scaler.scale(loss).backward()
    losses.append(loss.item())
    scaler.step(optimizer)
    scaler.update()
print(json.dumps(losses))
"""


def test_a_script_with_a_grad_scaler_run_by_traintop_records_its_loss_divided_back(tmp_path):
    script = tmp_path / "amp_script.py"
    script.write_text(AMP_SCRIPT)
    runs = tmp_path / "runs"
    proc = traintop("run", str(script), "--headless", "--runs-dir", str(runs))
    assert proc.returncode == 0, proc.stderr[-2000:]
    true = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("[")))
    assert steps(events_of(resolve_run("latest", runs)), "loss") == pytest.approx(true, rel=1e-3)  # not x1024
