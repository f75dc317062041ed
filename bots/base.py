"""The adapter contract: a buyer channel sends replies, a desk publishes case news.

An adapter also declares its routes (or start/stop for polling) and its
limits; it degrades what it cannot show (buttons -> numbered text).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Protocol

from handlers.model import Channel, DeskAction, Reply


class SendError(Exception):
    """A send failed. `retry_after` (seconds) if the platform said when to retry;
    `permanent` if retrying cannot help (blocked by the user, chat gone); `reason`, a key
    of the `send_fail_reasons` labels, says why in the agents' words when it is known."""

    def __init__(self, message: str, *, retry_after: float | None = None, permanent: bool = False,
                 reason: str = "") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.permanent = permanent
        self.reason = reason


class BuyerChannel(Protocol):
    platform: str

    async def send(self, channel: Channel, replies: list[Reply], key: str) -> None:
        """Deliver one turn's replies, in order.

        `key` is the same on every retry of this delivery: platforms that take an
        idempotency key (WeCom's msgid) or stores that can check it (the web chat
        mailbox) use it, so a retry after a crash does not deliver twice."""
        ...


class Desk(Protocol):
    name: str

    async def publish(
        self, actions: list[DeskAction], card: Callable[[], Awaitable[dict[str, Any] | None]]
    ) -> None:
        """Show case news; `await card()` builds the case's current card (only desks that show it pay)."""
        ...
