"""The engine's cost over a bare PyTorch loop, on the same model, data, batch size and optimizer.

Both sides train the digits MLP 64-128-128-10 (batch 64, Adam) from in-memory tensors with a
seeded randperm per epoch, and measure the validation split once per epoch and the test split
once at the end. The engine also records every step's loss, gradient norms (total and per layer)
and learning rate, writes events.jsonl and checkpoints, and prints its headless log (to
/dev/null). Runs are interleaved, rotating which goes first; the figure is the median ratio of engine to
bare steps/s. A third loop, the bare one with its gradients in one flat buffer as the engine keeps
them on the CPU, separates what that layout saves from what recording, events and the log cost.
`--every-seconds 120 1` runs the engine once per checkpoint.every_seconds value in each round
(the default is 120; give the run enough epochs for the timer to fire, e.g. --epochs 400).
`--signals-off` adds an engine with the signal detectors off (signals.enabled = false; the
phase timing they read stays on), interleaved with the rest, and the ratio of the engine with them
to the one without.

    python bench/overhead.py [--rounds 9] [--epochs 40] [--device cpu|cuda] [--every-seconds S ...] [--signals-off]
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
    periodic = []
    printer = HeadlessPrinter(open(os.devnull, "w"))

    async def follow():
        async for event in run.events():
            printer.apply(event)
            if event.event == "checkpoint_saved" and event.kind == "periodic":
                periodic.append(event.step)

    follower = threading.Thread(target=asyncio.run, args=(follow(),))
    start = time.perf_counter()
    follower.start()
    run.train()
    follower.join()
    speed = run.trainer.step / (time.perf_counter() - start)
    run.close()
    engine_run.saves.append(len(periodic))
    return speed


engine_run.saves = []  # periodic saves per run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both loops run there)")
    parser.add_argument("--every-seconds", type=float, nargs="+", default=[120.0], metavar="S",
                        help="checkpoint.every_seconds of the engine runs, one engine per value (default 120)")
    parser.add_argument("--signals-off", action="store_true",
                        help="also run an engine with signals.enabled=false, to see what the detectors cost")
    args = parser.parse_args()
    base = [f"train.epochs={args.epochs}", "early_stopping.enabled=false", "model.hidden=[128, 128]",
            "data.batch_size=64", f"run.device={args.device}"]
    cfg = load_config(None, base)
    data = load_data(cfg)
    set_threads(cfg.run.threads)  # the bare loop gets the engine's thread count
    engines = {f"engine {s:g}s": load_config(None, base + [f"checkpoint.every_seconds={s}"])
               for s in args.every_seconds}
    if args.signals_off:
        engines["engine, signals off"] = load_config(None, base + ["signals.enabled=false"])
    names = ["bare", "flat", *engines]
    speeds: dict[str, list[float]] = {name: [] for name in names}
    saves: dict[str, list[int]] = {name: [] for name in engines}
    runs = {"bare": lambda: bare_loop(data, cfg), "flat": lambda: bare_loop(data, cfg, flat=True)}
    runs.update({name: (lambda c=c: engine_run(c, Path(tmp))) for name, c in engines.items()})
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:  # warm up each
            runs[name]()
        for r in range(args.rounds):
            # Rotate which goes first, so drift in the machine's speed cancels out.
            k = r % len(names)
            for name in names[k:] + names[:k]:
                speeds[name].append(runs[name]())
                if name in engines:
                    saves[name].append(engine_run.saves[-1])
            print(f"round {r + 1}: " + "  ".join(f"{n} {speeds[n][-1]:6.0f}" for n in names) + " steps/s",
                  file=sys.stderr)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(f"digits MLP 64-128-128-10, batch 64, Adam, {args.epochs} epochs x {args.rounds} rounds, "
          f"torch {torch.__version__}, {args.device} ({where})")
    labels = {"bare": "bare loop", "flat": "bare loop, flat gradients"}
    for name in names:
        extra = f"  ({statistics.median(saves[name]):g} periodic saves a run)" if name in engines else ""
        print(f"{labels.get(name, name):26s} median {statistics.median(speeds[name]):7.0f} steps/s{extra}")
    for name in engines:
        for against in ("bare", "flat"):
            ratios = [e / b for e, b in zip(speeds[name], speeds[against])]
            print(f"{name} / {labels[against]:15s} median {statistics.median(ratios):.3f}  "
                  f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
    if args.signals_off:
        on = next(iter(engines))
        ratios = [a / b for a, b in zip(speeds[on], speeds["engine, signals off"])]
        print(f"{on} / engine, signals off median {statistics.median(ratios):.3f}  "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
