"""Production store on Redis (redis-py asyncio): many processes, one truth.

- A turn (dedupe mark, conversation, cases and their indexes, transcript lines,
  outbox items) is written by one Lua script, so it is all-or-nothing and a
  message id can commit once.
- Locks are Redis locks with a lease that a background task renews; a killed
  process frees its locks when the lease runs out.
- Ingress is one Redis Stream per (source, partition) with a consumer group.
  A lane (conversation) always hashes to the same partition and a partition is
  leased to one process at a time, so a lane is handled in order across
  processes. A process that takes over a partition claims its dead owner's
  pending entries (XAUTOCLAIM) and handles them again (the engine's dedupe makes
  that safe).
- Mailboxes (web chat deliveries, the desk feed) are sorted sets with a global
  sequence; long polls wake through one pub/sub subscription per process.

Every key starts with the store's namespace (default "kefu").
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
import zlib
from collections import defaultdict
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, AsyncIterator

from redis.exceptions import ResponseError, WatchError

from state.longpoll import LongPolls
from state.protocol import CaseRow, IngressRow, LockTimeout, OutboxRow, TargetLease, Turn, TurnLease
from state.redisconn import connect
from state.tasks import stop_if_cancelled

log = logging.getLogger("kefu.redis")

SEEN_TTL = 7 * 24 * 3600
CONVERSATION_TTL = 180 * 24 * 3600
DONE_OUTBOX_TTL = 24 * 3600
FAILED_OUTBOX_TTL = 30 * 24 * 3600
MAILBOX_TTL = 30 * 24 * 3600
MAILBOX_KEEP = 1000  # items per box; a web chat page never needs more
LOCK_LEASE = 10.0
INGRESS_LEASE = 5.0
CONSUMER_ALIVE = 10.0
LEASE_CHECK = 1.0
# How often a process re-reads the stream entries Redis says it holds: a read whose reply was lost
# (Redis killed or the connection cut after it ran) leaves entries only a read of our own pending
# list returns. After a failed read this happens at once; the sweep is the safety net.
PEL_SWEEP = 15.0
READ_PAGE = 500
STATUSES = ("open", "taken", "resolved")

_COMMIT = """
local ns, mid, session, conv, now, turn = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local seen_ttl, conv_ttl = tonumber(ARGV[7]), tonumber(ARGV[8])
local cases, lines, outbox = cjson.decode(ARGV[9]), cjson.decode(ARGV[10]), cjson.decode(ARGV[11])
local lock, token = ARGV[12], ARGV[13]
local misses = cjson.decode(ARGV[14])
local function unlock()
  if lock ~= '' and redis.call('GET', lock) == token then redis.call('DEL', lock) end
end
if not redis.call('SET', ns..':seen:'..mid, '1', 'NX', 'EX', seen_ttl) then unlock() return -1 end
if conv ~= '' then redis.call('SET', ns..':conv:'..session, conv, 'EX', conv_ttl) end
for _, c in ipairs(cases) do
  redis.call('SET', ns..':case:'..c.id, c.doc)
  redis.call('ZADD', ns..':cases:all', c.created_at, c.id)
  for _, s in ipairs({'open', 'taken', 'resolved'}) do redis.call('ZREM', ns..':cases:status:'..s, c.id) end
  redis.call('ZADD', ns..':cases:status:'..c.status, c.created_at, c.id)
  redis.call('ZADD', ns..':cases:session:'..c.session, c.created_at, c.id)
end
for _, e in ipairs(lines) do
  local seq = redis.call('INCR', ns..':seq:tr')
  redis.call('ZADD', ns..':tr:'..session, e.at, string.format('%015d', seq)..'|'..e.doc)
end
if #lines > 0 then redis.call('EXPIRE', ns..':tr:'..session, conv_ttl) end
for _, m in ipairs(misses) do
  local key = ns..':miss:'..m.norm
  redis.call('HSET', key, 'norm', m.norm, 'question', m.question, 'kind', m.kind, 'answered', m.answered,
             'locale', m.locale, 'last_at', now)
  redis.call('ZINCRBY', ns..':misses', 1, m.norm)
end
local ids = {}
for _, o in ipairs(outbox) do
  local id = redis.call('INCR', ns..':seq:ob')
  ids[#ids + 1] = id
  redis.call('HSET', ns..':ob:'..id, 'target', o.target, 'turn', turn, 'action', o.action,
             'attempts', 0, 'next_at', now, 'status', 'pending', 'created_at', now)
  redis.call('ZADD', ns..':ob:pending', id, id)
  redis.call('ZADD', ns..':ob:due', now, id)
  redis.call('ZADD', ns..':ob:t:'..o.target, id, id)
end
unlock()
return ids
"""

_OUTBOX_CLOSE = """
-- ARGV: ns, status, error, ttl, now, lock, token, then pairs of (id, target)
local ns, status, err, ttl, now, lock, token = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7]
for i = 8, #ARGV, 2 do
  local id, target = ARGV[i], ARGV[i + 1]
  local key = ns..':ob:'..id
  if err ~= '' then redis.call('HSET', key, 'status', status, 'next_at', now, 'error', err)
  else redis.call('HSET', key, 'status', status, 'next_at', now) end
  redis.call('HINCRBY', key, 'attempts', 1)
  redis.call('EXPIRE', key, ttl)
  redis.call('ZREM', ns..':ob:pending', id)
  redis.call('ZREM', ns..':ob:due', id)
  if target ~= '' then redis.call('ZREM', ns..':ob:t:'..target, id) end
end
if lock ~= '' and redis.call('GET', lock) == token then redis.call('DEL', lock) end
return 1
"""

_BEGIN_TURN = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0} end
return {1, redis.call('EXISTS', KEYS[2]), redis.call('GET', KEYS[3])}
"""

_CLAIM_TARGET = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0} end
local head = redis.call('ZRANGE', KEYS[2], 0, 0)
return {1, head[1] or ''}
"""

_MAILBOX = """
local ns, box, now, ttl, keep, dedupe = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
if dedupe ~= '' and not redis.call('SET', ns..':boxkey:'..dedupe, '1', 'NX', 'EX', ttl) then return {} end
local key = ns..':box:'..box
local seqs = {}
for i = 7, #ARGV do
  local seq = redis.call('INCR', ns..':seq:box')
  redis.call('ZADD', key, seq, seq..'|'..now..'|'..ARGV[i])
  seqs[#seqs + 1] = seq
end
redis.call('EXPIRE', key, ttl)
local size = redis.call('ZCARD', key)
if size > keep then redis.call('ZREMRANGEBYRANK', key, 0, size - keep - 1) end
redis.call('PUBLISH', ns..':boxev', box)
return seqs
"""

_INGRESS_PUSH = """
local seen, stream, ttl = KEYS[1], KEYS[2], tonumber(ARGV[1])
if not redis.call('SET', seen, '1', 'NX', 'EX', ttl) then return 0 end
redis.call('XADD', stream, '*', 'key', ARGV[2], 'lane', ARGV[3], 'grp', ARGV[4], 'payload', ARGV[5], 'at', ARGV[6])
redis.call('PUBLISH', KEYS[3], ARGV[7])
return 1
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def partition_of(lane: str, partitions: int) -> int:
    return zlib.crc32(lane.encode()) % partitions


class RedisStore:
    def __init__(self, url: str, namespace: str = "kefu", partitions: int = 16, consumer: str | None = None) -> None:
        self.url = url
        self.ns = namespace
        self.partitions = partitions
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # Any: redis-py's stubs type replies as bytes|str|list...; with decode_responses they are str.
        # A blocking pool: under a burst, callers wait for a connection instead of failing.
        self.r: Any = connect(url)
        self._commit = self.r.register_script(_COMMIT)
        self._mailbox = self.r.register_script(_MAILBOX)
        self._push = self.r.register_script(_INGRESS_PUSH)
        self._renew = self.r.register_script(_RENEW)
        self._release = self.r.register_script(_RELEASE)
        self._begin = self.r.register_script(_BEGIN_TURN)
        self._close = self.r.register_script(_OUTBOX_CLOSE)
        self._claim = self.r.register_script(_CLAIM_TARGET)
        self._held: dict[str, dict[str, bool]] = {}  # lease token -> still held (for renewals)
        self._polls = LongPolls()
        self._listener: asyncio.Task[None] | None = None
        self._closing = False
        # ingress: per source, the partitions this process holds and what it has read from them
        self._owned: dict[str, set[int]] = defaultdict(set)
        self._rows: dict[str, dict[int, IngressRow]] = defaultdict(dict)
        self._entry: dict[int, tuple[str, int, str]] = {}  # local row id -> (source, partition, stream id)
        self._by_entry: dict[tuple[str, int, str], int] = {}
        self._next_row = 0
        self._groups_ready: set[tuple[str, int]] = set()
        self._ingress_events: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._config_event = asyncio.Event()
        self._renewals: set[asyncio.Task[None]] = set()
        self._leases_checked: dict[str, float] = {}
        self._pel_checked: dict[str, float] = {}
        self._pel_dirty: set[str] = set()

    def k(self, *parts: str | int) -> str:
        return ":".join([self.ns, *(str(p) for p in parts)])

    # --- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        await self.r.ping()
        self._listener = asyncio.create_task(self._listen(), name="kefu-redis-boxev")

    async def close(self) -> None:
        self._closing = True
        self.wake_all()
        if self._listener:
            try:  # wake our own listener so it sees _closing now, not at its next read timeout
                await self.r.publish(self.k("inev"), "")
            except Exception:
                pass
            done, _ = await asyncio.wait({self._listener}, timeout=3)
            if not done:
                self._listener.cancel()
                await asyncio.wait({self._listener}, timeout=3)
        for source, parts in self._owned.items():
            for p in parts:
                try:
                    await self._release(keys=[self.k("in", "lease", source, p)], args=[self.consumer])
                except Exception:
                    pass
        await self.r.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.r.ping())
        except Exception:
            return False

    # --- locks and dedupe -------------------------------------------------------------------------
    @asynccontextmanager
    async def lock(self, name: str, timeout: float | None = None) -> AsyncIterator[None]:
        key, token = self.k("lock", name), uuid.uuid4().hex
        lease_ms = int(LOCK_LEASE * 1000)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.002
        while not await self.r.set(key, token, nx=True, px=lease_ms):
            if deadline is not None and time.monotonic() >= deadline:
                raise LockTimeout(name)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        # Most holders finish in milliseconds: renew only if this one is still working later.
        held = {"on": True}
        loop = asyncio.get_running_loop()
        handle = loop.call_later(LOCK_LEASE / 3, self._renew_later, key, token, held, loop)
        try:
            yield
        finally:
            held["on"] = False
            handle.cancel()
            try:
                if not await self._release(keys=[key], args=[token]):
                    log.warning("lock %s expired while held", name)
            except Exception as exc:  # the lease runs out on its own
                log.warning("could not release lock %s: %s", name, exc.__class__.__name__)

    def _renew_later(self, key: str, token: str, held: dict[str, bool], loop: asyncio.AbstractEventLoop) -> None:
        if not held["on"]:
            return

        async def renew() -> None:
            try:
                await self._renew(keys=[key], args=[token, int(LOCK_LEASE * 1000)])
            except Exception as exc:
                log.warning("could not renew lock %s: %s", key, exc.__class__.__name__)
            if held["on"]:
                loop.call_later(LOCK_LEASE / 3, self._renew_later, key, token, held, loop)

        self._renewals.add(task := loop.create_task(renew()))
        task.add_done_callback(self._renewals.discard)

    async def is_seen(self, message_id: str) -> bool:
        return bool(await self.r.exists(self.k("seen", message_id)))

    async def load_turn(self, session: str, message_id: str) -> tuple[bool, dict[str, Any] | None]:
        pipe = self.r.pipeline(transaction=False)
        pipe.exists(self.k("seen", message_id))
        pipe.get(self.k("conv", session))
        seen, raw = await pipe.execute()
        return bool(seen), (json.loads(raw) if raw else None)

    async def _take(self, script: Any, keys: list[str], name: str, timeout: float | None) -> tuple[str, list[Any]]:
        """Take a lock with `script` (which also reads); retry with back-off until `timeout`."""
        token = uuid.uuid4().hex
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.002
        while True:
            res = await script(keys=keys, args=[token, int(LOCK_LEASE * 1000)])
            if res[0] == 1:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise LockTimeout(name)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        held = self._held[token] = {"on": True}
        loop = asyncio.get_running_loop()
        loop.call_later(LOCK_LEASE / 3, self._renew_later, keys[0], token, held, loop)
        return token, res

    def _drop(self, token: str) -> None:
        held = self._held.pop(token, None)
        if held is not None:
            held["on"] = False

    async def begin_turn(self, session: str, message_id: str, timeout: float | None = None) -> TurnLease:
        token, res = await self._take(
            self._begin, [self.k("lock", session), self.k("seen", message_id), self.k("conv", session)],
            session, timeout)
        return TurnLease(session=session, token=token, seen=bool(res[1]),
                         conversation=json.loads(res[2]) if res[2] else None)

    async def end_turn(self, lease: TurnLease, turn: Turn | None) -> list[int] | None:
        self._drop(lease.token)
        if turn is None:
            await self._release(keys=[self.k("lock", lease.session)], args=[lease.token])
            return None
        return await self.commit(turn, lock=(self.k("lock", lease.session), lease.token))

    async def claim_target(self, target: str, timeout: float | None = None) -> TargetLease:
        token, res = await self._take(self._claim, [self.k("lock", f"send|{target}"), self.k("ob", "t", target)],
                                      f"send|{target}", timeout)
        return TargetLease(target=target, token=token, head=int(res[1]) if res[1] else None)

    async def release_target(self, lease: TargetLease, done: list[int] | None = None) -> None:
        self._drop(lease.token)
        key = self.k("lock", f"send|{lease.target}")
        if done:
            await self._outbox_close(done, "done", None, DONE_OUTBOX_TTL, lease.target, unlock=(key, lease.token))
        else:
            await self._release(keys=[key], args=[lease.token])

    async def commit(self, turn: Turn, lock: tuple[str, str] | None = None) -> list[int] | None:
        now = repr(time.time())
        cases = [{"id": c.id, "session": c.session, "status": c.status, "created_at": repr(c.created_at),
                  "doc": _dumps({"id": c.id, "session": c.session, "status": c.status,
                                 "created_at": c.created_at, "data": c.data})} for c in turn.cases]
        lines = [{"at": repr(float(e.get("at", turn.at or time.time()))), "doc": _dumps(e)} for e in turn.transcript]
        outbox = [{"target": o.target, "action": _dumps(o.action)} for o in turn.outbox]
        result = await self._commit(args=[
            self.ns, turn.message_id, turn.session,
            _dumps(turn.conversation) if turn.conversation is not None else "",
            now, turn.turn_id or turn.message_id, SEEN_TTL, CONVERSATION_TTL,
            _dumps(cases) if cases else "[]", _dumps(lines) if lines else "[]", _dumps(outbox) if outbox else "[]",
            lock[0] if lock else "", lock[1] if lock else "",
            _dumps([{"norm": m["norm"], "question": m["question"], "kind": m.get("kind", "unknown"),
                     "answered": m.get("answered", ""), "locale": m.get("locale", "")} for m in turn.misses])
            if turn.misses else "[]",
        ])
        if result == -1:
            return None
        return [int(i) for i in result or []]

    # --- reads ---------------------------------------------------------------------------------------
    async def load_conversation(self, session: str) -> dict[str, Any] | None:
        raw = await self.r.get(self.k("conv", session))
        return json.loads(raw) if raw else None

    @staticmethod
    def _case(raw: str) -> CaseRow:
        d = json.loads(raw)
        return CaseRow(id=d["id"], session=d["session"], status=d["status"], created_at=d["created_at"], data=d["data"])

    async def get_case(self, case_id: str) -> CaseRow | None:
        raw = await self.r.get(self.k("case", case_id))
        return self._case(raw) if raw else None

    async def find_cases(
        self, *, status: str | None = None, session: str | None = None, limit: int = 500
    ) -> list[CaseRow]:
        if status is not None and session is not None:
            ids = await self.r.zrevrange(self.k("cases", "session", session), 0, -1)
            rows = [r for r in await self._cases(ids) if r.status == status]
            return rows[:limit]
        index = (self.k("cases", "status", status) if status is not None
                 else self.k("cases", "session", session) if session is not None else self.k("cases", "all"))
        ids = await self.r.zrevrange(index, 0, limit - 1)
        return await self._cases(ids)

    async def _cases(self, ids: list[str]) -> list[CaseRow]:
        if not ids:
            return []
        raws = await self.r.mget([self.k("case", i) for i in ids])
        rows = [self._case(r) for r in raws if r]
        # Same created_at: the later id first, as SQLite orders them.
        return sorted(rows, key=lambda c: (c.created_at, c.id), reverse=True)

    async def count_cases(self, status: str, created_before: float) -> int:
        return int(await self.r.zcount(self.k("cases", "status", status), "-inf", f"({created_before!r}"))

    async def next_case_number(self) -> int:
        return int(await self.r.incr(self.k("seq", "case")))

    async def transcript(self, session: str, since: float = 0.0, until: float | None = None) -> list[dict[str, Any]]:
        members = await self.r.zrangebyscore(self.k("tr", session), since, "+inf" if until is None else until)
        return [json.loads(m.split("|", 1)[1]) for m in members]

    # --- outbox --------------------------------------------------------------------------------------
    async def pending_outbox(
        self, *, target: str | None = None, due_before: float | None = None, limit: int = 100
    ) -> list[OutboxRow]:
        if target is not None:
            ids = await self.r.zrange(self.k("ob", "t", target), 0, limit - 1)
        elif due_before is not None:
            ids = await self.r.zrangebyscore(self.k("ob", "due"), "-inf", repr(due_before), start=0, num=limit)
            ids = sorted(ids, key=int)
        else:
            ids = await self.r.zrange(self.k("ob", "pending"), 0, limit - 1)
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self.k("ob", i))
        rows = []
        for i, h in zip(ids, await pipe.execute(), strict=True):
            if not h or h.get("status") != "pending":
                continue
            row = OutboxRow(
                id=int(i), target=h["target"], turn=h["turn"], action=json.loads(h["action"]),
                attempts=int(h.get("attempts", 0)), next_at=float(h["next_at"]), status=h["status"],
                error=h.get("error") or None, created_at=float(h["created_at"]),
            )
            if due_before is None or row.next_at <= due_before:
                rows.append(row)
        return rows[:limit]

    async def _targets(self, ids: list[int]) -> dict[int, str]:
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hget(self.k("ob", i), "target")
        return {i: t for i, t in zip(ids, await pipe.execute(), strict=True) if t}

    async def outbox_head(self, target: str) -> int | None:
        first = await self.r.zrange(self.k("ob", "t", target), 0, 0)
        return int(first[0]) if first else None

    async def outbox_done(self, ids: list[int], target: str | None = None) -> None:
        await self._outbox_close(ids, "done", None, DONE_OUTBOX_TTL, target)

    async def outbox_fail(self, ids: list[int], error: str, target: str | None = None) -> None:
        await self._outbox_close(ids, "failed", error, FAILED_OUTBOX_TTL, target)

    async def _outbox_close(self, ids: list[int], status: str, error: str | None, ttl: int,
                            target: str | None, unlock: tuple[str, str] | None = None) -> None:
        if not ids:
            if unlock is not None:
                await self._release(keys=[unlock[0]], args=[unlock[1]])
            return
        targets = {i: target for i in ids} if target is not None else await self._targets(ids)
        pairs: list[Any] = []
        for i in ids:
            pairs += [i, targets.get(i) or ""]
        await self._close(args=[self.ns, status, error or "", ttl, repr(time.time()),
                                unlock[0] if unlock else "", unlock[1] if unlock else "", *pairs])

    async def outbox_retry(self, ids: list[int], next_at: float, error: str) -> None:
        pipe = self.r.pipeline(transaction=True)
        for i in ids:
            pipe.hset(self.k("ob", i), mapping={"next_at": repr(next_at), "error": error})
            pipe.hincrby(self.k("ob", i), "attempts", 1)
            pipe.zadd(self.k("ob", "due"), {str(i): next_at})
        await pipe.execute()

    # --- ingress: partitioned streams, leased to one process per partition ----------------------------
    def _stream(self, source: str, p: int) -> str:
        return self.k("in", source, p)

    async def ingress_push(
        self, source: str, key: str, lane: str, payload: dict[str, Any], grp: str | None = None
    ) -> bool:
        p = partition_of(lane, self.partitions)
        done = await self._push(
            keys=[self.k("in", "seen", source, key), self._stream(source, p), self.k("inev")],
            args=[SEEN_TTL, key, lane, grp or "", _dumps(payload), repr(time.time()), source],
        )
        return bool(done)

    async def _ensure_group(self, source: str, p: int) -> None:
        if (source, p) in self._groups_ready:
            return
        try:
            await self.r.xgroup_create(self._stream(source, p), "kefu", id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups_ready.add((source, p))

    async def _leases(self, source: str) -> None:
        """Keep the partitions this process holds, and take free ones up to a fair share.

        Runs at most every second (a lease lasts five), not on every pass."""
        now = time.time()
        if self._owned[source] and now - self._leases_checked.get(source, 0.0) < LEASE_CHECK:
            return
        self._leases_checked[source] = now
        consumers = self.k("in", "consumers", source)
        owned = self._owned[source]
        lease_ms = int(INGRESS_LEASE * 1000)
        pipe = self.r.pipeline(transaction=False)
        pipe.sadd(self.k("in", "sources"), source)
        pipe.zadd(consumers, {self.consumer: now})
        pipe.zremrangebyscore(consumers, 0, now - CONSUMER_ALIVE)
        pipe.zcard(consumers)
        held = sorted(owned)
        for p in held:
            pipe.eval(_RENEW, 1, self.k("in", "lease", source, p), self.consumer, lease_ms)
        results = await pipe.execute()
        alive = results[3] or 1
        share = -(-self.partitions // alive)
        for p, ok in zip(held, results[4:], strict=True):
            if not ok:
                log.warning("lost the lease of %s partition %d", source, p)
                self._drop_partition(source, p)
        # Give back what is above the fair share, newest work first kept: only idle partitions.
        busy = {self._entry[i][1] for i in self._rows[source]}
        for p in sorted(owned - busy, reverse=True):
            if len(owned) <= share:
                break
            await self._release(keys=[self.k("in", "lease", source, p)], args=[self.consumer])
            self._drop_partition(source, p)
        if len(owned) >= share:
            return
        start = zlib.crc32(self.consumer.encode()) % self.partitions
        for j in range(self.partitions):
            if len(owned) >= share:
                break
            p = (start + j) % self.partitions
            if p in owned:
                continue
            if await self.r.set(self.k("in", "lease", source, p), self.consumer, nx=True, px=lease_ms):
                await self._take_over(source, p)

    def _drop_partition(self, source: str, p: int) -> None:
        self._owned[source].discard(p)
        for rid in [i for i in self._rows[source] if self._entry[i][1] == p]:
            del self._rows[source][rid]
            self._by_entry.pop(self._entry.pop(rid), None)

    async def _take_over(self, source: str, p: int) -> None:
        await self._ensure_group(source, p)
        stream = self._stream(source, p)
        # Whatever a previous holder read but did not finish is ours now, in stream order.
        start = "0-0"
        while True:
            res = await self.r.xautoclaim(stream, "kefu", self.consumer, min_idle_time=0, start_id=start, count=500)
            start = res[0]
            if start in ("0-0", b"0-0"):
                break
        self._owned[source].add(p)
        await self._read_own(source, [p])

    async def _read(self, source: str, parts: list[int], cursor: str) -> dict[int, str]:
        """Read `parts` from `cursor` (">" new entries, an id: our own pending ones after it).

        Returns, for each partition that filled a whole page, the id to go on from."""
        if not parts:
            return {}
        streams = {self._stream(source, p): cursor for p in parts}
        res = await self.r.xreadgroup("kefu", self.consumer, streams, count=READ_PAGE)
        more: dict[int, str] = {}
        gone: list[tuple[int, str]] = []
        for stream, entries in res or []:
            p = int(stream.rsplit(":", 1)[1])
            if p not in self._owned[source]:
                continue
            if len(entries) >= READ_PAGE:
                more[p] = entries[-1][0]
            for entry_id, fields in entries:
                if not fields:  # deleted after it was read (its ack was cut in half): finish the ack
                    gone.append((p, entry_id))
                    continue
                if (source, p, entry_id) in self._by_entry:
                    continue
                self._next_row += 1
                rid = self._next_row
                self._entry[rid] = (source, p, entry_id)
                self._by_entry[(source, p, entry_id)] = rid
                self._rows[source][rid] = IngressRow(
                    id=rid, source=source, key=fields["key"], lane=fields["lane"], grp=fields.get("grp") or None,
                    payload=json.loads(fields["payload"]), attempts=0, created_at=float(fields.get("at") or 0),
                    not_before=0.0,
                )
        if gone:
            pipe = self.r.pipeline(transaction=False)
            for p, entry_id in gone:
                pipe.xack(self._stream(source, p), "kefu", entry_id)
            await pipe.execute()
        return more

    async def _read_own(self, source: str, parts: list[int]) -> None:
        """Everything Redis has delivered to this consumer and not seen acknowledged, page by page."""
        for p in parts:
            cursor = "0"
            while True:
                more = await self._read(source, [p], cursor)
                if p not in more:
                    break
                cursor = more[p]

    async def ingress_pending(self, source: str, limit: int = 200) -> list[IngressRow]:
        await self._leases(source)
        parts = sorted(self._owned[source])
        now = time.monotonic()
        if source in self._pel_dirty or now - self._pel_checked.get(source, 0.0) >= PEL_SWEEP:
            self._pel_dirty.discard(source)
            self._pel_checked[source] = now
            try:
                await self._read_own(source, parts)
            except Exception:
                self._pel_dirty.add(source)
                raise
        try:
            await self._read(source, parts, ">")
        except Exception:
            # Redis may have run the read and lost only its reply: those entries are ours now
            # and a ">" read never returns them again, so read our own pending list next time.
            self._pel_dirty.add(source)
            raise
        rows = sorted(self._rows[source].values(), key=lambda r: self._order(r.id))
        return rows[:limit]

    def _order(self, rid: int) -> tuple[int, int, float]:
        # Stream order within a partition (that is a lane's order); push time between partitions.
        source, _, entry_id = self._entry[rid]
        ms, _, seq = entry_id.partition("-")
        return int(ms), int(seq), self._rows[source][rid].created_at

    async def ingress_wait(self, source: str, timeout: float) -> None:
        # Woken by the push's PUBLISH (any process); no blocking read holds a connection.
        event = self._ingress_events[source]
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        event.clear()

    async def _ack(self, ids: list[int]) -> None:
        known = [rid for rid in ids if rid in self._entry]
        if not known:
            return
        pipe = self.r.pipeline(transaction=False)
        for rid in known:
            source, p, entry_id = self._entry[rid]
            pipe.xack(self._stream(source, p), "kefu", entry_id)
            pipe.xdel(self._stream(source, p), entry_id)
        await pipe.execute()
        # Forgotten only once Redis has them: a failed ack leaves the rows here, and handling
        # them again is a duplicate the turn's dedupe drops.
        for rid in known:
            source, p, entry_id = self._entry.pop(rid)
            self._by_entry.pop((source, p, entry_id), None)
            self._rows[source].pop(rid, None)

    async def ingress_done(self, ids: list[int]) -> None:
        await self._ack(ids)

    async def ingress_retry(self, ids: list[int], not_before: float, error: str) -> None:
        for rid in ids:
            if rid in self._entry:
                source = self._entry[rid][0]
                row = self._rows[source][rid]
                self._rows[source][rid] = replace(row, attempts=row.attempts + 1, not_before=not_before)

    async def ingress_fail(self, ids: list[int], error: str) -> None:
        pipe = self.r.pipeline(transaction=False)
        for rid in ids:
            if rid in self._entry:
                source = self._entry[rid][0]
                row = self._rows[source][rid]
                pipe.rpush(self.k("in", "failed", source), _dumps({"key": row.key, "lane": row.lane, "error": error,
                                                                    "payload": row.payload, "at": time.time()}))
        await pipe.execute()
        await self._ack(ids)

    async def queue_depths(self) -> dict[str, int]:
        out: dict[str, int] = {}
        sources = sorted(await self.r.smembers(self.k("in", "sources")))
        for source in sources:
            pipe = self.r.pipeline(transaction=False)
            for p in range(self.partitions):
                pipe.xlen(self._stream(source, p))
            out[f"ingress:{source}"] = sum(int(n or 0) for n in await pipe.execute())
        out["outbox"] = int(await self.r.zcard(self.k("ob", "pending")))
        return out

    # --- mailboxes ----------------------------------------------------------------------------------------
    async def mailbox_append(self, box: str, items: list[dict[str, Any]], key: str | None = None) -> list[int]:
        if not items:
            return []
        seqs = await self._mailbox(args=[self.ns, box, repr(time.time()), MAILBOX_TTL, MAILBOX_KEEP, key or "",
                                         *(_dumps(i) for i in items)])
        self._polls.wake(box)
        return [int(s) for s in seqs]

    async def _read_box(self, box: str, after: int = 0, limit: int = 200) -> list[tuple[int, dict[str, Any]]]:
        members = await self.r.zrangebyscore(self.k("box", box), f"({after}", "+inf", start=0, num=limit)
        out = []
        for m in members:
            seq, _, rest = m.partition("|")
            at, _, doc = rest.partition("|")
            item = json.loads(doc)
            item.setdefault("at", float(at))
            out.append((int(seq), item))
        return out

    async def mailbox_last(self, box: str) -> int:
        top = await self.r.zrevrange(self.k("box", box), 0, 0, withscores=True)
        return int(top[0][1]) if top else 0

    async def mailbox_read(
        self, box: str, after: int = 0, limit: int = 200, wait: float = 0.0
    ) -> list[tuple[int, dict[str, Any]]]:
        return await self._polls.read(box, wait, lambda: self._read_box(box, after, limit))

    async def _listen(self) -> None:
        """One subscription per process: appends made by any process wake local long polls."""
        while not self._closing:
            pubsub = self.r.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.k("boxev"), self.k("inev"), self.k("cfgev"))
                while not self._closing:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg and msg.get("type") == "message":
                        if msg["channel"] == self.k("inev"):
                            self._ingress_events[msg["data"]].set()
                        elif msg["channel"] == self.k("cfgev"):
                            self._config_event.set()
                        else:
                            self._polls.wake(msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                stop_if_cancelled()
                log.warning("mailbox subscription lost (%s); resubscribing", exc.__class__.__name__)
                # Waiters re-check on their own timeout; wake them so none waits on a dead channel.
                self._polls.wake_every()
                for event in self._ingress_events.values():
                    event.set()
                await asyncio.sleep(0.5)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass

    def wake_all(self) -> None:
        self._closing = True
        self._polls.close()

    # --- meta and edited content ---------------------------------------------------------------------------
    async def get_meta(self, key: str) -> str | None:
        value = await self.r.hget(self.k("meta"), key)
        return value if value is None else str(value)

    async def set_meta(self, key: str, value: str) -> None:
        await self.r.hset(self.k("meta"), key, value)

    async def set_meta_if_absent(self, key: str, value: str) -> str:
        await self.r.hsetnx(self.k("meta"), key, value)
        return str(await self.r.hget(self.k("meta"), key))

    async def config_version(self) -> int:
        return int(await self.r.get(self.k("cfg", "version")) or 0)

    async def config_wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._config_event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self._config_event.clear()

    async def template_overrides(self) -> dict[str, str]:
        return dict(await self.r.hgetall(self.k("cfg", "templates")))

    async def put_templates(self, changes: dict[str, str | None], author: str = "", note: str = "") -> int:
        # WATCH the edited keys' sources so the recorded "previous" is the one replaced.
        async with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(self.k("cfg", "templates"))
                    before = await pipe.hmget(self.k("cfg", "templates"), list(changes)) if changes else []
                    version = int(await pipe.get(self.k("cfg", "version")) or 0) + 1
                    pipe.multi()
                    now = time.time()
                    for (key, source), old in zip(changes.items(), before, strict=True):
                        if source is None:
                            pipe.hdel(self.k("cfg", "templates"), key)
                        else:
                            pipe.hset(self.k("cfg", "templates"), key, source)
                        pipe.lpush(self.k("cfg", "history", key), _dumps({
                            "version": version, "key": key, "source": source, "previous": old,
                            "author": author, "note": note, "at": now}))
                        pipe.ltrim(self.k("cfg", "history", key), 0, 199)
                    pipe.set(self.k("cfg", "version"), version)
                    pipe.publish(self.k("cfgev"), version)  # every process reloads now, not at its next poll
                    await pipe.execute()
                    return version
                except WatchError:
                    continue  # someone else edited at the same moment: read again

    async def template_history(self, key: str, limit: int = 50) -> list[dict[str, Any]]:
        return [json.loads(x) for x in await self.r.lrange(self.k("cfg", "history", key), 0, limit - 1)]

    async def list_misses(self, limit: int = 100) -> list[dict[str, Any]]:
        top = await self.r.zrevrange(self.k("misses"), 0, limit - 1, withscores=True)
        if not top:
            return []
        pipe = self.r.pipeline(transaction=False)
        for norm, _ in top:
            pipe.hgetall(self.k("miss", norm))
        out = []
        for (norm, count), h in zip(top, await pipe.execute(), strict=True):
            if h:
                out.append({"norm": norm, "question": h.get("question", ""), "count": int(count),
                            "kind": h.get("kind", ""), "answered": h.get("answered", ""),
                            "locale": h.get("locale", ""), "last_at": float(h.get("last_at") or 0)})
        out.sort(key=lambda m: (-m["count"], -m["last_at"]))
        return out

    async def dismiss_miss(self, norm: str) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(self.k("misses"), norm)
        pipe.delete(self.k("miss", norm))
        await pipe.execute()

    async def expire(self, now: float | None = None) -> None:
        """Redis expires keys itself; nothing to sweep."""
        return None

    async def drop_namespace(self) -> None:
        """Delete every key of this namespace (tests)."""
        async for key in self.r.scan_iter(match=f"{self.ns}:*", count=1000):
            await self.r.delete(key)
