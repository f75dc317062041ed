"""The conversation handler on its own: no web server, no network, a real SQLite store."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from handlers.config import ShopConfig
from handlers.engine import Engine
from handlers.model import Case, FileInfo
from handlers.setup import build_context
from state.sqlite import SQLiteStore
from tests.support import ORDER_OK, EngineBuyer, said

SHANGHAI = ZoneInfo("Asia/Shanghai")


def at(y: int, mo: int, d: int, h: int, mi: int = 0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=SHANGHAI).timestamp()


async def case_of(engine: Engine, case_id: str) -> Case:
    row = await engine.store.get_case(case_id)
    assert row is not None
    return Case.model_validate(row.data)


async def test_order_number_in_the_first_sentence_is_never_asked_for(engine: Engine) -> None:
    b = EngineBuyer(engine)
    replies = await b.send(f"你好，订单{ORDER_OK}收到的盘子碎了两个")
    text = said(replies)
    assert "小满生活馆" in text and "订单号" not in text.split("\n", 2)[-1]
    assert "外包装" in text  # straight to the photos
    await b.send(photos=2)
    replies = await b.send(payload="photos_done")
    assert "对吗" in said(replies) and ORDER_OK in said(replies) and "盘子碎了两个" in said(replies)
    replies = await b.send("对")
    assert "K1001" in said(replies)
    case = await case_of(engine, "K1001")
    assert case.type == "damaged" and case.order_no == ORDER_OK and len(case.photos) == 2
    assert case.description == "收到的盘子碎了两个" and case.order_verified


@pytest.mark.parametrize(("message", "claim"), [
    ("在吗 我买的衣服发错了 订单号 {o}", "wrong_item"),
    ("订单号：{o}，少发了一件", "missing_item"),
    ("{o} 这单的杯子碎了", "damaged"),
    ("my order {o} arrived damaged, the box was crushed", "damaged"),
    ("東西少了一件，訂單{o}", "missing_item"),
])
async def test_a_claim_with_its_order_number_in_one_message_goes_straight_on(
    engine: Engine, message: str, claim: str
) -> None:
    b = EngineBuyer(engine, chat=f"b-{abs(hash(message))}")
    await b.send(message.format(o=ORDER_OK))
    draft = b.last.conversation.claim
    assert draft is not None and draft.type == claim and draft.order_no == ORDER_OK


@pytest.mark.parametrize("message", ["怎么还没人理我", "客服呢", "人呢？？半天没人回"])
async def test_a_buyer_left_waiting_is_given_a_person(engine: Engine, message: str) -> None:
    b = EngineBuyer(engine, chat=f"w-{abs(hash(message))}")
    await b.send("你好")
    replies = await b.send(message)
    assert "转接人工" in said(replies)
    assert b.last.conversation.stage == "waiting_agent"


async def test_a_bad_order_number_is_reasked_and_three_failures_go_to_a_person_unverified(engine: Engine) -> None:
    b = EngineBuyer(engine)
    await b.send("发错货了")
    r1 = said(await b.send("123456"))
    assert "16-20位数字" in r1 and ORDER_OK in r1
    r2 = said(await b.send("我不知道 在哪看"))
    assert "订单详情" in r2
    r3 = said(await b.send("98765432"))
    assert "K1001" in r3 and "未核实" in r3
    case = await case_of(engine, "K1001")
    assert case.type == "wrong_item" and case.reason == "order_unverified"
    assert case.order_no is None and not case.order_verified


async def test_a_pasted_number_with_spaces_or_full_width_digits_is_accepted(engine: Engine) -> None:
    b = EngineBuyer(engine)
    await b.send("没收到货")
    replies = await b.send("３８４９２０１７５６３８２９１０４７５")
    assert "物流" in said(replies)  # asks what tracking says: not-arrived needs no photos
    case_draft = (await engine.store.load_conversation(b.last.conversation.session))["claim"]
    assert case_draft["order_no"] == ORDER_OK
    b2 = EngineBuyer(engine, chat="buyer-2")
    await b2.send("没收到货")
    await b2.send("订单号 3849 2017 5638 2910 475")
    assert b2.last.conversation.claim.order_no == ORDER_OK


async def test_a_custom_order_pattern_is_honoured(store: SQLiteStore) -> None:
    cfg = ShopConfig(hours_open="00:00", hours_close="00:00", order_pattern=r"PDD-\d{8}", order_example="PDD-20261122")
    engine = Engine(build_context(cfg, store))
    b = EngineBuyer(engine)
    await b.send("少发了一件")
    assert "PDD-20261122" in said(await b.send("3849201756382910475"))
    assert "拍一下" in said(await b.send("PDD-12345678"))


async def test_in_a_claim_an_order_number_is_an_answer_and_words_around_it_still_count(engine: Engine) -> None:
    b = EngineBuyer(engine)
    await b.send("少发了一件")
    await b.send("订单号 TB-3849 2017 5638 2910 475")  # never read as a new request
    assert b.last.conversation.claim is not None and b.last.conversation.stage == "claim"
    b2 = EngineBuyer(engine, chat="buyer-2")
    await b2.send("少发了一件")
    replies = await b2.send("我要投诉 单号123456789")
    assert "转接人工" in said(replies) and b2.last.conversation.stage == "waiting_agent"


async def test_while_photos_are_asked_for_a_question_is_answered_and_details_are_kept(engine: Engine) -> None:
    b = EngineBuyer(engine)
    await b.send(f"收到的杯子碎了一个 订单{ORDER_OK}")
    assert b.last.conversation.claim.asking == "photos"
    replies = await b.send("退款一般几天到账？")
    assert "到账" in said(replies) and "外包装" in said(replies)  # answered, then the photos again
    replies = await b.send("谢谢")
    assert "记下" not in said(replies) and "外包装" in said(replies)  # small talk is not a detail
    replies = await b.send("盒子也压扁了")
    assert "记下" in said(replies)
    await b.send(photos=1)
    replies = await b.send(payload="photos_done")
    summary = said(replies)
    assert "杯子碎了一个" in summary and "盒子也压扁了" in summary and "谢谢" not in summary


async def test_order_details_sent_after_an_answer_go_to_a_person(engine: Engine) -> None:
    b = EngineBuyer(engine)
    await b.send("我想改地址")  # the answer asks for the order number and the new address
    replies = await b.send(f"订单号{ORDER_OK} 改成杭州市西湖区文三路100号")
    assert "转接人工" in said(replies)
    case = await case_of(engine, "K1001")
    assert case.order_no == ORDER_OK and case.reason == "order_details"
    b2 = EngineBuyer(engine, chat="buyer-2")
    await b2.send("我想改地址")
    replies = await b2.send(ORDER_OK)  # a bare number: asked what it is about, no case yet
    assert "K100" not in said(replies)


async def test_not_received_needs_no_photos_and_asks_what_tracking_says(engine: Engine) -> None:
    b = EngineBuyer(engine)
    await b.send("快递一直没到")
    replies = await b.send(ORDER_OK)
    assert "物流" in said(replies) and "照片" not in said(replies)
    replies = await b.send("物流显示三天前到了杭州中转站后就没动了")
    assert "对吗" in said(replies) and "照片：0张" in said(replies)
    await b.send(payload="confirm:yes")
    case = await case_of(engine, "K1001")
    assert case.type == "not_received" and case.photos == [] and "杭州中转站" in (case.description or "")


async def test_photos_before_the_claim_are_kept(engine: Engine) -> None:
    b = EngineBuyer(engine)
    replies = await b.send(photos=1)
    assert "照片" in said(replies) and any(x.payload == "claim:quality" for r in replies for x in r.buttons)
    await b.send(payload="claim:quality")
    await b.send(ORDER_OK)
    replies = await b.send(photos=1)
    assert "收到2张照片" in said(replies)


async def test_done_without_photos_nudges_once_then_allows_skipping(engine: Engine) -> None:
    b = EngineBuyer(engine)
    await b.send("质量有问题")
    await b.send(ORDER_OK)
    replies = await b.send("好了")
    assert "还没收到照片" in said(replies)
    assert [x.payload for x in replies[0].buttons] == ["photos_skip", "human"]
    replies = await b.send(payload="photos_skip")
    assert "描述" in said(replies)
    replies = await b.send("洗了一次就起球了")
    assert "对吗" in said(replies)


async def test_a_file_where_a_photo_is_expected_gets_a_polite_note(engine: Engine) -> None:
    b = EngineBuyer(engine)
    await b.send("商品破损")
    await b.send(ORDER_OK)
    replies = await b.send(files=(FileInfo(name="a.pdf", content_type="application/pdf", size=10),))
    assert "不是图片" in said(replies)
    assert b.last.conversation.claim.asking == "photos"


async def test_confirm_no_lets_the_buyer_fix_one_thing(engine: Engine) -> None:
    b = EngineBuyer(engine)
    await b.send("少了一件东西")
    await b.send(ORDER_OK)
    await b.send(photos=1)
    await b.send(payload="photos_done")
    replies = await b.send("少了一个杯盖")
    assert "对吗" in said(replies)
    replies = await b.send("不对")
    assert [x.payload for x in replies[0].buttons][:3] == ["edit:order_no", "edit:photos", "edit:description"]
    replies = await b.send(payload="edit:order_no")
    assert "订单号" in said(replies)
    replies = await b.send("3849201756382910476")
    assert "3849201756382910476" in said(replies) and "对吗" in said(replies)


async def test_cancel_mid_claim(engine: Engine) -> None:
    b = EngineBuyer(engine)
    await b.send("发错货了")
    replies = await b.send("算了")
    assert "取消" in said(replies)
    assert b.last.conversation.stage == "idle" and b.last.conversation.claim is None


async def test_a_side_question_mid_claim_is_answered_and_the_claim_goes_on(engine: Engine) -> None:
    b = EngineBuyer(engine)
    await b.send("收到的东西坏了")
    replies = await b.send("退款多久到账")
    assert "到账" in said(replies) and "订单号" in said(replies)
    assert b.last.conversation.claim.order_failures == 0


@pytest.mark.parametrize("words", ["转人工", "我要投诉", "human please", "人工"])
async def test_asking_for_a_person_hands_off_at_once(engine: Engine, words: str) -> None:
    b = EngineBuyer(engine)
    replies = await b.send(words)
    assert "K1001" in said(replies)
    case = await case_of(engine, "K1001")
    assert case.type in ("human", "complaint")
    assert case.reason == ("complaint" if "投诉" in words else "buyer_request")


async def test_asking_for_a_person_mid_claim_keeps_what_was_collected(engine: Engine) -> None:
    b = EngineBuyer(engine)
    await b.send("发错货了")
    await b.send(ORDER_OK)
    await b.send(photos=2)
    await b.send("转人工")
    case = await case_of(engine, "K1001")
    assert case.type == "wrong_item" and case.order_no == ORDER_OK and len(case.photos) == 2


async def test_two_turns_the_bot_cannot_handle_go_to_a_person(engine: Engine) -> None:
    b = EngineBuyer(engine)
    r1 = said(await b.send("给我讲个笑话吧"))
    assert "没能理解" in r1 and "K100" not in r1
    r2 = said(await b.send("周杰伦新歌好听吗"))
    assert "K1001" in r2
    assert (await case_of(engine, "K1001")).reason == "bot_stuck"


async def test_outside_business_hours_the_buyer_is_told_when_agents_return(store: SQLiteStore) -> None:
    cfg = ShopConfig(hours_open="09:00", hours_close="22:00")
    engine = Engine(build_context(cfg, store))
    b = EngineBuyer(engine, start=at(2026, 11, 22, 23, 30))
    replies = await b.send("转人工")
    text = said(replies)
    assert "明天 09:00" in text and "下班" in text
    case = await case_of(engine, "K1001")
    assert "明天 09:00" in case.promises[0].text
    assert case.promises[0].due == at(2026, 11, 23, 9, 10)
    b2 = EngineBuyer(engine, chat="day", start=at(2026, 11, 23, 10, 0))
    assert "10分钟内" in said(await b2.send("转人工"))


async def test_weekend_closed_shop_names_the_weekday(store: SQLiteStore) -> None:
    cfg = ShopConfig(hours_open="09:00", hours_close="18:00", work_days=[1, 2, 3, 4, 5])
    engine = Engine(build_context(cfg, store))
    # Saturday 2026-11-21 at noon: back on Monday.
    b = EngineBuyer(engine, start=at(2026, 11, 21, 12, 0))
    assert "周一 09:00" in said(await b.send("转人工"))


async def test_after_thirty_idle_minutes_the_buyer_is_greeted_again(engine: Engine) -> None:
    b = EngineBuyer(engine)
    assert "欢迎" in said(await b.send("你好"))
    assert "欢迎" not in said(await b.send("什么时候发货", after=60))
    assert "欢迎" in said(await b.send("什么时候发货", after=31 * 60))


async def test_while_waiting_new_messages_join_the_case_and_are_acknowledged(engine: Engine) -> None:
    b = EngineBuyer(engine)
    await b.send("转人工")
    replies = await b.send(photos=1)
    assert "K1001" in said(replies)
    replies = await b.send("能开发票吗")
    assert "发票" in said(replies)  # an FAQ is still answered while waiting
    replies = await b.send("人呢")
    assert "K1001" in said(replies)
    case = await case_of(engine, "K1001")
    assert len(case.photos) == 1
    desk = [a for a in b.last.actions if a.type == "desk"]
    assert desk[0].kind == "message" and desk[0].text == "人呢"


async def test_while_waiting_an_answer_that_did_not_help_is_noted_not_answered_again(engine: Engine) -> None:
    b = EngineBuyer(engine)
    await b.send("转人工")
    await b.send("能开发票吗")
    replies = said(await b.send("没用"))
    assert "K1001" in replies and "优惠券" not in replies  # not routed as a question about coupons
    misses = {m["question"]: m for m in await engine.store.list_misses()}
    assert misses["能开发票吗"]["kind"] == "unhelpful" and misses["能开发票吗"]["answered"] == "invoice"
    assert b.last.conversation.stage == "waiting_agent"


async def test_two_characters_are_not_answered_with_an_entry_they_are_not_part_of(engine: Engine) -> None:
    for text in ("没用", "不行", "好吧"):
        b = EngineBuyer(engine)
        await b.send("你好")
        await b.send(text)
        assert b.last.conversation.last_answer is None, text
    b = EngineBuyer(engine)
    await b.send("你好")
    await b.send("包邮")  # two characters of the entry's own examples: answered
    assert b.last.conversation.last_answer == "free_shipping"


async def test_every_buyer_message_gets_an_answer_until_an_agent_takes_over(engine: Engine) -> None:
    b = EngineBuyer(engine)
    for text in ["在吗", "嗯", "？？？", "👍", "发货", "转人工", "快点", "。。。"]:
        assert await b.send(text), text
    await b.agent("take", "K1001")
    assert await b.send("你好") == []  # the agent answers now; the bot only relays
    assert b.last.actions[0].type == "desk"


async def test_english_buyer_gets_english(engine: Engine) -> None:
    b = EngineBuyer(engine)
    replies = await b.send("Hello, my parcel arrived damaged")
    assert "welcome" in said(replies) and "order number" in said(replies)
    replies = await b.send("123")
    assert "16-20 digits" in said(replies)


async def test_a_deep_link_order_number_is_known_from_the_start(engine: Engine) -> None:
    b = EngineBuyer(engine)
    replies = await b.send("你好", order_no=ORDER_OK)
    assert "欢迎" in said(replies)
    replies = await b.send("质量问题")
    assert "订单号" not in said(replies) and "拍清楚" in said(replies)


async def test_the_same_message_id_is_handled_once(engine: Engine) -> None:
    b = EngineBuyer(engine)
    assert await b.send("转人工", message_id="dup-1")
    assert await b.send("转人工", message_id="dup-1") == []
    assert b.last.duplicate
    assert len(await engine.store.find_cases()) == 1


async def test_unhelpful_answer_offers_others_or_a_person(engine: Engine) -> None:
    b = EngineBuyer(engine)
    await b.send("退货运费谁出")
    replies = await b.send(payload="helpful:no")
    payloads = [x.payload for r in replies for x in r.buttons]
    assert payloads[-1] == "human" and "faq:return_shipping" not in payloads


@pytest.mark.parametrize(("typed", "rating"), [
    ("五星好评", 5), ("给4分吧", 4), ("⭐⭐⭐", 3), ("非常满意", 5), ("一般般", 3), ("差评", 1),
    ("5 stars", 5), ("terrible", 1), ("★★★★", 4),
])
async def test_a_rating_typed_in_words_or_stars_is_taken(engine: Engine, typed: str, rating: int) -> None:
    b = EngineBuyer(engine, chat=f"r-{abs(hash(typed))}")
    await b.send("转人工")
    await b.agent("resolve", "K1001", "已处理")
    replies = await b.send(typed)
    assert "K1002" not in said(replies)  # never a new handoff
    case = await case_of(engine, "K1001")
    assert case.rating == rating and case.history[-1].event == "rated"


@pytest.mark.parametrize(("message", "handed_off"), [
    ("必须五星好评", False), ("好评", False), ("客服的态度真差", True), ("好失望", True),
])
async def test_praise_is_thanked_and_dissatisfaction_reaches_a_person(
    engine: Engine, message: str, handed_off: bool
) -> None:
    b = EngineBuyer(engine, chat=f"p-{abs(hash(message))}")
    await b.send("你好")
    replies = await b.send(message)
    assert ("转接人工" in said(replies)) is handed_off


async def test_rating_by_typing_a_number(engine: Engine) -> None:
    b = EngineBuyer(engine)
    await b.send("转人工")
    await b.agent("resolve", "K1001", "已处理")
    replies = await b.send("2")
    assert "抱歉" in said(replies)
    case = await case_of(engine, "K1001")
    assert case.rating == 2 and case.history[-1].event == "rated"


async def test_a_short_description_given_when_asked_is_taken_not_asked_again(engine: Engine) -> None:
    b = EngineBuyer(engine)
    await b.send("质量问题")
    await b.send(ORDER_OK)
    await b.send(photos=1)
    replies = await b.send(payload="photos_done")
    assert "描述" in said(replies)
    replies = await b.send("杯子碎了")  # also an example phrase of a claim: still an answer here
    assert "对吗" in said(replies) and "杯子碎了" in said(replies)


async def test_picking_a_claim_after_did_you_mean_keeps_what_the_buyer_said(engine: Engine) -> None:
    b = EngineBuyer(engine)
    await b.send("你好")
    replies = await b.send(f"订单{ORDER_OK}收到的东西我不满意")
    assert "是不是想问" in said(replies) or "什么问题" in said(replies)
    assert "claim:quality" in [x.payload for r in replies for x in r.buttons]
    replies = await b.send(payload="claim:quality")
    assert "订单号" not in said(replies) and "拍清楚" in said(replies)  # the number came with the first message
    await b.send(photos=1)
    replies = await b.send(payload="photos_done")
    assert "收到的东西我不满意" in said(replies) and "对吗" in said(replies)


async def test_did_you_mean_never_offers_the_same_button_twice(engine: Engine) -> None:
    b = EngineBuyer(engine)
    for text in ["投诉退货", "人工退款", "运费 快递", "发票 质量"]:
        for r in await b.send(text):
            payloads = [x.payload for x in r.buttons]
            assert len(payloads) == len(set(payloads)), (text, payloads)


async def test_unanswered_and_unhelpful_questions_are_noted_for_the_admin(engine: Engine) -> None:
    b = EngineBuyer(engine)
    await b.send("给我讲个笑话吧")
    await b.send("能开发票吗")
    await b.send("没用")
    misses = {m["question"]: m for m in await engine.store.list_misses()}
    assert misses["给我讲个笑话吧"]["kind"] == "unknown"
    assert misses["能开发票吗"]["kind"] == "unhelpful" and misses["能开发票吗"]["answered"] == "invoice"
