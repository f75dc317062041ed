"""The storage protocol every store implements (SQLite now, Redis later).

Kept small and async on purpose: one shared contract test suite runs against
every implementation (tests/test_store_contract.py).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class CaseRow:
    """A case as stored: indexed columns plus the JSON document."""

    id: str
    session: str
    status: str
    created_at: float
    data: dict[str, Any]


@dataclass(frozen=True)
class OutboxItem:
    """Something to send, written in the same transaction as the state change."""

    target: str  # ordering key: sends to one target happen in order
    action: dict[str, Any]


@dataclass(frozen=True)
class OutboxRow:
    id: int
    target: str
    turn: str
    action: dict[str, Any]
    attempts: int
    next_at: float
    status: str  # pending | done | failed
    error: str | None
    created_at: float


@dataclass(frozen=True)
class IngressRow:
    """A platform request stored before it was acknowledged, waiting to be handled.

    `lane` is the conversation it belongs to (rows of one lane are handled in
    order); `grp` groups rows that make one turn (a Telegram album)."""

    id: int
    source: str
    key: str
    lane: str
    grp: str | None
    payload: dict[str, Any]
    attempts: int
    created_at: float
    not_before: float = 0.0  # backing off after a failure until then


@dataclass(frozen=True)
class Turn:
    """Everything one handled event changes, committed atomically.

    `message_id` is the dedupe key: a turn whose message id was already
    committed is rejected as a whole, so a retried platform message never
    yields a second reply or a second case.
    """

    message_id: str
    session: str
    conversation: dict[str, Any] | None
    cases: tuple[CaseRow, ...] = ()
    transcript: tuple[dict[str, Any], ...] = ()
    outbox: tuple[OutboxItem, ...] = ()
    at: float = 0.0
    turn_id: str = field(default="")
    # Questions the bot could not answer, or answers a buyer marked unhelpful:
    # {"question", "norm", "locale", "kind": "unknown"|"unhelpful", "answered": faq id or ""}
    misses: tuple[dict[str, Any], ...] = ()


class LockTimeout(TimeoutError):
    """A lock could not be taken in the time allowed."""


@dataclass
class TurnLease:
    """A conversation's lock, taken together with what a turn needs to read."""

    session: str
    token: str
    seen: bool  # the message was committed before
    conversation: dict[str, Any] | None


@dataclass
class TargetLease:
    """The right to send to one target, taken together with its oldest pending item."""

    target: str
    token: str
    head: int | None


class Store(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """Is the store reachable (readiness)?"""
        ...

    # --- per-session lock and dedupe -------------------------------------
    def lock(self, name: str, timeout: float | None = None) -> AbstractAsyncContextManager[None]:
        """Exclusive across every process using the store; LockTimeout after `timeout` seconds."""
        ...

    async def is_seen(self, message_id: str) -> bool: ...

    async def load_turn(self, session: str, message_id: str) -> tuple[bool, dict[str, Any] | None]:
        """(was this message committed already, the conversation) in one read."""
        ...

    async def begin_turn(self, session: str, message_id: str, timeout: float | None = None) -> TurnLease:
        """Lock the conversation and read it (and the dedupe mark) in one step."""
        ...

    async def end_turn(self, lease: TurnLease, turn: Turn | None) -> list[int] | None:
        """Commit `turn` (see commit) and unlock in one step; with None, only unlock."""
        ...

    async def commit(self, turn: Turn) -> list[int] | None:
        """Save state, cases, transcript and outbox at once.

        Returns the new outbox ids (in turn.outbox order), or None if the message
        id was committed before (nothing is written then)."""
        ...

    # --- reads ------------------------------------------------------------
    async def load_conversation(self, session: str) -> dict[str, Any] | None: ...

    async def get_case(self, case_id: str) -> CaseRow | None: ...

    async def find_cases(
        self, *, status: str | None = None, session: str | None = None, limit: int = 500
    ) -> list[CaseRow]:
        """Newest first."""
        ...

    async def count_cases(self, status: str, created_before: float) -> int:
        """Cases in `status` created strictly before the given time (queue positions)."""
        ...

    async def next_case_number(self) -> int: ...

    async def transcript(
        self, session: str, since: float = 0.0, until: float | None = None
    ) -> list[dict[str, Any]]: ...

    # --- outbox -------------------------------------------------------------
    async def pending_outbox(
        self, *, target: str | None = None, due_before: float | None = None, limit: int = 100
    ) -> list[OutboxRow]:
        """Pending items in send order (by id)."""
        ...

    async def outbox_head(self, target: str) -> int | None:
        """The oldest pending item id of a target, if any."""
        ...

    async def claim_target(self, target: str, timeout: float | None = None) -> TargetLease:
        """Lock sending to a target (across processes) and read its oldest pending item."""
        ...

    async def release_target(self, lease: TargetLease, done: list[int] | None = None) -> None:
        """Mark `done` items sent (if any) and unlock the target in one step."""
        ...

    async def outbox_done(self, ids: list[int], target: str | None = None) -> None: ...

    async def outbox_retry(self, ids: list[int], next_at: float, error: str) -> None: ...

    async def outbox_fail(self, ids: list[int], error: str, target: str | None = None) -> None: ...

    # --- durable ingress: acknowledge the platform only after this ---------------
    async def ingress_push(
        self, source: str, key: str, lane: str, payload: dict[str, Any], grp: str | None = None
    ) -> bool:
        """Store a platform request; False if `key` was stored before (a platform retry)."""
        ...

    async def ingress_pending(self, source: str, limit: int = 200) -> list[IngressRow]:
        """Rows this process should handle (including those backing off), oldest first.

        With several processes each row is offered to one process at a time, and all
        rows of one lane to the same process, so a lane is handled in order."""
        ...

    async def ingress_wait(self, source: str, timeout: float) -> None:
        """Return when new rows may be pending, or after `timeout` seconds."""
        ...

    async def ingress_done(self, ids: list[int]) -> None: ...

    async def ingress_retry(self, ids: list[int], not_before: float, error: str) -> None: ...

    async def ingress_fail(self, ids: list[int], error: str) -> None: ...

    # --- mailboxes (web chat deliveries, desk feed) --------------------------
    async def mailbox_append(self, box: str, items: list[dict[str, Any]], key: str | None = None) -> list[int]:
        """Append items; with `key`, a second append with the same key adds nothing (returns [])."""
        ...

    async def mailbox_read(
        self, box: str, after: int = 0, limit: int = 200, wait: float = 0.0
    ) -> list[tuple[int, dict[str, Any]]]:
        """Items after `after`; with `wait`, a long poll: wait up to that long for the first one."""
        ...

    async def mailbox_last(self, box: str) -> int:
        """The newest seq in the box (0 if empty)."""
        ...

    def wake_all(self) -> None:
        """Release every waiting long poll at once (used when the server stops)."""
        ...

    # --- small settings the app keeps (generated tokens, secrets) ------------
    async def get_meta(self, key: str) -> str | None: ...

    async def set_meta(self, key: str, value: str) -> None: ...

    async def set_meta_if_absent(self, key: str, value: str) -> str:
        """Store `value` unless a value exists; return the stored value."""
        ...

    async def queue_depths(self) -> dict[str, int]:
        """Work not yet done: {"ingress:<source>": n, ..., "outbox": n} (for metrics)."""
        ...

    # --- content edited at run time (templates, FAQ entries) ---------------------
    async def config_version(self) -> int:
        """Bumped on every content change; processes reload when it moves."""
        ...

    async def config_wait(self, timeout: float) -> None:
        """Return soon after any process changes content, or after `timeout`."""
        ...

    async def template_overrides(self) -> dict[str, str]:
        """key ("messages/zh-CN/greeting", "faq/en/invoice") -> source, as edited."""
        ...

    async def put_templates(self, changes: dict[str, str | None], author: str = "", note: str = "") -> int:
        """Store edited templates at once (None drops an edit); every change is kept in the
        key's history with who, when and the source before. Returns the new config version."""
        ...

    async def template_history(self, key: str, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first: {"version", "key", "source", "previous", "author", "note", "at"}."""
        ...

    async def list_misses(self, limit: int = 100) -> list[dict[str, Any]]:
        """Most frequent first: {"norm", "question", "count", "kind", "answered", "locale", "last_at"}."""
        ...

    async def dismiss_miss(self, norm: str) -> None: ...

    async def expire(self, now: float | None = None) -> None:
        """Drop what has outlived its TTL (stores with native TTLs may do nothing)."""
        ...
