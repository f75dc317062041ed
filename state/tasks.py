"""Background loops that stop when asked.

Cancelling a task is not enough here: a client library can swallow a
cancellation (redis-py's timeout handling does, on Python 3.11), and the loop
then sleeps on forever. So loops watch a stop event, sleep through it, and are
cancelled only as a last resort.
"""

from __future__ import annotations

import asyncio
from typing import Iterable


def stop_if_cancelled() -> None:
    """Call in an `except Exception` branch of a loop: re-raise a swallowed cancellation."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Stopper:
    def __init__(self) -> None:
        self.event = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self.event.is_set()

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; True if the loop should go on."""
        if self.event.is_set():
            return False
        try:
            await asyncio.wait_for(self.event.wait(), seconds)
        except asyncio.TimeoutError:
            return True
        return False

    async def finish(self, tasks: Iterable[asyncio.Task[object] | None], timeout: float = 5.0) -> None:
        self.event.set()
        pending = {t for t in tasks if t is not None and not t.done()}
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            for t in late:
                t.cancel()
            if late:
                await asyncio.wait(late, timeout=timeout)
