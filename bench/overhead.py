"""The engine's cost over a bare PyTorch loop, on the same model, data, batch size and optimizer.

Both sides train the digits MLP 64-128-128-10 (batch 64, Adam) from in-memory tensors with a
seeded randperm per epoch, and measure the validation split once per epoch and the test split
once at the end. The engine also records every step's loss, gradient norms (total and per layer)
and learning rate, writes events.jsonl and checkpoints, and prints its headless log (to
/dev/null). Runs are interleaved, rotating which goes first; the figure is the median ratio of engine to
bare steps/s. A third loop, the bare one with its gradients in one flat buffer as the engine keeps
them on the CPU, separates what that layout saves from what recording, events and the log cost.

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


def bare_loop(data, cfg, flat: bool = False) -> float:
    """A plain PyTorch loop over the same tensors; steps per second.

    `flat`: its gradients in one flat buffer, zeroed with one fill, as the engine keeps them on
    the CPU; set against the engine, it leaves only what recording, events and the log cost.
    """
    torch.manual_seed(cfg.run.seed)
    device = torch.device(cfg.run.device)
    x, y = torch.as_tensor(data.x["train"], device=device), torch.as_tensor(data.y["train"], device=device)
    xv, yv = torch.as_tensor(data.x["val"], device=device), torch.as_tensor(data.y["val"], device=device)
    xt, yt = torch.as_tensor(data.x["test"], device=device), torch.as_tensor(data.y["test"], device=device)
    model = build_model(cfg, x.shape[1], len(data.classes)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    grads = torch.zeros(sum(p.numel() for p in model.parameters()), device=device) if flat else None
    if flat:
        offset = 0
        for p in model.parameters():
            p.grad = grads[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
    bs, n, steps = cfg.data.batch_size, len(y), 0
    start = time.perf_counter()
    for epoch in range(cfg.train.epochs):
        model.train()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch)).to(device)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            loss = loss_fn(model(x[idx]), y[idx])
            if flat:
                grads.zero_()
            else:
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
    names = ["bare", "flat", "engine"]
    speeds: dict[str, list[float]] = {name: [] for name in names}
    runs = {"bare": lambda: bare_loop(data, cfg), "flat": lambda: bare_loop(data, cfg, flat=True),
            "engine": lambda: engine_run(cfg, Path(tmp))}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:  # warm up each
            runs[name]()
        for r in range(args.rounds):
            # Rotate which goes first, so drift in the machine's speed cancels out.
            for name in names[r % 3:] + names[:r % 3]:
                speeds[name].append(runs[name]())
            print(f"round {r + 1}: " + "  ".join(f"{n} {speeds[n][-1]:6.0f}" for n in names) + " steps/s",
                  file=sys.stderr)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(f"digits MLP 64-128-128-10, batch 64, Adam, {args.epochs} epochs x {args.rounds} rounds, "
          f"torch {torch.__version__}, {args.device} ({where})")
    labels = {"bare": "bare loop", "flat": "bare loop, flat gradients", "engine": "engine"}
    for name in names:
        print(f"{labels[name]:26s} median {statistics.median(speeds[name]):7.0f} steps/s")
    for against in ("bare", "flat"):
        ratios = [e / b for e, b in zip(speeds["engine"], speeds[against])]
        print(f"engine / {labels[against]:15s} median {statistics.median(ratios):.3f}  "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
