"""Helpers the stories share: a buyer and an agent talking to a running kefu over real HTTP,
and a buyer talking straight to the engine (handler tests, no web server)."""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import time
import uuid
from typing import Any

import aiohttp
from PIL import Image

from handlers.engine import Engine
from handlers.model import AgentCommand, Buyer, BuyerMessage, Channel, FileInfo, Media, Reply

ORDER_OK = "3849201756382910475"
REDIS_URL = os.environ.get("KEFU_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TOKEN = "test-desk-token"


def png(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def jpeg(color: tuple[int, int, int] = (30, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (80, 60), color).save(buf, "JPEG")
    return buf.getvalue()


class WebBuyer:
    """A buyer on the web chat page, speaking the public JSON API."""

    def __init__(self, http: aiohttp.ClientSession, base: str, visitor: str | None = None, name: str = "") -> None:
        self.http = http
        self.base = base.rstrip("/")
        self.visitor = visitor or f"v-{uuid.uuid4().hex[:12]}"
        self.name = name
        self.after = 0
        self.seen: list[dict[str, Any]] = []

    async def post(self, **fields: Any) -> dict[str, Any]:
        body = {"visitor": self.visitor, "client_msg_id": uuid.uuid4().hex, **fields}
        if self.name:
            body.setdefault("name", self.name)
        async with self.http.post(f"{self.base}/api/webchat/messages", json=body) as resp:
            data = await resp.json()
            assert resp.status == 200, data
            return data

    async def say(self, text: str, **extra: Any) -> list[dict[str, Any]]:
        await self.post(text=text, **extra)
        return await self.replies()

    async def press(self, payload: str) -> list[dict[str, Any]]:
        await self.post(payload=payload)
        return await self.replies()

    async def photo(self, data: bytes, filename: str = "photo.png", content_type: str = "image/png",
                    client_msg_id: str | None = None) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
        form = aiohttp.FormData()
        form.add_field("visitor", self.visitor)
        form.add_field("client_msg_id", client_msg_id or uuid.uuid4().hex)
        form.add_field("photo", data, filename=filename, content_type=content_type)
        async with self.http.post(f"{self.base}/api/webchat/messages", data=form) as resp:
            status, body = resp.status, await resp.json()
        return status, body, (await self.replies() if status == 200 else [])

    async def replies(self, wait: float = 5.0) -> list[dict[str, Any]]:
        """Messages since the last call (the POST returns after they are delivered)."""
        async with self.http.get(
            f"{self.base}/api/webchat/messages", params={"visitor": self.visitor, "after": self.after, "wait": wait}
        ) as resp:
            assert resp.status == 200
            msgs = (await resp.json())["messages"]
        if msgs:
            self.after = msgs[-1]["seq"]
        self.seen.extend(msgs)
        return msgs


def texts(msgs: list[dict[str, Any]]) -> str:
    return "\n".join(m["text"] for m in msgs)


def buttons(msgs: list[dict[str, Any]]) -> list[str]:
    return [b["payload"] for m in msgs for b in m.get("buttons", [])]


class WebAgent:
    def __init__(self, http: aiohttp.ClientSession, base: str, name: str, token: str = TOKEN) -> None:
        self.http, self.base, self.name = http, base.rstrip("/"), name
        self.headers = {"Authorization": f"Bearer {token}"}

    async def cases(self, status: str | None = None) -> list[dict[str, Any]]:
        params = {"status": status} if status else {}
        async with self.http.get(f"{self.base}/api/desk/cases", params=params, headers=self.headers) as resp:
            assert resp.status == 200
            return (await resp.json())["cases"]

    async def case(self, case_id: str) -> dict[str, Any]:
        async with self.http.get(f"{self.base}/api/desk/cases/{case_id}", headers=self.headers) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def act(self, case_id: str, verb: str, expect: int = 200, **body: Any) -> dict[str, Any]:
        async with self.http.post(f"{self.base}/api/desk/cases/{case_id}/{verb}",
                                  json={"agent": self.name, **body}, headers=self.headers) as resp:
            data = await resp.json()
            assert resp.status == expect, data
            return data


class EngineBuyer:
    """A buyer talking straight to the engine: no web server, no network."""

    _ids = itertools.count(1)

    def __init__(self, engine: Engine, chat: str = "buyer-1", name: str = "小李", platform: str = "webchat",
                 start: float | None = None) -> None:
        self.engine = engine
        self.channel = Channel(platform=platform, bot="web", chat=chat)
        self.buyer = Buyer(id=chat, name=name)
        self.now = start if start is not None else time.time()

    async def send(self, text: str = "", *, payload: str | None = None, photos: int = 0,
                   files: tuple[FileInfo, ...] = (), after: float = 2.0, message_id: str | None = None,
                   order_no: str | None = None) -> list[Reply]:
        self.now += after
        media = tuple(Media(id=f"{uuid.uuid4().hex[:40]}.png", content_type="image/png") for _ in range(photos))
        out = await self.engine.handle(BuyerMessage(
            message_id=message_id or f"m{next(self._ids)}", channel=self.channel, buyer=self.buyer,
            at=self.now, text=text, payload=payload, photos=media, files=files, order_no=order_no,
        ))
        self.last = out
        return [a for a in out.actions if isinstance(a, Reply)]

    async def agent(self, verb: str, case_id: str, text: str = "", agent: str = "小王", after: float = 2.0):  # type: ignore[no-untyped-def]
        self.now += after
        out = await self.engine.handle(AgentCommand(
            message_id=f"a{next(self._ids)}", case_id=case_id, verb=verb, agent=agent, at=self.now, text=text,  # type: ignore[arg-type]
        ))
        self.last = out
        return out


def said(replies: list[Reply]) -> str:
    return "\n".join(r.text for r in replies)


async def eventually(check, timeout: float = 5.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
