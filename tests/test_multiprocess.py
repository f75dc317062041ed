"""Several real kefu processes on one Redis: 500 buyers at once while a worker is
killed with SIGKILL and restarted; and a Redis restart (AOF) in the middle of a run.

Every buyer message must get exactly one reply, in order; every claim exactly one
case; and nothing may be left pending."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from state.redis import RedisStore
from tests.procs import Proc, kefu_env, problems, web, worker
from tests.support import ORDER_OK, REDIS_URL, png

pytestmark = pytest.mark.timeout(300)

# A buyer's conversation and what each reply must say, in order.
SCRIPT: list[tuple[dict[str, Any], str]] = [
    ({"text": "你好"}, "欢迎光临"),
    ({"text": "什么时候发货"}, "48小时"),
    ({"text": "收到的杯子碎了一个"}, "订单号"),
    ({"text": "12345"}, "16-20位数字"),
    ({"text": ORDER_OK}, "外包装"),
    ({"photo": True}, "收到1张照片"),
    ({"payload": "photos_done"}, "对吗"),
    ({"payload": "confirm:yes"}, "已为您提交工单"),
]


class Buyer:
    def __init__(self, http: aiohttp.ClientSession, base: str, n: int) -> None:
        self.http, self.base = http, base
        self.visitor = f"mp-{n}-{uuid.uuid4().hex[:6]}"
        self.after = 0
        self.got: list[str] = []

    async def post(self, step: dict[str, Any], msg_id: str) -> None:
        for attempt in range(60):  # a message that was not acknowledged is sent again, same id
            try:
                if step.get("photo"):
                    form = aiohttp.FormData()
                    form.add_field("visitor", self.visitor)
                    form.add_field("client_msg_id", msg_id)
                    form.add_field("photo", PHOTO, filename="p.png", content_type="image/png")
                    resp = await self.http.post(f"{self.base}/api/webchat/messages", data=form)
                else:
                    resp = await self.http.post(f"{self.base}/api/webchat/messages",
                                                json={"visitor": self.visitor, "client_msg_id": msg_id, **step})
                async with resp:
                    if resp.status == 200:
                        return
                    assert resp.status == 503, await resp.text()
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
        raise AssertionError("message never acknowledged")

    async def next_reply(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                async with self.http.get(f"{self.base}/api/webchat/messages",
                                         params={"visitor": self.visitor, "after": self.after, "wait": 10}) as resp:
                    if resp.status != 200:
                        await asyncio.sleep(0.5)
                        continue
                    msgs = (await resp.json())["messages"]
            except aiohttp.ClientError:
                await asyncio.sleep(0.5)
                continue
            if msgs:
                self.after = msgs[-1]["seq"]
                self.got.extend(m["text"] for m in msgs)
                return "\n".join(m["text"] for m in msgs)
        raise AssertionError(f"{self.visitor}: no reply in {timeout} s (had {len(self.got)})")

    async def run(self, steps: list[tuple[dict[str, Any], str]], progress: list[int]) -> None:
        for i, (step, _) in enumerate(steps):
            await self.post(step, f"{self.visitor}-{i}")
            await self.next_reply()
            progress[0] += 1

    async def everything(self) -> list[str]:
        for _ in range(20):
            async with self.http.get(f"{self.base}/api/webchat/messages",
                                     params={"visitor": self.visitor, "after": 0}) as resp:
                if resp.status == 200:
                    return [m["text"] for m in (await resp.json())["messages"]]
            await asyncio.sleep(0.5)
        raise AssertionError("could not read the buyer's messages")


PHOTO = png()


def expected_ok(texts: list[str]) -> bool:
    """Exactly one reply per message, in the script's order (greeting, FAQ answer, claim steps, case)."""
    return len(texts) == len(SCRIPT) and all(want in got for (_, want), got in zip(SCRIPT, texts, strict=True))


async def pending_work(store: RedisStore) -> dict[str, int]:
    depths = await store.queue_depths()
    failed = await store.r.llen(store.k("in", "failed", "webchat"))
    unacked = 0  # delivered to a worker and never acknowledged
    for p in range(store.partitions):
        if await store.r.exists(store._stream("webchat", p)):
            unacked += int((await store.r.xpending(store._stream("webchat", p), "kefu"))["pending"])
    return {**depths, "failed": failed, "unacked": unacked}


async def test_500_buyers_while_a_worker_is_killed_and_restarted(tmp_path: Path, redis_namespace: str) -> None:
    data = tmp_path / "data"
    env = kefu_env(REDIS_URL, redis_namespace, data, KEFU_INGRESS_PARTITIONS="16")
    procs: list[Proc] = []
    try:
        front = web(env, tmp_path)
        procs.append(front)
        workers = [worker(env, tmp_path, i) for i in range(2)]
        procs += workers
        connector = aiohttp.TCPConnector(limit=1200)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=90)) as http:
            buyers = [Buyer(http, front.base, n) for n in range(500)]
            progress = [0]
            run = asyncio.gather(*(b.run(SCRIPT, progress) for b in buyers))
            task = asyncio.ensure_future(run)
            total = len(buyers) * len(SCRIPT)
            while progress[0] < total // 3 and not task.done():
                await asyncio.sleep(0.05)
            workers[0].kill(signal.SIGKILL)  # mid-event, no goodbye
            await asyncio.sleep(1.0)
            workers[0].start()
            await task
            assert progress[0] == total
            # Let late duplicates (if any were made) show up before counting.
            await asyncio.sleep(2.0)
            everything = await asyncio.gather(*(b.everything() for b in buyers))
        bad = [(b.visitor, texts) for b, texts in zip(buyers, everything, strict=True) if not expected_ok(texts)]
        assert not bad, f"{len(bad)} buyers got wrong or repeated replies, e.g. {bad[0]}"
        store = RedisStore(REDIS_URL, namespace=redis_namespace)
        try:
            cases = await store.find_cases(limit=2000)
            assert len(cases) == 500
            assert len({c.session for c in cases}) == 500  # one case per buyer
            for _ in range(50):
                work = await pending_work(store)
                if not any(work.values()):
                    break
                await asyncio.sleep(0.1)
            assert not any(work.values()), work
        finally:
            await store.r.aclose()
    finally:
        for p in procs:
            p.kill(signal.SIGTERM)


@pytest.fixture
def aof_redis(tmp_path: Path) -> Any:
    """A Redis of its own, appendonly with fsync on every write, that the test can kill."""
    server = shutil.which("redis-server")
    assert server, "redis-server is needed (CI installs it)"
    port = _free_port()
    d = tmp_path / "redis"
    d.mkdir()
    args = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--appendonly", "yes",
            "--appendfsync", "always", "--save", "", "--daemonize", "no"]

    class R:
        url = f"redis://127.0.0.1:{port}/0"
        proc: subprocess.Popen[bytes] | None = None

        def start(self) -> None:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(100):
                if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() == b"PONG":
                    return
                time.sleep(0.05)
            raise AssertionError("redis did not start")

        def kill(self) -> None:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    r = R()
    r.start()
    yield r
    if r.proc and r.proc.poll() is None:
        r.kill()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_nothing_acknowledged_is_lost_when_redis_restarts(tmp_path: Path, aof_redis: Any) -> None:
    data = tmp_path / "data"
    env = kefu_env(aof_redis.url, "kefu", data)
    procs: list[Proc] = []
    try:
        front = web(env, tmp_path)
        procs.append(front)
        procs.append(worker(env, tmp_path, 0))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            buyers = [Buyer(http, front.base, n) for n in range(40)]
            progress = [0]
            task = asyncio.ensure_future(asyncio.gather(*(b.run(SCRIPT, progress) for b in buyers)))
            while progress[0] < len(buyers) * 3 and not task.done():
                await asyncio.sleep(0.02)
            aof_redis.kill()  # a crash: only what was fsynced to the AOF survives
            await asyncio.sleep(1.5)
            aof_redis.start()
            try:
                await task
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{problems(procs)}") from None
            await asyncio.sleep(1.0)
            everything = await asyncio.gather(*(b.everything() for b in buyers))
        bad = [(b.visitor, t) for b, t in zip(buyers, everything, strict=True) if not expected_ok(t)]
        assert not bad, f"{len(bad)} buyers lost or repeated replies, e.g. {bad[0]}\n{problems(procs)}"
        store = RedisStore(aof_redis.url)
        try:
            assert len(await store.find_cases(limit=100)) == 40
            for _ in range(50):
                work = await pending_work(store)
                if not any(work.values()):
                    break
                await asyncio.sleep(0.1)
            assert not any(work.values()), f"{work}\n{problems(procs)}"
        finally:
            await store.r.aclose()
    finally:
        for p in procs:
            p.kill(signal.SIGTERM)


async def test_an_edit_made_in_one_process_is_served_by_all_within_two_seconds(tmp_path: Path, redis_namespace: str) -> None:
    env = kefu_env(REDIS_URL, redis_namespace, tmp_path / "data")
    procs: list[Proc] = []
    try:
        front = web(env, tmp_path)
        procs += [front, worker(env, tmp_path, 0), worker(env, tmp_path, 1)]
        admin = {"Authorization": "Bearer test-admin-token"}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{front.base}/api/admin/templates/faq/zh-CN/invoice", headers=admin) as resp:
                source = (await resp.json())["source"]
            new = source.replace(source.split("answer:", 1)[1],
                                 " |\n  亲，本店所有订单都可以开电子发票，专票请联系客服～（新版）\n")
            async with http.put(f"{front.base}/api/admin/templates/faq/zh-CN/invoice", headers=admin,
                                json={"source": new}) as resp:
                assert resp.status == 200, await resp.text()
            edited_at = time.monotonic()
            # Buyers are handled by the two workers (the web process only takes messages in).
            seen_new_at = None
            for n in range(40):
                b = Buyer(http, front.base, 10_000 + n)
                await b.post({"text": "能开发票吗"}, f"{b.visitor}-0")
                reply = await b.next_reply(timeout=10)
                if "（新版）" in reply:
                    seen_new_at = time.monotonic()
                    break
                await asyncio.sleep(0.1)
            assert seen_new_at is not None and seen_new_at - edited_at < 2.0
            # From then on every buyer, on any worker, gets the new answer.
            for n in range(10):
                b = Buyer(http, front.base, 20_000 + n)
                await b.post({"text": "能开发票吗"}, f"{b.visitor}-0")
                assert "（新版）" in await b.next_reply(timeout=10)
    finally:
        for p in procs:
            p.kill(signal.SIGTERM)
