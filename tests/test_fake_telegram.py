"""The fake Bot API server, driven by the real python-telegram-bot client over real HTTP.

If PTB accepts every answer here, the fake speaks the wire protocol well enough for adapter tests."""

from __future__ import annotations

import asyncio
import datetime as dtm
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from telegram import (
    Bot,
    ForceReply,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaPhoto,
    Message,
    MessageEntity,
    ReplyParameters,
    Update,
)
from telegram.constants import ParseMode
from telegram.error import BadRequest, Conflict, Forbidden, RetryAfter
from telegram.ext import (
    AIORateLimiter,
    Application,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from tests.fake_telegram import FakeTelegram, Upload
from tests.support import jpeg, png


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def bot(fake: FakeTelegram) -> AsyncIterator[Bot]:
    client = Bot(fake.token, base_url=fake.api_url, base_file_url=fake.file_url)
    async with client:  # initialize() already calls getMe
        yield client


def keyboard(*data: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton(d.title(), callback_data=d) for d in data]])


async def test_get_me(fake: FakeTelegram, bot: Bot) -> None:
    me = await bot.get_me()
    assert me.is_bot is True
    assert me.username == "KefuShopBot"
    assert me.id == fake.bot_user["id"] == 123456
    assert bot.username == "KefuShopBot"
    assert [name for name, _ in fake.calls] == ["getMe", "getMe"]


async def test_send_message_with_keyboard_then_edit(fake: FakeTelegram, bot: Bot) -> None:
    buyer = fake.user("小明", username="xiaoming")
    chat = fake.private_chat(buyer)

    sent = await bot.send_message(
        chat["id"], "  <b>您好</b>, order 42?  ", parse_mode=ParseMode.HTML, reply_markup=keyboard("yes", "no")
    )
    # The server parses the markup into entities (UTF-16 offsets) and trims the text.
    assert sent.text == "您好, order 42?"
    assert sent.entities == (MessageEntity(MessageEntity.BOLD, 0, 2),)
    assert sent.chat.id == chat["id"] and sent.chat.type == "private"
    assert sent.from_user is not None and sent.from_user.id == fake.bot_user["id"]
    assert isinstance(sent.date, dtm.datetime) and abs(sent.date.timestamp() - time.time()) < 5
    assert sent.reply_markup == keyboard("yes", "no")
    method, params = fake.calls[-1]
    assert method == "sendMessage" and params["chat_id"] == chat["id"]
    assert params["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "yes"

    edited = await bot.edit_message_text("Thanks!", chat_id=chat["id"], message_id=sent.message_id,
                                         reply_markup=keyboard("done"))
    assert isinstance(edited, Message)
    assert edited.text == "Thanks!" and edited.edit_date is not None
    assert edited.reply_markup == keyboard("done")
    with pytest.raises(BadRequest, match="Message is not modified"):
        await bot.edit_message_text("Thanks!", chat_id=chat["id"], message_id=sent.message_id,
                                    reply_markup=keyboard("done"))
    # Leaving reply_markup out of an edit removes the keyboard, as on the real platform.
    bare = await bot.edit_message_text("Thanks!", chat_id=chat["id"], message_id=sent.message_id)
    assert isinstance(bare, Message) and bare.reply_markup is None

    second = await bot.send_message(chat["id"], "Anything else?", reply_markup=ForceReply(),
                                    reply_parameters=ReplyParameters(sent.message_id))
    assert second.message_id == sent.message_id + 1
    assert second.reply_to_message is not None and second.reply_to_message.message_id == sent.message_id
    assert second.reply_markup is None  # only inline keyboards are echoed back

    history = fake.sent_to(chat["id"])
    assert [m["text"] for m in history] == ["Thanks!", "Anything else?"]
    assert "reply_markup" not in history[0]
    assert [m["text"] for m in fake.messages] == ["您好, order 42?", "Thanks!", "Thanks!", "Anything else?"]

    assert await bot.delete_message(chat["id"], second.message_id) is True
    assert [m["message_id"] for m in fake.sent_to(chat["id"])] == [sent.message_id]
    with pytest.raises(BadRequest, match="Message to delete not found"):
        await bot.delete_message(chat["id"], second.message_id)


async def test_send_message_errors(fake: FakeTelegram, bot: Bot) -> None:
    buyer = fake.user("Ana")
    with pytest.raises(Forbidden, match="can't initiate conversation"):
        await bot.send_message(buyer["id"], "hello")  # the buyer never opened the chat
    chat = fake.private_chat(buyer)
    with pytest.raises(BadRequest, match="Message is too long"):
        await bot.send_message(chat["id"], "x" * 4097)
    with pytest.raises(BadRequest, match="Message text is empty"):
        await bot.send_message(chat["id"], "   ")
    with pytest.raises(BadRequest, match="Chat not found"):
        await bot.send_message(-100999, "hello")
    with pytest.raises(BadRequest, match="Can't parse entities: character '.' is reserved"):
        await bot.send_message(chat["id"], "Total: 9.99", parse_mode=ParseMode.MARKDOWN_V2)
    with pytest.raises(BadRequest, match="Can't parse entities: unsupported start tag \"br\""):
        await bot.send_message(chat["id"], "a<br>b", parse_mode=ParseMode.HTML)
    with pytest.raises(BadRequest, match="Message to be replied not found"):
        await bot.send_message(chat["id"], "hi", reply_parameters=ReplyParameters(999))
    ok = await bot.send_message(chat["id"], r"*Total:* 9\.99 [link](https://x.test/a)",
                                parse_mode=ParseMode.MARKDOWN_V2)
    assert ok.text == "Total: 9.99 link"
    assert [(e.type, e.offset, e.length, e.url) for e in ok.entities] == [
        ("bold", 0, 6, None), ("text_link", 12, 4, "https://x.test/a")]
    assert (await bot.send_message(chat["id"], "4096 chars" + "x" * 4086)).text is not None


async def test_photos_and_albums_in_a_forum_topic(fake: FakeTelegram, bot: Bot) -> None:
    desk = fake.group("Kefu desk", forum=True)
    topic = await bot.create_forum_topic(desk["id"], "Order 42 · 小明")
    assert topic.name == "Order 42 · 小明" and topic.icon_color == 0x6FB9F0
    assert fake.topics[desk["id"]] == [
        {"message_thread_id": topic.message_thread_id, "name": "Order 42 · 小明", "icon_color": 0x6FB9F0}]
    with pytest.raises(BadRequest, match="The chat is not a forum"):
        await bot.create_forum_topic(fake.group("plain group")["id"], "x")

    picture = png()
    photo_msg = await bot.send_photo(desk["id"], picture, caption="buyer's photo",
                                     message_thread_id=topic.message_thread_id)
    assert photo_msg.message_thread_id == topic.message_thread_id and photo_msg.is_topic_message
    assert photo_msg.caption == "buyer's photo"
    assert [(p.width, p.height) for p in photo_msg.photo] == [(16, 12), (32, 24), (64, 48)]
    largest = photo_msg.photo[-1]
    assert bytes(await (await bot.get_file(largest.file_id)).download_as_bytearray()) == picture

    album = await bot.send_media_group(
        desk["id"],
        [InputMediaPhoto(jpeg((1, 2, 3)), caption="two photos"), InputMediaPhoto(largest.file_id)],
        message_thread_id=topic.message_thread_id,
    )
    assert len(album) == 2
    assert album[0].media_group_id is not None and album[0].media_group_id == album[1].media_group_id
    assert album[0].caption == "two photos" and album[1].caption is None
    assert all(m.message_thread_id == topic.message_thread_id for m in album)
    assert album[1].photo[-1].file_id == largest.file_id  # re-sent by file_id, no upload

    in_topic = fake.sent_to(desk["id"], topic.message_thread_id)
    assert [m["photo_bytes"] for m in in_topic] == [picture, jpeg((1, 2, 3)), picture]
    assert fake.sent_to(desk["id"], thread_id=99999) == []
    _, params = next(call for call in fake.calls if call[0] == "sendMediaGroup")
    assert params["media"][0]["media"].startswith("attach://")
    assert isinstance(params[params["media"][0]["media"][len("attach://"):]], Upload)

    with pytest.raises(BadRequest, match="Message thread not found"):
        await bot.send_message(desk["id"], "hi", message_thread_id=99999)
    with pytest.raises(BadRequest, match="Image_process_failed"):
        await bot.send_photo(desk["id"], b"not an image")
    with pytest.raises(BadRequest, match="Wrong file identifier"):
        await bot.send_photo(desk["id"], "no-such-file-id")


async def test_get_updates_decodes_incoming_messages(fake: FakeTelegram, bot: Bot) -> None:
    buyer = fake.user("小明", last_name="王", username="xiaoming")
    chat = fake.private_chat(buyer)
    picture = png((10, 200, 10), (400, 300))
    start = fake.text(buyer, "/start ref_42")
    photo = fake.photo(buyer, picture, caption="broken on arrival")
    doc = fake.document(buyer, b"%PDF-1.4 invoice", file_name="invoice.pdf", mime_type="application/pdf")
    menu = await bot.send_message(chat["id"], "Pick one", reply_markup=keyboard("refund", "track"))
    press = fake.press(buyer, fake.sent_to(chat["id"])[-1], "refund")
    with pytest.raises(ValueError, match="no inline button"):
        fake.press(buyer, fake.sent_to(chat["id"])[-1], "nonexistent")

    updates = await bot.get_updates()
    assert [u.update_id for u in updates] == [u["update_id"] for u in (start, photo, doc, press)]
    assert all(isinstance(u, Update) for u in updates)
    for update in updates:
        assert update.effective_user is not None and update.effective_user.id == buyer["id"]
        assert update.effective_user.is_bot is False and update.effective_user.language_code == "zh-hans"
        assert update.effective_chat is not None and update.effective_chat.id == chat["id"]
    first, second, third, fourth = updates

    assert first.message is not None and first.message.text == "/start ref_42"
    assert first.message.entities == (MessageEntity(MessageEntity.BOT_COMMAND, 0, 6),)
    assert first.message.parse_entities([MessageEntity.BOT_COMMAND]) == {first.message.entities[0]: "/start"}

    assert second.message is not None and second.message.caption == "broken on arrival"
    sizes = second.message.photo
    assert [s.width for s in sizes] == [100, 200, 400]
    assert [s.file_size for s in sizes] == [len(picture) // 4, len(picture) // 2, len(picture)]
    assert bytes(await (await bot.get_file(sizes[-1].file_id)).download_as_bytearray()) == picture
    assert bytes(await (await bot.get_file(sizes[0].file_id)).download_as_bytearray()) != picture

    assert third.message is not None and third.message.document is not None
    assert third.message.document.file_name == "invoice.pdf"
    assert third.message.document.mime_type == "application/pdf"
    document_file = await bot.get_file(third.message.document.file_id)
    assert document_file.file_path is not None and document_file.file_path.endswith(".pdf")
    assert bytes(await document_file.download_as_bytearray()) == b"%PDF-1.4 invoice"

    query = fourth.callback_query
    assert query is not None and query.data == "refund"
    assert query.message is not None and query.message.message_id == menu.message_id
    assert fourth.effective_message is not None and fourth.effective_message.text == "Pick one"
    assert await query.answer("Refund started") is True
    assert fake.callback_answers == [{"callback_query_id": query.id, "text": "Refund started"}]
    with pytest.raises(BadRequest, match="Query is too old"):
        await query.answer()  # a query can be answered once

    # Unconfirmed updates come again; an offset confirms everything below it.
    assert len(await bot.get_updates()) == 4
    assert await bot.get_updates(offset=updates[-1].update_id + 1) == ()
    with pytest.raises(BadRequest, match="Invalid file_id"):
        await bot.get_file("nope")


async def test_updates_in_groups_topics_and_replies(fake: FakeTelegram, bot: Bot) -> None:
    agent = fake.user("Agent Li")
    desk = fake.group("Kefu desk", forum=True)
    topic = await bot.create_forum_topic(desk["id"], "Ticket 7")
    bot_msg = await bot.send_message(desk["id"], "Buyer asks: where is my parcel?",
                                     message_thread_id=topic.message_thread_id)
    fake.text(agent, "/reply@KefuShopBot it left today", chat=desk, thread_id=topic.message_thread_id,
              reply_to=fake.sent_to(desk["id"])[0])
    fake.text(agent, "General chatter", chat=desk)
    with pytest.raises(ValueError, match="no forum topic"):
        fake.text(agent, "x", chat=desk, thread_id=424242)

    reply, general = await bot.get_updates()
    message = reply.effective_message
    assert message is not None and reply.effective_chat is not None
    assert reply.effective_chat.type == "supergroup" and reply.effective_chat.is_forum is True
    assert message.message_thread_id == topic.message_thread_id and message.is_topic_message is True
    assert message.reply_to_message is not None and message.reply_to_message.message_id == bot_msg.message_id
    assert message.entities[0].length == len("/reply@KefuShopBot")
    assert general.effective_message is not None and general.effective_message.message_thread_id is None

    member = await bot.get_chat_member(desk["id"], agent["id"])
    assert member.status == "member" and member.user.id == agent["id"]
    assert (await bot.get_chat_member(desk["id"], 5)).status == "left"
    assert (await bot.get_chat_member(desk["id"], fake.bot_user["id"])).status == "administrator"
    info = await bot.get_chat(desk["id"])
    assert info.title == "Kefu desk" and info.is_forum is True and info.type == "supergroup"


async def test_long_poll_wakes_up_when_an_update_arrives(fake: FakeTelegram, bot: Bot) -> None:
    buyer = fake.user("Ana")
    began = time.monotonic()
    assert await bot.get_updates(timeout=1) == ()  # nothing arrives: the poll lasts its timeout
    assert time.monotonic() - began >= 0.9

    poll = asyncio.create_task(bot.get_updates(timeout=10))
    await asyncio.sleep(0.2)
    fake.text(buyer, "hello?")
    updates = await asyncio.wait_for(poll, 3)
    assert [u.effective_message.text for u in updates if u.effective_message] == ["hello?"]

    # A second getUpdates (here: a second bot instance) terminates the pending one, as on the real
    # server. PTB's own getUpdates pool has one connection, hence the raw request.
    older = asyncio.create_task(bot.get_updates(offset=updates[0].update_id + 1, timeout=10))
    await asyncio.sleep(0.2)
    async with aiohttp.ClientSession() as http, http.get(f"{fake.api_url}{fake.token}/getUpdates") as resp:
        assert (resp.status, await resp.json()) == (200, {"ok": True, "result": []})
    with pytest.raises(Conflict, match="terminated by other getUpdates request"):
        await asyncio.wait_for(older, 3)


async def test_webhook_setup_conflict_and_delivery(fake: FakeTelegram, bot: Bot) -> None:
    received: list[tuple[dict[str, Any], str | None]] = []

    async def hook(request: web.Request) -> web.Response:
        secret = request.headers.get("X-Telegram-Bot-Api-Secret-Token")
        if secret != "s3cret_Token-1":
            return web.Response(status=403)
        received.append((await request.json(), secret))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/telegram", hook)
    receiver = TestServer(app, host="127.0.0.1")
    await receiver.start_server()
    try:
        url = str(receiver.make_url("/telegram"))
        with pytest.raises(BadRequest, match="Secret token contains unallowed characters"):
            await bot.set_webhook(url, secret_token="not allowed!")
        assert await bot.set_webhook(url, secret_token="s3cret_Token-1", allowed_updates=["message"],
                                     drop_pending_updates=True) is True
        assert fake.webhook is not None
        assert fake.webhook["url"] == url and fake.webhook["secret_token"] == "s3cret_Token-1"
        assert fake.webhook["allowed_updates"] == ["message"] and fake.webhook["drop_pending_updates"] is True

        with pytest.raises(Conflict, match="can't use getUpdates method while webhook is active"):
            await bot.get_updates()

        update = fake.text(fake.user("Ana"), "via webhook")
        info = await bot.get_webhook_info()
        assert info.url == url and info.pending_update_count == 1 and info.allowed_updates == ("message",)
        assert await fake.deliver(update) == 200
        assert received == [(update, "s3cret_Token-1")]
        assert (await bot.get_webhook_info()).pending_update_count == 0
        assert await fake.deliver(update, secret="wrong") == 403
        assert await fake.deliver(update, secret=None) == 403
        info = await bot.get_webhook_info()
        assert info.last_error_message is not None and "403" in info.last_error_message

        assert await bot.delete_webhook() is True
        assert fake.webhook is None
        assert await bot.get_updates() == ()
        with pytest.raises(RuntimeError):
            await fake.deliver(update)
    finally:
        await receiver.close()


async def test_rate_limit_raises_retry_after(
    fake: FakeTelegram, bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "true")  # PTB 22 warns when retry_after is read as an int
    chat = fake.private_chat(fake.user("Ana"))
    fake.rate_limit("sendMessage", times=2, retry_after=3)
    for _ in range(2):
        with pytest.raises(RetryAfter) as caught:
            await bot.send_message(chat["id"], "flood")
        assert caught.value.retry_after == dtm.timedelta(seconds=3)
    assert (await bot.send_message(chat["id"], "after the wait")).text == "after the wait"
    assert [m["text"] for m in fake.sent_to(chat["id"])] == ["after the wait"]
    assert [name for name, _ in fake.calls].count("sendMessage") == 3


async def test_application_polling_end_to_end(fake: FakeTelegram, monkeypatch: pytest.MonkeyPatch) -> None:
    """What an adapter will do: a PTB Application long-polls, handlers reply, and the rate limiter
    waits out a 429 and retries."""
    monkeypatch.setenv("PTB_TIMEDELTA", "true")  # else the limiter's read of retry_after warns
    app = (
        Application.builder().token(fake.token).base_url(fake.api_url).base_file_url(fake.file_url)
        .rate_limiter(AIORateLimiter(max_retries=1)).build()
    )

    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None
        await update.effective_message.reply_text(f"welcome {context.args}")

    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None and update.effective_message.text is not None
        await update.effective_message.reply_text("echo: " + update.effective_message.text)

    app.add_handler(CommandHandler("start", start))
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, echo))
    buyer = fake.user("Ana")
    chat = fake.private_chat(buyer)
    fake.rate_limit("sendMessage", 1, retry_after=1)
    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(poll_interval=0, timeout=5)
        fake.text(buyer, "/start ref_42")
        fake.text(buyer, "hello")
        for _ in range(100):
            if len(fake.sent_to(chat["id"])) == 2:
                break
            await asyncio.sleep(0.05)
        await app.updater.stop()
        await app.stop()
    assert [m["text"] for m in fake.sent_to(chat["id"])] == ["welcome ['ref_42']", "echo: hello"]
    names = [name for name, _ in fake.calls]
    assert names[:3] == ["getMe", "deleteWebhook", "getUpdates"] and names.count("sendMessage") == 3


async def test_raw_http_error_shapes_and_encodings(fake: FakeTelegram) -> None:
    chat = fake.private_chat(fake.user("Ana"))
    api = f"{fake.api_url}{fake.token}"
    async with aiohttp.ClientSession() as http:

        async def call(method: str, url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
            async with http.request(method, url, **kwargs) as resp:
                assert resp.content_type == "application/json"
                return resp.status, await resp.json()

        assert await call("GET", f"{fake.api_url}654321:wrong/getMe") == (
            401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
        assert await call("POST", f"{api}/noSuchMethod") == (
            404, {"ok": False, "error_code": 404, "description": "Not Found"})
        assert await call("POST", f"{api}/sendMessage", data={"text": "hi"}) == (
            400, {"ok": False, "error_code": 400, "description": "Bad Request: chat_id is empty"})

        fake.rate_limit("getMe", 1, retry_after=7)
        assert await call("GET", f"{api}/getMe") == (429, {
            "ok": False, "error_code": 429, "description": "Too Many Requests: retry after 7",
            "parameters": {"retry_after": 7}})

        # Case-insensitive method names; query string, JSON and form bodies all work.
        status, body = await call("GET", f"{api}/GETME")
        assert status == 200 and body["ok"] is True and body["result"]["is_bot"] is True
        status, body = await call("GET", f"{api}/sendMessage", params={"chat_id": str(chat["id"]), "text": "007"})
        assert status == 200 and body["result"]["text"] == "007"
        markup = {"inline_keyboard": [[{"text": "OK", "callback_data": "ok"}]]}
        status, body = await call("POST", f"{api}/sendmessage",
                                  json={"chat_id": chat["id"], "text": "json", "reply_markup": markup})
        assert status == 200 and body["result"]["reply_markup"] == markup
        assert isinstance(body["result"]["date"], int)
        status, body = await call("POST", f"{api}/sendMessage", data={
            "chat_id": str(chat["id"]), "text": "form", "reply_markup": '{"inline_keyboard": [[{"text": "x"}]]}'})
        assert status == 400 and "Text buttons are unallowed" in body["description"]

        status, body = await call("POST", f"{api}/getFile", data={"file_id": "missing"})
        assert (status, body["description"]) == (400, "Bad Request: invalid file_id")
        async with http.get(f"{fake.file_url}{fake.token}/photos/none.jpg") as resp:
            assert resp.status == 404
