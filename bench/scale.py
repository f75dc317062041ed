"""Throughput and reply latency: embedded store vs Redis with 1 and 2 worker processes,
against a bare aiohttp + Redis echo server measured in the same run as the floor.

    .venv/bin/python -m bench.scale [--buyers 200] [--rate 500] [--seconds 10]

Each buyer sends a fixed mix (greeting, an FAQ, a damaged-parcel claim: start, a bad and a
good order number, a photo, "that's all", confirm) and waits for each reply before the next
message. Latency is from sending a message to its reply being readable (long poll).

Two measurements per setup:
  max    closed loop, `--buyers` buyers at once: messages handled per second
  rate   open loop, new buyers arriving so that messages come at `--rate` per second:
         reply latency p50 / p95 / p99 at that load (if the setup keeps up)
Servers and the load generator are separate processes on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
ORDER = "3849201756382910475"
MIX: list[dict[str, Any]] = [
    {"text": "你好"}, {"text": "什么时候发货"}, {"text": "收到的杯子碎了一个"}, {"text": "12345"},
    {"text": ORDER}, {"photo": True}, {"payload": "photos_done"}, {"payload": "confirm:yes"},
]
REDIS_URL = os.environ.get("KEFU_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def _photo() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (180, 40, 40)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


PHOTO = _photo()

# --- the floor: accept a message into Redis, make the "reply" readable, nothing else ---------------
FLOOR = r'''
import asyncio, json, sys, time
from aiohttp import web
import redis.asyncio as aioredis

r = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
    sys.argv[2], decode_responses=True, max_connections=64, timeout=20))
NS = sys.argv[3]

async def post(request):
    if request.content_type.startswith("multipart/"):
        fields = {}
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            fields[part.name] = (await part.read()) if part.filename else await part.text()
    else:
        fields = await request.json()
    visitor = fields["visitor"]
    pipe = r.pipeline(transaction=False)
    pipe.incr(NS + ":seq")
    seq = (await pipe.execute())[0]
    await r.zadd(NS + ":box:" + visitor, {json.dumps({"seq": seq, "text": "echo"}): seq})
    await r.publish(NS + ":ev", visitor)
    return web.json_response({"ok": True})

async def get(request):
    visitor, after = request.query["visitor"], int(request.query.get("after", 0))
    items = await r.zrangebyscore(NS + ":box:" + visitor, "(%d" % after, "+inf")
    return web.json_response({"messages": [json.loads(i) for i in items]})

app = web.Application(client_max_size=20 * 1024 * 1024)
app.add_routes([web.post("/api/webchat/messages", post), web.get("/api/webchat/messages", get)])
print("ready", flush=True)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
'''


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.base = ""

    def spawn(self, args: list[str], env: dict[str, str], ready: str, log: Path) -> str:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=open(log, "a"), text=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        found = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{args} exited: {log.read_text()[-1500:]}")
            m = re.search(r"buyer chat:\s+(http://\S+?)/\s*$", line)
            if m:
                found = m.group(1)
            if ready in line:
                return found
        raise RuntimeError(f"{args} did not start")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def kefu_env(tmp: Path, redis_ns: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEFU_")}
    env.update({"KEFU_DATA_DIR": str(tmp), "KEFU_HOURS_OPEN": "00:00", "KEFU_HOURS_CLOSE": "00:00",
                "KEFU_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"})
    if redis_ns:
        env.update({"KEFU_REDIS_URL": REDIS_URL, "KEFU_REDIS_NAMESPACE": redis_ns})
    return env


def start(setup: str, tmp: Path) -> Server:
    server = Server()
    py = sys.executable
    if setup == "floor":
        port = free_port()
        server.spawn([py, "-c", FLOOR, str(port), REDIS_URL, f"floor-{uuid.uuid4().hex[:6]}"],
                     dict(os.environ), "ready", tmp / "floor.log")
        server.base = f"http://127.0.0.1:{port}"
        return server
    if setup == "embedded":
        server.base = server.spawn([py, "-m", "bots.cli", "demo", "--port", "0", "--data-dir", str(tmp / "e")],
                                   kefu_env(tmp / "e", None), "Press Ctrl+C", tmp / "embedded.log")
        return server
    workers = int(setup.rsplit("-", 1)[1])
    env = kefu_env(tmp / setup, f"bench-{uuid.uuid4().hex[:6]}")
    server.base = server.spawn([py, "-m", "bots.cli", "run", "--role", "web", "--port", "0"], env,
                               "Press Ctrl+C", tmp / f"{setup}-web.log")
    for i in range(workers):
        server.spawn([py, "-m", "bots.cli", "worker"], env, "kefu worker", tmp / f"{setup}-w{i}.log")
    return server


async def buyer(http: aiohttp.ClientSession, base: str, latencies: list[float]) -> int:
    visitor = f"b-{uuid.uuid4().hex[:12]}"
    after = 0
    for i, step in enumerate(MIX):
        t0 = time.perf_counter()
        if step.get("photo"):
            form = aiohttp.FormData()
            form.add_field("visitor", visitor)
            form.add_field("client_msg_id", f"{visitor}-{i}")
            form.add_field("photo", PHOTO, filename="p.jpg", content_type="image/jpeg")
            resp = await http.post(f"{base}/api/webchat/messages", data=form)
        else:
            resp = await http.post(f"{base}/api/webchat/messages",
                                   json={"visitor": visitor, "client_msg_id": f"{visitor}-{i}", **step})
        assert resp.status == 200, await resp.text()
        resp.release()
        while True:
            async with http.get(f"{base}/api/webchat/messages",
                                params={"visitor": visitor, "after": after, "wait": 20}) as r:
                msgs = (await r.json())["messages"]
            if msgs:
                after = msgs[-1]["seq"]
                break
        latencies.append(time.perf_counter() - t0)
    return len(MIX)


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def redis_cpu() -> float:
    import redis.asyncio as aioredis

    r = aioredis.from_url(REDIS_URL)
    try:
        info = await r.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    finally:
        await r.aclose()


class CpuMeter:
    """CPU milliseconds per message for each server process and Redis, over one measurement."""

    def __init__(self, server: "Server", names: list[str], with_redis: bool) -> None:
        self.server, self.names, self.with_redis = server, names, with_redis

    async def snapshot(self) -> list[float]:
        out = [cpu_seconds(p.pid) for p in self.server.procs]
        if self.with_redis:
            out.append(await redis_cpu())
        return out

    def per_message(self, before: list[float], after: list[float], messages: int) -> str:
        names = self.names + (["redis"] if self.with_redis else [])
        parts = [f"{n} {(a - b) * 1e3 / max(messages, 1):.2f}" for n, b, a in zip(names, before, after, strict=True)]
        return "CPU ms/msg: " + ", ".join(parts)


async def closed_loop(base: str, buyers: int, seconds: float, meter: CpuMeter | None = None) -> float:
    """Messages per second with `buyers` buyers always busy."""
    latencies: list[float] = []
    done = 0
    deadline = time.perf_counter() + seconds

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=buyers * 3)) as http:
        async def loop() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                n = await buyer(http, base, latencies)  # not `done += await ...`: that reads done first
                done += n

        await buyer(http, base, [])  # warm up
        before = await meter.snapshot() if meter else []
        t0 = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(buyers)))
        rate = done / (time.perf_counter() - t0)
        if meter:
            print(f"  {meter.per_message(before, await meter.snapshot(), done)}", flush=True)
        return rate


async def open_loop(base: str, rate: float, seconds: float) -> tuple[float, list[float]]:
    """New buyers arrive so that messages come at `rate` per second; latency of each reply."""
    latencies: list[float] = []
    tasks = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4000)) as http:
        interval = len(MIX) / rate
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < seconds:
            tasks.append(asyncio.ensure_future(buyer(http, base, latencies)))
            n += 1
            await asyncio.sleep(max(t0 + n * interval - time.perf_counter(), 0))
        sent = sum(await asyncio.gather(*tasks))
        return sent / (time.perf_counter() - t0), latencies


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else float("nan")


def machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split(" v=")[-1]
    return (f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
            f"Linux {platform.release()}, Redis {redis_v.split()[0] if redis_v else '?'}")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--buyers", type=int, default=200)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--setups", default="floor,embedded,redis-1,redis-2")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for setup in args.setups.split(","):
            server = start(setup, Path(tmpdir))
            try:
                await asyncio.sleep(1.0)
                names = (["floor"] if setup == "floor" else ["kefu"] if setup == "embedded"
                         else ["web"] + [f"worker{i}" for i in range(len(server.procs) - 1)])
                meter = CpuMeter(server, names, with_redis=setup != "embedded")
                throughput = await closed_loop(server.base, args.buyers, args.seconds, meter)
                for share in (0.5, 0.9):  # a comfortable load, and close to the limit
                    offered = min(args.rate, throughput * share)
                    achieved, lat = await open_loop(server.base, offered, args.seconds)
                    rows.append((setup, throughput, offered, achieved, lat))
                    print(f"{setup:9s} max {throughput:7.0f} msg/s | at {achieved:5.0f} msg/s: "
                          f"p50 {pct(lat, 50) * 1e3:6.1f} ms  p95 {pct(lat, 95) * 1e3:6.1f} ms  "
                          f"p99 {pct(lat, 99) * 1e3:6.1f} ms", flush=True)
            finally:
                server.stop()
    floor = next((r[1] for r in rows if r[0] == "floor"), None)
    print()
    print("| setup | max msg/s | vs floor | load (msg/s) | p50 | p95 | p99 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for setup, tp, _, achieved, lat in rows:
        ratio = f"{tp / floor:.2f}" if floor else "-"
        print(f"| {setup} | {tp:.0f} | {ratio} | {achieved:.0f} | {pct(lat, 50) * 1e3:.1f} ms | "
              f"{pct(lat, 95) * 1e3:.1f} ms | {pct(lat, 99) * 1e3:.1f} ms |")
    print(f"\nmachine: {machine()}")
    print(f"mix per buyer: {len(MIX)} messages (greeting, FAQ, claim: start, bad + good order number, photo, "
          f"that's all, confirm); {args.buyers} buyers for max; open-loop load for latency, {args.seconds:.0f} s each")


if __name__ == "__main__":
    asyncio.run(main())
