"""Telegram: buyers in private chats, agents in one desk group, on python-telegram-bot.

Inbound, both modes end in the same place: an update is stored (state ingress,
deduped by update_id) before Telegram is answered, and the ingress worker turns
it into Events off the request path (photo downloads happen there).
  - polling (default): getUpdates with a persisted offset;
  - webhook (KEFU_TELEGRAM_WEBHOOK_URL): POST /api/telegram/webhook, checked
    against X-Telegram-Bot-Api-Secret-Token.

Outbound, this adapter is both a buyer channel (replies, inline keyboards) and
a desk (case cards, one forum topic per case, agent commands). Sends are paced
(30/s overall, 20/min per group via PTB's AIORateLimiter, ~1/s per private
chat); a 429 becomes a SendError with retry_after for the dispatcher.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import secrets
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Awaitable, Callable, TypeVar

from aiohttp import web
from aiolimiter import AsyncLimiter

# PTB 22's documented opt-in: RetryAfter.retry_after as a timedelta (the int form is deprecated
# and warns on every 429). _seconds() reads either shape.
os.environ.setdefault("PTB_TIMEDELTA", "true")
from telegram import (  # noqa: E402
    Bot,
    ForceReply,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaPhoto,
    Message,
    ReplyParameters,
    Update,
    User,
)
from telegram.error import (  # noqa: E402
    BadRequest,
    Conflict,
    Forbidden,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.ext import AIORateLimiter, ExtBot  # noqa: E402

from bots import metrics
from bots.base import SendError
from bots.http import BadRequest as HttpBadRequest
from bots.http import error, json_response, read_json
from bots.ingress import IngressWorker
from handlers.cards import card_text_within
from handlers.context import Context
from handlers.desk import normalize_case_id
from handlers.engine import Engine
from handlers.model import AgentCommand, Buyer, BuyerMessage, Channel, DeskAction, FileInfo, Media, Reply
from handlers.privacy import mask
from state.keys import platform_key
from state.media import MediaStore, NotAnImage
from state.protocol import IngressRow, LockTimeout
from state.tasks import Stopper, stop_if_cancelled

log = logging.getLogger("kefu.telegram")
# A 429 is ours to handle (the dispatcher retries after retry_after); PTB would log it as an error.
logging.getLogger("telegram.ext.AIORateLimiter").setLevel(logging.CRITICAL)
T = TypeVar("T")

PLATFORM = "telegram"
WEBHOOK_PATH = "/api/telegram/webhook"
MAX_TEXT = 4096
MAX_CAPTION = 1024
ALLOWED_UPDATES = ["message", "callback_query"]
_COMMAND = re.compile(r"^/(\w+)(?:@(\w+))?(?:\s+(.*))?$", re.S)
_CASE_ARG = re.compile(r"^#?[Kk]?(\d{1,9})\b\s*", re.S)
_DEEP_LINK_ORDER = re.compile(r"^order_([A-Za-z0-9_\-]{1,58})$")


@dataclass(frozen=True)
class TelegramSettings:
    token: str
    api_url: str = "https://api.telegram.org/bot"
    file_url: str | None = None
    desk_chat: int | None = None
    webhook_url: str = ""
    webhook_secret: str = ""
    poll_timeout: int = 25
    max_photo_bytes: int = 10 * 1024 * 1024


def _seconds(exc: RetryAfter) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PTB 22 deprecates reading it as int; both shapes are fine here
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def display_name(user: User) -> str:
    name = " ".join(p for p in (user.first_name, user.last_name) if p).strip()
    return name or (f"@{user.username}" if user.username else str(user.id))


class Telegram:
    """One bot: a buyer channel, and (with a desk chat) the agents' desk."""

    platform = PLATFORM
    name = PLATFORM  # as a desk

    def __init__(self, cfg: TelegramSettings, ctx: Context, media: MediaStore) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.store = ctx.store
        self.media = media
        file_url = cfg.file_url or re.sub(r"/bot$", "/file/bot", cfg.api_url.rstrip("/"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PTB warns about its own optional extras
            self.bot: Bot = ExtBot(
                cfg.token, base_url=cfg.api_url, base_file_url=file_url,
                rate_limiter=AIORateLimiter(overall_max_rate=30, group_max_rate=20, max_retries=0),
            )
        self.engine: Engine | None = None
        self.bot_id = cfg.token.split(":", 1)[0]
        self.worker = IngressWorker(self.store, f"telegram:{self.bot_id}", self._handle_rows)
        self.secret = cfg.webhook_secret
        self.me: User | None = None
        self.forum = False
        self._poller: asyncio.Task[None] | None = None
        self._stopper = Stopper()
        self._chat_limits: dict[int, AsyncLimiter] = {}

    # --- lifecycle ------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        return [web.post(WEBHOOK_PATH, self.webhook)] if self.cfg.webhook_url else []

    async def start(self, ingress: bool = True, handle: bool = True) -> None:
        """ingress: receive updates (poll, or register the webhook); handle: run the ingress worker.

        Every process can send; with several processes only web processes take updates in and
        only worker processes handle them."""
        await self.bot.initialize()
        self.me = self.bot.bot  # getMe, done by initialize()
        if self.cfg.desk_chat is not None:
            try:
                chat = await self.bot.get_chat(self.cfg.desk_chat)
                self.forum = bool(chat.is_forum)
            except TelegramError as exc:
                log.error("cannot read the desk chat %s: %s", self.cfg.desk_chat, exc)
        if self.cfg.webhook_url and not self.secret:
            # Never run an open webhook: keep one generated secret in the store.
            self.secret = await self.store.set_meta_if_absent(self._key("webhook_secret"), secrets.token_urlsafe(32))
        if ingress and self.cfg.webhook_url:
            await self.bot.set_webhook(self.cfg.webhook_url, secret_token=self.secret,
                                       allowed_updates=ALLOWED_UPDATES)
        elif ingress:
            self._poller = asyncio.create_task(self._poll_as_leader(), name="kefu-telegram-poll")
        if handle:
            await self.worker.start()
        log.info("telegram bot @%s started (%s mode, desk %s%s)", self.me.username if self.me else "?",
                 "webhook" if self.cfg.webhook_url else "polling", self.cfg.desk_chat,
                 ", forum topics" if self.forum else "")

    async def stop(self) -> None:
        await self._stopper.finish([self._poller], timeout=2)
        await self.worker.stop()
        await self.bot.shutdown()

    def _key(self, *parts: str | int) -> str:
        return platform_key(PLATFORM, self.bot_id, *parts)

    # --- inbound: store first, answer Telegram, handle later ----------------------------------
    async def webhook(self, request: web.Request) -> web.Response:
        given = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
        if not self.secret or not hmac.compare_digest(given.encode(), self.secret.encode()):
            log.warning("telegram webhook call with a missing or wrong secret token")
            return error(401, "missing or wrong X-Telegram-Bot-Api-Secret-Token")
        try:
            data = await read_json(request, limit=1024 * 1024)
        except HttpBadRequest as exc:
            return error(exc.status, str(exc))
        if not isinstance(data.get("update_id"), int):
            return error(400, "not a Telegram update (no update_id)")
        await self.push(data)
        return json_response({"ok": True})

    async def push(self, update: dict[str, Any]) -> bool:
        """Store one update durably; False if it was seen before (Telegram re-sent it)."""
        msg = update.get("message") or update.get("edited_message") or (update.get("callback_query") or {}).get("message") or {}
        chat_id = (msg.get("chat") or {}).get("id", "none")
        lane = f"{chat_id}:{msg.get('message_thread_id') or 0}" if chat_id == self.cfg.desk_chat else str(chat_id)
        grp = msg.get("media_group_id") if "message" in update else None
        new = await self.store.ingress_push(self.worker.source, f"{self.bot_id}:{update['update_id']}", lane,
                                            update, grp=f"{chat_id}:{grp}" if grp else None)
        metrics.EVENTS_IN.labels("telegram").inc()
        if new:
            self.worker.kick()
        else:
            log.info("telegram update handled before", extra={"session": lane, "message_id": update["update_id"]})
        return new

    async def _poll_as_leader(self) -> None:
        """Telegram allows one getUpdates at a time: the process holding the lock polls."""
        while not self._stopper.stopping:
            try:
                async with self.store.lock(self._key("poller"), timeout=0):
                    await self._quietly(self.bot.delete_webhook())
                    await self._poll()
            except asyncio.CancelledError:
                raise
            except LockTimeout:
                await self._stopper.sleep(5)  # another process polls; be ready to take over
            except Exception:
                stop_if_cancelled()
                log.exception("telegram polling stopped; restarting")
                await self._stopper.sleep(2)

    async def _poll(self) -> None:
        offset = int(await self.store.get_meta(self._key("offset")) or 0)
        failures = 0
        while not self._stopper.stopping:
            try:
                updates = await self.bot.get_updates(offset=offset or None, timeout=self.cfg.poll_timeout,
                                                     allowed_updates=ALLOWED_UPDATES)
                failures = 0
            except asyncio.CancelledError:
                raise
            except RetryAfter as exc:
                await self._stopper.sleep(_seconds(exc))
                continue
            except Conflict:
                log.warning("a webhook is set; polling removes it")
                await self._quietly(self.bot.delete_webhook())
                continue
            except (TimedOut, NetworkError, TelegramError) as exc:
                stop_if_cancelled()
                failures += 1
                log.warning("getUpdates failed (%s); retrying", exc.__class__.__name__)
                await self._stopper.sleep(min(2 ** failures, 30))
                continue
            for u in updates:
                await self.push(u.to_dict())
            if updates:
                offset = max(u.update_id for u in updates) + 1
                # Stored after the updates: a crash in between re-reads them, and ingress dedupes.
                await self.store.set_meta(self._key("offset"), str(offset))

    async def _handle_rows(self, rows: list[IngressRow]) -> None:
        assert self.engine is not None
        updates = [Update.de_json(r.payload, self.bot) for r in rows]
        updates = [u for u in updates if u is not None]
        if not updates:
            return
        if len(updates) > 1:  # an album: one turn, all photos
            await self._buyer_album(updates)
            return
        u = updates[0]
        if u.callback_query is not None:
            await self._callback(u)
            return
        msg = u.message
        if msg is None:
            return  # edits and other update kinds are not conversation turns
        if msg.chat.type == "private":
            await self._buyer_message(msg)
        elif self.cfg.desk_chat is not None and msg.chat.id == self.cfg.desk_chat:
            await self._desk_message(msg)
        else:
            log.info("ignored a message from chat %s: not the desk", msg.chat.id,
                     extra={"session": str(msg.chat.id), "message_id": msg.message_id})

    # --- buyers ------------------------------------------------------------------------------
    def _channel(self, chat_id: int) -> Channel:
        return Channel(platform=PLATFORM, bot=self.bot_id, chat=str(chat_id))

    def _buyer(self, user: User | None, chat_id: int) -> Buyer:
        return Buyer(id=str(user.id if user else chat_id), name=display_name(user) if user else "")

    async def _buyer_message(self, msg: Message) -> None:
        assert self.engine is not None
        text = (msg.text or msg.caption or "").strip()
        payload = order_no = None
        m = _COMMAND.match(text) if msg.text else None
        if m and m.group(1).lower() == "start":
            payload, text = "start", ""
            arg = (m.group(3) or "").strip()
            ref = _DEEP_LINK_ORDER.match(arg)
            order_no = ref.group(1) if ref else None
        photos, files = await self._media_of([msg])
        if not text and not payload and not photos and not files:
            files = (FileInfo(name=_kind(msg), reason="unsupported"),)
        user = msg.from_user
        await self.engine.handle(BuyerMessage(
            message_id=f"{msg.chat.id}:{msg.message_id}", channel=self._channel(msg.chat.id),
            buyer=self._buyer(user, msg.chat.id), at=msg.date.timestamp(), text=text, payload=payload,
            photos=photos, files=files, order_no=order_no, locale=user.language_code if user else None,
        ))

    async def _buyer_album(self, updates: list[Update]) -> None:
        assert self.engine is not None
        msgs = [u.message for u in updates if u.message is not None]
        first = msgs[0]
        if first.chat.type != "private":
            if self.cfg.desk_chat is not None and first.chat.id == self.cfg.desk_chat:
                for m in msgs:
                    await self._desk_message(m)
            return
        photos, files = await self._media_of(msgs)
        caption = next((m.caption for m in msgs if m.caption), "") or ""
        await self.engine.handle(BuyerMessage(
            message_id=f"{first.chat.id}:album:{first.media_group_id}", channel=self._channel(first.chat.id),
            buyer=self._buyer(first.from_user, first.chat.id), at=first.date.timestamp(), text=caption.strip(),
            photos=photos, files=files, locale=first.from_user.language_code if first.from_user else None,
        ))

    async def _media_of(self, msgs: list[Message]) -> tuple[tuple[Media, ...], tuple[FileInfo, ...]]:
        """Download the photos (largest size) and image documents; everything else is a FileInfo."""
        photos: list[Media] = []
        files: list[FileInfo] = []
        for msg in msgs:
            file_id, name, ctype, size = None, "", "", 0
            if msg.photo:
                best = max(msg.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
                file_id, name, ctype, size = best.file_id, "photo.jpg", "image/jpeg", best.file_size or 0
            elif msg.document:
                doc = msg.document
                name, ctype, size = doc.file_name or "file", doc.mime_type or "", doc.file_size or 0
                if ctype.startswith("image/"):
                    file_id = doc.file_id
                else:
                    files.append(FileInfo(name=name, content_type=ctype, size=size, reason="not an image"))
                    continue
            else:
                continue
            if size > self.cfg.max_photo_bytes:
                files.append(FileInfo(name=name, content_type=ctype, size=size, reason="too large"))
                continue
            try:
                tg_file = await self.bot.get_file(file_id)
                data = bytes(await tg_file.download_as_bytearray())
                if len(data) > self.cfg.max_photo_bytes:
                    files.append(FileInfo(name=name, content_type=ctype, size=len(data), reason="too large"))
                    continue
                stored = await self.media.save_image(data)
            except NotAnImage as exc:
                files.append(FileInfo(name=name, content_type=ctype, size=size, reason=str(exc)[:200]))
                continue
            except BadRequest as exc:  # e.g. "file is too big" beyond the Bot API's 20 MB
                files.append(FileInfo(name=name, content_type=ctype, size=size, reason=str(exc)[:200]))
                continue
            photos.append(Media(id=stored.id, content_type=stored.content_type, size=stored.size,
                                width=stored.width, height=stored.height))
        return tuple(photos), tuple(files)

    async def _callback(self, u: Update) -> None:
        assert self.engine is not None
        q = u.callback_query
        assert q is not None
        data = q.data or ""
        chat = q.message.chat if q.message else None
        answer: str | None = None
        if chat is not None and chat.type == "private":
            await self.engine.handle(BuyerMessage(
                message_id=f"cb:{q.id}", channel=self._channel(chat.id), buyer=self._buyer(q.from_user, chat.id),
                at=time.time(), payload=data, locale=q.from_user.language_code,
            ))
        elif chat is not None and self.cfg.desk_chat is not None and chat.id == self.cfg.desk_chat:
            answer = await self._desk_button(q.id, data, q.from_user, q.message)  # type: ignore[arg-type]
        else:
            log.info("ignored a button press from chat %s", chat.id if chat else None)
        # Stop the client's spinner; an old query is not worth a retry.
        await self._quietly(q.answer(text=answer[:200] if answer else None))

    # --- the desk: agents in the group ------------------------------------------------------------
    async def _case_for(self, msg: Message) -> str | None:
        if msg.reply_to_message is not None and not (msg.is_topic_message and
                                                      msg.reply_to_message.message_id == msg.message_thread_id):
            found = await self.store.get_meta(self._key("desk", "msg", msg.reply_to_message.message_id))
            if found:
                return found
        if msg.is_topic_message and msg.message_thread_id:
            return await self.store.get_meta(self._key("desk", "thread", msg.message_thread_id))
        return None

    async def _desk_message(self, msg: Message) -> None:
        assert self.engine is not None
        user = msg.from_user
        if user is None or user.is_bot:
            return
        agent = display_name(user)
        text = (msg.text or msg.caption or "").strip()
        case_id = await self._case_for(msg)
        verb: str | None = None
        m = _COMMAND.match(text) if msg.text else None
        if m:
            if m.group(2) and self.me and m.group(2).lower() != (self.me.username or "").lower():
                return  # a command for another bot
            verb = {"take": "take", "note": "note", "resolve": "resolve", "reopen": "reopen",
                    "case": "show", "reply": "reply"}.get(m.group(1).lower())
            if verb is None:
                return
            text = (m.group(3) or "").strip()
            arg = _CASE_ARG.match(text)
            if arg:
                case_id, text = normalize_case_id(arg.group(1)), text[arg.end():].strip()
        elif msg.reply_to_message is not None:
            prompt = await self.store.get_meta(self._key("desk", "prompt", msg.reply_to_message.message_id))
            if prompt:
                case_id, verb = prompt, "resolve"
        if verb is None:
            if case_id is None:
                return  # agents talking among themselves
            verb = "reply"
        if case_id is None:
            await self._desk_notice(None, self.ctx.wording.render("notice_which_case", self.ctx.cfg.desk_locale))
            return
        photos: tuple[Media, ...] = ()
        if verb == "reply" and (msg.photo or msg.document):
            photos, _ = await self._media_of([msg])
        await self.engine.handle(AgentCommand(
            message_id=f"desk:{msg.chat.id}:{msg.message_id}", case_id=case_id, verb=verb,  # type: ignore[arg-type]
            agent=agent, at=msg.date.timestamp(), text=text, photos=photos, desk=PLATFORM,
        ))

    async def _desk_button(self, query_id: str, data: str, user: User, message: Message) -> str | None:
        assert self.engine is not None
        parts = data.split(":")
        if len(parts) != 3 or parts[0] != "desk" or parts[1] not in ("take", "resolve", "reopen"):
            return None
        verb, case_id = parts[1], parts[2]
        if verb == "resolve":
            # A resolution needs the outcome in words: ask for it as a reply.
            text = self.ctx.wording.render("desk_resolve_prompt", self.ctx.cfg.desk_locale, case_id=case_id)
            ref = await self._ref(case_id)
            sent = await self._send_desk(text, ref, reply_markup=ForceReply(selective=False))
            await self.store.set_meta(self._key("desk", "prompt", sent.message_id), case_id)
            return None
        out = await self.engine.handle(AgentCommand(
            message_id=f"cb:{query_id}", case_id=case_id, verb=verb, agent=display_name(user),  # type: ignore[arg-type]
            at=time.time(), desk=PLATFORM,
        ))
        return out.detail or None

    # --- outbound: buyer replies -----------------------------------------------------------------
    def _limiter(self, chat_id: int) -> AsyncLimiter:
        lim = self._chat_limits.get(chat_id)
        if lim is None:
            # About one message a second per private chat, allowing a short burst of three.
            lim = self._chat_limits[chat_id] = AsyncLimiter(3, 3)
        return lim

    async def _call(self, make: Callable[[], Awaitable[T]], chat_id: int | None = None) -> T:
        """One API call, paced, with Telegram's errors mapped for the dispatcher."""
        if chat_id is not None and chat_id > 0:
            await self._limiter(chat_id).acquire()
        try:
            return await make()
        except RetryAfter as exc:
            raise SendError(f"telegram 429: {exc}", retry_after=_seconds(exc)) from exc
        except Forbidden as exc:  # blocked by the user, kicked from the group
            raise SendError(f"telegram forbidden: {exc}", permanent=True,
                            reason="blocked" if "blocked" in str(exc).lower() else "undelivered") from exc
        except BadRequest as exc:
            raise SendError(f"telegram bad request: {exc}", permanent=True) from exc
        except (TimedOut, NetworkError) as exc:
            raise SendError(f"telegram network: {exc.__class__.__name__}") from exc

    @staticmethod
    def keyboard(buttons: list[tuple[str, str]], per_row: int = 2) -> InlineKeyboardMarkup | None:
        if not buttons:
            return None
        rows: list[list[InlineKeyboardButton]] = []
        for text, data in buttons:
            if len(data.encode()) > 64:
                continue  # Telegram's limit for callback data; our payloads stay far below it
            if not rows or len(rows[-1]) >= per_row or len(text) > 12:
                rows.append([])
            rows[-1].append(InlineKeyboardButton(text, callback_data=data))
            if len(text) > 12:
                rows.append([])
        return InlineKeyboardMarkup([r for r in rows if r])

    async def send(self, channel: Channel, replies: list[Reply], key: str = "") -> None:
        # The Bot API has no idempotency key: a crash between sending and marking it sent
        # can repeat one turn's messages (the one window left; see README).
        chat_id = int(channel.chat)
        for r in replies:
            markup = self.keyboard([(b.text, b.payload) for b in r.buttons])
            if r.photo is not None:
                data = await self.media.read(r.photo.id)
                await self._call(lambda: self.bot.send_photo(chat_id, data, caption=r.text[:MAX_CAPTION] or None,
                                                             reply_markup=markup), chat_id)
                rest = r.text[MAX_CAPTION:]
                if not rest:
                    continue
                await self._send_text(chat_id, rest, None)
                continue
            await self._send_text(chat_id, r.text, markup)

    async def _send_text(self, chat_id: int, text: str, markup: InlineKeyboardMarkup | None,
                         **kw: Any) -> list[Message]:
        chunks = [text[i:i + MAX_TEXT] for i in range(0, len(text), MAX_TEXT)] or [""]
        sent: list[Message] = []
        for i, chunk in enumerate(chunks):
            keys = markup if i == len(chunks) - 1 else None  # buttons go under the last part

            async def one(c: str = chunk, k: InlineKeyboardMarkup | None = keys) -> Message:
                return await self.bot.send_message(chat_id, c, reply_markup=k, **kw)

            sent.append(await self._call(one, chat_id))
        return sent

    # --- outbound: the desk --------------------------------------------------------------------------
    async def _ref(self, case_id: str) -> dict[str, Any]:
        raw = await self.store.get_meta(self._key("desk", "case", case_id))
        return json.loads(raw) if raw else {"thread": None, "card": None, "complete": False}

    async def _save_ref(self, case_id: str, ref: dict[str, Any]) -> None:
        await self.store.set_meta(self._key("desk", "case", case_id), json.dumps(ref))

    async def _remember(self, case_id: str, messages: list[Message]) -> None:
        for m in messages:
            await self.store.set_meta(self._key("desk", "msg", m.message_id), case_id)

    def _where(self, ref: dict[str, Any]) -> dict[str, Any]:
        """Forum: the case's topic. Plain group: a reply to the case card."""
        if self.forum and ref.get("thread"):
            return {"message_thread_id": ref["thread"]}
        if ref.get("card"):
            return {"reply_parameters": ReplyParameters(ref["card"], allow_sending_without_reply=True)}
        return {}

    async def _send_desk(self, text: str, ref: dict[str, Any], **kw: Any) -> Message:
        desk = self.cfg.desk_chat
        assert desk is not None
        return await self._call(lambda: self.bot.send_message(desk, text[:MAX_TEXT], **self._where(ref), **kw))

    async def _desk_notice(self, case_id: str | None, text: str) -> None:
        ref = await self._ref(case_id) if case_id else {}
        try:
            await self._send_desk(text, ref)
        except SendError as exc:
            log.warning("desk notice not sent: %s", exc)

    def _card_markup(self, card: dict[str, Any]) -> InlineKeyboardMarkup:
        label = lambda k: self.ctx.wording.label("desk_buttons", k, self.ctx.cfg.desk_locale)  # noqa: E731
        verbs = {"open": ["take", "resolve"], "taken": ["resolve"], "resolved": ["reopen"]}[card["status"]]
        return InlineKeyboardMarkup([[InlineKeyboardButton(label(v), callback_data=f"desk:{v}:{card['id']}")
                                      for v in verbs]])

    def _card_text(self, card: dict[str, Any]) -> str:
        return card_text_within(self.ctx, card, lambda t: len(t) <= MAX_TEXT)[:MAX_TEXT]

    async def publish(self, actions: list[DeskAction], load_card: Callable[[], Awaitable[dict[str, Any] | None]]) -> None:
        if self.cfg.desk_chat is None:
            return
        for a in actions:  # answers to an agent's command need no card (the case may not exist)
            if a.kind == "notice" and a.desk == PLATFORM:
                await self._desk_notice(a.case_id if await self.store.get_case(a.case_id) else None, a.text)
        if all(a.kind == "notice" for a in actions):
            return
        card = await load_card()
        if card is None:
            return
        for a in actions:
            if a.kind == "card":
                await self._post_card(card)
            elif a.kind == "update":
                await self._update_card(card)
            elif a.kind == "message":
                if a.who == "agent" and a.origin == PLATFORM:
                    continue  # the agent wrote it in this group: it is already there
                await self._post_line(card, a)

    async def _post_card(self, card: dict[str, Any]) -> None:
        desk = self.cfg.desk_chat
        assert desk is not None
        case_id = card["id"]
        ref = await self._ref(case_id)
        if ref.get("complete"):
            ref = {**ref, "card": None, "photos_sent": 0, "complete": False}  # "/case": show it again
        if self.forum and not ref.get("thread"):
            name = self.ctx.wording.render("desk_topic_name", self.ctx.cfg.desk_locale, case_id=case_id,
                                           claim_name=card["type_name"], order_no=card.get("order_no") or "")
            topic = await self._call(lambda: self.bot.create_forum_topic(desk, name[:128]))
            ref["thread"] = topic.message_thread_id
            await self._save_ref(case_id, ref)  # before anything else: a retry reuses the topic
            await self.store.set_meta(self._key("desk", "thread", topic.message_thread_id), case_id)
        if not ref.get("card"):
            msg = await self._send_desk(self._card_text(card), ref, reply_markup=self._card_markup(card))
            ref["card"], ref["photos_sent"] = msg.message_id, 0
            await self._save_ref(case_id, ref)
            await self._remember(case_id, [msg])
        photos = card.get("photos", [])[ref.get("photos_sent", 0):]
        for i in range(0, len(photos), 10):
            chunk = photos[i:i + 10]
            sent = await self._send_photos([p["id"] for p in chunk], ref)
            await self._remember(case_id, sent)
            ref["photos_sent"] = ref.get("photos_sent", 0) + len(chunk)
            await self._save_ref(case_id, ref)
        ref["complete"] = True
        await self._save_ref(case_id, ref)

    async def _send_photos(self, media_ids: list[str], ref: dict[str, Any], caption: str | None = None) -> list[Message]:
        desk = self.cfg.desk_chat
        assert desk is not None
        blobs = [await self.media.read(mid) for mid in media_ids]
        where = self._where(ref)
        if len(blobs) == 1:
            return [await self._call(lambda: self.bot.send_photo(desk, blobs[0], caption=caption, **where))]
        group = [InputMediaPhoto(b, caption=caption if i == 0 else None) for i, b in enumerate(blobs)]
        return list(await self._call(lambda: self.bot.send_media_group(desk, group, **where)))

    async def _update_card(self, card: dict[str, Any]) -> None:
        desk = self.cfg.desk_chat
        assert desk is not None
        ref = await self._ref(card["id"])
        if not ref.get("card"):
            await self._post_card(card)
            return
        try:
            await self._call(lambda: self.bot.edit_message_text(
                self._card_text(card), chat_id=desk, message_id=ref["card"], reply_markup=self._card_markup(card)))
        except SendError as exc:
            if "not modified" in str(exc):
                return
            if "not found" in str(exc):  # someone deleted the card: post it again
                await self._save_ref(card["id"], {**ref, "card": None, "complete": False})
                await self._post_card(card)
                return
            raise

    async def _post_line(self, card: dict[str, Any], a: DeskAction) -> None:
        ref = await self._ref(card["id"])
        if not ref.get("card"):
            await self._post_card(card)
            ref = await self._ref(card["id"])
        name = card["buyer"]["name"] if a.who == "buyer" else (a.agent or "")
        said = mask(a.text) if a.who == "buyer" else a.text  # the group sees no phone numbers or addresses
        line = self.ctx.wording.render("desk_line", self.ctx.cfg.desk_locale, sender=a.who or "system",
                                       sender_name=name, line=said)
        sent: list[Message] = []
        if a.photos:
            sent += await self._send_photos([p.id for p in a.photos][:10], ref,
                                            caption=line[:MAX_CAPTION] if a.text else None)
            if a.text and len(line) <= MAX_CAPTION:
                await self._remember(card["id"], sent)
                return
        if a.text or not a.photos:
            sent.append(await self._send_desk(line, ref))
        await self._remember(card["id"], sent)

    async def _quietly(self, coro: Awaitable[Any]) -> None:
        try:
            await coro
        except TelegramError as exc:
            log.info("telegram call skipped: %s", exc)


def _kind(msg: Message) -> str:
    for kind in ("sticker", "voice", "video", "audio", "animation", "location", "contact", "video_note"):
        if getattr(msg, kind, None):
            return kind
    return "message"
