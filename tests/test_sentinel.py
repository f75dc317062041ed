"""KEFU_REDIS_URL may name a Redis Sentinel service: kefu finds the master through the Sentinels and
follows a failover. Real redis-server processes: a master, a replica and a Sentinel of their own."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import AsyncIterator, Iterator

import aiohttp
import pytest
import redis.asyncio as aioredis

from bots.settings import SettingsError, load_settings
from state.redis import RedisStore
from state.redisconn import BadRedisURL, parse_sentinel
from tests.procs import ROOT, Proc, kefu_env, problems, web, worker

pytestmark = pytest.mark.timeout(180)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ping(port: int) -> None:
    for _ in range(100):
        if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() == b"PONG":
            return
        time.sleep(0.05)
    raise AssertionError(f"redis on {port} did not start")


class Trio:
    """A master, its replica and one Sentinel watching them as service `kefu`."""

    def __init__(self, d: Path) -> None:
        server = shutil.which("redis-server")
        assert server, "redis-server is needed (CI installs it)"
        self.master, self.replica, self.sentinel = free_port(), free_port(), free_port()
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"]
        self.procs: list[subprocess.Popen[bytes]] = []
        for port, extra in ((self.master, []), (self.replica, ["--replicaof", "127.0.0.1", str(self.master)])):
            (d / str(port)).mkdir()
            self.procs.append(subprocess.Popen([server, "--port", str(port), "--dir", str(d / str(port)),
                                                *common, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_ping(port)
        conf = d / "sentinel.conf"  # Sentinel rewrites its own config: it must be a writable file
        conf.write_text(
            f"port {self.sentinel}\nbind 127.0.0.1\ndir {d}\n"
            f"sentinel monitor kefu 127.0.0.1 {self.master} 1\n"
            "sentinel down-after-milliseconds kefu 1000\nsentinel failover-timeout kefu 10000\n"
        )
        self.procs.append(subprocess.Popen([server, str(conf), "--sentinel"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_ping(self.sentinel)
        self.url = f"redis+sentinel://127.0.0.1:{self.sentinel}/kefu"

    async def master_port(self) -> int:
        s = aioredis.Redis(port=self.sentinel, decode_responses=True)
        try:
            _, port = await s.sentinel_get_master_addr_by_name("kefu")  # type: ignore[misc]
            return int(port)
        finally:
            await s.aclose()

    async def wait_replica_synced(self) -> None:
        r = aioredis.Redis(port=self.replica, decode_responses=True)
        try:
            for _ in range(200):
                info = await r.info("replication")
                if info.get("master_link_status") == "up":
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("replica never synced")
        finally:
            await r.aclose()

    async def failover(self) -> int:
        """The master crashes (SIGKILL) once its writes are on the replica; the Sentinel notices
        (down-after 1 s) and promotes the replica. Returns when the Sentinel names the new master."""
        await self.wait_replica_synced()
        m = aioredis.Redis(port=self.master)
        try:
            await m.execute_command("WAIT", 1, 2000)  # every write so far is on the replica too
        finally:
            await m.aclose()
        self.procs[0].send_signal(signal.SIGKILL)
        self.procs[0].wait()
        for _ in range(400):
            if await self.master_port() == self.replica:
                return self.replica
            await asyncio.sleep(0.05)
        raise AssertionError("the Sentinel did not fail over")

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGKILL)
            p.wait()


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[Trio]:
    t = Trio(tmp_path)
    yield t
    t.stop()


def test_sentinel_urls_are_parsed_and_bad_ones_named() -> None:
    u = parse_sentinel("redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26380/shop/2?sentinel_password=x")
    assert u.hosts == [("10.0.0.1", 26379), ("10.0.0.2", 26380)] and u.service == "shop" and u.db == 2
    assert u.password == "s3cret" and u.sentinel_password == "x"
    assert parse_sentinel("sentinel://h/svc").hosts == [("h", 26379)]
    for bad in ("redis+sentinel://h:26379", "redis+sentinel://h:port/svc", "redis+sentinel://h/svc/db"):
        with pytest.raises(BadRedisURL):
            parse_sentinel(bad)


def test_a_bad_redis_url_is_a_settings_error_without_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in ("redis+sentinel://:hunter2@h:port/svc", "http://:hunter2@localhost:6379",
                "redis://:hunter2@localhost:6379/0?no_such_option=1"):
        monkeypatch.setenv("KEFU_REDIS_URL", url)
        with pytest.raises(SettingsError) as info:
            load_settings(None)
        assert "redis_url" in str(info.value) and "hunter2" not in str(info.value)
    monkeypatch.setenv("KEFU_REDIS_URL", "redis+sentinel://:hunter2@s1:26379,s2:26379/shop/1")
    assert load_settings(None).redis_url.endswith("/shop/1")


@pytest.fixture
async def store(trio: Trio) -> AsyncIterator[RedisStore]:
    s = RedisStore(trio.url, namespace=f"kefu-sent-{uuid.uuid4().hex[:6]}", partitions=2)
    await s.open()
    yield s
    await s.close()


async def test_the_store_follows_a_failover(trio: Trio, store: RedisStore) -> None:
    assert await store.ping()
    assert await store.ingress_push("webchat", "m1", "lane1", {"n": 1})
    await store.set_meta("before", "kept")
    assert await trio.master_port() == trio.master
    await trio.failover()
    # The first commands after the switch may meet the old master's closed or read-only connections.
    for _ in range(100):
        try:
            assert await store.ingress_push("webchat", "m2", "lane1", {"n": 2})
            break
        except Exception:
            await asyncio.sleep(0.1)
    else:
        raise AssertionError("the store never reached the new master")
    assert await store.get_meta("before") == "kept"
    rows = await store.ingress_pending("webchat")
    assert [r.key for r in rows] == ["m1", "m2"]
    info = await store.r.info("replication")
    assert info["role"] == "master" and store.r.connection_pool.master_address == ("127.0.0.1", trio.replica)


async def test_kefu_processes_serve_buyers_across_a_failover(trio: Trio, tmp_path: Path) -> None:
    env = kefu_env(trio.url, "kefu", tmp_path / "data")
    procs: list[Proc] = []
    try:
        procs += [web(env, tmp_path), worker(env, tmp_path, 0)]
        base = procs[0].base
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:

            async def say(visitor: str, text: str, n: int) -> list[str]:
                for _ in range(100):  # a message not acknowledged (503 during the switch) is sent again
                    try:
                        async with http.post(f"{base}/api/webchat/messages",
                                             json={"visitor": visitor, "text": text,
                                                   "client_msg_id": f"{visitor}-{n}"}) as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.2)
                for _ in range(100):
                    try:
                        async with http.get(f"{base}/api/webchat/messages",
                                            params={"visitor": visitor, "after": 0, "wait": 2}) as resp:
                            if resp.status == 200:
                                texts = [m["text"] for m in (await resp.json())["messages"]]
                                if len(texts) >= n:
                                    return texts
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.2)
                raise AssertionError(f"{visitor}: no reply to {text!r}\n{problems(procs)}")

            before = await say("s-1", "你好", 1)
            assert "欢迎光临" in before[0]
            await trio.failover()
            after = await say("s-1", "什么时候发货", 2)
            assert len(after) == 2 and "48小时" in after[1]  # one reply, and the conversation went on
            other = await say("s-2", "能开发票吗", 2)
            assert "发票" in other[1]
    finally:
        for p in procs:
            p.kill(signal.SIGTERM)


def test_kefu_says_plainly_when_redis_cannot_be_reached(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    for url in (f"redis://:hunter2@127.0.0.1:{port}/0", f"redis+sentinel://127.0.0.1:{port}/kefu"):
        env = kefu_env(url, "kefu", tmp_path / "data")
        proc = subprocess.run([sys.executable, "-m", "bots.cli", "run", "--port", "0"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, proc.stderr
        assert "cannot reach Redis" in proc.stderr and "Traceback" not in proc.stderr
        assert "hunter2" not in proc.stderr + proc.stdout
