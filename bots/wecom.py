"""WeCom (企业微信): WeChat buyers through 微信客服 (kf), agents in WeCom.

Inbound (POST /api/wecom/callback, GET for the URL check): the callback is
verified (msg_signature, a fresh timestamp) and decrypted with wechatpy's
WeChatCrypto, stored in the ingress, and answered at once — nothing slow runs
inside it. Workers then:
  - pull kf messages with kf/sync_msg (the callback only says "there is news"),
    page while has_more, and keep next_cursor after every page; every message is
    stored under its msgid (a burst loses nothing, a repeat is dropped);
  - turn each message into an Event: text and menu clicks, images (media_id,
    downloaded off the callback path), enter_session (its welcome_code greets),
    msg_send_fail (shown on the case), and messages a servicer typed in WeCom
    (origin 5: recorded on the case, not sent again);
  - turn agents' messages to the self-built app ("接单 K1042", "回复 ...", ...)
    into desk commands.

Outbound: one merged kf message per turn (buttons become a msgmenu), kf's rules
kept (send only in states 0/1, within 48 h of the buyer's last message, at most 5
per buyer message: the desk is told plainly when a reply cannot go out), the
outbox key as msgid (a retry is not delivered twice). Case cards go to a WeCom
group through a group robot (send-only, 20 a minute); notices to agents go
through the app.

kf session states: a case keeps the session with the bot (1) so the bot can keep
answering; with `wecom_handoff_pool` it goes to the pool (2). When an agent who has
a WeCom account (settings map kefu names to WeCom userids) takes the case, the
session moves to that servicer (3) and the agent answers in WeCom.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import aiohttp
import xmltodict
from aiohttp import web
from wechatpy.exceptions import APILimitedException, WeChatClientException
from wechatpy.session import SessionStorage
from wechatpy.work import WeChatClient
from wechatpy.work.crypto import WeChatCrypto

from bots import metrics
from bots.base import SendError
from bots.commands import parse_command
from bots.ingress import IngressWorker
from handlers.cards import card_text_within
from handlers.context import Context
from handlers.engine import Engine
from handlers.model import AgentCommand, Buyer, BuyerMessage, Channel, DeskAction, FileInfo, Media, Reply, SendFailed
from handlers.privacy import mask
from state.keys import buyer_target, platform_key, session_key
from state.media import MediaStore, NotAnImage
from state.protocol import IngressRow, LockTimeout, Store
from state.tasks import Stopper, stop_if_cancelled

log = logging.getLogger("kefu.wecom")

PLATFORM = "wecom"
CALLBACK_PATH = "/api/wecom/callback"
MAX_SKEW = 300  # seconds a callback timestamp may be off: older ones are replays
KF_PER_TURN = 5  # kf: at most five messages per buyer message
KF_WINDOW = 48 * 3600  # kf: replies only within 48 h of the buyer's last message
WELCOME_TTL = 20  # a welcome_code is good for 20 s
MAX_TEXT_BYTES = 2000  # kf text is limited to 2048 bytes
ROBOT_BYTES = 2000  # and so is a group robot's text message
ROBOT_PER_MINUTE = 20  # a group robot takes 20 messages a minute (45009 beyond): one window for every process
ROBOT_WINDOW = 60.0
NAME_RETRY = 600.0  # seconds before a failed nickname lookup is tried again
RETRY_LATER = {45009, 45033, -1}  # rate limits, "system busy"
# What the desk is told when WeChat refuses a reply, in words an agent can act on.
PLAIN = {
    95001: "kf: the 5 replies allowed per buyer message are used up; the buyer must write again",
    95002: "kf: more than 48 hours since the buyer's last message; WeChat does not allow a reply now",
    95018: "kf: the session is with a servicer in WeCom or has ended; the bot may not send",
    95013: "kf: the session has ended",
}
REASONS = {95001: "kf_budget", 95002: "kf_window", 95018: "kf_servicer", 95013: "kf_ended"}  # send_fail_reasons
FAIL_REASONS = {4: "kf_window", 5: "kf_ended", 6: "kf_budget", 10: "refused"}
# msg_send_fail's fail_type, as WeCom documents it, in the same plain words.
FAIL_TYPES = {
    0: "kf: WeChat did not deliver the message (reason unknown)",
    1: "kf: the kf account was deleted",
    2: "kf: the app was disabled",
    4: "kf: more than 48 hours since the buyer's last message; WeChat did not deliver it",
    5: "kf: the session was closed; WeChat did not deliver it",
    6: "kf: more than 5 replies to one buyer message; WeChat did not deliver it",
    8: "kf: the company is not verified",
    10: "kf: the buyer refuses messages from this account",
    11: "kf: nobody in the company is logged in to WeCom",
    12: "kf: this kind of message may not be sent through kf",
}


@dataclass(frozen=True)
class WeComSettings:
    corp_id: str
    secret: str  # the self-built app's secret (the app is allowed to call 微信客服)
    token: str
    aes_key: str
    agent_id: int | None = None  # the app agents talk to
    open_kfid: str = ""
    api_url: str = "https://qyapi.weixin.qq.com/cgi-bin/"
    robot_key: str = ""  # the agents' group robot
    agents: dict[str, str] = field(default_factory=dict)  # kefu agent name -> WeCom userid
    handoff_pool: bool = False
    max_photo_bytes: int = 10 * 1024 * 1024


class _StoreSession(SessionStorage):
    """wechatpy's token storage on kefu's store, so every process shares one token.

    wechatpy calls it from worker threads; the store is async and lives on the loop."""

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop, prefix: str) -> None:
        self.store, self.loop, self.prefix = store, loop, prefix

    def _run(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)  # type: ignore[arg-type]

    def get(self, key: str, default: Any = None) -> Any:
        raw = self._run(self.store.get_meta(f"{self.prefix}:{key}"))
        if not raw:
            return default
        item = json.loads(raw)
        return item["v"] if item.get("exp", 0) > time.time() else default

    def set(self, key: str, value: Any, ttl: int | None = None) -> None:
        exp = time.time() + (ttl or 7200) - 60  # a minute early: never use a token at its last second
        self._run(self.store.set_meta(f"{self.prefix}:{key}", json.dumps({"v": value, "exp": exp})))

    def delete(self, key: str) -> None:
        self._run(self.store.set_meta(f"{self.prefix}:{key}", ""))


class KefuWeComClient(WeChatClient):
    """wechatpy's WeCom client with kefu's seams: the API base URL (a proxy or a test
    server), the token fetched from that base under a lock shared by every process,
    and a token error retried once (wechatpy's own retry has no limit)."""

    TOKEN_ERRORS = (40001, 40014, 42001)

    def __init__(self, cfg: WeComSettings, session: SessionStorage, lock: Callable[[], Any]) -> None:
        super().__init__(cfg.corp_id, cfg.secret, session=session, timeout=10, auto_retry=False)
        self.API_BASE_URL = cfg.api_url
        self._token_lock = lock
        self._retrying = threading.local()

    def fetch_access_token(self, stale: str | None = None) -> Any:
        with self._token_lock():
            current = self.session.get(self.access_token_key)
            if current and current != stale and (self.expires_at or 0) - time.time() > 60:
                return {"access_token": current}  # another process refreshed it meanwhile
            return self._fetch_access_token(url=f"{self.API_BASE_URL}gettoken",
                                            params={"corpid": self.corp_id, "corpsecret": self.secret})

    def _handle_result(self, res: Any, method: Any = None, url: Any = None, result_processor: Any = None,
                       **kwargs: Any) -> Any:
        result = res if isinstance(res, dict) else self._decode_result(res)
        errcode = int(result.get("errcode") or 0) if isinstance(result, dict) else 0
        if errcode in self.TOKEN_ERRORS and not getattr(self._retrying, "on", False):
            self._retrying.on = True
            try:
                self.fetch_access_token(stale=kwargs.get("params", {}).get("access_token"))
                kwargs["params"]["access_token"] = self.session.get(self.access_token_key)
                return self._request(method=method, url_or_endpoint=url, result_processor=result_processor,
                                     **kwargs)
            finally:
                self._retrying.on = False
        return super()._handle_result(res, method, url, result_processor, **kwargs)


class WeCom:
    """微信客服 buyer channel, WeCom desk (group robot + app), and the callback."""

    platform = PLATFORM
    name = PLATFORM  # as a desk
    merge_turns = True  # kf allows five messages per buyer message: a burst's replies go out merged

    def __init__(self, cfg: WeComSettings, ctx: Context, media: MediaStore) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.store = ctx.store
        self.media = media
        self.crypto = WeChatCrypto(cfg.token, cfg.aes_key, cfg.corp_id)
        self.engine: Engine | None = None
        self.client: KefuWeComClient | None = None
        self.kf_worker = IngressWorker(self.store, f"wecom-kf:{cfg.corp_id}", self._pull, group_window=0)
        self.msg_worker = IngressWorker(self.store, f"wecom-msg:{cfg.corp_id}", self._handle_messages,
                                        group_window=0, whole_lane=True)
        self.flush: Callable[[str], Awaitable[None]] | None = None  # the dispatcher's, set by the app
        self.app_worker = IngressWorker(self.store, f"wecom-app:{cfg.corp_id}", self._handle_app, group_window=0)
        self.userid_of = dict(cfg.agents)
        self.name_of = {v: k for k, v in cfg.agents.items()}
        # WeChat's clocks: kf's 48-hour window, the welcome code, the robot's minute (a seam for tests).
        self.clock: Callable[[], float] = time.time
        self._http: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._robot_task: asyncio.Task[None] | None = None
        self._stopper = Stopper()
        self._names: dict[str, tuple[str, float]] = {}  # external_userid -> (WeChat nickname, looked up at)

    # --- lifecycle ------------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        return [web.get(CALLBACK_PATH, self.verify_url), web.post(CALLBACK_PATH, self.callback)]

    async def start(self, handle: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))
        session = _StoreSession(self.store, self._loop, platform_key(PLATFORM, self.cfg.corp_id, "wechatpy"))
        self.client = KefuWeComClient(self.cfg, session, self._token_lock)
        if handle:
            for w in (self.kf_worker, self.msg_worker, self.app_worker):
                await w.start()
        if self.cfg.robot_key:
            self._robot_task = asyncio.create_task(self._robot_loop(), name="kefu-wecom-robot")

    async def stop(self) -> None:
        await self._stopper.finish([self._robot_task], timeout=2)
        for w in (self.kf_worker, self.msg_worker, self.app_worker):
            await w.stop()
        if self._http is not None:
            await self._http.close()

    def _key(self, *parts: str | int) -> str:
        return platform_key(PLATFORM, self.cfg.corp_id, *parts)

    def _token_lock(self) -> Any:
        """A lock for the token fetch, usable from wechatpy's threads, held across processes."""
        adapter = self

        class _Held:
            def __enter__(self) -> None:
                assert adapter._loop is not None
                self.cm = adapter.store.lock(adapter._key("token"), timeout=15)
                asyncio.run_coroutine_threadsafe(self.cm.__aenter__(), adapter._loop).result(timeout=20)

            def __exit__(self, *exc: Any) -> None:
                assert adapter._loop is not None
                asyncio.run_coroutine_threadsafe(self.cm.__aexit__(None, None, None), adapter._loop).result(timeout=20)

        return _Held()

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A blocking wechatpy call, off the event loop, with WeCom's errors mapped for the dispatcher."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except APILimitedException as exc:
            raise SendError(f"wecom rate limit {exc.errcode}", retry_after=5.0) from exc
        except WeChatClientException as exc:
            if exc.errcode in RETRY_LATER or exc.errcode is None:
                raise SendError(f"wecom {exc.errcode}: {exc.errmsg}", retry_after=5.0) from exc
            plain = PLAIN.get(exc.errcode or 0)
            raise SendError(f"wecom {exc.errcode}: {plain or exc.errmsg}", permanent=True,
                            reason=REASONS.get(exc.errcode or 0, "undelivered")) from exc

    # --- inbound: verify, store, answer -----------------------------------------------------------------
    def _fresh(self, timestamp: str) -> bool:
        try:
            return abs(self.clock() - int(timestamp)) <= MAX_SKEW
        except ValueError:
            return False

    async def verify_url(self, request: web.Request) -> web.Response:
        # No freshness check here: replaying a URL check only echoes a string back.
        q = request.query
        try:
            echo = self.crypto.check_signature(q.get("msg_signature", ""), q.get("timestamp", ""),
                                               q.get("nonce", ""), q.get("echostr", ""))
        except Exception:  # forged signature, wrong key or corp id: all the same to the caller
            log.warning("wecom URL check with a bad signature")
            return web.Response(status=403, text="bad signature")
        return web.Response(text=echo if isinstance(echo, str) else echo.decode())

    async def callback(self, request: web.Request) -> web.Response:
        q = request.query
        if not self._fresh(q.get("timestamp", "")):
            log.warning("wecom callback with a stale timestamp")
            return web.Response(status=403, text="stale timestamp")
        body = await request.read()
        if len(body) > 256 * 1024:
            return web.Response(status=413, text="too large")
        try:
            plain = self.crypto.decrypt_message(body.decode("utf-8"), q.get("msg_signature", ""),
                                                q.get("timestamp", ""), q.get("nonce", ""))
            msg = xmltodict.parse(plain)["xml"]
        except Exception:  # a forged signature, a wrong key or corp id, garbage: nothing is processed
            log.warning("wecom callback rejected (signature or decryption failed)")
            return web.Response(status=403, text="bad signature")
        await self._accept(msg)
        return web.Response(text="success")

    async def _accept(self, msg: dict[str, Any]) -> None:
        kind, event = msg.get("MsgType"), msg.get("Event")
        if kind == "event" and event == "kf_msg_or_event":
            open_kfid = msg.get("OpenKfId") or self.cfg.open_kfid
            # Every callback token can pull; the worker pulls from the saved cursor.
            await self.store.ingress_push(self.kf_worker.source, f"kfev:{msg.get('Token')}", f"kf:{open_kfid}",
                                          {"token": msg.get("Token"), "open_kfid": open_kfid})
            self.kf_worker.kick()
            metrics.EVENTS_IN.labels("wecom").inc()
        elif kind == "text" and msg.get("FromUserName"):
            # An agent writing to the app: a desk command.
            key = msg.get("MsgId") or f"{msg.get('FromUserName')}:{msg.get('CreateTime')}"
            await self.store.ingress_push(self.app_worker.source, f"app:{key}", f"agent:{msg['FromUserName']}",
                                          {"userid": msg["FromUserName"], "text": msg.get("Content") or "",
                                           "at": int(msg.get("CreateTime") or time.time())})
            self.app_worker.kick()
        else:
            log.info("wecom callback ignored: %s %s", kind, event)

    # --- workers: pull kf messages ---------------------------------------------------------------------------
    async def _pull(self, rows: list[IngressRow]) -> None:
        assert self.client is not None
        for row in rows:
            token, open_kfid = row.payload["token"], row.payload["open_kfid"]
            cursor_key = self._key("cursor", open_kfid)
            cursor = await self.store.get_meta(cursor_key) or ""
            while True:
                res = await self._call(self.client.post, "kf/sync_msg", data={
                    "cursor": cursor, "token": token, "limit": 1000, "open_kfid": open_kfid})
                for m in res.get("msg_list") or []:
                    lane = f"user:{m.get('external_userid') or m.get('event', {}).get('external_userid', '')}"
                    await self.store.ingress_push(self.msg_worker.source, f"msg:{m['msgid']}", lane, m)
                cursor = res.get("next_cursor") or cursor
                # After every page: a crash on page 3 does not pull pages 1-2 again (and loses none).
                await self.store.set_meta(cursor_key, cursor)
                if not res.get("has_more"):
                    break
            self.msg_worker.kick()

    # --- workers: one kf message -> an Event --------------------------------------------------------------------
    def _channel(self, external_userid: str, open_kfid: str) -> Channel:
        return Channel(platform=PLATFORM, bot=open_kfid or self.cfg.open_kfid, chat=external_userid)

    async def _handle_messages(self, rows: list[IngressRow]) -> None:
        """A buyer's pending messages, in order: each is its own turn, but their replies are
        sent together afterwards (a burst of ten questions must not spend ten of five replies)."""
        targets: set[str] = set()
        for row in rows:
            target = await self._one_message(row.payload, send=len(rows) == 1)
            if target:
                targets.add(target)
        if len(rows) > 1 and self.flush is not None:
            for target in targets:
                await self.flush(target)

    async def _one_message(self, m: dict[str, Any], send: bool = True) -> str | None:
        """Handle one kf message; returns the buyer's outbox target."""
        assert self.engine is not None
        origin, kind = int(m.get("origin") or 0), m.get("msgtype")
        open_kfid = m.get("open_kfid") or self.cfg.open_kfid
        at = float(m.get("send_time") or time.time())
        if origin == 4 and kind == "event":
            await self._event(m.get("event") or {}, open_kfid, m["msgid"], at)
            return None
        user = m.get("external_userid") or ""
        channel = self._channel(user, open_kfid)
        if origin == 5:
            await self._servicer_message(m, channel, at)
            return None
        if origin != 3:
            return None
        await self._buyer_spoke(channel, at)
        text, payload = "", None
        photos: tuple[Media, ...] = ()
        files: tuple[FileInfo, ...] = ()
        if kind == "text":
            text = (m.get("text") or {}).get("content", "")
            payload = (m.get("text") or {}).get("menu_id") or None
        elif kind == "image":
            photos, files = await self._download((m.get("image") or {}).get("media_id", ""))
        else:
            files = (FileInfo(name=str(kind), reason="unsupported"),)
        await self.engine.handle(BuyerMessage(
            message_id=m["msgid"], channel=channel, buyer=await self._buyer(user), at=at, text=text.strip(),
            payload=payload, photos=photos, files=files,
        ), send=send)
        return buyer_target(session_key(channel.platform, channel.bot, channel.chat))

    async def _event(self, ev: dict[str, Any], open_kfid: str, msgid: str, at: float) -> None:
        assert self.engine is not None
        kind = ev.get("event_type")
        user = ev.get("external_userid") or ""
        if kind == "enter_session":
            channel = self._channel(user, open_kfid)
            if ev.get("welcome_code"):
                await self.store.set_meta(self._key("welcome", user),
                                          json.dumps({"code": ev["welcome_code"], "at": self.clock()}))
            await self.engine.handle(BuyerMessage(message_id=msgid, channel=channel, buyer=await self._buyer(user),
                                                  at=at, payload="start"))
        elif kind == "msg_send_fail":
            session = session_key(PLATFORM, open_kfid, user)
            fail_type = int(ev.get("fail_type") or 0)
            why = FAIL_TYPES.get(fail_type, FAIL_TYPES[0])
            await self.engine.handle(SendFailed(message_id=msgid, session=session, at=at,
                                                text=f"msgid {ev.get('fail_msgid', '')}",
                                                error=f"wecom msg_send_fail {fail_type}: {why}",
                                                reason=FAIL_REASONS.get(fail_type, "undelivered")))
        else:
            log.info("wecom kf event %s noted", kind)

    async def _servicer_message(self, m: dict[str, Any], channel: Channel, at: float) -> None:
        """An agent answered in their WeCom client: WeCom delivered it; it goes on the case."""
        assert self.engine is not None
        convo = await self.store.load_conversation(session_key(channel.platform, channel.bot, channel.chat))
        case_id = (convo or {}).get("case_id")
        if not case_id:
            log.info("servicer message outside a case kept out of the transcript")
            return
        userid = m.get("servicer_userid") or ""
        text = (m.get("text") or {}).get("content", "") if m.get("msgtype") == "text" else f"[{m.get('msgtype')}]"
        await self.engine.handle(AgentCommand(
            message_id=m["msgid"], case_id=case_id, verb="reply", agent=self.name_of.get(userid, userid),
            at=at, text=text, desk=PLATFORM, delivered=True,
        ))

    async def _buyer(self, user: str) -> Buyer:
        """The buyer with their WeChat nickname (kf/customer/batchget), so cards name them.

        Looked up once and kept in the store for every process; a failed lookup costs the message
        nothing (the card shows the id) and is tried again after a while."""
        if not user or self.client is None:
            return Buyer(id=user)
        cached = self._names.get(user)
        if cached and (cached[0] or time.monotonic() - cached[1] < NAME_RETRY):
            return Buyer(id=user, name=cached[0])
        key = self._key("nick", user)
        name = await self.store.get_meta(key)
        if name is None:
            name = ""
            try:
                res = await self._call(self.client.kf.batchget_customer, [user])
                for c in res.get("customer_list") or []:
                    if c.get("external_userid") == user:
                        name = str(c.get("nickname") or "")[:64]
                if name:
                    await self.store.set_meta(key, name)
            except Exception as exc:  # never the buyer's problem
                stop_if_cancelled()
                log.info("no nickname for a kf buyer: %s", exc.__class__.__name__)
        if len(self._names) > 50_000:
            self._names.clear()
        self._names[user] = (name, time.monotonic())
        return Buyer(id=user, name=name)

    async def _download(self, media_id: str) -> tuple[tuple[Media, ...], tuple[FileInfo, ...]]:
        """media/get: the seam wechatpy lacks (its URL is fixed to the real host)."""
        assert self.client is not None and self._http is not None
        for attempt in range(2):
            token = await asyncio.to_thread(lambda: self.client.access_token)  # type: ignore[union-attr]
            async with self._http.get(f"{self.cfg.api_url}media/get",
                                      params={"access_token": token, "media_id": media_id}) as resp:
                data = await resp.content.read(self.cfg.max_photo_bytes + 1)
                ctype = resp.headers.get("Content-Type", "")
            if "json" in ctype or data[:1] == b"{":
                err = json.loads(data or b"{}")
                if err.get("errcode") in (40014, 42001) and attempt == 0:
                    # Refreshed once under the shared lock; a token another process already
                    # renewed is reused, not fetched again.
                    await asyncio.to_thread(self.client.fetch_access_token, token)
                    continue
                return (), (FileInfo(name=media_id[:40], reason=f"media/get {err.get('errcode')}"),)
            break
        if len(data) > self.cfg.max_photo_bytes:
            return (), (FileInfo(name="image", size=len(data), reason="too large"),)
        try:
            stored = await self.media.save_image(data)
        except NotAnImage as exc:
            return (), (FileInfo(name="image", content_type=ctype, size=len(data), reason=str(exc)[:200]),)
        return (Media(id=stored.id, content_type=stored.content_type, size=stored.size,
                      width=stored.width, height=stored.height),), ()

    async def _buyer_spoke(self, channel: Channel, at: float) -> None:
        """A buyer message opens kf's window: 48 hours, five replies."""
        await self.store.set_meta(self._key("budget", channel.chat), json.dumps({"last": at, "sent": 0}))

    # --- workers: agents writing to the app ------------------------------------------------------------------------
    async def _handle_app(self, rows: list[IngressRow]) -> None:
        assert self.engine is not None
        for row in rows:
            userid, text = row.payload["userid"], row.payload["text"].strip()
            agent = self.name_of.get(userid, userid)
            cmd = parse_command(text)
            current = await self.store.get_meta(self._key("agent_case", userid))
            if cmd:
                verb, case_id, text = cmd.verb, cmd.case_id or current, cmd.text
            else:
                verb, case_id = "reply", current  # a plain message: to the buyer of the case in hand
            if not case_id:
                await self._tell_agent(userid, self.ctx.wording.render("notice_which_case", self.ctx.cfg.desk_locale))
                continue
            await self.store.set_meta(self._key("agent_case", userid), case_id)
            await self.engine.handle(AgentCommand(
                message_id=f"app:{row.key}", case_id=case_id, verb=verb, agent=agent,  # type: ignore[arg-type]
                at=float(row.payload.get("at") or time.time()), text=text, desk=PLATFORM,
            ))

    async def _tell_agent(self, userid: str, text: str) -> None:
        if self.client is None or self.cfg.agent_id is None or not userid:
            return
        try:
            await self._call(self.client.message.send_text, self.cfg.agent_id, userid, text[:2000])
        except SendError as exc:
            log.warning("could not tell an agent: %s", exc)

    # --- outbound: replies to buyers ---------------------------------------------------------------------------------
    async def send(self, channel: Channel, replies: list[Reply], key: str) -> None:
        assert self.client is not None
        user, open_kfid = channel.chat, channel.bot
        budget = json.loads(await self.store.get_meta(self._key("budget", user)) or '{"last": 0, "sent": 0}')
        greeting = replies[0].purpose == "greeting"
        welcome = json.loads(await self.store.get_meta(self._key("welcome", user)) or "null")
        if greeting and welcome and self.clock() - welcome["at"] < WELCOME_TTL:
            # The welcome code greets even before the buyer wrote (one message, 20 s).
            await self.store.set_meta(self._key("welcome", user), "null")
            first, rest = replies[:1], replies[1:]
            await self._call(self.client.kf.send_msg_on_event, welcome["code"], *self._event_content(first),
                             msgid=f"{key}w")
            replies = rest
            if not replies:
                return
        if self.clock() - budget["last"] > KF_WINDOW:
            raise SendError("wecom kf: more than 48 hours since the buyer's last message; "
                            "WeChat does not allow a reply now", permanent=True, reason="kf_window")
        state = await self._state(user, open_kfid)
        taken = next((r for r in replies if r.purpose == "taken" and self.userid_of.get(r.agent or "")), None)
        if state == 2 and taken is not None:
            # From the pool the bot may not send: the session moves to the servicer first, and the
            # code that move returns carries this turn's one message ("张三 is with you").
            res = await self._call(self.client.kf.trans_service_state, open_kfid, user, 3,
                                   self.userid_of[taken.agent or ""])
            if res.get("msg_code"):
                await self._call(self.client.kf.send_msg_on_event, res["msg_code"], *self._event_content(replies),
                                 msgid=f"{key}t")
            return
        if state == 3 and replies[-1].purpose == "resolved":
            # Served by an agent in WeCom: resolving ends the WeCom session; the agent has told the buyer.
            await self._call(self.client.kf.trans_service_state, open_kfid, user, 4)
            raise SendError("wecom kf: the buyer was served in WeCom and that session is now ended; "
                            "the bot cannot send the outcome or the rating there", permanent=True,
                            reason="kf_servicer")
        if state not in (0, 1):
            raise SendError(f"wecom kf: the session is with a servicer or ended (state {state}); "
                            "the bot may not send", permanent=True,
                            reason="kf_ended" if state == 4 else "kf_servicer")
        parts = self._parts(replies)
        if budget["sent"] + len(parts) > KF_PER_TURN:
            raise SendError(f"wecom kf: the {KF_PER_TURN} replies allowed per buyer message are used up; "
                            "the buyer must write again", permanent=True, reason="kf_budget")
        for i, part in enumerate(parts):
            await self._send_part(user, open_kfid, part, f"{key}p{i}")
            budget["sent"] += 1
            await self.store.set_meta(self._key("budget", user), json.dumps(budget))
        await self._after(user, open_kfid, replies)

    def _event_content(self, replies: list[Reply]) -> tuple[str, dict[str, Any]]:
        """(msgtype, the body keyed by msgtype) of a turn's one event message (text or menu, no photos):
        wechatpy merges it into the request as it is."""
        kind, body = self._parts(replies)[0]
        return kind, {kind: body}

    def _parts(self, replies: list[Reply]) -> list[tuple[str, Any]]:
        """Merge a turn into as few kf messages as possible: text (or a menu), then photos."""
        texts = [r.text for r in replies if r.text]
        buttons = [b for r in replies for b in r.buttons]
        parts: list[tuple[str, Any]] = []
        merged = "\n\n".join(texts)
        if buttons:
            parts.append(("msgmenu", {"head_content": _clip(merged, 1000), "list": [
                {"type": "click", "click": {"id": b.payload[:128], "content": b.text[:128]}} for b in buttons]}))
        elif merged:
            parts.append(("text", {"content": _clip(merged)}))
        parts += [("image", r.photo) for r in replies if r.photo is not None]
        return parts

    async def _send_part(self, user: str, open_kfid: str, part: tuple[str, Any], msgid: str) -> None:
        assert self.client is not None
        kind, body = part
        if kind == "image":
            data = await self.media.read(body.id)
            up = await self._call(self.client.media.upload, "image", ("photo.jpg", data, body.content_type))
            body = {"media_id": up["media_id"]}
        await self._call(self.client.kf_message.send, user, open_kfid, msgid, msg={"msgtype": kind, kind: body})

    async def _state(self, user: str, open_kfid: str) -> int:
        assert self.client is not None
        res = await self._call(self.client.kf.get_service_state, open_kfid, user)
        return int(res.get("service_state", 0))

    async def _after(self, user: str, open_kfid: str, replies: list[Reply]) -> None:
        """Move the kf session as the case moves (after the bot said what it had to say)."""
        assert self.client is not None
        for r in replies:
            if r.purpose == "handoff" and self.cfg.handoff_pool:
                await self._call(self.client.kf.trans_service_state, open_kfid, user, 2)
            elif r.purpose == "taken" and r.agent and self.userid_of.get(r.agent):
                # The agent answers in WeCom from now on.
                await self._call(self.client.kf.trans_service_state, open_kfid, user, 3,
                                 self.userid_of[r.agent])

    # --- outbound: the desk (group robot) and agents (app) ---------------------------------------------------------------
    async def publish(self, actions: list[DeskAction], load_card: Callable[[], Awaitable[dict[str, Any] | None]]) -> None:
        for a in actions:  # answers to an agent's command need no card (the case may not exist)
            if a.kind == "notice" and a.desk == PLATFORM:
                await self._tell_agent(self.userid_of.get(a.agent or "", a.agent or ""), a.text)
        if all(a.kind == "notice" for a in actions):
            return
        card = await load_card()
        if card is None:
            return
        lines: list[str] = []
        for a in actions:
            if a.kind == "notice":
                continue
            if a.kind == "card":
                lines.append(card_text_within(self.ctx, card, lambda t: len(t.encode()) <= ROBOT_BYTES))
            elif a.kind == "update":
                lines.append(f"{card['id']} · {card['status_name']}" + (f" · {card['assignee']}" if card.get("assignee") else ""))
            elif a.kind == "message":
                if a.who == "agent" and a.origin == PLATFORM:
                    continue
                name = card["buyer"]["name"] if a.who == "buyer" else (a.agent or "")
                lines.append(self.ctx.wording.render("desk_line", self.ctx.cfg.desk_locale, sender=a.who or "system",
                                                     sender_name=name, line=mask(a.text) if a.who == "buyer" else a.text))
        if lines and self.cfg.robot_key:
            await self._robot_post(lines)

    # --- the group robot: 20 messages a minute for every process together ------------------------------------
    async def _robot_post(self, lines: list[str]) -> None:
        """Queue desk lines for the robot in the store, then send what the shared window allows.

        The queue and the window live in the store, so every process counts against the same
        20 a minute; lines that do not fit now wait there (merged into as few messages as fit)
        for the window to open, and any process's robot loop sends them. Nothing is dropped."""
        try:
            async with self.store.lock(self._key("robot", "lock"), timeout=30):
                pending = json.loads(await self.store.get_meta(self._key("robot", "pending")) or "[]")
                await self.store.set_meta(self._key("robot", "pending"), json.dumps(pending + lines))
                await self._robot_drain()
        except LockTimeout:
            raise SendError("wecom robot: the robot queue is busy", retry_after=1.0) from None

    async def _robot_drain(self) -> float | None:
        """Send queued lines while the window has room (the caller holds the robot lock).

        Returns when the window has room again if lines are left waiting, else None."""
        pending: list[str] = json.loads(await self.store.get_meta(self._key("robot", "pending")) or "[]")
        raw_window = await self.store.get_meta(self._key("robot", "window"))
        now = self.clock()
        window = [t for t in json.loads(raw_window or "[]") if now - t < ROBOT_WINDOW]
        while pending:
            if len(window) >= ROBOT_PER_MINUTE:
                return min(window) + ROBOT_WINDOW
            text, used = _merge(pending, ROBOT_BYTES)
            code, errmsg = await self._robot_send(text)
            if code == 45009:  # someone else spends this robot's budget too: wait a whole minute
                window = [now] * ROBOT_PER_MINUTE
                await self.store.set_meta(self._key("robot", "window"), json.dumps(window))
                return now + ROBOT_WINDOW
            if code != 0:
                # Kept for a later try (a wrong key is fixed in settings; the web desk has everything meanwhile).
                log.error("wecom robot refused a desk message: %s %s", code, errmsg[:80])
                return now + ROBOT_WINDOW
            window.append(now)
            pending = pending[used:]
            # After every message: a crash repeats at most the one just sent.
            await self.store.set_meta(self._key("robot", "pending"), json.dumps(pending))
            await self.store.set_meta(self._key("robot", "window"), json.dumps(window))
        return None

    async def _robot_send(self, text: str) -> tuple[int, str]:
        assert self._http is not None
        base = self.cfg.api_url.rstrip("/")
        try:
            async with self._http.post(f"{base}/webhook/send", params={"key": self.cfg.robot_key},
                                       json={"msgtype": "text", "text": {"content": text}}) as resp:
                res = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return -1, exc.__class__.__name__
        return int(res.get("errcode", 0)), str(res.get("errmsg", ""))

    async def _robot_loop(self) -> None:
        """Send what waits in the robot queue once the window opens (lines of any process)."""
        delay = 1.0
        while await self._stopper.sleep(delay):
            delay = 1.0
            try:
                if not json.loads(await self.store.get_meta(self._key("robot", "pending")) or "[]"):
                    continue
                async with self.store.lock(self._key("robot", "lock"), timeout=5):
                    again = await self._robot_drain()
                if again is not None:
                    delay = min(max(again - self.clock(), 0.2), 5.0)
            except LockTimeout:
                continue  # another process is sending
            except Exception as exc:
                stop_if_cancelled()
                log.warning("wecom robot queue: %s", exc.__class__.__name__)
                delay = 5.0


def _merge(lines: list[str], limit: int) -> tuple[str, int]:
    """As many queued lines as fit in one message (at least one, clipped); how many it took."""
    text, used = "", 0
    for line in lines:
        joined = f"{text}\n\n{line}" if text else line
        if used and len(joined.encode()) > limit:
            break
        text, used = joined, used + 1
    return _clip(text, limit), used


def _clip(text: str, limit: int = MAX_TEXT_BYTES) -> str:
    raw = text.encode("utf-8")
    return text if len(raw) <= limit else raw[: limit - 3].decode("utf-8", "ignore") + "…"

