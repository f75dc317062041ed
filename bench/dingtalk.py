"""DingTalk: how fast a robot message is acknowledged, and how fast the buyer's reply goes out,
in HTTP-callback and Stream mode (the official SDK), against the local fake DingTalk (tests/fake_dingtalk.py).

    .venv/bin/python -m bench.dingtalk [--buyers 20] [--messages 5]

ack: from sending the callback / the Stream frame to DingTalk seeing 200 / the ACK (store first, then ack).
reply: from sending the message to the reply arriving at the fake's sessionWebhook.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path

from bots.cli import one_blas_thread

one_blas_thread()  # before numpy loads: one BLAS thread per process, as kefu itself runs

from aiohttp.test_utils import TestServer

from bots.app import create_app
from bots.settings import Settings
from tests.fake_dingtalk import FakeDingTalk, User

QUESTIONS = ["你好", "什么时候发货", "能开发票吗", "退货运费谁出", "可以走顺丰吗"]


def pct(values: list[float], p: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * p))] * 1000


async def run(mode: str, buyers: int, messages: int) -> None:
    fake = FakeDingTalk()
    await fake.start()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), hours_open="00:00", hours_close="00:00",  # type: ignore[arg-type]
                            dingtalk_app_key=fake.app_key, dingtalk_app_secret=fake.app_secret,  # type: ignore[arg-type]
                            dingtalk_mode=mode, dingtalk_api_url=fake.base, dingtalk_desk_conversation=fake.desk_cid)
        server = TestServer(await create_app(settings))
        await server.start_server()
        if mode == "stream":
            await asyncio.wait_for(fake.connected.wait(), 15)
        url = str(server.make_url("/api/dingtalk/callback"))
        acks: list[float] = []
        replies: list[float] = []

        async def one_buyer(user: User) -> None:
            for i in range(messages):
                seen = len(fake.sent_to(user))
                t0 = time.perf_counter()
                msg = fake.buyer_text(user, QUESTIONS[i % len(QUESTIONS)])
                if mode == "http":
                    assert (await fake.callback(url, msg)).status == 200
                else:
                    assert (await fake.push(msg))["code"] == 200
                acks.append(time.perf_counter() - t0)
                while len(fake.sent_to(user)) <= seen:
                    await asyncio.sleep(0.002)
                replies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(one_buyer(fake.user(f"买家{i}")) for i in range(buyers)))
        wall = time.perf_counter() - t0
        await server.close()
    await fake.close()
    n = len(acks)
    print(f"{mode:6} {n} messages from {buyers} buyers in {wall:.1f} s ({n / wall:.0f}/s): "
          f"ack p50 {pct(acks, 0.5):.0f} ms p95 {pct(acks, 0.95):.0f} ms; "
          f"reply p50 {pct(replies, 0.5):.0f} ms p95 {pct(replies, 0.95):.0f} ms (mean {statistics.mean(replies) * 1000:.0f})")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--buyers", type=int, default=20)
    ap.add_argument("--messages", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"python {platform.python_version()}, {platform.machine()}, embedded SQLite store")
    for mode in ("http", "stream"):
        await run(mode, args.buyers, args.messages)


if __name__ == "__main__":
    asyncio.run(main())
