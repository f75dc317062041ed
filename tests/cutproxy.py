"""A TCP proxy in front of Redis that can cut a connection at a chosen command: the transport
fails, everything else is real.

    proxy.lose_reply_to(b"XREADGROUP")  # Redis runs the command, the client never hears back
    proxy.drop(b"XACK")                 # the command never reaches Redis, the connection breaks

Each rule fires once, on the first request that contains the marker.
"""

from __future__ import annotations

import asyncio
import contextlib


class CutProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._rules: list[tuple[str, bytes]] = []
        self.fired: list[tuple[str, bytes]] = []
        self._conns: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def lose_reply_to(self, marker: bytes) -> None:
        self._rules.append(("lose_reply", marker))

    def drop(self, marker: bytes) -> None:
        self._rules.append(("drop", marker))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for w in list(self._conns):
            w.close()

    def _rule_for(self, data: bytes) -> str | None:
        for rule in self._rules:
            if rule[1] in data:
                self._rules.remove(rule)
                self.fired.append(rule)
                return rule[0]
        return None

    async def _client(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            c_writer.close()
            return
        self._conns |= {c_writer, s_writer}
        cut = asyncio.Event()
        muted = asyncio.Event()  # from here on, nothing Redis says reaches the client

        async def up() -> None:  # client -> Redis
            while not cut.is_set():
                data = await c_reader.read(65536)
                if not data:
                    break
                rule = self._rule_for(data)
                if rule == "drop":
                    break
                if rule == "lose_reply":
                    muted.set()
                s_writer.write(data)
                await s_writer.drain()
                if rule == "lose_reply":
                    await asyncio.sleep(0.2)  # Redis has run it by now; its answer dies with the link
                    break
            cut.set()

        async def down() -> None:  # Redis -> client
            while not cut.is_set():
                data = await s_reader.read(65536)
                if not data or cut.is_set():
                    break
                if muted.is_set():
                    continue
                c_writer.write(data)
                await c_writer.drain()
            cut.set()

        tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
        await cut.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in (c_writer, s_writer):
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()
            self._conns.discard(w)
