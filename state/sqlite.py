"""Embedded store: one SQLite file under the data dir (zero set-up, survives restarts).

All database work runs on one dedicated thread, one whole transaction per
hop, so the event loop never blocks and transactions never interleave.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import weakref
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable, TypeVar

from state.longpoll import LongPolls
from state.protocol import CaseRow, IngressRow, LockTimeout, OutboxRow, TargetLease, Turn, TurnLease

T = TypeVar("T")

SEEN_TTL = 7 * 24 * 3600  # platforms retry for minutes, not days
DONE_OUTBOX_TTL = 24 * 3600
MAILBOX_TTL = 30 * 24 * 3600

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    session TEXT PRIMARY KEY, data TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS cases (
    id TEXT PRIMARY KEY, session TEXT NOT NULL, status TEXT NOT NULL,
    created_at REAL NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS cases_session ON cases(session, created_at);
CREATE INDEX IF NOT EXISTS cases_status ON cases(status, created_at);
CREATE TABLE IF NOT EXISTS transcript (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, session TEXT NOT NULL,
    at REAL NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS transcript_session ON transcript(session, at);
CREATE TABLE IF NOT EXISTS seen (message_id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, target TEXT NOT NULL, turn TEXT NOT NULL,
    action TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', error TEXT, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(status, target, id);
CREATE TABLE IF NOT EXISTS mailbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, box TEXT NOT NULL, at REAL NOT NULL,
    data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS mailbox_box ON mailbox(box, seq);
CREATE TABLE IF NOT EXISTS mailbox_keys (key TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS templates (key TEXT PRIMARY KEY, source TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS template_history (
    version INTEGER NOT NULL, key TEXT NOT NULL, source TEXT, previous TEXT, author TEXT NOT NULL,
    note TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS template_history_key ON template_history(key, version);
CREATE TABLE IF NOT EXISTS misses (
    norm TEXT PRIMARY KEY, question TEXT NOT NULL, count INTEGER NOT NULL, kind TEXT NOT NULL,
    answered TEXT NOT NULL, locale TEXT NOT NULL, last_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS ingress (
    id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL, key TEXT NOT NULL UNIQUE,
    lane TEXT NOT NULL, grp TEXT, payload TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0, not_before REAL NOT NULL DEFAULT 0, error TEXT,
    created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS ingress_pending ON ingress(status, source, id);
"""
INGRESS_TTL = 7 * 24 * 3600


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class SQLiteStore:
    """The embedded default store. One process; locks are in-process."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kefu-sqlite")
        self._db: sqlite3.Connection | None = None
        # Weak: a session's lock lives while someone holds or waits for it.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._held: dict[str, asyncio.Lock] = {}
        self._polls = LongPolls()
        self._ingress_events: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._config_event = asyncio.Event()

    # --- plumbing -------------------------------------------------------------
    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            assert self._db is not None, "store is not open"
            return fn(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before we acknowledge the platform.
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(SCHEMA)
            return db

        self._db = await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
        self._executor.shutdown(wait=True)

    # --- lock and dedupe --------------------------------------------------------
    async def ping(self) -> bool:
        def q(db: sqlite3.Connection) -> bool:
            return db.execute("SELECT 1").fetchone() == (1,)

        return await self._run(q)

    @asynccontextmanager
    async def lock(self, name: str, timeout: float | None = None) -> AsyncIterator[None]:
        await self._acquire(name, timeout)
        try:
            yield
        finally:
            self._let_go(name)

    async def _acquire(self, name: str, timeout: float | None) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        if timeout is None:
            await lock.acquire()
        elif timeout <= 0:
            if lock.locked():
                raise LockTimeout(name)
            await lock.acquire()
        else:
            try:
                await asyncio.wait_for(lock.acquire(), timeout)
            except asyncio.TimeoutError:
                raise LockTimeout(name) from None
        self._held[name] = lock  # keeps the weakly held lock alive until released
        return lock

    def _let_go(self, name: str) -> None:
        lock = self._held.pop(name, None)
        if lock is not None:
            lock.release()

    async def begin_turn(self, session: str, message_id: str, timeout: float | None = None) -> TurnLease:
        await self._acquire(session, timeout)
        try:
            seen, convo = await self.load_turn(session, message_id)
        except BaseException:
            self._let_go(session)
            raise
        return TurnLease(session=session, token=session, seen=seen, conversation=convo)

    async def end_turn(self, lease: TurnLease, turn: Turn | None) -> list[int] | None:
        try:
            return await self.commit(turn) if turn is not None else None
        finally:
            self._let_go(lease.session)

    async def claim_target(self, target: str, timeout: float | None = None) -> TargetLease:
        name = f"send|{target}"
        await self._acquire(name, timeout)
        try:
            head = await self.outbox_head(target)
        except BaseException:
            self._let_go(name)
            raise
        return TargetLease(target=target, token=name, head=head)

    async def release_target(self, lease: TargetLease, done: list[int] | None = None) -> None:
        try:
            if done:
                await self.outbox_done(done, lease.target)
        finally:
            self._let_go(lease.token)

    async def is_seen(self, message_id: str) -> bool:
        def q(db: sqlite3.Connection) -> bool:
            return db.execute("SELECT 1 FROM seen WHERE message_id=?", (message_id,)).fetchone() is not None

        return await self._run(q)

    async def load_turn(self, session: str, message_id: str) -> tuple[bool, dict[str, Any] | None]:
        def q(db: sqlite3.Connection) -> tuple[bool, dict[str, Any] | None]:
            seen = db.execute("SELECT 1 FROM seen WHERE message_id=?", (message_id,)).fetchone() is not None
            row = db.execute("SELECT data FROM conversations WHERE session=?", (session,)).fetchone()
            return seen, (json.loads(row[0]) if row else None)

        return await self._run(q)

    async def commit(self, turn: Turn) -> list[int] | None:
        # Wall-clock time for TTLs and send times; the event's own time is in the documents.
        now = time.time()

        def tx(db: sqlite3.Connection) -> list[int] | None:
            db.execute("BEGIN IMMEDIATE")
            try:
                cur = db.execute(
                    "INSERT OR IGNORE INTO seen(message_id, at) VALUES (?, ?)", (turn.message_id, now)
                )
                if cur.rowcount == 0:
                    db.execute("ROLLBACK")
                    return None
                if turn.conversation is not None:
                    db.execute(
                        "INSERT INTO conversations(session, data, updated_at) VALUES (?, ?, ?) "
                        "ON CONFLICT(session) DO UPDATE SET data=excluded.data, updated_at=excluded.updated_at",
                        (turn.session, _dumps(turn.conversation), now),
                    )
                for case in turn.cases:
                    db.execute(
                        "INSERT INTO cases(id, session, status, created_at, data) VALUES (?, ?, ?, ?, ?) "
                        "ON CONFLICT(id) DO UPDATE SET status=excluded.status, data=excluded.data",
                        (case.id, case.session, case.status, case.created_at, _dumps(case.data)),
                    )
                for miss in turn.misses:
                    db.execute(
                        "INSERT INTO misses(norm, question, count, kind, answered, locale, last_at) "
                        "VALUES (?, ?, 1, ?, ?, ?, ?) ON CONFLICT(norm) DO UPDATE SET count=count+1, "
                        "question=excluded.question, kind=excluded.kind, answered=excluded.answered, "
                        "last_at=excluded.last_at",
                        (miss["norm"], miss["question"], miss.get("kind", "unknown"), miss.get("answered", ""),
                         miss.get("locale", ""), turn.at or now),
                    )
                db.executemany(
                    "INSERT INTO transcript(session, at, data) VALUES (?, ?, ?)",
                    [(turn.session, float(e.get("at", turn.at or now)), _dumps(e)) for e in turn.transcript],
                )
                ids = [
                    int(db.execute(
                        "INSERT INTO outbox(target, turn, action, next_at, created_at) VALUES (?, ?, ?, ?, ?) "
                        "RETURNING id", (o.target, turn.turn_id or turn.message_id, _dumps(o.action), now, now),
                    ).fetchone()[0])
                    for o in turn.outbox
                ]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return ids

        return await self._run(tx)

    # --- reads --------------------------------------------------------------------
    async def load_conversation(self, session: str) -> dict[str, Any] | None:
        def q(db: sqlite3.Connection) -> dict[str, Any] | None:
            row = db.execute("SELECT data FROM conversations WHERE session=?", (session,)).fetchone()
            return json.loads(row[0]) if row else None

        return await self._run(q)

    @staticmethod
    def _case(row: tuple[Any, ...]) -> CaseRow:
        return CaseRow(id=row[0], session=row[1], status=row[2], created_at=row[3], data=json.loads(row[4]))

    async def get_case(self, case_id: str) -> CaseRow | None:
        def q(db: sqlite3.Connection) -> CaseRow | None:
            row = db.execute(
                "SELECT id, session, status, created_at, data FROM cases WHERE id=?", (case_id,)
            ).fetchone()
            return self._case(row) if row else None

        return await self._run(q)

    async def find_cases(
        self, *, status: str | None = None, session: str | None = None, limit: int = 500
    ) -> list[CaseRow]:
        where: list[str] = []
        args: list[Any] = []
        if status is not None:
            where.append("status=?")
            args.append(status)
        if session is not None:
            where.append("session=?")
            args.append(session)
        sql = "SELECT id, session, status, created_at, data FROM cases"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        args.append(limit)

        def q(db: sqlite3.Connection) -> list[CaseRow]:
            return [self._case(r) for r in db.execute(sql, args).fetchall()]

        return await self._run(q)

    async def count_cases(self, status: str, created_before: float) -> int:
        def q(db: sqlite3.Connection) -> int:
            return int(db.execute("SELECT COUNT(*) FROM cases WHERE status=? AND created_at<?",
                                  (status, created_before)).fetchone()[0])

        return await self._run(q)

    async def next_case_number(self) -> int:
        def tx(db: sqlite3.Connection) -> int:
            row = db.execute(
                "INSERT INTO counters(name, value) VALUES ('case', 1) "
                "ON CONFLICT(name) DO UPDATE SET value=value+1 RETURNING value"
            ).fetchone()
            return int(row[0])

        return await self._run(tx)

    async def transcript(
        self, session: str, since: float = 0.0, until: float | None = None
    ) -> list[dict[str, Any]]:
        def q(db: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = db.execute(
                "SELECT data FROM transcript WHERE session=? AND at>=? AND at<=? ORDER BY seq",
                (session, since, until if until is not None else float("inf")),
            ).fetchall()
            return [json.loads(r[0]) for r in rows]

        return await self._run(q)

    # --- outbox ---------------------------------------------------------------------
    async def pending_outbox(
        self, *, target: str | None = None, due_before: float | None = None, limit: int = 100
    ) -> list[OutboxRow]:
        sql = (
            "SELECT id, target, turn, action, attempts, next_at, status, error, created_at "
            "FROM outbox WHERE status='pending'"
        )
        args: list[Any] = []
        if target is not None:
            sql += " AND target=?"
            args.append(target)
        if due_before is not None:
            sql += " AND next_at<=?"
            args.append(due_before)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)

        def q(db: sqlite3.Connection) -> list[OutboxRow]:
            return [
                OutboxRow(
                    id=r[0], target=r[1], turn=r[2], action=json.loads(r[3]), attempts=r[4],
                    next_at=r[5], status=r[6], error=r[7], created_at=r[8],
                )
                for r in db.execute(sql, args).fetchall()
            ]

        return await self._run(q)

    async def _outbox_update(self, sql: str, args: tuple[Any, ...], ids: list[int]) -> None:
        if not ids:
            return

        def tx(db: sqlite3.Connection) -> None:
            db.executemany(sql, [(*args, i) for i in ids])

        await self._run(tx)

    async def outbox_head(self, target: str) -> int | None:
        def q(db: sqlite3.Connection) -> int | None:
            row = db.execute("SELECT MIN(id) FROM outbox WHERE status='pending' AND target=?", (target,)).fetchone()
            return int(row[0]) if row and row[0] is not None else None

        return await self._run(q)

    async def outbox_done(self, ids: list[int], target: str | None = None) -> None:
        await self._outbox_update(
            "UPDATE outbox SET status='done', attempts=attempts+1, next_at=? WHERE id=?", (time.time(),), ids
        )

    async def outbox_retry(self, ids: list[int], next_at: float, error: str) -> None:
        await self._outbox_update(
            "UPDATE outbox SET attempts=attempts+1, next_at=?, error=? WHERE id=?", (next_at, error), ids
        )

    async def outbox_fail(self, ids: list[int], error: str, target: str | None = None) -> None:
        await self._outbox_update(
            "UPDATE outbox SET status='failed', attempts=attempts+1, next_at=?, error=? WHERE id=?",
            (time.time(), error),
            ids,
        )

    # --- ingress ----------------------------------------------------------------------
    async def ingress_push(
        self, source: str, key: str, lane: str, payload: dict[str, Any], grp: str | None = None
    ) -> bool:
        now = time.time()

        def tx(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "INSERT OR IGNORE INTO ingress(source, key, lane, grp, payload, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (source, key, lane, grp, _dumps(payload), now),
            )
            return cur.rowcount == 1

        new = await self._run(tx)
        if new:
            self._ingress_events[source].set()
        return new

    async def ingress_wait(self, source: str, timeout: float) -> None:
        event = self._ingress_events[source]
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        event.clear()

    async def ingress_pending(self, source: str, limit: int = 200) -> list[IngressRow]:
        def q(db: sqlite3.Connection) -> list[IngressRow]:
            rows = db.execute(
                "SELECT id, source, key, lane, grp, payload, attempts, created_at, not_before FROM ingress "
                "WHERE status='pending' AND source=? ORDER BY id LIMIT ?",
                (source, limit),
            ).fetchall()
            return [IngressRow(id=r[0], source=r[1], key=r[2], lane=r[3], grp=r[4], payload=json.loads(r[5]),
                               attempts=r[6], created_at=r[7], not_before=r[8]) for r in rows]

        return await self._run(q)

    async def _ingress_update(self, sql: str, args: tuple[Any, ...], ids: list[int]) -> None:
        if ids:
            def tx(db: sqlite3.Connection) -> None:
                db.executemany(sql, [(*args, i) for i in ids])

            await self._run(tx)

    async def ingress_done(self, ids: list[int]) -> None:
        await self._ingress_update("UPDATE ingress SET status='done', payload='{}' WHERE id=?", (), ids)

    async def ingress_retry(self, ids: list[int], not_before: float, error: str) -> None:
        await self._ingress_update(
            "UPDATE ingress SET attempts=attempts+1, not_before=?, error=? WHERE id=?", (not_before, error), ids)

    async def ingress_fail(self, ids: list[int], error: str) -> None:
        await self._ingress_update(
            "UPDATE ingress SET status='failed', attempts=attempts+1, error=? WHERE id=?", (error,), ids)

    # --- mailboxes -------------------------------------------------------------------
    async def mailbox_append(self, box: str, items: list[dict[str, Any]], key: str | None = None) -> list[int]:
        now = time.time()

        def tx(db: sqlite3.Connection) -> list[int]:
            db.execute("BEGIN IMMEDIATE")
            try:
                if key is not None and db.execute(
                        "INSERT OR IGNORE INTO mailbox_keys(key, at) VALUES (?, ?)", (key, now)).rowcount == 0:
                    db.execute("ROLLBACK")
                    return []
                seqs = [
                    int(db.execute(
                        "INSERT INTO mailbox(box, at, data) VALUES (?, ?, ?) RETURNING seq",
                        (box, now, _dumps(item)),
                    ).fetchone()[0])
                    for item in items
                ]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return seqs

        seqs = await self._run(tx)
        self._polls.wake(box)
        return seqs

    async def _read_box(
        self, box: str, after: int = 0, limit: int = 200
    ) -> list[tuple[int, dict[str, Any]]]:
        def q(db: sqlite3.Connection) -> list[tuple[int, dict[str, Any]]]:
            rows = db.execute(
                "SELECT seq, data FROM mailbox WHERE box=? AND seq>? ORDER BY seq LIMIT ?", (box, after, limit)
            ).fetchall()
            return [(int(r[0]), json.loads(r[1])) for r in rows]

        return await self._run(q)

    async def mailbox_last(self, box: str) -> int:
        def q(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT MAX(seq) FROM mailbox WHERE box=?", (box,)).fetchone()
            return int(row[0] or 0)

        return await self._run(q)

    def wake_all(self) -> None:
        """Release every long poll now (the server is stopping)."""
        self._polls.close()

    async def mailbox_read(
        self, box: str, after: int = 0, limit: int = 200, wait: float = 0.0
    ) -> list[tuple[int, dict[str, Any]]]:
        return await self._polls.read(box, wait, lambda: self._read_box(box, after, limit))

    async def get_meta(self, key: str) -> str | None:
        def q(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            return row[0] if row else None

        return await self._run(q)

    async def set_meta(self, key: str, value: str) -> None:
        def tx(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                       (key, value))

        await self._run(tx)

    async def set_meta_if_absent(self, key: str, value: str) -> str:
        def tx(db: sqlite3.Connection) -> str:
            db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)", (key, value))
            return db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0]

        return await self._run(tx)

    # --- edited content ---------------------------------------------------------------------
    async def config_version(self) -> int:
        return int(await self.get_meta("config_version") or 0)

    async def config_wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._config_event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self._config_event.clear()

    async def template_overrides(self) -> dict[str, str]:
        def q(db: sqlite3.Connection) -> dict[str, str]:
            return {k: v for k, v in db.execute("SELECT key, source FROM templates").fetchall()}

        return await self._run(q)

    async def put_templates(self, changes: dict[str, str | None], author: str = "", note: str = "") -> int:
        now = time.time()

        def tx(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("INSERT INTO meta(key, value) VALUES ('config_version', '1') ON CONFLICT(key) "
                                 "DO UPDATE SET value=CAST(value AS INTEGER)+1 RETURNING value").fetchone()
                version = int(row[0])
                for key, source in changes.items():
                    old = db.execute("SELECT source FROM templates WHERE key=?", (key,)).fetchone()
                    if source is None:
                        db.execute("DELETE FROM templates WHERE key=?", (key,))
                    else:
                        db.execute("INSERT INTO templates(key, source, updated_at) VALUES (?, ?, ?) ON CONFLICT(key) "
                                   "DO UPDATE SET source=excluded.source, updated_at=excluded.updated_at",
                                   (key, source, now))
                    db.execute("INSERT INTO template_history(version, key, source, previous, author, note, at) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (version, key, source, old[0] if old else None, author, note, now))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return version

        version = await self._run(tx)
        self._config_event.set()
        return version

    async def template_history(self, key: str, limit: int = 50) -> list[dict[str, Any]]:
        def q(db: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = db.execute("SELECT version, key, source, previous, author, note, at FROM template_history "
                              "WHERE key=? ORDER BY version DESC LIMIT ?", (key, limit)).fetchall()
            return [dict(zip(("version", "key", "source", "previous", "author", "note", "at"), r, strict=True))
                    for r in rows]

        return await self._run(q)

    async def list_misses(self, limit: int = 100) -> list[dict[str, Any]]:
        def q(db: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = db.execute("SELECT norm, question, count, kind, answered, locale, last_at FROM misses "
                              "ORDER BY count DESC, last_at DESC LIMIT ?", (limit,)).fetchall()
            return [dict(zip(("norm", "question", "count", "kind", "answered", "locale", "last_at"), r, strict=True))
                    for r in rows]

        return await self._run(q)

    async def dismiss_miss(self, norm: str) -> None:
        def tx(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM misses WHERE norm=?", (norm,))

        await self._run(tx)

    async def queue_depths(self) -> dict[str, int]:
        def q(db: sqlite3.Connection) -> dict[str, int]:
            out = {f"ingress:{src}": n for src, n in db.execute(
                "SELECT source, COUNT(*) FROM ingress WHERE status='pending' GROUP BY source").fetchall()}
            out["outbox"] = db.execute("SELECT COUNT(*) FROM outbox WHERE status='pending'").fetchone()[0]
            return out

        return await self._run(q)

    # --- housekeeping --------------------------------------------------------------------
    async def expire(self, now: float | None = None) -> None:
        """Drop what has a TTL: dedupe marks, sent outbox rows, old mailbox items."""
        t = now if now is not None else time.time()

        def tx(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM seen WHERE at<?", (t - SEEN_TTL,))
            db.execute("DELETE FROM outbox WHERE status='done' AND next_at<?", (t - DONE_OUTBOX_TTL,))
            db.execute("DELETE FROM mailbox WHERE at<?", (t - MAILBOX_TTL,))
            db.execute("DELETE FROM mailbox_keys WHERE at<?", (t - SEEN_TTL,))
            # Handled requests keep only their key (for dedupe) until their TTL.
            db.execute("DELETE FROM ingress WHERE status!='pending' AND created_at<?", (t - INGRESS_TTL,))

        await self._run(tx)
