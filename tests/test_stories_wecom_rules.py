"""WeCom's own rules, told as stories against the fake WeCom server: kf's session states and
its 48-hour and 5-message limits (the desk is told why a reply did not go out), the sync_msg
cursor across a restart, the group robot's 20 a minute and the access token, each shared by
several kefu processes on one Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bots.app import create_app
from tests.conftest import make_settings
from tests.fake_wecom import FakeWeCom
from tests.support import REDIS_URL, WebAgent
from tests.test_stories_wecom import World, content

Json = dict[str, Any]
Start = Callable[[Any], Awaitable[World]]  # the start fixture: settings -> a running kefu
HOUR = 3600


def wecom_settings(fake: FakeWeCom, data_dir: Path, **extra: Any) -> Any:
    return make_settings(
        data_dir, wecom_corp_id=fake.corp_id, wecom_secret=fake.secret, wecom_token=fake.token,
        wecom_aes_key=fake.encoding_aes_key, wecom_agent_id=fake.agent_id, wecom_open_kfid=fake.open_kfid,
        wecom_api_url=fake.api_base, wecom_robot_key=fake.robot_key, wecom_agents={"张三": "zhangsan"}, **extra,
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeCom]:
    f = FakeWeCom()
    await f.start()
    yield f
    await f.close()


@pytest.fixture
async def start(fake: FakeWeCom) -> AsyncIterator[Start]:
    """start(settings): a kefu process against the fake; every one is closed after the test."""
    servers: list[TestServer] = []

    async def run(settings: Any) -> World:
        server = TestServer(await create_app(settings, platforms=True))
        await server.start_server()
        servers.append(server)
        world = World(fake, server)
        assert world.kefu.wecom is not None
        world.kefu.wecom.clock = fake.now  # WeChat's clock: the fake can move it on by hours
        return world

    yield run
    for server in servers:
        await server.close()  # a no-op for one a test closed itself


async def failures(world: World, case_id: str, count: int = 1) -> list[str]:
    """The case's send_failed history texts, once there are `count` of them."""
    async def found() -> list[str]:
        case = await world.case(case_id)
        return [h.text for h in case.history if h.event == "send_failed"][:count] if case.send_failures >= count else []
    return list(await world.until(found))


async def test_handoff_to_the_pool_then_a_wecom_servicer_whose_replies_land_in_the_transcript(
        fake: FakeWeCom, start: Start, tmp_path: Path) -> None:
    world = await start(wecom_settings(fake, tmp_path / "d", wecom_handoff_pool=True))
    buyer = fake.customer("钱女士")
    msgs = await world.says(buyer, "转人工", 1)
    assert "K1001" in content(msgs[0])
    # After the bot said what it had to, the session went to the pool (2) through the API.
    await world.until(lambda: fake.service_state(buyer) == 2)
    to_pool = [t for t in fake.transitions if t["by"] == "api" and t["to"] == 2]
    assert to_pool and to_pool[0]["external_userid"] == buyer["external_userid"]
    # 张三 takes it from the app chat: trans to 3 with him as the servicer.
    await fake.callback(world.url, fake.app_text_xml("zhangsan", "接单 K1001"))
    await world.until(lambda: fake.service_state(buyer) == 3)
    to_servicer = [t for t in fake.transitions if t["by"] == "api" and t["to"] == 3]
    assert [(t["from"], t["servicer_userid"]) for t in to_servicer] == [(2, "zhangsan")]
    assert fake.conversation(buyer).servicer_userid == "zhangsan"
    # From the pool the bot may not send: "张三 is with you" rides on the code the move returned.
    joined = await world.until(lambda: [m for m in fake.sent_to(buyer) if "张三" in content(m)])
    assert joined[0]["via"] == "send_msg_on_event"
    assert (await world.case("K1001")).send_failures == 0
    # What 张三 types in WeCom comes back through sync_msg (origin 5) onto the case.
    fake.servicer_text("zhangsan", buyer, "您好，我是张三")
    fake.customer_text(buyer, "我的杯子碎了")
    await world.news()
    store = world.kefu.store
    session = f"kefu:wecom:{fake.open_kfid}:{buyer['external_userid']}"

    async def both_lines() -> list[Json]:
        lines = await store.transcript(session)
        return lines if any(m["who"] == "agent" for m in lines) and "我的杯子碎了" in str(lines) else []

    lines = await world.until(both_lines)
    agent_lines = [m for m in lines if m["who"] == "agent"]
    assert agent_lines[0]["text"] == "您好，我是张三" and agent_lines[0]["agent"] == "张三"
    case = await world.case("K1001")
    assert case.assignee == "张三" and case.first_reply_at is not None
    assert not any("您好，我是张三" in content(m) for m in fake.sent_to(buyer))  # not sent a second time


async def test_past_kfs_48_hours_the_desk_is_told_why_the_reply_did_not_go(fake: FakeWeCom, start: Start, tmp_path: Path) -> None:
    world = await start(wecom_settings(fake, tmp_path / "d"))
    buyer = fake.customer("周先生")
    await world.says(buyer, "转人工", 1)
    fake.advance(49 * HOUR)  # the buyer went quiet for two days
    async with aiohttp.ClientSession() as http:
        agent = WebAgent(http, world.base, "小王")
        await agent.act("K1001", "reply", text="亲，您的退款已经到账了吗？")
        whys = await failures(world, "K1001")
        card = await agent.case("K1001")
    assert "48 hours" in whys[0]
    assert len(fake.sent_to(buyer)) == 1
    assert not [c for c in fake.calls if c[0] == "kf/send_msg" and "退款" in str(c[2])]  # not even tried
    # The agents' group hears it plainly, not just "failed".
    robot = await world.until(lambda: [m for m in fake.robot_messages() if "48小时" in m["text"]["content"]])
    assert "K1001" in robot[0]["text"]["content"] and "未能送达" in robot[0]["text"]["content"]
    assert any("48 hours" in h["text"] for h in card["history"] if h["event"] == "send_failed")
    # Once the buyer writes again the window opens: the next reply goes out.
    await world.says(buyer, "还没有", 1)
    async with aiohttp.ClientSession() as http:
        await WebAgent(http, world.base, "小王").act("K1001", "reply", text="亲，我马上帮您查")
    await world.until(lambda: any("马上帮您查" in content(m) for m in fake.sent_to(buyer)))


async def test_kfs_five_replies_per_buyer_message_the_desk_is_told_why(fake: FakeWeCom, start: Start, tmp_path: Path) -> None:
    world = await start(wecom_settings(fake, tmp_path / "d"))
    buyer = fake.customer("孙女士")
    await world.says(buyer, "转人工", 1)
    async with aiohttp.ClientSession() as http:
        agent = WebAgent(http, world.base, "小王")
        for i in range(6):
            await agent.act("K1001", "reply", text=f"第{i + 1}条")
        whys = await failures(world, "K1001")
    assert "5 replies" in whys[0]
    assert len(fake.sent_to(buyer)) == 5
    robot = await world.until(lambda: [m for m in fake.robot_messages() if "回复满5条" in m["text"]["content"]])
    assert "K1001" in robot[0]["text"]["content"]


async def test_a_msg_send_fail_event_tells_the_desk_why(fake: FakeWeCom, start: Start, tmp_path: Path) -> None:
    world = await start(wecom_settings(fake, tmp_path / "d"))
    buyer = fake.customer("吴先生")
    await world.says(buyer, "转人工", 1)
    fake.send_fail(fake.sent_to(buyer)[-1]["msgid"], fail_type=10)  # the buyer refuses this account
    await world.news()
    [why] = await failures(world, "K1001")
    assert "refuses" in why
    robot = await world.until(lambda: [m for m in fake.robot_messages() if "拒收" in m["text"]["content"]])
    assert "K1001" in robot[0]["text"]["content"]


async def test_a_restart_in_the_middle_of_a_burst_resumes_from_the_saved_cursor(
        fake: FakeWeCom, start: Start, tmp_path: Path) -> None:
    fake.page_size = 20
    buyers = [fake.customer(f"顾客{i}") for i in range(5)]
    for i in range(10):
        for b in buyers:
            fake.customer_text(b, f"问题{i}")
    fake.rate_limit("kf/sync_msg", 1000, after=1)  # page 1 comes, then WeCom refuses (45009) until the restart
    settings = wecom_settings(fake, tmp_path / "d")
    world = await start(settings)
    await world.news()
    await world.until(lambda: len([c for c in fake.calls if c[0] == "kf/sync_msg"]) >= 2)
    store = world.kefu.store
    assert world.kefu.wecom is not None
    saved = await world.until(lambda: store.get_meta(world.kefu.wecom._key("cursor", fake.open_kfid)))
    first_cursor = str(saved)
    assert fake.cursor_position(first_cursor) == 20  # kept after page 1
    await world.server.close()  # the restart
    fake.rate_limit("kf/sync_msg", 0)
    calls_before = len([c for c in fake.calls if c[0] == "kf/sync_msg"])
    world = await start(settings)
    await world.news()
    await world.until(lambda: world.all_spoke(buyers, 10), timeout=30)
    await asyncio.sleep(0.5)
    resumed = [c for c in fake.calls if c[0] == "kf/sync_msg"][calls_before:]
    assert resumed[0][2]["cursor"] == first_cursor  # not from the start, not from page 3
    for b in buyers:
        lines = await world.kefu.store.transcript(f"kefu:wecom:{fake.open_kfid}:{b['external_userid']}")
        assert [m["text"] for m in lines if m["who"] == "buyer"] == [f"问题{i}" for i in range(10)]


async def test_the_group_robots_20_a_minute_are_shared_by_two_processes_and_nothing_is_dropped(
        fake: FakeWeCom, start: Start, tmp_path: Path, redis_namespace: str) -> None:
    redis = {"redis_url": REDIS_URL, "redis_namespace": redis_namespace, "ingress_partitions": 4}
    a = await start(wecom_settings(fake, tmp_path / "a", **redis))
    b = await start(wecom_settings(fake, tmp_path / "b", **redis))
    buyers = [fake.customer(f"客人{i}") for i in range(26)]
    for i, buyer in enumerate(buyers):
        fake.customer_text(buyer, "转人工")
        await fake.callback((a if i % 2 else b).url, fake.kf_event_xml())
    case_ids = [f"K{1001 + i}" for i in range(len(buyers))]
    for case_id in case_ids:
        await a.case(case_id)

    def on_the_robot() -> set[str]:
        text = "\n".join(m["text"]["content"] for m in fake.robot_messages())
        return {c for c in case_ids if c in text}

    # Both processes post cards; together they stay within the robot's minute.
    await a.until(lambda: len(fake.robot_messages()) >= 20, timeout=30)
    await asyncio.sleep(1.5)
    robot_calls = [c for c in fake.calls if c[0] == "webhook/send"]
    assert len(fake.robot_messages()) == 20 and len(robot_calls) == 20  # none refused with 45009
    assert len(on_the_robot()) < len(case_ids)  # the rest wait, in the store
    fake.advance(61)  # a minute later: whatever waited goes out, merged
    await a.until(lambda: on_the_robot() == set(case_ids), timeout=30)
    later = fake.robot_messages()[20:]
    assert 1 <= len(later) <= 3
    assert sum(c in later[0]["text"]["content"] for c in case_ids) >= 2  # several cards in one message
    assert len([c for c in fake.calls if c[0] == "webhook/send"]) == len(fake.robot_messages())


async def test_one_access_token_for_three_processes_refreshed_once(
        fake: FakeWeCom, start: Start, tmp_path: Path, redis_namespace: str) -> None:
    redis = {"redis_url": REDIS_URL, "redis_namespace": redis_namespace, "ingress_partitions": 4}
    worlds = [await start(wecom_settings(fake, tmp_path / f"p{i}", **redis)) for i in range(3)]
    buyer = fake.customer("郑先生")
    fake.customer_text(buyer, "你好")
    clients = [w.kefu.wecom.client for w in worlds if w.kefu.wecom is not None]
    assert len(clients) == 3

    async def everyone_calls() -> list[Any]:
        return await asyncio.gather(*(asyncio.to_thread(c.kf.get_service_state, fake.open_kfid,
                                                        buyer["external_userid"])
                                      for c in clients for _ in range(3)))

    def gettokens() -> int:
        return len([c for c in fake.calls if c[0] == "gettoken"])

    assert all(r["errcode"] == 0 for r in await everyone_calls())
    assert gettokens() == 1  # one fetch, the others reuse it from the store
    fake.expire_tokens()  # 42001 for all: one refresh under the shared lock, every call retried once
    assert all(r["errcode"] == 0 for r in await everyone_calls())
    assert gettokens() == 2
    fake.revoke_tokens()  # 40014 the same way
    assert all(r["errcode"] == 0 for r in await everyone_calls())
    assert gettokens() == 3
    # A kefu process that starts later takes the shared token too.
    late = await start(wecom_settings(fake, tmp_path / "late", **redis))
    assert late.kefu.wecom is not None and late.kefu.wecom.client is not None
    await asyncio.to_thread(late.kefu.wecom.client.kf.get_service_state, fake.open_kfid, buyer["external_userid"])
    assert gettokens() == 3


async def test_a_kf_buyer_served_from_the_telegram_desk(fake: FakeWeCom, start: Start, tmp_path: Path) -> None:
    """Mixing: buyers on WeChat, agents in a Telegram forum group (no WeCom desk at all)."""
    from tests.fake_telegram import FakeTelegram

    tg = FakeTelegram()
    await tg.start()
    desk = tg.group("小满客服组", forum=True)
    settings = make_settings(
        tmp_path / "d", wecom_corp_id=fake.corp_id, wecom_secret=fake.secret, wecom_token=fake.token,
        wecom_aes_key=fake.encoding_aes_key, wecom_open_kfid=fake.open_kfid, wecom_api_url=fake.api_base,
        telegram_token=tg.token, telegram_api_url=tg.api_url, telegram_desk_chat=desk["id"],
        telegram_poll_timeout=1,
    )
    world = await start(settings)
    try:
        assert set(world.kefu.dispatcher.desks) == {"web", "telegram"}
        buyer = fake.customer("林小姐")
        msgs = await world.says(buyer, "快递送到杯子碎了一个", 1)
        msgs = await world.says(buyer, "转人工", 2)
        assert "K1001" in content(msgs[-1])
        topic = (await world.until(lambda: tg.topics.get(desk["id"])))[0]
        thread = topic["message_thread_id"]
        card = (await world.until(lambda: tg.sent_to(desk["id"], thread)))[0]
        assert "K1001" in card["text"] and "（wecom）" in card["text"] and "杯子碎了" in card["text"]
        agent = tg.user("阿明")
        tg.text(agent, "/take", chat=desk, thread_id=thread)
        msgs = await world.replies(buyer, 3)
        assert "阿明" in content(msgs[2])
        tg.text(agent, "亲，抱歉，马上给您补发", chat=desk, thread_id=thread)
        msgs = await world.replies(buyer, 4)
        assert content(msgs[3]) == "亲，抱歉，马上给您补发"
        tg.text(agent, "/note 老客户，顺丰", chat=desk, thread_id=thread)
        fake.customer_text(buyer, "好的谢谢")
        await world.news()
        await world.until(lambda: any("好的谢谢" in (m.get("text") or "") for m in tg.sent_to(desk["id"], thread)))
        tg.text(agent, "/resolve 已补发，顺丰SF1", chat=desk, thread_id=thread)
        msgs = await world.replies(buyer, 5)
        assert "已补发" in content(msgs[4]) and msgs[4]["msgtype"] == "msgmenu"
        case = await world.case("K1001")
        assert case.status == "resolved" and case.assignee == "阿明" and case.notes[0].text == "老客户，顺丰"
        assert len(fake.sent_to(buyer)) == 5  # the note stayed inside
        assert fake.service_state(buyer) == 1
    finally:
        await world.server.close()
        await tg.close()


async def test_a_retried_agent_message_is_handled_once(fake: FakeWeCom, start: Start, tmp_path: Path) -> None:
    """WeCom retries a callback it got no 200 for in 5 s: the same MsgId is one command."""
    world = await start(wecom_settings(fake, tmp_path / "d"))
    buyer = fake.customer("冯先生")
    await world.says(buyer, "转人工", 1)
    take = fake.app_text_xml("manager", "接单 K1001", msg_id=7001)
    note = fake.app_text_xml("manager", "备注 K1001 先查物流", msg_id=7002)
    for xml in (take, take, note, note):
        assert (await fake.callback(world.url, xml)).status == 200

    async def noted() -> Any:
        case = await world.case("K1001")
        return case if case.notes else None

    await world.until(noted)
    await world.kefu.wecom.app_worker.drain()  # type: ignore[union-attr]
    case = await world.case("K1001")
    assert [h.event for h in case.history] == ["created", "taken", "note"]
    assert len(case.notes) == 1 and len([m for m in fake.sent_to(buyer) if "manager" in content(m)]) == 1
