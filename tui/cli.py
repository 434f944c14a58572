"""The `traintop` command line."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from pathlib import Path

from traintop.engine.errors import UserError

EXIT_CODES = {"completed": 0, "early_stopped": 0, "stopped": 0, "failed": 1}
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="traintop", description="Run, watch and steer PyTorch training from a terminal.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def runs_dir(p):
        p.add_argument("--runs-dir", type=Path, help="where runs live (default: TRAINTOP_RUNS_DIR "
                       "or the user data dir)")

    def overrides(p):
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set train.epochs=3 (value parsed as TOML)")

    run = sub.add_parser("run", help="train a config (default: the digits demo)")
    run.add_argument("config", nargs="?", help="a TOML config; none means the built-in digits demo")
    overrides(run)
    run.add_argument("--headless", action="store_true", help="log lines instead of the dashboard")
    run.add_argument("--name", help="the run's name (default: run.name from the config)")
    runs_dir(run)

    check = sub.add_parser("check", help="validate a config and its data; no training")
    check.add_argument("config", nargs="?", help="a TOML config; none means the built-in demo")
    overrides(check)

    ls = sub.add_parser("ls", help="list runs")
    runs_dir(ls)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `traintop` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]
    args = build_parser().parse_args(argv)
    try:
        code = {"run": cmd_run, "check": cmd_check, "ls": cmd_ls}[args.command](args)
    except UserError as e:
        print(f"traintop: error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _load(args):
    from traintop.engine.config import load_config

    cfg = load_config(args.config, args.overrides)
    if getattr(args, "name", None):
        cfg.run.name = args.name
    return cfg


def cmd_run(args) -> int:
    cfg = _load(args)
    from traintop.engine.run import Run

    run = Run.prepare(cfg, args.runs_dir)
    return run_headless(run)


def run_headless(run) -> int:
    """Train on this thread, printing log lines beside it; SIGINT / SIGTERM stop after last.pt."""
    from traintop.engine.commands import Stop

    from .headless import HeadlessPrinter

    printer = HeadlessPrinter()
    printer.folder = str(run.folder.path)
    received: list[int] = []

    def on_signal(sig, frame):
        if received:  # a second Ctrl-C: the user wants out now
            sys.exit(SIGNAL_EXIT[sig])
        received.append(sig)
        print(f"\n{signal.Signals(sig).name}: stopping after this step and saving last.pt "
              "(again to quit at once)", file=sys.stderr, flush=True)
        run.send_nowait(Stop(save=True))

    for sig in SIGNAL_EXIT:
        signal.signal(sig, on_signal)

    async def follow():
        async for event in run.events():
            printer.show(event)

    follower = threading.Thread(target=asyncio.run, args=(follow(),), name="traintop-log", daemon=True)
    follower.start()
    status = run.train()
    follower.join()
    if received:
        return SIGNAL_EXIT[received[0]]
    return EXIT_CODES.get(status, 1)


def cmd_check(args) -> int:
    cfg = _load(args)
    from traintop.engine.data import load_data
    from traintop.engine.loop import Trainer
    from traintop.engine.inbox import CommandInbox
    from traintop.engine.run import resolve_device

    data = load_data(cfg)
    device = resolve_device(cfg.run.device)
    trainer = Trainer(cfg, data, device, emit=lambda e: None, inbox=CommandInbox())
    s = data.summary()
    print(f"# {args.config or 'built-in demo'}: the resolved config\n")
    print(cfg.to_toml())
    print("# data")
    print(f"task        {s['task']}")
    print(f"rows        {s['n_train']} train / {s['n_val']} val / {s['n_test']} test")
    kinds = s["feature_types"]
    n_cat = sum(1 for k in kinds.values() if k == "categorical")
    print(f"features    {len(kinds)} ({len(kinds) - n_cat} numeric, {n_cat} categorical) -> {s['inputs']} inputs")
    if s["classes"]:
        counts = s["class_counts"]["train"]
        print(f"classes     {len(s['classes'])}: " + ", ".join(
            f"{c} ({n})" for c, n in zip(s["classes"], counts)) + "  [train counts]")
    else:
        print(f"target      mean {s['target_mean']:.4g}, std {s['target_std']:.4g}")
    print(f"leakage     {s['leakage']} repeated rows across splits")
    for kind, message in data.warnings:
        print(f"warning     [{kind}] {message}")
    xb = trainer.x["train"][: cfg.data.batch_size]
    print(f"batch       inputs {tuple(xb.shape)}, targets {tuple(trainer.y['train'][: cfg.data.batch_size].shape)}")
    print(f"model       {cfg.model.kind}, {sum(p.numel() for p in trainer.params):,} parameters on {device}")
    print(f"loss        {trainer.objective.name}")
    print(f"plan        {cfg.train.epochs} epochs × {trainer.steps_per_epoch} steps")
    return 0


def cmd_ls(args) -> int:
    from traintop.engine.runstore import default_runs_dir, list_runs

    runs_dir = args.runs_dir or default_runs_dir()
    runs = list_runs(runs_dir)
    if not runs:
        print(f"no runs in {runs_dir}")
        return 0
    rows = [("RUN", "NAME", "STATUS", "EPOCHS", "BEST VAL", "TEST", "STARTED")]
    rows += [(r.run_id, r.name, r.status, str(r.epochs), r.best, r.test, r.started) for r in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0
