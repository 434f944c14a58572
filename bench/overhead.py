"""The engine's cost over a bare PyTorch loop, on the same model, data, batch size and optimizer.

Both sides train the digits MLP 64-128-128-10 (batch 64, Adam) from in-memory tensors with a
seeded randperm per epoch, and measure the validation split once per epoch and the test split
once at the end. The engine also records every step's loss, gradient norms (total and per layer)
and learning rate, writes events.jsonl and checkpoints, and prints its headless log (to
/dev/null). Runs are interleaved, alternating which goes first; the figure is the median ratio of engine
to bare steps/s.

    python bench/overhead.py [--rounds 9] [--epochs 40] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from traintop.engine.config import load_config
from traintop.engine.data import load_data
from traintop.engine.models import build_model
from traintop.engine.run import Run, set_threads
from traintop.tui.headless import HeadlessPrinter


def bare_loop(data, cfg) -> float:
    """A plain PyTorch loop over the same tensors; steps per second."""
    torch.manual_seed(cfg.run.seed)
    device = torch.device(cfg.run.device)
    x, y = torch.as_tensor(data.x["train"], device=device), torch.as_tensor(data.y["train"], device=device)
    xv, yv = torch.as_tensor(data.x["val"], device=device), torch.as_tensor(data.y["val"], device=device)
    xt, yt = torch.as_tensor(data.x["test"], device=device), torch.as_tensor(data.y["test"], device=device)
    model = build_model(cfg, x.shape[1], len(data.classes)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    bs, n, steps = cfg.data.batch_size, len(y), 0
    start = time.perf_counter()
    for epoch in range(cfg.train.epochs):
        model.train()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch)).to(device)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            loss = loss_fn(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
        model.eval()
        with torch.no_grad():
            out = model(xv)
            val_loss, acc = loss_fn(out, yv).item(), (out.argmax(1) == yv).float().mean().item()
    with torch.no_grad():
        out = model(xt)
        test_loss, test_acc = loss_fn(out, yt).item(), (out.argmax(1) == yt).float().mean().item()
    return steps / (time.perf_counter() - start)


def engine_run(cfg, runs_dir: Path) -> float:
    """traintop's engine as `traintop run --headless` drives it; steps/s from start to report."""
    run = Run.prepare(cfg, runs_dir)
    printer = HeadlessPrinter(open(os.devnull, "w"))

    async def follow():
        async for event in run.events():
            printer.show(event)

    follower = threading.Thread(target=asyncio.run, args=(follow(),))
    start = time.perf_counter()
    follower.start()
    run.train()
    follower.join()
    return run.trainer.step / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both loops run there)")
    args = parser.parse_args()
    cfg = load_config(None, [f"train.epochs={args.epochs}", "early_stopping.enabled=false",
                             "model.hidden=[128, 128]", "data.batch_size=64", f"run.device={args.device}"])
    data = load_data(cfg)
    set_threads(cfg.run.threads)  # the bare loop gets the engine's thread count
    bare, engine, ratios = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        bare_loop(data, cfg), engine_run(cfg, Path(tmp))  # warm up both
        for r in range(args.rounds):
            if r % 2:  # alternate which goes first, so drift in the machine's speed cancels out
                e = engine_run(cfg, Path(tmp))
                b = bare_loop(data, cfg)
            else:
                b = bare_loop(data, cfg)
                e = engine_run(cfg, Path(tmp))
            bare.append(b), engine.append(e), ratios.append(e / b)
            print(f"round {r + 1}: bare {b:7.0f} steps/s  engine {e:7.0f} steps/s  ratio {e / b:.3f}",
                  file=sys.stderr)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(f"digits MLP 64-128-128-10, batch 64, Adam, {args.epochs} epochs x {args.rounds} rounds, "
          f"torch {torch.__version__}, {args.device} ({where})")
    print(f"bare loop  median {statistics.median(bare):7.0f} steps/s")
    print(f"engine     median {statistics.median(engine):7.0f} steps/s")
    print(f"ratio      median {statistics.median(ratios):.3f}  (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
