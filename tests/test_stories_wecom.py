"""The core stories on WeCom: wechatpy inside kefu talks real HTTP to a local fake WeCom
server (tests/fake_wecom.py) that speaks its wire protocol (XML callbacks signed and
encrypted, kf paging and cursors, errcodes, the 48-hour and 5-message rules)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bots.app import KEY, Kefu, create_app
from handlers.model import Case
from tests.conftest import make_settings
from tests.fake_wecom import FakeWeCom
from tests.support import ORDER_OK, WebAgent, jpeg, png

Json = dict[str, Any]


class World:
    def __init__(self, fake: FakeWeCom, server: TestServer) -> None:
        self.fake, self.server = fake, server
        self.kefu: Kefu = server.app[KEY]
        self.base = str(server.make_url("/")).rstrip("/")
        self.url = self.base + "/api/wecom/callback"

    async def until(self, check: Callable[[], Any], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError("WeCom side did not get there in time")
            await asyncio.sleep(0.05)

    async def news(self) -> Any:
        """The platform's "there is news" callback, as WeCom sends it after a customer message."""
        result = await self.fake.callback(self.url, self.fake.kf_event_xml())
        assert result.status == 200, result
        return result

    async def says(self, user: Json, text: str, count: int, *, menu_id: str | None = None) -> list[Json]:
        self.fake.customer_text(user, text, menu_id=menu_id)
        await self.news()
        return await self.replies(user, count)

    async def replies(self, user: Json, count: int) -> list[Json]:
        await self.until(lambda: len(self.fake.sent_to(user)) >= count)
        await asyncio.sleep(0.1)
        return self.fake.sent_to(user)

    async def all_spoke(self, buyers: list[Json], count: int) -> bool:
        """Every buyer's transcript holds at least `count` of their own messages."""
        for b in buyers:
            lines = await self.kefu.store.transcript(f"kefu:wecom:{self.fake.open_kfid}:{b['external_userid']}")
            if len([m for m in lines if m["who"] == "buyer"]) < count:
                return False
        return True

    async def case(self, case_id: str) -> Case:
        for _ in range(200):
            row = await self.kefu.store.get_case(case_id)
            if row:
                return Case.model_validate(row.data)
            await asyncio.sleep(0.05)
        raise AssertionError(f"no case {case_id}")


def content(msg: Json) -> str:
    if msg["msgtype"] == "msgmenu":
        return msg["msgmenu"]["head_content"]
    return str(msg.get("content") or msg.get("text", {}).get("content", ""))


def menu(msg: Json) -> list[str]:
    return [i["click"]["id"] for i in (msg.get("msgmenu") or {}).get("list", [])]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    fake = FakeWeCom()
    await fake.start()
    settings = make_settings(
        tmp_path / "data", wecom_corp_id=fake.corp_id, wecom_secret=fake.secret, wecom_token=fake.token,
        wecom_aes_key=fake.encoding_aes_key, wecom_agent_id=fake.agent_id, wecom_open_kfid=fake.open_kfid,
        wecom_api_url=fake.api_base, wecom_robot_key=fake.robot_key, wecom_agents={"张三": "zhangsan"},
    )
    server = TestServer(await create_app(settings, platforms=True))
    await server.start_server()
    yield World(fake, server)
    await server.close()
    await fake.close()


async def test_url_verification_and_forged_callbacks(world: World) -> None:
    fake = world.fake
    status, body, _ = await fake.verify_url(world.url)
    assert status == 200 and body == fake.last_echo
    status, _, _ = await fake.verify_url(world.url, tamper="signature")
    assert status == 403
    buyer = fake.customer("小李")
    fake.customer_text(buyer, "你好")
    for tamper in ("signature", "stale", "corp_id", "aes_key"):
        result = await fake.callback(world.url, fake.kf_event_xml(), tamper=tamper)
        assert result.status == 403, tamper
    await asyncio.sleep(0.5)
    assert not [c for c in fake.calls if c[0] == "kf/sync_msg"]  # nothing was processed
    assert fake.sent_to(buyer) == []


async def test_tencents_published_sample_decrypts(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "d", wecom_corp_id="wx5823bf96d3bd56c7", wecom_secret="s",
                             wecom_token="QDG6eK", wecom_aes_key="jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C")
    server = TestServer(await create_app(settings, platforms=True))
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            params = {
                "msg_signature": "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3", "timestamp": "1409659589",
                "nonce": "263014780",
                "echostr": "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==",
            }
            async with http.get(server.make_url("/api/wecom/callback"), params=params) as resp:
                assert resp.status == 200 and await resp.text() == "1616140317555161061"
            async with http.get(server.make_url("/api/wecom/callback"),
                                params={**params, "msg_signature": "0" * 40}) as resp:
                assert resp.status == 403
    finally:
        await server.close()


async def test_damaged_parcel_claim_with_a_web_desk_agent(world: World) -> None:
    fake = world.fake
    buyer = fake.customer("王小姐")
    code = fake.enter_session(buyer)
    assert code
    await world.news()
    [welcome] = await world.replies(buyer, 1)
    assert welcome["via"] == "send_msg_on_event" and "小满生活馆" in content(welcome)  # the welcome code greets
    msgs = await world.says(buyer, "什么时候发货", 2)
    assert "48小时" in content(msgs[1])
    msgs = await world.says(buyer, "快递送到杯子碎了一个", 3)
    assert "订单号" in content(msgs[2])
    msgs = await world.says(buyer, "12345", 4)
    assert "16-20位数字" in content(msgs[3])
    msgs = await world.says(buyer, ORDER_OK, 5)
    assert "外包装" in content(msgs[4]) and menu(msgs[4]) == ["photos_done"]
    box, cup = png((240, 240, 240), (320, 240)), jpeg((20, 20, 200))
    fake.customer_image(buyer, box, content_type="image/png")
    fake.customer_image(buyer, cup)
    await world.news()
    # Both photos came in one pull: their acknowledgements are usually merged into one message.
    await world.until(lambda: any("收到2张照片" in content(m) for m in fake.sent_to(buyer)))
    n = len(fake.sent_to(buyer))
    msgs = await world.says(buyer, "就这些", n + 1, menu_id="photos_done")  # a menu click
    assert "对吗" in content(msgs[n]) and "2张" in content(msgs[n])
    msgs = await world.says(buyer, "对，提交", n + 2, menu_id="confirm:yes")
    assert "K1001" in content(msgs[n + 1])
    # The card is in the agents' group, through the robot.
    robot = await world.until(lambda: fake.robot_messages())
    card_text = robot[0]["text"]["content"]
    assert "K1001" in card_text and ORDER_OK in card_text and "运输破损" in card_text
    assert "王小姐" in card_text  # the buyer's WeChat nickname (kf/customer/batchget), not only an id
    case = await world.case("K1001")
    assert len(case.photos) == 2 and case.order_no == ORDER_OK and case.buyer.name == "王小姐"
    stored = sorted([await world.kefu.media.read(p.id) for p in case.photos])
    assert stored == sorted([box, cup])

    # An agent without a WeCom account works from the web desk: relayed through send_msg.
    async with aiohttp.ClientSession() as http:
        agent = WebAgent(http, world.base, "小王")
        await agent.act("K1001", "take")
        await agent.act("K1001", "reply", text="亲，马上为您补发一个新杯子")
        await agent.act("K1001", "note", text="顺丰补发 SF1")
        msgs = await world.replies(buyer, n + 4)
        assert "小王" in content(msgs[n + 2]) and content(msgs[n + 3]) == "亲，马上为您补发一个新杯子"
        await agent.act("K1001", "resolve", summary="已补发新杯子")
        msgs = await world.replies(buyer, n + 5)
        assert "已补发新杯子" in content(msgs[n + 4]) and menu(msgs[n + 4])[0] == "rate:K1001:5"
    assert fake.service_state(buyer) == 1  # the session stayed with the bot throughout
    msgs = await world.says(buyer, "⭐⭐⭐⭐⭐", n + 6, menu_id="rate:K1001:5")
    assert "5分" in content(msgs[n + 5])
    case = await world.case("K1001")
    assert case.status == "resolved" and case.rating == 5 and case.notes[0].text == "顺丰补发 SF1"
    assert all(len(m["msgid"]) <= 32 for m in fake.sent_to(buyer))


async def test_a_wechat_buyer_handed_to_a_wecom_servicer(world: World) -> None:
    fake = world.fake
    buyer = fake.customer("赵先生")
    await world.says(buyer, "转人工", 1)
    case = await world.case("K1001")
    assert case.type == "human"
    # 张三 takes it from the app chat: the session moves to him, he answers in WeCom itself.
    result = await fake.callback(world.url, fake.app_text_xml("zhangsan", "接单 K1001"))
    assert result.status == 200
    msgs = await world.replies(buyer, 2)
    assert "张三" in content(msgs[1])
    await world.until(lambda: fake.service_state(buyer) == 3)
    assert fake.conversation(buyer).servicer_userid == "zhangsan"
    fake.servicer_text("zhangsan", buyer, "您好，我是张三，请问订单号是多少？")
    await world.news()
    async def agent_line_recorded() -> bool:
        row = await world.kefu.store.get_case("K1001")
        return bool(row) and any(m["who"] == "agent" for m in await world.kefu.store.transcript(row.session))

    await world.until(agent_line_recorded)
    # It is on the case, and the bot did not send it a second time.
    case = await world.case("K1001")
    assert case.first_reply_at is not None and case.assignee == "张三"
    assert len(fake.sent_to(buyer)) == 2
    # The buyer's answer lands in the case too; the bot stays quiet.
    await world.says(buyer, "订单号3849201756382910475", 2)
    # A note from the app chat, then resolve: the WeCom session ends there.
    await fake.callback(world.url, fake.app_text_xml("zhangsan", "备注 K1001 老客户"))
    await fake.callback(world.url, fake.app_text_xml("zhangsan", "解决 K1001 已退款"))
    await world.until(lambda: fake.service_state(buyer) == 4)
    case = await world.case("K1001")
    assert case.status == "resolved" and case.notes[0].text == "老客户"
    assert case.history[-1].event == "send_failed"  # the desk sees the outcome was not sent by the bot


async def test_a_burst_of_50_messages_over_3_pages_with_a_retried_callback(world: World) -> None:
    fake = world.fake
    fake.page_size = 20
    buyers = [fake.customer(f"买家{i}") for i in range(5)]
    questions = ["什么时候发货", "能开发票吗", "退货运费谁出", "可以走顺丰吗", "钱多久退回来",
                 "能寄香港吗", "有运费险吗", "尺码怎么选", "地址写错了", "优惠券怎么用"]
    for q in questions:
        for b in buyers:
            fake.customer_text(b, q)
    xml = fake.kf_event_xml()
    first = await fake.callback(world.url, xml)
    again = await fake.callback(world.url, xml)  # WeCom retries a callback: the same one
    assert first.status == again.status == 200
    await world.until(lambda: world.all_spoke(buyers, 10), timeout=30)
    await asyncio.sleep(1.0)
    pages = [c for c in fake.calls if c[0] == "kf/sync_msg"]
    assert len(pages) == 3  # 20 + 20 + 10, the cursor kept between them
    for b in buyers:
        lines = await world.kefu.store.transcript(f"kefu:wecom:{fake.open_kfid}:{b['external_userid']}")
        asked = [m["text"] for m in lines if m["who"] == "buyer"]
        assert asked == questions  # every message once, in order: none lost, none twice
        sent = fake.sent_to(b)
        # WeChat allows five replies after the buyer's last message: the answers went out merged.
        assert 1 <= len(sent) <= 5 and not any(m.get("failed") for m in sent)
        text = "\n".join(content(m) for m in sent)
        assert text.index("48小时") < text.index("电子普通发票") if "电子普通发票" in text else "48小时" in text


async def test_the_callback_is_answered_at_once_while_media_downloads_are_slow(world: World) -> None:
    fake = world.fake
    fake.slow("media/get", 6.0)
    buyer = fake.customer("慢")
    await world.says(buyer, "质量问题", 1)
    await world.says(buyer, ORDER_OK, 2)
    fake.customer_image(buyer, png())
    result = await fake.callback(world.url, fake.kf_event_xml())
    assert result.status == 200 and result.elapsed < 1.0
    msgs = await world.replies(buyer, 3)
    assert "收到1张照片" in content(msgs[2])


async def test_token_expiry_rate_limits_and_send_failures(world: World) -> None:
    fake = world.fake
    buyer = fake.customer("小周")
    await world.says(buyer, "你好", 1)
    fake.expire_tokens()  # 42001: refreshed once, then the call goes through
    msgs = await world.says(buyer, "能开发票吗", 2)
    assert "发票" in content(msgs[1])
    gettokens = [c for c in fake.calls if c[0] == "gettoken"]
    assert len(gettokens) == 2
    fake.rate_limit("kf/send_msg", 1)  # 45009: backs off, then delivers
    msgs = await world.says(buyer, "退货运费谁出", 3)
    assert "运费" in content(msgs[2])
    await world.says(buyer, "转人工", 4)
    fake.send_fail(fake.sent_to(buyer)[-1]["msgid"])
    await world.news()
    for _ in range(100):
        case = await world.case("K1001")
        if case.send_failures:
            break
        await asyncio.sleep(0.05)
    assert case.send_failures == 1 and case.history[-1].event == "send_failed"


async def test_replies_beyond_kfs_budget_are_reported_to_the_desk(world: World) -> None:
    fake = world.fake
    buyer = fake.customer("小孙")
    await world.says(buyer, "转人工", 1)
    async with aiohttp.ClientSession() as http:
        agent = WebAgent(http, world.base, "小王")
        for i in range(6):  # the buyer does not answer: only five replies may go out
            await agent.act("K1001", "reply", text=f"第{i + 1}条")
        for _ in range(100):
            case = await world.case("K1001")
            if case.send_failures:
                break
            await asyncio.sleep(0.05)
        card = await agent.case("K1001")
    assert len(fake.sent_to(buyer)) == 5  # "已转人工" + agent joined + 3 replies
    assert case.send_failures >= 1
    assert any("5 replies" in h["text"] for h in card["history"] if h["event"] == "send_failed")


async def test_an_agent_without_a_kf_seat_works_the_case_from_the_app_chat(world: World) -> None:
    fake = world.fake
    buyer = fake.customer("小钱")
    await world.says(buyer, "我要投诉", 1)
    # "manager" is an employee but not in KEFU_WECOM_AGENTS: the bot keeps the session and relays.
    for text in ("接单 K1001", "亲，非常抱歉，我来处理", "备注 K1001 需要主管跟进", "查看 K9999"):
        assert (await fake.callback(world.url, fake.app_text_xml("manager", text))).status == 200
    msgs = await world.replies(buyer, 2)  # the take and the plain reply merge or follow each other
    await world.until(lambda: any("我来处理" in content(m) for m in fake.sent_to(buyer)))
    assert fake.service_state(buyer) == 1
    notice = await world.until(lambda: fake.app_messages("manager"))
    assert "K9999" in notice[-1]["content"]  # told plainly, in the app
    case = await world.case("K1001")
    assert case.assignee == "manager" and case.notes[0].text == "需要主管跟进"
    await fake.callback(world.url, fake.app_text_xml("manager", "解决 K1001 已补偿20元优惠券"))
    await world.until(lambda: any("已补偿20元优惠券" in content(m) for m in fake.sent_to(buyer)))
    assert (await world.case("K1001")).status == "resolved"
    _ = msgs
