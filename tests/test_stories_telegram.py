"""The core stories over Telegram: python-telegram-bot inside kefu talks real HTTP to a
local fake Bot API server (tests/fake_telegram.py) that answers as the Bot API does."""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bots.app import KEY, Kefu, create_app
from handlers.model import Case
from tests.conftest import drop_namespace, make_settings
from tests.fake_telegram import FakeTelegram
from tests.support import ORDER_OK, REDIS_URL, TOKEN, WebAgent, jpeg, png

Json = dict[str, Any]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class World:
    def __init__(self, fake: FakeTelegram, server: TestServer, desk: Json) -> None:
        self.fake, self.server, self.desk = fake, server, desk
        self.kefu: Kefu = server.app[KEY]
        self.base = str(server.make_url("/")).rstrip("/")

    async def until(self, check: Callable[[], Any], timeout: float = 10.0) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = check()
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("Telegram side did not get there in time")
            await asyncio.sleep(0.05)

    async def topic(self) -> int:
        """The message_thread_id of the desk's first case topic, once there is one."""
        return int((await self.until(lambda: self.fake.topics.get(self.desk["id"])))[0]["message_thread_id"])

    def to_buyer(self, user: Json) -> list[Json]:
        return self.fake.sent_to(user["id"])

    async def said(self, user: Json, count: int) -> list[Json]:
        """Wait until the buyer has `count` messages from the bot; return the new ones."""
        await self.until(lambda: len(self.to_buyer(user)) >= count)
        await asyncio.sleep(0.1)  # let a turn's other messages land too
        return self.to_buyer(user)

    async def case(self, case_id: str) -> Case:
        row = await self.until_case(case_id)
        return Case.model_validate(row.data)

    async def until_case(self, case_id: str) -> Any:
        for _ in range(200):
            row = await self.kefu.store.get_case(case_id)
            if row:
                return row
            await asyncio.sleep(0.05)
        raise AssertionError(f"no case {case_id}")

    async def settle(self) -> None:
        """Everything queued so far is fetched, handled and sent."""
        assert self.kefu.telegram is not None
        if not self.kefu.settings.telegram_webhook_url:
            await self.until(lambda: self.fake.unconfirmed == 0)
        await self.kefu.telegram.worker.drain()
        for _ in range(100):
            if not await self.kefu.store.pending_outbox():
                return
            await asyncio.sleep(0.05)


def buttons(msg: Json) -> list[str]:
    return [b["callback_data"] for row in (msg.get("reply_markup") or {}).get("inline_keyboard", []) for b in row]


async def start_world(tmp_path: Path, *, forum: bool = True, webhook: bool = False, **extra: Any) -> World:
    fake = FakeTelegram()
    await fake.start()
    desk = fake.group("小满客服组", forum=forum)
    port = free_port()
    settings = make_settings(
        tmp_path / "data", telegram_token=fake.token, telegram_api_url=fake.api_url,
        telegram_desk_chat=desk["id"], telegram_poll_timeout=1,
        telegram_webhook_url=f"http://127.0.0.1:{port}/api/telegram/webhook" if webhook else "",
        telegram_webhook_secret="s3cret-token_1" if webhook else None, **extra,
    )
    app = await create_app(settings, platforms=True)
    server = TestServer(app, port=port)
    await server.start_server()
    return World(fake, server, desk)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = await start_world(tmp_path)
    yield w
    await w.server.close()
    await w.fake.close()


@pytest.fixture
async def plain_world(tmp_path: Path) -> AsyncIterator[World]:
    w = await start_world(tmp_path, forum=False)
    yield w
    await w.server.close()
    await w.fake.close()


@pytest.fixture
async def hook_world(tmp_path: Path) -> AsyncIterator[World]:
    w = await start_world(tmp_path, webhook=True)
    yield w
    await w.server.close()
    await w.fake.close()


async def test_damaged_parcel_claim_with_an_album_to_a_forum_desk_and_back(world: World) -> None:
    await album_story(world)


async def test_the_same_story_on_redis_with_a_separate_worker_role(tmp_path: Path) -> None:
    """Redis store: updates are stored by the polling process and handled from the stream."""
    ns = f"kefu-tg-{uuid.uuid4().hex[:8]}"
    w = await start_world(tmp_path, redis_url=REDIS_URL, redis_namespace=ns, ingress_partitions=4)
    try:
        await album_story(w)
    finally:
        await w.server.close()
        await w.fake.close()
        await drop_namespace(ns)


async def album_story(world: World) -> None:
    fake, desk = world.fake, world.desk
    buyer = fake.user("小李", username="xiaoli")
    fake.text(buyer, "/start")
    [greeting] = await world.said(buyer, 1)
    assert "小满生活馆" in greeting["text"]
    assert buttons(greeting) == ["menu:track", "menu:returns", "menu:problem", "human"]

    fake.text(buyer, "什么时候发货")
    msgs = await world.said(buyer, 2)
    assert "48小时" in msgs[1]["text"]

    fake.text(buyer, "快递送来杯子碎了一个")
    msgs = await world.said(buyer, 3)
    assert "订单号" in msgs[2]["text"]
    fake.text(buyer, "12345")
    msgs = await world.said(buyer, 4)
    assert "16-20位数字" in msgs[3]["text"]
    fake.text(buyer, ORDER_OK)
    msgs = await world.said(buyer, 5)
    assert "外包装" in msgs[4]["text"] and buttons(msgs[4]) == ["photos_done"]

    # An album: two photos, one turn, one acknowledgement.
    box, cup = png((250, 250, 250), (320, 240)), jpeg((10, 10, 200))
    fake.photo(buyer, box, media_group_id="album-1")
    fake.photo(buyer, cup, media_group_id="album-1", caption="外箱和杯子")
    msgs = await world.said(buyer, 6)
    await asyncio.sleep(1.5)
    msgs = world.to_buyer(buyer)
    assert len(msgs) == 6 and "收到2张照片" in msgs[5]["text"]

    fake.press(buyer, msgs[5], "photos_done")
    msgs = await world.said(buyer, 7)
    assert "对吗" in msgs[6]["text"] and "2张" in msgs[6]["text"] and ORDER_OK in msgs[6]["text"]
    assert "杯子碎了一个" in msgs[6]["text"]
    fake.press(buyer, msgs[6], "confirm:yes")
    msgs = await world.said(buyer, 8)
    assert "K1001" in msgs[7]["text"]
    await world.until(lambda: len(fake.callback_answers) >= 2)  # the client stops spinning

    # The desk: a topic for the case, the card in it, the photos as an album, largest size.
    topics = await world.until(lambda: fake.topics.get(desk["id"]))
    assert "K1001" in topics[0]["name"] and "运输破损" in topics[0]["name"] and ORDER_OK in topics[0]["name"]
    thread = topics[0]["message_thread_id"]
    await world.settle()
    in_topic = fake.sent_to(desk["id"], thread)
    card = in_topic[0]
    assert "K1001" in card["text"] and ORDER_OK in card["text"] and "小李" in card["text"]
    assert "什么时候发货" in card["text"] or "发货时间" in card["text"]  # the FAQ the bot already gave
    assert buttons(card) == ["desk:take:K1001", "desk:resolve:K1001"]
    album = [m for m in in_topic if m.get("photo")]
    assert len(album) == 2 and album[0].get("media_group_id") == album[1].get("media_group_id")
    assert sorted(m["photo_bytes"] for m in album) == sorted([box, cup])

    # Take by button: the buyer hears a person joined; the card is edited in place.
    agent = fake.user("王", last_name="小二")
    fake.press(agent, card, "desk:take:K1001")
    msgs = await world.said(buyer, 9)
    assert "王 小二" in msgs[8]["text"]
    await world.until(lambda: "处理中" in fake.sent_to(desk["id"], thread)[0]["text"])
    assert buttons(fake.sent_to(desk["id"], thread)[0]) == ["desk:resolve:K1001"]

    # A plain message in the topic goes to the buyer; /note stays inside.
    fake.text(agent, "亲，非常抱歉，马上给您补发一个新杯子", chat=desk, thread_id=thread)
    msgs = await world.said(buyer, 10)
    assert msgs[9]["text"] == "亲，非常抱歉，马上给您补发一个新杯子"
    fake.text(agent, "/note 已安排顺丰补发", chat=desk, thread_id=thread)
    await world.settle()
    assert len(world.to_buyer(buyer)) == 10
    case = await world.case("K1001")
    assert case.notes[0].text == "已安排顺丰补发" and case.notes[0].agent == "王 小二"

    # The buyer's answer reaches the topic (the bot stays quiet to the buyer).
    fake.text(buyer, "好的，谢谢")
    await world.until(lambda: any("好的，谢谢" in (m.get("text") or "") for m in fake.sent_to(desk["id"], thread)))
    assert len(world.to_buyer(buyer)) == 10

    # Resolve with a summary; the buyer rates with a button.
    fake.text(agent, "/resolve 已顺丰补发新杯子，单号SF123", chat=desk, thread_id=thread)
    msgs = await world.said(buyer, 11)
    assert "已顺丰补发新杯子" in msgs[10]["text"] and buttons(msgs[10])[0] == "rate:K1001:5"
    fake.press(buyer, msgs[10], "rate:K1001:4")
    msgs = await world.said(buyer, 12)
    assert "4分" in msgs[11]["text"]
    case = await world.case("K1001")
    await world.until(lambda: "已解决" in fake.sent_to(desk["id"], thread)[0]["text"])
    case = await world.case("K1001")
    assert case.status == "resolved" and case.rating == 4 and case.assignee == "王 小二"
    assert [h.event for h in case.history] == ["created", "taken", "reply", "note", "resolved", "rated"]
    assert buttons(fake.sent_to(desk["id"], thread)[0]) == ["desk:reopen:K1001"]


async def test_plain_group_desk_uses_replies_to_the_card(plain_world: World) -> None:
    w = plain_world
    fake, desk = w.fake, w.desk
    buyer = fake.user("Amy", language_code="en")
    fake.text(buyer, "I want to talk to a human")
    msgs = await w.said(buyer, 2)
    assert "K1001" in msgs[-1]["text"] and "welcome" in msgs[0]["text"].lower()
    card = (await w.until(lambda: fake.sent_to(desk["id"])))[0]
    assert "K1001" in card["text"] and not fake.topics.get(desk["id"])
    agent = fake.user("Bob")
    fake.text(agent, "Hello Amy, how can I help?", chat=desk, reply_to=card)
    msgs = await w.said(buyer, 4)  # replying to a waiting case takes it: "this is Bob", then the reply
    assert "Bob" in msgs[2]["text"] and msgs[3]["text"] == "Hello Amy, how can I help?"
    # The buyer's answer lands as a reply to the card.
    fake.text(buyer, "my order never came")
    line = await w.until(lambda: [m for m in fake.sent_to(desk["id"]) if "never came" in (m.get("text") or "")])
    assert line[0]["reply_to_message"]["message_id"] == card["message_id"]
    # Talk in the group that is not about a case is left alone; /case shows a card again.
    fake.text(agent, "lunch at 12?", chat=desk)
    fake.text(agent, "/case K1001", chat=desk)
    await w.until(lambda: sum(bool("K1001" in (m.get("text") or "") and buttons(m)) for m in fake.sent_to(desk["id"])) >= 2)
    assert len(w.to_buyer(buyer)) == 4


async def test_resolve_button_asks_for_the_outcome_as_a_reply(world: World) -> None:
    fake, desk = world.fake, world.desk
    buyer = fake.user("小张")
    fake.text(buyer, "转人工")
    await world.said(buyer, 2)
    card = (await world.until(lambda: fake.sent_to(desk["id"])))[0]
    agent = fake.user("客服甲")
    fake.press(agent, card, "desk:resolve:K1001")
    prompt = await world.until(lambda: [m for m in fake.sent_to(desk["id"]) if "回复这条消息" in (m.get("text") or "")])
    fake.text(agent, "已退款10元", chat=desk, thread_id=card.get("message_thread_id"), reply_to=prompt[0])
    msgs = await world.said(buyer, 3)
    assert "已退款10元" in msgs[-1]["text"]
    assert (await world.case("K1001")).status == "resolved"


async def test_deep_link_order_number_image_documents_and_other_files(world: World) -> None:
    fake = world.fake
    buyer = fake.user("小周")
    fake.text(buyer, f"/start order_{ORDER_OK}")
    await world.said(buyer, 1)
    fake.text(buyer, "质量问题")
    msgs = await world.said(buyer, 2)
    assert "订单号" not in msgs[1]["text"] and "拍清楚" in msgs[1]["text"]
    fake.document(buyer, png(), file_name="defect.png", mime_type="image/png")
    msgs = await world.said(buyer, 3)
    assert "收到1张照片" in msgs[2]["text"]
    fake.document(buyer, b"%PDF-1.4", file_name="invoice.pdf", mime_type="application/pdf")
    msgs = await world.said(buyer, 4)
    assert "不是图片" in msgs[3]["text"]


async def test_messages_from_other_groups_are_ignored(world: World) -> None:
    fake = world.fake
    other = fake.group("闲聊群")
    stranger = fake.user("路人")
    fake.text(stranger, "/take K1001", chat=other)
    fake.text(stranger, "你好", chat=other)
    await world.settle()
    assert fake.sent_to(other["id"]) == []
    assert not [c for c in fake.calls if c[0] in ("sendMessage", "sendPhoto")]


async def test_a_web_desk_agent_serves_a_telegram_buyer(world: World) -> None:
    fake, desk = world.fake, world.desk
    buyer = fake.user("小吴")
    fake.text(buyer, "我要投诉")
    await world.said(buyer, 2)
    async with aiohttp.ClientSession() as http:
        agent = WebAgent(http, world.base, "网页客服")
        await world.until_case("K1001")
        await agent.act("K1001", "reply", text="亲，我是网页客服，马上处理")
    msgs = await world.said(buyer, 4)
    assert msgs[-1]["text"] == "亲，我是网页客服，马上处理"
    thread = fake.topics[desk["id"]][0]["message_thread_id"]
    await world.until(lambda: any("网页客服" in (m.get("text") or "") and "马上处理" in (m.get("text") or "")
                                  for m in fake.sent_to(desk["id"], thread)))


async def test_a_429_storm_delays_but_loses_nothing(world: World, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="kefu.dispatch")
    fake = world.fake
    buyers = [fake.user(f"买家{i}") for i in range(3)]
    fake.rate_limit("sendMessage", 6, retry_after=1)
    for b in buyers:
        fake.text(b, "什么时候发货")
    for b in buyers:
        msgs = await world.said(b, 2)
        assert "小满生活馆" in msgs[0]["text"] and "48小时" in msgs[1]["text"]
    limited = [c for c in fake.calls if c[0] == "sendMessage"]
    assert len(limited) >= 6 + 6  # six refused, then every message once
    assert await world.kefu.store.pending_outbox() == []
    # Each refusal waited what Telegram asked for (retry_after 1 s), not a guess.
    waits = [r.getMessage() for r in caplog.records if "postponed" in r.getMessage()]
    assert waits and all("postponed 1.0 s" in w and "telegram 429" in w for w in waits)


async def test_webhook_mode_checks_the_secret_and_handles_a_resent_update_once(hook_world: World) -> None:
    w = hook_world
    fake = w.fake
    assert fake.webhook is not None and fake.webhook["url"].endswith("/api/telegram/webhook")
    buyer = fake.user("小陈")
    update = fake.text(buyer, "转人工", queue=False)
    assert await fake.deliver(update, secret=None) == 401
    assert await fake.deliver(update, secret="forged") == 401
    await w.settle()
    assert w.to_buyer(buyer) == []
    assert await fake.deliver(update) == 200
    assert await fake.deliver(update) == 200  # Telegram re-sends after an error: handled once
    msgs = await w.said(buyer, 2)
    await w.settle()
    assert len(w.to_buyer(buyer)) == 2 and "K1001" in msgs[1]["text"]
    assert len(await w.kefu.store.find_cases()) == 1
    async with aiohttp.ClientSession() as http:
        async with http.post(w.base + "/api/telegram/webhook", data=b"not json",
                             headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret-token_1"}) as resp:
            assert resp.status == 400


async def test_polling_resumes_from_the_stored_offset_after_a_restart(tmp_path: Path) -> None:
    w = await start_world(tmp_path)
    buyer = w.fake.user("小郑")
    w.fake.text(buyer, "你好")
    await w.said(buyer, 1)
    await w.settle()
    await w.server.close()
    # While kefu is down the buyer writes again; after the restart it is answered once.
    w.fake.text(buyer, "能开发票吗")
    app = await create_app(w.kefu.settings, platforms=True)
    server = TestServer(app)
    await server.start_server()
    try:
        await w.until(lambda: len(w.fake.sent_to(buyer["id"])) >= 2, timeout=15)
        await asyncio.sleep(1.5)
        msgs = w.fake.sent_to(buyer["id"])
        assert len(msgs) == 2 and "发票" in msgs[1]["text"]
    finally:
        await server.close()
        await w.fake.close()
    _ = TOKEN


async def test_phone_numbers_are_masked_in_the_desk_group(world: World) -> None:
    fake, desk = world.fake, world.desk
    buyer = fake.user("小孙")
    fake.text(buyer, "转人工")
    await world.said(buyer, 2)
    fake.text(buyer, "我的手机13912345678，地址杭州市余杭区文一西路969号3幢201室")
    thread = await world.topic()
    line = await world.until(lambda: [m for m in fake.sent_to(desk["id"], thread) if "手机" in (m.get("text") or "")])
    assert "13912345678" not in line[0]["text"] and "139****5678" in line[0]["text"]
    assert "969号" not in line[0]["text"] and "201室" not in line[0]["text"]
    fake.text(fake.user("客服"), "/case", chat=desk, thread_id=thread)
    cards = await world.until(lambda: [m for m in fake.sent_to(desk["id"], thread) if buttons(m)] [1:])
    assert "13912345678" not in cards[0]["text"] and "139****5678" in cards[0]["text"]


async def test_kefu_run_starts_telegram_from_the_environment(tmp_path: Path) -> None:
    import os
    import sys

    fake = FakeTelegram()
    await fake.start()
    desk = fake.group("客服组", forum=True)
    env = {**os.environ, "KEFU_TELEGRAM_TOKEN": fake.token, "KEFU_TELEGRAM_API_URL": fake.api_url,
           "KEFU_TELEGRAM_DESK_CHAT": str(desk["id"]), "KEFU_TELEGRAM_POLL_TIMEOUT": "1",
           "KEFU_HOURS_OPEN": "00:00", "KEFU_HOURS_CLOSE": "00:00"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bots.cli", "run", "--port", "0", "--data-dir", str(tmp_path / "d"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        cwd=Path(__file__).resolve().parent.parent)
    try:
        banner = ""
        assert proc.stdout is not None
        while "telegram:" not in banner:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, (await proc.stderr.read()).decode() if proc.stderr else ""
            banner += line.decode()
        assert "@KefuShopBot (polling" in banner
        buyer = fake.user("小钱")
        fake.text(buyer, "能开发票吗")
        for _ in range(200):
            if len(fake.sent_to(buyer["id"])) >= 2:
                break
            await asyncio.sleep(0.05)
        assert "发票" in fake.sent_to(buyer["id"])[1]["text"]
    finally:
        proc.terminate()
        await proc.wait()
        await fake.close()
    assert proc.returncode == 0


async def test_a_command_for_an_unknown_case_is_answered_in_the_desk(world: World) -> None:
    fake, desk = world.fake, world.desk
    fake.text(fake.user("客服乙"), "/take K4242", chat=desk)
    notice = await world.until(lambda: [m for m in fake.sent_to(desk["id"]) if "K4242" in (m.get("text") or "")])
    assert "找不到" in notice[0]["text"]
