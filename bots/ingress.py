"""Handles platform requests that were stored before they were acknowledged.

Adapters verify and store a request (state ingress), answer the platform at
once, and this worker does the slow part afterwards: media downloads, the
engine. Rows of one conversation (lane) are handled in order; lanes run in
parallel. Rows sharing a group (a Telegram album) wait until the group has
been quiet for `group_window` seconds and are then handled as one turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Awaitable, Callable

from state.protocol import IngressRow, Store
from state.tasks import stop_if_cancelled

log = logging.getLogger("kefu.ingress")

Handle = Callable[[list[IngressRow]], Awaitable[None]]


class IngressWorker:
    def __init__(
        self, store: Store, source: str, handle: Handle, *, group_window: float = 1.0,
        max_attempts: int = 5, parallel_lanes: int = 16, poll_interval: float = 0.5, whole_lane: bool = False,
    ) -> None:
        """whole_lane: hand every pending row of a lane over at once (a burst), in order."""
        self.store = store
        self.source = source
        self.handle = handle
        self.group_window = group_window
        self.max_attempts = max_attempts
        self.poll_interval = poll_interval
        self.whole_lane = whole_lane
        self._sem = asyncio.Semaphore(parallel_lanes)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._busy_lanes: set[str] = set()
        self._lane_tasks: set[asyncio.Task[None]] = set()


    def kick(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        try:
            await self._pass()  # take partitions (and leftovers) now, not after the first idle wait
        except Exception as exc:
            log.warning("first %s ingress pass failed: %s", self.source, exc.__class__.__name__)
        self._task = asyncio.create_task(self._run(), name=f"kefu-ingress-{self.source}")

    async def stop(self) -> None:
        # Ask the loop to end at its next wake-up rather than cancelling it inside a wait.
        self._stopping = True
        self._wake.set()
        if self._task:
            done, _ = await asyncio.wait({self._task}, timeout=5)
            if not done:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._lane_tasks:  # let turns in progress finish; a stuck one is cancelled
            _, late = await asyncio.wait(set(self._lane_tasks), timeout=5)
            for t in late:
                t.cancel()
            if late:
                await asyncio.wait(late, timeout=2)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until nothing is pending or being handled (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._busy_lanes and not await self.store.ingress_pending(self.source, limit=1):
                return
            self.kick()
            await asyncio.sleep(0.02)

    async def _wait(self) -> None:
        """Until new rows may be there (the store says so, e.g. a blocking stream read)
        or something here asks for another pass (a lane finished, an album got quiet)."""
        store_wait = asyncio.ensure_future(self.store.ingress_wait(self.source, self.poll_interval))
        kick_wait = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({store_wait, kick_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (store_wait, kick_wait):
                t.cancel()  # both are local waits: cheap to drop
            await asyncio.gather(store_wait, kick_wait, return_exceptions=True)
        self._wake.clear()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is unreachable: wait and try again
                stop_if_cancelled()
                log.warning("waiting for %s ingress failed: %s", self.source, exc.__class__.__name__)
                await asyncio.sleep(self.poll_interval)
            if self._stopping:
                return
            try:
                await self._pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                stop_if_cancelled()
                log.exception("ingress pass failed")

    async def _pass(self) -> None:
        rows = await self.store.ingress_pending(self.source, limit=500)
        lanes: OrderedDict[str, list[IngressRow]] = OrderedDict()
        for row in rows:
            lanes.setdefault(row.lane, []).append(row)
        now = time.time()
        for lane, lane_rows in lanes.items():
            if lane in self._busy_lanes:
                continue  # its task picks the new rows up when it is done
            if lane_rows[0].not_before > now:
                continue  # backing off: the rows after it wait too, or order breaks
            self._busy_lanes.add(lane)
            task = asyncio.create_task(self._lane(lane, lane_rows))
            self._lane_tasks.add(task)
            task.add_done_callback(self._lane_tasks.discard)

    async def _lane(self, lane: str, rows: list[IngressRow]) -> None:
        try:
            async with self._sem:
                while rows:
                    batch = list(rows) if self.whole_lane else _next_turn(rows)
                    if batch[0].grp is not None:
                        newest = max(r.created_at for r in batch)
                        quiet = time.time() - newest
                        if quiet < self.group_window:
                            # More parts of the album may still come: look again later.
                            asyncio.get_running_loop().call_later(self.group_window - quiet + 0.05, self.kick)
                            return
                    if not await self._handle(batch):
                        return  # backing off: later rows of this lane must wait, or order breaks
                    rows = [r for r in rows if r not in batch]
        except asyncio.CancelledError:
            raise
        except Exception:  # the store failed while recording the outcome: the rows stay pending
            stop_if_cancelled()
            log.warning("%s lane stopped; its rows are tried again", self.source, exc_info=True)
        finally:
            self._busy_lanes.discard(lane)
            self.kick()

    async def _store_answers(self) -> bool:
        try:
            return await self.store.ping()
        except Exception:
            stop_if_cancelled()
            return False

    async def _handle(self, batch: list[IngressRow]) -> bool:
        ids = [r.id for r in batch]
        try:
            await self.handle(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stop_if_cancelled()
            # An unreachable store is not the message's fault: it waits, and no attempt is spent.
            counts = await self._store_answers()
            attempts = batch[0].attempts + (1 if counts else 0)
            log.warning("handling %s failed (attempt %d%s): %s", self.source, attempts,
                        "" if counts else ", store unreachable", exc.__class__.__name__,
                        extra={"session": batch[0].lane, "message_id": batch[0].key}, exc_info=counts)
            if attempts >= self.max_attempts:
                await self.store.ingress_fail(ids, f"{exc.__class__.__name__}: {exc}"[:500])
                return True
            delay = min(2 ** attempts, 60) if counts else self.poll_interval * 2
            await self.store.ingress_retry(ids, time.time() + delay, str(exc)[:500])
            return False
        try:
            await self.store.ingress_done(ids)
        except Exception as exc:
            stop_if_cancelled()
            # Handled and committed, not yet marked done: the rows stay, and the next pass hands
            # them over again as duplicates, which the turn's dedupe drops.
            log.warning("could not mark %s rows done: %s", self.source, exc.__class__.__name__,
                        extra={"session": batch[0].lane, "message_id": batch[0].key})
            return False
        return True


def _next_turn(rows: list[IngressRow]) -> list[IngressRow]:
    """The first row, with every pending row of its group."""
    first = rows[0]
    if first.grp is None:
        return [first]
    return [r for r in rows if r.grp == first.grp]
