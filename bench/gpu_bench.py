"""The engine on a GPU, for bench/cuda_check.sh: host syncs per training step, the engine against a
bare loop on a CIFAR-sized CNN and a small transformer in fp32, bf16 and compiled, and the
resources figures against nvidia-smi.

    python bench/gpu_bench.py syncs      [--device cuda]   # must print 0 syncs per step for each
    python bench/gpu_bench.py speed      [--device cuda] [--epochs 3]
    python bench/gpu_bench.py resources  [--device cuda]

`--device cpu --small` runs each on the CPU with small data, to check the script itself.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))  # the factories below, for the engine's config

from traintop.engine import commands as cmd  # noqa: E402
from traintop.engine.config import load_config  # noqa: E402
from traintop.engine.loop import Trainer  # noqa: E402
from traintop.engine.run import Run  # noqa: E402

SIZES = {"n": int(os.environ.get("GPU_BENCH_N", "8192")), "seq": 64, "vocab": 1000}
CLASSES = [str(i) for i in range(10)]
WARM_STEPS = 2  # the steps that compile and pick kernels: their syncs are counted apart
VARIANTS = {"fp32": [], "bf16": ['train.precision="bf16"'], "compiled": ["train.compile=true"]}


class Split(torch.utils.data.Dataset):
    """Inputs and labels in memory; the engine reads them into device tensors once."""

    classes = CLASSES

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _labelled(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Ten classes from a fixed random projection: something to learn."""
    w = torch.randn(x[0].numel(), 10, generator=torch.Generator().manual_seed(seed))
    return (x.flatten(1).float() @ w).argmax(1)


def images() -> tuple[Split, Split, Split]:
    """CIFAR-sized: 3x32x32 images, ten classes."""
    g = torch.Generator().manual_seed(0)
    n = SIZES["n"]
    x = torch.randn(n + 2 * (n // 8), 3, 32, 32, generator=g)
    y = _labelled(x, 1)
    return Split(x[:n], y[:n]), Split(x[n:n + n // 8], y[n:n + n // 8]), Split(x[n + n // 8:], y[n + n // 8:])


def tokens() -> tuple[Split, Split, Split]:
    """Sequences of 64 token ids from a vocabulary of 1000, ten classes."""
    g = torch.Generator().manual_seed(0)
    n = SIZES["n"]
    x = torch.randint(2, SIZES["vocab"], (n + 2 * (n // 8), SIZES["seq"]), generator=g)
    y = x[:, :8].sum(1) % 10
    return Split(x[:n], y[:n]), Split(x[n:n + n // 8], y[n:n + n // 8]), Split(x[n + n // 8:], y[n + n // 8:])


def cnn(info=None) -> nn.Module:
    """A small CIFAR CNN: three conv blocks, then a linear head."""
    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))
    return nn.Sequential(block(3, 32), block(32, 64), block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(128, 10))


class Transformer(nn.Module):
    """Two encoder layers over token embeddings, mean-pooled into a classifier."""

    def __init__(self, width: int = 128):
        super().__init__()
        self.embed = nn.Embedding(SIZES["vocab"], width)
        self.position = nn.Parameter(torch.zeros(SIZES["seq"], width))
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x.long()) + self.position).mean(1))


def transformer(info=None) -> nn.Module:
    return Transformer()


MODELS = {"cnn": ("images", "cnn"), "transformer": ("tokens", "transformer")}


def config(model: str, variant: str, device: str, epochs: int, extra=()):
    data, factory = MODELS[model]
    return load_config(None, [f'data.source="python"', f'data.factory="gpu_bench:{data}"', 'model.kind="python"',
                              f'model.factory="gpu_bench:{factory}"', "data.batch_size=128",
                              f"train.epochs={epochs}", "early_stopping.enabled=false", "optim.lr=0.001",
                              "checkpoint.every_seconds=0", f'run.device="{device}"', *VARIANTS[variant], *extra])


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bare_loop(model_name: str, variant: str, device: str, epochs: int) -> float:
    """The same model, data, batch size and optimizer as a plain PyTorch loop; steps per second."""
    train, val, _ = (images if model_name == "cnn" else tokens)()
    torch.manual_seed(0)
    model = (cnn if model_name == "cnn" else transformer)().to(device)
    x, y = train.x.to(device), train.y.to(device)
    xv, yv = val.x.to(device), val.y.to(device)
    lr = torch.tensor(0.001, device=device) if variant == "compiled" else 0.001
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    forward, step = model, optimizer.step
    if variant == "compiled":
        forward, step = torch.compile(model), torch.compile(optimizer.step)
    dtype = torch.bfloat16 if variant == "bf16" else None
    loss_fn = nn.CrossEntropyLoss()
    bs, n, steps = 128, len(y), 0
    sync(device)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch)).to(device)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(forward(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            step()
            steps += 1
        model.eval()
        with torch.no_grad():
            loss_fn(model(xv), yv).item()
    sync(device)
    return steps / (time.perf_counter() - start)


def engine_loop(model_name: str, variant: str, device: str, epochs: int, runs: Path) -> tuple[float, str]:
    """traintop's config engine on the same; steps per second from the first step to the report,
    and the phases of its sampled steps as the Timing view shows them (mean ms of each)."""
    from traintop.engine.runstore import read_events

    run = Run.prepare(config(model_name, variant, device, epochs), runs)
    run.serve()
    sync(device)
    start = time.perf_counter()
    run.train()
    sync(device)
    speed = run.trainer.step / (time.perf_counter() - start)
    run.close()
    timing: dict[str, list[float]] = {}
    for e in read_events(run.session.folder.events)[0]:
        for name, column in getattr(e, "timing", {}).items():
            timing.setdefault(name, []).extend(column)
    samples = len(timing.pop("step", []))
    phases = " ".join(f"{name} {1000 * sum(v) / len(v):.2f}" for name, v in timing.items() if v)
    return speed, f"{samples} sampled steps, ms: {phases or '-'}"


def speed(args) -> None:
    """Engine against bare, each once to warm up (compile, cuDNN autotuning) and then timed."""
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in MODELS:
            for variant in VARIANTS:
                bare_loop(model_name, variant, args.device, 1)
                engine_loop(model_name, variant, args.device, 1, Path(tmp))  # warm-up
                bare = bare_loop(model_name, variant, args.device, args.epochs)
                engine, phases = engine_loop(model_name, variant, args.device, args.epochs, Path(tmp))
                print(f"{model_name:<12}{variant:<10} bare {bare:8.1f} steps/s   engine {engine:8.1f} steps/s   "
                      f"engine/bare {engine / bare:.3f}   (a step {1000 / engine:.2f} ms; {phases})", flush=True)


def syncs(args) -> None:
    """Host syncs inside the training steps (flushes, validations and the test are outside them).

    The first steps are counted apart: they compile (torch.compile) and pick kernels (cuDNN), work
    done once. A step after them must make none. The code behind each sync site is written to
    --where file with the stack that led there, to find it again."""
    cuda = args.device.startswith("cuda")
    original = Trainer.train_step
    current = {"step": 0}
    found: list[tuple[int, str, list[str]]] = []  # (step, site, stack) of each sync

    def watched(self, batches):
        current["step"] += 1
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            return original(self, batches)
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode(0)

    def seen(message, category, filename, lineno, file=None, line=None):
        if str(message).startswith("called a synchronizing"):  # not the mode's own notice that it is on
            found.append((current["step"], f"{Path(filename).name}:{lineno}", traceback.format_stack(limit=25)[:-1]))

    Trainer.train_step = watched
    failed = False
    stacks: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in MODELS:
            for variant in [*VARIANTS, "fp16"]:
                extra = ['train.precision="fp16"'] if variant == "fp16" else []
                run = Run.prepare(config(model_name, "fp32" if variant == "fp16" else variant, args.device, 1,
                                         extra), Path(tmp))
                current["step"], found[:] = 0, []
                with warnings.catch_warnings():
                    warnings.simplefilter("always")
                    warnings.showwarning = seen
                    run.train()
                run.close()
                steps = run.trainer.step
                first = [f for f in found if f[0] <= WARM_STEPS]
                later = [f for f in found if f[0] > WARM_STEPS]
                per_step = len(later) / max(1, steps - WARM_STEPS)
                # fp16's GradScaler reads found_inf on the host before it steps: one sync a step, by design
                ok = per_step == 0 or variant == "fp16"
                failed |= not ok
                sites = sorted({site for _, site, _ in later or first})[:3]
                print(f"{model_name:<12}{variant:<10} {steps} steps: {len(first)} host syncs in the first "
                      f"{WARM_STEPS} (warm-up), then {per_step:.2f} per step{'' if ok else '  FAIL'} "
                      f"{' '.join(sites)}", flush=True)
                for label, group in (("warm-up", first), ("later steps", later)):
                    kinds: dict[str, list] = {}  # by the frames that led to it, the five most frequent
                    for step, site, stack in group:
                        kinds.setdefault("".join(stack[-4:]), []).append((step, site, stack))
                    for same in sorted(kinds.values(), key=len, reverse=True)[:5]:
                        step, site, stack = same[0]
                        stacks.append(f"== {model_name} {variant}: {len(same)} of the {len(group)} in the {label} "
                                      f"(steps {sorted({s for s, _, _ in same})[:8]}), at {site}:\n{''.join(stack)}")
    Trainer.train_step = original
    if args.where and stacks:
        Path(args.where).write_text("\n".join(stacks))
        print(f"where each kind of sync comes from: {args.where}")
    if failed:
        sys.exit(1)


def nvidia_smi(pid: int) -> tuple[float | None, float | None]:
    """This process's memory (MB) and the GPU's utilisation (%) as nvidia-smi reports them."""
    try:
        apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=10).stdout
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    used = next((float(line.split(",")[1]) for line in apps.splitlines() if line.split(",")[0].strip() == str(pid)),
                None)
    util = float(gpu.split()[0]) if gpu.split() else None
    return used, util


def resources(args) -> None:
    """While the CNN trains: the engine's resources events against nvidia-smi, side by side.

    nvidia-smi's per-process memory includes the CUDA context (a few hundred MB), which torch's
    reserved memory does not: theirs should exceed ours by about that, steadily.
    """
    from traintop.engine import events as ev

    with tempfile.TemporaryDirectory() as tmp:
        run = Run.prepare(config("cnn", "fp32", args.device, 10_000), Path(tmp))
        run.serve()
        rows: list[str] = []
        done = threading.Event()

        def watch():
            seen = 0
            while not done.is_set():
                time.sleep(0.5)
                lines = run.session.folder.events.read_text().splitlines()
                for line in lines[seen:]:
                    e = ev.parse_line(line)
                    if isinstance(e, ev.Resources):
                        used, util = nvidia_smi(os.getpid())
                        d = e.devices[0] if e.devices else {}
                        rows.append(f"t {e.t:5.1f}s  ours: reserved {d.get('reserved_mb', math.nan):8.1f} MB "
                                    f"util {d.get('utilization', math.nan):5.1f}%   nvidia-smi: used {used} MB "
                                    f"util {util}%   cpu {e.cpu_percent:.0f}% rss {e.rss_mb:.0f} MB")
                        print(rows[-1], flush=True)
                seen = len(lines)
                if len(rows) >= args.samples:
                    run.session.send_nowait(cmd.Stop())
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        run.train()
        done.set()
        watcher.join(timeout=5)
        run.close()
    if not rows:
        print("FAIL: no resources event while training")
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["syncs", "speed", "resources"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4, help="resources: samples to compare")
    parser.add_argument("--where", help="syncs: a file for the stack behind each kind of sync")
    parser.add_argument("--small", action="store_true", help="small data: to check the script on a CPU")
    args = parser.parse_args()
    if args.small:
        SIZES["n"] = 512
        os.environ["GPU_BENCH_N"] = "512"
    {"syncs": syncs, "speed": speed, "resources": resources}[args.what](args)


if __name__ == "__main__":
    main()
