"""What `traintop.watch` costs a loop of your own, and how fast a command reaches it.

Two loops train the digits MLP 64-128-128-10 (batch 64, Adam), each three ways, all interleaved
in rounds that rotate which goes first:
- the tight loop: in-memory tensors sliced by a seeded permutation, nothing else in the step (the
  hardest case for any per-step cost);
- the example loop: the loop of `examples/train_digits.py` (a DataLoader, a cosine schedule, a
  validation with accuracy each epoch), the plain script the README starts from;
and each of them
- bare: as written;
- watch: with the lines of `traintop.watch` (`examples/watch_digits.py` for the example loop);
- zero-line: bare, under the hooks `traintop run train.py` installs (optimizer step hooks,
  backward capture, the DataLoader's epochs).
The figures are the median ratio of each to its bare loop's steps/s. Then command latency: a
client on the control socket sends `set_lr x1` again and again to a watched loop; the time from
sending to the reply (which comes once the step boundary has applied it), p50 and p95.

    python bench/watch.py [--rounds 9] [--epochs 30] [--threads 1] [--commands 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def data():
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16
    y = torch.tensor(digits.target)
    return x[:1500], y[:1500], x[1500:], y[1500:]


def model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def train(epochs: int, seed: int = 0) -> float:
    """The loop a user writes; steps/s."""
    x, y, xv, yv = data()
    model, optimizer = model_and_optimizer(seed)
    n, bs, steps = len(x), 64, 0
    start = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
        with torch.no_grad():
            F.cross_entropy(model(xv), yv)
    return steps / (time.perf_counter() - start)


def watched(epochs: int, runs: Path) -> float:
    """The same loop as `train`, with the three lines of traintop.watch."""
    import traintop

    x, y, xv, yv = data()
    model, optimizer = model_and_optimizer(0)
    run = traintop.watch(model, optimizer, name="bench-watch", runs_dir=runs, epochs=epochs)
    n, bs, steps = len(x), 64, 0
    start = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            run.step(loss)
            optimizer.step()
            steps += 1
        with torch.no_grad():
            val_loss = F.cross_entropy(model(xv), yv)
        run.validate(val_loss=val_loss)
    rate = steps / (time.perf_counter() - start)
    run.finish()
    return rate


def zero_line(epochs: int, runs: Path, loop=None) -> float:
    """A bare loop (`train`, or `loop`) under the hooks of `traintop run train.py`."""
    from traintop.engine.runstore import RunFolder
    from traintop.engine.script import AutoWatch
    from traintop.engine.session import Session
    from traintop.engine.watch import WatchedRun

    folder = RunFolder.create(runs, "bench-script")
    session = Session.open(folder, name="bench-script", source="script", config={})
    run = WatchedRun(session, None, None, name="bench-script", config={}, epochs=epochs, early_stopping=None)
    auto = AutoWatch(run)
    session.serve()
    auto.install()
    try:
        rate = (loop or train)(epochs)
    finally:
        auto.uninstall()
    run.finish("completed")
    return rate


def example_setup(epochs: int):
    """What examples/train_digits.py sets up before its loop (seed 0, cosine schedule)."""
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, val = order[:1500], order[1500:]
    loader = DataLoader(TensorDataset(x[train], y[train]), batch_size=64, shuffle=True)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))
    return loader, x[val], y[val], model, optimizer, scheduler


def example(epochs: int) -> float:
    """The loop of examples/train_digits.py (its print left out); steps/s."""
    loader, xv, yv, model, optimizer, scheduler = example_setup(epochs)
    steps, start = 0, time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            steps += 1
        model.eval()
        with torch.no_grad():
            out = model(xv)
            val_loss = F.cross_entropy(out, yv).item()
            accuracy = (out.argmax(1) == yv).float().mean().item()
    return steps / (time.perf_counter() - start)


def example_watched(epochs: int, runs: Path) -> float:
    """The loop of examples/watch_digits.py; steps/s."""
    import traintop

    loader, xv, yv, model, optimizer, scheduler = example_setup(epochs)
    run = traintop.watch(model, optimizer, name="bench-example", runs_dir=runs)
    steps, start = 0, time.perf_counter()
    for epoch in run.epochs(epochs):
        model.train()
        for xb, yb in run.iter(loader):
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            run.step(loss)
            optimizer.step()
            scheduler.step()
            steps += 1
        model.eval()
        with torch.no_grad():
            out = model(xv)
            val_loss = F.cross_entropy(out, yv).item()
            accuracy = (out.argmax(1) == yv).float().mean().item()
        run.validate(val_loss=val_loss, accuracy=accuracy)
    rate = steps / (time.perf_counter() - start)
    run.finish()
    return rate


def latency(commands: int, runs: Path) -> list[float]:
    """Seconds from sending `set_lr x1` to its reply, over the socket, to a watched loop."""
    import traintop
    from traintop.engine import commands as cmd
    from traintop.engine.client import LiveRun

    x, y, xv, yv = data()
    model, optimizer = model_and_optimizer(0)
    run = traintop.watch(model, optimizer, name="bench-latency", runs_dir=runs)
    times: list[float] = []

    async def client():
        source = await LiveRun.connect(run.session.folder, parse_events=False)
        for _ in range(commands):
            sent = time.perf_counter()
            reply = await source.send(cmd.SetLr(factor=1.0))
            assert reply.ok, reply.message
            times.append(time.perf_counter() - sent)
            await asyncio.sleep(0.01)
        await source.close()

    thread = threading.Thread(target=asyncio.run, args=(client(),), daemon=True)
    thread.start()
    n, bs = len(x), 64
    epoch = 0
    while thread.is_alive():
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            run.step(loss)
            optimizer.step()
        epoch += 1
    run.finish()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--commands", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = Path(tempfile.mkdtemp(prefix="traintop-bench-watch-"))
    e = args.epochs
    loops = {"bare": lambda: train(e), "watch": lambda: watched(e, runs), "zero-line": lambda: zero_line(e, runs),
             "example bare": lambda: example(e), "example watch": lambda: example_watched(e, runs),
             "example zero-line": lambda: zero_line(e, runs, example)}
    bare_of = {"watch": "bare", "zero-line": "bare", "example watch": "example bare",
               "example zero-line": "example bare"}
    train(2)  # warm up
    example(2)
    rates: dict[str, list[float]] = {name: [] for name in loops}
    ratios: dict[str, list[float]] = {name: [] for name in bare_of}
    names = list(loops)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        got = {name: loops[name]() for name in order}
        for name, rate in got.items():
            rates[name].append(rate)
        for name, bare in bare_of.items():
            ratios[name].append(got[name] / got[bare])
        print(f"round {r + 1}: " + "  ".join(f"{n} {got[n]:.0f}" for n in names) + "\n   "
              + "  ".join(f"{n}/bare {ratios[n][-1]:.3f}" for n in ratios), flush=True)
    print(f"\nsteps/s (median of {args.rounds} rounds, {args.epochs} epochs each, {args.threads} thread(s)):")
    for name in names:
        print(f"  {name:<18} {statistics.median(rates[name]):8.0f}")
    for name in ratios:
        print(f"  {name + '/bare':<23} {statistics.median(ratios[name]):.3f}   (rounds: min "
              f"{min(ratios[name]):.3f}, max {max(ratios[name]):.3f})")
    times = sorted(latency(args.commands, runs))
    p50 = times[len(times) // 2]
    p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
    print(f"\ncommand latency, ctl -> applied at a step boundary ({len(times)} commands): "
          f"p50 {p50 * 1000:.2f} ms  p95 {p95 * 1000:.2f} ms")


if __name__ == "__main__":
    main()
