"""The `traintop` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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

    def foreground(p):
        mode = p.add_mutually_exclusive_group()
        mode.add_argument("--headless", action="store_true", help="log lines instead of the dashboard")
        mode.add_argument("--detach", action="store_true",
                          help="train in the background; print the run id and return")

    run = sub.add_parser("run", help="train a config (default: the digits demo)")
    run.add_argument("config", nargs="?", help="a TOML config; none means the built-in digits demo")
    overrides(run)
    foreground(run)
    run.add_argument("--name", help="the run's name (default: run.name from the config)")
    run.add_argument("--into", type=Path, help=argparse.SUPPRESS)  # a detached run's folder
    runs_dir(run)

    check = sub.add_parser("check", help="validate a config and its data; no training")
    check.add_argument("config", nargs="?", help="a TOML config; none means the built-in demo")
    overrides(check)

    ls = sub.add_parser("ls", help="list runs")
    runs_dir(ls)

    attach = sub.add_parser("attach", help="follow a live run (its history, then live), or read a finished one")
    attach.add_argument("run", help="run id, unique prefix, name, folder or `latest`")
    attach.add_argument("--headless", action="store_true", help="log lines instead of the dashboard")
    runs_dir(attach)

    show = sub.add_parser("show", help="the dashboard on finished (or live) runs")
    show.add_argument("runs", nargs="+", metavar="RUN", help="run id, unique prefix, name, folder or `latest`")
    runs_dir(show)

    ctl = sub.add_parser("ctl", help="steer a live run from a script or another shell")
    ctl.add_argument("run", help="run id, unique prefix, name, folder or `latest`")
    ctl.add_argument("action", choices=CTL_ACTIONS, help="what to do")
    ctl.add_argument("value", nargs="?", help="lr: a value (0.01) or a factor (x0.5)")
    runs_dir(ctl)

    resume = sub.add_parser("resume", help="continue a stopped or killed run from its last checkpoint")
    resume.add_argument("run", help="run id, unique prefix, name, folder or `latest`")
    foreground(resume)
    resume.add_argument("--into", type=Path, help=argparse.SUPPRESS)
    runs_dir(resume)

    export = sub.add_parser("export", help="per-step and per-validation tables")
    export.add_argument("run", help="run id, unique prefix, name, folder or `latest`")
    export.add_argument("--format", choices=["csv"], default="csv")
    export.add_argument("--out", type=Path, help="folder for steps.csv and validation.csv (default: the run folder)")
    runs_dir(export)

    predict = sub.add_parser("predict", help="predictions for a file of raw inputs, with the run's saved preprocessing")
    predict.add_argument("run", help="run id, unique prefix, name, folder or `latest`")
    predict.add_argument("input", type=Path, help="a CSV with the training features (an image file "
                         "or folder for image runs)")
    predict.add_argument("--checkpoint", choices=["best", "last"], default="best",
                         help="which saved weights (default: best)")
    predict.add_argument("--out", type=Path, help="write the predictions CSV here (default: stdout)")
    runs_dir(predict)
    return parser


CTL_ACTIONS = ["pause", "resume", "stop", "validate", "checkpoint", "lr"]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `traintop` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]
    args = build_parser().parse_args(argv)
    commands = {"run": cmd_run, "check": cmd_check, "ls": cmd_ls, "attach": cmd_attach,
                "ctl": cmd_ctl, "resume": cmd_resume, "export": cmd_export, "show": cmd_show,
                "predict": cmd_predict}
    try:
        code = commands[args.command](args)
    except UserError as e:
        print(f"traintop: error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # `traintop attach RUN | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


def _load(args):
    from traintop.engine.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "name", None):  # validated like run.name in a config
        overrides.append("run.name=" + json.dumps(args.name))
    return load_config(args.config, overrides)


def _runs_dir(args) -> Path:
    from traintop.engine.runstore import default_runs_dir

    return args.runs_dir or default_runs_dir()


def _folder(args):
    from traintop.engine.runstore import resolve_run

    return resolve_run(args.run, _runs_dir(args))


def wants_dashboard(args) -> bool:
    """The dashboard in a terminal; log lines when asked, or when stdout is not a terminal."""
    return not getattr(args, "headless", False) and not getattr(args, "into", None) and sys.stdout.isatty()


def cmd_run(args) -> int:
    cfg = _load(args)
    if not args.into:  # a detached run's parent has checked it and made its folder
        from traintop.engine.runstore import check_runs_dir

        check_runs_dir(_runs_dir(args), getattr(args, "name", None) or cfg.run.name)
    child_args = ["run", str(Path(args.config).resolve()) if args.config else None,
                  *[x for o in args.overrides for x in ("--set", o)]]
    if args.detach:
        return detach(cfg, args, child_args)
    if wants_dashboard(args):
        return watch_new_run(cfg, args, child_args)
    from traintop.engine.run import Run
    from traintop.engine.runstore import RunFolder

    run = Run.prepare(cfg, args.runs_dir, folder=RunFolder(args.into) if args.into else None)
    return run_engine(run)


def cmd_resume(args) -> int:
    from traintop.engine.runstore import RunFolder

    folder = RunFolder(args.into) if args.into else _folder(args)
    if not args.into:
        from traintop.engine.runstore import check_runs_dir

        check_runs_dir(folder.path, what="run folder")
    if args.detach:
        return detach(None, args, ["resume", str(folder.path)], folder=folder)
    if wants_dashboard(args):
        return watch_new_run(None, args, ["resume", str(folder.path)], folder=folder)
    from traintop.engine.run import Run

    return run_engine(Run.resume(folder))


def spawn_engine(cfg, args, child_args: list, folder=None):
    """Start the engine as a background process in its own session, logging to engine.log."""
    import subprocess

    from traintop.engine.runstore import RunFolder

    if folder is None:
        folder = RunFolder.create(_runs_dir(args), getattr(args, "name", None) or cfg.run.name)
    child = [sys.executable, "-m", "traintop.tui", *[a for a in child_args if a is not None],
             "--headless", "--into", str(folder.path)]
    if getattr(args, "name", None):
        child += ["--name", args.name]
    with open(folder.log, "ab") as log:
        proc = subprocess.Popen(child, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=Path.cwd())
    return folder, proc


def watch_new_run(cfg, args, child_args: list, folder=None) -> int:
    """`traintop run` in a terminal: the engine in its own process, the dashboard attached to it."""
    from traintop.engine.runstore import RunFolder

    from .app import TrainTop

    created = folder is None  # a resumed run's folder is never this call's to remove
    if created:
        folder = RunFolder.create(_runs_dir(args), getattr(args, "name", None) or cfg.run.name)
    started = []

    async def opener():
        # The engine starts once the dashboard's first frame is up: importing torch beside it
        # would hold that frame back on a small machine.
        from traintop.engine.client import LiveRun  # after the first frame, as the engine
        from traintop.engine.runstore import socket_is_live

        if not started:
            started.append(spawn_engine(cfg, args, child_args, folder)[1])
            app.engine_pid, app.log_path = started[0].pid, str(folder.log)
        if not (folder.socket.exists() and socket_is_live(folder.socket)):
            raise UserError("waiting for the engine")
        return await LiveRun.connect(folder)

    app = TrainTop(opener, title=folder.run_id)
    outcome = app.run()
    if not started:  # the dashboard closed before the engine was started: there is no new run
        if created:
            import shutil

            shutil.rmtree(folder.path, ignore_errors=True)
        return 0
    proc = started[0]
    if outcome == "detached":
        print(f"{folder.run_id} goes on training in the background (pid {proc.pid}).")
        print(f"  attach again:  traintop attach {folder.run_id}")
        return 0
    code = app.engine_exit if app.engine_exit is not None else proc.wait()
    if code == 2 and not folder.meta.exists():
        print(folder.log.read_text(errors="replace").strip().splitlines()[-1], file=sys.stderr)
        import shutil

        shutil.rmtree(folder.path, ignore_errors=True)
    report = folder.read_json("report.json") or {}
    if report:
        print(f"{folder.run_id}: {report.get('status', '?').replace('_', ' ')}"
              + (f", test {report['test']}" if report.get("test") else ""))
    return code


def detach(cfg, args, child_args: list, folder=None) -> int:
    """Start the engine in the background; return once it serves its control socket (or has
    failed, showing why)."""
    import time

    from traintop.engine.server import socket_is_live

    folder, proc = spawn_engine(cfg, args, child_args, folder)
    deadline = time.monotonic() + 120
    while not (folder.socket.exists() and socket_is_live(folder.socket)):
        code = proc.poll()
        if code is not None:
            tail = folder.log.read_text(errors="replace").strip().splitlines()[-5:]
            print("\n".join(tail), file=sys.stderr)
            if code == 2 and not folder.meta.exists():  # bad input: there is no run to keep
                import shutil

                shutil.rmtree(folder.path, ignore_errors=True)
            return code
        if time.monotonic() > deadline:
            print(f"traintop: the engine has not started after 120 s; see {folder.log}", file=sys.stderr)
            return 1
        time.sleep(0.05)
    print(f"{folder.run_id}  training in the background (pid {proc.pid})")
    print(f"  attach:  traintop attach {folder.run_id}")
    print(f"  steer:   traintop ctl {folder.run_id} pause|resume|stop|validate|checkpoint|lr VALUE")
    print(f"  log:     {folder.log}")
    return 0


def run_engine(run) -> int:
    """Train on this thread; beside it, serve the control socket and print log lines.

    SIGINT / SIGTERM stop the run after the current step, saving last.pt first.
    """
    from traintop.engine.commands import Stop
    from traintop.engine.server import ControlServer

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
        # The handler runs on the training thread, which may hold the inbox lock right now.
        threading.Thread(target=run.send_nowait, args=(Stop(save=True),), daemon=True).start()

    for sig in SIGNAL_EXIT:
        signal.signal(sig, on_signal)
    # A closed terminal must not end the training: log lines stop, the run goes on.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    ready = threading.Event()
    failure: list[BaseException] = []

    async def side():
        server = ControlServer(run)
        try:
            await server.start()
        except BaseException as e:  # noqa: BLE001 - reported on the main thread
            failure.append(e)
            return
        finally:
            ready.set()
        try:
            printing = True
            async for event in run.events():
                if printing:
                    try:
                        printer.show(event)
                    except (OSError, ValueError):  # the terminal went away: keep training
                        printing = False
            await run.wait()
        finally:
            await server.close()

    beside = threading.Thread(target=asyncio.run, args=(side(),), name="traintop-control", daemon=True)
    beside.start()
    ready.wait()
    if failure:
        raise failure[0]
    status = run.train()
    beside.join()
    if received:
        return SIGNAL_EXIT[received[0]]
    return EXIT_CODES.get(status, 1)


def dashboard(folder) -> int:
    """The dashboard on an existing run, live or finished."""
    from .app import TrainTop

    async def opener():
        from traintop.engine.client import open_run  # after the first frame: it is not needed before

        return await open_run(folder)

    outcome = TrainTop(opener, title=folder.run_id).run()
    if outcome == "detached":
        print(f"detached; {folder.run_id} goes on training (traintop attach {folder.run_id})")
    return 0


def cmd_show(args) -> int:
    from traintop.engine.runstore import resolve_run

    folders = [resolve_run(spec, _runs_dir(args)) for spec in args.runs]
    if len(folders) == 1:
        return dashboard(folders[0])
    return compare(folders)


def compare(folders: list) -> int:
    """Several runs overlaid, one colour per run; a run's name labels it unless two share it."""
    from .compare import CompareTop

    seen = set()
    for folder in folders:
        if folder.path.resolve() in seen:
            raise UserError(f"run {folder.run_id} is named twice; name each run once")
        seen.add(folder.path.resolve())
    names = [(folder.read_json("meta.json") or {}).get("name") or folder.run_id for folder in folders]
    labels = [name if names.count(name) == 1 else folder.run_id for name, folder in zip(names, folders)]

    def opener(folder):
        async def open_it():
            from traintop.engine.client import open_run

            return await open_run(folder)
        return open_it

    CompareTop([(label, opener(folder)) for label, folder in zip(labels, folders)]).run()
    return 0


def cmd_attach(args) -> int:
    """History, then live events, as log lines; Ctrl-C leaves the run training."""
    from traintop.engine.client import open_run

    from .headless import HeadlessPrinter

    folder = _folder(args)
    if wants_dashboard(args):
        return dashboard(folder)
    printer = HeadlessPrinter()
    printer.folder = str(folder.path)

    async def follow():
        source = await open_run(folder)
        if source.torn:
            print("note: the last line of events.jsonl was torn (its writer was killed) and is skipped",
                  file=sys.stderr)
        try:
            async for event in source.events():
                printer.show(event)
        finally:
            await source.close()
        if source.live and source.closed_reason and not printer.status:
            print(f"traintop: {source.closed_reason}", file=sys.stderr)
            return 1
        if not source.live and not printer.status:
            how = (f"`traintop resume {folder.run_id}` continues it from checkpoints/last.pt"
                   if folder.last.exists() else "it saved no last.pt to resume from")
            print(f"run {folder.run_id} has no run_finished event: it was killed ({how})")
        return 0

    try:
        return asyncio.run(follow())
    except KeyboardInterrupt:
        print(f"\ndetached; the run goes on (traintop attach {folder.run_id})", file=sys.stderr)
        return 0


def ctl_command(action: str, value: str | None):
    """The engine command for `traintop ctl RUN ACTION [VALUE]`."""
    from traintop.engine import commands as c

    if action == "lr":
        if value is None:
            raise UserError("ctl lr needs a value (e.g. 0.01) or a factor (e.g. x0.5)")
        text = value.lower()
        try:
            number = float(text[1:] if text.startswith(("x", "*")) else text)
        except ValueError:
            raise UserError(f"ctl lr {value!r}: expected a number (0.01) or a factor (x0.5)") from None
        return c.SetLr(factor=number) if text.startswith(("x", "*")) else c.SetLr(value=number)
    if value is not None:
        raise UserError(f"ctl {action} takes no value (got {value!r})")
    return {"pause": c.Pause, "resume": c.Resume, "stop": c.Stop, "validate": c.Validate,
            "checkpoint": c.Checkpoint}[action]()


def cmd_ctl(args) -> int:
    from traintop.engine.client import LiveRun

    command = ctl_command(args.action, args.value)
    folder = _folder(args)

    async def send():
        source = await LiveRun.connect(folder, parse_events=False)
        try:
            return await source.send(command)
        finally:
            await source.close()

    try:
        reply = asyncio.run(send())
    except asyncio.TimeoutError:
        print(f"traintop: no reply from the engine of {folder.run_id} within 60 s", file=sys.stderr)
        return 1
    print(reply.message, file=sys.stdout if reply.ok else sys.stderr)
    return 0 if reply.ok else 1


def cmd_export(args) -> int:
    import csv

    from traintop.engine import events as ev
    from traintop.engine.runstore import read_events

    folder = _folder(args)
    events, torn = read_events(folder.events)
    if torn:
        print("note: the last line of events.jsonl was torn and is skipped", file=sys.stderr)
    out = args.out or folder.path
    check_output(out, "--out", folder=True)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "steps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "loss", "grad_norm", "lr", "samples_per_s"])
        n_steps = 0
        for e in events:
            if isinstance(e, ev.Steps):
                for row in zip(e.step, e.epoch, e.loss, e.grad_norm, e.lr):
                    w.writerow([*row, e.samples_per_s])
                n_steps += len(e.step)
    validations = [e for e in events if isinstance(e, ev.Validation)]
    metrics = list(dict.fromkeys(k for v in validations for k in v.metrics))
    with open(out / "validation.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "val_loss", *metrics, "best", "since_best", "source"])
        for v in validations:
            w.writerow([v.step, v.epoch, v.val_loss, *[v.metrics.get(m, "") for m in metrics],
                        v.best, v.since_best, v.source])
    print(f"wrote {out / 'steps.csv'} ({n_steps} steps) and {out / 'validation.csv'} "
          f"({len(validations)} validations)")
    return 0


def cmd_predict(args) -> int:
    from traintop.engine.predictor import Predictor

    folder = _folder(args)
    if args.out is not None:
        check_output(args.out, "--out", folder=False)
    predictor = Predictor.from_folder(folder, args.checkpoint)
    ids, answers = predictor.predict_input(args.input)
    text = predictor.table(ids, answers)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    tmp = args.out.with_name(args.out.name + ".tmp")
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        tmp.replace(args.out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"--out {args.out} could not be written: {e.strerror or e}") from None
    print(f"wrote {len(answers)} prediction(s) to {args.out} ({predictor.checkpoint} weights, "
          f"step {predictor.step})", file=sys.stderr)
    return 0


def check_output(path: Path, label: str, folder: bool) -> None:
    """Refuse, before any work, an output path that cannot be what it must: a file (or a folder)
    whose parents are folders."""
    from traintop.engine.runstore import nearest_existing

    if folder and path.exists() and not path.is_dir():
        raise UserError(f"{label} {path} is a file; give a folder for the exported tables")
    if not folder and path.is_dir():
        raise UserError(f"{label} {path} is a folder; give the path of a file for the predictions CSV")
    existing = nearest_existing(path if folder else path.parent)
    if not existing.is_dir():
        raise UserError(f"{label} {path} lies under {existing}, which is a file, not a folder")


def cmd_check(args) -> int:
    cfg = _load(args)
    from traintop.engine.data import load_data
    from traintop.engine.loop import Trainer
    from traintop.engine.inbox import CommandInbox
    from traintop.engine.run import resolve_device
    from traintop.tui.summary import summary_lines

    data = load_data(cfg)
    device = resolve_device(cfg.run.device)
    trainer = Trainer(cfg, data, device, emit=lambda e: None, inbox=CommandInbox())
    print(f"# {args.config or 'built-in demo'}: the resolved config\n")
    print(cfg.to_toml())
    print("# data")
    for line in summary_lines(data.summary(cfg.data.batch_size)):
        print(line)
    for kind, message in [*cfg.warnings, *data.warnings]:
        print(f"warning     [{kind}] {message}")
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
