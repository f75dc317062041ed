"""The core stories on DingTalk: kefu's aiohttp calls and the official dingtalk-stream SDK talk real HTTP and
websockets to a local fake DingTalk (tests/fake_dingtalk.py), in HTTP-callback mode and in Stream mode."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bots.app import KEY, Kefu, create_app
from bots.dingtalk import callback_sign
from handlers.model import Case
from state.redis import RedisStore
from tests.conftest import drop_namespace, make_settings
from tests.fake_dingtalk import FakeDingTalk, User
from tests.fake_wecom import FakeWeCom
from tests.support import ORDER_OK, REDIS_URL, TOKEN, WebBuyer, jpeg, png, texts

Json = dict[str, Any]


class World:
    def __init__(self, fake: FakeDingTalk, server: TestServer, mode: str) -> None:
        self.fake, self.server, self.mode = fake, server, mode
        self.kefu: Kefu = server.app[KEY]
        self.base = str(server.make_url("/")).rstrip("/")
        self.url = self.base + "/api/dingtalk/callback"

    async def until(self, check: Callable[[], Any], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError("DingTalk side did not get there in time")
            await asyncio.sleep(0.05)

    async def deliver(self, msg: Json) -> None:
        """DingTalk delivers a robot message: an HTTP callback, or a frame on the Stream connection."""
        if self.mode == "http":
            result = await self.fake.callback(self.url, msg)
            assert result.status == 200, result
        else:
            ack = await self.fake.push(msg)
            assert ack["code"] == 200 and ack["headers"]["messageId"], ack

    async def says(self, user: User, text: str, count: int) -> list[Json]:
        await self.deliver(self.fake.buyer_text(user, text))
        return await self.replies(user, count)

    async def replies(self, user: User, count: int) -> list[Json]:
        await self.until(lambda: len(self.fake.sent_to(user)) >= count)
        await asyncio.sleep(0.1)
        return self.fake.sent_to(user)

    async def agent(self, agent: User, text: str) -> None:
        await self.deliver(self.fake.agent_text(agent, text))

    async def case(self, case_id: str, check: Callable[[Case], bool] = lambda c: True) -> Case:
        async def found() -> Case | None:
            row = await self.kefu.store.get_case(case_id)
            case = Case.model_validate(row.data) if row else None
            return case if case is not None and check(case) else None

        return await self.until(found)


async def _world(tmp_path: Path, mode: str, custom_robot: bool = False) -> tuple[FakeDingTalk, TestServer]:
    fake = FakeDingTalk()
    await fake.start()
    extra: dict[str, Any] = {}
    if mode.endswith("+redis"):  # stored and acknowledged, then handled by the ingress worker, on Redis
        mode = mode.removesuffix("+redis")
        extra = {"redis_url": REDIS_URL, "redis_namespace": f"kefu-test-{uuid.uuid4().hex[:8]}",
                 "ingress_partitions": 4}
    if custom_robot:  # cards go to the group through a custom robot with the 加签 security setting
        extra |= {"dingtalk_desk_webhook": f"{fake.base}/robot/send?access_token={fake.custom_token}",
                 "dingtalk_desk_webhook_secret": fake.custom_secret}
    settings = make_settings(
        tmp_path / "data", dingtalk_app_key=fake.app_key, dingtalk_app_secret=fake.app_secret, dingtalk_mode=mode,
        dingtalk_api_url=fake.base, dingtalk_oapi_url=fake.base, dingtalk_desk_conversation=fake.desk_cid, **extra)
    server = TestServer(await create_app(settings, platforms=True))
    await server.start_server()
    if mode == "stream":
        await asyncio.wait_for(fake.connected.wait(), 15)  # the SDK opened its connection
    return fake, server


async def _close(server: TestServer, fake: FakeDingTalk) -> None:
    store = server.app[KEY].store
    await server.close()
    await fake.close()
    if isinstance(store, RedisStore):
        await drop_namespace(store.ns)


@pytest.fixture(params=["http", "stream", "stream+redis"])
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    fake, server = await _world(tmp_path, request.param)
    yield World(fake, server, request.param.removesuffix("+redis"))
    await _close(server, fake)


@pytest.fixture
async def http_world(tmp_path: Path) -> AsyncIterator[World]:
    fake, server = await _world(tmp_path, "http", custom_robot=True)
    yield World(fake, server, "http")
    await _close(server, fake)


def test_the_documented_signature_vector() -> None:
    assert callback_sign("this is secret", "1577262236757") == "hmPWwU+7lVdm3ZZz0r9tSfx0L4Q26jWOZr9+Gs6EZQM="


async def test_damaged_parcel_claim_worked_by_robot_commands_in_the_group(world: World) -> None:
    fake = world.fake
    buyer, agent = fake.user("王小姐"), fake.user("小王")
    [hello] = await world.says(buyer, "你好", 1)
    assert "小满生活馆" in hello["text"] and "\n1. " in hello["text"]  # buttons became numbered lines
    assert hello["via"] == "session"  # answered through the conversation's sessionWebhook
    msgs = await world.says(buyer, "什么时候发货", 2)
    assert "48小时" in msgs[1]["text"]
    msgs = await world.says(buyer, "快递送到杯子碎了一个", 3)
    assert "订单号" in msgs[2]["text"]
    msgs = await world.says(buyer, "12345", 4)
    assert "16-20位数字" in msgs[3]["text"]
    msgs = await world.says(buyer, ORDER_OK, 5)
    assert "外包装" in msgs[4]["text"] and "\n1. " in msgs[4]["text"]
    box, cup = png((240, 240, 240), (320, 240)), jpeg((20, 20, 200))
    await world.deliver(fake.buyer_picture(buyer, box, "image/png"))
    msgs = await world.replies(buyer, 6)
    assert "收到1张照片" in msgs[5]["text"]
    await world.deliver(fake.buyer_rich(buyer, ["杯子碎成这样了", cup]))  # a picture with words
    msgs = await world.replies(buyer, 7)
    assert "收到2张照片" in msgs[6]["text"]
    msgs = await world.says(buyer, "1", 8)  # typing the number presses "photos_done"
    assert "对吗" in msgs[7]["text"] and "2张" in msgs[7]["text"]
    msgs = await world.says(buyer, "1", 9)  # "confirm:yes"
    assert "K1001" in msgs[8]["text"]
    case = await world.case("K1001")
    assert case.order_no == ORDER_OK and len(case.photos) == 2
    assert sorted([await world.kefu.media.read(p.id) for p in case.photos]) == sorted([box, cup])
    # The card is in the agents' group, sent by the app robot.
    card = await world.until(lambda: [m for m in fake.desk_messages() if "K1001" in m["text"]])
    assert card[0]["via"] == "group" and ORDER_OK in card[0]["text"] and "运输破损" in card[0]["text"]

    await world.agent(agent, "接单 K1001")
    msgs = await world.replies(buyer, 10)
    assert "小王" in msgs[9]["text"]
    await world.agent(agent, "回复 K1001 亲，马上为您补发一个新杯子")
    msgs = await world.replies(buyer, 11)
    assert msgs[10]["text"] == "亲，马上为您补发一个新杯子"
    await world.agent(agent, "备注 K1001 顺丰补发 SF1")
    await world.case("K1001", lambda c: bool(c.notes))
    await world.agent(agent, "解决 K1001 已补发新杯子")
    msgs = await world.replies(buyer, 12)
    assert "已补发新杯子" in msgs[11]["text"] and "\n1. " in msgs[11]["text"]
    msgs = await world.says(buyer, "1", 13)  # the first rating button: five stars
    assert "5分" in msgs[12]["text"]
    case = await world.case("K1001", lambda c: c.rating is not None)
    assert case.status == "resolved" and case.rating == 5 and case.assignee == "小王"
    assert case.notes[0].text == "顺丰补发 SF1"
    assert all(m["via"] == "session" for m in fake.sent_to(buyer))


async def test_a_redelivered_msg_id_is_handled_once(world: World) -> None:
    fake = world.fake
    buyer = fake.user("小李")
    msg = fake.buyer_text(buyer, "能开发票吗")
    await world.deliver(msg)
    first = await world.replies(buyer, 1)
    assert "发票" in texts(first)
    await world.deliver(msg)  # DingTalk delivers it again (no ACK seen, or a retried callback)
    await asyncio.sleep(0.5)
    assert len(fake.sent_to(buyer)) == len(first)
    lines = await world.kefu.store.transcript(f"kefu:dingtalk:{fake.robot_code}:{buyer.staff_id}")
    assert [m["text"] for m in lines if m["who"] == "buyer"] == ["能开发票吗"]


async def test_commands_from_another_group_are_ignored(world: World) -> None:
    fake = world.fake
    buyer, stranger, agent = fake.user("小李"), fake.user("路人"), fake.user("小王")
    await world.says(buyer, "我要转人工", 2)
    await world.case("K1001")
    # Someone @-s the robot in a group that is not the agents' group: nothing happens to the case.
    await world.deliver(fake.agent_text(stranger, "接单 K1001", cid="cidSomeOtherGroup=="))
    await world.deliver(fake.agent_text(stranger, "解决 K1001 随便", cid="cidSomeOtherGroup=="))
    await world.agent(agent, "备注 K1001 真正的客服")
    await world.case("K1001", lambda c: bool(c.notes))
    await asyncio.sleep(0.5)  # the other group's messages had time to be handled too
    case = await world.case("K1001")
    assert case.status == "open" and case.assignee is None and case.notes[0].agent == "小王"


async def test_an_expired_session_webhook_falls_back_to_the_openapi(world: World) -> None:
    fake = world.fake
    buyer, agent = fake.user("赵先生"), fake.user("小张")
    await world.deliver(fake.buyer_text(buyer, "转人工"))
    await world.until(lambda: "K1001" in texts(fake.sent_to(buyer)))
    n = len(fake.sent_to(buyer))
    fake.expire_sessions()  # 90 minutes later: the buyer's sessionWebhook is gone
    fake.expire_tokens()  # and the access token too: refreshed once
    fake.rate_limit("/v1.0/robot/oToMessages/batchSend", 1)  # the QPS limit: retried after a second
    await world.agent(agent, "接单 K1001")
    msgs = await world.replies(buyer, n + 1)
    assert "小张" in msgs[n]["text"] and msgs[n]["via"] == "otom"
    assert fake.calls.count("/v1.0/oauth2/accessToken") == 2
    # Unknown case: the agent is told so in the group.
    await world.agent(agent, "查看 K9999")
    notice = await world.until(lambda: [m for m in fake.desk_messages() if "K9999" in m["text"]])
    assert notice


async def test_a_web_desk_agent_sends_a_photo_to_a_dingtalk_buyer(world: World) -> None:
    fake = world.fake
    buyer = fake.user("小钱")
    await world.deliver(fake.buyer_text(buyer, "转人工"))
    await world.until(lambda: "K1001" in texts(fake.sent_to(buyer)))
    n = len(fake.sent_to(buyer))
    photo = png((10, 200, 10))
    async with aiohttp.ClientSession() as http:
        form = aiohttp.FormData()
        form.add_field("agent", "小王")
        form.add_field("text", "亲，是这款吗？")
        form.add_field("photo", photo, filename="p.png", content_type="image/png")
        async with http.post(f"{world.base}/api/desk/cases/K1001/reply", data=form,
                             headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200, await resp.text()
    msgs = await world.replies(buyer, n + 3)  # the agent joined (a reply takes the case), the words, the photo
    assert "小王" in msgs[n]["text"] and msgs[n + 1]["text"] == "亲，是这款吗？"
    image = msgs[n + 2]
    assert image["via"] == "otom" and image["kind"] == "sampleImageMsg"
    assert fake.uploads[json.loads(image["text"])["photoURL"]] == photo  # uploaded, then sent by its media_id


async def test_unsupported_files_get_a_polite_answer(world: World) -> None:
    fake = world.fake
    buyer = fake.user("小孙")
    await world.deliver(fake.buyer_file(buyer, "发票.pdf"))
    msgs = await world.replies(buyer, 1)
    assert msgs[0]["text"]


async def test_forged_stale_and_unsigned_callbacks_are_rejected(http_world: World) -> None:
    fake = http_world.fake
    buyer = fake.user("小周")
    for tamper in ("sign", "stale", "missing"):
        result = await fake.callback(http_world.url, fake.buyer_text(buyer, "你好"), tamper=tamper)
        assert result.status == 401 and "rejected" in result.body["error"], (tamper, result)
    async with aiohttp.ClientSession() as http:  # signed, but not a robot message
        ts = str(int(time.time() * 1000))
        async with http.post(http_world.url, data=b"{}", headers={"timestamp": ts,
                                                                  "sign": callback_sign(fake.app_secret, ts)}) as resp:
            assert resp.status == 400 and "msgId" in (await resp.json())["error"]
    await asyncio.sleep(0.5)
    assert fake.sent == [] and not await http_world.kefu.store.ingress_pending(http_world.kefu.dingtalk.worker.source)


async def test_a_web_chat_buyer_served_by_agents_on_dingtalk(http_world: World) -> None:
    fake = http_world.fake
    agent = fake.user("小王")
    async with aiohttp.ClientSession() as http:
        buyer = WebBuyer(http, http_world.base, name="访客")
        await buyer.say("转人工")
        card = await http_world.until(lambda: [m for m in fake.desk_messages() if "K1001" in m["text"]])
        assert card[0]["via"] == "custom"  # through the custom robot, signed (加签)
        await http_world.agent(agent, "接单 K1001")
        await http_world.agent(agent, "回复 K1001 您好，我是小王")
        seen = await http_world.until(lambda: _replies_contain(buyer, "我是小王"))
        assert "小王" in seen
        # A plain @robot message goes to the case the agent has in hand.
        await http_world.agent(agent, "请问订单号是多少？")
        await http_world.until(lambda: _replies_contain(buyer, "订单号是多少"))
    case = await http_world.case("K1001", lambda c: c.first_reply_at is not None)
    assert case.channel.platform == "webchat" and case.assignee == "小王"


async def _replies_contain(buyer: WebBuyer, words: str) -> str | None:
    await buyer.replies(wait=0.2)
    all_text = texts(buyer.seen)
    return all_text if words in all_text else None


async def test_the_stream_answers_pings_and_reconnects_when_asked(tmp_path: Path) -> None:
    fake, server = await _world(tmp_path, "stream")
    world = World(fake, server, "stream")
    try:
        opened = fake.opened[0]
        assert opened["clientId"] == fake.app_key
        assert {"type": "CALLBACK", "topic": "/v1.0/im/bot/messages/get"} in opened["subscriptions"]
        ack = await fake.ping()
        assert ack["code"] == 200 and ack["data"] == ack["sent_data"]  # the opaque comes back
        await fake.disconnect()
        await world.until(lambda: fake.connections == 2 and fake.connected.is_set(), timeout=15)
        buyer = fake.user("小吴")
        await world.deliver(fake.buyer_text(buyer, "什么时候发货"))
        await world.until(lambda: "48小时" in texts(fake.sent_to(buyer)))
    finally:
        await server.close()
        await fake.close()


async def test_a_wechat_buyer_on_wecom_served_by_agents_on_dingtalk(tmp_path: Path) -> None:
    """Buyers on WeChat (WeCom 微信客服), agents in a DingTalk group: channel and desk are set up independently."""
    wecom, ding = FakeWeCom(), FakeDingTalk()
    await wecom.start()
    await ding.start()
    settings = make_settings(
        tmp_path / "data", wecom_corp_id=wecom.corp_id, wecom_secret=wecom.secret, wecom_token=wecom.token,
        wecom_aes_key=wecom.encoding_aes_key, wecom_open_kfid=wecom.open_kfid, wecom_api_url=wecom.api_base,
        dingtalk_app_key=ding.app_key, dingtalk_app_secret=ding.app_secret, dingtalk_mode="http",
        dingtalk_api_url=ding.base, dingtalk_desk_conversation=ding.desk_cid)
    server = TestServer(await create_app(settings, platforms=True))
    await server.start_server()
    world = World(ding, server, "http")
    try:
        assert set(world.kefu.dispatcher.desks) == {"web", "dingtalk"}  # WeCom is only a buyer channel here
        buyer, agent = wecom.customer("陈女士"), ding.user("小王")
        wecom.customer_text(buyer, "转人工")
        assert (await wecom.callback(world.base + "/api/wecom/callback", wecom.kf_event_xml())).status == 200
        card = await world.until(lambda: [m for m in ding.desk_messages() if "K1001" in m["text"]])
        assert "转人工" in card[0]["text"]  # what the buyer said is on the card
        await world.agent(agent, "接单 K1001")
        await world.agent(agent, "回复 K1001 您好，我是小王，马上为您处理")
        said = lambda: " ".join(str(m.get("content") or m.get("text", {}).get("content", ""))  # noqa: E731
                                for m in wecom.sent_to(buyer))
        await world.until(lambda: "马上为您处理" in said())
        assert "小王" in said()
        await world.agent(agent, "解决 K1001 已安排退款")
        await world.until(lambda: "已安排退款" in said())
        case = await world.case("K1001", lambda c: c.status == "resolved")
        assert case.channel.platform == "wecom" and case.assignee == "小王"
    finally:
        await server.close()
        await ding.close()
        await wecom.close()
