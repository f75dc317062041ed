"""The fake DingTalk keeps DingTalk's rules (so the stories that pass against it mean something): tokens,
error shapes, session webhooks that expire, the custom robot's 加签 check and its 20-a-minute limit, and
single-use Stream tickets."""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import AsyncIterator

import aiohttp
import pytest

from tests.fake_dingtalk import QPS_CODE, FakeDingTalk, sign


@pytest.fixture
async def fake() -> AsyncIterator[FakeDingTalk]:
    f = FakeDingTalk()
    await f.start()
    yield f
    await f.close()


async def _token(http: aiohttp.ClientSession, fake: FakeDingTalk) -> str:
    async with http.post(f"{fake.base}/v1.0/oauth2/accessToken",
                         json={"appKey": fake.app_key, "appSecret": fake.app_secret}) as resp:
        body = await resp.json()
        assert resp.status == 200 and body["expireIn"] == 7200
        return str(body["accessToken"])


async def test_openapi_tokens_and_error_shapes(fake: FakeDingTalk) -> None:
    user = fake.user("小李")
    send = {"robotCode": fake.robot_code, "userIds": [user.staff_id], "msgKey": "sampleText",
            "msgParam": json.dumps({"content": "hi"})}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{fake.base}/v1.0/oauth2/accessToken",
                             json={"appKey": fake.app_key, "appSecret": "wrong"}) as resp:
            assert resp.status == 400 and set(await resp.json()) == {"code", "message", "requestid"}
        url = f"{fake.base}/v1.0/robot/oToMessages/batchSend"
        async with http.post(url, json=send) as resp:
            assert resp.status == 401 and (await resp.json())["code"] == "InvalidAuthentication"
        token = await _token(http, fake)
        headers = {"x-acs-dingtalk-access-token": token}
        async with http.post(url, json={**send, "userIds": [user.staff_id, "nobody"]}, headers=headers) as resp:
            body = await resp.json()
            assert resp.status == 200 and body["invalidStaffIdList"] == ["nobody"] and body["processQueryKey"]
        async with http.post(url, json={**send, "msgKey": "nope"}, headers=headers) as resp:
            assert resp.status == 400
        fake.rate_limit("/v1.0/robot/oToMessages/batchSend")
        async with http.post(url, json=send, headers=headers) as resp:
            assert resp.status == 403 and (await resp.json())["code"] == QPS_CODE
        fake.expire_tokens()
        async with http.post(url, json=send, headers=headers) as resp:
            assert resp.status == 401
    assert [m["text"] for m in fake.sent_to(user)] == ["hi"]


async def test_session_webhooks_expire(fake: FakeDingTalk) -> None:
    user = fake.user("小王")
    msg = fake.buyer_text(user, "你好")
    assert msg["sessionWebhookExpiredTime"] > time.time() * 1000
    async with aiohttp.ClientSession() as http:
        body = {"msgtype": "text", "text": {"content": "在的"}}
        async with http.post(msg["sessionWebhook"], json=body) as resp:
            assert (await resp.json())["errcode"] == 0
        fake.expire_sessions()
        async with http.post(msg["sessionWebhook"], json=body) as resp:
            assert (await resp.json())["errcode"] != 0
    assert [m["text"] for m in fake.sent_to(user)] == ["在的"]


async def test_the_custom_robot_checks_its_signature_and_sends_20_a_minute(fake: FakeDingTalk) -> None:
    base = f"{fake.base}/robot/send?access_token={fake.custom_token}"
    body = {"msgtype": "text", "text": {"content": "K1001"}}

    def signed(ts: int, secret: str = fake.custom_secret) -> str:
        return f"{base}&timestamp={ts}&sign={urllib.parse.quote_plus(sign(secret, str(ts)))}"

    async with aiohttp.ClientSession() as http:
        now = int(time.time() * 1000)
        for url, code in ((base, 310000), (signed(now, "SECwrong"), 310000), (signed(now - 2 * 3600 * 1000), 310000),
                          (f"{fake.base}/robot/send?access_token=x", 300001)):
            async with http.post(url, json=body) as resp:
                assert (await resp.json())["errcode"] == code, url
        codes = []
        for _ in range(21):
            async with http.post(signed(int(time.time() * 1000)), json=body) as resp:
                codes.append((await resp.json())["errcode"])
    assert codes == [0] * 20 + [130101]
    assert len(fake.desk_messages()) == 20


async def test_stream_tickets_are_single_use(fake: FakeDingTalk) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{fake.base}/v1.0/gateway/connections/open",
                             json={"clientId": fake.app_key, "clientSecret": "wrong", "subscriptions": []}) as resp:
            assert resp.status == 401
        async with http.post(f"{fake.base}/v1.0/gateway/connections/open",
                             json={"clientId": fake.app_key, "clientSecret": fake.app_secret,
                                   "subscriptions": [{"type": "CALLBACK", "topic": "/v1.0/im/bot/messages/get"}]}) as resp:
            opened = await resp.json()
        url = f"{opened['endpoint']}?ticket={urllib.parse.quote_plus(opened['ticket'])}"
        async with http.ws_connect(url) as ws:
            await fake.connected.wait()
            await ws.close()
        with pytest.raises(aiohttp.WSServerHandshakeError):
            async with http.ws_connect(url):
                pass
