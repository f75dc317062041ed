"""A local fake of DingTalk (钉钉) for tests: the OpenAPI, session webhooks, a custom robot and the Stream gateway.

It speaks the wire protocol closely enough that kefu's aiohttp calls and the official ``dingtalk-stream`` SDK run
against it unmodified over real HTTP / websockets on 127.0.0.1. The SDK reads ``DINGTALK_OPENAPI_ENDPOINT`` once,
when it is first imported, so every fake in one test process listens on that one address (:func:`sdk_endpoint`
picks a free port and sets the variable when this module is imported).

Served (new OpenAPI, https://api.dingtalk.com; header ``x-acs-dingtalk-access-token``):

* ``POST /v1.0/oauth2/accessToken`` {appKey, appSecret} -> {accessToken, expireIn}
* ``POST /v1.0/robot/messageFiles/download`` {downloadCode, robotCode} -> {downloadUrl}; the URL serves the bytes
* ``POST /v1.0/robot/oToMessages/batchSend`` {robotCode, userIds, msgKey, msgParam}
  -> {processQueryKey, invalidStaffIdList, flowControlledStaffIdList}
* ``POST /v1.0/robot/groupMessages/send`` {robotCode, openConversationId, msgKey, msgParam} -> {processQueryKey}
* ``POST /v1.0/gateway/connections/open`` {clientId, clientSecret, subscriptions, ua, localIp} -> {endpoint, ticket},
  then ``GET /connect?ticket=`` (websocket): frames ``{specVersion, type: SYSTEM|EVENT|CALLBACK, headers: {appId,
  connectionId, contentType, messageId, time, topic}, data: "<json string>"}``; the client answers each with an
  ACK ``{code, headers: {contentType, messageId}, message, data}``.

New-OpenAPI errors are an HTTP 4xx/5xx with ``{"code": "...", "message": "...", "requestid": "..."}``:
401 ``InvalidAuthentication`` (unknown or expired token), 403 ``Forbidden.AccessDenied.QpsLimitForAppkeyAndApi``
(the documented QPS limit; :meth:`FakeDingTalk.rate_limit`), 400 ``invalidParameter...`` for bad bodies. The exact
``code`` strings of the 400s are *guesses* (DingTalk documents the shape, not every code).

Old-style endpoints (https://oapi.dingtalk.com) answer HTTP 200 with ``{"errcode", "errmsg"}``:

* ``POST /media/upload?access_token=`` (multipart ``type``, ``media``) -> {errcode, media_id}; 40014 bad token
* ``POST /robot/sendBySession?session=`` -- a conversation's sessionWebhook (about 90 minutes); an unknown or
  expired session gets errcode 300001 (*guess*: the code for an expired session is not documented)
* ``POST /robot/send?access_token=&timestamp=&sign=`` -- a custom robot with the 加签 security setting:
  300001 unknown token, 310000 sign missing/mismatching or timestamp more than an hour off, 130101 more than 20
  messages in a minute ("send too fast, exceed 20 times per minute")

The platform calling the bot: :meth:`FakeDingTalk.callback` (HTTP mode: JSON body, headers ``timestamp`` and
``sign``) and :meth:`FakeDingTalk.push` (Stream mode: a CALLBACK frame on topic ``/v1.0/im/bot/messages/get``,
returning the client's ACK).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import socket
import string
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, NamedTuple

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

Json = dict[str, Any]
ENDPOINT_ENV = "DINGTALK_OPENAPI_ENDPOINT"
BOT_TOPIC = "/v1.0/im/bot/messages/get"
TOKEN_TTL = 7200
SESSION_TTL_MS = 90 * 60 * 1000
ROBOT_LIMIT = 20  # custom robot: 20 messages per minute
QPS_CODE = "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi"
MSG_KEYS = {"sampleText", "sampleMarkdown", "sampleImageMsg", "sampleLink", "sampleActionCard", "sampleActionCard2",
            "sampleActionCard3", "sampleActionCard4", "sampleActionCard5", "sampleActionCard6", "sampleAudio",
            "sampleFile", "sampleVideo"}
_ALNUM = string.ascii_letters + string.digits


def sdk_endpoint() -> str:
    """The one address of the fakes in this process (DINGTALK_OPENAPI_ENDPOINT, set on first use)."""
    url = os.environ.get(ENDPOINT_ENV, "")
    if not url.startswith("http://127.0.0.1:"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = os.environ[ENDPOINT_ENV] = f"http://127.0.0.1:{port}"
    return url


sdk_endpoint()


def _rand(n: int, alphabet: str = _ALNUM) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def sign(secret: str, timestamp: str) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


@dataclass
class User:
    nick: str
    staff_id: str
    sender_id: str
    cid: str  # the 1:1 conversation with the robot


class CallbackResult(NamedTuple):
    status: int
    body: Any


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code)
        self.status, self.code, self.message = status, code, message


class FakeDingTalk:
    def __init__(self) -> None:
        self.base = sdk_endpoint()
        self.app_key = "ding" + _rand(16).lower()
        self.app_secret = _rand(64)
        self.robot_code = self.app_key
        self.corp_id = "ding" + _rand(32).lower()
        self.bot_user_id = "$:LWCP_v1:$" + _rand(32)
        self.robot_name = "小满客服"
        self.desk_cid = "cid" + _rand(22) + "=="
        self.custom_token = _rand(64).lower()
        self.custom_secret = "SEC" + _rand(61).lower()
        self.users: dict[str, User] = {}
        self.tokens: dict[str, float] = {}
        self.files: dict[str, tuple[bytes, str]] = {}
        self.uploads: dict[str, bytes] = {}  # media_id -> bytes (media/upload)
        self.codes: dict[str, str] = {}  # downloadCode -> file id
        self.sessions: dict[str, tuple[str, int]] = {}  # session -> (conversation id, expiry ms)
        self.sent: list[Json] = []
        self.calls: list[str] = []
        self.limited: dict[str, int] = {}
        self.robot_times: list[float] = []
        self.session_ttl_ms = SESSION_TTL_MS
        self.acks: dict[str, asyncio.Future[Json]] = {}
        self.tickets: set[str] = set()
        self.ws: web.WebSocketResponse | None = None
        self.connected = asyncio.Event()
        self.connections = 0
        self.opened: list[Json] = []
        self._server: TestServer | None = None

    # --- server ---------------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application()
        app.add_routes([
            web.post("/v1.0/oauth2/accessToken", self._access_token),
            web.post("/v1.0/robot/messageFiles/download", self._api(self._download)),
            web.post("/v1.0/robot/oToMessages/batchSend", self._api(self._batch_send)),
            web.post("/v1.0/robot/groupMessages/send", self._api(self._group_send)),
            web.get("/files/{fid}", self._file),
            web.post("/robot/sendBySession", self._by_session),
            web.post("/media/upload", self._media_upload),
            web.post("/robot/send", self._custom_robot),
            web.post("/v1.0/gateway/connections/open", self._open),
            web.get("/connect", self._connect),
        ])
        port = int(self.base.rsplit(":", 1)[1])
        self._server = TestServer(app, host="127.0.0.1", port=port)
        for attempt in range(50):  # the previous test's fake may still be letting go of the port
            try:
                await self._server.start_server()
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"port {port} stays busy")

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._server is not None:
            await self._server.close()

    # --- people and conversations ------------------------------------------------------------------
    def user(self, nick: str) -> User:
        u = User(nick=nick, staff_id=f"{_rand(6, string.digits)}{len(self.users)}",
                 sender_id="$:LWCP_v1:$" + _rand(32), cid="cid" + _rand(22) + "==")
        self.users[u.staff_id] = u
        return u

    def _message(self, user: User, cid: str, kind: str, msgtype: str, **body: Any) -> Json:
        session = _rand(32)
        exp = int(time.time() * 1000) + self.session_ttl_ms
        self.sessions[session] = (cid, exp)
        msg: Json = {
            "conversationId": cid, "chatbotCorpId": self.corp_id, "chatbotUserId": self.bot_user_id,
            "msgId": "msg" + _rand(22), "senderNick": user.nick, "isAdmin": False, "senderStaffId": user.staff_id,
            "sessionWebhookExpiredTime": exp, "createAt": int(time.time() * 1000), "senderCorpId": self.corp_id,
            "conversationType": kind, "senderId": user.sender_id,
            "sessionWebhook": f"{self.base}/robot/sendBySession?session={session}", "robotCode": self.robot_code,
            "msgtype": msgtype, **body,
        }
        if kind == "2":
            msg.update(conversationTitle="售后客服组", isInAtList=True, atUsers=[{"dingtalkId": self.bot_user_id}])
        return msg

    def buyer_text(self, user: User, text: str) -> Json:
        return self._message(user, user.cid, "1", "text", text={"content": text})

    def _file_code(self, data: bytes, content_type: str) -> str:
        fid, code = _rand(24), _rand(120, _ALNUM + "+/")
        self.files[fid] = (data, content_type)
        self.codes[code] = fid
        return code

    def buyer_picture(self, user: User, data: bytes, content_type: str = "image/jpeg") -> Json:
        code = self._file_code(data, content_type)
        return self._message(user, user.cid, "1", "picture", content={"downloadCode": code, "pictureDownloadCode": code})

    def buyer_rich(self, user: User, parts: list[str | bytes]) -> Json:
        items: list[Json] = []
        for p in parts:
            if isinstance(p, bytes):
                code = self._file_code(p, "image/png")
                items.append({"pictureDownloadCode": code, "downloadCode": code, "type": "picture"})
            else:
                items.append({"text": p})
        return self._message(user, user.cid, "1", "richText", content={"richText": items})

    def buyer_file(self, user: User, name: str) -> Json:
        code = self._file_code(b"%PDF-1.4", "application/pdf")
        return self._message(user, user.cid, "1", "file", content={"downloadCode": code, "fileName": name})

    def agent_text(self, agent: User, text: str, cid: str | None = None) -> Json:
        """An agent @-ing the robot in a group: DingTalk drops the @name and keeps a leading space."""
        return self._message(agent, cid or self.desk_cid, "2", "text", text={"content": f" {text}"})

    def expire_sessions(self) -> None:
        self.sessions = {s: (cid, 0) for s, (cid, _) in self.sessions.items()}

    def expire_tokens(self) -> None:
        self.tokens = {t: 0.0 for t in self.tokens}

    def rate_limit(self, path: str, times: int = 1) -> None:
        self.limited[path] = self.limited.get(path, 0) + times

    # --- what the robot sent ----------------------------------------------------------------------------
    def sent_to(self, user: User) -> list[Json]:
        return [m for m in self.sent if m["cid"] == user.cid or user.staff_id in m.get("users", ())]

    def desk_messages(self) -> list[Json]:
        return [m for m in self.sent if m["cid"] == self.desk_cid or m["via"] == "custom"]

    def _record(self, via: str, cid: str, kind: str, body: Json, users: tuple[str, ...] = ()) -> None:
        if kind in ("text", "sampleText"):
            text = body.get("content", "")
        elif kind in ("markdown", "sampleMarkdown"):
            text = body.get("text", "")
        else:
            text = json.dumps(body, ensure_ascii=False)
        self.sent.append({"via": via, "cid": cid, "users": users, "kind": kind, "text": text, "at": time.time()})

    # --- the platform calling the bot ---------------------------------------------------------------------
    async def callback(self, url: str, msg: Json, tamper: str | None = None) -> CallbackResult:
        ts = str(int(time.time() * 1000) - (2 * 3600 * 1000 if tamper == "stale" else 0))
        secret = self.app_secret if tamper != "sign" else _rand(64)
        headers = {"timestamp": ts, "sign": sign(secret, ts), "Content-Type": "application/json; charset=utf-8"}
        if tamper == "missing":
            headers = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=json.dumps(msg, ensure_ascii=False).encode(), headers=headers) as resp:
                return CallbackResult(resp.status, await resp.json(content_type=None))

    async def push(self, msg: Json, timeout: float = 10.0) -> Json:
        """A CALLBACK frame on the open Stream connection; returns the client's ACK."""
        return await self._frame("CALLBACK", BOT_TOPIC, json.dumps(msg, ensure_ascii=False), timeout)

    async def ping(self) -> Json:
        return await self._frame("SYSTEM", "ping", json.dumps({"opaque": _rand(16)}), 10.0)

    async def disconnect(self) -> None:
        """The gateway asks the client to reconnect (as before a server restart)."""
        await self._frame("SYSTEM", "disconnect", json.dumps({"reason": "server restart"}), None)

    async def _frame(self, kind: str, topic: str, data: str, timeout: float | None) -> Json:
        await asyncio.wait_for(self.connected.wait(), 15)
        assert self.ws is not None
        mid = f"{_rand(8)}-{_rand(4)}-{_rand(12)}"
        frame = {"specVersion": "1.0", "type": kind, "headers": {
            "appId": self.app_key, "connectionId": _rand(16), "contentType": "application/json", "messageId": mid,
            "time": str(int(time.time() * 1000)), "topic": topic}, "data": data}
        fut: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        self.acks[mid] = fut
        await self.ws.send_str(json.dumps(frame, ensure_ascii=False))
        if timeout is None:
            return {}
        ack = await asyncio.wait_for(fut, timeout)
        return {**ack, "sent_data": data}

    # --- OpenAPI --------------------------------------------------------------------------------------------
    def _error(self, status: int, code: str, message: str) -> web.Response:
        return web.json_response({"code": code, "message": message, "requestid": _rand(24)}, status=status)

    def _api(self, handler: Any) -> Any:
        async def wrapped(request: web.Request) -> web.Response:
            self.calls.append(request.path)
            if self.limited.get(request.path):
                self.limited[request.path] -= 1
                return self._error(403, QPS_CODE, "调用该接口触发了限流，请降低调用频率")
            token = request.headers.get("x-acs-dingtalk-access-token", "")
            if self.tokens.get(token, 0) < time.time():
                return self._error(401, "InvalidAuthentication", "不合法的access_token")
            try:
                body = await request.json()
                if not isinstance(body, dict):
                    raise ValueError
            except ValueError:
                return self._error(400, "InvalidParameter", "请求体不是合法的JSON")
            try:
                return web.json_response(await handler(request, body))
            except ApiError as exc:
                return self._error(exc.status, exc.code, exc.message)
        return wrapped

    async def _access_token(self, request: web.Request) -> web.Response:
        self.calls.append(request.path)
        body = await request.json()
        if body.get("appKey") != self.app_key or body.get("appSecret") != self.app_secret:
            return self._error(400, "invalidClientIdOrSecret", "无效的appKey或appSecret")
        token = _rand(32).lower()
        self.tokens[token] = time.time() + TOKEN_TTL
        return web.json_response({"accessToken": token, "expireIn": TOKEN_TTL})

    def _robot(self, body: Json) -> None:
        if body.get("robotCode") != self.robot_code:
            raise ApiError(400, "invalidParameter.robotCode.notExist", "robotCode不存在")

    def _msg(self, body: Json) -> tuple[str, Json]:
        key = body.get("msgKey")
        if key not in MSG_KEYS:
            raise ApiError(400, "invalidParameter.msgKey.notExist", "msgKey不存在")
        try:
            param = json.loads(body.get("msgParam") or "")
        except (TypeError, ValueError):
            raise ApiError(400, "invalidParameter.msgParam.invalid", "msgParam不是合法的JSON") from None
        if len(str(body.get("msgParam")).encode()) > 15000:
            raise ApiError(400, "invalidParameter.msgParam.tooLong", "msgParam超过15000字节")
        return str(key), param

    async def _download(self, request: web.Request, body: Json) -> Json:
        self._robot(body)
        fid = self.codes.get(str(body.get("downloadCode")))
        if fid is None:
            raise ApiError(400, "invalidParameter.downloadCode.invalid", "downloadCode无效或已过期")
        return {"downloadUrl": f"{self.base}/files/{fid}?Expires={int(time.time()) + 3600}&Signature={_rand(20)}"}

    async def _file(self, request: web.Request) -> web.Response:
        item = self.files.get(request.match_info["fid"])
        if item is None:
            return web.Response(status=404, text="<Error><Code>NoSuchKey</Code></Error>", content_type="application/xml")
        return web.Response(body=item[0], content_type=item[1])

    async def _batch_send(self, request: web.Request, body: Json) -> Json:
        self._robot(body)
        key, param = self._msg(body)
        ids = body.get("userIds")
        if not isinstance(ids, list) or not ids or len(ids) > 20:
            raise ApiError(400, "invalidParameter.userIds.invalid", "userIds为1到20个")
        valid = tuple(i for i in ids if i in self.users)
        if valid:
            self._record("otom", "", key, param, users=valid)
        return {"processQueryKey": _rand(40), "invalidStaffIdList": [i for i in ids if i not in self.users],
                "flowControlledStaffIdList": []}

    async def _group_send(self, request: web.Request, body: Json) -> Json:
        self._robot(body)
        key, param = self._msg(body)
        if body.get("openConversationId") != self.desk_cid:
            raise ApiError(400, "resource.not.found", "机器人不在该群或群不存在")
        self._record("group", self.desk_cid, key, param)
        return {"processQueryKey": _rand(40)}

    # --- session webhooks and the custom robot ---------------------------------------------------------------
    async def _by_session(self, request: web.Request) -> web.Response:
        self.calls.append(request.path)
        cid, exp = self.sessions.get(request.query.get("session", ""), ("", 0))
        if not cid or exp < time.time() * 1000:
            return web.json_response({"errcode": 300001, "errmsg": "session不存在或已过期"})
        body = await request.json()
        kind = body.get("msgtype")
        if kind not in ("text", "markdown", "actionCard", "link", "feedCard"):
            return web.json_response({"errcode": 40035, "errmsg": "缺少参数 msgtype"})
        self._record("session", cid, kind, body.get(kind) or {})
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    async def _media_upload(self, request: web.Request) -> web.Response:
        """Old API: the app's access token (the same token as the new API's) as a query parameter."""
        self.calls.append(request.path)
        if self.tokens.get(request.query.get("access_token", ""), 0) < time.time():
            return web.json_response({"errcode": 40014, "errmsg": "不合法的access_token"})
        form = await request.post()
        media, kind = form.get("media"), form.get("type")
        if kind not in ("image", "voice", "video", "file"):
            return web.json_response({"errcode": 40004, "errmsg": "不合法的媒体文件类型"})
        if not isinstance(media, web.FileField):
            return web.json_response({"errcode": 41001, "errmsg": "缺少media参数"})
        data = media.file.read()
        if kind == "image" and len(data) > 20 * 1024 * 1024:
            return web.json_response({"errcode": 40006, "errmsg": "不合法的文件大小"})
        media_id = "@lA" + _rand(40)
        self.uploads[media_id] = data
        return web.json_response({"errcode": 0, "errmsg": "ok", "media_id": media_id, "type": kind,
                                  "created_at": int(time.time() * 1000)})

    async def _custom_robot(self, request: web.Request) -> web.Response:
        self.calls.append(request.path)
        q = request.query
        if q.get("access_token") != self.custom_token:
            return web.json_response({"errcode": 300001, "errmsg": "token is not exist"})
        ts = q.get("timestamp", "")
        fresh = ts.isdigit() and abs(time.time() * 1000 - int(ts)) <= 3600 * 1000
        if not fresh or not hmac.compare_digest(sign(self.custom_secret, ts), q.get("sign", "")):
            return web.json_response({"errcode": 310000, "errmsg": "sign not match, more: [https://ding-doc.dingtalk.com/doc#/serverapi2/qf2nxq]"})
        now = time.time()
        self.robot_times = [t for t in self.robot_times if now - t < 60]
        if len(self.robot_times) >= ROBOT_LIMIT:
            return web.json_response({"errcode": 130101, "errmsg": "send too fast, exceed 20 times per minute"})
        self.robot_times.append(now)
        body = await request.json()
        kind = body.get("msgtype")
        self._record("custom", self.desk_cid, kind, body.get(kind) or {})
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    # --- the Stream gateway ---------------------------------------------------------------------------------------
    async def _open(self, request: web.Request) -> web.Response:
        self.calls.append(request.path)
        body = await request.json()
        self.opened.append(body)
        if body.get("clientId") != self.app_key or body.get("clientSecret") != self.app_secret:
            return self._error(401, "Unauthorized", "clientId或clientSecret不正确")
        ticket = _rand(36)
        self.tickets.add(ticket)
        host = urllib.parse.urlsplit(self.base).netloc
        return web.json_response({"endpoint": f"ws://{host}/connect", "ticket": ticket})

    async def _connect(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self.tickets:
            return self._error(401, "InvalidTicket", "ticket无效或已使用")
        self.tickets.discard(ticket)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.ws, self.connections = ws, self.connections + 1
        self.connected.set()
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                ack = json.loads(msg.data)
                fut = self.acks.pop(str((ack.get("headers") or {}).get("messageId")), None)
                if fut is not None and not fut.done():
                    fut.set_result(ack)
        finally:
            if self.ws is ws:
                self.ws = None
                self.connected.clear()
        return ws
