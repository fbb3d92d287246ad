"""A TCP proxy on 127.0.0.1 that breaks the line after exactly k bytes, for tests.

    with FaultProxy(server.port, direction="up", at=120, fault="cut") as proxy:
        ...  # connect to 127.0.0.1:proxy.port instead of the server

Bytes are counted over every connection the proxy carries, in each direction
apart: ``up`` is client to server, ``down`` server to client. Once ``at``
bytes have gone in ``direction``, the connection carrying the next byte meets
the fault (once; later connections are carried whole):

- ``cut``: both sides are closed (FIN), the bytes after the k-th never go;
- ``rst``: both sides are reset (RST);
- ``silent``: nothing more is carried either way on that connection, and it
  is kept open until one side closes it (a line that went dead).

With ``at=None`` nothing is broken; ``proxy.chunks`` then records each piece
carried as ``(direction, bytes counted before it, its length)``: where the
boundaries of a session lie, to place the cuts.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from typing import Literal

Direction = Literal["up", "down"]
Fault = Literal["cut", "rst", "silent"]


class FaultProxy:
    def __init__(
        self,
        target_port: int,
        *,
        direction: Direction = "up",
        at: int | None = None,
        fault: Fault = "cut",
    ) -> None:
        self.target_port = target_port
        self.direction = direction
        self.at = at
        self.fault = fault
        self.fired = False
        self.counted: dict[str, int] = {"up": 0, "down": 0}
        self.chunks: list[tuple[str, int, int]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # ---- life

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(5)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._carry, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()

    # ---- one connection

    async def _carry(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        self._writers |= {client_w, server_w}
        line = _Line(client_w, server_w)
        pumps = [
            asyncio.create_task(self._pump(client_r, server_w, "up", line)),
            asyncio.create_task(self._pump(server_r, client_w, "down", line)),
        ]
        # Until one side hangs up (a dead line is held open until then).
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for w in (client_w, server_w):
            w.close()
            self._writers.discard(w)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: str,
        line: _Line,
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if line.dead:
                    continue  # a silent line: read and dropped
                before = self.counted[direction]
                if (
                    self.at is not None
                    and not self.fired
                    and direction == self.direction
                    and before + len(data) > self.at
                ):
                    self.fired = True
                    head = data[: self.at - before]
                    self.counted[direction] += len(head)
                    if head:
                        writer.write(head)
                        await writer.drain()
                    if self.fault == "silent":
                        line.dead = True
                        continue
                    line.broken(rst=self.fault == "rst")
                    return
                self.counted[direction] += len(data)
                self.chunks.append((direction, before, len(data)))
                writer.write(data)
                await writer.drain()


class _Line:
    """The two sides of one connection the proxy carries."""

    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.sides = (client, server)
        self.dead = False

    def broken(self, *, rst: bool) -> None:
        for w in self.sides:
            if rst:
                sock = w.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                w.transport.abort()
            else:
                w.close()
