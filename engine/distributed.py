"""Training on several processes through torch.distributed: where a process stands among the
ranks, the collectives traintop makes, how a failing rank is named, and the launcher.

    traintop run CONFIG --nproc-per-node 2    # the command line starts `python -m traintop.engine.distributed`,
                                              # which runs torch.distributed.run: one engine per rank
    torchrun --nproc-per-node 2 train.py      # the user's own launch: detected from the environment

Rank 0 alone writes the run folder and serves the socket; the other ranks train on a follower
Session that writes nothing. `World` is this process's place among the ranks, with a small gloo
group of traintop's own for commands (beside nccl too); `lockstep.CommandSync` holds every
rank's step boundaries in step. Detection and the launcher's argument checks are torch-free, so
the CLI uses them before any engine starts.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from .errors import UserError

TIMEOUT_ENV = "TRAINTOP_DIST_TIMEOUT"  # seconds a collective may wait for a rank before the run fails
DEFAULT_TIMEOUT = 60.0
LAUNCHER_ENV = "TRAINTOP_LAUNCHER"  # the pid of the traintop launcher that started this rank
FAILED_KEY = "traintop/failed/"  # + rank: why that rank failed, in the rendezvous store
PROCESS_KEY = "traintop/process/"  # + rank: "host pid"


@dataclass(frozen=True)
class Placement:
    """Where torchrun (or another torch.distributed launcher) put this process, from its environment."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def nnodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))


def placement(environ: dict | None = None) -> Placement | None:
    """This process's place when a torch.distributed launcher started it (RANK and WORLD_SIZE set);
    None for a process of its own."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    values = {}
    for key, default in (("RANK", None), ("WORLD_SIZE", None), ("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", None)):
        text = env.get(key, default if default is not None else env.get("WORLD_SIZE"))
        try:
            values[key] = int(text)
        except (TypeError, ValueError):
            raise UserError(f"environment variable {key}={text!r} is not a whole number; torchrun sets it "
                            "for each process it starts") from None
    rank, size = values["RANK"], values["WORLD_SIZE"]
    if size < 1 or not 0 <= rank < size:
        raise UserError(f"RANK={rank} and WORLD_SIZE={size} do not fit together; allowed: 0 <= RANK < WORLD_SIZE")
    return Placement(rank, size, values["LOCAL_RANK"], values["LOCAL_WORLD_SIZE"])


def is_follower() -> bool:
    """Whether this process is a rank other than 0 of a launch: it trains, and writes no run folder."""
    place = placement()
    return place is not None and place.rank != 0


def timeout_seconds() -> float:
    """How long a collective waits for the other ranks (TRAINTOP_DIST_TIMEOUT, default 60 s)."""
    text = os.environ.get(TIMEOUT_ENV, "")
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 1 <= value <= 86400:
        raise UserError(f"{TIMEOUT_ENV}={text!r}: give the seconds a rank may keep the others waiting, "
                        "from 1 to 86400")
    return value


def threads_per_rank(threads: int, local_world_size: int) -> int:
    """PyTorch's CPU threads on each rank: `threads` when the config sets it, else OMP_NUM_THREADS
    when set (by the user, or by the launcher), else the cores shared out among the node's ranks."""
    if threads:
        return threads
    try:
        omp = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        omp = 0
    return omp if omp > 0 else max(1, (os.cpu_count() or 1) // max(1, local_world_size))


# -- the launch: torch-free checks for the CLI --------------------------------------------------


MAX_PROCESSES = 1024  # per machine, and machines: far past any real launch, short of a fork bomb


@dataclass(frozen=True)
class Launch:
    """`--nproc-per-node N [--nnodes N --node-rank R --rdzv-endpoint HOST:PORT]`, checked."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str = ""

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @classmethod
    def of(cls, nproc_per_node: int | None, nnodes: int | None, node_rank: int | None,
           rdzv_endpoint: str | None) -> Launch | None:
        """The launch the flags ask for (None: one process); UserError naming a flag that does not fit."""
        if nproc_per_node is None:
            given = [flag for flag, value in (("--nnodes", nnodes), ("--node-rank", node_rank),
                                              ("--rdzv-endpoint", rdzv_endpoint)) if value is not None]
            if given:
                raise UserError(f"{', '.join(given)} go with --nproc-per-node N (the processes on each machine)")
            return None
        nnodes = 1 if nnodes is None else nnodes
        node_rank = 0 if node_rank is None else node_rank
        for flag, value in (("--nproc-per-node", nproc_per_node), ("--nnodes", nnodes)):
            if not 1 <= value <= MAX_PROCESSES:
                raise UserError(f"{flag} {value}: allowed 1 to {MAX_PROCESSES}")
        if not 0 <= node_rank < nnodes:
            raise UserError(f"--node-rank {node_rank} with --nnodes {nnodes}: allowed 0 to {nnodes - 1}")
        endpoint = rdzv_endpoint or ""
        if nnodes > 1 and not endpoint:
            raise UserError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT, the same on every machine "
                            "(a port on the machine of node 0)")
        if endpoint:
            host, _, port = endpoint.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise UserError(f"--rdzv-endpoint {endpoint!r}: expected HOST:PORT, e.g. gpu-box-0:29400")
        return cls(nproc_per_node, nnodes, node_rank, endpoint)

    def torchrun_args(self) -> list[str]:
        """torch.distributed.run's options for this launch: no restarts (a failing rank ends the run).
        Several machines meet at a static rendezvous, which keeps each machine's --node-rank (c10d's
        ignores it), so process 0, which writes the run folder, is on the machine of node 0."""
        args = ["--nproc-per-node", str(self.nproc_per_node), "--max-restarts", "0"]
        if self.nnodes == 1 and not self.rdzv_endpoint:
            return [*args, "--standalone"]
        return [*args, "--nnodes", str(self.nnodes), "--node-rank", str(self.node_rank), "--rdzv-backend", "static",
                "--rdzv-endpoint", self.rdzv_endpoint, "--rdzv-id", "traintop"]

    def argv(self, folder: str | None, engine_argv: list[str]) -> list[str]:
        """The arguments after `python` that start this launch of `engine_argv` (the engine's own
        `-m MODULE ARGS`) on every rank."""
        return ["-m", "traintop.engine.distributed", *self.torchrun_args(),
                *(["--folder", folder] if folder else []), "--", *engine_argv]


# -- the ranks' world ---------------------------------------------------------------------------


class RankFailed(RuntimeError):
    """Another rank failed, or stopped answering: the run cannot go on."""


class World:
    """This process among the ranks: its rank, its device, traintop's gloo group for commands, and
    the rendezvous store where a failing rank leaves its reason."""

    def __init__(self, rank: int, size: int, local_size: int, device, group, store, owns: bool):
        self.rank = rank
        self.size = size
        self.local_size = local_size
        self.device = device
        self.group = group  # gloo, for commands and small objects: never a host sync of a GPU stream
        self.store = store
        self.owns = owns  # traintop made the default process group (a config run): it ends it too
        self.broken = False  # a rank failed: no more collectives, whatever is still to be recorded
        self.failure = ""  # the first failure seen, naming its rank

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls) -> World | None:
        """For a config run started by a launcher: join the other ranks (gloo for CPU tensors, nccl
        for CUDA ones, with a short explicit timeout). None in a process of its own."""
        place = placement()
        if place is None or place.world_size < 2:
            return None
        die_with_launcher()
        from datetime import timedelta

        import torch
        import torch.distributed as dist

        cuda = torch.cuda.is_available() and place.local_rank < torch.cuda.device_count()
        if cuda:
            torch.cuda.set_device(place.local_rank)
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_seconds()))
        return cls._made(None, owns=True)

    @classmethod
    def join(cls, device=None, required: bool = True) -> World | None:
        """For a loop of the user's own: the process group its script joined. None in one process;
        a launch of several whose script has not called init_process_group: UserError (or None
        when not `required`)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            place = placement()
            if place is not None and place.world_size > 1 and required:
                raise UserError(f"this process is rank {place.rank} of {place.world_size}: call "
                                "torch.distributed.init_process_group() before traintop.watch(), so that rank 0 "
                                "alone records the run and every rank obeys its commands at the same step")
            return None
        if dist.get_world_size() < 2:
            return None
        return cls._made(device, owns=False)

    @classmethod
    def _made(cls, device, owns: bool) -> World:
        from datetime import timedelta

        import torch.distributed as dist

        group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_seconds()))
        try:
            store = dist.distributed_c10d._get_default_store()
        except Exception:  # noqa: BLE001 - failures are then named less precisely
            store = None
        place = placement()
        local = place.local_world_size if place is not None else dist.get_world_size()
        world = cls(dist.get_rank(), dist.get_world_size(), local, device, group, store, owns)
        world._put(PROCESS_KEY + str(world.rank), f"{socket.gethostname()} {os.getpid()}")
        return world

    def device_for(self, name: str):
        """The device this rank trains on for `run.device`: its own GPU (cuda:LOCAL_RANK) or the CPU."""
        import torch

        place = placement()
        local_rank = place.local_rank if place is not None else self.rank
        if name == "cpu":
            return torch.device("cpu")
        if name == "mps":
            raise UserError("run.device = \"mps\" cannot train on several processes; use \"cpu\"")
        if name.startswith("cuda") or name == "auto":
            if torch.cuda.is_available() and local_rank < torch.cuda.device_count():
                return torch.device("cuda", local_rank)
            if name != "auto":
                raise UserError(f"run.device = {name!r} but rank {self.rank} has no CUDA GPU of its own "
                                f"(local rank {local_rank}, {torch.cuda.device_count()} GPU(s) here)")
        return torch.device("cpu")

    # -- collectives -----------------------------------------------------------------------------

    def mean_(self, tensor):
        """`tensor` averaged over the ranks, in place, on its own device (nccl for CUDA tensors)."""
        import torch.distributed as dist

        if not self.broken:
            dist.all_reduce(tensor)
            tensor /= self.size
        return tensor

    def sum_(self, tensor):
        """`tensor` summed over the ranks, in place."""
        import torch.distributed as dist

        if not self.broken:
            dist.all_reduce(tensor)
        return tensor

    def gather(self, obj: Any) -> list:
        """Every rank's `obj`, in rank order, on every rank (small objects: through the gloo group)."""
        import torch.distributed as dist

        out: list = [None] * self.size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def mean_values(self, values: dict[str, float]) -> dict[str, float]:
        """Each number averaged over the ranks that report it: validations measured on each rank's shard."""
        seen: dict[str, list[float]] = {}
        for reported in self.gather(values):
            for key, value in reported.items():
                seen.setdefault(key, []).append(value)
        return {key: sum(v) / len(v) for key, v in seen.items()}

    def ready(self, build: Callable[[], Any]) -> Any:
        """`build()` on every rank (its data, its model), then every rank says whether it got there:
        one that did not ends the run on every rank before anything is made, its own error raised
        where it failed and named by its rank on the others (a UserError stays one, for exit 2)."""
        try:
            built, failure = build(), None
        except BaseException as e:  # noqa: BLE001 - said to the other ranks, then raised here
            built, failure = None, e
        said = None if failure is None else ("refused" if isinstance(failure, UserError) else "failed",
                                             str(failure) or type(failure).__name__)
        reports = self.gather(said)
        if any(report is not None for report in reports):
            self.close()  # every rank ends the groups together, before leaving: no thread torn down at exit
        if failure is not None:
            raise failure
        for rank, report in enumerate(reports):
            if report is not None:
                kind, text = report
                first = text.strip().splitlines()[0] if text.strip() else text
                if kind == "refused":
                    raise UserError(f"rank {rank} could not start: {first} (its own message says more)")
                raise RankFailed(f"rank {rank} failed as it started: {first}")
        return built

    def share(self, make: Callable[[], Any] | None, wire: Callable[[Any], Any] = lambda x: x) -> Any:
        """Rank 0 runs `make()` and every other rank gets `wire(result)`; a UserError there is raised
        on every rank, so a run refused on rank 0 is refused everywhere and no rank waits for it."""
        import torch.distributed as dist

        box: list = [None]
        result = None
        if self.leader:
            try:
                result = make()
                box[0] = ("ok", wire(result))
            except UserError as e:
                box[0] = ("refused", str(e))
                dist.broadcast_object_list(box, src=0, group=self.group)
                raise
            except BaseException as e:
                box[0] = ("failed", f"{type(e).__name__}: {e}")
                dist.broadcast_object_list(box, src=0, group=self.group)
                raise
        dist.broadcast_object_list(box, src=0, group=self.group)
        kind, value = box[0]
        if self.leader:
            return result
        if kind == "refused":
            raise UserError(value)
        if kind == "failed":
            raise RankFailed(f"rank 0 failed: {value}")
        return value

    # -- failures --------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        """One line on this rank's stderr, naming the rank: what every rank did, in each one's words."""
        try:
            print(f"traintop rank {self.rank}/{self.size}: {text}", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass

    def fail(self, error: BaseException, own: str) -> str:
        """This rank's training ended with `error` (`own` in words): which rank failed and why, in
        words. No collective follows; the reason is left in the store for the other ranks."""
        self.broken = True
        if self.failure:
            return self.failure
        time.sleep(0.05)  # a rank that failed first leaves its reason before its connections close
        others = {r: why for r, why in self._failures().items() if r != self.rank}
        if others:
            first = min(others)
            self.failure = f"rank {first} failed: {others[first]}"
        elif _collective_error(error):
            self.failure = self._unanswered(own)
        else:
            self.failure = f"rank {self.rank} failed: {own}"
            self._put(FAILED_KEY + str(self.rank), own)
        return self.failure

    def _unanswered(self, own: str) -> str:
        gone = []
        for r in range(self.size):
            if r == self.rank:
                continue
            host, _, pid = (self._get(PROCESS_KEY + str(r)) or "").partition(" ")
            if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                gone.append(r)
        own = own.strip().splitlines()[0][:300] if own.strip() else own  # torch's first line says it
        if gone:
            names = ", ".join(str(r) for r in gone)
            return f"rank {names} ended without a word (its process is gone): {own}"
        if "timed out" in own.lower() or "timeout" in own.lower():
            return f"a rank stopped answering within {timeout_seconds():g} s ({TIMEOUT_ENV}): {own}"
        return f"the connection to another rank broke (that rank ended, or its machine went away): {own}"

    def _failures(self) -> dict[int, str]:
        found = {}
        for r in range(self.size):
            why = self._get(FAILED_KEY + str(r))
            if why:
                found[r] = why
        return found

    def _put(self, key: str, value: str) -> None:
        if self.store is None:
            return
        try:
            self.store.set(key, value)
        except Exception:  # noqa: BLE001 - the store went with a dead rank: nothing more to tell
            pass

    def _get(self, key: str) -> str | None:
        if self.store is None:
            return None
        try:
            if not self.store.check([key]):
                return None
            return self.store.get(key).decode(errors="replace")
        except Exception:  # noqa: BLE001
            return None

    def close(self) -> None:
        """Leave together and end traintop's own group, and the default group too when traintop
        made it (a config run); a loop's own group stays the loop's to end. Ending ours here, not
        when the process exits, keeps its threads from being torn down during interpreter exit."""
        import torch.distributed as dist

        group, self.group = self.group, None
        if group is None or self.broken or not dist.is_initialized():
            return
        try:
            # Every rank is done with every collective before any tears its connections down.
            dist.barrier(group=group)
            dist.destroy_process_group(None if self.owns else group)
        except Exception:  # noqa: BLE001 - ending anyway
            pass


def _collective_error(error: BaseException) -> bool:
    """Whether `error` came from a collective whose peers went away or kept it waiting."""
    if isinstance(error, RankFailed):
        return True
    try:
        import torch.distributed as dist

        if isinstance(error, getattr(dist, "DistError", ())):
            return True
    except ImportError:
        pass
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        word in text for word in ("gloo", "nccl", "connection closed", "connection reset", "timed out",
                                  "broken pipe", "peer", "process group"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def unwrap(model):
    """The module inside a DistributedDataParallel wrapper (its names and state have no `module.`)."""
    try:
        from torch.nn.parallel import DistributedDataParallel
    except ImportError:
        return model
    return model.module if isinstance(model, DistributedDataParallel) else model


# -- the launcher process ----------------------------------------------------------------------


def launch_main(argv: list[str]) -> int:
    """`python -m traintop.engine.distributed [TORCHRUN OPTIONS] [--folder F] -- -m MODULE ARGS`.

    Holds the run folder for rank 0 (the CLI handed its lock here), shares the cores among the
    ranks (OMP_NUM_THREADS, unless the user set it), and runs torch.distributed.run in this
    process; its exit code says how the ranks ended: 0, 2 when every failing rank refused its
    input, 1 when one failed, 130 / 143 on a signal.
    """
    from pathlib import Path

    from .runstore import HOLDER_ENV, RunFolder

    cut = argv.index("--")
    options, engine = argv[:cut], argv[cut + 1:]
    if "--folder" in options:
        i = options.index("--folder")
        folder = RunFolder(Path(options[i + 1]))
        del options[i:i + 2]
        lock = folder.lock()  # handed over by the CLI: held here for as long as the ranks run
        os.environ[HOLDER_ENV] = f"{os.getpid()}:{folder.path.resolve()}"
        _ = lock
    os.environ[LAUNCHER_ENV] = str(os.getpid())
    nproc = int(options[options.index("--nproc-per-node") + 1])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))

    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # its INFO and WARNING chatter, and its ERROR line on a rank's end, which the line below says in words
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(parse_args([*options, *engine]))
    except ChildFailedError as e:
        import signal

        codes = {f.exitcode for f in e.failures.values()}
        ended_first = any(code >= 0 for code in codes)  # the launcher then stops the others with SIGTERM

        def ended(code: int) -> str:
            if code >= 0:
                return f"exit code {code}"
            if code == -signal.SIGTERM and ended_first:
                return "stopped as another rank ended"
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"

        said = "; ".join(f"rank {r} {ended(e.failures[r].exitcode)}" for r in sorted(e.failures))
        print(f"traintop: {said}", file=sys.stderr, flush=True)
        return 2 if 2 in codes and codes <= {2, -signal.SIGTERM} else 1
    except SignalException as e:
        return 128 + int(e.sigval)
    except KeyboardInterrupt:
        return 130
    return 0


def die_with_launcher() -> None:
    """A rank the traintop launcher started gets SIGTERM when the launcher dies (stopping as on
    Ctrl-C), instead of training on with nobody holding its run folder. Linux only."""
    launcher = os.environ.get(LAUNCHER_ENV, "")
    if not launcher.isdigit() or int(launcher) != os.getppid() or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(launch_main(sys.argv[1:]))
