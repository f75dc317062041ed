"""Sends go out in order per buyer, are retried with back-off, and a send that never
succeeds is put on the case for agents. The buyer channel here is a test platform
that answers like a rate-limited API (the real platforms' 429s are tested with them)."""

from __future__ import annotations

import asyncio
from typing import Any

from bots.base import SendError
from bots.dispatcher import Dispatcher, backoff
from handlers.context import Context
from handlers.engine import Engine
from handlers.model import Case, Channel, DeskAction, Reply
from tests.support import EngineBuyer, eventually


class RateLimitedPlatform:
    """Refuses the first `refuse` sends with retry_after, then accepts."""

    platform = "flaky"

    def __init__(self, refuse: int, retry_after: float | None = 0.05, permanent: bool = False) -> None:
        self.refuse = refuse
        self.retry_after = retry_after
        self.permanent = permanent
        self.calls = 0
        self.delivered: list[str] = []

    async def send(self, channel: Channel, replies: list[Reply], key: str) -> None:
        self.calls += 1
        if self.calls <= self.refuse:
            raise SendError("429 Too Many Requests", retry_after=self.retry_after, permanent=self.permanent)
        self.delivered.extend(r.text for r in replies)


class RecordingDesk:
    name = "web"

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []

    async def publish(self, actions: list[DeskAction], card: Any) -> None:
        current = await card()
        self.seen.extend((a.kind, a.text, current["status"] if current else None) for a in actions)


async def run(ctx: Context, platform: RateLimitedPlatform, max_attempts: int = 8) -> tuple[Engine, Dispatcher, RecordingDesk]:
    desk = RecordingDesk()
    d = Dispatcher(ctx, channels={"flaky": platform}, desks={"web": desk}, max_attempts=max_attempts, poll_interval=0.02)
    engine = Engine(ctx, desks=["web"], on_commit=d.flush)
    d.report_failure = engine.handle
    await d.start()
    return engine, d, desk


async def test_rate_limited_sends_are_retried_in_order(ctx: Context) -> None:
    platform = RateLimitedPlatform(refuse=3)
    engine, d, _ = await run(ctx, platform)
    try:
        b = EngineBuyer(engine, platform="flaky")
        await b.send("你好")
        await b.send("什么时候发货")
        await b.send("能开发票吗")
        await eventually(lambda: asyncio.sleep(0, len(platform.delivered) == 3), timeout=10)
        assert "欢迎" in platform.delivered[0]
        assert "48小时" in platform.delivered[1] and "发票" in platform.delivered[2]
        assert platform.calls == 6  # three refusals, then each turn once
        assert await ctx.store.pending_outbox() == []
    finally:
        await d.stop()


async def test_a_send_that_never_succeeds_is_shown_on_the_case(ctx: Context) -> None:
    platform = RateLimitedPlatform(refuse=10**6, retry_after=0.01)
    engine, d, desk = await run(ctx, platform, max_attempts=3)
    try:
        b = EngineBuyer(engine, platform="flaky")
        await b.send("转人工")

        async def failed() -> bool:
            row = await ctx.store.get_case("K1001")
            return bool(row and Case.model_validate(row.data).send_failures)

        await eventually(failed, timeout=10)
        case = Case.model_validate((await ctx.store.get_case("K1001")).data)  # type: ignore[union-attr]
        assert case.history[-1].event == "send_failed" and "429" in case.history[-1].text
        await eventually(lambda: asyncio.sleep(0, any("未能送达" in t for _, t, _ in desk.seen)))
        assert platform.delivered == []
    finally:
        await d.stop()


async def test_a_permanent_failure_is_not_retried(ctx: Context) -> None:
    platform = RateLimitedPlatform(refuse=1, permanent=True)
    engine, d, _ = await run(ctx, platform)
    try:
        b = EngineBuyer(engine, platform="flaky")
        await b.send("转人工")
        await b.send("人呢")
        await eventually(lambda: asyncio.sleep(0, len(platform.delivered) == 1), timeout=5)
        assert platform.calls == 2  # the failed turn was not tried again; the next one went out
        assert "K1001" in platform.delivered[0]
    finally:
        await d.stop()


def test_backoff_grows_and_is_capped() -> None:
    assert [backoff(i) for i in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff(30) == 300.0
