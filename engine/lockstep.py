"""Every rank's step boundaries in step: the Session's piece for a run on several processes.

At every `sync_every`-th step boundary each rank takes part in a round: one small all_gather on
traintop's own gloo group, sent asynchronously and read at the next round, so a GPU run makes no
host sync for it and the training never waits on it. Rank 0's row carries the commands its
socket received and its clock; every rank's row carries its step, its throughput and whether a
signal asked it to stop. A command sent in one round is applied in the next, on every rank, at
the same step. While paused, the rounds go on as a heartbeat, so no collective waits long
however long the pause lasts.

    sync = CommandSync(session, world, every=1)
    ... at each step boundary:  sync.boundary()       # rounds; commands applied; pause held here
    ... after each step:        sync.take_flush()     # rank 0's timer says: flush now, on every rank
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from concurrent.futures import Future

import torch
import torch.distributed as dist

from . import commands as cmd
from .errors import UserError

WORDS = 64  # int64 words each rank sends per round: a header, then rank 0's commands as JSON
SEQ, STEP, FLAGS, RATE, CLOCK, LENGTH = range(6)
HEADER = 8
ROOM = (WORDS - HEADER) * 8  # bytes of commands per round; more wait for the next round
STOP, FLUSH, LOCAL = 1, 2, 4  # flags: a signal asked this rank to stop; flush now; rank 0 answers alone
HEARTBEAT = 0.05  # seconds between rounds while paused


class CommandSync:
    """Commands from rank 0's inbox applied by every rank at the same step; timed flushes and
    periodic saves decided by rank 0's clock, the same on every rank."""

    def __init__(self, session, world, every: int = 1):
        self.session = session
        self.world = world
        self.every = max(1, int(every))
        self.boundaries = 0
        self.seq = 0  # rounds sent
        self.work = None  # the round on the wire
        self.sent: torch.Tensor | None = None
        self.received = [torch.zeros(WORDS, dtype=torch.int64) for _ in range(world.size)]
        self.waiting: deque = deque()  # rank 0: (command, future) not yet on the wire
        self.in_flight: list[Future | None] = []  # rank 0: the futures of the commands on the wire
        self.local: list = []  # rank 0: predictions, answered by rank 0 alone once every rank has flushed
        self.local_in_flight: list = []
        self.stop_asked = False  # a signal on this rank: every rank stops
        self.flush_now = False
        self.clock = 0.0  # rank 0's clock at the last round, in seconds: the same on every rank
        self.started = time.perf_counter()
        self.rates = [0.0] * world.size  # each rank's samples/s at its last flush
        self.local_rate = 0.0

    # -- at each step boundary -------------------------------------------------------------------

    def boundary(self) -> None:
        """A step boundary: every `every`-th is a round; while paused, rounds go on as a heartbeat
        until a resume or a stop, applied on every rank at the same round."""
        self.boundaries += 1
        if self.boundaries % self.every == 0:
            self.round()
        session = self.session
        while session.paused and session.stop_request is None:
            session.inbox.wait(HEARTBEAT)
            self.round()

    def round(self) -> None:
        due, local = self.receive()
        self.send()  # the next round goes out before anything here is applied
        self.apply(due, local)

    def take_flush(self) -> bool:
        """Whether the last round asked every rank to flush now (once)."""
        flush, self.flush_now = self.flush_now, False
        return flush

    def receive(self) -> tuple[list, list]:
        """Wait for the round on the wire (done by now, but for a heartbeat); its commands are due."""
        if self.work is None:
            return [], []
        self.work.wait()
        self.work = None
        rows = [row.tolist() for row in self.received]
        lead = rows[0]
        for rank, row in enumerate(rows):
            if row[SEQ] != self.seq or row[STEP] != lead[STEP]:
                raise RuntimeError(f"the ranks are out of step: rank {rank} is at round {row[SEQ]}, step "
                                   f"{row[STEP]}; rank 0 at round {lead[SEQ]}, step {lead[STEP]}")
        self.clock = lead[CLOCK] / 1e6
        self.flush_now = self.flush_now or bool(lead[FLAGS] & FLUSH)
        self.rates = [row[RATE] / 1000 for row in rows]
        commands = decode(lead)
        futures = self.in_flight if self.world.leader else [None] * len(commands)
        self.in_flight = []
        due = list(zip(commands, futures))
        if any(row[FLAGS] & STOP for row in rows) and not any(isinstance(c, cmd.Stop) for c in commands):
            due.append((cmd.Stop(save=True), None))
        local, self.local_in_flight = self.local_in_flight, []
        if lead[FLAGS] & LOCAL and not local:
            local = [None]  # rank 0 answers something alone: every rank flushes with it
        return due, local

    def send(self) -> None:
        """This rank's row of the next round, sent without waiting."""
        session = self.session
        flags, payload = 0, b""
        if self.world.leader:
            for command, future in session.inbox.take():
                (self.local if isinstance(command, cmd.Predict) else self.waiting).append((command, future))
            payload, self.in_flight = self.pack()
            if time.perf_counter() >= session.next_flush:
                flags |= FLUSH
                session.next_flush = float("inf")  # asked once: the flush itself sets the next
            if self.local:
                flags |= LOCAL
                self.local_in_flight, self.local = self.local, []
        else:
            for command, future in session.inbox.take():  # a signal on this rank, say
                self.stop_asked = self.stop_asked or isinstance(command, cmd.Stop)
                future.set_result(cmd.Reply(True, "every rank stops at the next step boundary"))
        if self.stop_asked and session.stop_request is None:
            flags |= STOP
        self.seq += 1
        row = torch.zeros(WORDS, dtype=torch.int64)
        row[:LENGTH + 1] = torch.tensor([self.seq, session.step_of(), flags, round(self.local_rate * 1000),
                                         round((time.perf_counter() - self.started) * 1e6), len(payload)])
        if payload:
            padded = payload + b"\0" * (-len(payload) % 8)
            row[HEADER:HEADER + len(padded) // 8] = torch.frombuffer(bytearray(padded), dtype=torch.int64)
        self.sent = row
        self.work = dist.all_gather(self.received, row, group=self.world.group, async_op=True)

    def pack(self) -> tuple[bytes, list]:
        """Rank 0's waiting commands that fit in one round, as JSON, and their futures."""
        items, futures, size = [], [], 2
        while self.waiting:
            command, future = self.waiting[0]
            text = json.dumps(command.to_json(), separators=(",", ":"))
            if size + len(text) + 1 > ROOM:
                if not items:  # never fits: refused, instead of holding every later command back
                    self.waiting.popleft()
                    future.set_result(cmd.Reply(False, f"command {command.name!r} is too long to send to every rank"))
                    continue
                break
            self.waiting.popleft()
            items.append(text)
            futures.append(future)
            size += len(text) + 1
        return ("[" + ",".join(items) + "]").encode() if items else b"", futures

    def apply(self, due: list, local: list) -> None:
        """Apply the round's commands on this rank; every rank has flushed its steps first, so the
        losses are reduced together and each command's events follow the steps before it."""
        if not due and not local:
            return
        session = self.session
        session.flush()
        step = session.step_of()
        for command, future in due:
            if isinstance(command, cmd.Stop) and future is None and session.stop_request is not None:
                continue  # a signal's stop for a run already stopping
            try:
                reply = session.apply(command)
                session.flush_and_deliver()
            except BaseException as e:
                if future is not None:
                    future.set_result(cmd.Reply(False, f"the run is failing: {e}"))
                raise
            self.world.say(f"{command.name} at step {step}" + ("" if reply.ok else f" refused: {reply.message}"))
            if future is not None:
                future.set_result(reply)
        for item in local:
            if item is None:
                continue
            command, future = item
            future.set_result(session.apply(command))
            session.flush_and_deliver()
        session.flush_started = time.perf_counter()  # time in commands and pauses is not training time

    def close(self, reason: str) -> None:
        """The run has ended: the round on the wire is waited for (every rank sent it), and the
        commands not yet applied are refused with `reason`."""
        if not self.world.broken:
            with contextlib.suppress(Exception):
                if self.work is not None:
                    self.work.wait()
                # The ranks leave the run together: none tears down its connections (the script's
                # destroy_process_group, the end of its process) while another still sends.
                dist.barrier(group=self.world.group)
        self.work = None
        pending = [*self.in_flight, *(f for _, f in self.waiting), *(f for _, f in self.local),
                   *(f for _, f in self.local_in_flight)]
        self.in_flight, self.local, self.local_in_flight = [], [], []
        self.waiting.clear()
        for future in pending:
            if future is not None and not future.done():
                future.set_result(cmd.Reply(False, reason))


def decode(row: list[int]) -> list[cmd.Command]:
    """Rank 0's commands from its row of a round."""
    length = row[LENGTH]
    if not length:
        return []
    words = torch.tensor(row[HEADER:HEADER + (length + 7) // 8], dtype=torch.int64)
    text = bytes(words.numpy().tobytes())[:length].decode()
    try:
        return [cmd.Command.from_json(obj) for obj in json.loads(text)]
    except (ValueError, UserError) as e:
        raise RuntimeError(f"rank 0 sent commands this rank cannot read: {e}") from None
