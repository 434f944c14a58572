"""The engine's async face, driven as a front end would: real runs on small bundled data."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from traintop.engine import commands as cmd
from traintop.engine import events as ev
from traintop.engine import gradients, loop
from traintop.engine.checkpoint import load_checkpoint
from traintop.engine.config import load_config
from traintop.engine.run import Run
from traintop.engine.runstore import read_events


LIVE: list[Run] = []


@pytest.fixture(autouse=True)
def stop_leftover_runs():
    """A failed test must not leave a loop thread training after it."""
    yield
    while LIVE:
        run = LIVE.pop()
        if run._thread is not None and run._thread.is_alive():
            run.send_nowait(cmd.Stop(save=False))
            run._thread.join(30)


def prepare(tmp_path, *overrides: str) -> Run:
    run = Run.prepare(load_config(None, list(overrides)), tmp_path / "runs")
    LIVE.append(run)
    return run


async def collect(run: Run) -> list[ev.Event]:
    return [e async for e in run.events()]


async def next_event(stream, kind: str, timeout: float = 30, where=lambda e: True) -> ev.Event:
    """The next event of `kind` (for which `where` holds) from an async event iterator."""
    async def find():
        async for e in stream:
            if e.event == kind and where(e):
                return e
        raise AssertionError(f"the run finished without a {kind} event")
    return await asyncio.wait_for(find(), timeout)


def steps_of(events) -> list[int]:
    return [s for e in events if isinstance(e, ev.Steps) for s in e.step]


async def test_digits_run_logs_every_step_once_and_tests_once(tmp_path):
    run = prepare(tmp_path, "train.epochs=5")
    run.start()
    events = await collect(run)
    assert await run.wait() == "completed"
    kinds = [e.event for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert kinds.count("run_started") == 1 and kinds.count("run_finished") == 1
    assert kinds.count("test_result") == 1
    assert kinds.index("test_result") > max(i for i, k in enumerate(kinds) if k == "steps")
    assert kinds.count("validation") == 5 and kinds.count("epoch_end") == 5
    assert steps_of(events) == list(range(1, 5 * run.trainer.steps_per_epoch + 1))
    on_disk, torn = read_events(run.folder.events)
    assert not torn and [e.event for e in on_disk] == kinds
    steps = [e for e in events if isinstance(e, ev.Steps)]
    for e in steps:
        n = len(e.step)
        assert len(e.loss) == len(e.grad_norm) == len(e.lr) == len(e.epoch) == n
        assert set(e.layer_norms) == set(run.trainer.recorder.names)
        assert e.layer_steps[0] == e.step[0] and set(e.layer_steps) <= set(e.step)
        assert all(len(norms) == len(e.layer_steps) for norms in e.layer_norms.values())
        # the total norm is the norm of the per-layer norms
        for j, step in enumerate(e.layer_steps):
            layers = [norms[j] for norms in e.layer_norms.values()]
            total = e.grad_norm[e.step.index(step)]
            assert total == pytest.approx(math.sqrt(sum(v * v for v in layers)), rel=1e-4)
    assert run.folder.best.exists() and run.folder.last.exists() and run.folder.report.exists()


async def test_pause_stops_steps_until_resume(tmp_path):
    run = prepare(tmp_path, "train.epochs=1000", "early_stopping.enabled=false")
    run.start()
    stream = run.events()
    await next_event(stream, "steps")
    reply = await run.send(cmd.Pause())
    assert reply.ok
    paused = await next_event(stream, "paused")
    await asyncio.sleep(0.5)
    assert run.trainer.step == paused.step  # nothing trained while paused
    await run.send(cmd.Resume())
    after = []
    async for e in stream:
        after.append(e)
        if isinstance(e, ev.Steps):
            break
    kinds = [e.event for e in after]
    assert kinds.index("resumed") < kinds.index("steps")
    assert "steps" not in kinds[:kinds.index("resumed")]
    assert after[-1].step[0] == paused.step + 1
    await run.send(cmd.Stop())
    await run.wait()


async def test_set_lr_takes_effect_at_the_next_step_and_is_logged(tmp_path):
    run = prepare(tmp_path, "train.epochs=1000", "early_stopping.enabled=false")
    run.start()
    stream = run.events()
    await next_event(stream, "steps")
    await run.send(cmd.Pause())
    paused = await next_event(stream, "paused")
    reply = await run.send(cmd.SetLr(value=0.02))
    assert reply.ok and reply.data["new"] == pytest.approx(0.02)
    changed = await next_event(stream, "lr_changed")
    assert (changed.old, changed.new, changed.source, changed.step) == (pytest.approx(0.001), pytest.approx(0.02), "user", paused.step)
    await run.send(cmd.Resume())
    steps = await next_event(stream, "steps")
    assert steps.step[0] == paused.step + 1 and steps.lr[0] == pytest.approx(0.02)
    used = []  # the rate inside the optimizer's step, after traintop's scale is applied
    handle = run.trainer.optimizer.register_step_pre_hook(lambda opt, *_: used.append(opt.param_groups[0]["lr"]))
    for _ in range(50):
        if used:
            break
        await next_event(stream, "steps")
    handle.remove()
    assert used and used[-1] == pytest.approx(0.02)
    await run.send(cmd.SetLr(factor=0.5))
    changed = await next_event(stream, "lr_changed")
    assert changed.new == pytest.approx(0.01)
    await run.send(cmd.Stop())
    await run.wait()


async def test_user_lr_is_a_scale_the_cosine_schedule_keeps_decaying_from(tmp_path):
    run = prepare(tmp_path, "train.epochs=4", "schedule.name=cosine")
    trainer, lr = run.trainer, run.trainer.lr
    trainer.step = 40
    scheduled_mid = lr.scheduled(40)
    trainer.set_lr(cmd.SetLr(value=scheduled_mid * 3))
    assert trainer.lr_scale.current() == pytest.approx(scheduled_mid * 3)
    trainer.set_optimizer_lr(lr.at(60))  # the schedule goes on from the new level
    assert trainer.lr_scale.current() == pytest.approx(lr.scheduled(60) * 3)
    assert lr.scheduled(60) * 3 < scheduled_mid * 3


async def test_stop_saves_last_checkpoint_and_finishes_stopped(tmp_path):
    run = prepare(tmp_path, "train.epochs=1000", "early_stopping.enabled=false")
    run.start()
    stream = run.events()
    await next_event(stream, "steps")
    assert (await run.send(cmd.Stop(save=True))).ok
    rest = [e async for e in stream]
    assert await run.wait() == "stopped"
    assert rest[-1].event == "run_finished" and rest[-1].status == "stopped"
    saved = [e for e in rest if isinstance(e, ev.CheckpointSaved) and e.kind == "last"]
    assert len(saved) == 1
    state = load_checkpoint(run.folder.last)
    assert state["step"] == run.trainer.step == rest[-1].step
    assert not any(e.event == "test_result" for e in rest)  # a stopped run can be resumed: no test yet
    late = await run.send(cmd.Pause())
    assert not late.ok and "finished" in late.message


async def test_predict_answers_while_paused(tmp_path):
    run = prepare(tmp_path, "train.epochs=1000", "early_stopping.enabled=false")
    run.start()
    stream = run.events()
    await next_event(stream, "validation")
    await run.send(cmd.Pause())
    await next_event(stream, "paused")
    step = run.trainer.step
    reply = await run.send(cmd.Predict(request_id="r1", inputs=[{"split": "val", "index": 3}]))
    assert reply.ok
    out = reply.data["outputs"][0]
    assert out["label"] in run.trainer.data.classes
    assert sum(out["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert out["true"] == run.trainer.data.classes[int(run.trainer.data.y["val"][3])]
    assert len(out["input"]) == 64
    prediction = await next_event(stream, "prediction")
    answers = [{k: v for k, v in o.items() if k != "input"} for o in reply.data["outputs"]]
    assert prediction.request_id == "r1" and prediction.outputs == answers  # the log keeps no raw inputs
    refused = await run.send(cmd.Predict(request_id="r2", inputs=[{"split": "test", "index": 0}]))
    assert not refused.ok and "test" in refused.message
    assert run.trainer.step == step  # still paused
    await run.send(cmd.Stop())
    await run.wait()


def scripted_validation(monkeypatch, val_losses: list[float]):
    """Make each scheduled validation report the next loss of `val_losses`; remember the weights."""
    real = loop.evaluate
    seen: list[dict] = []

    def fake(model, objective, feed, data, world=None):
        loss, metrics = real(model, objective, feed, data, world)
        if len(feed) != len(data.y["val"]) or len(seen) >= len(val_losses):
            return loss, metrics
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return val_losses[len(seen) - 1], metrics

    monkeypatch.setattr(loop, "evaluate", fake)
    return seen


async def test_early_stopping_stops_after_patience_and_restores_the_best_weights(tmp_path, monkeypatch):
    weights = scripted_validation(monkeypatch, [1.0, 0.8, 0.797, 0.9, 0.7999, 0.85, 0.5])
    run = prepare(tmp_path, "train.epochs=20", "early_stopping.patience=3", "early_stopping.min_delta=0.005")
    run.start()
    events = await collect(run)
    assert await run.wait() == "early_stopped"
    vals = [e for e in events if isinstance(e, ev.Validation)]
    # 0.797 is not better than 0.8 by more than min_delta; 0.7999 is not either: the best stays epoch 2
    assert [v.best for v in vals] == [True, True, False, False, False]
    assert [v.since_best for v in vals] == [0, 0, 1, 2, 3]
    stopped = next(e for e in events if isinstance(e, ev.EarlyStopped))
    assert (stopped.epoch, stopped.best_epoch, stopped.best_value) == (5, 2, 0.8)
    kinds = [e.event for e in events]
    assert kinds.index("early_stopped") < kinds.index("test_result")
    final = run.trainer.model.state_dict()
    assert all(torch.equal(final[k], weights[1][k]) for k in final)  # tested on epoch 2's weights
    best = load_checkpoint(run.folder.best)  # on the CPU, whatever device trained
    assert best["epoch"] == 2 and all(torch.equal(best["model"][k], weights[1][k].cpu()) for k in final)


async def test_early_stopping_can_be_switched_off_live(tmp_path, monkeypatch):
    scripted_validation(monkeypatch, [1.0] + [2.0] * 10)
    run = prepare(tmp_path, "train.epochs=6", "early_stopping.patience=1")
    run.session.inbox.submit(cmd.EarlyStopping(enabled=False, patience=1))
    run.start()
    events = await collect(run)
    assert await run.wait() == "completed"
    assert not any(e.event == "early_stopped" for e in events)


async def test_same_seed_gives_identical_losses(tmp_path):
    async def losses(seed):
        run = prepare(tmp_path, "train.epochs=3", f"run.seed={seed}", "model.dropout=0.2")
        run.start()
        events = await collect(run)
        return [x for e in events if isinstance(e, ev.Steps) for x in e.loss]

    first, second, other = await losses(7), await losses(7), await losses(8)
    assert first == second
    assert first != other


def autograd_gradients(monkeypatch):
    """Gradients kept as autograd's own tensors, as on a GPU, instead of the CPU's flat buffer."""
    monkeypatch.setattr(gradients, "flat_buffer", lambda params: None)


@pytest.mark.parametrize("clip", [0.0, 0.5])
async def test_the_gradient_layout_never_changes_the_numbers(tmp_path, monkeypatch, clip):
    async def steps(*overrides):  # the flat buffer is the CPU's layout: on the CPU wherever the tests run
        run = prepare(tmp_path, "train.epochs=2", "model.dropout=0.2", f"train.grad_clip={clip}", 'run.device="cpu"',
                      *overrides)
        run.start()
        batches = [e for e in await collect(run) if isinstance(e, ev.Steps)]
        return ([x for e in batches for x in e.loss], [x for e in batches for x in e.grad_norm],
                run.trainer.gradients.flat is not None)

    flat_loss, flat_norm, was_flat = await steps()
    autograd_gradients(monkeypatch)
    own_loss, own_norm, was_own_flat = await steps()
    assert was_flat and not was_own_flat
    if clip:  # the clip scale comes from each layout's own total norm, equal to float rounding
        assert flat_loss == pytest.approx(own_loss, rel=1e-5)
    else:  # autograd adds each gradient into zeros: exactly the same numbers
        assert flat_loss == own_loss
    assert flat_norm == pytest.approx(own_norm, rel=1e-4)


@pytest.mark.parametrize("layout", ["flat", "autograd"])
async def test_grad_clip_bounds_every_update_by_the_clip_norm(tmp_path, monkeypatch, layout):
    if layout == "autograd":
        autograd_gradients(monkeypatch)

    async def moved(clip):
        run = prepare(tmp_path, "train.epochs=1", "optim.name=sgd", "optim.momentum=0", "optim.lr=0.1",
                      f"train.grad_clip={clip}", "early_stopping.enabled=false")
        before = [p.detach().clone() for p in run.trainer.params]
        run.start()
        events = await collect(run)
        norms = [x for e in events if isinstance(e, ev.Steps) for x in e.grad_norm]
        after = [p.detach() for p in run.trainer.params]
        distance = math.sqrt(sum(float((a - b).pow(2).sum()) for a, b in zip(after, before)))
        return distance, norms

    clipped, norms = await moved(1e-3)
    bound = len(norms) * 0.1 * 1e-3  # at most steps x lr x clip, however large the gradients
    assert min(norms) > 1e-3  # the log keeps each norm before clipping
    assert clipped <= bound * 1.0001
    free, _ = await moved(0.0)
    assert free > 10 * bound


async def test_overfitting_is_called_out_when_val_loss_rises_while_train_loss_falls(tmp_path, monkeypatch):
    scripted_validation(monkeypatch, [1.0, 0.5, 0.6, 0.7, 0.8, 0.9])
    run = prepare(tmp_path, "train.epochs=6", "early_stopping.enabled=false")
    run.start()
    events = await collect(run)
    warnings = [e for e in events if isinstance(e, ev.RunWarning) and e.kind == "overfitting"]
    assert len(warnings) == 1 and warnings[0].step == 5 * run.trainer.steps_per_epoch


async def test_non_finite_loss_stops_the_run_as_failed_naming_the_step(tmp_path):
    run = prepare(tmp_path, "train.epochs=50", "optim.name=sgd", "optim.lr=10", "model.hidden=[32]")
    run.start()
    events = await collect(run)
    assert await run.wait() == "failed"
    warning = next(e for e in events if isinstance(e, ev.RunWarning) and e.kind == "nan_loss")
    assert f"step {warning.step}" in warning.message
    bad = [s for e in events if isinstance(e, ev.Steps) for s, x in zip(e.step, e.loss) if not math.isfinite(x)]
    assert warning.step == (bad[0] if bad else warning.step)
    assert events[-1].status == "failed" and "non-finite" in events[-1].error
    last_steps = [e for e in events if isinstance(e, ev.Steps)][-1]
    assert (events[-1].step, events[-1].epoch) == (last_steps.step[-1], last_steps.epoch[-1])  # mid-epoch: that one
    if events[-1].step > warning.step:  # the steps are read in batches: it says where the run stopped
        assert f"stopped at step {events[-1].step}" in warning.message
    assert not run.folder.last.exists()  # non-finite weights never overwrite a good checkpoint
    assert not any(e.event == "test_result" for e in events)


async def test_skip_mode_skips_non_finite_updates_and_keeps_weights_finite(tmp_path):
    run = prepare(tmp_path, "train.epochs=3", "optim.name=sgd", "optim.lr=10", "model.hidden=[32]",
                  "train.on_nan=skip")
    run.start()
    events = await collect(run)
    assert await run.wait() == "completed"
    assert any(isinstance(e, ev.RunWarning) and e.kind == "nan_loss" for e in events)
    assert all(torch.isfinite(p).all() for p in run.trainer.model.parameters())


async def test_bad_command_is_refused_and_changes_nothing(tmp_path):
    with pytest.raises(Exception, match="exactly one"):
        cmd.Command.from_json({"command": "set_lr"})
    run = prepare(tmp_path, "train.epochs=1000", "early_stopping.enabled=false")
    run.start()
    stream = run.events()
    await next_event(stream, "steps")
    await run.send(cmd.Pause())
    await next_event(stream, "paused")
    before = run.trainer.lr.at(run.trainer.step)
    reply = await run.send(cmd.Predict(request_id="x", inputs=[{"split": "val", "index": 10**6}]))
    assert not reply.ok and "index" in reply.message
    assert run.trainer.lr.at(run.trainer.step) == before
    await run.send(cmd.Stop())
    await run.wait()


async def test_validate_and_checkpoint_commands_work_mid_epoch(tmp_path):
    run = prepare(tmp_path, "train.epochs=1000", "early_stopping.enabled=false")
    run.start()
    stream = run.events()
    await next_event(stream, "steps")
    reply = await run.send(cmd.Validate())
    val = await next_event(stream, "validation")
    assert val.source == "user"
    assert reply.ok and f"val_loss {val.val_loss:.4g}" in reply.message  # the toast says what it found
    assert f"accuracy {val.metrics['accuracy']:.4g}" in reply.message
    assert (await run.send(cmd.Checkpoint())).ok
    saved = await next_event(stream, "checkpoint_saved", where=lambda e: e.kind != "best")
    assert saved.kind == "manual" and run.folder.last.exists()
    await run.send(cmd.Stop(save=False))
    await run.wait()


async def test_regression_reports_mae_rmse_r2_in_target_units(tmp_path):
    run = prepare(tmp_path, "data.source=diabetes", "train.epochs=40", "optim.lr=0.003", "model.hidden=[32]")
    run.start()
    events = await collect(run)
    test = next(e for e in events if isinstance(e, ev.TestResult))
    assert set(test.metrics) == {"mae", "rmse", "r2", "loss"}
    assert test.metrics["r2"] > 0.25 and 20 < test.metrics["mae"] < 80  # diabetes targets are 25..346


async def test_early_stopping_between_epochs_stops_at_that_step(tmp_path, monkeypatch):
    scripted_validation(monkeypatch, [1.0, 2.0, 2.0, 2.0])
    run = prepare(tmp_path, "train.epochs=5", "train.val_every_steps=5", "early_stopping.patience=2")
    run.start()
    events = await collect(run)
    stopped = next(e for e in events if isinstance(e, ev.EarlyStopped))
    assert stopped.step == 15 and run.trainer.step == 15  # not one step more
    assert steps_of(events)[-1] == 15


async def test_a_predict_input_that_breaks_preprocessing_is_refused_and_training_goes_on(tmp_path):
    run = prepare(tmp_path, "train.epochs=1000", "early_stopping.enabled=false")
    run.start()
    stream = run.events()
    await next_event(stream, "steps")
    record = {f"pixel_{r}_{c}": 0 for r in range(8) for c in range(8)}
    record["pixel_0_0"] = 10 ** 400  # too large for a float
    reply = await asyncio.wait_for(run.send(cmd.Predict(request_id="x", inputs=[record])), 30)
    assert not reply.ok and "input 0, column 'pixel_0_0'" in reply.message and "too large" in reply.message
    before = run.trainer.step
    await next_event(stream, "steps", where=lambda e: e.step[0] > before)  # still training
    await run.send(cmd.Stop())
    assert await run.wait() == "stopped"


async def test_a_model_that_fails_on_a_predict_input_refuses_it_and_training_goes_on(tmp_path, monkeypatch):
    run = prepare(tmp_path, "train.epochs=1000", "early_stopping.enabled=false")

    def index_error(*args, **kwargs):  # as an embedding does with an index past its vocabulary
        raise IndexError("index 99 is out of bounds for dimension 0 with size 10")

    monkeypatch.setattr(loop, "predict_outputs", index_error)
    run.start()
    stream = run.events()
    await next_event(stream, "steps")
    reply = await asyncio.wait_for(run.send(cmd.Predict(request_id="x", inputs=[{"split": "val", "index": 0}])), 30)
    assert not reply.ok and "IndexError" in reply.message
    before = run.trainer.step
    await next_event(stream, "steps", where=lambda e: e.step[0] > before)  # still training
    await run.send(cmd.Stop())
    assert await run.wait() == "stopped"


async def test_prediction_events_log_answers_and_whole_split_replies_can_leave_inputs_out(tmp_path):
    run = prepare(tmp_path, "train.epochs=1000", "early_stopping.enabled=false")
    run.start()
    stream = run.events()
    await next_event(stream, "validation")
    refs = [{"split": "val", "index": i} for i in range(len(run.trainer.data.y["val"]))]
    full = await run.send(cmd.Predict(request_id="one", inputs=refs[:1]))
    bare = await run.send(cmd.Predict(request_id="all", inputs=refs, with_inputs=False, weights="best"))
    assert "input" in full.data["outputs"][0]
    assert len(bare.data["outputs"]) == len(refs) and all("input" not in o for o in bare.data["outputs"])
    assert all(o["true"] in run.trainer.data.classes for o in bare.data["outputs"])
    assert bare.data["step"] == run.trainer.early.best_step  # the best weights' own step
    logged = await next_event(stream, "prediction")
    assert logged.request_id == "one" and "input" not in logged.outputs[0] and "label" in logged.outputs[0]
    await run.send(cmd.Stop())
    await run.wait()


async def test_a_requested_validation_never_changes_early_stopping(tmp_path):
    run = prepare(tmp_path, "train.epochs=1000", "early_stopping.enabled=false")
    run.start()
    stream = run.events()
    await next_event(stream, "validation")
    await run.send(cmd.Pause())
    await next_event(stream, "paused")
    state = dict(run.trainer.early.state_dict())
    await run.send(cmd.Validate())
    requested = await next_event(stream, "validation")
    assert requested.source == "user" and not requested.best
    assert run.trainer.early.state_dict() == state
    await run.send(cmd.Stop())
    await run.wait()


@pytest.mark.parametrize("flat", [False, True])
def test_the_numbers_read_as_they_come_on_the_cpu_match_those_fetched_from_a_device_at_flush(flat):
    """On a GPU a steps batch comes over in one transfer at the flush; on the CPU each number is
    read as it is recorded. Both must report the same steps (the device path runs here on CPU
    tensors, as it would on CUDA ones)."""
    from traintop.engine.recorder import StepRecorder

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]
    batches = {}
    for host in (True, False):
        grads = gradients.Gradients(params, torch.device("cpu"))
        grads.may_flatten = flat
        recorder = StepRecorder(names, grads)
        recorder.host = host
        recorder.first_step = 1
        torch.manual_seed(1)
        now = 0.0
        for step in range(40):
            loss = model(torch.randn(8, 5)).pow(2).mean()
            grads.backward(loss)
            rate = torch.tensor(0.01 * (step + 1)) if step % 3 == 0 else 0.01 * (step + 1)
            clip = torch.tensor(2.5) if step == 7 else None
            recorder.record(loss, rate, now, total=clip, scalars={"acc": torch.tensor(step / 40), "k": step})
            now += 0.004
        batches[host] = recorder.take()
    assert (batches[True]["step"], batches[True]["layer_steps"]) == (list(range(1, 41)), batches[False]["layer_steps"])
    assert len(batches[True]["layer_steps"]) < 40  # per-layer rows are sampled
    for key in ("loss", "grad_norm", "lr"):
        assert batches[True][key] == pytest.approx(batches[False][key], rel=1e-6), key
    assert batches[True]["grad_norm"][7] == 2.5
    for name in names:
        assert batches[True]["layer_norms"][name] == pytest.approx(batches[False]["layer_norms"][name], rel=1e-6)
    assert batches[True]["scalars"] == batches[False]["scalars"]
    assert batches[True]["scalars"]["k"][5] == 5.0 and batches[True]["scalars"]["acc"][20] == 0.5


@pytest.mark.parametrize("setting", ["train.accumulate=1000000", "data.batch_size=5000", "train.accumulate=50"])
def test_samples_per_second_counts_the_samples_trained(tmp_path, setting):
    """A step that would take more batches than an epoch has trains the epoch's samples, no more:
    the rate logged, over the time logged, adds up to the samples trained."""
    run = prepare(tmp_path, setting, "train.epochs=3", "early_stopping.enabled=false")
    assert run.train() == "completed"
    events = read_events(run.folder.events)[0]
    flushes = [e for e in events if isinstance(e, ev.Steps)]
    started = next(e.t for e in events if isinstance(e, ev.RunStarted))
    counted, before = 0.0, started
    for e in flushes:
        counted += e.samples_per_s * (e.t - before)
        before = e.t
    trained = 3 * run.trainer.n_train
    assert 0.3 * trained < counted < 1.5 * trained, (counted, trained)
