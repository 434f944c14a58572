"""The control socket: a Unix socket in the run folder, mode 0600, JSON lines both ways.

On connect a client gets the run's history (the bytes of events.jsonl so far), then a line
`{"history_end": offset}` (its length in bytes), then every live event; no event is lost or
repeated across that seam. Lines a client sends are commands; each gets a reply line
`{"reply": id, "ok": ..., "message": ..., "data": ...}`, also while the history is still on its
way: the history goes out in line-aligned chunks and replies go out between them. A client that
leaves, or reads too slowly, never stalls the run: the loop only hands batches to this thread, and
a client whose backlog passes MAX_BACKLOG bytes is dropped with a message.

The history is sent by the kernel (sendfile), so a client costs the engine about nothing however
long the history is; where sendfile is not available, asyncio falls back to reading the file.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import socket
import sys
from collections import deque
from pathlib import Path

from . import commands as cmd
from . import wire
from .errors import UserError
from .runstore import socket_address, socket_is_live

HISTORY_CHUNK = 256 << 10  # history bytes sent between two chances to reply
MAX_BACKLOG = 64 << 20  # bytes queued for one client before it is dropped
LINE_LIMIT = wire.LINE_LIMIT  # the longest command line (a predict with many records) we accept
FINISHED = b'{"event":"run_finished"'
LAST_REPLY_SECONDS = 1.0  # once the run has ended, how long a reply it still owes is waited for


def bind_private(path: Path) -> socket.socket:
    """A listening Unix socket at `path` that only its owner can connect to (mode 0600).

    It is bound under a temporary name and moved into place once it listens, so a socket file
    that exists always answers. A stale socket left by a killed run is replaced; a live one is
    an error.
    """
    if path.exists() or path.is_symlink():
        if socket_is_live(path):
            raise UserError(f"{path} is in use by a live run")
        path.unlink()
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # created 0600: no moment where others could connect
    try:
        with socket_address(staging) as address:
            sock.bind(address)
        os.chmod(staging, 0o600)
        sock.listen(128)  # many clients may attach at the same moment
        os.replace(staging, path)
    except BaseException:
        sock.close()
        staging.unlink(missing_ok=True)
        raise
    finally:
        os.umask(old)
    sock.setblocking(False)
    return sock


class Client:
    """One connected client: its writer and what waits to be written to it.

    One task writes to a client (`task`); everything else only queues, so a reply never lands
    inside a line, nor beside a sendfile in progress.
    """

    def __init__(self, writer: asyncio.StreamWriter, task: asyncio.Task):
        self.writer = writer
        self.task = task
        self.backlog: deque[bytes] = deque()  # live events, then replies too once the history is out
        self.replies: deque[bytes] = deque()  # replies that go out between history chunks
        self.backlog_bytes = 0
        self.wake = asyncio.Event()
        self.in_history = True
        self.dropped = False
        self.finished = False  # run_finished is queued: the stream ends after it
        self.asked = 0  # commands sent to the run and not yet answered
        self.answered = asyncio.Event()  # set whenever none is

    def deliver(self, batch: list, data: bytes) -> None:
        """Queue a delivery of live events (called on this loop for every delivery of the run)."""
        if self.dropped:
            return
        self.finished = self.finished or any(e.event == "run_finished" for e in batch)
        self._queue(self.backlog, data)

    def answer(self, line: bytes) -> None:
        """Queue a reply line: between history chunks while the history is sent, else in turn."""
        if not self.dropped:
            self._queue(self.replies if self.in_history else self.backlog, line)

    def _queue(self, queue: deque, data: bytes) -> None:
        queue.append(data)
        self.backlog_bytes += len(data)
        if self.backlog_bytes > MAX_BACKLOG:
            self.drop()
        self.wake.set()

    def take(self, queue: deque) -> bytes:
        data = queue.popleft()
        self.backlog_bytes -= len(data)
        return data

    def drop(self) -> None:
        """Cut off a client that cannot keep up: its writing task ends, saying why."""
        self.dropped = True
        self.backlog.clear()
        self.replies.clear()
        self.backlog_bytes = 0
        self.task.cancel()  # also when it waits in a sendfile that a reader who never reads holds
        print("traintop: dropped a client that read too slowly", file=sys.stderr, flush=True)


class LineCuts:
    """Offsets in events.jsonl where a line ends, about HISTORY_CHUNK apart: the history's chunks.

    The log only grows while the server runs, so a cut found once holds for every later client;
    each is found by reading a little past HISTORY_CHUNK, never the file in between.
    """

    def __init__(self):
        self.cuts = [0]

    def after(self, fd: int, position: int, end: int) -> int:
        """The first cut after `position` (a cut), or `end` when none comes before it."""
        i = bisect.bisect_right(self.cuts, position)
        if i < len(self.cuts):
            return min(self.cuts[i], end)
        start = position + HISTORY_CHUNK
        while start < end:
            block = os.pread(fd, min(64 << 10, end - start), start)
            newline = block.find(b"\n")
            if newline >= 0:
                cut = start + newline + 1
                if position == self.cuts[-1]:
                    self.cuts.append(cut)
                return cut
            if not block:
                break
            start += len(block)
        return end


class ControlServer:
    """Serves one run's events and commands on its control socket.

    `run` needs: `folder` (with `.socket` and `.events`), `subscribe(callback) -> offset`,
    `unsubscribe(callback)` and `send_nowait(command) -> Future[Reply]`.
    """

    def __init__(self, run):
        self.run = run
        self.path: Path = run.folder.socket
        self.server: asyncio.base_events.Server | None = None
        self.clients: set[Client] = set()
        self.tasks: set[asyncio.Task] = set()
        self.cuts = LineCuts()

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, sock=bind_private(self.path),
                                                      limit=LINE_LIMIT)

    async def close(self, grace: float = 2.0) -> None:
        """Stop accepting, let clients receive what is queued (up to `grace` s), remove the socket."""
        if self.server is not None:
            self.server.close()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=grace)
        for task in list(self.tasks):
            task.cancel()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.tasks.add(task)
        client = Client(writer, task)
        offset = self.run.subscribe(client.deliver)
        self.clients.add(client)
        commands = asyncio.create_task(self._read_commands(reader, client))
        try:
            ended = await self._send_history(client, offset)
            self._write_replies(client)
            writer.write(b'{"history_end":%d}\n' % offset)
            client.in_history = False
            if not ended:
                await self._send_live(client)
            await self._send_last_replies(client)
            await writer.drain()
        except (OSError, RuntimeError, asyncio.CancelledError):  # gone, closing, dropped or shut down
            pass
        finally:
            self.run.unsubscribe(client.deliver)
            self.clients.discard(client)
            commands.cancel()
            if client.dropped:
                try:
                    writer.write(b'{"error":"dropped: this client read too slowly to keep up with the run"}\n')
                except RuntimeError:  # the transport is closing
                    pass
                writer.transport.abort()  # a client that does not read would hold a normal close forever
            else:
                writer.close()
            self.tasks.discard(task)

    async def _send_history(self, client: Client, offset: int) -> bool:
        """The bytes of events.jsonl before `offset`, replies between chunks; True when they end
        with run_finished."""
        loop = asyncio.get_running_loop()
        with open(self.run.folder.events, "rb") as f:
            fd = f.fileno()
            position = 0
            while position < offset:
                end = self.cuts.after(fd, position, offset)
                self._write_replies(client)
                await loop.sendfile(client.writer.transport, f, position, end - position)
                position = end
                # sendfile stops reading this client's lines while it runs: let them in before the next
                # chunk (one turn of the loop to see them, one to read them)
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            tail = os.pread(fd, min(offset, 64 << 10), max(0, offset - (64 << 10)))
        last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        return last.startswith(FINISHED)

    def _write_replies(self, client: Client) -> None:
        while client.replies:
            client.writer.write(client.take(client.replies))

    async def _send_live(self, client: Client) -> None:
        while not client.dropped:
            await client.wake.wait()
            client.wake.clear()
            while client.backlog:
                client.writer.write(client.take(client.backlog))
                await client.writer.drain()
            if client.finished:
                return

    async def _send_last_replies(self, client: Client) -> None:
        """The run has ended: the replies to commands it was still answering (the stop that ended
        it, say) go out before the connection closes, however the threads raced."""
        if client.asked and not client.dropped:
            client.answered.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(client.answered.wait(), LAST_REPLY_SECONDS)
        while client.backlog and not client.dropped:
            client.writer.write(client.take(client.backlog))
            await client.writer.drain()

    async def _read_commands(self, reader: asyncio.StreamReader, client: Client) -> None:
        """Every line the client sends gets one reply line; nothing it sends ends this loop."""
        while True:
            try:
                line = await wire.read_line(reader)
            except Exception:  # noqa: BLE001 - the connection broke (reset, closed): the client has gone
                return
            if not line:
                return
            if isinstance(line, wire.Overlong):
                request_id, reply = wire.refuse_overlong(line, LINE_LIMIT)
            else:
                request_id, reply = wire.read_command(line)
            if isinstance(reply, cmd.Command):
                client.asked += 1
                try:
                    reply = await asyncio.wrap_future(self.run.send_nowait(reply))
                except Exception as e:  # noqa: BLE001 - a command the run could not take is answered too
                    reply = cmd.Reply(False, f"the engine could not take this command: {type(e).__name__}: {e}")
                finally:
                    client.asked -= 1
            client.answer(wire.reply_line(request_id, reply))
            if not client.asked:
                client.answered.set()
