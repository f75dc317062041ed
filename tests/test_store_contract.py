"""One contract every store passes (SQLite and Redis), and what only the Redis store needs."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit
from typing import AsyncIterator

import pytest
import redis.exceptions

from state.protocol import CaseRow, LockTimeout, OutboxItem, Store, Turn
from state.redis import RedisStore
from state.sqlite import SQLiteStore
from tests.cutproxy import CutProxy
from tests.support import REDIS_URL


@pytest.fixture(params=["sqlite", "redis"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        store: Store = SQLiteStore(tmp_path / "contract.db")
        await store.open()
        yield store
        await store.close()
        return
    rstore = RedisStore(REDIS_URL, namespace=f"kefu-test-{uuid.uuid4().hex[:8]}", partitions=4)
    await rstore.open()
    yield rstore
    await rstore.drop_namespace()
    await rstore.close()


def turn(mid: str, session: str = "kefu:webchat:web:v1", **kw: object) -> Turn:
    return Turn(message_id=mid, session=session, conversation=kw.pop("conversation", {"stage": "idle"}),  # type: ignore[arg-type]
                at=time.time(), turn_id=f"t-{mid}", **kw)  # type: ignore[arg-type]


async def test_commit_is_atomic_and_deduplicated(any_store: Store) -> None:
    case = CaseRow(id="K1001", session="kefu:webchat:web:v1", status="open", created_at=1.0, data={"id": "K1001"})
    t = turn("m1", conversation={"stage": "waiting_agent"}, cases=(case,),
             transcript=({"at": 1.0, "who": "buyer", "text": "hi"},),
             outbox=(OutboxItem("buyer|kefu:webchat:web:v1", {"type": "reply", "text": "hello"}),))
    assert not await any_store.is_seen("m1")
    ids = await any_store.commit(t)
    assert ids is not None and len(ids) == 1
    assert await any_store.is_seen("m1")
    assert await any_store.load_turn("kefu:webchat:web:v1", "m1") == (True, {"stage": "waiting_agent"})
    assert await any_store.load_turn("kefu:webchat:web:v2", "m9") == (False, None)
    assert await any_store.outbox_head("buyer|kefu:webchat:web:v1") == ids[0]
    # The same message again changes nothing at all.
    t2 = turn("m1", conversation={"stage": "idle"}, outbox=(OutboxItem("buyer|x", {"text": "again"}),))
    assert await any_store.commit(t2) is None
    assert await any_store.load_conversation("kefu:webchat:web:v1") == {"stage": "waiting_agent"}
    assert [r.action["text"] for r in await any_store.pending_outbox()] == ["hello"]
    assert (await any_store.get_case("K1001")).data == {"id": "K1001"}  # type: ignore[union-attr]
    assert await any_store.transcript("kefu:webchat:web:v1") == [{"at": 1.0, "who": "buyer", "text": "hi"}]


async def test_cases_are_found_by_status_and_session_newest_first(any_store: Store) -> None:
    rows = [CaseRow(id=f"K{i}", session=f"s{i % 2}", status="open" if i < 3 else "resolved",
                    created_at=float(i), data={"n": i}) for i in range(1, 5)]
    await any_store.commit(turn("m", cases=tuple(rows)))
    assert [r.id for r in await any_store.find_cases(status="open")] == ["K2", "K1"]
    assert await any_store.count_cases("open", 2.0) == 1 and await any_store.count_cases("open", 9.0) == 2
    assert [r.id for r in await any_store.find_cases(session="s0")] == ["K4", "K2"]
    updated = CaseRow(id="K1", session="s1", status="taken", created_at=1.0, data={"n": 1, "x": True})
    await any_store.commit(turn("m2", cases=(updated,)))
    got = await any_store.get_case("K1")
    assert got is not None and got.status == "taken" and got.data["x"] is True
    assert await any_store.get_case("K9") is None


async def test_case_numbers_are_unique_under_concurrency(any_store: Store) -> None:
    numbers = await asyncio.gather(*(any_store.next_case_number() for _ in range(50)))
    assert sorted(numbers) == list(range(1, 51))


async def test_transcript_ranges(any_store: Store) -> None:
    entries = tuple({"at": float(i), "who": "buyer", "text": str(i)} for i in range(10))
    await any_store.commit(turn("m", transcript=entries))
    assert [e["text"] for e in await any_store.transcript("kefu:webchat:web:v1", 3.0, 5.0)] == ["3", "4", "5"]
    assert await any_store.transcript("other") == []


async def test_outbox_retry_done_and_fail(any_store: Store) -> None:
    items = tuple(OutboxItem("buyer|a", {"n": i}) for i in range(3))
    await any_store.commit(turn("m", outbox=items))
    rows = await any_store.pending_outbox(target="buyer|a")
    assert [r.action["n"] for r in rows] == [0, 1, 2] and all(r.attempts == 0 for r in rows)
    await any_store.outbox_retry([rows[0].id], time.time() + 60, "429")
    assert [r.action["n"] for r in await any_store.pending_outbox(due_before=time.time())] == [1, 2]
    await any_store.outbox_done([rows[1].id], "buyer|a")
    await any_store.outbox_fail([rows[2].id], "gone")
    assert await any_store.outbox_head("buyer|a") == rows[0].id
    left = await any_store.pending_outbox()
    assert [(r.action["n"], r.attempts, r.error) for r in left] == [(0, 1, "429")]


async def test_mailbox_append_read_and_wait(any_store: Store) -> None:
    assert await any_store.mailbox_last("b") == 0

    async def later() -> None:
        await asyncio.sleep(0.1)
        await any_store.mailbox_append("b", [{"x": 1}, {"x": 2}])

    task = asyncio.create_task(later())
    t0 = time.monotonic()
    items = await any_store.mailbox_read("b", 0, wait=5.0)  # a long poll: woken by the append
    assert time.monotonic() - t0 < 2.0
    await task
    assert [i[1]["x"] for i in items] == [1, 2]
    assert await any_store.mailbox_read("b", items[0][0]) == items[1:]
    assert await any_store.mailbox_last("b") == items[-1][0]
    t0 = time.monotonic()
    assert await any_store.mailbox_read("b", items[-1][0], wait=0.2) == []  # nothing new: times out
    assert time.monotonic() - t0 >= 0.19
    assert await any_store.mailbox_read("other", 0) == []


async def test_a_keyed_mailbox_append_lands_once(any_store: Store) -> None:
    first = await any_store.mailbox_append("b", [{"x": 1}, {"x": 2}], key="delivery-7")
    again = await any_store.mailbox_append("b", [{"x": 1}, {"x": 2}], key="delivery-7")
    assert len(first) == 2 and again == []
    assert [i["x"] for _, i in await any_store.mailbox_read("b")] == [1, 2]


async def test_locks_serialise_one_session_but_not_others(any_store: Store) -> None:
    order: list[str] = []

    async def work(session: str, tag: str) -> None:
        async with any_store.lock(session):
            order.append(f"{tag}+")
            await asyncio.sleep(0.05)
            order.append(f"{tag}-")

    await asyncio.gather(work("s1", "a"), work("s1", "b"), work("s2", "c"))
    a, b = order.index("a+"), order.index("b+")
    first, second = ("a", "b") if a < b else ("b", "a")
    assert order.index(f"{first}-") < order.index(f"{second}+")
    assert order.index("c+") < order.index(f"{second}+")  # s2 did not wait for s1


async def test_meta_keeps_the_first_value(any_store: Store) -> None:
    assert await any_store.get_meta("k") is None
    assert await any_store.set_meta_if_absent("k", "one") == "one"
    assert await any_store.set_meta_if_absent("k", "two") == "one"


async def test_dedupe_marks_expire(any_store: Store) -> None:
    await any_store.commit(turn("old"))
    if isinstance(any_store, RedisStore):  # Redis expires keys itself: the mark carries a TTL
        ttl = await any_store.r.ttl(any_store.k("seen", "old"))
        assert 0 < ttl <= 7 * 24 * 3600
        return
    await any_store.expire(now=time.time() + 30 * 24 * 3600)
    assert not await any_store.is_seen("old")


async def test_a_held_lock_times_out_for_others(any_store: Store) -> None:
    async with any_store.lock("x"):
        with pytest.raises(LockTimeout):
            async with any_store.lock("x", timeout=0.1):
                pass
    async with any_store.lock("x", timeout=1.0):
        pass


async def test_edited_templates_and_the_config_version(any_store: Store) -> None:
    assert await any_store.config_version() == 0 and await any_store.template_overrides() == {}
    v1 = await any_store.put_templates({"faq/zh-CN/invoice": "id: invoice"}, author="ann", note="first")
    v2 = await any_store.put_templates({"messages/en/greeting": "Hi"})
    assert v2 > v1 >= 1 and await any_store.config_version() == v2
    assert await any_store.template_overrides() == {"faq/zh-CN/invoice": "id: invoice", "messages/en/greeting": "Hi"}
    v3 = await any_store.put_templates({"messages/en/greeting": None, "faq/zh-CN/invoice": "id: invoice2"},
                                       author="bob", note="import")
    assert list(await any_store.template_overrides()) == ["faq/zh-CN/invoice"]
    history = await any_store.template_history("faq/zh-CN/invoice")
    assert [(h["version"], h["source"], h["previous"], h["author"]) for h in history] == [
        (v3, "id: invoice2", "id: invoice", "bob"), (v1, "id: invoice", None, "ann")]
    assert history[1]["note"] == "first" and history[0]["at"] >= history[1]["at"]


async def test_ping(any_store: Store) -> None:
    assert await any_store.ping() is True


async def test_data_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    s = SQLiteStore(path)
    await s.open()
    await s.commit(turn("m1", conversation={"stage": "claim"}))
    await s.close()
    s2 = SQLiteStore(path)
    await s2.open()
    assert await s2.load_conversation("kefu:webchat:web:v1") == {"stage": "claim"}
    assert await s2.is_seen("m1")
    await s2.close()


async def test_ingress_dedupes_orders_and_backs_off(any_store: Store) -> None:
    assert await any_store.ingress_push("tg", "u1", "chat1", {"update_id": 1}) is True
    assert await any_store.ingress_push("tg", "u1", "chat1", {"update_id": 1}) is False  # a platform retry
    assert await any_store.ingress_push("tg", "u2", "chat2", {"update_id": 2}, grp="album") is True
    assert await any_store.ingress_push("other", "x", "l", {}) is True
    rows = await any_store.ingress_pending("tg")
    assert [(r.key, r.lane, r.grp, r.payload) for r in rows] == [
        ("u1", "chat1", None, {"update_id": 1}), ("u2", "chat2", "album", {"update_id": 2})]
    await any_store.ingress_retry([rows[0].id], time.time() + 60, "boom")
    again = await any_store.ingress_pending("tg")
    assert [(r.key, r.attempts, r.not_before > time.time()) for r in again] == [("u1", 1, True), ("u2", 0, False)]
    await any_store.ingress_done([rows[1].id])
    assert [r.key for r in await any_store.ingress_pending("tg")] == ["u1"]
    assert await any_store.ingress_push("tg", "u2", "chat2", {"update_id": 2}) is False  # still remembered
    await any_store.ingress_fail([rows[0].id], "bad")
    assert await any_store.ingress_pending("tg") == []


async def test_meta_can_be_overwritten(any_store: Store) -> None:
    await any_store.set_meta("offset", "5")
    await any_store.set_meta("offset", "9")
    assert await any_store.get_meta("offset") == "9"


async def test_misses_are_counted_with_the_turn(any_store: Store) -> None:
    miss = {"question": "能开专票吗", "norm": "能开专票吗", "locale": "zh-CN", "kind": "unknown", "answered": ""}
    await any_store.commit(turn("m1", misses=(miss,)))
    await any_store.commit(turn("m1", misses=(miss,)))  # a retried message is not counted twice
    await any_store.commit(turn("m2", misses=({**miss, "kind": "unhelpful", "answered": "invoice"},)))
    other = {"question": "有猫砂吗", "norm": "有猫砂吗", "locale": "zh-CN", "kind": "unknown", "answered": ""}
    await any_store.commit(turn("m3", misses=(other,)))
    listed = await any_store.list_misses()
    assert [(m["norm"], m["count"]) for m in listed] == [("能开专票吗", 2), ("有猫砂吗", 1)]
    assert listed[0]["kind"] == "unhelpful" and listed[0]["answered"] == "invoice"
    await any_store.dismiss_miss("能开专票吗")
    assert [m["norm"] for m in await any_store.list_misses()] == ["有猫砂吗"]


@pytest.fixture
async def cut_store() -> AsyncIterator[tuple[RedisStore, CutProxy]]:
    """A Redis store whose connection to Redis goes through a proxy that can cut it."""
    target = urlsplit(REDIS_URL)
    proxy = CutProxy(target.port or 6379, target.hostname or "127.0.0.1")
    await proxy.start()
    store = RedisStore(proxy.url, namespace=f"kefu-test-{uuid.uuid4().hex[:8]}", partitions=1)
    await store.open()
    yield store, proxy
    await store.drop_namespace()
    await store.close()
    await proxy.close()


@pytest.fixture
async def redis_store() -> AsyncIterator[RedisStore]:
    store = RedisStore(REDIS_URL, namespace=f"kefu-test-{uuid.uuid4().hex[:8]}", partitions=1)
    await store.open()
    yield store
    await store.drop_namespace()
    await store.close()


async def test_a_stream_read_whose_reply_was_lost_loses_no_message(cut_store: tuple[RedisStore, CutProxy]) -> None:
    """Redis runs XREADGROUP and the connection is cut before its reply arrives (Redis killed, a
    network blip): the entries now belong to this consumer, and a ">" read never returns them again."""
    store, proxy = cut_store
    assert await store.ingress_push("webchat", "m1", "lane1", {"n": 1})
    assert [r.key for r in await store.ingress_pending("webchat")] == ["m1"]
    assert await store.ingress_push("webchat", "m2", "lane1", {"n": 2})
    proxy.lose_reply_to(b"XREADGROUP")
    with pytest.raises(redis.exceptions.ConnectionError):
        await store.ingress_pending("webchat")
    assert proxy.fired == [("lose_reply", b"XREADGROUP")]
    assert [r.key for r in await store.ingress_pending("webchat")] == ["m1", "m2"]
    rows = await store.ingress_pending("webchat")
    await store.ingress_done([r.id for r in rows])
    assert await store.ingress_pending("webchat") == []
    assert (await store.r.xpending(store._stream("webchat", 0), "kefu"))["pending"] == 0


async def test_entries_delivered_elsewhere_in_this_process_are_found_by_the_sweep(
    redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = redis_store
    assert await store.ingress_pending("webchat") == []  # takes the partition
    assert await store.ingress_push("webchat", "m1", "lane1", {"n": 1})
    # Delivered to this consumer by a read whose reply nobody saw, and no error to say so.
    await store.r.xreadgroup("kefu", store.consumer, {store._stream("webchat", 0): ">"})
    monkeypatch.setattr("state.redis.PEL_SWEEP", 0.0)
    assert [r.key for r in await store.ingress_pending("webchat")] == ["m1"]


async def test_a_failed_ack_keeps_the_row_until_redis_has_it(cut_store: tuple[RedisStore, CutProxy]) -> None:
    store, proxy = cut_store
    assert await store.ingress_push("webchat", "m1", "lane1", {"n": 1})
    rows = await store.ingress_pending("webchat")
    proxy.drop(b"XACK")
    with pytest.raises(redis.exceptions.ConnectionError):
        await store.ingress_done([rows[0].id])
    assert proxy.fired == [("drop", b"XACK")]
    assert [r.key for r in await store.ingress_pending("webchat")] == ["m1"]
    await store.ingress_done([rows[0].id])
    assert await store.ingress_pending("webchat") == []
