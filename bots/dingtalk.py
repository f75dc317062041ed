"""DingTalk (钉钉): buyers chat 1:1 with the shop's app robot; agents work in a DingTalk group.

Inbound, both modes end in the same place: the robot message is stored (state
ingress, deduped by its msgId) before DingTalk is answered, and the ingress
worker turns it into Events off the request path (picture downloads happen there).
  - Stream mode (default, no public URL): the official `dingtalk-stream` SDK keeps a
    websocket to DingTalk's gateway, in a thread of its own (bots/dingtalk_stream.py);
    a frame is ACKed once it is stored.
  - HTTP mode: POST /api/dingtalk/callback, checked against the headers `timestamp`
    (ms, at most an hour old) and `sign` = base64(HMAC-SHA256(appSecret, timestamp + "\\n" + appSecret)).

Buyers (conversationType "1") are a buyer channel. The agents' group (conversationType
"2", `dingtalk_desk_conversation`) is a desk: the robot sees only messages that @ it,
and those are commands ("接单 K1042", "回复 K1042 ...", see bots/commands.py) or a
plain reply to the case the agent has in hand.

Outbound: a reply goes through the conversation's sessionWebhook while it is valid
(sessionWebhookExpiredTime, about 90 minutes), else through the OpenAPI
(robot/oToMessages/batchSend) with an access token shared by every process through
the store; a photo is uploaded (media/upload) and sent by the OpenAPI. Buttons become
numbered lines; typing the number presses the button.
Case cards go to the group by the app robot (robot/groupMessages/send) or by a custom
robot webhook signed with its 加签 secret (20 messages a minute: lines are merged and
paced). Rate limits become SendError(retry_after=...) for the dispatcher.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import aiohttp
from aiohttp import web
from aiolimiter import AsyncLimiter

from bots import metrics
from bots.base import SendError
from bots.commands import parse_command
from bots.http import BadRequest, error, json_response, read_json
from bots.ingress import IngressWorker
from handlers.cards import card_text_within
from handlers.context import Context
from handlers.engine import Engine
from handlers.model import AgentCommand, Buyer, BuyerMessage, Channel, DeskAction, FileInfo, Media, Reply
from handlers.privacy import mask
from state.keys import platform_key
from state.media import MediaStore, NotAnImage
from state.protocol import IngressRow

log = logging.getLogger("kefu.dingtalk")

PLATFORM = "dingtalk"
CALLBACK_PATH = "/api/dingtalk/callback"
MAX_SKEW_MS = 3600 * 1000  # DingTalk: a callback older than one hour is refused
WEBHOOK_MARGIN_MS = 60 * 1000  # do not use a session webhook in its last minute
MAX_TEXT = 4000  # characters per text message: well inside DingTalk's limits
DESK_BYTES = 4000  # one group message of merged card lines
ROBOT_PER_MINUTE = 20  # custom robot: 20 messages a minute per robot
_MENTION = re.compile(r"^\s*(?:@\S+\s*)+")
_MENU_CHOICE = re.compile(r"^\s*(\d{1,2})\s*$")


class BadMessage(ValueError):
    """Not a robot message we can store (no msgId, not JSON): refused, nothing processed."""


@dataclass(frozen=True)
class DingTalkSettings:
    app_key: str  # the app's AppKey / Client ID
    app_secret: str  # AppSecret / Client Secret: signs HTTP callbacks and gets access tokens
    robot_code: str = ""  # the app robot's robotCode (the AppKey unless the console says otherwise)
    mode: str = "stream"  # "stream" (the SDK's websocket) or "http" (callbacks to CALLBACK_PATH)
    api_url: str = "https://api.dingtalk.com"
    oapi_url: str = "https://oapi.dingtalk.com"  # the older API: media upload for photos to buyers
    desk_conversation: str = ""  # openConversationId of the agents' group
    desk_webhook: str = ""  # a custom robot's webhook URL in that group (optional)
    desk_webhook_secret: str = ""  # its 加签 secret (SEC...)
    max_photo_bytes: int = 10 * 1024 * 1024

    @property
    def robot(self) -> str:
        return self.robot_code or self.app_key


def callback_sign(secret: str, timestamp: str) -> str:
    """DingTalk's signature of an HTTP callback (and of a custom robot webhook call)."""
    digest = hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


class DingTalk:
    """The app robot: a buyer channel (1:1 chats) and a desk (the agents' group)."""

    platform = PLATFORM
    name = PLATFORM  # as a desk

    def __init__(self, cfg: DingTalkSettings, ctx: Context, media: MediaStore) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.store = ctx.store
        self.media = media
        self.engine: Engine | None = None
        self.worker = IngressWorker(self.store, f"dingtalk:{cfg.robot}", self._handle_rows, group_window=0)
        self.stream: Any = None  # bots.dingtalk_stream.StreamLink in stream mode
        self._robot_limit = AsyncLimiter(ROBOT_PER_MINUTE, 60)
        self._http: aiohttp.ClientSession | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        return [web.post(CALLBACK_PATH, self.callback)]

    async def start(self, ingress: bool = True, handle: bool = True) -> None:
        """ingress: hold the Stream connection (stream mode); handle: run the ingress worker."""
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))
        if handle:
            await self.worker.start()
        if ingress and self.cfg.mode == "stream":
            from bots.dingtalk_stream import StreamLink  # the SDK is imported only when it is used

            self.stream = StreamLink(self.cfg.app_key, self.cfg.app_secret, self.cfg.api_url, self.accept,
                                     asyncio.get_running_loop())
            self.stream.start()
        log.info("dingtalk robot started (%s mode, desk %s)", self.cfg.mode,
                 "custom robot" if self.cfg.desk_webhook else ("group" if self.cfg.desk_conversation else "none"))

    async def stop(self) -> None:
        if self.stream is not None:
            await asyncio.to_thread(self.stream.stop)
        await self.worker.stop()
        if self._http is not None:
            await self._http.close()

    def _key(self, *parts: str | int) -> str:
        return platform_key(PLATFORM, self.cfg.robot, *parts)

    # --- inbound: verify, store, answer -----------------------------------------------------------
    def verify(self, timestamp: str, sign: str, now_ms: int | None = None) -> str | None:
        """None if the callback headers are good, else why not."""
        if not timestamp or not sign:
            return "missing timestamp or sign header"
        try:
            ts = int(timestamp)
        except ValueError:
            return "timestamp is not a number of milliseconds"
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        if abs(now - ts) > MAX_SKEW_MS:
            return "timestamp is more than one hour off"
        if not hmac.compare_digest(callback_sign(self.cfg.app_secret, timestamp).encode(), sign.encode()):
            return "sign does not match"
        return None

    async def callback(self, request: web.Request) -> web.Response:
        problem = self.verify(request.headers.get("timestamp", ""), request.headers.get("sign", ""))
        if problem:
            log.warning("dingtalk callback rejected: %s", problem)
            return error(401, f"dingtalk callback rejected: {problem}")
        try:
            data = await read_json(request, limit=256 * 1024)
            await self.accept(data)
        except BadRequest as exc:
            return error(exc.status, str(exc))
        except BadMessage as exc:
            return error(400, str(exc))
        return json_response({})

    async def accept(self, data: dict[str, Any]) -> bool:
        """Store one robot message durably; False if its msgId was stored before (a redelivery)."""
        msg_id = data.get("msgId")
        if not isinstance(msg_id, str) or not msg_id:
            raise BadMessage("not a DingTalk robot message (no msgId)")
        lane = str(data.get("conversationId") or data.get("senderStaffId") or data.get("senderId") or "none")
        new = await self.store.ingress_push(self.worker.source, f"msg:{msg_id}", lane, data)
        metrics.EVENTS_IN.labels(PLATFORM).inc()
        if new:
            self.worker.kick()
        else:
            log.info("dingtalk message handled before", extra={"session": lane, "message_id": msg_id})
        return new

    # --- the worker: one robot message -> an Event --------------------------------------------------
    async def _handle_rows(self, rows: list[IngressRow]) -> None:
        for row in rows:
            d = row.payload
            await self._remember_webhook(d)
            kind = str(d.get("conversationType") or "")
            if kind == "1":
                await self._buyer_message(d)
            elif kind == "2" and self._is_desk(str(d.get("conversationId") or "")):
                await self._desk_message(d)
            else:
                # Only the configured agents' group acts on cases (its id is logged so it can be set).
                log.info("dingtalk message from group %s ignored: not dingtalk_desk_conversation",
                         d.get("conversationId"), extra={"session": row.lane, "message_id": d.get("msgId")})

    def _is_desk(self, conversation_id: str) -> bool:
        return bool(self.cfg.desk_conversation) and conversation_id == self.cfg.desk_conversation

    async def _remember_webhook(self, d: dict[str, Any]) -> None:
        cid, url = d.get("conversationId"), d.get("sessionWebhook")
        if not cid or not url:
            return
        exp = int(d.get("sessionWebhookExpiredTime") or 0)
        old = json.loads(await self.store.get_meta(self._key("webhook", cid)) or "null")
        if old is None or exp >= int(old.get("exp", 0)):
            await self.store.set_meta(self._key("webhook", cid), json.dumps({"url": url, "exp": exp}))

    def _channel(self, chat: str) -> Channel:
        return Channel(platform=PLATFORM, bot=self.cfg.robot, chat=chat)

    async def _buyer_message(self, d: dict[str, Any]) -> None:
        assert self.engine is not None
        chat = str(d.get("senderStaffId") or d.get("senderId") or "")
        await self.store.set_meta(self._key("buyer", chat), json.dumps(
            {"conversation": d.get("conversationId"), "staff": d.get("senderStaffId") or ""}))
        kind = d.get("msgtype")
        texts: list[str] = []
        codes: list[str] = []
        files: list[FileInfo] = []
        content: dict[str, Any] = d["content"] if isinstance(d.get("content"), dict) else {}
        if kind == "text":
            texts.append(str((d.get("text") or {}).get("content") or ""))
        elif kind == "picture":
            codes.append(str(content.get("downloadCode") or ""))
        elif kind == "richText":
            for item in content.get("richText") or []:
                if item.get("downloadCode"):
                    codes.append(str(item["downloadCode"]))
                elif item.get("text"):
                    texts.append(str(item["text"]))
        else:
            files.append(FileInfo(name=str(kind or "message"), reason="unsupported"))
        photos: list[Media] = []
        for code in codes:
            got, problem = await self._download(code)
            if got:
                photos.append(got)
            if problem:
                files.append(problem)
        text = "\n".join(t.strip() for t in texts if t.strip())
        payload = await self._menu_choice(chat, text) if text and not codes else None
        await self.engine.handle(BuyerMessage(
            message_id=str(d["msgId"]), channel=self._channel(chat),
            buyer=Buyer(id=chat, name=str(d.get("senderNick") or "")), at=_seconds(d.get("createAt")),
            text=text, payload=payload, photos=tuple(photos), files=tuple(files),
        ))

    async def _menu_choice(self, chat: str, text: str) -> str | None:
        """A number typed after a numbered menu presses that button."""
        m = _MENU_CHOICE.match(text)
        if not m:
            return None
        menu = json.loads(await self.store.get_meta(self._key("menu", chat)) or "[]")
        n = int(m.group(1))
        return menu[n - 1] if 1 <= n <= len(menu) else None

    async def _download(self, code: str) -> tuple[Media | None, FileInfo | None]:
        """robot/messageFiles/download gives a short-lived URL; the picture is fetched from there."""
        assert self._http is not None
        try:
            res = await self._api("/v1.0/robot/messageFiles/download",
                                  {"downloadCode": code, "robotCode": self.cfg.robot})
            url = str(res.get("downloadUrl") or "")
            if not url:
                return None, FileInfo(name="picture", reason="no downloadUrl")
            try:
                async with self._http.get(url) as resp:
                    if resp.status != 200:
                        return None, FileInfo(name="picture", reason=f"download {resp.status}")
                    data = await resp.content.read(self.cfg.max_photo_bytes + 1)
                    ctype = resp.headers.get("Content-Type", "")
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise SendError(f"dingtalk picture download: {exc.__class__.__name__}") from exc
        except SendError as exc:
            if exc.permanent:
                return None, FileInfo(name="picture", reason=str(exc)[:200])
            raise  # rate limit or outage: the ingress worker tries the message again later
        if len(data) > self.cfg.max_photo_bytes:
            return None, FileInfo(name="picture", content_type=ctype, size=len(data), reason="too large")
        try:
            stored = await self.media.save_image(data)
        except NotAnImage as exc:
            return None, FileInfo(name="picture", content_type=ctype, size=len(data), reason=str(exc)[:200])
        return Media(id=stored.id, content_type=stored.content_type, size=stored.size,
                     width=stored.width, height=stored.height), None

    async def _desk_message(self, d: dict[str, Any]) -> None:
        """An agent @-ed the robot in the group: a command, or a reply to the case in hand."""
        assert self.engine is not None
        if d.get("msgtype") != "text":
            return  # pictures and files in the group stay between the agents
        staff = str(d.get("senderStaffId") or d.get("senderId") or "")
        agent = str(d.get("senderNick") or staff)
        text = _MENTION.sub("", str((d.get("text") or {}).get("content") or "")).strip()
        current = await self.store.get_meta(self._key("agent_case", staff))
        cmd = parse_command(text)
        if cmd:
            verb, case_id, text = cmd.verb, cmd.case_id or current, cmd.text
        else:
            verb, case_id = "reply", current
        if not case_id:
            await self._desk_notice(self.ctx.wording.render("notice_which_case", self.ctx.cfg.desk_locale))
            return
        await self.store.set_meta(self._key("agent_case", staff), case_id)
        await self.engine.handle(AgentCommand(
            message_id=f"desk:{d['msgId']}", case_id=case_id, verb=verb, agent=agent,  # type: ignore[arg-type]
            at=_seconds(d.get("createAt")), text=text, desk=PLATFORM,
        ))

    # --- the OpenAPI: access token shared by every process --------------------------------------------
    async def _token(self, stale: str | None = None) -> str:
        key = self._key("token")

        async def cached() -> str | None:
            item = json.loads(await self.store.get_meta(key) or "null")
            if item and item.get("v") != stale and item.get("exp", 0) > time.time():
                return str(item["v"])
            return None

        token = await cached()
        if token:
            return token
        async with self.store.lock(self._key("token_lock"), timeout=15):
            token = await cached()  # another process may have fetched it meanwhile
            if token:
                return token
            assert self._http is not None
            try:
                async with self._http.post(f"{self.cfg.api_url.rstrip('/')}/v1.0/oauth2/accessToken",
                                           json={"appKey": self.cfg.app_key, "appSecret": self.cfg.app_secret}) as resp:
                    status, res = resp.status, await resp.json(content_type=None) or {}
            except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
                raise SendError(f"dingtalk accessToken: {exc.__class__.__name__}") from exc
            if status != 200 or not res.get("accessToken"):
                raise SendError(f"dingtalk accessToken {status} {res.get('code')}: {res.get('message')}",
                                permanent=400 <= status < 500 and not _throttled(status, res))
            # Five minutes early: never use a token in its last moments.
            exp = time.time() + int(res.get("expireIn") or 7200) - 300
            await self.store.set_meta(key, json.dumps({"v": res["accessToken"], "exp": exp}))
            return str(res["accessToken"])

    async def _api(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the OpenAPI; errors mapped for the dispatcher (a stale token is refreshed once)."""
        assert self._http is not None
        stale: str | None = None
        for attempt in range(2):
            token = await self._token(stale)
            try:
                async with self._http.post(f"{self.cfg.api_url.rstrip('/')}{path}", json=body,
                                           headers={"x-acs-dingtalk-access-token": token}) as resp:
                    status, res = resp.status, await resp.json(content_type=None) or {}
                    retry_after = resp.headers.get("Retry-After")
            except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
                raise SendError(f"dingtalk {path}: {exc.__class__.__name__}") from exc
            if status == 200:
                return res
            code = str(res.get("code") or "")
            if (status == 401 or code == "InvalidAuthentication") and attempt == 0:
                stale = token
                continue
            if _throttled(status, res):
                raise SendError(f"dingtalk {path} rate limit {code}", retry_after=float(retry_after or 1.0))
            raise SendError(f"dingtalk {path} {status} {code}: {res.get('message', '')}"[:300],
                            permanent=400 <= status < 500)
        raise SendError(f"dingtalk {path}: the access token was refused twice", permanent=True)

    # --- outbound: replies to buyers ----------------------------------------------------------------
    async def send(self, channel: Channel, replies: list[Reply], key: str) -> None:
        # DingTalk takes no idempotency key: progress is kept per delivery, so a retry after a
        # failure in the middle of a turn does not repeat the parts that went out.
        info = json.loads(await self.store.get_meta(self._key("buyer", channel.chat)) or "{}")
        parts: list[str | Media] = []
        menu: list[str] = []
        for r in replies:
            lines = [r.text] if r.text else []
            lines += [f"{i}. {b.text}" for i, b in enumerate(r.buttons, 1)]
            if r.buttons:
                menu = [b.payload for b in r.buttons]
            text = "\n".join(lines)
            parts += [text[i:i + MAX_TEXT] for i in range(0, len(text), MAX_TEXT)]
            if r.photo is not None:
                parts.append(r.photo)
        # One progress record per buyer (not per delivery: nothing piles up in the store).
        progress_key = self._key("progress", channel.chat)
        progress = json.loads(await self.store.get_meta(progress_key) or "{}")
        done = int(progress.get("done", 0)) if progress.get("key") == key else 0
        for i, part in enumerate(parts):
            if i < done:
                continue
            if isinstance(part, Media):
                await self._photo_to_buyer(channel.chat, info, part)
            else:
                await self._to_buyer(channel.chat, info, part)
            if len(parts) > 1:
                await self.store.set_meta(progress_key, json.dumps({"key": key, "done": i + 1}))
        await self.store.set_meta(self._key("menu", channel.chat), json.dumps(menu))

    async def _to_buyer(self, chat: str, info: dict[str, Any], text: str) -> None:
        if info.get("conversation") and await self._by_session(str(info["conversation"]), text):
            return
        staff = info.get("staff") or chat
        res = await self._api("/v1.0/robot/oToMessages/batchSend", {
            "robotCode": self.cfg.robot, "userIds": [staff], "msgKey": "sampleText",
            "msgParam": json.dumps({"content": text}, ensure_ascii=False)})
        if staff in (res.get("flowControlledStaffIdList") or []):
            raise SendError("dingtalk batchSend: the buyer is flow-controlled", retry_after=60)
        if staff in (res.get("invalidStaffIdList") or []):
            raise SendError("dingtalk batchSend: the buyer's userid is not valid for this robot", permanent=True)

    async def _photo_to_buyer(self, chat: str, info: dict[str, Any], photo: Media) -> None:
        """A photo: uploaded (media/upload) and sent by the OpenAPI; a sessionWebhook cannot carry one."""
        media_id = await self._upload(photo)
        staff = info.get("staff") or chat
        res = await self._api("/v1.0/robot/oToMessages/batchSend", {
            "robotCode": self.cfg.robot, "userIds": [staff], "msgKey": "sampleImageMsg",
            "msgParam": json.dumps({"photoURL": media_id})})
        if staff in (res.get("flowControlledStaffIdList") or []):
            raise SendError("dingtalk batchSend: the buyer is flow-controlled", retry_after=60)

    async def _upload(self, photo: Media) -> str:
        assert self._http is not None
        data = await self.media.read(photo.id)
        stale: str | None = None
        for attempt in range(2):
            token = await self._token(stale)
            form = aiohttp.FormData()
            form.add_field("type", "image")
            form.add_field("media", data, filename=f"photo.{photo.id.rsplit('.', 1)[-1]}",
                           content_type=photo.content_type)
            try:
                async with self._http.post(f"{self.cfg.oapi_url.rstrip('/')}/media/upload",
                                           params={"access_token": token}, data=form) as resp:
                    res = await resp.json(content_type=None) or {}
            except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
                raise SendError(f"dingtalk media/upload: {exc.__class__.__name__}") from exc
            code = int(res.get("errcode") or 0)
            if code == 0 and res.get("media_id"):
                return str(res["media_id"])
            if code in (40014, 42001) and attempt == 0:  # the token is unknown or expired
                stale = token
                continue
            if code in (90018, 90006, 90005):  # old-API rate limits
                raise SendError(f"dingtalk media/upload rate limit {code}", retry_after=1.0)
            raise SendError(f"dingtalk media/upload {code}: {res.get('errmsg')}", permanent=True)
        raise SendError("dingtalk media/upload: the access token was refused twice", permanent=True)

    async def _by_session(self, conversation: str, text: str) -> bool:
        """Send through the conversation's sessionWebhook; False if it has expired or refused."""
        assert self._http is not None
        hook = json.loads(await self.store.get_meta(self._key("webhook", conversation)) or "null")
        if not hook or int(hook.get("exp", 0)) - WEBHOOK_MARGIN_MS < time.time() * 1000:
            return False
        try:
            async with self._http.post(hook["url"], json={"msgtype": "text", "text": {"content": text}}) as resp:
                res = await resp.json(content_type=None) or {}
        except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
            log.info("dingtalk sessionWebhook failed (%s); using the OpenAPI", exc.__class__.__name__)
            return False
        if int(res.get("errcode") or 0) != 0:
            log.info("dingtalk sessionWebhook refused (errcode %s); using the OpenAPI", res.get("errcode"))
            await self.store.set_meta(self._key("webhook", conversation), "null")
            return False
        return True

    # --- outbound: the desk -----------------------------------------------------------------------------
    async def publish(self, actions: list[DeskAction], load_card: Callable[[], Awaitable[dict[str, Any] | None]]) -> None:
        for a in actions:  # answers to an agent's command need no card (the case may not exist)
            if a.kind == "notice" and a.desk == PLATFORM:
                await self._desk_notice(a.text)
        if all(a.kind == "notice" for a in actions):
            return
        card = await load_card()
        if card is None:
            return
        loc = self.ctx.cfg.desk_locale
        lines: list[str] = []
        for a in actions:
            if a.kind == "card":
                lines.append(card_text_within(self.ctx, card, lambda t: len(t.encode()) <= DESK_BYTES))
            elif a.kind == "update":
                lines.append(f"{card['id']} · {card['status_name']}" + (f" · {card['assignee']}" if card.get("assignee") else ""))
            elif a.kind == "message":
                if a.who == "agent" and a.origin == PLATFORM:
                    continue  # the agent wrote it in the group: it is already there
                name = card["buyer"]["name"] if a.who == "buyer" else (a.agent or "")
                lines.append(self.ctx.wording.render("desk_line", loc, sender=a.who or "system", sender_name=name,
                                                     line=mask(a.text) if a.who == "buyer" else a.text))
        # As few group messages as fit (a custom robot sends 20 a minute): lines merged up to the size limit.
        batch = ""
        for line in lines:
            joined = f"{batch}\n\n{line}" if batch else line
            if batch and len(joined.encode()) > DESK_BYTES:
                await self._to_desk(batch)
                joined = line
            batch = joined
        if batch:
            await self._to_desk(batch)

    async def _desk_notice(self, text: str) -> None:
        """An answer to an agent's command: through the group's session webhook when it is valid."""
        try:
            if self.cfg.desk_conversation and await self._by_session(self.cfg.desk_conversation, text):
                return
            await self._to_desk(text)
        except SendError as exc:
            log.warning("dingtalk desk notice not sent: %s", exc)

    async def _to_desk(self, text: str) -> None:
        text = _clip(text, DESK_BYTES)
        if self.cfg.desk_webhook:
            await self._custom_robot(text)
        elif self.cfg.desk_conversation:
            await self._api("/v1.0/robot/groupMessages/send", {
                "robotCode": self.cfg.robot, "openConversationId": self.cfg.desk_conversation,
                "msgKey": "sampleText", "msgParam": json.dumps({"content": text}, ensure_ascii=False)})
        else:
            raise SendError("dingtalk: no agents' group configured (dingtalk_desk_conversation or "
                            "dingtalk_desk_webhook)", permanent=True)

    async def _custom_robot(self, text: str) -> None:
        assert self._http is not None
        async with self._robot_limit:  # 20 a minute per robot: wait rather than be refused
            url = self.cfg.desk_webhook
            if self.cfg.desk_webhook_secret:
                ts = str(int(time.time() * 1000))
                sign = urllib.parse.quote_plus(callback_sign(self.cfg.desk_webhook_secret, ts))
                url = f"{url}{'&' if '?' in url else '?'}timestamp={ts}&sign={sign}"
            try:
                async with self._http.post(url, json={"msgtype": "text", "text": {"content": text}}) as resp:
                    res = await resp.json(content_type=None) or {}
            except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
                raise SendError(f"dingtalk custom robot: {exc.__class__.__name__}") from exc
        code = int(res.get("errcode") or 0)
        if code == 130101:  # "send too fast": more than 20 a minute
            raise SendError("dingtalk custom robot: 20 messages a minute", retry_after=60)
        if code != 0:
            raise SendError(f"dingtalk custom robot {code}: {res.get('errmsg')}", permanent=code in (300001, 310000))


def _throttled(status: int, res: dict[str, Any]) -> bool:
    code = str(res.get("code") or "")
    return status == 429 or "QpsLimit" in code or code.startswith("Throttling")


def _seconds(ms: Any) -> float:
    try:
        return int(ms) / 1000
    except (TypeError, ValueError):
        return time.time()


def _clip(text: str, limit: int) -> str:
    raw = text.encode("utf-8")
    return text if len(raw) <= limit else raw[: limit - 3].decode("utf-8", "ignore") + "…"
