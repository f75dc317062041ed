"""More Telegram stories against the fake Bot API: every inline button a buyer presses is
answered, the desk's typed commands, a buyer who blocked the bot, and groups that are not
the desk."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from tests.support import ORDER_OK, png
from tests.test_stories_telegram import World, buttons, start_world

Json = dict[str, Any]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = await start_world(tmp_path)
    yield w
    await w.server.close()
    await w.fake.close()


async def test_every_button_a_buyer_presses_is_answered(world: World) -> None:
    fake, desk = world.fake, world.desk
    buyer = fake.user("小按")
    pressed: list[str] = []

    def press(msg: Json, data: str) -> None:
        pressed.append(fake.press(buyer, msg, data)["callback_query"]["id"])

    async def offering(data: str, after: int) -> Json:
        """The newest message after the first `after` that carries a button `data`."""
        found = await world.until(lambda: [m for m in world.to_buyer(buyer)[after:] if data in buttons(m)])
        return found[-1]

    fake.text(buyer, "/start")
    greeting = await offering("menu:track", 0)
    press(greeting, "menu:track")  # the greeting menu: an FAQ
    await world.said(buyer, 2)
    press(greeting, "menu:problem")
    await world.said(buyer, 3)
    menu = world.to_buyer(buyer)[2]
    press(menu, next(b for b in buttons(menu) if b.startswith("claim:")))
    await world.said(buyer, 4)
    fake.text(buyer, ORDER_OK)
    n = len(await world.said(buyer, 5))
    fake.photo(buyer, png())
    press(await offering("photos_done", n), "photos_done")  # "that's all"
    n = len(await world.said(buyer, n + 2))
    fake.text(buyer, "杯子碎了一个")  # asked what happened
    press(await offering("confirm:yes", n), "confirm:yes")
    await world.until(lambda: any("K1001" in m["text"] for m in world.to_buyer(buyer)))
    thread = await world.topic()
    agent = fake.user("客服丙")
    fake.text(agent, "/resolve 已补发", chat=desk, thread_id=thread)
    n = len(world.to_buyer(buyer))
    press(await offering("rate:K1001:5", n), "rate:K1001:5")
    await world.until(lambda: any("5分" in m["text"] for m in world.to_buyer(buyer)))
    await world.settle()
    # Every press stopped its client's spinner, once.
    answered = [a["callback_query_id"] for a in fake.callback_answers]
    assert sorted(answered) == sorted(pressed) and len(pressed) == 6
    assert (await world.case("K1001")).rating == 5


async def test_agents_typed_commands_take_note_resolve_reopen_and_case(world: World) -> None:
    fake, desk = world.fake, world.desk
    buyer = fake.user("小命")
    fake.text(buyer, "转人工")
    await world.said(buyer, 2)
    thread = await world.topic()
    card = (await world.until(lambda: fake.sent_to(desk["id"], thread)))[0]
    agent = fake.user("客服丁")
    # Outside the topic, commands name the case.
    fake.text(agent, "/take K1001", chat=desk)
    msgs = await world.said(buyer, 3)
    assert "客服丁" in msgs[2]["text"]
    await world.until(lambda: "处理中" in fake.sent_to(desk["id"], thread)[0]["text"])
    fake.text(agent, "/note 1001 已核实地址", chat=desk)
    fake.text(agent, "/resolve K1001 已退款", chat=desk)
    msgs = await world.said(buyer, 4)
    assert "已退款" in msgs[3]["text"]
    await world.until(lambda: buttons(fake.sent_to(desk["id"], thread)[0]) == ["desk:reopen:K1001"])
    # In the topic, the case is implied.
    fake.text(agent, "/reopen 买家说还没收到退款", chat=desk, thread_id=thread)
    await world.until(lambda: "desk:resolve:K1001" in buttons(fake.sent_to(desk["id"], thread)[0]))
    fake.text(agent, "/case", chat=desk, thread_id=thread)
    cards = await world.until(lambda: [m for m in fake.sent_to(desk["id"], thread) if buttons(m)][1:])
    assert "K1001" in cards[0]["text"] and "已核实地址" in cards[0]["text"]
    assert fake.sent_to(desk["id"], thread)[0]["message_id"] == card["message_id"]  # edited in place
    case = await world.case("K1001")
    assert [h.event for h in case.history] == ["created", "taken", "note", "resolved", "reopened"]
    assert case.notes[0].text == "已核实地址" and case.status != "resolved"
    assert all("已核实地址" not in m["text"] for m in world.to_buyer(buyer))  # the note stayed inside


async def test_a_buyer_who_blocked_the_bot_is_shown_on_the_case(world: World) -> None:
    fake, desk = world.fake, world.desk
    buyer = fake.user("小屏")
    fake.text(buyer, "转人工")
    await world.said(buyer, 2)
    thread = await world.topic()
    fake.block(buyer)
    agent = fake.user("客服戊")
    fake.text(agent, "/take", chat=desk, thread_id=thread)
    fake.text(agent, "亲，您好，请问还需要帮助吗？", chat=desk, thread_id=thread)
    # The topic hears why the buyer got nothing; the case keeps it for agents on every desk.
    line = await world.until(lambda: [m for m in fake.sent_to(desk["id"], thread) if "屏蔽" in (m.get("text") or "")])
    assert "K1001" in line[0]["text"]
    await world.settle()
    case = await world.case("K1001")
    assert case.send_failures >= 1
    assert any("blocked" in h.text for h in case.history if h.event == "send_failed")
    assert len(world.to_buyer(buyer)) == 2
    assert await world.kefu.store.pending_outbox() == []  # given up, not retried forever


async def test_other_groups_are_ignored_and_logged(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kefu.telegram")
    fake = world.fake
    other = fake.group("闲聊群")
    stranger = fake.user("路人")
    fake.text(stranger, "/take K1001", chat=other)
    fake.text(stranger, "/case K1001", chat=other)
    fake.text(stranger, "转人工", chat=other)
    await world.settle()
    ignored = [r for r in caplog.records if "not the desk" in r.getMessage()]
    assert len(ignored) == 3 and all(str(other["id"]) in r.getMessage() for r in ignored)
    assert fake.sent_to(other["id"]) == []
    assert await world.kefu.store.find_cases() == []
