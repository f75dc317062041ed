"""The fake WeCom server, driven by the real wechatpy client over real HTTP.

If wechatpy (unmodified) accepts every answer here, the fake speaks the wire protocol well enough for adapter tests.
wechatpy is synchronous (requests), so every client call runs in a thread while the fake serves on the loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestServer
from wechatpy.crypto.base import WeChatCipher
from wechatpy.exceptions import APILimitedException, WeChatClientException
from wechatpy.work import WeChatClient, parse_message
from wechatpy.work.client.api.media import WeChatMedia
from wechatpy.work.crypto import WeChatCrypto
from wechatpy.work.events import KFMsgOrEventEvent
from wechatpy.work.messages import TextMessage

from tests.fake_wecom import FakeWeCom

# --------------------------------------------------------------------------- the seam
#
# wechatpy sends every API call to client.API_BASE_URL (an instance attribute overrides the class one), but two
# URLs are hard-coded to https://qyapi.weixin.qq.com: WeChatClient.fetch_access_token (gettoken) and
# WeChatMedia.get_url / download (media/get).  kefu's WeCom adapter needs exactly this seam -- a subclass that
# builds both from API_BASE_URL -- to run against the fake (in production API_BASE_URL stays the real host).


class SeamMedia(WeChatMedia):
    def get_url(self, media_id: str) -> str:
        return f"{self._client.API_BASE_URL}media/get?access_token={self.access_token}&media_id={media_id}"


class SeamClient(WeChatClient):
    media = SeamMedia()

    def __init__(self, api_base: str, corp_id: str, secret: str, **kwargs: Any) -> None:
        super().__init__(corp_id, secret, **kwargs)
        self.API_BASE_URL = api_base

    def fetch_access_token(self) -> dict:
        return self._fetch_access_token(url=f"{self.API_BASE_URL}gettoken",
                                        params={"corpid": self.corp_id, "corpsecret": self.secret})


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def errcode(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    with pytest.raises(WeChatClientException) as info:
        await call(fn, *args, **kwargs)
    return info.value.errcode


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeCom]:
    server = FakeWeCom()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
def client(fake: FakeWeCom) -> SeamClient:
    return SeamClient(fake.api_base, fake.corp_id, fake.secret, timeout=10)


def gettoken_calls(fake: FakeWeCom) -> int:
    return sum(1 for path, _, _ in fake.calls if path == "gettoken")


# --------------------------------------------------------------------------- access tokens


async def test_gettoken_once_then_reused(fake: FakeWeCom, client: SeamClient) -> None:
    first = await call(client.kf.get_account_list)
    assert first["errcode"] == 0 and first["errmsg"] == "ok"
    assert first["account_list"][0]["open_kfid"] == fake.open_kfid
    await call(client.kf.get_account_list)
    assert gettoken_calls(fake) == 1  # wechatpy caches the token (expires_in 7200)
    # Within its validity gettoken answers the same token, like WeCom.
    again = await call(requests.get, f"{fake.api_base}gettoken",
                       params={"corpid": fake.corp_id, "corpsecret": fake.secret})
    assert again.json()["access_token"] == client.access_token
    assert 7000 < again.json()["expires_in"] <= 7200


async def test_gettoken_errors(fake: FakeWeCom) -> None:
    bad_secret = SeamClient(fake.api_base, fake.corp_id, "nope")
    assert await errcode(bad_secret.kf.get_account_list) == 40001
    bad_corp = SeamClient(fake.api_base, "ww0000000000000000", fake.secret)
    assert await errcode(bad_corp.kf.get_account_list) == 40013
    # The second app secret works too.
    other = SeamClient(fake.api_base, fake.corp_id, fake.app_secret)
    assert (await call(other.kf.get_account_list))["errcode"] == 0


async def test_token_faults_surface_as_wechatpy_errors(fake: FakeWeCom) -> None:
    strict = SeamClient(fake.api_base, fake.corp_id, fake.secret, auto_retry=False)
    await call(strict.kf.get_account_list)
    fake.expire_tokens()
    assert await errcode(strict.kf.get_account_list) == 42001
    bogus = SeamClient(fake.api_base, fake.corp_id, fake.secret, access_token="not-a-token", auto_retry=False)
    assert await errcode(bogus.kf.get_account_list) == 40014
    missing = await call(requests.get, f"{fake.api_base}kf/account/list")
    assert missing.json()["errcode"] == 41001
    # With auto_retry (the default) wechatpy refetches the token on 40001/40014/42001 and retries once.
    relaxed = SeamClient(fake.api_base, fake.corp_id, fake.secret)
    await call(relaxed.kf.get_account_list)
    before = gettoken_calls(fake)
    fake.expire_tokens()
    assert (await call(relaxed.kf.get_account_list))["errcode"] == 0
    assert gettoken_calls(fake) == before + 1


async def test_rate_limit_is_apilimitedexception(fake: FakeWeCom, client: SeamClient) -> None:
    user = fake.customer("小明")
    fake.customer_text(user, "在吗")
    fake.rate_limit("kf/send_msg", 1)
    with pytest.raises(APILimitedException) as info:
        await call(client.kf_message.send_text, user["external_userid"], fake.open_kfid, "在的")
    assert info.value.errcode == 45009
    assert "api freq out of limit" in info.value.errmsg
    ok = await call(client.kf_message.send_text, user["external_userid"], fake.open_kfid, "在的")
    assert ok["errcode"] == 0


# --------------------------------------------------------------------------- sync_msg


async def test_sync_msg_pages_with_cursor(fake: FakeWeCom, client: SeamClient) -> None:
    user = fake.customer("小红")
    for i in range(50):
        fake.customer_text(user, f"消息 {i}")
    fake.page_size = 20
    token = fake.kf_token()
    got, cursor, pages = [], "", []
    while True:
        page = await call(client.kf.sync_msg, token, cursor)
        pages.append((len(page["msg_list"]), page["has_more"]))
        got += page["msg_list"]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert pages == [(20, 1), (20, 1), (10, 0)]
    assert [m["text"]["content"] for m in got] == [f"消息 {i}" for i in range(50)]
    first = got[0]
    assert first["origin"] == 3 and first["msgtype"] == "text"
    assert first["open_kfid"] == fake.open_kfid and first["external_userid"] == user["external_userid"]
    assert isinstance(first["send_time"], int) and first["msgid"]
    assert fake.sync_tokens == [token] * 3

    # Nothing new: an empty page; then only what came after the cursor.
    empty = await call(client.kf.sync_msg, token, cursor)
    assert empty["msg_list"] == [] and empty["has_more"] == 0
    fake.customer_text(user, "还有一个问题")
    newer = await call(client.kf.sync_msg, token, empty["next_cursor"])
    assert [m["text"]["content"] for m in newer["msg_list"]] == ["还有一个问题"]


async def test_sync_msg_rejects_bad_cursor_and_token(fake: FakeWeCom, client: SeamClient) -> None:
    token = fake.kf_token()
    assert await errcode(client.kf.sync_msg, token, "not-a-cursor") == 40058
    assert await errcode(client.kf.sync_msg, "ENCforged") == 95007
    fake.advance(11 * 60)  # the callback Token lives 10 minutes
    assert await errcode(client.kf.sync_msg, token) == 95007
    # Without a token the real API only rate-limits; the fake can insist.
    assert (await call(client.kf.sync_msg, ""))["errcode"] == 0
    fake.require_token = True
    assert await errcode(client.kf.sync_msg, "") == 95007


async def test_sync_msg_event_and_message_shapes(fake: FakeWeCom, client: SeamClient) -> None:
    user = fake.customer("老王")
    uid = user["external_userid"]
    welcome = fake.enter_session(user, "order-42", scene="shop")
    fake.customer_text(user, "1", menu_id="menu-yes")
    pic = fake.customer_image(user, b"\xff\xd8\xff\xe0 fake jpeg bytes")
    sent = await call(client.kf_message.send_text, uid, fake.open_kfid, "收到", msgid="ack-1")
    fake.send_fail(sent["msgid"], 10)
    fake.servicer_status_change("lisi", 2, stop_type=1)
    fake.session_status_change(user, 1, new_servicer="zhangsan")
    fake.servicer_text("zhangsan", user, "我是人工客服")
    msgs = (await call(client.kf.sync_msg, fake.kf_token()))["msg_list"]

    enter, menu, image, fail, status, session, human = msgs
    assert enter["origin"] == 4 and enter["msgtype"] == "event" and "external_userid" not in enter
    assert enter["event"] == {"event_type": "enter_session", "open_kfid": fake.open_kfid, "external_userid": uid,
                              "scene": "shop", "scene_param": "order-42", "welcome_code": welcome}
    assert menu["text"] == {"content": "1", "menu_id": "menu-yes"}
    assert image["msgtype"] == "image" and image["image"]["media_id"] == pic["image"]["media_id"]
    assert fail["event"] == {"event_type": "msg_send_fail", "open_kfid": fake.open_kfid, "external_userid": uid,
                             "fail_msgid": "ack-1", "fail_type": 10}
    assert fake.sent_to(user)[0]["failed"] == 10
    assert status["event"]["event_type"] == "servicer_status_change"
    assert status["event"]["servicer_userid"] == "lisi" and status["event"]["status"] == 2
    assert session["event"]["event_type"] == "session_status_change"
    assert session["event"]["change_type"] == 1 and session["event"]["new_servicer_userid"] == "zhangsan"
    assert session["event"]["msg_code"]
    assert human["origin"] == 5 and human["servicer_userid"] == "zhangsan"
    assert human["text"]["content"] == "我是人工客服"
    assert fake.service_state(user) == 3
    # A servicer who stopped receiving cannot be assigned.
    fake.customer_text(fake.customer("新客"), "hi")
    assert await errcode(client.kf.trans_service_state, fake.open_kfid,
                         fake.customer("新客")["external_userid"], 3, "lisi") == 95019


# --------------------------------------------------------------------------- send_msg rules


async def test_send_msg_with_msgid_is_not_delivered_twice(fake: FakeWeCom, client: SeamClient) -> None:
    user = fake.customer("小明")
    uid = user["external_userid"]
    fake.customer_text(user, "我的快递到哪了")
    res = await call(client.kf_message.send_text, uid, fake.open_kfid, "正在查询", msgid="reply-001")
    assert res == {"errcode": 0, "errmsg": "ok", "msgid": "reply-001"}
    assert await errcode(client.kf_message.send_text, uid, fake.open_kfid, "正在查询", msgid="reply-001") == 40058
    assert [(m["msgid"], m["content"], m["origin"]) for m in fake.sent_to(user)] == [("reply-001", "正在查询", "bot")]
    # Without msgid WeCom makes one up; msgids longer than 32 bytes are refused.
    auto = await call(client.kf_message.send_text, uid, fake.open_kfid, "好的")
    assert len(auto["msgid"]) == 32
    assert await errcode(client.kf_message.send_text, uid, fake.open_kfid, "x", msgid="m" * 33) == 40058
    # A successful API reply moves a new session (0) to "由智能助手接待" (1).
    assert fake.service_state(user) == 1
    # Unknown customer / account / media.
    assert await errcode(client.kf_message.send_text, "wmnobody", fake.open_kfid, "x") == 40096
    assert await errcode(client.kf_message.send_text, uid, "wkunknown", "x") == 95000
    assert await errcode(client.kf_message.send_image, uid, fake.open_kfid, "3nonexistent") == 40007


async def test_send_msg_five_per_customer_message(fake: FakeWeCom, client: SeamClient) -> None:
    user = fake.customer("小李")
    uid = user["external_userid"]
    fake.customer_text(user, "你好")
    for i in range(5):
        await call(client.kf_message.send_text, uid, fake.open_kfid, f"回复 {i}")
    assert await errcode(client.kf_message.send_text, uid, fake.open_kfid, "第六条") == 95001
    fake.customer_text(user, "然后呢")
    assert (await call(client.kf_message.send_text, uid, fake.open_kfid, "第六条"))["errcode"] == 0
    assert len(fake.sent_to(uid)) == 6


async def test_send_msg_48_hour_window(fake: FakeWeCom, client: SeamClient) -> None:
    user = fake.customer("小张")
    uid = user["external_userid"]
    # Never wrote: the session has not started.
    assert await errcode(client.kf_message.send_text, uid, fake.open_kfid, "hi") == 95018
    fake.customer_text(user, "你好")
    fake.advance(47 * 3600)
    assert (await call(client.kf_message.send_text, uid, fake.open_kfid, "还在"))["errcode"] == 0
    tokens_before = gettoken_calls(fake)
    fake.advance(2 * 3600)
    assert await errcode(client.kf_message.send_text, uid, fake.open_kfid, "太晚了") == 95002
    assert gettoken_calls(fake) == tokens_before + 1  # the access_token expired too; wechatpy refetched it
    assert fake.service_state(user) == 4
    assert fake.transitions[-1]["by"] == "expire"


async def test_send_msg_needs_state_0_or_1_and_state_transitions(fake: FakeWeCom, client: SeamClient) -> None:
    user = fake.customer("阿强")
    uid, kfid = user["external_userid"], fake.open_kfid
    assert (await call(client.kf.get_service_state, kfid, uid))["service_state"] == 4
    fake.customer_text(user, "转人工")
    state = await call(client.kf.get_service_state, kfid, uid)
    assert state == {"errcode": 0, "errmsg": "ok", "service_state": 0, "servicer_userid": ""}

    to_pool = await call(client.kf.trans_service_state, kfid, uid, 2)
    assert to_pool["errcode"] == 0 and to_pool["msg_code"]
    assert await errcode(client.kf_message.send_text, uid, kfid, "排队中") == 95018
    assert await errcode(client.kf.trans_service_state, kfid, uid, 1) == 95016
    assert await errcode(client.kf.trans_service_state, kfid, uid, 3, "nobody") == 95014
    assert await errcode(client.kf.trans_service_state, kfid, uid, 3) == 95014  # 3 needs a servicer

    to_human = await call(client.kf.trans_service_state, kfid, uid, 3, "zhangsan")
    assert to_human["msg_code"]
    state = await call(client.kf.get_service_state, kfid, uid)
    assert (state["service_state"], state["servicer_userid"]) == (3, "zhangsan")
    assert await errcode(client.kf_message.send_text, uid, kfid, "人工中") == 95018

    # The pool code may only be used while queueing; the servicer code while state is 3.
    assert await errcode(client.kf.send_msg_on_event, to_pool["msg_code"], "text", {"text": {"content": "稍等"}}) \
        == 95018
    ok = await call(client.kf.send_msg_on_event, to_human["msg_code"], "text", {"text": {"content": "您好"}})
    assert ok["errcode"] == 0

    end = await call(client.kf.trans_service_state, kfid, uid, 4)
    assert end["msg_code"]
    assert await errcode(client.kf.trans_service_state, kfid, uid, 3, "zhangsan") == 95013
    api = [(t["from"], t["to"], t["servicer_userid"]) for t in fake.transitions if t["by"] == "api"]
    assert api == [(0, 2, ""), (2, 3, "zhangsan"), (3, 4, "")]


async def test_send_msg_on_event_welcome_code(fake: FakeWeCom, client: SeamClient) -> None:
    user = fake.customer("新朋友")
    code = fake.enter_session(user, "ad-7")
    assert code
    menu = {"msgmenu": {"head_content": "您好，请问需要什么帮助？",
                        "list": [{"type": "click", "click": {"id": "101", "content": "查订单"}}],
                        "tail_content": ""}}
    res = await call(client.kf.send_msg_on_event, code, "msgmenu", menu, msgid="welcome-1")
    assert res == {"errcode": 0, "errmsg": "ok", "msgid": "welcome-1"}
    assert fake.welcomes[0]["kind"] == "welcome" and fake.welcomes[0]["content"] == "您好，请问需要什么帮助？"
    assert fake.sent_to(user)[0]["via"] == "send_msg_on_event"
    # Single use.
    assert await errcode(client.kf.send_msg_on_event, code, "text", {"text": {"content": "again"}}) == 40029
    # No new welcome_code within 48 h of a welcome.
    assert fake.enter_session(user) is None
    # 20 seconds to use it.
    late = fake.enter_session(fake.customer("慢吞吞"))
    fake.advance(21)
    assert await errcode(client.kf.send_msg_on_event, late, "text", {"text": {"content": "hi"}}) == 40029
    assert await errcode(client.kf.send_msg_on_event, "made-up", "text", {"text": {"content": "hi"}}) == 40029
    assert len(fake.welcomes) == 1


# --------------------------------------------------------------------------- media


async def test_media_upload_and_download(fake: FakeWeCom, client: SeamClient) -> None:
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    up = await call(client.media.upload, "image", ("label.png", io.BytesIO(data), "image/png"))
    assert up["errcode"] == 0 and up["type"] == "image" and up["created_at"].isdigit()
    media_id = up["media_id"]
    resp = await call(client.media.download, media_id)
    assert resp.status_code == 200 and resp.content == data
    assert resp.headers["Content-Type"] == "image/png"
    assert resp.headers["Content-disposition"] == 'attachment; filename="label.png"'
    # What the customer sent is downloadable by the media_id from sync_msg.
    pic = fake.customer_image(fake.customer("小明"), b"\xff\xd8\xff\xe0 jpeg")
    resp = await call(client.media.download, pic["image"]["media_id"])
    assert resp.content == b"\xff\xd8\xff\xe0 jpeg" and resp.headers["Content-Type"] == "image/jpeg"
    # Range requests, like the real media/get.
    part = await call(requests.get, client.media.get_url(media_id), headers={"Range": "bytes=0-7"})
    assert part.status_code == 206 and part.content == data[:8]
    # Unknown and expired ids are JSON errors (HTTP 200).
    bad = await call(client.media.download, "3nosuchmedia")
    assert bad.status_code == 200 and bad.json()["errcode"] == 40007
    fake.advance(3 * 24 * 3600 + 1)
    # wechatpy quirk: media.download is a bare requests.get, outside _request's token refresh, so a stale
    # access_token comes back as a 42001 JSON body instead of being refetched.
    assert (await call(client.media.download, media_id)).json()["errcode"] == 42001
    await call(client.kf.get_account_list)  # any _request call refetches the token
    assert (await call(client.media.download, media_id)).json()["errcode"] == 40007
    # Too small / wrong type.
    assert await errcode(client.media.upload, "image", ("x.png", io.BytesIO(b"abc"), "image/png")) == 40006
    assert await errcode(client.media.upload, "sticker", ("x.png", io.BytesIO(data), "image/png")) == 40005


async def test_slow_media_get(fake: FakeWeCom, client: SeamClient) -> None:
    pic = fake.customer_image(fake.customer("小明"), b"\xff\xd8\xff\xe0 jpeg")
    await call(client.kf.get_account_list)  # token first, so only media/get is timed
    fake.slow("media/get", 0.4)
    started = time.monotonic()
    resp = await call(client.media.download, pic["image"]["media_id"])
    assert time.monotonic() - started >= 0.4 and resp.status_code == 200


# --------------------------------------------------------------------------- app messages and the robot


async def test_app_message_send(fake: FakeWeCom, client: SeamClient) -> None:
    app = SeamClient(fake.api_base, fake.corp_id, fake.app_secret)
    res = await call(app.message.send_text, fake.agent_id, ["manager", "ghost"], "客户小明要求退款")
    assert res["errcode"] == 0 and res["invaliduser"] == "ghost" and res["msgid"]
    assert [m["content"] for m in fake.app_messages("manager")] == ["客户小明要求退款"]
    card = await call(app.message.send_text_card, fake.agent_id, "zhangsan", "新的转人工", "小明: 我要退款",
                      "https://kefu.example/desk/1")
    assert card["errcode"] == 0 and fake.app_messages("zhangsan")[0]["msgtype"] == "textcard"
    assert await errcode(app.message.send_text, fake.agent_id, "ghost", "x") == 81013
    assert await errcode(app.message.send_text, 999, "manager", "x") == 40056


async def test_group_robot_webhook(fake: FakeWeCom) -> None:
    async with aiohttp.ClientSession() as http:
        async def post(body: dict, key: str | None = None) -> dict:
            async with http.post(fake.webhook_url(key), json=body) as resp:
                assert resp.status == 200
                return await resp.json()

        assert await post({"msgtype": "text", "text": {"content": "新订单 #42", "mentioned_list": ["@all"]}}) \
            == {"errcode": 0, "errmsg": "ok"}
        bad = await post({"msgtype": "text", "text": {"content": "x"}}, key="wrong-key")
        assert bad["errcode"] == 93000 and bad["errmsg"].startswith("invalid webhook url")
        assert (await post({"msgtype": "markdown", "markdown": {"content": "**退款** 1 笔"}}))["errcode"] == 0
        raw = b"\x89PNG fake"
        image = {"base64": base64.b64encode(raw).decode(), "md5": hashlib.md5(raw).hexdigest()}
        assert (await post({"msgtype": "image", "image": image}))["errcode"] == 0
        news = {"articles": [{"title": "日报", "url": "https://kefu.example/r", "picurl": ""}]}
        assert (await post({"msgtype": "news", "news": news}))["errcode"] == 0
        assert (await post({"msgtype": "image", "image": {**image, "md5": "0" * 32}}))["errcode"] == 40058
        # 20 per minute per robot.
        for i in range(16):
            assert (await post({"msgtype": "text", "text": {"content": f"#{i}"}}))["errcode"] == 0
        assert (await post({"msgtype": "text", "text": {"content": "21st"}}))["errcode"] == 45009
        fake.advance(61)
        assert (await post({"msgtype": "text", "text": {"content": "later"}}))["errcode"] == 0
    kinds = [m["msgtype"] for m in fake.robot_messages()]
    assert kinds[:4] == ["text", "markdown", "image", "news"] and len(kinds) == 21
    assert fake.robot_messages()[0]["content"] == "新订单 #42"


# --------------------------------------------------------------------------- callback crypto

SAMPLE_TOKEN = "QDG6eK"
SAMPLE_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
SAMPLE_CORP = "wx5823bf96d3bd56c7"
SAMPLE_ECHO = "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ=="
SAMPLE_MSG = ("RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg"
              "3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+k"
              "DZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6ti"
              "WSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p"
              "8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==")


def test_tencent_published_samples_decrypt_with_wechatpy() -> None:
    crypto = WeChatCrypto(SAMPLE_TOKEN, SAMPLE_KEY, SAMPLE_CORP)
    # URL verification sample (callback encryption docs / WXBizMsgCrypt samples).
    assert crypto.check_signature("5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3", "1409659589", "263014780",
                                  SAMPLE_ECHO) == "1616140317555161061"
    # Message sample: the one whose PKCS#7 pad is 30 bytes (the echostr sample's is 7).
    body = (f"<xml><ToUserName><![CDATA[{SAMPLE_CORP}]]></ToUserName><Encrypt><![CDATA[{SAMPLE_MSG}]]></Encrypt>"
            "<AgentID><![CDATA[218]]></AgentID></xml>")
    plain = crypto.decrypt_message(body, "477715d11cdb4164915debcba66cb864d751f3e6", "1409659813", "1372623149")
    msg = parse_message(plain)
    assert isinstance(msg, TextMessage)
    assert (msg.source, msg.content, msg.agent, msg.id) == ("mycreate", "hello", 218, 4561255354251345929)
    pads = [WeChatCipher(crypto.key).decrypt(base64.b64decode(s))[-1] for s in (SAMPLE_ECHO, SAMPLE_MSG)]
    assert pads == [7, 30]


class Bot:
    """A minimal callback endpoint written the way kefu's adapter should be: verify, decrypt, answer at once."""

    def __init__(self, fake: FakeWeCom, *, delay: float = 0.0) -> None:
        self.crypto = WeChatCrypto(fake.token, fake.encoding_aes_key, fake.corp_id)
        self.fake, self.delay = fake, delay
        self.received: list[Any] = []
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        q = request.query
        if abs(self.fake.now() - int(q["timestamp"])) > 300:  # refuse replays (fake clock)
            return web.Response(status=403, text="stale")
        try:
            if request.method == "GET":
                return web.Response(text=self.crypto.check_signature(q["msg_signature"], q["timestamp"], q["nonce"],
                                                                     q["echostr"]))
            plain = self.crypto.decrypt_message(await request.text(), q["msg_signature"], q["timestamp"], q["nonce"])
        except Exception as e:  # noqa: BLE001 - any failure means "not from WeCom"
            return web.Response(status=403, text=type(e).__name__)
        self.received.append(parse_message(plain))
        await asyncio.sleep(self.delay)
        return web.Response(text="success")

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/wecom/callback", self.handle)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return str(self.server.make_url("/wecom/callback"))

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        await self.server.close()


async def test_callback_round_trip(fake: FakeWeCom) -> None:
    bot = Bot(fake)
    async with bot as url:
        token = fake.kf_token()
        status, body, elapsed = await fake.callback(url, fake.kf_event_xml(token))
        assert (status, body) == (200, "success") and elapsed < 5
        event = bot.received[-1]
        # wechatpy knows this event: KFMsgOrEventEvent with .token; OpenKfId has no field, read the raw dict.
        assert isinstance(event, KFMsgOrEventEvent)
        assert event.token == token and event.event == "kf_msg_or_event" and event.target == fake.corp_id
        assert event._data["OpenKfId"] == fake.open_kfid

        await fake.callback(url, fake.app_text_xml("zhangsan", "/take 小明 <&> ]]> done"))
        msg = bot.received[-1]
        assert isinstance(msg, TextMessage)
        assert (msg.source, msg.content, msg.agent) == ("zhangsan", "/take 小明 <&> ]]> done", fake.agent_id)

        sent = fake.callbacks[-1]
        assert set(sent["params"]) == {"msg_signature", "timestamp", "nonce"}
        assert sent["body"].startswith(f"<xml><ToUserName><![CDATA[{fake.corp_id}]]></ToUserName><Encrypt>")

        for tamper, why in [("signature", "InvalidSignatureException"), ("stale", "stale"),
                            ("corp_id", "InvalidCorpIdException")]:
            result = await fake.callback(url, fake.kf_event_xml(), tamper=tamper)
            assert (result.status, result.body) == (403, why), tamper
        result = await fake.callback(url, fake.kf_event_xml(), tamper="aes_key")
        # wechatpy decrypts garbage without checking the padding: it fails with UnicodeDecodeError (or struct.error,
        # or InvalidCorpIdException), so a callback handler must treat any exception from decrypt as "reject".
        assert result.status == 403, result
        assert len(bot.received) == 2

        verified = await fake.verify_url(url)
        assert verified.status == 200 and verified.body == fake.last_echo
        assert (await fake.verify_url(url, tamper="signature")).status == 403


async def test_callback_times_out_like_wecom(fake: FakeWeCom) -> None:
    async with Bot(fake, delay=0.5) as url:
        result = await fake.callback(url, fake.kf_event_xml(), timeout=0.2)
        assert result.status is None and 0.2 <= result.elapsed < 0.5
