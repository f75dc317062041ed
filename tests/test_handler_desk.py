"""Agents working a case: take, reply, note, resolve, reopen, with history and conflicts."""

from __future__ import annotations

from handlers.engine import Engine
from handlers.model import Case
from tests.support import ORDER_OK, EngineBuyer, said


async def case_of(engine: Engine, case_id: str) -> Case:
    row = await engine.store.get_case(case_id)
    assert row is not None
    return Case.model_validate(row.data)


async def open_case(engine: Engine, chat: str = "buyer-1") -> EngineBuyer:
    b = EngineBuyer(engine, chat=chat)
    await b.send("转人工")
    return b


async def test_take_reply_note_resolve_reopen_keep_a_timed_history(engine: Engine) -> None:
    b = await open_case(engine)
    out = await b.agent("take", "K1001")
    assert out.error is None and said([a for a in out.actions if a.type == "reply"]).startswith("您好，我是客服小王")
    out = await b.agent("reply", "K1001", "亲，请问是哪件商品？")
    replies = [a for a in out.actions if a.type == "reply"]
    assert [(r.sender, r.agent, r.text) for r in replies] == [("agent", "小王", "亲，请问是哪件商品？")]
    out = await b.agent("note", "K1001", "买家是老客户")
    assert [a for a in out.actions if a.type == "reply"] == []
    out = await b.agent("resolve", "K1001", "已退款 20 元")
    replies = [a for a in out.actions if a.type == "reply"]
    assert "已退款 20 元" in replies[0].text and len(replies[0].buttons) == 5
    case = await case_of(engine, "K1001")
    assert case.status == "resolved" and case.assignee == "小王" and case.resolution == "已退款 20 元"
    assert [h.event for h in case.history] == ["created", "taken", "reply", "note", "resolved"]
    times = [h.at for h in case.history]
    assert times == sorted(times)
    assert case.created_at < case.taken_at <= case.first_reply_at < case.resolved_at
    out = await b.agent("reopen", "K1001")
    case = await case_of(engine, "K1001")
    assert case.status == "open" and case.history[-1].event == "reopened"
    assert "重新打开" in said([a for a in out.actions if a.type == "reply"])
    # The reopened case is waiting again: the buyer's messages join it.
    replies = await b.send("好的")
    assert "K1001" in said(replies)


async def test_reply_to_a_waiting_case_takes_it(engine: Engine) -> None:
    b = await open_case(engine)
    out = await b.agent("reply", "K1001", "在的亲", agent="小张")
    replies = [a for a in out.actions if a.type == "reply"]
    assert "小张" in replies[0].text and replies[1].text == "在的亲"
    case = await case_of(engine, "K1001")
    assert case.status == "taken" and case.assignee == "小张"


async def test_conflicts_and_bad_commands_answer_the_desk_not_the_buyer(engine: Engine) -> None:
    b = await open_case(engine)
    await b.agent("take", "K1001", agent="小王")
    out = await b.agent("take", "K1001", agent="小张")
    assert out.error == "conflict" and "小王" in out.detail
    assert all(a.type == "desk" and a.kind == "notice" for a in out.actions)
    out = await b.agent("resolve", "K1001", "")
    assert out.error == "invalid"
    out = await b.agent("reopen", "K1001")
    assert out.error == "conflict"
    out = await b.agent("take", "K4242")
    assert out.error == "not_found" and "K4242" in out.detail
    out = await b.agent("take", "k1001", agent="小王")  # the same agent taking again is fine
    assert out.error is None


async def test_a_returning_buyer_case_card_lists_earlier_cases(engine: Engine) -> None:
    from handlers.cards import build_card

    b = await open_case(engine)
    await b.agent("resolve", "K1001", "已解答")
    await b.send("5")
    await b.send("发错货了", after=3600)
    await b.send(ORDER_OK)
    await b.send(photos=1)
    await b.send(payload="photos_done")
    await b.send("收到的是蓝色，我买的是红色")
    await b.send(payload="confirm:yes")
    card = await build_card(engine.ctx, await case_of(engine, "K1002"), b.now)
    assert [e["id"] for e in card["earlier_cases"]] == ["K1001"]
    assert card["earlier_cases"][0]["rating"] == 5
    # The new card's transcript starts after the old case closed.
    assert all("转人工" != m["text"] for m in card["transcript"])


async def test_buyer_messages_while_an_agent_has_the_case_reach_the_desk_only(engine: Engine) -> None:
    b = await open_case(engine)
    await b.agent("take", "K1001")
    assert await b.send(photos=2) == []
    desk = [a for a in b.last.actions if a.type == "desk"]
    assert desk[0].kind == "message" and len(desk[0].photos) == 2
    assert len((await case_of(engine, "K1001")).photos) == 2


async def test_phone_numbers_and_addresses_are_masked_on_the_card(engine: Engine) -> None:
    from handlers.cards import build_card

    b = EngineBuyer(engine)
    await b.send("转人工")
    await b.send("我电话13812345678，地址杭州市西湖区文三路398号5栋2单元301室")
    card = await build_card(engine.ctx, await case_of(engine, "K1001"), b.now)
    text = "\n".join(m["text"] for m in card["transcript"])
    assert "13812345678" not in text and "138****5678" in text
    assert "398号" not in text and "301室" not in text and "文三路" in text
    assert "13812345678" not in card["text"]
