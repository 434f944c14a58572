"""The run folder: where a run lives on disk, and how runs are found and read back.

Torch-free: `traintop ls`, the dashboard and the CLI read runs without the engine.

    <runs dir>/<run id>/  config.toml  meta.json  events.jsonl  preprocess.json
                          checkpoints/best.pt  checkpoints/last.pt  report.json  control.sock
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import UserError
from .events import Event, parse_line


def default_runs_dir() -> Path:
    """TRAINTOP_RUNS_DIR, or the user data dir's runs folder."""
    env = os.environ.get("TRAINTOP_RUNS_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("traintop")) / "runs"


RUN_ID_EXTRA = len("20261126-141503-") + len("-999")  # a run id's time stamp, and a same-second suffix
FILE_EXTRA = len("/checkpoints/last.pt.tmp")  # the longest path a run writes inside its folder


def nearest_existing(path: Path) -> Path:
    """`path` itself when it exists, else its nearest ancestor that does."""
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_runs_dir(runs_dir: Path, name: str | None = None, what: str = "runs dir") -> None:
    """Refuse, before any data is loaded, a runs dir that cannot hold a new run (UserError).

    It must be a folder (or not exist yet, under folders), writable by this user, and leave room
    for the run id `<yyyymmdd-hhmmss>-<name>` within the file system's limits on names and paths.
    `what` names the folder in messages (a resumed run checks its own folder).
    """
    hint = "; choose another with --runs-dir or TRAINTOP_RUNS_DIR" if what == "runs dir" else ""
    existing = nearest_existing(runs_dir)
    if not existing.is_dir():
        if existing == Path(os.path.abspath(runs_dir)):
            raise UserError(f"{what} {runs_dir} is a file, not a folder{hint}")
        raise UserError(f"{what} {runs_dir} lies under {existing}, which is a file, not a folder{hint}")
    problem = None
    try:  # os.access alone trusts mode bits, which root passes: /proc or a full quota shows on a real write
        os.rmdir(tempfile.mkdtemp(prefix=".traintop-probe-", dir=existing))
    except OSError as e:
        problem = e.strerror or type(e).__name__
    if problem is None and not os.access(existing, os.W_OK | os.X_OK):
        problem = "Permission denied"
    if problem:
        where = "" if existing == Path(os.path.abspath(runs_dir)) else f" (nothing can be created in {existing})"
        raise UserError(f"{what} {runs_dir} cannot be written{where}: {problem}{hint}")
    if name is None:
        return
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        path_max = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    size = len(os.fsencode(name))
    if RUN_ID_EXTRA + size > name_max:
        raise UserError(f"run name {name[:40]}... is {size} bytes long; a run id (<yyyymmdd-hhmmss>-<name>) "
                        f"must fit the file system's limit of {name_max} bytes per name: use a name of at "
                        f"most {name_max - RUN_ID_EXTRA} bytes (--name or run.name)")
    room = path_max - len(os.fsencode(os.path.abspath(runs_dir))) - 1 - RUN_ID_EXTRA - FILE_EXTRA
    if size > room:
        raise UserError(f"{what} {runs_dir} with the run name {name[:40]!r} makes paths longer than the file "
                        f"system's limit of {path_max} bytes; use a shorter --runs-dir or name")


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run's folder."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    config = property(lambda self: self.path / "config.toml")
    meta = property(lambda self: self.path / "meta.json")
    events = property(lambda self: self.path / "events.jsonl")
    preprocess = property(lambda self: self.path / "preprocess.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    best = property(lambda self: self.path / "checkpoints" / "best.pt")
    last = property(lambda self: self.path / "checkpoints" / "last.pt")
    report = property(lambda self: self.path / "report.json")
    socket = property(lambda self: self.path / "control.sock")
    log = property(lambda self: self.path / "engine.log")

    @classmethod
    def create(cls, runs_dir: Path, name: str, now: datetime | None = None) -> RunFolder:
        """A new, empty run folder named `<yyyymmdd-hhmmss>-<name>` (with -2, -3... if taken)."""
        stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
        runs_dir.mkdir(parents=True, exist_ok=True)
        for n in range(1, 1000):
            path = runs_dir / (f"{stamp}-{name}" if n == 1 else f"{stamp}-{name}-{n}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            (path / "checkpoints").mkdir()
            return cls(path)
        raise UserError(f"could not create a run folder in {runs_dir}")

    def read_json(self, which: str) -> dict[str, Any] | None:
        """meta.json or report.json as a dict, or None when absent or unreadable."""
        try:
            return json.loads((self.path / which).read_text())
        except (OSError, ValueError):
            return None


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_events(path: Path) -> tuple[list[Event], bool]:
    """All events of a run; a torn last line (a killed writer) is skipped and reported as True."""
    events: list[Event] = []
    torn = False
    if not path.exists():  # a run still loading its data has written nothing yet
        return events, torn
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            events.append(parse_line(line))
        except ValueError:
            if i >= len(lines) - 2:  # the last line written: torn by a kill
                torn = True
            else:
                raise UserError(f"{path}: line {i + 1} is not a valid event") from None
    return events, torn


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


SOCKET_PATH_MAX = 100  # bytes; the OS allows 104 (macOS) or 108 (Linux) in a socket address


@contextlib.contextmanager
def socket_address(path: Path):
    """An address for the Unix socket at `path` that fits the OS limit on socket paths.

    A run folder deep in the file system has a longer path; on Linux it is then reached through
    an open descriptor of its folder (/proc/self/fd/N/control.sock), which is short.
    """
    name = str(path)
    if len(os.fsencode(name)) <= SOCKET_PATH_MAX:
        yield name
        return
    if not os.path.isdir("/proc/self/fd"):
        raise UserError(f"the run folder's path is too long for a control socket ({len(name)} bytes; "
                        f"the limit is {SOCKET_PATH_MAX}): {path.parent}; use a shorter --runs-dir")
    fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_PATH", 0))
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def socket_is_live(path: Path) -> bool:
    """True when a process accepts connections on the Unix socket at `path`."""
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with socket_address(path) as address:
            s.connect(address)
        return True
    except (OSError, UserError):
        return False
    finally:
        s.close()


def is_live(folder: RunFolder) -> bool:
    """A run is live while its engine serves the control socket (or its process still starts up)."""
    if folder.socket.exists() and socket_is_live(folder.socket):
        return True
    meta = folder.read_json("meta.json") or {}
    return folder.read_json("report.json") is None and pid_alive(meta.get("pid", -1)) and not folder.socket.exists()


def resolve_run(spec: str, runs_dir: Path) -> RunFolder:
    """A run from an id, a unique id prefix, a name, a folder path, or `latest`."""
    p = Path(spec).expanduser()
    if (p / "events.jsonl").exists() or (p / "meta.json").exists():
        return RunFolder(p)
    runs = sorted(d for d in runs_dir.iterdir() if d.is_dir()) if runs_dir.is_dir() else []
    if not runs:
        raise UserError(f"no runs in {runs_dir}")
    if spec == "latest":
        return RunFolder(runs[-1])
    exact = [d for d in runs if d.name == spec]
    if exact:
        return RunFolder(exact[0])
    matches = [d for d in runs if d.name.startswith(spec)]
    if not matches:
        matches = [d for d in runs if (RunFolder(d).read_json("meta.json") or {}).get("name") == spec]
        if len(matches) > 1:  # a name used twice means its latest run
            matches = matches[-1:]
    if len(matches) == 1:
        return RunFolder(matches[0])
    if not matches:
        raise UserError(f"no run matches {spec!r} in {runs_dir}; `traintop ls` lists them")
    raise UserError(f"{spec!r} matches {len(matches)} runs: " + ", ".join(d.name for d in matches[:5]))


@dataclass
class RunSummary:
    """One line of `traintop ls`."""

    run_id: str
    name: str
    status: str
    epochs: int
    best: str
    test: str
    started: str


def _metric_text(name: str, value: float | None) -> str:
    return "-" if value is None else f"{name} {value:.4g}"


def summarize(folder: RunFolder) -> RunSummary:
    """What `ls` shows of a run: from report.json when finished, else from its events."""
    meta = folder.read_json("meta.json") or {}
    report = folder.read_json("report.json")
    if report is None:
        report = report_from_events(read_events(folder.events)[0]) if folder.events.exists() else {}
        report["status"] = "running" if is_live(folder) else "killed"
    best = report.get("best") or {}
    test = report.get("test") or {}
    test_name = "accuracy" if "accuracy" in test else ("rmse" if "rmse" in test else "loss")
    return RunSummary(
        run_id=folder.run_id,
        name=meta.get("name", ""),
        status=report.get("status", "?").replace("_", "-"),
        epochs=report.get("epochs", 0),
        best=_metric_text(best.get("monitor", ""), best.get("value")),
        test=_metric_text(test_name, test.get(test_name)),
        started=meta.get("started", "")[:19].replace("T", " "),
    )


def report_from_events(events: list[Event]) -> dict[str, Any]:
    """The final facts of a run from its events: status, epochs, steps, best, test."""
    from . import events as ev

    out: dict[str, Any] = {"epochs": 0, "steps": 0, "best": None, "test": None}
    monitor = "val_loss"
    for e in events:
        if isinstance(e, ev.RunStarted):
            monitor = e.config.get("early_stopping", {}).get("monitor", "val_loss")
        elif isinstance(e, ev.EpochEnd):
            out["epochs"], out["steps"] = e.epoch, e.step
        elif isinstance(e, ev.Validation) and e.best:
            value = e.val_loss if monitor == "val_loss" else e.metrics.get(monitor[4:])
            out["best"] = {"monitor": monitor, "value": value, "epoch": e.epoch, "step": e.step}
        elif isinstance(e, ev.TestResult):
            out["test"] = e.metrics
        elif isinstance(e, ev.RunFinished):
            out["status"], out["error"] = e.status, e.error
    return out


def list_runs(runs_dir: Path) -> list[RunSummary]:
    """Every run in `runs_dir`, oldest first."""
    if not runs_dir.is_dir():
        return []
    return [summarize(RunFolder(d)) for d in sorted(runs_dir.iterdir())
            if d.is_dir() and (d / "meta.json").exists()]
