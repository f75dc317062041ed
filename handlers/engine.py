"""The middleware chain every event goes through, on every platform:

dedupe -> per-session lock -> load state -> handler -> save state + transcript
+ outbox in one transaction -> hand the outbox to the dispatcher.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Awaitable, Callable, Iterable

from handlers.buyer import handle_buyer
from handlers.context import Context, Outcome
from handlers.desk import handle_agent, handle_send_failed, normalize_case_id
from handlers.model import AgentCommand, BuyerMessage, Conversation, DeskAction, Event, Reply
from state.keys import buyer_target, desk_target, message_key, session_key
from state.protocol import CaseRow, OutboxItem, OutboxRow, Turn

log = logging.getLogger("kefu.engine")

OnCommit = Callable[[list[OutboxRow]], Awaitable[None]]
OnHandled = Callable[[str, float], None]


def dedupe_key(event: Event) -> str:
    if isinstance(event, BuyerMessage):
        return message_key(event.channel.platform, event.channel.bot, event.message_id)
    if isinstance(event, AgentCommand):
        return message_key("desk", event.desk, event.message_id)
    return message_key("system", "outbox", event.message_id)


def reply_session(reply: Reply) -> str:
    ch = reply.channel
    return session_key(ch.platform, ch.bot, ch.chat)


class Engine:
    def __init__(
        self, ctx: Context, desks: Iterable[str] = ("web",), on_commit: OnCommit | None = None,
        on_handled: OnHandled | None = None,
    ) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.desks = tuple(desks)
        self.on_commit = on_commit
        self.on_handled = on_handled  # (event type, seconds): metrics

    async def _session_for(self, event: Event) -> str:
        if isinstance(event, BuyerMessage):
            return session_key(event.channel.platform, event.channel.bot, event.channel.chat)
        if isinstance(event, AgentCommand):
            row = await self.store.get_case(normalize_case_id(event.case_id))
            # An unknown case still gets an answer (a notice) under a lock of its own.
            return row.session if row else f"kefu:desk:{event.desk}:unknown"
        return event.session

    async def handle(self, event: Event, send: bool = True) -> Outcome:
        """Handle one event. `send=False`: leave the replies in the outbox (the caller sends a
        burst at once, e.g. to stay within a platform's per-message reply budget)."""
        started = time.perf_counter()
        key = dedupe_key(event)
        session = await self._session_for(event)
        lease = await self.store.begin_turn(session, key)
        try:
            if lease.seen:
                log.info("duplicate message dropped", extra={"session": session, "message_id": key})
                await self.store.end_turn(lease, None)
                return Outcome(conversation=None, duplicate=True)
            data = lease.conversation
            convo = Conversation.model_validate(data) if data else None
            if isinstance(event, BuyerMessage):
                outcome = await handle_buyer(event, convo, self.ctx)
            elif isinstance(event, AgentCommand):
                outcome = await handle_agent(event, convo, self.ctx)
            else:
                outcome = await handle_send_failed(event, convo, self.ctx)
            turn = self._turn(key, session, event, outcome)
        except BaseException:
            await self.store.end_turn(lease, None)
            raise
        ids = await self.store.end_turn(lease, turn)  # commit and unlock in one step
        if ids is None:
            return Outcome(conversation=None, duplicate=True)
        if self.on_handled:
            self.on_handled(event.type, time.perf_counter() - started)
        at = event.at
        log.info(
            "handled %s: %d actions%s", event.type, len(outcome.actions),
            f", error {outcome.error}" if outcome.error else "",
            extra={"session": session, "message_id": key},
        )
        if send and self.on_commit and turn.outbox:
            # Hand over what was just written, so sending needs no read-back.
            await self.on_commit([
                OutboxRow(id=i, target=o.target, turn=turn.turn_id, action=o.action, attempts=0,
                          next_at=0.0, status="pending", error=None, created_at=at)
                for i, o in zip(ids, turn.outbox, strict=True)
            ])
        return outcome

    def _turn(self, key: str, session: str, event: Event, outcome: Outcome) -> Turn:
        at = event.at
        transcript: list[dict] = []
        if isinstance(event, BuyerMessage):
            text = event.text.strip()
            if not text and event.payload:
                text = next((b.text for b in (outcome.conversation.buttons if outcome.conversation else [])
                             if b.payload == event.payload), "") or f"[{event.payload}]"
            transcript.append({
                "at": at, "who": "buyer", "text": text,
                "photos": [p.id for p in event.photos], "files": [f.name or f.content_type for f in event.files],
            })
        outbox: list[OutboxItem] = []
        for action in outcome.actions:
            dumped = action.model_dump(mode="json")
            if isinstance(action, Reply):
                transcript.append({
                    "at": at, "who": action.sender, "agent": action.agent, "text": action.text,
                    "buttons": [b.text for b in action.buttons], "photos": [action.photo.id] if action.photo else [],
                })
                if not action.delivered:  # already on the buyer's screen: keep it, do not send it again
                    outbox.append(OutboxItem(buyer_target(reply_session(action)), dumped))
            elif isinstance(action, DeskAction):
                for desk in (action.desk,) if action.desk else self.desks:
                    outbox.append(OutboxItem(desk_target(desk, action.case_id), {**dumped, "desk": desk}))
        cases = tuple(
            CaseRow(id=c.id, session=c.session, status=c.status, created_at=c.created_at, data=c.model_dump(mode="json"))
            for c in outcome.cases
        )
        convo = outcome.conversation.model_dump(mode="json") if outcome.conversation else None
        return Turn(
            message_id=key, session=session, conversation=convo, cases=cases,
            transcript=tuple(transcript), outbox=tuple(outbox), at=at, turn_id=uuid.uuid4().hex,
            misses=tuple(outcome.misses),
        )
