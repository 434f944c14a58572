"""Lightning and the Hugging Face Trainer with traintop's callback: the real frameworks, in real
processes, steered over the real socket."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
import torch

from traintop.engine import commands as cmd
from traintop.engine import events as ev
from traintop.engine.client import LiveRun
from traintop.engine.runstore import read_events

from watched import EXAMPLES, env_for, live_folder, steps_in, traintop, wait_for

FRAMEWORKS = {
    "lightning": ("lightning_digits.py", "digits-lightning"),
    "transformers": ("hf_digits.py", "digits-hf"),
}


@pytest.fixture(params=sorted(FRAMEWORKS))
def framework_run(request, tmp_path):
    """An example training under its framework, with traintop's callback; killed after the test."""
    script, name = FRAMEWORKS[request.param]
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / script), "--epochs", "1000"], cwd=tmp_path,
                            env=env_for(runs), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield request.param, proc, live_folder(runs, proc, timeout=120), runs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_the_callback_obeys_pause_lr_validate_checkpoint_and_stop(framework_run):
    source_name, proc, folder, runs = framework_run
    source = await LiveRun.connect(folder)
    await wait_for(source, lambda e: isinstance(e, ev.Validation), timeout=120)  # an epoch's validation came
    reply = await source.send(cmd.Pause())
    assert reply.ok, reply.message
    paused_at = int(reply.message.split()[-1])
    await asyncio.sleep(1.0)
    assert max(steps_in(read_events(folder.events)[0])) == paused_at
    reply = await source.send(cmd.SetLr(factor=2.0))
    assert reply.ok, reply.message
    assert (await source.send(cmd.Resume())).ok
    seen = await wait_for(source, lambda e: isinstance(e, ev.Steps) and e.step[-1] > paused_at + 5)
    assert (await source.send(cmd.Validate())).ok
    seen += await wait_for(source, lambda e: isinstance(e, ev.Validation) and e.source == "user", timeout=60)
    assert (await source.send(cmd.Checkpoint())).ok
    seen += await wait_for(source, lambda e: isinstance(e, ev.CheckpointSaved))
    assert (await source.send(cmd.Stop())).ok
    seen += await wait_for(source, lambda e: isinstance(e, ev.RunFinished), timeout=60)
    await source.close()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert seen[-1].status == "stopped"

    events = read_events(folder.events)[0]
    started = events[0]
    assert started.source == source_name and started.layers
    assert steps_in(events) == list(range(1, max(steps_in(events)) + 1))
    # The rate doubled from the step after the pause, and the framework's schedule went on from there.
    lr = {s: r for e in events if isinstance(e, ev.Steps) for s, r in zip(e.step, e.lr)}
    before, after = lr[paused_at], lr[paused_at + 1]
    assert after == pytest.approx(2 * before, rel=0.05)
    assert lr[paused_at + 5] < after  # still decaying (cosine / linear), from the new level
    saved = next(e for e in seen if isinstance(e, ev.CheckpointSaved))
    if source_name == "lightning":
        state = torch.load(saved.path, weights_only=False, map_location="cpu")
        assert "state_dict" in state and any(k.startswith("net.") for k in state["state_dict"])
    else:
        from pathlib import Path

        assert any(p.name in ("model.safetensors", "pytorch_model.bin") for p in Path(saved.path).iterdir())
    validations = [e for e in events if isinstance(e, ev.Validation)]
    assert validations[0].metrics.get("accuracy") is not None and validations[0].val_loss > 0
    listing = traintop("ls", runs=runs)
    assert "stopped" in listing.stdout


def test_lightning_accumulation_records_one_step_per_optimizer_step(tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.run([sys.executable, str(EXAMPLES / "lightning_digits.py"), "--epochs", "2",
                           "--accumulate", "4"], cwd=tmp_path, env=env_for(runs), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = next(runs.iterdir())
    events = read_events(folder / "events.jsonl")[0]
    assert steps_in(events) == list(range(1, 13))  # 24 batches an epoch, 4 to a step: 6 steps an epoch
    assert events[-1].status == "completed"


@pytest.mark.parametrize("automatic", [True, False])
def test_lightning_with_accumulation_records_each_steps_loss_as_the_mean_of_its_batches(tmp_path, automatic):
    """Lightning divides the loss it hands to callbacks by accumulate_grad_batches (it backpropagates
    that): the step's loss is still the mean of its batches' losses, as training_step computed them,
    with automatic optimization and with manual (whose loss is the module's own)."""
    import lightning as L

    from traintop.lightning import TraintopCallback

    torch.manual_seed(0)
    x = torch.randn(96 if automatic else 90, 4)  # automatic: 16 batches, the last step one batch alone
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, (x.sum(1) > 0).long()), batch_size=6)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 2)
            self.seen = []
            self.automatic_optimization = automatic

        def training_step(self, batch, i):
            loss = torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])
            self.seen.append(loss.item())
            if not automatic:
                optimizer = self.optimizers()
                self.manual_backward(loss / 3)
                if (i + 1) % 3 == 0:
                    optimizer.step()
                    optimizer.zero_grad()
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = Module()
    trainer = L.Trainer(max_epochs=1, accumulate_grad_batches=3 if automatic else 1, enable_progress_bar=False,
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[TraintopCallback(name="accumulates", runs_dir=tmp_path / "runs")])
    trainer.fit(module, data)
    events = read_events(next((tmp_path / "runs").iterdir()) / "events.jsonl")[0]
    recorded = [x for e in events if isinstance(e, ev.Steps) for x in e.loss]
    means = [sum(module.seen[i:i + 3]) / len(module.seen[i:i + 3]) for i in range(0, len(module.seen), 3)]
    assert (len(module.seen), len(recorded)) == ((16, 6) if automatic else (15, 5))
    assert recorded == pytest.approx(means, rel=1e-5)


def test_validating_after_fit_adds_nothing_to_the_finished_run_and_says_nothing(tmp_path, recwarn):
    """`trainer.fit(); trainer.validate()` is common: the run ended with fit, and the callback
    leaves it as it is, with no warning meant for a loop of your own."""
    import lightning as L

    from traintop.lightning import TraintopCallback

    x = torch.randn(64, 4)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, (x.sum(1) > 0).long()), batch_size=16)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 2)

        def training_step(self, batch, i):
            return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def validation_step(self, batch, i):
            self.log("val_loss", torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(max_epochs=2, callbacks=[TraintopCallback(name="then-validate", runs_dir=tmp_path / "runs")],
                        enable_progress_bar=False, logger=False, enable_checkpointing=False,
                        enable_model_summary=False)
    module = Module()
    trainer.fit(module, data, data)
    log = next((tmp_path / "runs").iterdir()) / "events.jsonl"
    before = log.read_bytes()
    trainer.validate(module, data, verbose=False)
    assert log.read_bytes() == before
    assert not [w for w in recwarn if "traintop" in str(w.message)], [str(w.message) for w in recwarn]


def test_a_lightning_module_without_an_optimizer_trains_watched(tmp_path):
    """configure_optimizers may return None (Lightning then steps a stand-in with no parameter
    groups): the callback records the run, with no rate, instead of failing the fit."""
    import lightning as L

    from traintop.lightning import TraintopCallback

    x = torch.randn(64, 4)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, (x.sum(1) > 0).long()), batch_size=16)

    class NoOptimizer(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 2)

        def training_step(self, batch, i):
            return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return None

    trainer = L.Trainer(max_epochs=2, callbacks=[TraintopCallback(name="no-optimizer", runs_dir=tmp_path / "runs")],
                        enable_progress_bar=False, logger=False, enable_checkpointing=False,
                        enable_model_summary=False)
    trainer.fit(NoOptimizer(), data)
    events = read_events(next((tmp_path / "runs").iterdir()) / "events.jsonl")[0]
    assert events[-1].event == "run_finished" and events[-1].status == "completed", events[-1]
