"""Long polls on mailboxes, shared by both stores: a reader waits until its box is
appended to (in this process, or in another one that the store hears about)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any, Awaitable, Callable

Items = list[tuple[int, dict[str, Any]]]


class LongPolls:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = defaultdict(set)
        self.closed = False

    async def read(self, box: str, wait: float, read: Callable[[], Awaitable[Items]]) -> Items:
        """`read()` now; if it finds nothing, once more when the box is woken or `wait` runs out."""
        if wait <= 0 or self.closed:
            return await read()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Listen before reading, so an item appended in between wakes us.
        self._waiters[box].add(fut)
        try:
            items = await read()
            if items:
                return items
            try:
                await asyncio.wait_for(fut, wait)
            except asyncio.TimeoutError:
                return []
            return await read()
        finally:
            waiters = self._waiters.get(box)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    self._waiters.pop(box, None)

    def wake(self, box: str) -> None:
        for fut in self._waiters.pop(box, set()):
            if not fut.done():
                fut.set_result(None)

    def wake_every(self) -> None:
        for box in list(self._waiters):
            self.wake(box)

    def close(self) -> None:
        """Release every long poll now and answer later ones at once (the server is stopping)."""
        self.closed = True
        self.wake_every()
