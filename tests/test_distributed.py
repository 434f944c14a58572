"""Training on two processes through torch.distributed (gloo, on this CPU): launched by
`traintop run --nproc-per-node 2` or by the user's own torchrun, steered over the real socket.

Every rank says on stderr which command it applied at which step ("traintop rank 1/2: pause at
step 41"): the tests read those lines to prove that both ranks applied it at the same step.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from traintop.engine import events as ev
from traintop.engine.runstore import read_events, resolve_run

from watched import EXAMPLES, TRAINTOP, finished_dashboard, live_folder, steps_in

APPLIED = re.compile(r"traintop rank (\d)/2: (\w+) at step (\d+)")


def env_for(runs: Path, **extra: str) -> dict:
    return {**os.environ, "TRAINTOP_RUNS_DIR": str(runs), "OMP_NUM_THREADS": "1", **extra}


def traintop(*args, runs: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*TRAINTOP, *map(str, args), "--runs-dir", str(runs)], capture_output=True, text=True,
                          timeout=timeout, env=env_for(runs, **env))


def applied(text: str) -> dict[str, dict[int, list[int]]]:
    """command -> rank -> the steps at which that rank applied it, from the ranks' stderr lines."""
    seen: dict[str, dict[int, list[int]]] = {}
    for rank, command, step in APPLIED.findall(text):
        seen.setdefault(command, {}).setdefault(int(rank), []).append(int(step))
    return seen


def ctl(folder, *args: str, runs: Path) -> None:
    proc = traintop("ctl", folder.run_id, *args, runs=runs)
    assert proc.returncode == 0, proc.stderr


def kill(folder) -> None:
    """SIGKILL for every rank of a detached run, then for their launcher (rank 0's parent): the
    ranks first, so that none hears of its launcher's end and stops cleanly."""
    pid = (folder.read_json("meta.json") or {}).get("pid")
    if not pid:
        return
    try:
        launcher = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        ranks = [int(p) for task in Path(f"/proc/{launcher}/task").iterdir()
                 for p in (task / "children").read_text().split()]
    except (OSError, ValueError, IndexError):
        launcher, ranks = 0, [pid]
    for victim in [*ranks, launcher]:
        try:
            if victim:
                os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_until(condition, seconds: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.05)


def logged_steps(folder) -> int:
    return max(steps_in(read_events(folder.events)[0]) or [0])


def test_two_ranks_obey_pause_lr_validate_checkpoint_and_stop_from_ctl_at_the_same_step(tmp_path):
    runs = tmp_path / "runs"
    started = traintop("run", "--nproc-per-node", "2", "--detach", "--set", "train.epochs=100000",
                       "--set", "early_stopping.enabled=false", runs=runs)
    assert started.returncode == 0, started.stderr
    folder = resolve_run(started.stdout.split()[0], runs)
    try:
        wait_until(lambda: logged_steps(folder) >= 5, what="the first steps")
        for command in (["pause"], ["lr", "x2"], ["validate"], ["checkpoint"], ["resume"], ["stop"]):
            ctl(folder, *command, runs=runs)
        wait_until(lambda: folder.report.exists(), seconds=60, what="the end of the run")
    finally:
        if not folder.report.exists():
            kill(folder)
    events = read_events(folder.events)[0]
    assert events[0].world_size == 2
    assert events[-1].status == "stopped"
    assert len(list(runs.iterdir())) == 1  # one run folder for both ranks
    seen = applied(folder.log.read_text())
    for command in ("pause", "set_lr", "validate", "checkpoint", "resume", "stop"):
        assert set(seen.get(command, {})) == {0, 1}, (command, seen)
        assert seen[command][0] == seen[command][1], (command, seen)  # the same step on both ranks
    lr = [e for e in events if isinstance(e, ev.LrChanged) and e.source == "user"]
    assert lr and lr[0].new == pytest.approx(2 * lr[0].old)
    assert lr[0].step == seen["set_lr"][0][0]
    paused = [e for e in events if isinstance(e, ev.Paused)]
    assert [e.step for e in paused] == seen["pause"][0]
    steps = steps_in(events)
    assert steps == list(range(1, max(steps) + 1))  # every step once: rank 0 alone records
    rates = [e.rank_samples_per_s for e in events if isinstance(e, ev.Steps)]
    assert rates and all(len(r) == 2 for r in rates)  # each rank's own throughput beside the run's
    assert any(all(x > 0 for x in r) for r in rates)
    view = asyncio.run(resources_view_of(folder))  # and the dashboard shows them in the Resources view
    last = next(r for r in reversed(rates) if r)
    assert "throughput per rank" in view and f"rank 0: {last[0]:,.0f}" in view and f"rank 1: {last[1]:,.0f}" in view


async def resources_view_of(folder) -> str:
    """The Resources view of a finished run, as the dashboard draws it."""
    async with finished_dashboard(folder) as (app, pilot):
        app.query_one("#views").active = "resources"
        await pilot.pause(0.3)
        return str(app.query_one("#resources-view").render())


FAILING_MODEL = '''
import os
import torch


class FailsOnRankOne(torch.nn.Module):
    def __init__(self, info):
        super().__init__()
        self.net = torch.nn.Linear(info.input_shape[0], info.n_outputs)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.training and os.environ.get("RANK") == "1" and self.calls > 15:
            raise ValueError("the batch on rank one is bad")
        return self.net(x)


def model(info):
    return FailsOnRankOne(info)
'''


def test_a_rank_that_raises_ends_the_whole_run_failed_naming_that_rank_within_the_timeout(tmp_path):
    (tmp_path / "failing.py").write_text(FAILING_MODEL)
    config = tmp_path / "failing.toml"
    config.write_text('[model]\nkind = "python"\nfactory = "failing:model"\n[train]\nepochs = 50\n')
    runs = tmp_path / "runs"
    began = time.monotonic()
    proc = traintop("run", config, "--nproc-per-node", "2", "--headless", runs=runs, timeout=90,
                    TRAINTOP_DIST_TIMEOUT="10")
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - began < 60
    folder = resolve_run("latest", runs)
    finished = read_events(folder.events)[0][-1]
    assert isinstance(finished, ev.RunFinished) and finished.status == "failed"
    assert finished.error.startswith("rank 1 failed") and "the batch on rank one is bad" in finished.error
    assert json.loads(folder.report.read_text())["status"] == "failed"


SLOW_MLP = '''
import os
import time
import torch


class SlowMLP(torch.nn.Module):
    """The demo's MLP, taking its time over each training step when asked, so that a test can
    pause it before it ends."""

    def __init__(self, info):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(info.input_shape[0], 128), torch.nn.ReLU(),
                                       torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Linear(128, info.n_outputs))

    def forward(self, x):
        if self.training and os.environ.get("SLOW_STEPS"):
            time.sleep(0.03)
        return self.net(x)


def model(info):
    return SlowMLP(info)
'''


def test_data_that_fails_on_one_rank_only_is_refused_on_every_rank_before_any_folder_is_made(tmp_path):
    (tmp_path / "fac.py").write_text(
        "import os, torch\n"
        "def data():\n"
        "    if os.environ.get('RANK') == '1':\n"
        "        raise RuntimeError('rank one cannot read its data')\n"
        "    x = torch.randn(300, 4); y = (x[:, 0] > 0).long()\n"
        "    return (x[:200], y[:200]), (x[200:250], y[200:250]), (x[250:], y[250:])\n")
    config = tmp_path / "cfg.toml"
    config.write_text('[data]\nsource = "python"\nfactory = "fac:data"\n[train]\nepochs = 2\n')
    runs = tmp_path / "runs"
    proc = traintop("run", config, "--nproc-per-node", "2", "--headless", runs=runs)
    assert proc.returncode == 2, proc.stderr
    assert "rank 1 could not start: data.factory: data() failed" in proc.stderr
    assert "RuntimeError: rank one cannot read its data" in proc.stderr  # the user's own traceback
    assert "traintop/engine" not in proc.stderr and "engine/" not in proc.stderr and "E1" not in proc.stderr
    assert re.search(r"traintop: rank 0 exit code 2; rank 1 (exit code 2|stopped as another rank ended)",
                     proc.stderr)
    assert not runs.exists() or not any(runs.iterdir())


def test_two_ranks_train_digits_to_the_band_of_one_process_and_a_killed_run_resumes_to_the_same_test(tmp_path):
    (tmp_path / "slow.py").write_text(SLOW_MLP)
    config = tmp_path / "slow.toml"
    config.write_text('[model]\nkind = "python"\nfactory = "slow:model"\n[train]\nepochs = 6\n'
                      '[early_stopping]\nenabled = false\n[checkpoint]\nevery_seconds = 0\n')
    runs = tmp_path / "runs"
    whole = traintop("run", config, "--nproc-per-node", "2", "--headless", "--name", "whole", runs=runs)
    assert whole.returncode == 0, whole.stderr
    started = traintop("run", config, "--nproc-per-node", "2", "--detach", "--name", "killed", runs=runs,
                       SLOW_STEPS="1")
    assert started.returncode == 0, started.stderr
    folder = resolve_run(started.stdout.split()[0], runs)
    try:
        wait_until(lambda: logged_steps(folder) >= 12, what="the first steps")
        ctl(folder, "pause", runs=runs)
        ctl(folder, "checkpoint", runs=runs)
        assert not folder.report.exists()  # paused mid-run, its last.pt just written
    finally:
        kill(folder)  # both ranks and their launcher, at once
    wait_until(lambda: folder.locked_by() is None, seconds=30, what="the killed run's processes to end")

    refused = traintop("resume", folder.run_id, "--nproc-per-node", "3", "--headless", runs=runs)
    assert refused.returncode == 2 and "trained on 2 process(es)" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    resumed = traintop("resume", folder.run_id, "--headless", runs=runs)  # on 2 ranks, as it trained
    assert resumed.returncode == 0, resumed.stderr

    def test_of(name: str) -> dict:
        events = read_events(resolve_run(name, runs).events)[0]
        return [e for e in events if isinstance(e, ev.TestResult)][0].metrics

    assert test_of("killed") == pytest.approx(test_of("whole"), abs=1e-6)
    assert test_of("whole")["accuracy"] > 0.9  # one process: 0.9x after 6 epochs (see the report)


def test_a_users_own_ddp_loop_under_torchrun_records_one_run_and_both_ranks_obey_at_the_same_step(tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             str(EXAMPLES / "ddp_watch.py"), "--epochs", "1000", "--sleep", "0.01"],
                            cwd=tmp_path, env=env_for(runs), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        folder = live_folder(runs, proc)
        wait_until(lambda: logged_steps(folder) >= 10, what="the first steps")
        for command in (["pause"], ["lr", "x2"], ["checkpoint"], ["resume"], ["stop"]):
            ctl(folder, *command, runs=runs)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert len(list(runs.iterdir())) == 1
    events = read_events(folder.events)[0]
    assert events[0].world_size == 2 and events[0].source == "watch"
    assert events[-1].status == "stopped"
    seen = applied(err)
    for command in ("pause", "set_lr", "checkpoint", "resume", "stop"):
        assert set(seen.get(command, {})) == {0, 1}, (command, seen)
        assert seen[command][0] == seen[command][1], (command, seen)
    assert (tmp_path / "digits_ddp.pt").exists()  # both ranks left the loop together and the script ended


def test_traintop_run_launches_a_users_ddp_script_on_two_ranks_with_one_run_and_its_log_lines(tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.run([*TRAINTOP, "run", str(EXAMPLES / "ddp_watch.py"), "--nproc-per-node", "2", "--headless",
                           "--runs-dir", str(runs), "--", "--epochs", "2"], cwd=tmp_path, env=env_for(runs),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "finished: completed at epoch 2" in proc.stdout
    [folder] = list(runs.iterdir())
    events = read_events(resolve_run(str(folder), runs).events)[0]
    assert events[0].world_size == 2 and events[-1].status == "completed"
    assert max(steps_in(events)) == 2 * 24  # each rank's half of 1500 samples, in batches of 32


FRAMEWORK_SCRIPTS = {"lightning": "ddp_lightning.py", "transformers": "ddp_hf.py"}


@pytest.mark.parametrize("framework", sorted(FRAMEWORK_SCRIPTS))
def test_a_framework_trainer_under_torchrun_records_one_run_and_both_ranks_obey_at_the_same_step(tmp_path, framework):
    runs = tmp_path / "runs"
    script = Path(__file__).resolve().parent / "scripts" / FRAMEWORK_SCRIPTS[framework]
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             str(script), "1000", "0.02"],
                            cwd=tmp_path, env=env_for(runs), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        folder = live_folder(runs, proc, timeout=90)
        wait_until(lambda: logged_steps(folder) >= 5, what="the first steps")
        for command in (["pause"], ["lr", "x2"], ["checkpoint"], ["resume"], ["validate"], ["stop"]):
            ctl(folder, *command, runs=runs)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert len(list(runs.iterdir())) == 1  # one run folder for both ranks
    events = read_events(folder.events)[0]
    assert events[0].world_size == 2 and events[0].source == framework
    assert events[-1].status == "stopped"
    seen = applied(err)
    for command in ("pause", "set_lr", "checkpoint", "resume", "validate", "stop"):
        assert set(seen.get(command, {})) == {0, 1}, (command, seen)
        assert seen[command][0] == seen[command][1], (command, seen)
    asked = [e for e in events if isinstance(e, ev.Validation) and e.source == "user"]
    assert asked and asked[0].step == seen["validate"][0][0] and asked[0].val_loss > 0
    # The rate each rank's optimizer used, step by step: doubled from the step after the command, on both.
    used = [[float(x) for x in (tmp_path / f"used-rank{r}.txt").read_text().split()] for r in (0, 1)]
    changed = seen["set_lr"][0][0]
    for rates in used:
        assert rates[:changed] == [pytest.approx(0.1)] * changed
        assert rates[changed:] == [pytest.approx(0.2)] * (len(rates) - changed)
    assert len(used[0]) == len(used[1]) == seen["stop"][0][0]  # both ranks stopped after the same step
    saved = [e for e in events if isinstance(e, ev.CheckpointSaved) and e.kind == "manual"]
    assert saved and saved[0].step == seen["checkpoint"][0][0] and Path(saved[0].path).exists()


APART = '''
import torch

torch.manual_seed(0)
model = torch.nn.Linear(8, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(256, 8)
y = (x.sum(1) > 0).long()
for epoch in range(2):
    for i in range(0, 256, 32):
        loss = torch.nn.functional.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
'''


def test_a_script_on_two_ranks_that_never_joins_them_is_told_once_that_each_rank_trains_alone(tmp_path):
    (tmp_path / "apart.py").write_text(APART)
    runs = tmp_path / "runs"
    proc = subprocess.run([*TRAINTOP, "run", str(tmp_path / "apart.py"), "--nproc-per-node", "2", "--headless",
                           "--runs-dir", str(runs)], cwd=tmp_path, env=env_for(runs), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("warning [ranks_apart]") == 1, proc.stdout
    assert "init_process_group" in proc.stdout and "each rank trains alone" in proc.stdout
    [folder] = list(runs.iterdir())
    events = read_events(resolve_run(str(folder), runs).events)[0]
    warned = [e for e in events if isinstance(e, ev.RunWarning)]
    assert [e.kind for e in warned] == ["ranks_apart"] and warned[0].values["world_size"] == 2
    assert events[-1].status == "completed"


def test_two_machines_meet_at_the_endpoint_and_node_0_keeps_the_run_whoever_comes_first(tmp_path):
    """`--nnodes 2 --node-rank R --rdzv-endpoint HOST:PORT` on each machine (two runs folders on
    this one): node 1 may start first; process 0, and with it the run folder, is node 0's."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def node(rank: int) -> subprocess.Popen:
        runs = tmp_path / f"node{rank}"
        return subprocess.Popen([*TRAINTOP, "run", "--headless", "--set", "train.epochs=1", "--nproc-per-node", "1",
                                 "--nnodes", "2", "--node-rank", str(rank), "--rdzv-endpoint", f"127.0.0.1:{port}",
                                 "--runs-dir", str(runs)], env=env_for(runs), cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    second = node(1)
    time.sleep(2)
    first = node(0)
    try:
        out0, _ = first.communicate(timeout=240)
        out1, _ = second.communicate(timeout=60)
    finally:
        for proc in (first, second):
            proc.kill()
    assert first.returncode == 0 and second.returncode == 0, out0 + out1
    folder = resolve_run("latest", tmp_path / "node0")
    events = read_events(folder.events)[0]
    assert events[-1].status == "completed" and events[0].world_size == 2
    assert "finished: completed" in out0 and "finished" not in out1  # node 1's processes only train
    assert not (tmp_path / "node1").exists() or not any((tmp_path / "node1").iterdir())
