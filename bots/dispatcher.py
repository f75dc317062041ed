"""Sends the outbox through the adapters: in order per target, with retry and back-off.

A send that keeps failing is marked failed and reported to the engine as a
SendFailed event, so the case shows it to agents; nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from itertools import groupby, takewhile
from typing import Any, Awaitable, Callable

from pydantic import TypeAdapter

from bots import metrics
from bots.base import BuyerChannel, Desk, SendError
from handlers.cards import build_card
from handlers.context import Context
from handlers.model import Action, Case, DeskAction, Reply, SendFailed
from state.keys import split_session_key
from state.protocol import LockTimeout, OutboxRow, Store
from state.tasks import Stopper, stop_if_cancelled

log = logging.getLogger("kefu.dispatch")
_ACTION = TypeAdapter(Action)

HandleEvent = Callable[[Any], Awaitable[Any]]


def backoff(attempts: int) -> float:
    """1, 2, 4 ... seconds, at most five minutes."""
    return float(min(2 ** max(attempts, 0), 300))


class Dispatcher:
    def __init__(
        self, ctx: Context, channels: dict[str, BuyerChannel], desks: dict[str, Desk],
        max_attempts: int = 8, poll_interval: float = 0.5,
    ) -> None:
        self.ctx = ctx
        self.store: Store = ctx.store
        self.channels = channels
        self.desks = desks
        self.max_attempts = max_attempts
        self.poll_interval = poll_interval
        self.report_failure: HandleEvent | None = None  # set to engine.handle by the app
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopper = Stopper()

    # --- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kefu-dispatcher")

    async def stop(self) -> None:
        self._wake.set()
        await self._stopper.finish([self._task])
        self._task = None

    def kick(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopper.stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if self._stopper.stopping:
                return
            try:
                rows = await self.store.pending_outbox(due_before=time.time(), limit=500)
                targets = list(dict.fromkeys(r.target for r in rows))
                # Another process may be sending to a target right now: skip it, it is in hand.
                await asyncio.gather(*(self.flush_target(t, wait=0) for t in targets))
            except asyncio.CancelledError:
                raise
            except Exception:
                stop_if_cancelled()
                log.exception("dispatcher pass failed")
                await self._stopper.sleep(self.poll_interval)

    # --- sending ------------------------------------------------------------------
    async def flush(self, rows: list[OutboxRow]) -> None:
        """Send what a turn just wrote, now (called right after its commit)."""
        by_target: dict[str, list[OutboxRow]] = {}
        for r in rows:
            by_target.setdefault(r.target, []).append(r)
        await asyncio.gather(*(self.flush_target(t, fresh=rs) for t, rs in by_target.items()))

    async def flush_target(self, target: str, wait: float = 10.0, fresh: list[OutboxRow] | None = None) -> None:
        """Send a target's pending items in order; one process at a time per target.

        `fresh`: items just committed; if nothing older waits for the target they go out
        as they are, without reading them back."""
        try:
            lease = await self.store.claim_target(target, timeout=wait)
        except LockTimeout:
            self._schedule_wake(self.poll_interval)  # the holder sends; look again soon
            return
        sent: list[int] = []
        rows: list[OutboxRow] = []
        total = 0
        try:
            if fresh and lease.head is None:
                return  # someone else sent them already
            if fresh and lease.head == fresh[0].id:
                rows = fresh  # nothing older waits: no need to read them back
            else:
                rows = await self.store.pending_outbox(target=target, limit=200)
            now = time.time()
            # One turn's items for one target go out together (and stay in order); a channel
            # that counts messages (WeCom kf) takes everything due at once, to merge it.
            merge = target.startswith("buyer|") and getattr(
                self.channels.get(split_session_key(target.split("|", 1)[1])[0]), "merge_turns", False)
            if merge:
                due = list(takewhile(lambda r: r.next_at <= now, rows))
                groups = [due] if due else [rows[:1]]
            else:
                groups = [list(g) for _, g in groupby(rows, key=lambda r: r.turn)]
            for batch in groups:
                if not batch or batch[0].next_at > now:
                    break  # backing off: later items must wait, or order breaks
                if sent:  # a backlog: mark each batch as soon as the next one is due
                    await self.store.outbox_done(sent, target)
                    sent = []
                ok = await self._send(target, batch)
                if ok is None:
                    sent = [r.id for r in batch]
                    total += len(batch)
                elif not ok:
                    break
        finally:
            # Marking the last batch sent and unlocking is one step.
            await self.store.release_target(lease, sent)
            if total:
                self._count(target, batch_size=total, first=rows[0] if rows else None)

    async def _send(self, target: str, batch: list[OutboxRow]) -> bool | None:
        """None: sent. True: given up (recorded), go on. False: backing off, stop here."""
        actions = [_ACTION.validate_python(r.action) for r in batch]
        try:
            if target.startswith("buyer|"):
                await self._send_buyer(target.split("|", 1)[1], [a for a in actions if isinstance(a, Reply)],
                                       f"ob{batch[0].id}")
            else:
                await self._send_desk(batch[0].action.get("desk", ""), [a for a in actions if isinstance(a, DeskAction)])
        except SendError as exc:
            return await self._failed(target, batch, str(exc), exc.retry_after, exc.permanent, exc.reason)
        except Exception as exc:  # a bug or a network error: retry, never lose
            stop_if_cancelled()
            log.warning("send to %s failed: %s", target.split("|")[0], exc.__class__.__name__,
                        extra={"session": target, "message_id": batch[0].turn})
            return await self._failed(target, batch, f"{exc.__class__.__name__}: {exc}", None, False)
        return None  # sent: the caller marks it done when it lets go of the target

    def _count(self, target: str, batch_size: int, first: OutboxRow | None) -> None:
        if target.startswith("buyer|"):
            metrics.REPLIES_OUT.labels(split_session_key(target.split("|", 1)[1])[0]).inc(batch_size)
        else:
            metrics.DESK_OUT.labels((first.action.get("desk", "") if first else "")).inc(batch_size)

    async def _send_buyer(self, session: str, replies: list[Reply], key: str) -> None:
        platform, _, _ = split_session_key(session)
        channel = self.channels.get(platform)
        if channel is None:
            raise SendError(f"no adapter for platform {platform}", permanent=True)
        await channel.send(replies[0].channel, replies, key)

    async def _send_desk(self, desk_name: str, actions: list[DeskAction]) -> None:
        desk = self.desks.get(desk_name)
        if desk is None:
            raise SendError(f"no desk named {desk_name}", permanent=True)
        case_id = actions[0].case_id

        async def card() -> dict[str, Any] | None:
            row = await self.store.get_case(case_id)
            return await build_card(self.ctx, Case.model_validate(row.data), time.time()) if row else None

        await desk.publish(actions, card)

    async def _failed(
        self, target: str, batch: list[OutboxRow], error: str, retry_after: float | None, permanent: bool,
        reason: str = "",
    ) -> bool:
        ids = [r.id for r in batch]
        attempts = batch[0].attempts + 1
        kind = target.split("|", 1)[0]
        if permanent or attempts >= self.max_attempts:
            metrics.SEND_FAILURES.labels(kind).inc(len(batch))
            await self.store.outbox_fail(ids, error, target)
            log.error("gave up sending after %d attempts: %s", attempts, error[:200],
                      extra={"session": target, "message_id": batch[0].turn})
            if target.startswith("buyer|") and self.report_failure is not None:
                reply = _ACTION.validate_python(batch[0].action)
                await self.report_failure(SendFailed(
                    message_id=f"fail-{batch[0].id}", session=target.split("|", 1)[1], at=time.time(),
                    case_id=getattr(reply, "case_id", None), text=getattr(reply, "text", ""), error=error,
                    reason=reason,
                ))
            return True  # the next item may go: a failed one is on the case for agents
        metrics.SEND_RETRIES.labels(kind).inc(len(batch))
        delay = retry_after if retry_after is not None else backoff(attempts - 1)
        log.info("send postponed %.1f s (attempt %d): %s", delay, attempts, error[:120],
                 extra={"session": target, "message_id": batch[0].turn})
        await self.store.outbox_retry(ids, time.time() + delay, error)
        self._schedule_wake(delay)
        return False

    def _schedule_wake(self, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self._wake.set)
