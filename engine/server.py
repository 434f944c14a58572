"""The control socket: a Unix socket in the run folder, mode 0600, JSON lines both ways.

On connect a client gets the run's history (the bytes of events.jsonl so far), then every live
event; no event is lost or repeated across that seam. Lines a client sends are commands; each gets
a reply line `{"reply": id, "ok": ..., "message": ...}`. A client that leaves, or reads too
slowly, never stalls the run: the loop only hands batches to this thread, and a client whose
backlog passes MAX_BACKLOG bytes is dropped with a message.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections import deque
from pathlib import Path

from . import commands as cmd
from .errors import UserError
from .runstore import socket_address, socket_is_live

CHUNK = 1 << 20
MAX_BACKLOG = 64 << 20  # bytes queued for one client before it is dropped
LINE_LIMIT = 64 << 20  # the longest command line (a predict with many records) we accept


def bind_private(path: Path) -> socket.socket:
    """A listening Unix socket at `path` that only its owner can connect to (mode 0600).

    A stale socket left by a killed run is replaced; a live one is an error.
    """
    if path.exists() or path.is_symlink():
        if socket_is_live(path):
            raise UserError(f"{path} is in use by a live run")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # created 0600: no moment where others could connect
    try:
        with socket_address(path) as address:
            sock.bind(address)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    sock.setblocking(False)
    return sock


class Client:
    """One connected client: a writer and the live bytes waiting for it."""

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.backlog: deque[bytes] = deque()
        self.backlog_bytes = 0
        self.wake = asyncio.Event()
        self.history_sent = asyncio.Event()  # replies wait for it: history is sent in raw chunks
        self.dropped = False
        self.finished = False  # run_finished is queued: the stream ends after it

    def offer(self, batch: list, data: bytes) -> None:
        if self.dropped:
            return
        self.finished = self.finished or any(e.kind == "run_finished" for e in batch)
        self.backlog.append(data)
        self.backlog_bytes += len(data)
        if self.backlog_bytes > MAX_BACKLOG:
            self.drop()
        self.wake.set()

    def drop(self) -> None:
        """Cut off a client that cannot keep up: say why, then close without waiting for it."""
        self.dropped = True
        self.backlog.clear()
        transport = self.writer.transport
        transport.write(b'{"error":"dropped: this client read too slowly to keep up with the run"}\n')
        transport.abort()  # a client that does not read would hold a normal close forever
        print("traintop: dropped a client that read too slowly", file=sys.stderr, flush=True)

    def send_line(self, obj: dict) -> None:
        self.writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")


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
        client = Client(writer)
        callback = client.offer
        offset = self.run.subscribe(callback)
        self.clients.add(client)
        commands = asyncio.create_task(self._read_commands(reader, client))
        try:
            ended = await self._send_history(client, offset)
            client.history_sent.set()
            if not ended:
                await self._send_live(client)
            await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.run.unsubscribe(callback)
            self.clients.discard(client)
            commands.cancel()
            writer.close()
            self.tasks.discard(task)

    async def _send_history(self, client: Client, offset: int) -> bool:
        """The bytes of events.jsonl before `offset`; True when they end with run_finished."""
        tail = b""
        with open(self.run.folder.events, "rb") as f:
            remaining = offset
            while remaining > 0:
                chunk = f.read(min(CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                tail = (tail + chunk)[-4096:]
                client.writer.write(chunk)
                await client.writer.drain()
        last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        return last.startswith(b'{"event":"run_finished"')

    async def _send_live(self, client: Client) -> None:
        while not client.dropped:
            await client.wake.wait()
            client.wake.clear()
            while client.backlog:
                data = client.backlog.popleft()
                client.backlog_bytes -= len(data)
                client.writer.write(data)
                await client.writer.drain()
            if client.finished:
                return

    async def _read_commands(self, reader: asyncio.StreamReader, client: Client) -> None:
        while True:
            request_id = None
            try:
                line = await reader.readline()
                if not line:
                    return
                obj = json.loads(line)
                request_id = obj.get("id") if isinstance(obj, dict) else None
                command = cmd.Command.from_json(obj)
            except (ValueError, UserError) as e:  # too long, bad JSON, or a bad command
                message = str(e) if isinstance(e, UserError) else f"not a JSON command line: {e}"
                await client.history_sent.wait()
                client.send_line({"reply": request_id, "ok": False, "message": message})
                continue
            reply = await asyncio.wrap_future(self.run.send_nowait(command))
            await client.history_sent.wait()
            client.send_line({"reply": request_id, "ok": reply.ok, "message": reply.message,
                              "data": reply.data})
