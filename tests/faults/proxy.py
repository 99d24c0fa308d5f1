"""A TCP proxy between two parties, whose link the fault schedule degrades.

One asyncio loop on a thread forwards each accepted connection to the target. `delay(s)` holds
every chunk that long before passing it on (a slow link); `drop()` closes every open connection
and refuses new ones until `heal()` (a partition, as the peers see it: reset connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class Proxy:
    def __init__(self, target_port: int, name: str = "") -> None:
        self.name = name
        self.target_port = target_port
        self.delay_s = 0.0
        self.dropped = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._run, name=f"proxy-{name}", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.dropped:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer),
                             return_exceptions=True)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                if self.dropped:
                    break
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def retarget(self, port: int) -> None:
        """New connections go to `port` (a party restarted on another port)."""
        self.target_port = port

    def delay(self, seconds: float) -> None:
        self.delay_s = seconds

    def drop(self) -> None:
        self.dropped = True

        def close_all() -> None:
            for w in list(self._writers):
                w.close()
        self._loop.call_soon_threadsafe(close_all)

    def heal(self) -> None:
        self.dropped, self.delay_s = False, 0.0

    def close(self) -> None:
        self.drop()

        def stop() -> None:
            if self._server is not None:
                self._server.close()
            self._loop.stop()
        self._loop.call_soon_threadsafe(stop)
        self._thread.join(5)
