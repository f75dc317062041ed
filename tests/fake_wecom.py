"""A local fake of the WeCom (企业微信) server API, for tests.

It speaks the real wire protocol closely enough that the real ``wechatpy.work.WeChatClient`` runs against it
unmodified over real HTTP on 127.0.0.1 (point ``client.API_BASE_URL`` at :attr:`FakeWeCom.api_base`; wechatpy
hard-codes the host of ``gettoken`` and of ``media.download``, so the client needs a small seam there -- see
tests/test_fake_wecom.py).

Served under ``{base}/cgi-bin/``:

* ``gettoken`` (GET corpid, corpsecret) -- https://developer.work.weixin.qq.com/document/path/91039
* ``kf/sync_msg``, ``kf/send_msg``, ``kf/send_msg_on_event``, ``kf/service_state/get|trans``,
  ``kf/customer/batchget``, ``kf/account/list``, ``kf/servicer/list`` -- 微信客服 pages 94670, 94677, 95122, 94669
* ``media/upload`` (multipart, field ``media``) and ``media/get`` (bytes, Range supported) -- 90253 / 90254
* ``message/send`` (self-built app -> employees) -- 90236
* ``webhook/send?key=`` (group robot, no access_token) -- 91770

Every JSON answer carries ``errcode`` and ``errmsg`` (``"ok"`` when 0) with HTTP 200, like the real server; error
messages get the real server's ``", hint: [...], from ip: ..., more info at ...?e=CODE"`` tail, so match on
``errcode`` only, never on ``errmsg``.

The other direction -- the platform calling the bot -- is :meth:`FakeWeCom.callback` (encrypted POST, callback
encryption page 90968/90930) and :meth:`FakeWeCom.verify_url` (the GET URL check).

Error codes used (meaning from the global errcode page https://developer.work.weixin.qq.com/document/path/90313,
read through the generated table in github.com/xen0n/go-workwx errcodes/mod.go; "guess" = WeCom documents no code
for that case, the one used is the closest documented meaning):

==========  =========================================================================================
40001       gettoken: wrong corpsecret                                         (90313)
40013       gettoken: wrong corpid                                              (90313)
41001/41002/41004  access_token / corpid / corpsecret missing                   (90313)
40014       access_token unknown                                                (90313)
42001       access_token expired (see :meth:`FakeWeCom.expire_tokens`)          (90313)
45009       api freq out of limit: :meth:`rate_limit`, robot > 20 msgs / 60 s   (90313; 91770 for the robot)
47001       body is not JSON ("data format error")                              (90313)
40058       invalid parameter: msgid longer than 32 bytes or outside [0-9a-zA-Z_-] (the real errmsg for a long
            msgid is "msgid exceed max length"); *guess*: invalid sync_msg cursor; *guess*: duplicate msgid
            (94677 says "若指定msgid，开发者需确保客服账号内唯一，否则接口返回错误" without naming the code)
95000       unknown open_kfid                                                   (90313 不合法的open_kfid)
40096       unknown external_userid                                             (90313 不合法的外部联系人userid)
95007       sync_msg token (the callback Token) unknown or older than 10 min    (90313 不合法的msgtoken)
95018       send_msg while the session state is not 0/1 ("send msg session status invalid", the real errmsg),
            or send_msg_on_event with a code whose session state has moved on    (90313, 95122)
95002       send_msg more than 48 h after the customer's last message           (90313 发送客服消息时间限制)
95001       send_msg: a 6th message since the customer's last message           (90313 发送客服消息次数限制)
95008/95009 msgmenu with > 10 items / an unknown item type                      (90313)
40029       *guess*: send_msg_on_event code unknown, used, or past its validity (20 s for welcome/end codes,
            48 h for pool/servicer codes -- 95122)
95013       service_state/trans from state 4 (ended / not started)              (90313 会话已经结束; 94669)
95016       service_state/trans not allowed from the current state             (90313 不允许这种状态转移)
95014       trans to 3 with a servicer_userid that is not a servicer            (90313 用户不是接待人员; 94669)
95019       trans to 3 with a servicer who stopped receiving                    (90313)
40005/40006/44001/40009  media/upload bad type / size (< 5 B or too big) / empty / image > 10 MB (90313, 90253)
40007       media/get unknown or expired (3 days) media_id                      (90313)
40008       unknown msgtype                                                     (90313)
44004       empty text content                                                  (90313)
45002       content too long (kf text > 2048 B, robot text > 2048 B, robot markdown > 4096 B) (90313, 91770)
40056       message/send: wrong agentid                                         (90313)
81013       message/send: every user/party/tag invalid                          (90313)
93000       webhook/send: unknown key ("invalid webhook url")                   (90313)
==========  =========================================================================================

Session states (94669): 0 未处理, 1 由智能助手接待, 2 待接入池排队中, 3 由人工接待, 4 已结束/未开始.  A new customer is
in 4; a customer message moves 4 -> 0; a successful API send_msg in 0 moves it to 1; a session expires to 4 48 h
after the customer's last message.  ``service_state/trans`` allows :attr:`FakeWeCom.allowed_transitions`: the
doc's table (0 -> 1/2/3, 1 -> 2/3, 2 -> 3, 3 -> 3/4) plus ending (-> 4) from 0/1/2, which the doc's flow chart
shows; change the attribute in a test to be stricter.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import secrets
import string
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import aiohttp
import xmltodict
from aiohttp import web
from aiohttp.test_utils import TestServer
from wechatpy.work.crypto import WeChatCrypto

Json = dict[str, Any]

HOUR = 3600
SESSION_WINDOW = 48 * HOUR  # send_msg only within 48 h of the customer's last message (94677)
SENDS_PER_TURN = 5  # at most 5 send_msg per customer message (94677)
KF_TOKEN_TTL = 10 * 60  # the callback Token is valid 10 minutes (94670)
TOKEN_TTL = 7200  # access_token (91039)
MEDIA_TTL = 3 * 24 * HOUR  # temporary media live 3 days (90253)
SYNC_WINDOW = 3 * 24 * HOUR  # sync_msg returns the last 3 days (94670)
ROBOT_LIMIT = 20  # group robot: 20 messages per minute per robot (91770)

_ALNUM = string.ascii_letters + string.digits
_KF_MSGTYPES = {"text", "image", "voice", "video", "file", "link", "miniprogram", "msgmenu", "location", "ca_link"}
_APP_MSGTYPES = {"text", "image", "voice", "video", "file", "textcard", "news", "mpnews", "markdown",
                 "miniprogram_notice", "template_card"}
_ROBOT_MSGTYPES = {"text", "markdown", "markdown_v2", "image", "news", "file", "voice", "template_card"}
_MENU_ITEM_TYPES = {"click", "view", "miniprogram", "text"}
_MEDIA_TYPES = {"image", "voice", "video", "file"}
_MEDIA_MAX = {"image": 10 * 1024 * 1024, "voice": 2 * 1024 * 1024, "video": 10 * 1024 * 1024,
              "file": 20 * 1024 * 1024}
_EXT = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "audio/amr": "amr", "video/mp4": "mp4"}


def _rand(n: int, alphabet: str = _ALNUM) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _cdata(value: object) -> str:
    return "<![CDATA[" + str(value).replace("]]>", "]]]]><![CDATA[>") + "]]>"


class WeComError(Exception):
    """An error answer; raised anywhere inside an API handler."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(f"{code} {msg}")
        self.code, self.msg = code, msg


class CallbackResult(NamedTuple):
    """What the bot answered to a callback: HTTP status (None if it did not answer within ``timeout``), body,
    and the seconds it took (unpacks as ``status, body, elapsed``)."""

    status: int | None
    body: str
    elapsed: float


@dataclass
class MediaItem:
    media_id: str
    data: bytes = field(repr=False)
    content_type: str
    filename: str
    type: str
    created_at: float


@dataclass
class Conversation:
    """One customer's session with one kf account."""

    open_kfid: str
    external_userid: str
    state: int = 4
    servicer_userid: str = ""
    last_customer_at: float | None = None
    sends_since_customer: int = 0
    last_welcome_at: float | None = None
    codes_issued: set[int] = field(default_factory=set)  # states that already yielded a trans msg_code


@dataclass
class _AccessToken:
    value: str
    secret: str
    expires_at: float


@dataclass
class _EventCode:
    code: str
    kind: str  # welcome | pool | servicer | end | session_accept | session_end
    open_kfid: str
    external_userid: str
    issued_at: float
    ttl: float
    state: int | None  # the session state the code may be used in (None: any -- the welcome code)
    used: bool = False


class FakeWeCom:
    """An in-process WeCom server for one corp; see the module docstring."""

    def __init__(
        self,
        *,
        corp_id: str = "ww0f1e2d3c4b5a6978",
        secret: str = "kf-app-secret-0123456789abcdefghijklmnopq",
        app_secret: str = "notify-app-secret-0123456789abcdefghijklm",
        agent_id: int = 1000002,
        servicers: tuple[str, ...] = ("zhangsan", "lisi"),
        employees: tuple[str, ...] = ("manager",),
        kf_name: str = "小店客服",
    ) -> None:
        self.corp_id = corp_id
        self.secret = secret  # the self-built app configured for the 微信客服 API
        self.app_secret = app_secret  # a second self-built app (e.g. notifications to employees)
        self.secrets: set[str] = {secret, app_secret}
        self.agent_id = agent_id
        # Callback settings the platform signs/encrypts with (the bot must be configured with the same).
        self.token = "kefu" + _rand(12)
        self.encoding_aes_key = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        self.robot_key = "693a91f6-7xxx-4bc4-97a0-" + _rand(12, "0123456789abcdef")
        self.robot_keys: set[str] = {self.robot_key}
        self.open_kfid = "wk" + _rand(30)
        self.kf_accounts: dict[str, str] = {self.open_kfid: kf_name}
        self.servicers: dict[str, int] = {u: 1 for u in servicers}  # userid -> 1 接待中 / 2 停止接待
        self.employees: set[str] = set(servicers) | set(employees)
        self.page_size: int | None = None  # cap on sync_msg page size (the real one is 1000)
        self.require_token = False  # True: sync_msg without the callback Token fails with 95007
        self.allowed_transitions: dict[int, set[int]] = {0: {1, 2, 3, 4}, 1: {2, 3, 4}, 2: {3, 4}, 3: {3, 4}}

        self.base = ""
        self.api_base = ""

        # Recorders.
        self.calls: list[tuple[str, dict[str, str], Any]] = []
        self.sync_tokens: list[str] = []  # the token of every sync_msg call ("" when none was given)
        self.welcomes: list[Json] = []  # every send_msg_on_event that went through
        self.transitions: list[Json] = []  # every service-state change, with "by"
        self.media: dict[str, MediaItem] = {}
        self.callbacks: list[Json] = []  # every callback / URL check sent to the bot

        self.customers: dict[str, Json] = {}  # name -> customer
        self._by_uid: dict[str, Json] = {}
        self._convs: dict[tuple[str, str], Conversation] = {}
        self._sent: dict[str, list[Json]] = {}  # external_userid -> messages the bot delivered
        self._sent_msgids: dict[str, set[str]] = {}  # open_kfid -> msgids used
        self._robot: dict[str, list[Json]] = {}
        self._robot_times: dict[str, list[float]] = {}
        self._app: dict[str, list[Json]] = {}
        self._msgs: list[Json] = []  # the sync_msg queue, in order (internal keys start with "_")
        self._cursors: dict[str, int] = {}
        self._kf_tokens: dict[str, float] = {}  # callback Token -> issued at
        self._codes: dict[str, _EventCode] = {}
        self._tokens: dict[str, _AccessToken] = {}
        self._current_token: dict[str, str] = {}
        self._rate: dict[str, int] = {}
        self._rate_after: dict[str, int] = {}
        self._slow: dict[str, float] = {}
        self._offset = 0.0
        self._app_msg_ids = itertools.count(4561255354251345929)
        self._server: TestServer | None = None
        self._http: aiohttp.ClientSession | None = None
        self.last_echo = ""

        self._routes: dict[str, tuple[Any, bool]] = {
            "gettoken": (self._gettoken, False),
            "kf/sync_msg": (self._sync_msg, True),
            "kf/send_msg": (self._send_msg, True),
            "kf/send_msg_on_event": (self._send_msg_on_event, True),
            "kf/service_state/get": (self._state_get, True),
            "kf/service_state/trans": (self._state_trans, True),
            "kf/customer/batchget": (self._customer_batchget, True),
            "kf/account/list": (self._account_list, True),
            "kf/servicer/list": (self._servicer_list, True),
            "media/upload": (self._media_upload, True),
            "media/get": (self._media_get, True),
            "message/send": (self._message_send, True),
            "webhook/send": (self._webhook_send, False),
        }

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        app = web.Application(client_max_size=40 * 1024 * 1024)
        app.router.add_route("*", "/cgi-bin/{path:.+}", self._dispatch)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        self.base = f"http://127.0.0.1:{self._server.port}"
        self.api_base = f"{self.base}/cgi-bin/"
        self._http = aiohttp.ClientSession()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._server is not None:
            await self._server.close()
            self._server = None

    def webhook_url(self, key: str | None = None) -> str:
        return f"{self.api_base}webhook/send?key={key or self.robot_key}"

    # ------------------------------------------------------------------ clock and faults

    def now(self) -> float:
        """The fake's clock (real time plus everything :meth:`advance` added)."""
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        self._offset += seconds

    def expire_tokens(self) -> None:
        """Every access_token issued so far answers 42001 from now on; gettoken issues new ones."""
        for tok in self._tokens.values():
            tok.expires_at = min(tok.expires_at, self.now() - 1)
        self._current_token.clear()

    def revoke_tokens(self) -> None:
        """Every access_token issued so far answers 40014 (invalid) from now on, as after a secret reset."""
        self._tokens.clear()
        self._current_token.clear()

    def rate_limit(self, path: str, times: int = 1, *, after: int = 0) -> None:
        """The next ``times`` calls of ``path`` (e.g. "kf/send_msg") answer 45009, once ``after`` more
        calls have gone through (e.g. after=1: page 2 of a sync_msg burst is refused)."""
        self._rate[self._norm(path)] = times
        self._rate_after[self._norm(path)] = after

    def cursor_position(self, cursor: str) -> int:
        """How many queued messages lie before a sync_msg cursor this server issued (-1: never issued)."""
        return self._cursors.get(cursor, -1)

    def slow(self, path: str, seconds: float) -> None:
        """Delay every answer of ``path`` by ``seconds`` (0 to stop)."""
        self._slow[self._norm(path)] = seconds

    @staticmethod
    def _norm(path: str) -> str:
        path = path.split("?", 1)[0].lstrip("/")
        return path.removeprefix("cgi-bin/")

    # ------------------------------------------------------------------ the world

    def customer(self, name: str) -> Json:
        """The WeChat customer called ``name`` (created on first use): external_userid, nickname, avatar..."""
        if name not in self.customers:
            uid = "wm" + _rand(30)
            c = {"external_userid": uid, "nickname": name, "avatar": f"https://wx.qlogo.cn/mmhead/{_rand(20)}/0",
                 "gender": 0, "unionid": "o" + _rand(27)}
            self.customers[name] = c
            self._by_uid[uid] = c
        return self.customers[name]

    def _uid(self, user: Json | str) -> str:
        if isinstance(user, dict):
            return user["external_userid"]
        if user in self._by_uid:
            return user
        return self.customer(user)["external_userid"]

    def conversation(self, user: Json | str, open_kfid: str | None = None) -> Conversation:
        """The session record of ``user`` with a kf account (expired to state 4 48 h after the last message)."""
        uid, kfid = self._uid(user), open_kfid or self.open_kfid
        conv = self._convs.get((kfid, uid))
        if conv is None:
            conv = self._convs[(kfid, uid)] = Conversation(kfid, uid)
        if conv.state != 4 and conv.last_customer_at is not None and self.now() - conv.last_customer_at > SESSION_WINDOW:
            self._set_state(conv, 4, "", by="expire")
        return conv

    def service_state(self, user: Json | str, open_kfid: str | None = None) -> int:
        return self.conversation(user, open_kfid).state

    def _set_state(self, conv: Conversation, state: int, servicer: str, *, by: str) -> None:
        self.transitions.append({"open_kfid": conv.open_kfid, "external_userid": conv.external_userid,
                                 "from": conv.state, "to": state, "servicer_userid": servicer, "by": by,
                                 "at": self.now()})
        if state == 4:
            conv.codes_issued.clear()
        conv.state, conv.servicer_userid = state, servicer if state == 3 else ""

    def sent_to(self, user: Json | str) -> list[Json]:
        """Messages the bot delivered to ``user`` (send_msg and send_msg_on_event), oldest first."""
        return list(self._sent.get(self._uid(user), []))

    def robot_messages(self, key: str | None = None) -> list[Json]:
        return list(self._robot.get(key or self.robot_key, []))

    def app_messages(self, userid: str) -> list[Json]:
        return list(self._app.get(userid, []))

    def kf_token(self) -> str:
        """A fresh callback Token, as put in a kf_msg_or_event callback (valid 10 minutes for sync_msg)."""
        tok = "ENC" + _rand(44)
        self._kf_tokens[tok] = self.now()
        return tok

    # ------------------------------------------------------------------ queueing what happens in WeChat

    def _queue(self, msg: Json, open_kfid: str) -> Json:
        msg = {"msgid": _rand(44), **msg}
        msg["_kfid"] = open_kfid
        self._msgs.append(msg)
        return {k: v for k, v in msg.items() if not k.startswith("_")}

    def _customer_turn(self, conv: Conversation) -> None:
        if conv.state == 4:
            self._set_state(conv, 0, "", by="customer")
        conv.last_customer_at = self.now()
        conv.sends_since_customer = 0

    def customer_text(self, user: Json | str, text: str, *, menu_id: str | None = None,
                      open_kfid: str | None = None) -> Json:
        """The customer types ``text`` (or taps a msgmenu item: ``menu_id``)."""
        conv = self.conversation(user, open_kfid)
        self._customer_turn(conv)
        body: Json = {"content": text}
        if menu_id is not None:
            body["menu_id"] = menu_id
        return self._queue({"open_kfid": conv.open_kfid, "external_userid": conv.external_userid,
                            "send_time": int(self.now()), "origin": 3, "msgtype": "text", "text": body},
                           conv.open_kfid)

    def customer_image(self, user: Json | str, data: bytes, *, content_type: str = "image/jpeg",
                       open_kfid: str | None = None) -> Json:
        """The customer sends a picture: its bytes are served by media/get under the message's media_id."""
        conv = self.conversation(user, open_kfid)
        self._customer_turn(conv)
        item = self._store_media(data, content_type, "image", None)
        return self._queue({"open_kfid": conv.open_kfid, "external_userid": conv.external_userid,
                            "send_time": int(self.now()), "origin": 3, "msgtype": "image",
                            "image": {"media_id": item.media_id}}, conv.open_kfid)

    def enter_session(self, user: Json | str, scene_param: str = "", *, scene: str = "",
                      open_kfid: str | None = None) -> str | None:
        """The customer opens the chat (e.g. through a kf link with ``scene_param``).  Returns the welcome_code,
        or None when WeCom gives none (a welcome or a customer message in the last 48 h -- 95122)."""
        conv = self.conversation(user, open_kfid)
        now = self.now()
        fresh = (conv.last_welcome_at is None or now - conv.last_welcome_at > SESSION_WINDOW) and (
            conv.last_customer_at is None or now - conv.last_customer_at > SESSION_WINDOW)
        event: Json = {"event_type": "enter_session", "open_kfid": conv.open_kfid,
                       "external_userid": conv.external_userid, "scene": scene, "scene_param": scene_param}
        code = None
        if fresh:
            code = self._issue_code("welcome", conv, ttl=20, state=None)
            event["welcome_code"] = code
        self._queue({"send_time": int(now), "origin": 4, "msgtype": "event", "event": event}, conv.open_kfid)
        return code

    def servicer_text(self, userid: str, user: Json | str, text: str, *, open_kfid: str | None = None) -> Json:
        """A servicer types ``text`` to the customer in their WeCom client (origin 5)."""
        conv = self.conversation(user, open_kfid)
        if conv.state == 4:  # 94669: sending in an ended session takes it over (change_type 4)
            self._set_state(conv, 3, userid, by="servicer")
            self._queue({"send_time": int(self.now()), "origin": 4, "msgtype": "event",
                         "event": {"event_type": "session_status_change", "open_kfid": conv.open_kfid,
                                   "external_userid": conv.external_userid, "change_type": 4,
                                   "new_servicer_userid": userid}}, conv.open_kfid)
        return self._queue({"open_kfid": conv.open_kfid, "external_userid": conv.external_userid,
                            "send_time": int(self.now()), "origin": 5, "servicer_userid": userid,
                            "msgtype": "text", "text": {"content": text}}, conv.open_kfid)

    def send_fail(self, msgid: str, fail_type: int = 0) -> Json:
        """A message the bot sent with ``msgid`` did not arrive (fail_type: 0 unknown, 4 over 48 h, 5 session
        closed, 6 over 5 messages, 10 refused by the user ...): queues a msg_send_fail event."""
        for uid, sent in self._sent.items():
            for rec in sent:
                if rec["msgid"] == msgid:
                    rec["failed"] = fail_type
                    return self._queue({"send_time": int(self.now()), "origin": 4, "msgtype": "event",
                                        "event": {"event_type": "msg_send_fail", "open_kfid": rec["open_kfid"],
                                                  "external_userid": uid, "fail_msgid": msgid,
                                                  "fail_type": fail_type}}, rec["open_kfid"])
        raise KeyError(f"the bot never sent a message with msgid {msgid!r}")

    def servicer_status_change(self, userid: str, status: int, *, stop_type: int = 0,
                               open_kfid: str | None = None) -> Json:
        """A servicer switches to 1 (接待中) or 2 (停止接待; stop_type 0 停止 / 1 暂时挂起)."""
        self.servicers[userid] = status
        event: Json = {"event_type": "servicer_status_change", "servicer_userid": userid, "status": status,
                       "open_kfid": open_kfid or self.open_kfid}
        if status == 2:
            event["stop_type"] = stop_type
        return self._queue({"send_time": int(self.now()), "origin": 4, "msgtype": "event", "event": event},
                           open_kfid or self.open_kfid)

    def session_status_change(self, user: Json | str, change_type: int, *, new_servicer: str = "",
                              old_servicer: str = "", open_kfid: str | None = None) -> Json:
        """A servicer acts in their client: 1 takes the customer from the pool, 2 transfers to
        ``new_servicer``, 3 ends the session, 4 re-opens an ended one.  Change 1 and 3 carry a msg_code."""
        conv = self.conversation(user, open_kfid)
        old_servicer = old_servicer or conv.servicer_userid
        event: Json = {"event_type": "session_status_change", "open_kfid": conv.open_kfid,
                       "external_userid": conv.external_userid, "change_type": change_type}
        if change_type in (1, 2, 4):
            self._set_state(conv, 3, new_servicer, by="servicer")
            event["new_servicer_userid"] = new_servicer
        if change_type in (2, 3):
            event["old_servicer_userid"] = old_servicer
        if change_type == 1:
            event["msg_code"] = self._issue_code("session_accept", conv, ttl=SESSION_WINDOW, state=3)
        if change_type == 3:
            self._set_state(conv, 4, "", by="servicer")
            event["msg_code"] = self._issue_code("session_end", conv, ttl=20, state=4)
        return self._queue({"send_time": int(self.now()), "origin": 4, "msgtype": "event", "event": event},
                           conv.open_kfid)

    def _issue_code(self, kind: str, conv: Conversation, *, ttl: float, state: int | None) -> str:
        code = _rand(43, _ALNUM + "_-")
        self._codes[code] = _EventCode(code, kind, conv.open_kfid, conv.external_userid, self.now(), ttl, state)
        return code

    # ------------------------------------------------------------------ plaintext callback XML

    def kf_event_xml(self, token: str | None = None, *, open_kfid: str | None = None,
                     create_time: int | None = None) -> str:
        """The 微信客服 "there is news, call sync_msg" event (94670); a fresh Token when none is given."""
        token = token or self.kf_token()
        return ("<xml>"
                f"<ToUserName>{_cdata(self.corp_id)}</ToUserName>"
                f"<CreateTime>{create_time or int(self.now())}</CreateTime>"
                f"<MsgType>{_cdata('event')}</MsgType>"
                f"<Event>{_cdata('kf_msg_or_event')}</Event>"
                f"<Token>{_cdata(token)}</Token>"
                f"<OpenKfId>{_cdata(open_kfid or self.open_kfid)}</OpenKfId>"
                "</xml>")

    def app_text_xml(self, userid: str, content: str, *, msg_id: int | None = None, agent_id: int | None = None,
                     create_time: int | None = None) -> str:
        """An employee writes ``content`` in the self-built app's chat (message receiving, 90239)."""
        return ("<xml>"
                f"<ToUserName>{_cdata(self.corp_id)}</ToUserName>"
                f"<FromUserName>{_cdata(userid)}</FromUserName>"
                f"<CreateTime>{create_time or int(self.now())}</CreateTime>"
                f"<MsgType>{_cdata('text')}</MsgType>"
                f"<Content>{_cdata(content)}</Content>"
                f"<MsgId>{msg_id or next(self._app_msg_ids)}</MsgId>"
                f"<AgentID>{agent_id or self.agent_id}</AgentID>"
                "</xml>")

    def app_event_xml(self, userid: str, event: str, *, event_key: str = "", agent_id: int | None = None,
                      create_time: int | None = None) -> str:
        """An app event from an employee (enter_agent, click ...; 90240)."""
        return ("<xml>"
                f"<ToUserName>{_cdata(self.corp_id)}</ToUserName>"
                f"<FromUserName>{_cdata(userid)}</FromUserName>"
                f"<CreateTime>{create_time or int(self.now())}</CreateTime>"
                f"<MsgType>{_cdata('event')}</MsgType>"
                f"<AgentID>{agent_id or self.agent_id}</AgentID>"
                f"<Event>{_cdata(event)}</Event>"
                f"<EventKey>{_cdata(event_key)}</EventKey>"
                "</xml>")

    # ------------------------------------------------------------------ calling the bot

    def _encrypt(self, plaintext: str, *, token: str, key: str, receive_id: str, timestamp: str,
                 nonce: str, tamper: str | None) -> tuple[str, str]:
        """(Encrypt, msg_signature) as WeCom makes them, using wechatpy's implementation of the scheme."""
        if tamper == "aes_key":  # encrypted with some other key, correctly signed
            key = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        if tamper == "corp_id":  # the receiveid inside the ciphertext is another corp's
            receive_id = "ww" + _rand(16, "0123456789abcdef")
        reply = WeChatCrypto(token, key, receive_id).encrypt_message(plaintext, nonce, timestamp)
        parsed = xmltodict.parse(reply)["xml"]
        encrypt, signature = parsed["Encrypt"], parsed["MsgSignature"]
        if tamper == "signature":
            signature = hashlib.sha1(secrets.token_bytes(16)).hexdigest()
        return encrypt, signature

    def _timestamp(self, tamper: str | None) -> str:
        return str(int(self.now()) - (3600 if tamper == "stale" else 0))

    async def callback(self, url: str, xml_plaintext: str, *, token: str | None = None,
                       encoding_aes_key: str | None = None, corp_id: str | None = None,
                       agent_id: int | str | None = None, tamper: str | None = None, timeout: float = 5.0,
                       retries: int = 0) -> CallbackResult:
        """POST ``xml_plaintext`` to the bot at ``url`` the way WeCom does: encrypted (AES-256-CBC, IV = key[:16],
        PKCS#7 to 32-byte blocks, random(16) + len(4, big-endian) + msg + receiveid), in
        ``<xml><ToUserName/><Encrypt/><AgentID/></xml>`` with msg_signature, timestamp, nonce in the query.

        ``tamper``: "signature" (forged msg_signature), "stale" (correctly signed, timestamp an hour old),
        "corp_id" (receiveid of another corp), "aes_key" (encrypted with another key).  The bot has ``timeout``
        seconds (WeCom waits 5); past that the status is None.  ``retries``: resend the same request that many
        times more while the bot fails or times out, like WeCom (which retries 3 times)."""
        token = token or self.token
        key = encoding_aes_key or self.encoding_aes_key
        corp_id = corp_id or self.corp_id
        agent = self.agent_id if agent_id is None else agent_id
        timestamp, nonce = self._timestamp(tamper), _rand(10, string.digits)
        encrypt, signature = self._encrypt(xml_plaintext, token=token, key=key, receive_id=corp_id,
                                           timestamp=timestamp, nonce=nonce, tamper=tamper)
        body = (f"<xml><ToUserName>{_cdata(corp_id)}</ToUserName><Encrypt>{_cdata(encrypt)}</Encrypt>"
                + (f"<AgentID>{_cdata(agent)}</AgentID>" if agent != "" else "") + "</xml>")
        params = {"msg_signature": signature, "timestamp": timestamp, "nonce": nonce}
        result = CallbackResult(None, "", 0.0)
        for _ in range(retries + 1):
            result = await self._send("POST", url, params, body.encode(), timeout)
            self.callbacks.append({"method": "POST", "url": url, "params": params, "body": body,
                                   "plaintext": xml_plaintext, "tamper": tamper, "result": result})
            if result.status == 200:
                break
        return result

    async def verify_url(self, url: str, *, token: str | None = None, encoding_aes_key: str | None = None,
                         corp_id: str | None = None, echo: str | None = None, tamper: str | None = None,
                         timeout: float = 5.0) -> CallbackResult:
        """The URL check WeCom does when the callback URL is saved: GET with msg_signature, timestamp, nonce and
        an encrypted echostr; the bot must answer the decrypted ``echo`` (kept in :attr:`last_echo`) as plain
        text within a second or so.  ``tamper`` as for :meth:`callback`."""
        token = token or self.token
        key = encoding_aes_key or self.encoding_aes_key
        corp_id = corp_id or self.corp_id
        echo = echo or _rand(19, string.digits)
        self.last_echo = echo
        timestamp, nonce = self._timestamp(tamper), _rand(9, string.digits)
        encrypt, signature = self._encrypt(echo, token=token, key=key, receive_id=corp_id, timestamp=timestamp,
                                           nonce=nonce, tamper=tamper)
        params = {"msg_signature": signature, "timestamp": timestamp, "nonce": nonce, "echostr": encrypt}
        result = await self._send("GET", url, params, None, timeout)
        self.callbacks.append({"method": "GET", "url": url, "params": params, "body": None, "plaintext": echo,
                               "tamper": tamper, "result": result})
        return result

    async def _send(self, method: str, url: str, params: dict[str, str], data: bytes | None,
                    timeout: float) -> CallbackResult:
        assert self._http is not None, "start() the fake first"
        started = time.monotonic()
        headers = {"Content-Type": "text/xml", "User-Agent": "Mozilla/4.0"} if data is not None else {}
        try:
            async with self._http.request(method, url, params=params, data=data, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                text = await resp.text()
                return CallbackResult(resp.status, text, time.monotonic() - started)
        except TimeoutError:
            return CallbackResult(None, "", time.monotonic() - started)

    # ------------------------------------------------------------------ HTTP plumbing

    def _json(self, payload: Json) -> web.Response:
        return web.Response(text=json.dumps(payload, ensure_ascii=False), content_type="application/json",
                            charset="UTF-8")

    @staticmethod
    def _hinted(code: int, msg: str) -> str:
        return (f"{msg}, hint: [{int(time.time())}{_rand(6, string.digits)}], from ip: 127.0.0.1, "
                f"more info at https://open.work.weixin.qq.com/devtool/query?e={code}")

    async def _read_body(self, request: web.Request) -> Any:
        if request.content_type.startswith("multipart/"):
            form: Json = {}
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, aiohttp.BodyPartReader):
                    continue
                data = await part.read(decode=False)
                if part.filename is not None:
                    form[part.name or ""] = {"filename": part.filename,
                                             "content_type": part.headers.get("Content-Type",
                                                                              "application/octet-stream"),
                                             "data": bytes(data)}
                else:
                    form[part.name or ""] = bytes(data).decode("utf-8", "replace")
            return form
        raw = await request.read()
        if not raw:
            return None
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise WeComError(47001, "data format error, Warning: wrong json format.") from None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = self._norm(request.match_info["path"])
        params = dict(request.query)
        try:
            body = await self._read_body(request)
        except WeComError as e:
            self.calls.append((path, params, None))
            return self._json({"errcode": e.code, "errmsg": self._hinted(e.code, e.msg)})
        self.calls.append((path, params, body))
        try:
            if self._slow.get(path):
                await asyncio.sleep(self._slow[path])
            entry = self._routes.get(path)
            if entry is None:
                return web.Response(status=404, text="404 page not found")
            handler, needs_token = entry
            if self._rate.get(path) and self._rate_after.get(path):
                self._rate_after[path] -= 1
            elif self._rate.get(path):
                self._rate[path] -= 1
                raise WeComError(45009, "api freq out of limit")
            if needs_token:
                self._check_token(params)
            result = handler(request, params, body if isinstance(body, dict) else {})
            if isinstance(result, web.StreamResponse):
                return result
            return self._json({"errcode": 0, "errmsg": "ok", **result})
        except WeComError as e:
            return self._json({"errcode": e.code, "errmsg": self._hinted(e.code, e.msg)})

    def _check_token(self, params: dict[str, str]) -> _AccessToken:
        value = params.get("access_token", "")
        if not value:
            raise WeComError(41001, "access_token missing")
        tok = self._tokens.get(value)
        if tok is None:
            raise WeComError(40014, "invalid access_token")
        if self.now() >= tok.expires_at:
            raise WeComError(42001, "access_token expired")
        return tok

    # ------------------------------------------------------------------ gettoken

    def _gettoken(self, request: web.Request, params: dict[str, str], body: Json) -> Json:
        corpid, secret = params.get("corpid", ""), params.get("corpsecret", "")
        if not corpid:
            raise WeComError(41002, "corpid missing")
        if corpid != self.corp_id:
            raise WeComError(40013, "invalid corpid")
        if not secret:
            raise WeComError(41004, "corpsecret missing")
        if secret not in self.secrets:
            raise WeComError(40001, "invalid credential")
        # 91039: within its validity gettoken returns the same token; a new one once it has expired.
        current = self._tokens.get(self._current_token.get(secret, ""))
        if current is None or current.expires_at - self.now() <= 0:
            current = _AccessToken(_rand(64, _ALNUM + "-_"), secret, self.now() + TOKEN_TTL)
            self._tokens[current.value] = current
            self._current_token[secret] = current.value
        return {"access_token": current.value, "expires_in": int(current.expires_at - self.now())}

    # ------------------------------------------------------------------ 微信客服

    def _kfid(self, body: Json, key: str = "open_kfid") -> str:
        kfid = body.get(key) or ""
        if kfid not in self.kf_accounts:
            raise WeComError(95000, "invalid open_kfid")
        return kfid

    def _known_uid(self, uid: object) -> str:
        if not isinstance(uid, str) or uid not in self._by_uid:
            raise WeComError(40096, "invalid external userid")
        return uid

    def _cursor(self, pos: int) -> str:
        cursor = _rand(19)
        self._cursors[cursor] = pos
        return cursor

    def _sync_msg(self, request: web.Request, params: dict[str, str], body: Json) -> Json:
        token = body.get("token") or ""
        self.sync_tokens.append(token)
        if token:
            issued = self._kf_tokens.get(token)
            if issued is None or self.now() - issued > KF_TOKEN_TTL:
                raise WeComError(95007, "invalid msg token")
        elif self.require_token:
            raise WeComError(95007, "invalid msg token")
        kfid = self._kfid(body) if body.get("open_kfid") else None
        cursor = body.get("cursor") or ""
        if cursor:
            if cursor not in self._cursors:
                raise WeComError(40058, "invalid cursor")
            start = self._cursors[cursor]
        else:
            start = 0
        limit = int(body.get("limit") or 1000)
        limit = max(1, min(limit, 1000, self.page_size or 1000))
        oldest = self.now() - SYNC_WINDOW
        picked: list[int] = []
        more = False
        for i in range(start, len(self._msgs)):
            msg = self._msgs[i]
            if (kfid and msg["_kfid"] != kfid) or msg["send_time"] < oldest:
                continue
            if len(picked) == limit:
                more = True
                break
            picked.append(i)
        end = picked[-1] + 1 if picked else len(self._msgs)
        return {"next_cursor": self._cursor(end), "has_more": int(more),
                "msg_list": [{k: v for k, v in self._msgs[i].items() if not k.startswith("_")} for i in picked]}

    @staticmethod
    def _check_msgid(msgid: object) -> str:
        if not isinstance(msgid, str):
            raise WeComError(40058, "invalid msgid")
        if len(msgid.encode()) > 32:
            raise WeComError(40058, "msgid exceed max length")
        if any(ch not in _ALNUM + "_-" for ch in msgid):
            raise WeComError(40058, "invalid msgid")
        return msgid

    def _check_kf_content(self, msgtype: object, body: Json, allowed: set[str]) -> str:
        if msgtype not in allowed:
            raise WeComError(40008, "invalid message type")
        payload = body.get(msgtype)
        if not isinstance(payload, dict):
            raise WeComError(40058, f"missing {msgtype}")
        if msgtype == "text":
            content = payload.get("content") or ""
            if not content:
                raise WeComError(44004, "empty content")
            if len(content.encode()) > 2048:
                raise WeComError(45002, "content size out of limit")
            return content
        if msgtype in ("image", "voice", "video", "file"):
            media_id = payload.get("media_id") or ""
            if self._live_media(media_id) is None:
                raise WeComError(40007, "invalid media_id")
            return media_id
        if msgtype == "msgmenu":
            items = payload.get("list") or []
            if len(items) > 10:
                raise WeComError(95008, "menu item count exceed limit")
            for item in items:
                if not isinstance(item, dict) or item.get("type") not in _MENU_ITEM_TYPES:
                    raise WeComError(95009, "invalid menu item type")
            return str(payload.get("head_content", ""))
        return ""

    def _deliver(self, conv: Conversation, msgid: str, msgtype: str, body: Json, content: str, via: str) -> None:
        self._sent_msgids.setdefault(conv.open_kfid, set()).add(msgid)
        self._sent.setdefault(conv.external_userid, []).append(
            {"msgid": msgid, "msgtype": msgtype, "content": content, msgtype: body.get(msgtype), "origin": "bot",
             "via": via, "open_kfid": conv.open_kfid, "send_time": int(self.now()), "failed": None})

    def _new_msgid(self, body: Json, kfid: str) -> str:
        if "msgid" in body and body["msgid"] != "":
            msgid = self._check_msgid(body["msgid"])
            if msgid in self._sent_msgids.get(kfid, set()):
                raise WeComError(40058, "duplicate msgid")
            return msgid
        return _rand(32)

    def _send_msg(self, request: web.Request, params: dict[str, str], body: Json) -> Json:
        kfid = self._kfid(body)
        uid = self._known_uid(body.get("touser"))
        msgtype = body.get("msgtype")
        content = self._check_kf_content(msgtype, body, _KF_MSGTYPES)
        msgid = self._new_msgid(body, kfid)
        conv = self.conversation(uid, kfid)
        if conv.last_customer_at is None:
            raise WeComError(95018, "send msg session status invalid")
        if self.now() - conv.last_customer_at > SESSION_WINDOW:
            raise WeComError(95002, "send msg time limit")
        if conv.state not in (0, 1):
            raise WeComError(95018, "send msg session status invalid")
        if conv.sends_since_customer >= SENDS_PER_TURN:
            raise WeComError(95001, "send msg count limit")
        conv.sends_since_customer += 1
        if conv.state == 0:
            self._set_state(conv, 1, "", by="send_msg")
        self._deliver(conv, msgid, str(msgtype), body, content, "send_msg")
        return {"msgid": msgid}

    def _send_msg_on_event(self, request: web.Request, params: dict[str, str], body: Json) -> Json:
        code = self._codes.get(body.get("code") or "")
        if code is None or code.used or self.now() - code.issued_at > code.ttl:
            raise WeComError(40029, "invalid code")
        msgtype = body.get("msgtype")
        content = self._check_kf_content(msgtype, body, {"text", "msgmenu"})
        msgid = self._new_msgid(body, code.open_kfid)
        conv = self.conversation(code.external_userid, code.open_kfid)
        if code.state is not None and conv.state != code.state:
            raise WeComError(95018, "send msg session status invalid")
        code.used = True
        if code.kind == "welcome":
            conv.last_welcome_at = self.now()
        self._deliver(conv, msgid, str(msgtype), body, content, "send_msg_on_event")
        self.welcomes.append({"code": code.code, "kind": code.kind, "msgid": msgid, "msgtype": msgtype,
                              "content": content, msgtype: body.get(msgtype), "open_kfid": code.open_kfid,
                              "external_userid": code.external_userid})
        return {"msgid": msgid}

    def _state_get(self, request: web.Request, params: dict[str, str], body: Json) -> Json:
        conv = self.conversation(self._known_uid(body.get("external_userid")), self._kfid(body))
        return {"service_state": conv.state, "servicer_userid": conv.servicer_userid}

    def _state_trans(self, request: web.Request, params: dict[str, str], body: Json) -> Json:
        conv = self.conversation(self._known_uid(body.get("external_userid")), self._kfid(body))
        target = body.get("service_state")
        if not isinstance(target, int) or target not in range(5):
            raise WeComError(40058, "invalid service_state")
        servicer = body.get("servicer_userid") or ""
        if conv.state == 4:
            raise WeComError(95013, "session already closed")
        if target not in self.allowed_transitions.get(conv.state, set()):
            raise WeComError(95016, "invalid service state transfer")
        if target == 3:
            if servicer not in self.servicers:
                raise WeComError(95014, "user is not servicer")
            if self.servicers[servicer] != 1:
                raise WeComError(95019, "servicer stopped receiving")
        msg_code = ""
        if target == 4 or (target in (2, 3) and target not in conv.codes_issued):
            kind = {2: "pool", 3: "servicer", 4: "end"}[target]
            ttl = 20 if target == 4 else SESSION_WINDOW
            msg_code = self._issue_code(kind, conv, ttl=ttl, state=target)
            conv.codes_issued.add(target)
        self._set_state(conv, target, servicer, by="api")
        return {"msg_code": msg_code}

    def _customer_batchget(self, request: web.Request, params: dict[str, str], body: Json) -> Json:
        ids = body.get("external_userid_list") or []
        found = [self._by_uid[u] for u in ids if u in self._by_uid]
        return {"customer_list": [dict(c) for c in found],
                "invalid_external_userid": [u for u in ids if u not in self._by_uid]}

    def _account_list(self, request: web.Request, params: dict[str, str], body: Json) -> Json:
        return {"account_list": [{"open_kfid": k, "name": n, "avatar": "https://wework.qpic.cn/wwhead/x/0",
                                  "manage_privilege": True} for k, n in self.kf_accounts.items()]}

    def _servicer_list(self, request: web.Request, params: dict[str, str], body: Json) -> Json:
        self._kfid(params)
        return {"servicer_list": [{"userid": u, "status": 0 if s == 1 else 1} for u, s in self.servicers.items()]}

    # ------------------------------------------------------------------ media

    def _store_media(self, data: bytes, content_type: str, mtype: str, filename: str | None) -> MediaItem:
        media_id = "3" + _rand(63, _ALNUM + "-_")
        ext = _EXT.get(content_type, "bin")
        item = MediaItem(media_id, data, content_type, filename or f"{media_id[:16]}.{ext}", mtype, self.now())
        self.media[media_id] = item
        return item

    def _live_media(self, media_id: str) -> MediaItem | None:
        item = self.media.get(media_id)
        if item is None or self.now() - item.created_at > MEDIA_TTL:
            return None
        return item

    def _media_upload(self, request: web.Request, params: dict[str, str], body: Json) -> Json:
        mtype = params.get("type", "")
        if mtype not in _MEDIA_TYPES:
            raise WeComError(40005, "invalid file type")
        part = body.get("media")
        if not isinstance(part, dict):
            raise WeComError(41006, "media data missing")
        data: bytes = part["data"]
        if not data:
            raise WeComError(44001, "empty media data")
        if len(data) < 5:
            raise WeComError(40006, "invalid file size")  # 90253: every file must be bigger than 5 bytes
        if len(data) > _MEDIA_MAX[mtype]:
            raise WeComError(40009 if mtype == "image" else 40006, "invalid file size")
        item = self._store_media(data, part["content_type"], mtype, part["filename"])
        return {"type": mtype, "media_id": item.media_id, "created_at": str(int(item.created_at))}

    def _media_get(self, request: web.Request, params: dict[str, str], body: Json) -> web.StreamResponse:
        item = self._live_media(params.get("media_id", ""))
        if item is None:
            raise WeComError(40007, "invalid media_id")
        headers = {"Content-disposition": f'attachment; filename="{item.filename}"',
                   "Cache-Control": "no-cache, must-revalidate", "Accept-Ranges": "bytes"}
        data, status = item.data, 200
        rng = request.headers.get("Range", "")
        if rng.startswith("bytes="):
            first, _, last = rng[6:].partition("-")
            lo = int(first or 0)
            hi = min(int(last) if last else len(data) - 1, len(data) - 1)
            headers["Content-Range"] = f"bytes {lo}-{hi}/{len(data)}"
            data, status = data[lo:hi + 1], 206
        return web.Response(body=data, status=status, content_type=item.content_type, headers=headers)

    # ------------------------------------------------------------------ app messages and the group robot

    def _message_send(self, request: web.Request, params: dict[str, str], body: Json) -> Json:
        try:
            agentid = int(body.get("agentid"))
        except (TypeError, ValueError):
            raise WeComError(40056, "invalid agentid") from None
        if agentid != self.agent_id:
            raise WeComError(40056, "invalid agentid")
        msgtype = body.get("msgtype")
        if msgtype not in _APP_MSGTYPES:
            raise WeComError(40008, "invalid message type")
        payload = body.get(msgtype)
        if msgtype in ("text", "markdown") and not (isinstance(payload, dict) and payload.get("content")):
            raise WeComError(44004, "empty content")
        touser = str(body.get("touser") or "")
        users = sorted(self.employees) if touser == "@all" else [u for u in touser.split("|") if u]
        valid = [u for u in users if u in self.employees]
        invalid = [u for u in users if u not in self.employees]
        if not valid and not body.get("toparty") and not body.get("totag"):
            raise WeComError(81013, "user & party & tag all invalid")
        msgid = _rand(40)
        for u in valid:
            self._app.setdefault(u, []).append(
                {"msgid": msgid, "msgtype": msgtype, "content": (payload or {}).get("content")
                 if isinstance(payload, dict) else None, msgtype: payload, "agentid": agentid})
        return {"invaliduser": "|".join(invalid), "invalidparty": "", "invalidtag": "", "unlicenseduser": "",
                "msgid": msgid, "response_code": _rand(40)}

    def _webhook_send(self, request: web.Request, params: dict[str, str], body: Json) -> Json:
        key = params.get("key", "")
        if key not in self.robot_keys:
            raise WeComError(93000, "invalid webhook url")
        now = self.now()
        times = [t for t in self._robot_times.get(key, []) if now - t < 60]
        if len(times) >= ROBOT_LIMIT:
            self._robot_times[key] = times
            raise WeComError(45009, "api freq out of limit")
        msgtype = body.get("msgtype")
        if msgtype not in _ROBOT_MSGTYPES:
            raise WeComError(40008, "invalid message type")
        payload = body.get(msgtype)
        if not isinstance(payload, dict):
            raise WeComError(40058, f"missing {msgtype}")
        if msgtype == "text":
            content = payload.get("content") or ""
            if not content:
                raise WeComError(44004, "empty content")
            if len(content.encode()) > 2048:
                raise WeComError(45002, "content size out of limit")
        elif msgtype in ("markdown", "markdown_v2"):
            content = payload.get("content") or ""
            if not content:
                raise WeComError(44004, "empty content")
            if len(content.encode()) > 4096:
                raise WeComError(45002, "content size out of limit")
        elif msgtype == "image":
            try:
                raw = base64.b64decode(payload.get("base64") or "", validate=True)
            except ValueError:
                raise WeComError(40058, "invalid image base64") from None
            if not raw or hashlib.md5(raw).hexdigest() != payload.get("md5"):
                raise WeComError(40058, "image md5 mismatch")
            content = payload.get("md5")
        elif msgtype == "news":
            articles = payload.get("articles") or []
            if not 1 <= len(articles) <= 8:
                raise WeComError(45008, "article size out of limit")
            content = articles[0].get("title", "")
        else:
            content = ""
        times.append(now)
        self._robot_times[key] = times
        self._robot.setdefault(key, []).append({"msgtype": msgtype, "content": content, msgtype: payload})
        return {}
