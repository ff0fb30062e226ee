"""Storage trouble on demand: a loopback TCP proxy in front of Azurite that a test switches, at
any moment, between forwarding (`pass`), holding every byte (`stall`), resetting every
connection (`cut`) and forwarding late (`slow`)."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, Literal, get_args

from registry.azurite import ACCOUNT, ACCOUNT_KEY, Azurite, free_port

Mode = Literal["pass", "stall", "cut", "slow"]
CHUNK = 256 * 1024


class FaultProxy:
    """Forwards 127.0.0.1:port to target, in a mode a test may change from any thread.

    The event loop runs in a thread of its own, so a test's blocking calls never stall it.
    `stall` holds existing connections too (bytes read are kept, and forwarded after `pass`)
    and accepts new ones without connecting them; `cut` resets existing connections and every
    new one; `slow` waits `delay` seconds before forwarding each chunk.
    """

    def __init__(self, target_host: str, target_port: int, delay: float = 0.2):
        self.target = (target_host, target_port)
        self.delay = delay
        self.port = 0
        self.accepted = 0  # connections accepted so far, whatever the mode
        self._mode: Mode = "pass"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._links: set[_Link] = set()

    @property
    def mode(self) -> Mode:
        return self._mode

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def set_mode(self, mode: Mode) -> None:
        """Switch; when this returns, the mode applies to every connection (a cut has reset them)."""
        if mode not in get_args(Mode):
            raise ValueError(f"unknown mode {mode!r}")
        self._call(self._switch(mode))

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        for attempt in range(3):  # a port picked as free can be taken before we bind it
            self.port = free_port()
            try:
                self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
                return
            except OSError:
                if attempt == 2:
                    raise

    async def _switch(self, mode: Mode) -> None:
        assert self._flowing is not None
        self._mode = mode
        if mode in ("pass", "slow"):
            self._flowing.set()
        else:
            self._flowing.clear()
        if mode == "cut":
            for link in list(self._links):
                link.reset()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.reset()
        tasks = [link.task for link in self._links if link.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(writer, asyncio.current_task())
        if self._mode == "cut":
            link.reset()
            return
        self._links.add(link)
        try:
            await self._until_flowing()  # a stall holds a new connection before it reaches storage
            upstream_reader, link.upstream = await asyncio.open_connection(*self.target)
            await asyncio.gather(self._pump(reader, link.upstream, link), self._pump(upstream_reader, writer, link))
        except (OSError, asyncio.CancelledError):
            pass  # the target refused, or a cut cancelled us: nothing to forward any more
        finally:
            self._links.discard(link)
            link.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                await self._until_flowing()  # in a stall, hold what was read (and an end of stream)
                if self._mode == "slow":
                    await asyncio.sleep(self.delay)
                    await self._until_flowing()
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        except OSError:
            link.abort()  # one side broke: end the other direction too, or it would wait forever

    async def _until_flowing(self) -> None:
        assert self._flowing is not None
        await self._flowing.wait()


class _Link:
    """One client connection and, once connected, its connection to the target."""

    def __init__(self, client: asyncio.StreamWriter, task: asyncio.Task[None] | None):
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.task = task

    def reset(self) -> None:
        """Abort both sides; the client sees a reset (RST), not an orderly end of stream."""
        sock = self.client.get_extra_info("socket")
        if sock is not None and not self.client.transport.is_closing():
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.abort()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()  # it may be waiting for a stall to end

    def abort(self) -> None:
        """Drop both sides at once (a pump still reading sees the end of its stream)."""
        self.client.transport.abort()
        if self.upstream is not None:
            self.upstream.transport.abort()


class FaultyStorage:
    """Fault proxies in front of an Azurite's blob and table endpoints, switched together."""

    def __init__(self, azurite: Azurite, delay: float = 0.2):
        self.azurite = azurite
        self.blob = FaultProxy(azurite.host, azurite.blob_port, delay)
        self.table = FaultProxy(azurite.host, azurite.table_port, delay)

    @property
    def connection_string(self) -> str:
        """Azurite's connection string (same account and key), with the proxies' ports."""
        base = "http://127.0.0.1"
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={base}:{self.blob.port}/{ACCOUNT};"
            f"QueueEndpoint=http://{self.azurite.host}:{self.azurite.queue_port}/{ACCOUNT};"
            f"TableEndpoint={base}:{self.table.port}/{ACCOUNT};"
        )

    def set_mode(self, mode: Mode) -> None:
        self.blob.set_mode(mode)
        self.table.set_mode(mode)

    def start(self) -> FaultyStorage:
        self.blob.start()
        self.table.start()
        return self

    def stop(self) -> None:
        self.blob.stop()
        self.table.stop()

    def __enter__(self) -> FaultyStorage:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
