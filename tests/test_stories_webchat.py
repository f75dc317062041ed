"""The core stories, told through the public web chat and desk API of a running kefu."""

from __future__ import annotations

import uuid

import aiohttp

from tests.conftest import Running
from tests.support import ORDER_OK, TOKEN, WebAgent, WebBuyer, buttons, jpeg, png, texts


async def test_greeting_names_the_shop_and_shows_what_the_bot_can_do(running: Running) -> None:
    buyer = WebBuyer(running.http, running.base)
    msgs = await buyer.say("在吗")
    assert "小满生活馆" in msgs[0]["text"]
    assert buttons(msgs)[:4] == ["menu:track", "menu:returns", "menu:problem", "human"]
    assert [b["text"] for b in msgs[0]["buttons"]] == ["查物流", "退换货", "收到的商品有问题", "转人工"]
    assert all(m["from"] == "bot" and m["at"] and m["seq"] for m in msgs)


async def test_a_first_message_that_is_a_question_is_greeted_and_answered_in_one_turn(running: Running) -> None:
    buyer = WebBuyer(running.http, running.base)
    msgs = await buyer.say("亲，你们一般什么时候发货呀")
    assert len(msgs) == 2
    assert "小满生活馆" in msgs[0]["text"]
    assert "48小时" in msgs[1]["text"]
    # And the next question is answered without a second greeting.
    msgs = await buyer.say("能开发票吗")
    assert len(msgs) == 1 and "发票" in msgs[0]["text"]


async def test_pressing_a_button_and_typing_its_text_do_the_same(running: Running) -> None:
    a, b = WebBuyer(running.http, running.base), WebBuyer(running.http, running.base)
    await a.say("你好")
    await b.say("你好")
    pressed = await a.press("menu:problem")
    typed = await b.say("收到的商品有问题")
    assert texts(pressed) == texts(typed)
    assert "claim:damaged" in buttons(pressed)


async def test_damaged_parcel_claim_to_resolution_and_rating(running: Running) -> None:
    buyer = WebBuyer(running.http, running.base, name="王小姐")
    agent = WebAgent(running.http, running.base, "小王")
    await buyer.say("你好")
    await buyer.say("能开发票吗")  # an FAQ answer the card must list
    msgs = await buyer.say("我买的玻璃杯到了，拆开发现碎了一个，外箱也压扁了")
    assert "订单号" in texts(msgs)
    msgs = await buyer.say("订单号是12345")
    assert "16-20位数字" in texts(msgs) and ORDER_OK in texts(msgs)  # a friendly re-ask with an example
    msgs = await buyer.say(ORDER_OK)
    assert "外包装" in texts(msgs) and "photos_done" in buttons(msgs)
    status, body, msgs = await buyer.photo(png(), "box.png")
    assert status == 200 and body["photo_url"].startswith("/media/")
    assert "收到1张照片" in texts(msgs)
    status, body, msgs = await buyer.photo(jpeg(), "cup.jpg", "image/jpeg")
    assert "收到2张照片" in texts(msgs)
    msgs = await buyer.press("photos_done")
    # The first sentence already said what happened: no question about it, straight to the summary.
    assert "对吗" in texts(msgs) and ORDER_OK in texts(msgs) and "2张" in texts(msgs)
    assert "碎了一个" in texts(msgs)
    msgs = await buyer.press("confirm:yes")
    assert "K1001" in texts(msgs) and "分钟内" in texts(msgs)

    # The card has everything.
    [summary] = await agent.cases("open")
    assert summary["id"] == "K1001" and summary["type"] == "damaged"
    card = await agent.case("K1001")
    assert card["status"] == "open" and card["order_no"] == ORDER_OK and card["order_verified"] is True
    assert card["buyer"] == {"id": buyer.visitor, "name": "王小姐", "platform": "webchat", "bot": "web"}
    assert len(card["photos"]) == 2 and all(p["url"].startswith("/media/") for p in card["photos"])
    async with running.http.get(running.base + card["photos"][0]["url"]) as resp:
        assert resp.status == 200 and resp.content_type in ("image/png", "image/jpeg")
    assert "碎了一个" in card["description"]
    who = [m["who"] for m in card["transcript"]]
    assert who.count("buyer") >= 7 and who.count("bot") >= 7
    assert any("12345" in m["text"] for m in card["transcript"])  # the bad number is in the transcript too
    assert all(m["at"] for m in card["transcript"])
    assert [f["faq_id"] for f in card["faq_given"]] == ["invoice"]
    assert card["promises"] and "分钟" in card["promises"][0]["text"]
    assert card["waiting_seconds"] >= 0 and card["earlier_cases"] == []
    assert card["history"][0]["event"] == "created"
    assert "K1001" in card["text"] and ORDER_OK in card["text"]

    # While waiting, the buyer's new message is added to the case and acknowledged.
    msgs = await buyer.say("还有一个杯子也有裂纹")
    assert "K1001" in texts(msgs)
    card = await agent.case("K1001")
    assert card["transcript"][-2]["text"] == "还有一个杯子也有裂纹"

    # Agent takes: the buyer hears a person joined.
    data = await agent.act("K1001", "take")
    assert data["case"]["status"] == "taken" and data["case"]["assignee"] == "小王"
    assert "小王" in texts(await buyer.replies())
    # Another agent cannot take it from under them.
    await WebAgent(running.http, running.base, "小张").act("K1001", "take", expect=409)

    # Reply reaches the buyer; a note does not.
    await agent.act("K1001", "reply", text="亲，非常抱歉，马上为您补发两个新杯子")
    msgs = await buyer.replies()
    assert [(m["from"], m["agent"], m["text"]) for m in msgs] == [("agent", "小王", "亲，非常抱歉，马上为您补发两个新杯子")]
    await agent.act("K1001", "note", text="已安排顺丰补发 SF1234567890")
    assert await buyer.replies(wait=0.3) == []
    # While a person has the case the bot stays quiet: the buyer's answer goes to the case.
    await buyer.post(text="好的谢谢")
    assert await buyer.replies(wait=0.3) == []
    card = await agent.case("K1001")
    assert card["transcript"][-1]["text"] == "好的谢谢" and card["transcript"][-1]["who"] == "buyer"
    assert card["notes"][0]["text"] == "已安排顺丰补发 SF1234567890"
    assert all("SF1234567890" not in m["text"] for m in card["transcript"])

    # Resolve: the buyer is told the outcome and asked to rate.
    await agent.act("K1001", "resolve", summary="已顺丰补发两个新杯子，单号 SF1234567890")
    msgs = await buyer.replies()
    assert "已顺丰补发" in texts(msgs)
    assert buttons(msgs) == [f"rate:K1001:{n}" for n in (5, 4, 3, 2, 1)]
    msgs = await buyer.press("rate:K1001:4")
    assert "4分" in texts(msgs)
    card = await agent.case("K1001")
    assert card["status"] == "resolved" and card["rating"] == 4 and card["resolution"].startswith("已顺丰补发")
    assert card["taken_at"] and card["first_reply_at"] and card["resolved_at"] and card["rated_at"]
    assert [h["event"] for h in card["history"]] == ["created", "taken", "reply", "note", "resolved", "rated"]

    # Reopen brings it back; the buyer is told.
    await agent.act("K1001", "reopen")
    assert "重新打开" in texts(await buyer.replies())
    assert (await agent.case("K1001"))["status"] == "open"


async def test_buyer_asking_for_a_person_is_handed_off_with_the_transcript(running: Running) -> None:
    buyer = WebBuyer(running.http, running.base)
    agent = WebAgent(running.http, running.base, "小李")
    await buyer.say("退货运费谁出")
    msgs = await buyer.say("转人工")
    assert "K1001" in texts(msgs)
    card = await agent.case("K1001")
    assert card["type"] == "human" and card["reason"] == "buyer_request"
    assert [m["text"] for m in card["transcript"] if m["who"] == "buyer"] == ["退货运费谁出", "转人工"]
    assert any(m["who"] == "bot" and "运费险" in m["text"] for m in card["transcript"])


async def test_a_repeated_client_msg_id_gets_one_reply(running: Running) -> None:
    buyer = WebBuyer(running.http, running.base)
    body = {"visitor": buyer.visitor, "text": "转人工", "client_msg_id": "same-id-1"}
    results = []
    for _ in range(3):
        async with running.http.post(running.base + "/api/webchat/messages", json=body) as resp:
            results.append((resp.status, (await resp.json())["duplicate"]))
    assert results == [(200, False), (200, True), (200, True)]
    msgs = await buyer.replies(wait=0.5)
    assert sum("K1001" in m["text"] for m in msgs) == 1
    assert len(await WebAgent(running.http, running.base, "x").cases()) == 1
    # The same id from another visitor is another message.
    other = WebBuyer(running.http, running.base)
    async with running.http.post(running.base + "/api/webchat/messages",
                                 json={**body, "visitor": other.visitor}) as resp:
        assert (await resp.json())["duplicate"] is False


async def test_concurrent_duplicates_are_handled_once(running: Running) -> None:
    import asyncio

    buyer = WebBuyer(running.http, running.base)
    body = {"visitor": buyer.visitor, "text": "什么时候发货", "client_msg_id": "burst-1"}

    async def post() -> bool:
        async with running.http.post(running.base + "/api/webchat/messages", json=body) as resp:
            return (await resp.json())["duplicate"]

    flags = await asyncio.gather(*(post() for _ in range(5)))
    assert sorted(flags) == [False, True, True, True, True]
    msgs = await buyer.replies(wait=0.5)
    assert len(msgs) == 2  # one greeting, one answer


async def test_bad_requests_get_clear_errors(running: Running) -> None:
    url = running.base + "/api/webchat/messages"
    cases = [
        ({"text": "hi", "client_msg_id": "1"}, 400, "visitor"),
        ({"visitor": "a b", "text": "hi", "client_msg_id": "1"}, 400, "visitor"),
        ({"visitor": "v1", "text": "hi"}, 400, "client_msg_id"),
        ({"visitor": "v1", "client_msg_id": "1"}, 400, "text"),
        ({"visitor": "v1", "client_msg_id": "1", "text": 5}, 400, "text"),
        ({"visitor": "v1", "client_msg_id": "1", "text": "长" * 5000}, 413, "4000"),
    ]
    for body, status, word in cases:
        async with running.http.post(url, json=body) as resp:
            data = await resp.json()
            assert resp.status == status and word in data["error"], (body, data)
    async with running.http.post(url, data=b"{not json", headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400 and "JSON" in (await resp.json())["error"]
    async with running.http.post(url, json=["a"]) as resp:
        assert resp.status == 400
    async with running.http.get(url, params={"visitor": "v1", "after": "x"}) as resp:
        assert resp.status == 400
    async with running.http.get(url) as resp:
        assert resp.status == 400


async def test_a_file_that_is_not_a_photo_gets_a_polite_note_and_a_huge_one_a_413(running: Running) -> None:
    buyer = WebBuyer(running.http, running.base)
    await buyer.say("商品破损了")
    await buyer.say(ORDER_OK)
    status, body, msgs = await buyer.photo(b"%PDF-1.4 not an image", "invoice.pdf", "application/pdf")
    assert status == 200 and body.get("not_a_photo") is True
    assert "不是图片" in texts(msgs)
    status, body, msgs = await buyer.photo(b"\x89PNG\r\n\x1a\n" + b"0" * (11 * 1024 * 1024), "huge.png")
    assert status == 413 and "MB" in body["error"]
    # Nothing was lost: the claim goes on where it was.
    status, body, msgs = await buyer.photo(png(), "ok.png")
    assert "收到1张照片" in texts(msgs)
    # The agent sees on the card that the buyer tried to send a file.
    await buyer.press("photos_done")
    await buyer.say("杯子碎了")
    await buyer.press("confirm:yes")
    agent = WebAgent(running.http, running.base, "小王")
    [summary] = await agent.cases("open")
    card = await agent.case(summary["id"])
    [line] = [m for m in card["transcript"] if m["files"]]
    assert line["who"] == "buyer" and line["files"] == ["invoice.pdf"]
    assert "📎×1" in card["text"] and "📷×1" in card["text"]


async def test_desk_calls_need_the_token(running: Running) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        async with running.http.get(running.base + "/api/desk/cases", headers=headers) as resp:
            assert resp.status == 401
            assert "token" in (await resp.json())["error"]
    agent = WebAgent(running.http, running.base, "小王")
    assert await agent.cases() == []
    async with running.http.get(running.base + "/api/desk/cases/K9999", headers=agent.headers) as resp:
        assert resp.status == 404
    async with running.http.get(running.base + "/api/desk/cases", params={"status": "weird"},
                                headers=agent.headers) as resp:
        assert resp.status == 400
    await agent.act("K9999", "take", expect=404)


async def test_desk_actions_validate_their_input(running: Running) -> None:
    buyer = WebBuyer(running.http, running.base)
    await buyer.say("人工客服")
    agent = WebAgent(running.http, running.base, "小王")
    await agent.act("K1001", "reply", expect=400, text="   ")
    await agent.act("K1001", "resolve", expect=400)
    await agent.act("K1001", "reopen", expect=409)
    await agent.act("K1001", "fly", expect=404)
    async with running.http.post(running.base + "/api/desk/cases/K1001/take", json={"text": "x"},
                                 headers=agent.headers) as resp:
        assert resp.status == 400 and "agent" in (await resp.json())["error"]
    # Case ids are forgiving: k1001 and 1001 both work.
    assert (await agent.act("k1001", "note", text="买家着急"))["case"]["notes"][0]["text"] == "买家着急"
    assert (await agent.case("1001"))["id"] == "K1001"


async def test_media_links_are_signed(running: Running) -> None:
    buyer = WebBuyer(running.http, running.base)
    status, body, _ = await buyer.photo(png(), "x.png")
    url = running.base + body["photo_url"]
    async with running.http.get(url) as resp:
        assert resp.status == 200
    async with running.http.get(url.split("?")[0] + "?sig=0000") as resp:
        assert resp.status == 403
    async with running.http.get(running.base + "/media/..%2F..%2Fkefu.db?sig=x") as resp:
        assert resp.status in (403, 404)


async def test_the_desk_feed_reports_new_cases_and_changes(running: Running) -> None:
    agent = WebAgent(running.http, running.base, "小王")
    async with running.http.get(running.base + "/api/desk/feed", params={"tail": "1"}, headers=agent.headers) as resp:
        last = (await resp.json())["last"]
    buyer = WebBuyer(running.http, running.base)
    await buyer.say("我要投诉")
    async with running.http.get(running.base + "/api/desk/feed", params={"after": last, "wait": 5},
                                headers=agent.headers) as resp:
        events = (await resp.json())["events"]
    assert [(e["type"], e["case_id"]) for e in events][:1] == [("card", "K1001")]
    card = await agent.case("K1001")
    assert card["type"] == "complaint"


async def test_pages_are_served(running: Running) -> None:
    async with running.http.get(running.base + "/") as resp:
        html = await resp.text()
        assert resp.status == 200 and "小满生活馆" in html and "/static/chat.js" in html
    async with running.http.get(running.base + "/desk") as resp:
        assert resp.status == 200 and "/static/desk.js" in await resp.text()
    async with running.http.get(running.base + "/static/chat.js") as resp:
        assert resp.status == 200
    async with running.http.get(running.base + "/static/../app.py") as resp:
        assert resp.status == 404
    async with running.http.get(running.base + "/healthz") as resp:
        assert (await resp.json()) == {"ok": True, "role": "all"}
    async with running.http.get(running.base + "/readyz") as resp:
        assert resp.status == 200 and (await resp.json())["ok"] is True
    async with running.http.get(running.base + "/metrics") as resp:
        text = await resp.text()
        assert resp.status == 200 and "kefu_events_in_total" in text and "kefu_handle_seconds_bucket" in text


async def test_an_english_buyer_is_answered_in_english(running: Running) -> None:
    buyer = WebBuyer(running.http, running.base)
    msgs = await buyer.say("Hi, can I get an invoice?")
    assert "welcome to 小满生活馆" in msgs[0]["text"].lower() or "Welcome to" in msgs[0]["text"]
    assert "invoice" in msgs[1]["text"].lower()
    assert [b["text"] for b in msgs[0]["buttons"]][:2] == ["Track my parcel", "Returns & exchanges"]


async def test_agent_reply_with_a_photo_reaches_the_buyer(running: Running) -> None:
    buyer = WebBuyer(running.http, running.base)
    await buyer.say("转人工")
    form = aiohttp.FormData()
    form.add_field("agent", "小王")
    form.add_field("text", "亲，是这个款式吗？")
    form.add_field("photo", png((10, 200, 10)), filename="style.png", content_type="image/png")
    async with running.http.post(running.base + "/api/desk/cases/K1001/reply", data=form,
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        assert resp.status == 200, await resp.text()
    msgs = await buyer.replies()
    agent_msgs = [m for m in msgs if m["from"] == "agent"]
    assert agent_msgs[0]["text"] == "亲，是这个款式吗？" and agent_msgs[0]["photo_url"].startswith("/media/")
    _ = uuid  # keep import used for readability of ids elsewhere


async def test_an_oversized_json_body_is_refused_before_it_is_read(running: Running) -> None:
    big = '{"visitor": "v1", "client_msg_id": "1", "text": "' + "x" * 200_000 + '"}'
    async with running.http.post(running.base + "/api/webchat/messages", data=big,
                                 headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 413 and "KB" in (await resp.json())["error"]
    async with running.http.post(running.base + "/api/desk/cases/K1001/note", data=big,
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}) as resp:
        assert resp.status == 413
