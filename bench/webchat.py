"""Web chat throughput and reply latency on the embedded store, over real HTTP.

    .venv/bin/python -m bench.webchat [--buyers 50] [--rounds 3]

Each buyer runs a fixed mix: greeting, an FAQ question, then a damaged-parcel
claim (claim start, a bad order number, a good one, a photo, "that's all",
confirm). Latency is measured from sending a message to its reply being
readable by the buyer (long poll), which is what a buyer feels.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bots.cli import one_blas_thread

one_blas_thread()  # before numpy loads: one BLAS thread per process, as kefu itself runs

import aiohttp
from aiohttp.test_utils import TestServer
from PIL import Image

from bots.app import create_app
from bots.settings import Settings

ORDER = "3849201756382910475"


def photo() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (640, 480), (180, 40, 40)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


async def buyer_run(http: aiohttp.ClientSession, base: str, jpeg: bytes, latencies: list[float]) -> int:
    visitor = f"b-{uuid.uuid4().hex[:10]}"
    after = 0
    steps: list[dict[str, object]] = [
        {"text": "你好"}, {"text": "什么时候发货"}, {"text": "收到的杯子碎了"}, {"text": "12345"},
        {"text": ORDER}, {"photo": True}, {"payload": "photos_done"}, {"payload": "confirm:yes"},
    ]
    for step in steps:
        t0 = time.perf_counter()
        if step.get("photo"):
            form = aiohttp.FormData()
            form.add_field("visitor", visitor)
            form.add_field("client_msg_id", uuid.uuid4().hex)
            form.add_field("photo", jpeg, filename="p.jpg", content_type="image/jpeg")
            resp = await http.post(f"{base}/api/webchat/messages", data=form)
        else:
            resp = await http.post(f"{base}/api/webchat/messages",
                                   json={"visitor": visitor, "client_msg_id": uuid.uuid4().hex, **step})
        assert resp.status == 200, await resp.text()
        resp.release()
        async with http.get(f"{base}/api/webchat/messages",
                            params={"visitor": visitor, "after": after, "wait": 10}) as r:
            msgs = (await r.json())["messages"]
        assert msgs, f"no reply to {step}"
        after = msgs[-1]["seq"]
        latencies.append(time.perf_counter() - t0)
    return len(steps)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def main(buyers: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), desk_token="bench", hours_open="00:00", hours_close="00:00",
                            log_level="WARNING")
        server = TestServer(await create_app(settings))
        await server.start_server()
        base = str(server.make_url("/")).rstrip("/")
        jpeg = photo()
        conn = aiohttp.TCPConnector(limit=buyers * 2)
        async with aiohttp.ClientSession(connector=conn) as http:
            await buyer_run(http, base, jpeg, [])  # warm up
            for r in range(rounds):
                latencies: list[float] = []
                t0 = time.perf_counter()
                counts = await asyncio.gather(*(buyer_run(http, base, jpeg, latencies) for _ in range(buyers)))
                wall = time.perf_counter() - t0
                n = sum(counts)
                print(f"round {r + 1}: {buyers} buyers, {n} messages in {wall:.2f} s = {n / wall:.0f} msg/s; "
                      f"reply latency p50 {pct(latencies, 50) * 1000:.1f} ms, p95 {pct(latencies, 95) * 1000:.1f} ms, "
                      f"p99 {pct(latencies, 99) * 1000:.1f} ms, mean {statistics.mean(latencies) * 1000:.1f} ms")
        await server.close()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--buyers", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    asyncio.run(main(args.buyers, args.rounds))
