"""Reading the signals: planted faults are called out, healthy runs stay quiet, timing and the
learning-rate range test reach the user."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import traintop
from traintop.engine import events as ev
from traintop.engine.config import demo_config, load_config
from traintop.engine.run import Run
from traintop.engine.runstore import read_events

TESTS = Path(__file__).resolve().parent
SAMPLES = TESTS.parent / "sample_configs"


def train(tmp_path, config: Path | None, *overrides: str) -> list[ev.Event]:
    run = Run.prepare(load_config(config, list(overrides)), tmp_path / "runs")
    run.train()
    return read_events(run.folder.events)[0]


def warnings(events) -> dict[str, ev.RunWarning]:
    """The first warning of each kind."""
    found: dict[str, ev.RunWarning] = {}
    for e in events:
        if isinstance(e, ev.RunWarning):
            found.setdefault(e.kind, e)
    return found


def faults_config(tmp_path, factory: str) -> Path:
    shutil.copy(TESTS / "scripts" / "faults.py", tmp_path / "faults.py")
    path = tmp_path / "fault.toml"
    path.write_text(f'[model]\nkind = "python"\nfactory = "faults:{factory}"\n')
    return path


# (fault, config, overrides, the warning expected, the last step by which it must come, kinds that must not)
FAULTS = [
    ("rate far too high", None, ["optim.lr=0.3", "train.epochs=4"], "divergence", 40, ["plateau"]),
    ("rate far too low", None, ["optim.name=sgd", "optim.lr=1e-5", "optim.momentum=0", "train.epochs=6"],
     "plateau", 100, ["divergence", "underfitting"]),
    ("deep sigmoid network", "deep_sigmoid", ["train.epochs=4"], "vanishing_gradients", 60, ["plateau"]),
    ("model too small", SAMPLES / "python_factory.toml", ["model.kind=linear", "train.epochs=15"],
     "underfitting", 200, ["overfitting", "plateau"]),
    ("memorises a small table", None, ["data.split=[0.05,0.45,0.5]", "data.batch_size=16", "model.hidden=[512,512]",
                                       "train.epochs=40", "early_stopping.enabled=false"], "overfitting", 200,
     ["underfitting"]),
    ("a loss spike at step 150", "spike_at_150", ["train.epochs=10"], "loss_spike", 150, ["divergence"]),
]


@pytest.mark.parametrize("fault, config, overrides, kind, by_step, not_kinds", FAULTS, ids=[f[0] for f in FAULTS])
def test_a_planted_fault_raises_its_warning_within_bounded_steps(tmp_path, fault, config, overrides, kind, by_step,
                                                                 not_kinds):
    if isinstance(config, str):
        config = faults_config(tmp_path, config)
    found = warnings(train(tmp_path, config, *overrides))
    assert kind in found, f"{fault}: no {kind} warning; got {sorted(found)}"
    w = found[kind]
    assert w.step <= by_step and w.message and w.advice and w.id == kind
    assert not set(not_kinds) & set(found), f"{fault}: also {sorted(found)}"
    if kind == "loss_spike":
        assert w.step == 150 and "step 150" in w.message
    if kind == "divergence":
        assert w.values["key"] == "-" and "press -" in w.advice


@pytest.mark.parametrize("config", sorted(p.name for p in SAMPLES.glob("*.toml") if p.name != "all_keys.toml"))
def test_the_sample_configs_train_without_a_single_warning(tmp_path, config):
    # The demo's first 60 epochs: its whole 300 take half a minute (and raised no warning either).
    found = warnings(train(tmp_path, SAMPLES / config, *(["train.epochs=60"] if config == "digits_mlp.toml" else [])))
    assert not found, {k: w.message for k, w in found.items()}


def test_a_first_batch_that_reads_low_by_chance_is_not_where_the_loss_started(tmp_path):
    """Seed 205 of the diabetes sample: its first batch's loss, 0.25, is far under its first epoch's
    mean, 0.37; judged from it the loss, down to 0.23, had hardly moved (plateau, underfitting)."""
    events = train(tmp_path, SAMPLES / "diabetes_regression.toml", "run.seed=205")
    first = next(e for e in events if isinstance(e, ev.Steps)).loss[0]
    assert first == pytest.approx(0.247, abs=0.005)
    found = warnings(events)
    assert not found, {k: w.message for k, w in found.items()}


def test_a_persisting_condition_is_one_warning_not_a_stream(tmp_path):
    events = train(tmp_path, None, "optim.name=sgd", "optim.lr=1e-5", "optim.momentum=0", "train.epochs=12")
    plateaus = [e for e in events if isinstance(e, ev.RunWarning) and e.kind == "plateau"]
    assert plateaus and len({w.id for w in plateaus}) == 1
    assert [w.count for w in plateaus] == list(range(1, len(plateaus) + 1))


class Sleepy(torch.utils.data.Dataset):
    """Digits-sized random data whose every sample takes a while to load."""

    def __init__(self, sleep: float):
        self.x, self.y, self.sleep = torch.randn(512, 16), torch.randint(0, 4, (512,)), sleep

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        time.sleep(self.sleep)
        return self.x[i], self.y[i]


def watched_epochs(tmp_path, sleep: float, epochs: int) -> list[ev.Event]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(Sleepy(sleep), batch_size=32)
    run = traintop.watch(model, optimizer, name="sleepy", runs_dir=tmp_path / "runs")
    for epoch in range(epochs):
        for xb, yb in run.iter(loader, epoch=epoch):
            loss = nn.functional.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            run.step(loss)
            optimizer.step()
    run.finish()
    return read_events(run.session.folder.events)[0]


def test_a_loop_waiting_on_a_sleeping_loader_is_called_data_bound(tmp_path):
    events = watched_epochs(tmp_path, sleep=0.002, epochs=1)  # about 64 ms per batch in the loader
    found = warnings(events)
    assert "data_bound" in found and found["data_bound"].values["share"] > 0.5
    timing = [e.timing for e in events if isinstance(e, ev.Steps) and e.timing]
    assert timing and set(timing[0]) == {"step", "data", "forward+backward", "update"}


def test_a_quick_loader_in_a_watched_loop_raises_nothing(tmp_path):
    assert not warnings(watched_epochs(tmp_path, sleep=0.0, epochs=3))


def watched_losses(tmp_path, losses: list[float]) -> list[ev.Event]:
    """A watched loop whose step losses are `losses`, exactly (a hinge loss, say, that reaches 0)."""
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with traintop.watch(model, optimizer, name="losses", runs_dir=tmp_path / "runs") as run:
        for value in losses:
            loss = model(torch.ones(4, 2)).sum() * 0 + value
            optimizer.zero_grad()
            loss.backward()
            run.step(loss)
            optimizer.step()
    return read_events(run.session.folder.events)[0]


def test_a_spike_from_a_loss_of_exactly_zero_is_called_without_a_ratio(tmp_path):
    events = watched_losses(tmp_path, [1.0] + [0.0] * 149 + [5.0] + [0.0] * 49)
    assert steps_of(events) == list(range(1, 201)) and events[-1].status == "completed"
    spike = warnings(events)["loss_spike"]
    assert spike.step == 151 and spike.values["times"] is None
    assert "5 against a recent level of 0 (the median of the last 20 steps)" in spike.message


# Epoch means of a healthy spirals run (seed 182): at epoch 12 one unstable stretch raised the
# training loss and, more, the validation loss; both fell back at once.
SPIRALS_T = [0.6443, 0.553, 0.3326, 0.1126, 0.0488, 0.0334, 0.0239, 0.0198, 0.0097, 0.0075, 0.007, 0.0188]
SPIRALS_V = [0.6344, 0.4883, 0.1992, 0.0762, 0.0809, 0.0248, 0.0154, 0.007, 0.0055, 0.0071, 0.009, 0.07]


@pytest.mark.parametrize("last_train, warned", [(0.0188, False), (0.006, True)])
def test_a_gap_widened_by_an_unstable_step_is_not_overfitting_but_one_with_training_still_falling_is(
        tmp_path, last_train, warned):
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with traintop.watch(model, optimizer, name="fit", runs_dir=tmp_path / "runs") as run:
        for train, val in zip([*SPIRALS_T[:-1], last_train], SPIRALS_V):
            for _ in range(22):
                loss = model(torch.ones(4, 2)).sum() * 0 + train
                optimizer.zero_grad()
                loss.backward()
                run.step(loss)
                optimizer.step()
            run.validate(val_loss=val)
    found = warnings(read_events(run.session.folder.events)[0])
    assert ("overfitting" in found) == warned, found
    if warned:
        assert "widened from -0.004" in found["overfitting"].message


def test_a_detector_that_fails_is_turned_off_with_a_word_and_the_run_trains_on(tmp_path, monkeypatch):
    from traintop.engine.signals.flow import GradientFlow

    def broken(self, batch):
        raise RuntimeError("a bug of its own")

    monkeypatch.setattr(GradientFlow, "steps", broken)
    events = watched_losses(tmp_path, [1.0] * 300)
    assert steps_of(events) == list(range(1, 301)) and events[-1].status == "completed"
    off = [e for e in events if isinstance(e, ev.RunWarning) and e.kind == "signals_off"]
    assert len(off) == 1 and "the flow detector failed" in off[0].message and "a bug of its own" in off[0].message


def steps_of(events) -> list[int]:
    return [s for e in events if isinstance(e, ev.Steps) for s in e.step]


def test_watch_takes_signal_thresholds_and_refuses_unknown_ones(tmp_path):
    model = nn.Linear(2, 1)
    with pytest.raises(traintop.engine.errors.UserError, match="signals.spike_madz"):
        traintop.watch(model, name="bad", runs_dir=tmp_path / "runs", signals={"spike_madz": 3})
    run = traintop.watch(model, name="ok", runs_dir=tmp_path / "runs", signals={"spike_mads": 20})
    assert run.signals.settings.spike_mads == 20
    run.finish()


def test_headless_log_shows_phase_timing_on_request(tmp_path):
    out = subprocess.run([sys.executable, "-m", "traintop.tui", "run", "--headless", "--runs-dir", str(tmp_path),
                          "--set", "train.epochs=2", "--set", "signals.log_timing=true"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [x for x in out.stdout.splitlines() if x.startswith("epoch")]
    assert any("time data" in x and "forward" in x and "backward" in x and "update" in x for x in lines), out.stdout
    events = read_events(next(tmp_path.iterdir()) / "events.jsonl")[0]
    sample = next(e.timing for e in events if isinstance(e, ev.Steps) and e.timing)
    assert set(sample) == {"step", "data", "forward", "backward", "update"} and sample["step"][0] == 1


def test_lr_find_on_a_range_that_never_trains_names_the_range_and_what_to_try():
    from traintop.engine.lrfind import suggest

    lrs = [1e-7 * 1.2 ** i for i in range(40)]
    rate, why = suggest(lrs, [2.3] * 40)
    assert rate == 0.0 and why.startswith(f"the loss never fell at rates from 1e-07 to {lrs[-1]:.3g}")
    assert "--lr-max" in why


def test_lr_find_calls_a_divergence_only_a_rise_that_undoes_part_of_the_fall_not_noise_near_zero():
    """A long test on data the model fits exactly: once the loss is about 1e-9, noise of a few
    times that is no divergence; the real rise at high rates is."""
    import random

    from traintop.engine.lrfind import range_test

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    noise = random.Random(0)

    def step_fn():
        lr = optimizer.param_groups[0]["lr"]
        if lr > 1.0:  # too high: the loss climbs back
            return 1e-9 + lr * 5.0
        return max(2.3 * (1 - lr / 1e-3), 0.0) + 1e-9 * 10 ** noise.uniform(0, 3)

    result = range_test(step_fn, None, optimizer, lr_min=1e-7, lr_max=10.0, steps=2000)
    assert result.reason.startswith("the loss diverged at") and result.lr[-1] > 1.0, result.reason
    assert 1e-4 < result.suggested < 1.0
    assert optimizer.param_groups[0]["lr"] == 0.1


def test_lr_find_suggests_a_rate_that_trains_the_demo_into_its_band(tmp_path):
    out = subprocess.run([sys.executable, "-m", "traintop.tui", "lr-find", "--runs-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    command = next(x for x in out.stdout.splitlines() if "train with it:" in x).split("train with it:")[1].split()
    assert command[:2] == ["traintop", "run"] and command[-2] == "--set" and command[-1].startswith("optim.lr=")
    lr = float(command[-1].split("=")[1])
    assert 1e-4 <= lr <= 0.1
    folder = next(tmp_path.iterdir())
    found = [e for e in read_events(folder / "events.jsonl")[0] if isinstance(e, ev.LrFind)]
    assert found[-1].done and found[-1].suggested == lr  # the command trains with exactly the rate suggested
    assert found[-1].run_args == command[1:]
    assert sum(len(e.lr) for e in found) >= 20
    run = Run.prepare(demo_config([f"optim.lr={lr}"]), tmp_path / "runs")  # the demo lr-find measured
    run.train()
    events = read_events(run.folder.events)[0]
    test = next(e for e in events if isinstance(e, ev.TestResult))
    assert test.metrics["accuracy"] >= 0.95


def test_lr_find_in_a_watched_loop_restores_the_model_and_optimizer(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(256, 8), torch.randint(0, 3, (256,))
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run = traintop.watch(model, optimizer, name="find", runs_dir=tmp_path / "runs")

    def step():
        i = torch.randint(0, 256, (32,))
        loss = nn.functional.cross_entropy(model(x[i]), y[i])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.step(loss)  # the loop's own step function, reporting as it does in training
        run.validate(val_loss=loss.item())
        return loss

    suggested = run.lr_find(step, steps=60)
    assert suggested > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert optimizer.param_groups[0]["lr"] == 0.05 and not optimizer.state
    for _ in range(3):
        step()
    run.finish()
    events = read_events(run.session.folder.events)[0]
    done = [e for e in events if isinstance(e, ev.LrFind) and e.done]
    assert done and done[0].suggested == suggested
    assert [s for e in events if isinstance(e, ev.Steps) for s in e.step] == [1, 2, 3]  # the range test's are not
    assert [e.step for e in events if isinstance(e, ev.Validation)] == [1, 2, 3]
    assert events[-1].step == 3


async def test_the_timing_view_shows_the_phases_and_the_suggested_rate(tmp_path):
    from textual.widgets import TabbedContent

    from traintop.engine.client import open_run
    from traintop.engine.runstore import RunFolder
    from traintop.tui.app import TrainTop

    out = subprocess.run([sys.executable, "-m", "traintop.tui", "lr-find", "--runs-dir", str(tmp_path / "find"),
                          "--steps", "40"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    timed = subprocess.run([sys.executable, "-m", "traintop.tui", "run", "--headless", "--runs-dir",
                            str(tmp_path / "run"), "--set", "train.epochs=2"], capture_output=True, text=True,
                           timeout=120)
    assert timed.returncode == 0, timed.stderr
    for runs, expected in ((tmp_path / "find", "suggested learning rate"), (tmp_path / "run", "forward")):
        folder = RunFolder(next(runs.iterdir()))

        async def opener():
            return await open_run(folder)

        app = TrainTop(opener, title=folder.run_id)
        async with app.run_test(size=(120, 40)) as pilot:
            for _ in range(100):
                if app.state.status == "finished":
                    break
                await pilot.pause(0.05)
            if runs.name == "run":
                app.main.query_one("#views", TabbedContent).active = "timing"
            await pilot.pause(0.5)
            text = "\n".join(strip.text for strip in app.screen._compositor.render_strips())
            assert expected in text, text
            palette = [c.help for c in app.get_system_commands(app.screen)]
            if runs.name == "run":  # no rate suggested: no key to train with one
                assert "train at this lr" not in text and not any("train at this lr" in h for h in palette)
                continue
            # an lr-find run opens on its Timing tab, and offers its key in the footer and the palette
            assert app.main.query_one("#views", TabbedContent).active == "timing"
            assert "u train at this lr" in text and "key u: train at this lr" in palette
            await pilot.press("u")
            await pilot.pause(0.2)
        done = [e for e in read_events(folder.events)[0] if isinstance(e, ev.LrFind) and e.done][0]
        assert app.outcome == "train" and app.next_run == done.run_args
        assert app.next_run[-2:] == ["--set", f"optim.lr={done.suggested!r}"]
