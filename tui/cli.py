"""The `traintop` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import math
import os
import sys
from pathlib import Path
from typing import Callable, TextIO

from traintop.engine.errors import DiskFull, UserError

from .terminal import guard_streams



def build_parser() -> argparse.ArgumentParser:
    from traintop.engine.runstore import STATUSES

    parser = argparse.ArgumentParser(
        prog="traintop", description="Run, watch and steer PyTorch training from a terminal.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def trust_flag(p):
        p.add_argument("--trust", action="store_true",
                       help="import the run's Python model or data (model.kind or data.source \"python\") "
                       "even from a run folder that is not your own, in place (copied, moved, another user's)")

    def runs_dir(p):
        p.add_argument("--runs-dir", type=output_path, help="where runs live (default: TRAINTOP_RUNS_DIR "
                       "or the user data dir)")

    def overrides(p):
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set train.epochs=3 (value parsed as TOML)")

    def ranks(p):
        p.add_argument("--nproc-per-node", type=positive_int, metavar="N",
                       help="train on N processes on this machine through torch.distributed (one per GPU; "
                       "gloo on the CPU); a run started by torchrun is recognised and not launched again")
        p.add_argument("--nnodes", type=positive_int, metavar="N", help="machines taking part, each running "
                       "the same command with its own --node-rank")
        p.add_argument("--node-rank", type=non_negative_int, metavar="R", help="this machine's place, 0 to N-1 "
                       "(node 0's rank 0 records and serves the run)")
        p.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="where the machines meet: a free port on "
                       "node 0's machine")

    def foreground(p):
        mode = p.add_mutually_exclusive_group()
        mode.add_argument("--headless", action="store_true", help="log lines instead of the dashboard")
        mode.add_argument("--detach", action="store_true",
                          help="train in the background; print the run id and return")

    run = sub.add_parser("run", help="train a config (default: the digits demo), or watch a script of your own",
                         usage="traintop run [CONFIG | SCRIPT.py] [options] [-- SCRIPT ARGS...]")
    run.add_argument("config", nargs="?", help="a TOML config (none: the built-in digits demo), or a "
                     "Python training script, watched through its optimizer; its own arguments go after --")
    overrides(run)
    foreground(run)
    run.add_argument("--name", help="the run's name (default: run.name from the config)")
    run.add_argument("--into", type=Path, help=argparse.SUPPRESS)  # a detached run's folder
    ranks(run)
    runs_dir(run)

    check = sub.add_parser("check", help="validate a config and its data; no training")
    check.add_argument("config", nargs="?", help="a TOML config; none means the built-in demo")
    overrides(check)

    ls = sub.add_parser("ls", help="list runs, oldest start first")
    ls.add_argument("--status", type=lambda text: text.replace("_", "-"), choices=STATUSES,
                    help="only runs in this state")
    ls.add_argument("--name", help="only runs of this name (shell patterns allowed: 'digits*')")
    ls.add_argument("--last", type=positive_int, metavar="N", help="only the N most recently started")
    runs_dir(ls)

    rm = sub.add_parser("rm", help="remove finished runs (never a live one)")
    rm.add_argument("runs", nargs="+", metavar="RUN", help="run id, unique prefix, name, folder or `latest`")
    rm.add_argument("--yes", action="store_true", help="do not ask (needed without a terminal)")
    runs_dir(rm)

    attach = sub.add_parser("attach", help="follow a live run (its history, then live), or read a finished one")
    attach.add_argument("run", help="run id, unique prefix, name, folder or `latest`")
    attach.add_argument("--headless", action="store_true", help="log lines instead of the dashboard")
    trust_flag(attach)
    attach.add_argument("--tail", type=tail_lines, default=TAIL_DEFAULT, metavar="N",
                        help=f"log lines: the header, then the last N lines of the history (default "
                             f"{TAIL_DEFAULT}; `all` for every line), then live lines")
    runs_dir(attach)

    show = sub.add_parser("show", help="the dashboard on finished (or live) runs")
    show.add_argument("runs", nargs="+", metavar="RUN", help="run id, unique prefix, name, folder or `latest`")
    trust_flag(show)
    runs_dir(show)

    ctl = sub.add_parser("ctl", help="steer a live run from a script or another shell")
    ctl.add_argument("run", help="run id, unique prefix, name, folder or `latest`")
    ctl.add_argument("action", choices=CTL_ACTIONS, help="what to do")
    ctl.add_argument("value", nargs="?", help="lr: a value (0.01) or a factor (x0.5); early-stopping: on or off")
    ctl.add_argument("--patience", metavar="N", help="early-stopping: validations without improvement "
                     "before the run stops")
    runs_dir(ctl)

    resume = sub.add_parser("resume", help="continue a stopped, killed, failed or finished run from its last "
                            "checkpoint (--set train.epochs=N for more epochs)")
    resume.add_argument("run", help="run id, unique prefix, name, folder or `latest`")
    overrides(resume)
    foreground(resume)
    trust_flag(resume)
    resume.add_argument("--into", type=Path, help=argparse.SUPPRESS)
    ranks(resume)
    runs_dir(resume)

    export = sub.add_parser("export", help="per-step and per-validation tables")
    export.add_argument("run", help="run id, unique prefix, name, folder or `latest`")
    export.add_argument("--format", choices=["csv"], default="csv")
    export.add_argument("--out", type=out_path,
                        help="folder for steps.csv and validation.csv (default: the run folder)")
    runs_dir(export)

    predict = sub.add_parser("predict", help="predictions for a file of raw inputs, with the run's saved preprocessing")
    predict.add_argument("run", help="run id, unique prefix, name, folder or `latest`")
    predict.add_argument("input", type=Path, help="a CSV with the training features (an image file "
                         "or folder for image runs)")
    predict.add_argument("--checkpoint", choices=["best", "last"], default="best",
                         help="which saved weights (default: best)")
    predict.add_argument("--out", type=out_path, help="write the predictions CSV here (default: stdout)")
    trust_flag(predict)
    runs_dir(predict)

    lr_find = sub.add_parser("lr-find", help="the learning-rate range test: a few steps at growing rates, "
                             "the loss drawn, a rate suggested")
    lr_find.add_argument("config", nargs="?", help="a TOML config; none means the built-in demo")
    overrides(lr_find)
    lr_find.add_argument("--lr-min", type=float, default=1e-7, help="the first rate tried (default 1e-7)")
    lr_find.add_argument("--lr-max", type=float, default=10.0, help="the last rate tried (default 10)")
    lr_find.add_argument("--steps", type=int, default=100, help="steps from the first rate to the last (default 100)")
    lr_find.add_argument("--headless", action="store_true", help="log lines instead of the dashboard")
    lr_find.add_argument("--into", type=Path, help=argparse.SUPPRESS)  # its engine's folder, behind a dashboard
    runs_dir(lr_find)
    parser.commands = sub.choices  # each command's own parser: its usage for its own mistakes
    return parser


CTL_ACTIONS = ["pause", "resume", "stop", "validate", "checkpoint", "lr", "early-stopping"]


def whole_number(text: str, least: int) -> int:
    """`text` as a whole number >= `least`; ValueError otherwise."""
    value = int(text)
    if value < least:
        raise ValueError(text)
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        return whole_number(text, 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    try:
        return whole_number(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None


TAIL_DEFAULT = 10


def tail_lines(text: str) -> int | None:
    """`--tail`: a number of lines (0 or more), or `all` (None: no limit)."""
    if text.strip().lower() == "all":
        return None
    try:
        return min(whole_number(text, 0), sys.maxsize)  # more lines than a log can hold: all of them
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of lines (0 or more) or `all`, got {text!r}") from None


class TailOfLines:
    """Stands in for stdout while history is printed: keeps only its last `n` lines."""

    def __init__(self, n: int):
        from collections import deque

        self.lines: deque[str] = deque(maxlen=n)
        self.count = 0
        self.partial = ""

    def write(self, text: str) -> int:
        *done, self.partial = (self.partial + text).split("\n")
        self.lines.extend(done)
        self.count += len(done)
        return len(text)

    def flush(self) -> None:
        pass

    def print_to(self, out) -> None:
        """The kept lines, after a line that says how many earlier ones are left out."""
        left_out = self.count - len(self.lines)
        if left_out:
            print(f"… {left_out:,} earlier line(s) of history not shown (--tail all shows every line)", file=out)
        for line in self.lines:
            print(line, file=out)
        out.flush()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `traintop` console script."""
    # Everything printed from here on (log lines, tables, predictions, errors, argparse's usage,
    # a traceback) reaches the terminal through the one boundary that escapes control characters.
    guard_streams()
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = dispatch(argv)
    except UserError as e:
        print(f"traintop: error: {e}", file=sys.stderr)
        code = 2
    except DiskFull as e:
        print(f"traintop: error: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # `traintop attach RUN | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except OSError as e:  # `traintop ls > file` on a full disk: the output cannot be written
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what is still buffered goes nowhere
        with contextlib.suppress(OSError):
            print(f"traintop: error: the output could not be written: {e.strerror or e}", file=sys.stderr)
        code = 1
    sys.exit(code)


def dispatch(argv: list[str]) -> int:
    """Run one `traintop` command line (its arguments); its exit code. Also how a dashboard's key
    starts another command once the dashboard has closed (lr-find's: train with the rate)."""
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]
    script_args: list[str] = []
    if argv[0] == "run" and "--" in argv:  # traintop run train.py -- ARGS: the script's own arguments
        cut = argv.index("--")
        argv, script_args = argv[:cut], argv[cut + 1:]
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        script = args.command == "run" and (args.config or "").endswith(".py")
        hint = (f"; a script's own arguments go after --: traintop run {args.config} -- {' '.join(unknown)}"
                if script else "")
        parser.commands.get(args.command, parser).error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    args.script_args = script_args
    commands = {"run": cmd_run, "check": cmd_check, "ls": cmd_ls, "attach": cmd_attach,
                "ctl": cmd_ctl, "resume": cmd_resume, "export": cmd_export, "show": cmd_show,
                "predict": cmd_predict, "rm": cmd_rm, "lr-find": cmd_lr_find}
    return commands[args.command](args)


def _load(args):
    """The config a command names, or the built-in demo when it names none."""
    from traintop.engine.config import demo_config, load_config

    name = getattr(args, "name", None) or None  # validated like run.name in a config
    return demo_config(args.overrides, name) if args.config is None else load_config(args.config, args.overrides,
                                                                                      name=name)


def _runs_dir(args) -> Path:
    """--runs-dir, or TRAINTOP_RUNS_DIR, or the default: a folder, or a path where one can be made."""
    from traintop.engine.runstore import default_runs_dir, nearest_existing

    runs_dir = args.runs_dir or default_runs_dir()
    given = "--runs-dir" if args.runs_dir else ("TRAINTOP_RUNS_DIR" if os.environ.get("TRAINTOP_RUNS_DIR")
                                               else "the runs dir")
    if runs_dir.exists() and not runs_dir.is_dir():
        raise UserError(f"{given} {runs_dir} is a file, not a folder of runs")
    if not (existing := nearest_existing(runs_dir)).is_dir():
        raise UserError(f"{given} {runs_dir} lies under {existing}, which is a file, not a folder")
    return runs_dir


def _folder(args):
    from traintop.engine.runstore import resolve_run

    return resolve_run(args.run, _runs_dir(args))


def _runs_named(name: str, runs_dir: Path) -> list[str]:
    """The ids of the runs whose meta.json names them `name`, oldest first."""
    from traintop.engine.runstore import RunFolder

    if not runs_dir.is_dir() or (runs_dir / name).exists():
        return []
    ids = []
    for d in sorted(runs_dir.iterdir()):
        try:
            meta = RunFolder(d).read_json("meta.json") if d.is_dir() else None
        except UserError:  # a damaged folder is named by `ls`; it names no run here
            continue
        if isinstance(meta, dict) and meta.get("name") == name:
            ids.append(d.name)
    return ids


def wants_dashboard(args) -> bool:
    """The dashboard in a terminal; log lines when asked, when stdout is not a terminal, and in the
    ranks a launcher started (they share one terminal)."""
    from traintop.engine.distributed import placement

    return not getattr(args, "headless", False) and not getattr(args, "into", None) and sys.stdout.isatty() \
        and placement() is None


def cmd_run(args) -> int:
    from traintop.engine.runstore import RunFolder

    from . import launch

    how = launch.launch_of(args)  # several processes, launched from here
    if args.config and args.config.endswith(".py"):
        return cmd_run_script(args, how)
    if args.script_args:
        raise UserError(f"arguments after -- go to a script (traintop run train.py -- ARGS); "
                        f"{args.config or 'the demo'} is a config")
    cfg = _load(args)
    if not args.into:  # a detached run's parent has checked it and made its folder
        from traintop.engine.runstore import check_runs_dir

        check_runs_dir(_runs_dir(args), getattr(args, "name", None) or cfg.run.name)
    if how is not None:
        folder = RunFolder.create(_runs_dir(args), args.name or cfg.run.name) if how.node_rank == 0 else None
        engine = launch.on_ranks(launch.config_engine(folder, args.config, args.overrides, args.name), how)
        return launch.start(engine, args.detach, wants_dashboard(args))
    if args.detach or wants_dashboard(args):
        folder = RunFolder.create(_runs_dir(args), getattr(args, "name", None) or cfg.run.name)
        engine = launch.config_engine(folder, args.config, args.overrides, args.name)
        return launch.detach(engine) if args.detach else launch.with_dashboard(engine)
    from traintop.engine.run import Run

    run = Run.prepare(cfg, args.runs_dir, folder=RunFolder(args.into) if args.into else None)
    return launch.run_engine(run)


def cmd_run_script(args, how=None) -> int:
    """`traintop run train.py [-- ARGS]`: the script is the engine, watched through its optimizer;
    `how`: on several processes (ranks), launched from here."""
    import re

    from traintop.engine.distributed import is_follower
    from traintop.engine.runstore import RunFolder

    from . import launch

    script = Path(args.config)
    if not script.is_file():
        raise UserError(f"script {script} does not exist" if not script.exists() else f"{script} is not a file")
    if args.overrides:
        raise UserError("--set changes a config's keys; a script takes its own arguments after --: "
                        f"traintop run {script} -- --lr 0.01")
    name = args.name or re.sub(r"[^A-Za-z0-9._-]+", "-", script.stem).strip("-._") or "script"
    from traintop.engine.config import RUN_NAME, RUN_NAME_RULE

    if not RUN_NAME.match(name):
        raise UserError(f"--name is {name!r}; {RUN_NAME_RULE}")
    if is_follower():  # a rank torchrun started: rank 0 makes the run folder
        return launch.run_script_here(None, script, args.script_args, name)
    if how is not None and how.node_rank != 0:  # this machine's ranks follow node 0's rank 0
        engine = launch.on_ranks(launch.script_here_engine(None, script, args.script_args, name), how)
        return launch.start(engine, args.detach, wants_dashboard(args))
    from traintop.engine.runstore import check_runs_dir

    if args.into:  # rank 0 of ranks launched by traintop: its launcher made the folder
        return launch.run_script_here(RunFolder(args.into), script, args.script_args, name)
    check_runs_dir(_runs_dir(args), name)
    folder = RunFolder.create(_runs_dir(args), name)
    if how is not None:
        here = not args.detach and not wants_dashboard(args)  # log lines in this terminal
        make = launch.script_here_engine if here else launch.script_engine
        engine = launch.on_ranks(make(folder, script, args.script_args, name), how)
        return launch.start(engine, args.detach, wants_dashboard(args))
    if args.detach or wants_dashboard(args):
        engine = launch.script_engine(folder, script, args.script_args, name)
        return launch.detach(engine) if args.detach else launch.with_dashboard(engine)
    return launch.run_script_here(folder, script, args.script_args, name)


def cmd_resume(args) -> int:
    from traintop.engine.distributed import is_follower, placement
    from traintop.engine.runstore import RunFolder

    from . import launch

    if is_follower():  # a rank a launcher started: rank 0 reads the run and hands every rank what it needs
        from traintop.engine.run import Run

        return launch.run_engine(Run.resume(RunFolder(Path(args.into or args.run)), args.overrides, args.trust))
    how = launch.launch_of(args)
    if how is not None and how.node_rank != 0:  # this machine's ranks follow node 0's, which has the run
        engine = launch.on_ranks(launch.resumed_engine(None, args.overrides, args.trust, spec=args.run), how)
        return launch.start(engine, args.detach, wants_dashboard(args))
    folder = RunFolder(args.into) if args.into else _folder(args)
    if not args.into:
        from traintop.engine.runstore import check_runs_dir

        check_runs_dir(folder.path, what="run folder")
    if placement() is None:
        from traintop.engine.resume import resume_config, resume_launch

        how = resume_launch(folder, how)  # on as many processes as it trained on, or refused
        if how is not None:
            resume_config(folder, args.overrides, args.trust)  # refused here, before any rank starts
            engine = launch.on_ranks(launch.resumed_engine(folder, args.overrides, args.trust), how)
            return launch.start(engine, args.detach, wants_dashboard(args))
    if args.detach or wants_dashboard(args):
        from traintop.engine.resume import resume_config

        resume_config(folder, args.overrides, args.trust)  # refused here, before an engine or a dashboard starts
        engine = launch.resumed_engine(folder, args.overrides, trust=args.trust)
        return launch.detach(engine) if args.detach else launch.with_dashboard(engine)
    from traintop.engine.run import Run

    return launch.run_engine(Run.resume(folder, args.overrides, args.trust))


def finished_run(folder, trust: bool = False):
    """The run read from its folder when no engine serves it, else None (a live one is reached
    from the dashboard). Read here, before a dashboard takes the terminal, so that a damaged
    folder is a plain message; a run still starting up is told apart from a damaged one."""
    from traintop.engine.client import FinishedRun
    from traintop.engine.runstore import is_live, socket_is_live

    if folder.socket.exists() and socket_is_live(folder.socket):
        return None
    if not folder.events.exists() and is_live(folder):
        raise UserError(f"run {folder.run_id} is still starting (nothing logged yet); try again in a moment")
    return FinishedRun(folder, trust)


def source_opener(folder, trust: bool = False):
    """The dashboard's opener for a run: its finished log, read now, or its live socket, later."""
    finished = finished_run(folder, trust)

    async def opener():
        if finished is not None:
            return finished
        from traintop.engine.client import open_run  # after the first frame: it is not needed before

        return await open_run(folder, trust=trust)
    return opener


def dashboard(folder, trust: bool = False) -> int:
    """The dashboard on an existing run, live or finished."""
    opener = source_opener(folder, trust)
    from .app import TrainTop

    app = TrainTop(opener, title=folder.run_id, log_path=str(folder.log))
    need_terminal(folder)
    outcome = app.run()
    if app.return_code:  # it failed (Textual has shown why): not a success to a script
        return app.return_code
    if outcome == "detached":
        print(f"detached; {folder.run_id} goes on training (traintop attach {folder.run_id})")
    if outcome == "train":  # lr-find's key: the real run, with the suggested rate
        return dispatch(app.next_run)
    return 0


def need_terminal(folder) -> None:
    """A dashboard draws on a terminal: written into a file or a pipe it would never end."""
    if not (sys.stdout.isatty() and sys.stdin.isatty()):
        raise UserError(f"the dashboard needs a terminal; for the log as lines: traintop attach {folder.run_id} "
                        f"--headless --tail all; for tables: traintop export {folder.run_id}")


def cmd_show(args) -> int:
    from traintop.engine.runstore import resolve_run

    folders = [resolve_run(spec, _runs_dir(args)) for spec in args.runs]
    if len(folders) == 1:
        return dashboard(folders[0], args.trust)
    return compare(folders, args.trust)


def compare(folders: list, trust: bool = False) -> int:
    """Several runs overlaid, one colour per run; a run's name labels it unless two share it."""
    from .compare import CompareTop

    seen = set()
    for folder in folders:
        if folder.path.resolve() in seen:
            raise UserError(f"run {folder.run_id} is named twice; name each run once")
        seen.add(folder.path.resolve())
    names = [str((folder.read_json("meta.json") or {}).get("name") or folder.run_id) for folder in folders]
    labels = [name if names.count(name) == 1 else folder.run_id for name, folder in zip(names, folders)]
    openers = [source_opener(folder, trust) for folder in folders]
    app = CompareTop(list(zip(labels, openers)))
    need_terminal(folders[0])
    app.run()
    return app.return_code or 0


def cmd_attach(args) -> int:
    """History (its last --tail lines), then live events, as log lines; Ctrl-C leaves the run training."""
    from traintop.engine import events as ev
    from traintop.engine.client import HISTORY_END, open_run
    from traintop.engine.runstore import killed_note

    from .headless import HeadlessPrinter

    folder = _folder(args)
    if wants_dashboard(args):
        return dashboard(folder, args.trust)
    printer = HeadlessPrinter()
    printer.folder = str(folder.path)
    finished = finished_run(folder)

    async def follow():
        source = finished or await open_run(folder)
        if source.torn:
            print("note: the last line of events.jsonl was torn (its writer was killed) and is skipped",
                  file=sys.stderr)
        tail = TailOfLines(args.tail) if args.tail is not None else None
        try:
            async for event in source.events(history_end=True):
                if event is HISTORY_END:  # the history is out: its last lines, then live ones
                    if tail is not None:
                        tail.print_to(sys.stdout)
                    tail, printer.out = None, sys.stdout
                    continue
                # the header is always shown whole; the rest of the history only as its last lines
                printer.out = sys.stdout if tail is None or isinstance(event, ev.RunStarted) else tail
                printer.apply(event)
        finally:
            await source.close()
            if tail is not None:  # an engine that does not mark the end of its history
                tail.print_to(sys.stdout)
        if source.live and source.closed_reason and not printer.status:
            print(f"traintop: {source.closed_reason}", file=sys.stderr)
            return 1
        if not source.live and not printer.status:
            print(killed_note(folder))
        return 0

    try:
        return asyncio.run(follow())
    except KeyboardInterrupt:
        print(f"\ndetached; the run goes on (traintop attach {folder.run_id})", file=sys.stderr)
        return 0


def ctl_command(action: str, value: str | None, patience: str | None = None):
    """The engine command for `traintop ctl RUN ACTION [VALUE] [--patience N]`."""
    from traintop.engine import commands as c

    if action == "early-stopping":
        switch = {"on": True, "off": False, None: None}
        key = value.lower() if value is not None else None
        if key not in switch:
            raise UserError(f"ctl early-stopping {value!r}: expected on or off (and --patience N to set it)")
        if key is None and patience is None:
            raise UserError("ctl early-stopping needs on, off or --patience N")
        return c.EarlyStopping(enabled=switch[key], patience=None if patience is None else patience_value(patience))
    if patience is not None:
        raise UserError(f"--patience goes with `ctl RUN early-stopping`, not with ctl {action}")

    if action == "lr":
        if value is None:
            raise UserError("ctl lr needs a value (e.g. 0.01) or a factor (e.g. x0.5)")
        from traintop.engine.config import plain_float, show_value

        text = value.strip().lower()
        try:
            number = plain_float(text[1:] if text.startswith(("x", "*")) else text)
        except ValueError:
            raise UserError(f"ctl lr {show_value(value)}: expected a number (0.01) or a factor (x0.5)") from None
        if number == float("inf") and "inf" not in text:  # digits past a float's range
            raise UserError(f"ctl lr {show_value(value)}: a number too large to read; a rate goes up to 10")
        if text.startswith(("x", "*")) and not (math.isfinite(number) and number > 0):
            raise UserError(f"ctl lr {show_value(value)}: the factor must be a number above 0 (x0.5 halves the "
                            "rate, x2 doubles it)")
        return c.SetLr(factor=number) if text.startswith(("x", "*")) else c.SetLr(value=number)
    if value is not None:
        raise UserError(f"ctl {action} takes no value (got {value!r})")
    return {"pause": c.Pause, "resume": c.Resume, "stop": c.Stop, "validate": c.Validate,
            "checkpoint": c.Checkpoint}[action]()


def patience_value(text: str) -> int:
    """--patience N: a whole number of validations, in the range a config's patience takes."""
    from traintop.engine.config import PATIENCE

    try:
        value = int(text)
    except ValueError:
        value = -1
    if not PATIENCE.contains(value):
        raise UserError(f"--patience {text!r}: expected a whole number of validations from {PATIENCE.low:,.0f} "
                        f"to {PATIENCE.high:,.0f}")
    return value


WAIT_SAID_SECONDS = 3.0  # ctl says why it waits once a reply takes this long


def cmd_ctl(args) -> int:
    from traintop.engine.client import LiveRun

    command = ctl_command(args.action, args.value, args.patience)
    folder = _folder(args)
    from traintop.engine.runstore import is_live, killed_note, summarize

    if not is_live(folder):
        status = summarize(folder).status
        if status == "killed":
            print(f"traintop: nothing to steer: {killed_note(folder)}", file=sys.stderr)
            return 1
        if status in ("completed", "early_stopped", "stopped", "failed"):
            print(f"traintop: run {folder.run_id} has ended ({status.replace('_', ' ')}): nothing to steer; "
                  f"`traintop show {folder.run_id}` shows it", file=sys.stderr)
            return 1

    async def send():
        source = await LiveRun.connect(folder, parse_events=False)
        try:
            reply = asyncio.ensure_future(source.send(command))
            if not (await asyncio.wait({reply}, timeout=WAIT_SAID_SECONDS))[0]:  # a loop between its steps
                print(f"traintop: run {folder.run_id} applies commands at its steps and is between two now (a "
                      f"validation, a save, or work of its own): waiting for its next step (Ctrl-C stops waiting; "
                      f"the command stays queued)", file=sys.stderr, flush=True)
            return await reply
        finally:
            await source.close()

    try:
        reply = asyncio.run(send())
    except asyncio.TimeoutError:
        print(f"traintop: no reply from run {folder.run_id} within 60 s: it has not stepped since; the command "
              "stays queued for its next step", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("traintop: stopped waiting; the command stays queued for the run's next step", file=sys.stderr)
        return 130
    print(reply.message, file=sys.stdout if reply.ok else sys.stderr)
    return 0 if reply.ok else 1


def cmd_export(args) -> int:
    import csv

    from traintop.engine import events as ev
    from traintop.engine.runstore import read_events

    folder = _folder(args)
    named = _runs_named(args.run, _runs_dir(args))
    if len(named) > 1:  # a name used twice means its latest run: say so, and how to pick another
        print(f"note: {len(named)} runs are named {args.run!r}; exporting the latest, {folder.run_id} "
              f"(give a run id for another: {', '.join(named[:-1][-3:])})", file=sys.stderr)
    events, torn = read_events(folder.events)
    if torn:
        print("note: the last line of events.jsonl was torn and is skipped", file=sys.stderr)
    out = args.out or folder.path
    check_output(out, "--out", folder=True)
    steps = [e for e in events if isinstance(e, ev.Steps)]
    n_steps = sum(len(e.step) for e in steps)

    scalars = list(dict.fromkeys(name for e in steps for name in e.scalars))  # a loop's own, by name

    def write_steps(f) -> None:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "loss", "grad_norm", "lr", "samples_per_s", *scalars])
        for e in steps:
            for i, row in enumerate(zip(e.step, e.epoch, e.loss, e.grad_norm, e.lr)):
                w.writerow([*row, e.samples_per_s, *(e.scalars[name][i] if name in e.scalars else ""
                                                     for name in scalars)])

    validations = [e for e in events if isinstance(e, ev.Validation)]
    metrics = list(dict.fromkeys(k for v in validations for k in v.metrics))

    def write_validations(f) -> None:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "val_loss", *metrics, "best", "since_best", "source"])
        for v in validations:
            w.writerow([v.step, v.epoch, v.val_loss, *[v.metrics.get(m, "") for m in metrics],
                        v.best, v.since_best, v.source])

    for table in ("steps.csv", "validation.csv"):  # both or neither
        refuse_run_file(out / table, "--out")
    write_output(out / "steps.csv", "--out", write_steps)
    write_output(out / "validation.csv", "--out", write_validations)
    print(f"wrote {out / 'steps.csv'} ({n_steps} steps) and {out / 'validation.csv'} "
          f"({len(validations)} validations)")
    return 0


def cmd_predict(args) -> int:
    from traintop.engine.predictor import Predictor

    folder = _folder(args)
    if args.out is not None:
        check_output(args.out, "--out", folder=False)
        with contextlib.suppress(OSError):
            if os.path.samefile(args.out, args.input):
                raise UserError(f"--out {args.out} is the input {args.input}: the predictions would replace it; "
                                "give another path")
    predictor = Predictor.from_folder(folder, args.checkpoint, trust=args.trust)
    with readable_input(args.input, predictor.preprocess.kind) as path:
        ids, answers = predictor.predict_input(path)
    if predictor.skipped:  # the table holds the others; the user learns which are missing and why
        print(f"warning: {predictor.skipped}", file=sys.stderr)
    text = predictor.table(ids, answers)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    write_output(args.out, "--out", lambda f: f.write(text))
    print(f"wrote {len(answers)} prediction(s) to {args.out} ({predictor.checkpoint} weights, "
          f"step {predictor.step})", file=sys.stderr)
    return 0


@contextlib.contextmanager
def readable_input(path: Path, kind: str):
    """predict's input as a file it can read more than once: the file itself, or, for `-` (standard
    input) or a pipe (`<(...)`, a FIFO) given for a table, what they held, kept in a temporary file
    that messages name as the input given."""
    import shutil
    import stat
    import tempfile

    stdin = str(path) == "-"
    try:
        piped = stdin or stat.S_ISFIFO(path.stat().st_mode) or stat.S_ISCHR(path.stat().st_mode)
    except OSError:
        piped = False  # missing or unreadable: predict names it
    if not piped:
        yield path
        return
    if kind == "image":
        if stdin:
            raise UserError("input '-': this run trained on images; give an image file or a folder of them")
        yield path  # one image, read once
        return
    shown = "standard input ('-')" if stdin else str(path)
    if stdin and sys.stdin is None:
        raise UserError("input '-': there is no standard input to read (it is closed); give a file")
    with tempfile.TemporaryDirectory(prefix="traintop-input-") as tmp:
        spooled = Path(tmp) / ("stdin.csv" if stdin else path.name)
        try:
            with (contextlib.nullcontext(sys.stdin.buffer) if stdin else open(path, "rb")) as source, \
                    open(spooled, "wb") as f:
                shutil.copyfileobj(source, f)
        except OSError as e:
            raise UserError(f"input {shown} could not be read: {e.strerror or e}") from None
        try:
            yield spooled
        except UserError as e:
            raise UserError(str(e).replace(str(spooled), shown)) from None


def output_path(text: str) -> Path:
    """A path given to write under (--out, --runs-dir): not empty (which would mean the current
    folder without saying so)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give a path")
    return Path(text)


def out_path(text: str) -> Path:
    """--out: a path as `output_path`, and not `-`, which many tools read as stdout."""
    if text.strip() == "-":  # here, without --out, predict prints to stdout
        raise argparse.ArgumentTypeError("'-' names no file; leave --out out (predict then prints the "
                                         "predictions, export writes into the run folder)")
    return output_path(text)


def write_output(path: Path, label: str, write: Callable[[TextIO], object]) -> None:
    """Write a file the user named (`label`: the option that named it) whole or not at all: through
    a temporary file beside it; a folder or disk that refuses it is a UserError naming it. A link
    is written through to the file it names, never replaced; a device or a pipe (/dev/stdout, a
    fifo) is written to as it is, as a shell's `>` would."""
    refuse_run_file(path, label)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file() and not path.is_dir():
        try:
            with open(path, "w", newline="") as f:
                write(f)
        except OSError as e:
            raise UserError(f"{label}: {path} could not be written: {e.strerror or e}") from None
        return
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", newline="") as f:
            write(f)
        tmp.replace(path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        what = "is a folder" if path.is_dir() else f"could not be written: {e.strerror or e}"
        raise UserError(f"{label}: {path} {what}") from None


def refuse_run_file(path: Path, label: str) -> None:
    """No output the user names is written over a run's own files (its log, its checkpoints), even
    through a link."""
    from traintop.engine.runstore import run_file_at

    if (run := run_file_at(path)) is not None:
        what = "in the checkpoints folder" if run != Path(os.path.realpath(path)).parent else "a file"
        raise UserError(f"{label}: {path} is {what} of the run in {run}; traintop never writes over a run's own "
                        "files: give another path")


def check_output(path: Path, label: str, folder: bool) -> None:
    """Refuse, before any work, an output path that cannot be what it must: a file (or a folder)
    whose parents are folders."""
    try:
        _check_output(path, label, folder)
    except OSError as e:  # a name too long for the file system, say
        raise UserError(f"{label} {path}: {e.strerror or e}") from None


def _check_output(path: Path, label: str, folder: bool) -> None:
    from traintop.engine.runstore import nearest_existing

    if path.is_symlink() and not path.exists():
        raise UserError(f"{label} {path} is a link to {os.readlink(path)}, which does not exist")
    if folder and path.exists() and not path.is_dir():
        what = "a file" if path.is_file() else "not a folder (a device, a pipe or a socket)"
        raise UserError(f"{label} {path} is {what}; give a folder for the exported tables")
    if not folder and path.is_dir():
        raise UserError(f"{label} {path} is a folder; give the path of a file for the predictions CSV")
    if not folder:
        refuse_run_file(path, label)
    existing = nearest_existing(path if folder else path.parent)
    if not existing.is_dir():
        raise UserError(f"{label} {path} lies under {existing}, which is a file, not a folder")


def cmd_lr_find(args) -> int:
    """The range test: in a terminal, drawn live on the dashboard (its Timing tab), where a key
    trains with the suggested rate; headless, its points printed as they come, then the suggested
    rate and the command line that trains with it."""
    from traintop.engine.lrfind import check_range, config_range_test
    from traintop.engine.run import Run
    from traintop.engine.runstore import RunFolder, check_runs_dir

    from . import launch
    from .headless import HeadlessPrinter

    check_range(args.lr_min, args.lr_max, args.steps)
    if (args.config or "").endswith(".py"):
        raise UserError(f"lr-find trains a config; in a script of your own, `lr = run.lr_find(step)` does the same "
                        f"(see the README), then run it: traintop run {args.config}")
    cfg = _load(args)
    cfg.run.name = f"{cfg.run.name}-lr-find"
    if not args.into:  # behind a dashboard, the parent has checked and made the folder
        check_runs_dir(_runs_dir(args), cfg.run.name)
    if wants_dashboard(args):
        folder = RunFolder.create(_runs_dir(args), cfg.run.name)
        return launch.with_dashboard(launch.lr_find_engine(folder, args))
    # Absolute paths: the command works from any folder, and from the dashboard of `traintop show`.
    kept = [o for o in args.overrides if not o.replace(" ", "").startswith("optim.lr=")]
    run_args = ["run", *([str(Path(args.config).resolve())] if args.config is not None else []),
                *[x for o in kept for x in ("--set", o)],
                *(["--runs-dir", str(args.runs_dir.resolve())] if args.runs_dir else [])]
    run = Run.prepare(cfg, args.runs_dir, folder=RunFolder(args.into) if args.into else None, source="lr_find")
    printer = HeadlessPrinter()
    printer.folder = str(run.folder.path)
    run.serve(printer)
    result = config_range_test(run, run_args=run_args, lr_min=args.lr_min, lr_max=args.lr_max, steps=args.steps)
    run.close()
    return 0 if result.suggested else 1


def cmd_check(args) -> int:
    cfg = _load(args)
    import math

    from traintop.engine.data import load_data
    from traintop.engine.loop import Model
    from traintop.engine.run import resolve_device
    from traintop.tui.summary import summary_lines

    from traintop.engine.runstore import check_run_name, default_runs_dir

    check_run_name(default_runs_dir(), cfg.run.name)  # what run would refuse before loading anything
    data = load_data(cfg)
    device = resolve_device(cfg.run.device)
    model = Model(cfg, data, device)
    batches = math.ceil(len(data.feeds(device)["train"]) / cfg.data.batch_size)
    steps_per_epoch = math.ceil(batches / cfg.train.accumulate)  # optimizer steps
    print(f"# {args.config or 'built-in demo'}: the resolved config\n")
    print(cfg.to_toml())
    print("# data")
    for line in summary_lines(data.summary(cfg.data.batch_size)):
        print(line)
    for kind, message in [*cfg.warnings, *data.warnings]:
        print(f"warning     [{kind}] {message}")
    print(f"model       {cfg.model.kind}, {sum(p.numel() for p in model.params):,} parameters on {device}")
    print(f"loss        {model.objective.name}")
    print(f"plan        {cfg.train.epochs} epochs × {steps_per_epoch} steps")
    return 0


def cmd_ls(args) -> int:
    from fnmatch import fnmatchcase

    from traintop.engine.runstore import list_runs

    from .headless import duration

    runs_dir = _runs_dir(args)
    runs = list_runs(runs_dir)
    if not runs:
        print(f"no runs in {runs_dir}")
        return 0
    if args.status:
        runs = [r for r in runs if r.status == args.status]
    if args.name:
        runs = [r for r in runs if fnmatchcase(r.name, args.name)]
    if args.last:
        runs = runs[-args.last:]
    if not runs:
        print(f"no runs in {runs_dir} match these filters")
        return 0
    rows = [("RUN", "NAME", "STATUS", "EPOCHS", "BEST VAL", "TEST", "STARTED", "DURATION")]
    rows += [(r.run_id, r.name or "-", r.status, str(r.epochs) if r.status != "unreadable" else "-", r.best,
              r.test, r.started or "-", "-" if r.seconds is None else duration(r.seconds)) for r in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    for r in runs:
        if r.reason:
            print(f"unreadable: {r.run_id}: {r.reason}")
    return 0


def cmd_rm(args) -> int:
    """Remove finished runs' folders, after asking (or with --yes); never a live run's."""
    import shutil

    from traintop.engine.runstore import RUN_FILES, is_live, is_run_of_its_own, resolve_run, socket_is_live

    runs_dir = _runs_dir(args)
    folders = []
    for spec in args.runs:
        folder = resolve_run(spec, runs_dir)
        if folder.path.is_symlink():
            raise UserError(f"{folder.path} is a symbolic link, not a run folder; nothing removed")
        if not any((folder.path / f).exists() for f in RUN_FILES):
            raise UserError(f"{folder.path} is not a run folder (it has no {', '.join(RUN_FILES)}); "
                            "nothing removed")
        if folder.path.resolve().parent != runs_dir.resolve() and not is_run_of_its_own(folder):
            # a folder named by its path, outside the runs folder: only one that says it is a run
            raise UserError(f"{folder.path} is not a traintop run folder (its meta.json does not name it as "
                            f"run {folder.path.resolve().name}); nothing removed")
        try:
            live = is_live(folder)
        except UserError:  # a damaged meta.json: only the socket can tell
            live = folder.socket.exists() and socket_is_live(folder.socket)
        if live:
            raise UserError(f"run {folder.run_id} is live; stop it first (traintop ctl {folder.run_id} stop), "
                            "then remove it; nothing removed")
        if folder.path.resolve() not in [f.path.resolve() for f in folders]:
            folders.append(folder)
    runs = runs_dir.resolve()
    shown = {f.path: f.run_id if f.path.resolve().parent == runs else str(f.path) for f in folders}  # elsewhere: whole
    what = f"{len(folders)} run{'s' if len(folders) != 1 else ''} ({', '.join(shown.values())})"
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError(f"rm asks before it removes {what}, and there is no terminal to ask on; "
                            "add --yes to remove them")
        try:
            answer = input(f"remove {what}? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing removed")
            return 0
    for folder in folders:
        try:
            shutil.rmtree(folder.path)
        except OSError as e:
            raise UserError(f"could not remove {folder.path}: {e.strerror or e}") from None
        print(f"removed {shown[folder.path]}")
    return 0
