"""The run folder: where a run lives on disk, and how runs are found and read back.

Torch-free: `traintop ls`, the dashboard and the CLI read runs without the engine.

    <runs dir>/<run id>/  config.toml  meta.json  events.jsonl  preprocess.json
                          checkpoints/best.pt  checkpoints/last.pt  report.json  control.sock
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import os
import stat
import time
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import show_value
from .errors import DiskFull, UserError
from .events import Event, finite_or_null, parse_line

LOCK_ENV = "TRAINTOP_RUN_LOCK_FD"  # a run folder's lock handed to the engine process started for it
HOLDER_ENV = "TRAINTOP_RUN_LOCK_HOLDER"  # "<pid>:<folder>": a launcher of ranks holds that folder for rank 0
LOCK_PATIENCE = 0.5  # seconds a writer retries the lock: a reader may probe it for a moment
LOCK_RESERVE = 16 << 10  # bytes the lock file keeps, given back when the disk fills


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
    if name is not None:
        check_run_name(runs_dir, name, what)


def check_run_name(runs_dir: Path, name: str, what: str = "runs dir") -> None:
    """Refuse a run name whose run id, or whose files' paths under `runs_dir`, would pass the file
    system's limits (`check` asks this alone: it writes nothing)."""
    existing = nearest_existing(runs_dir)
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
    """The paths of one run's folder, absolute: a script that changes its working directory still
    writes its run where it began."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(os.path.abspath(self.path)))

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
    lock_file = property(lambda self: self.path / ".lock")

    @classmethod
    def create(cls, runs_dir: Path, name: str, now: datetime | None = None) -> RunFolder:
        """A new, empty run folder named `<yyyymmdd-hhmmss>-<name>` (with -2, -3... if taken)."""
        stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
        try:
            runs_dir.mkdir(parents=True, exist_ok=True)
            for n in range(1, 1000):
                path = runs_dir / (f"{stamp}-{name}" if n == 1 else f"{stamp}-{name}-{n}")
                try:
                    path.mkdir()
                except FileExistsError:
                    continue
                (path / "checkpoints").mkdir()
                return cls(path)
        except OSError as e:
            why = "it is a file, not a folder" if runs_dir.is_file() else e.strerror
            raise disk_full(e, runs_dir) or UserError(f"cannot keep runs in {runs_dir}: {why}") from None
        raise UserError(f"could not create a run folder in {runs_dir}")

    def lock(self) -> RunLock:
        """Take this folder for the calling process before it writes anything there.

        The lock (flock on `.lock`) is held until `RunLock.close()` or the process's end, so a
        run killed with -9 never leaves a stale one. Another process holding it: UserError
        naming that process. An engine started for this folder adopts the lock its parent
        took and handed over (LOCK_ENV), so there is no moment where the folder is free.
        """
        inherited = self._inherited_lock() or self._held_by_launcher()
        if inherited is not None:
            return inherited
        made = not self.lock_file.exists()
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise disk_full(e, self.path) or UserError(
                f"cannot take run folder {self.path} for writing: {e.strerror}") from None
        deadline = time.monotonic() + LOCK_PATIENCE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    pid = _lock_holder(fd)
                    os.close(fd)
                    who = f"process {pid}" if pid else "another process"
                    raise UserError(f"run {self.run_id} is in use by {who}; `traintop attach {self.run_id}` "
                                    "follows it, `traintop ctl` steers it") from None
                time.sleep(0.01)
        return RunLock(self, fd, made)

    def _inherited_lock(self) -> RunLock | None:
        value = os.environ.pop(LOCK_ENV, None)
        if not value:
            return None
        try:
            fd = int(value)
            if not os.path.samestat(os.fstat(fd), os.stat(self.lock_file)):
                return None  # handed over for another folder
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the same open file: already held
        except (OSError, ValueError):
            return None
        os.set_inheritable(fd, False)
        return RunLock(self, fd)

    def _held_by_launcher(self) -> RunLock | None:
        """Rank 0 of a distributed run: the launcher that started it (its parent) holds this folder
        for it, since torch's launcher passes no open files on to the ranks it starts."""
        pid, _, path = os.environ.get(HOLDER_ENV, "").partition(":")
        if not pid.isdigit() or int(pid) != os.getppid() or path != str(self.path.resolve()):
            return None
        if self.locked_by() is None:  # the launcher has let go of it
            return None
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return None
        return RunLock(self, fd)  # the pid written is this rank's: the process that writes the folder

    def locked_by(self) -> int | None:
        """The pid of the process that holds this folder (0 when unknown), or None when none does.

        Only probes: a shared lock for an instant, which a writer's retries outlast.
        """
        try:
            fd = os.open(self.lock_file, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _lock_holder(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def read_json(self, which: str) -> dict[str, Any] | None:
        """meta.json, report.json or preprocess.json as a dict; None when the file is absent.

        A file that is there but cannot be read, is not JSON or holds no JSON object is a
        UserError naming it: a damaged folder says so instead of passing for an empty one.
        """
        path = self.path / which
        data = read_file(path)
        if data is None:
            return None
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError) as e:  # ValueError includes bytes that are not UTF-8
            reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
            raise UserError(f"{path} is not valid JSON ({reason}): the file is damaged") from None
        if not isinstance(obj, dict):
            what = ("null" if obj is None else "true or false" if isinstance(obj, bool) else "an array"
                    if isinstance(obj, list) else "a string" if isinstance(obj, str) else "a number")
            raise UserError(f"{path} holds {what}, not a JSON object: the file is damaged")
        return obj


def read_file(path: Path) -> bytes | None:
    """The bytes of a file of a run folder; None when absent. Anything but a regular file (a
    FIFO, /dev/zero behind a symlink) is refused, not read: reading it could hang or never end."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise UserError(f"{path} is not a regular file: the run folder is damaged")
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UserError(f"{path} could not be read: {e.strerror or e}") from None


class RunLock:
    """A run folder held by this process (see `RunFolder.lock`).

    The lock file holds the holder's pid, then LOCK_RESERVE bytes kept in reserve: when the disk
    fills, `give_back_reserve()` frees them so the run can still record how it ended.
    """

    def __init__(self, folder: RunFolder, fd: int, made: bool = False):
        self.folder = folder
        self.fd = fd
        self.made = made  # this lock made the lock file: the folder had none
        pid = f"{os.getpid()}\n".encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, pid, 0)
            os.pwrite(fd, b"\0" * LOCK_RESERVE, len(pid))
        except OSError:  # a full disk: the lock holds without the pid or the reserve
            pass

    def give_back_reserve(self) -> None:
        """Free the reserved bytes for what the run must still write."""
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, len(f"{os.getpid()}\n"))

    def child_env(self) -> dict[str, str]:
        """The environment that hands this lock to an engine process started with pass_fds=(fd,)."""
        return {**os.environ, LOCK_ENV: str(self.fd)}

    def close(self) -> None:
        """Release the folder (the process's end does the same)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def abandon(self) -> None:
        """Release a folder taken for something that was then refused: a lock file this lock made
        goes too, so a folder that is no run (or not yet one) is left as it was found."""
        if self.made and self.fd >= 0:
            with contextlib.suppress(OSError):
                self.folder.lock_file.unlink()
        self.close()


def _lock_holder(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).split(b"\n", 1)[0] or 0)
    except (OSError, ValueError):
        return 0


SPACE_ERRORS = {errno.ENOSPC: "no space left", errno.EDQUOT: "the disk quota is used up",
                errno.EFBIG: "a file reached the size limit (ulimit -f)"}


def mount_of(path: Path) -> tuple[str, str]:
    """The mount point holding `path`, and the device mounted there ("" when unknown)."""
    p = Path(os.path.abspath(path))
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    device = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 1 and fields[1].replace("\\040", " ") == str(p):
                device = fields[0]  # the last mount on a point is the one in use
    return str(p), device


def disk_full(error: OSError, folder: Path) -> DiskFull | None:
    """A DiskFull naming the disk that holds `folder` when `error` is for want of space, else None."""
    what = SPACE_ERRORS.get(getattr(error, "errno", None))
    if what is None:
        return None
    mount, device = mount_of(folder)
    disk = f"{device} mounted at {mount}" if device else f"mounted at {mount}"
    return DiskFull(f"{what} on the disk holding {folder} ({disk})", Path(folder), error.errno)


def write_text(path: Path, text: str) -> None:
    """Write a run file atomically: a reader never sees half of it, and a full disk leaves no
    temporary file behind (DiskFull naming the disk)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise disk_full(e, path.parent) or e


def write_json(path: Path, obj: Any) -> None:
    """Write strict JSON atomically (non-finite numbers as null; see `write_text`)."""
    write_text(path, json.dumps(finite_or_null(obj), indent=2, default=str, allow_nan=False) + "\n")


def read_events(path: Path) -> tuple[list[Event], bool]:
    """All events of a run; a torn last line (a killed writer) is skipped and reported as True.

    A missing or unreadable file, or a bad line before the last, is a UserError naming the file.
    """
    data = read_file(path)
    if data is None:
        raise UserError(f"{path} is missing: the run folder is incomplete or damaged")
    events: list[Event] = []
    torn = False
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            events.append(parse_line(line.decode("utf-8")))
        except (ValueError, TypeError, RecursionError):  # not JSON, not UTF-8, not an event
            if i >= len(lines) - 2:  # the last line written: torn by a kill
                torn = True
            else:
                raise UserError(f"{path}: line {i + 1} is not a valid event: the file is damaged") from None
    return events, torn


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False  # kill(-1, 0) and kill(0, 0) would ask about many processes at once
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
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


def killed_note(folder: RunFolder) -> str:
    """What a log that ends with no run_finished means, and how the run can go on."""
    if not folder.last.exists():
        how = "it saved no last.pt to resume from"
    elif not begins_with_its_start(folder):  # resume refuses a run whose history is lost
        how = "its events.jsonl has lost its start, so it cannot be resumed; its checkpoints are kept"
    else:
        how = f"`traintop resume {folder.run_id}` continues it from checkpoints/last.pt"
    return f"run {folder.run_id} has no run_finished event: it was killed ({how})"


def started_event(folder: RunFolder):
    """The run's run_started event, the first line of its events.jsonl; None when the log does not
    begin with one (what the run said it trained on, for what is checked against it later)."""
    from .events import RunStarted

    try:
        with open(folder.events, "rb") as f:
            started = parse_line(f.readline().decode())
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError too
        return None
    return started if isinstance(started, RunStarted) else None


def begins_with_its_start(folder: RunFolder) -> bool:
    """Whether the run's events.jsonl begins with its run_started event (a run resumes only onto
    its whole history)."""
    return started_event(folder) is not None


def is_live(folder: RunFolder) -> bool:
    """A run is live while a process holds its folder; a folder from before the lock, while its
    engine serves the control socket (or its process still starts up)."""
    if folder.lock_file.exists():
        return folder.locked_by() is not None
    if folder.socket.exists() and socket_is_live(folder.socket):
        return True
    meta = folder.read_json("meta.json") or {}
    return folder.read_json("report.json") is None and pid_alive(meta.get("pid", -1)) and not folder.socket.exists()


SEAL_KEY = "seal.key"  # in the user data dir: the secret that seals this user's run folders


def seal_key() -> bytes | None:
    """This user's secret for sealing run folders, made on first use (mode 0600); None when
    the user data dir cannot hold it."""
    import platformdirs

    path = Path(platformdirs.user_data_dir("traintop")) / SEAL_KEY
    try:
        return path.read_bytes() or None
    except FileNotFoundError:
        pass
    except OSError:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_bytes() or None
    except OSError:
        return None
    key = os.urandom(32)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def seal(run_id: str, folder: str, uid: Any) -> str | None:
    """The seal meta.json carries: a keyed hash of who made the run and where, which only this
    user's traintop can compute, so a meta.json written by anyone else cannot claim to be theirs."""
    key = seal_key()
    if key is None:
        return None
    return hmac.new(key, f"{run_id}\0{folder}\0{uid}".encode(), hashlib.sha256).hexdigest()


def foreign_reason(folder: RunFolder, meta: dict[str, Any] | None) -> str:
    """Why code recorded in this run folder is not the current user's own, in place; "" when it is.

    A folder is the user's own when they own it and meta.json records them as its maker, and in
    place when its path is the one meta.json recorded: a folder copied or unpacked elsewhere is
    not. meta.json's seal, made with a secret of this user's, proves that this user's traintop
    wrote those facts: a meta.json forged to name this user and this path has no valid seal.
    """
    try:
        owner = os.stat(folder.path).st_uid
    except OSError as e:
        return f"its folder could not be checked ({e.strerror or e})"
    me = os.getuid()
    if owner != me:
        return f"the run folder belongs to another user (uid {owner})"
    if meta is None:
        return "it has no meta.json, so who made it and where is unknown"
    if "uid" not in meta:
        return "its meta.json does not record who made it"
    if meta["uid"] != me:
        return f"its meta.json says another user made it (uid {meta['uid']!r})"
    made_at, here = meta.get("folder"), str(folder.path.resolve())
    if not isinstance(made_at, str):
        return "its meta.json does not record where it was made"
    if made_at != here:
        return f"the run folder has moved since it was made (made at {made_at}, now at {here})"
    expected = seal(str(meta.get("run_id")), made_at, meta["uid"])
    given = meta.get("seal")
    if expected is None or not isinstance(given, str) or not hmac.compare_digest(given, expected):
        return ("its meta.json is not sealed by your traintop (made by another installation, "
                "by a version before seals, or edited)")
    return ""


def refuse_foreign_code(folder: RunFolder, meta: dict[str, Any] | None, code: list[tuple[str, str]],
                        config_dir: str, trust: bool) -> None:
    """UserError when building this run would import `code` (its config's (key, spec) pairs) from
    a folder that is not the current user's own, in place, and the user did not pass --trust."""
    if not code or trust:
        return
    why = foreign_reason(folder, meta)
    if why:
        modules = ", ".join(f"{spec.partition(':')[0]!r} ({key} = {spec!r})" for key, spec in code)
        raise UserError(f"run {folder.run_id} imports Python code: module {modules} from {config_dir}. "
                        f"It was not imported, because {why}; importing it would run that code as you. "
                        "If you trust this run folder and that code, add --trust")


def resolve_run(spec: str, runs_dir: Path) -> RunFolder:
    """A run from an id, a unique id prefix, a name, a folder path, or `latest`."""
    if not spec.strip():  # a prefix of every run: it must never pick one
        raise UserError("an empty run name would match every run; name one by its id, an id prefix, its name, "
                        "its folder, or latest")
    p = Path(spec).expanduser()
    try:
        if (p / "events.jsonl").exists() or (p / "meta.json").exists():
            return RunFolder(p)
    except OSError as e:  # a name longer than the file system takes, say: no folder, so no run by it
        raise UserError(f"no run matches {show_value(spec)}: {e.strerror or e}") from None
    runs = sorted(d for d in runs_dir.iterdir() if d.is_dir()) if runs_dir.is_dir() else []
    if not runs:
        raise UserError(f"no runs in {runs_dir}")
    if spec == "latest":
        return RunFolder(runs[-1])
    exact = [d for d in runs if d.name == spec]
    if exact:
        return RunFolder(exact[0])
    matches = [d for d in runs if d.name.startswith(spec)]
    if len(matches) != 1:  # no id starts so, or several (a run named 2026 among 2026's runs): its name
        named = [d for d in runs if _name_of(RunFolder(d)) == spec]
        if named:
            matches = named[-1:]  # a name used twice means its latest run
    if len(matches) == 1:
        return RunFolder(matches[0])
    if not matches:
        raise UserError(f"no run matches {spec!r} in {runs_dir}; `traintop ls` lists them")
    more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
    raise UserError(f"{spec!r} matches {len(matches)} runs: " + ", ".join(d.name for d in matches[:5]) + more)


def _name_of(folder: RunFolder) -> str | None:
    """The run's name from meta.json; None when a damaged meta.json does not say."""
    try:
        name = (folder.read_json("meta.json") or {}).get("name")
    except UserError:
        return None
    return name if isinstance(name, str) else None


STATUSES = ("running", "paused", "completed", "early-stopped", "stopped", "failed", "killed", "unreadable")
RUN_FILES = ("meta.json", "events.jsonl", "report.json")  # any of them makes a run folder
OWN_FILES = tuple(getattr(RunFolder("/"), f).name for f in ("config", "meta", "events", "preprocess", "report",
                                                              "socket", "log", "lock_file"))


def run_file_at(path: Path) -> Path | None:
    """The run folder whose own file `path` is, through any links (one of OWN_FILES, or anything
    in its checkpoints/), or None: no command writes a user's output there."""
    real = Path(os.path.realpath(path))
    folder, inside = (real.parent.parent, True) if real.parent.name == "checkpoints" else (real.parent, False)
    if (inside or real.name in OWN_FILES) and any((folder / f).exists() for f in RUN_FILES):
        return folder
    return None


def is_run_of_its_own(folder: RunFolder) -> bool:
    """Whether `folder` says it is a run: its meta.json names it by its run id. Any folder holding a
    file called meta.json or events.jsonl is not one for that alone."""
    try:
        meta = folder.read_json("meta.json")
    except UserError:
        return False
    return isinstance(meta, dict) and meta.get("run_id") == folder.path.resolve().name


@dataclass
class RunSummary:
    """One line of `traintop ls`; `reason` says why an unreadable run could not be read."""

    run_id: str
    name: str
    status: str
    epochs: int
    best: str
    test: str
    started: str
    seconds: float | None = None  # how long it trained: report.json's seconds, else its last event's t
    reason: str = ""
    sort_key: str = ""  # its start time (ISO), or the folder's modification time when unknown


def _metric_text(name: str, value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    return f"{name} {value:.4g}"


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def paused_now(events: list[Event]) -> bool:
    """True when the last pause of these events has no resume after it."""
    from . import events as ev

    state = [e for e in events if isinstance(e, (ev.Paused, ev.Resumed))]
    return bool(state) and isinstance(state[-1], ev.Paused)


def summarize(folder: RunFolder) -> RunSummary:
    """What `ls` shows of a run: from report.json when finished, else from its events.

    A damaged file (or a missing events.jsonl) is a UserError naming it.
    """
    meta = folder.read_json("meta.json")
    if meta is None:
        raise UserError(f"{folder.meta} is missing: the run folder is incomplete or damaged")
    report = folder.read_json("report.json")
    seconds = report.get("seconds") if report is not None else None
    if report is not None and not folder.events.exists():  # show, attach and export would fail
        raise UserError(f"{folder.events} is missing: the run folder is incomplete or damaged")
    if report is None:
        live = is_live(folder)
        if not folder.events.exists() and live:
            events = []  # still loading its data: nothing logged yet
        else:
            events = read_events(folder.events)[0]
        report = report_from_events(events)
        if live:
            report["status"] = "paused" if paused_now(events) else "running"
        elif "status" not in report:  # run_finished logged, but no report.json: keep what it said
            report["status"] = "killed"
        seconds = events[-1].t if events else None
    given = report.get("status")
    status = given.replace("_", "-") if isinstance(given, str) else None
    if status not in STATUSES:
        said = "no status" if given is None else f"the status {show_value(given)}"
        source = folder.report if folder.report.exists() else folder.events  # else its run_finished said it
        raise UserError(f"{source} gives {said}, none of {', '.join(STATUSES[:-1])}: the file is damaged")
    best, test = _dict(report.get("best")), _dict(report.get("test"))
    test_name = "accuracy" if "accuracy" in test else ("rmse" if "rmse" in test else "loss")
    started = meta.get("started") if isinstance(meta.get("started"), str) else ""
    name = meta.get("name") if isinstance(meta.get("name"), str) else ""
    epochs = report.get("epochs", 0)
    return RunSummary(
        run_id=folder.run_id,
        name=name,
        status=status,
        epochs=epochs if isinstance(epochs, int) else 0,
        best=_metric_text(str(best.get("monitor", "")), best.get("value")),
        test=_metric_text(test_name, test.get(test_name)),
        started=started[:19].replace("T", " "),
        seconds=float(seconds) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else None,
        sort_key=started or _mtime(folder.path),
    )


def _mtime(path: Path) -> str:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime).isoformat()
    except OSError:
        return ""


def unreadable(folder: RunFolder, reason: str) -> RunSummary:
    """The `ls` line of a run whose files cannot be read; the reason names the file at fault."""
    reason = reason.replace(str(folder.path) + os.sep, "")  # the file's name is enough beside its run
    return RunSummary(run_id=folder.run_id, name="", status="unreadable", epochs=0, best="-", test="-",
                      started="", reason=reason, sort_key=_mtime(folder.path))


def report_from_events(events: list[Event]) -> dict[str, Any]:
    """The final facts of a run from its events: status, epochs, steps, best, test."""
    from . import events as ev

    out: dict[str, Any] = {"epochs": 0, "steps": 0, "best": None, "test": None}
    monitor = "val_loss"
    for e in events:
        if isinstance(e, ev.RunStarted):
            monitor = e.early_stopping.get("monitor", "val_loss")
        elif isinstance(e, ev.EarlyStoppingChanged) and e.monitor:  # what the run itself judges by
            monitor = e.monitor
        elif isinstance(e, ev.EpochEnd):
            out["epochs"], out["steps"] = e.epoch, e.step
        elif isinstance(e, ev.Validation) and e.best:
            value = e.val_loss if monitor == "val_loss" else e.metrics.get(monitor[4:])
            out["best"] = {"monitor": monitor, "value": value, "epoch": e.epoch, "step": e.step}
        elif isinstance(e, ev.TestResult):
            # The first test is the run's score; a test after an extension is kept beside it.
            if e.extension and out["test"] is not None:
                out["extension_test"] = {"step": e.step, "metrics": e.metrics}
            elif out["test"] is None:
                out["test"] = e.metrics
        elif isinstance(e, ev.RunFinished):
            out["status"], out["error"] = e.status, e.error
    return out


def list_runs(runs_dir: Path) -> list[RunSummary]:
    """Every run in `runs_dir`, oldest start first. A run whose files cannot be read is listed as
    `unreadable` with the reason, so one damaged folder never hides the others."""
    try:
        entries = list(runs_dir.iterdir()) if runs_dir.is_dir() else []
    except OSError as e:
        raise UserError(f"runs dir {runs_dir} could not be read: {e.strerror or e}") from None
    runs: list[RunSummary] = []
    for d in entries:
        folder = RunFolder(d)
        try:
            if not d.is_dir() or not any((d / f).exists() for f in RUN_FILES):
                continue  # not a run: a stray file, or a run still creating its folder
            runs.append(summarize(folder))
        except UserError as e:
            runs.append(unreadable(folder, str(e)))
        except Exception as e:  # noqa: BLE001 - odd values in a damaged file: the listing goes on
            runs.append(unreadable(folder, f"its files do not read as a run's ({type(e).__name__}: {e})"))
    return sorted(runs, key=lambda r: (r.sort_key, r.run_id))
