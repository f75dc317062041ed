"""A local fake of the Telegram Bot API server, for tests.

It speaks the wire protocol documented at https://core.telegram.org/bots/api closely enough that the
real python-telegram-bot client runs against it unmodified over real HTTP on 127.0.0.1:

* ``{base}/bot{token}/{method}`` accepts GET and POST with parameters in the query string,
  ``application/json``, ``application/x-www-form-urlencoded`` or ``multipart/form-data``; method names
  are case-insensitive, as on the real server.
* Every answer is ``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": N, "description": ...}``
  (plus ``parameters.retry_after`` for 429), with the HTTP status equal to ``error_code``.
* Files are served at ``{base}/file/bot{token}/{file_path}``.

The test drives the *other side* of the conversation through plain methods (``user``, ``text``,
``photo``, ``press`` ...) which build real Update objects, and inspects what the bot did through
``calls``, ``messages``, ``sent_to`` and friends.

Error descriptions follow the real server where they are known (tdlib/telegram-bot-api lower-cases the
first letter of most messages and prefixes "Bad Request: "); a few whose exact wording could not be
confirmed are marked as such next to where they are raised.
"""

from __future__ import annotations

import asyncio
import copy
import html.parser
import io
import itertools
import json
import math
import mimetypes
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

Json = dict[str, Any]

#: Default of ``FakeTelegram.deliver(secret=...)``: send the secret the bot registered with setWebhook.
USE_REGISTERED = "use-registered"

# Update types the real server sends when allowed_updates is empty or was never given.
_DEFAULT_UPDATE_TYPES = frozenset(
    {
        "message", "edited_message", "channel_post", "edited_channel_post", "business_connection",
        "business_message", "edited_business_message", "deleted_business_messages", "inline_query",
        "chosen_inline_result", "callback_query", "shipping_query", "pre_checkout_query",
        "purchased_paid_media", "poll", "poll_answer", "my_chat_member", "chat_join_request",
        "chat_boost", "removed_chat_boost",
    }
)

# Form bodies carry every value as a string and PTB JSON-encodes complex and numeric values, so form
# values are JSON-decoded -- except these, which are always strings (a text of "123" must stay "123").
_TEXT_PARAMS = frozenset(
    {
        "text", "caption", "parse_mode", "callback_query_id", "url", "secret_token", "name", "title",
        "description", "file_id", "inline_message_id", "business_connection_id", "message_effect_id",
        "ip_address", "action", "query", "icon_custom_emoji_id", "emoji", "photo", "document", "video",
        "audio", "animation", "voice", "video_note", "sticker", "thumbnail", "custom_title",
        "short_description", "language_code", "question", "explanation", "address", "phone_number",
        "first_name", "last_name", "vcard", "payload", "currency", "start_parameter",
    }
)

_CHAT_ACTIONS = frozenset(
    {
        "typing", "upload_photo", "record_video", "upload_video", "record_voice", "upload_voice",
        "upload_document", "choose_sticker", "find_location", "record_video_note", "upload_video_note",
    }
)

# The six colours the Bot API allows for forum topic icons (createForumTopic docs).
_TOPIC_COLORS = frozenset({0x6FB9F0, 0xFFD67E, 0xCB86DB, 0x8EEE98, 0xFF93B2, 0xFB6F5F})

_INLINE_BUTTON_ACTIONS = (
    "url", "callback_data", "web_app", "login_url", "switch_inline_query",
    "switch_inline_query_current_chat", "switch_inline_query_chosen_chat", "copy_text",
    "callback_game", "pay",
)

_MAX_DOWNLOAD = 20 * 1024 * 1024  # getFile refuses bigger files on the cloud Bot API
_SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")

_MESSAGE_NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)
_QUERY_INVALID = "Bad Request: query is too old and response timeout expired or query ID is invalid"


class ApiError(Exception):
    """An error answer of the Bot API; raised anywhere inside a method handler."""

    def __init__(self, code: int, description: str, parameters: Json | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters


@dataclass(frozen=True)
class Upload:
    """A file part of a multipart request, as it appears in the recorded call parameters."""

    filename: str | None
    content_type: str
    data: bytes = field(repr=False)


@dataclass
class _StoredFile:
    file_id: str
    file_unique_id: str
    data: bytes
    file_path: str
    kind: str  # "photo" or "document": the real API refuses to send one kind's file_id as the other


@dataclass
class _Answer:
    """A successful result that also carries a description (setWebhook/deleteWebhook do that)."""

    result: Any
    description: str


_Handler = Callable[[Json], Awaitable[Any]]


class FakeTelegram:
    """An in-process Telegram Bot API server for one bot; see the module docstring."""

    def __init__(self, token: str = "123456:TEST-token", bot_username: str = "KefuShopBot") -> None:
        self.token = token
        bot_id = token.split(":", 1)[0]
        # A real token starts with the bot's user id; keep that so ids line up like in production.
        self.bot_user: Json = {
            "id": int(bot_id) if bot_id.isdigit() else 1,
            "is_bot": True,
            "first_name": "Kefu Shop",
            "username": bot_username,
        }
        self.base = ""
        self.api_url = ""
        self.file_url = ""

        # What the bot did.
        self.calls: list[tuple[str, Json]] = []
        self.messages: list[Json] = []
        self.topics: dict[int, list[Json]] = {}
        self.callback_answers: list[Json] = []
        self.webhook: Json | None = None

        self._server: TestServer | None = None
        self._closing = False

        # The world: users, chats, and every message per chat (latest state; deleted ones removed).
        self._users: dict[int, Json] = {}
        self._chats: dict[int, Json] = {}
        self._blocked: set[int] = set()  # users who blocked the bot
        self._store: dict[int, dict[int, Json]] = {}
        self._next_message_id: dict[int, int] = {}
        self._bot_sent: list[tuple[int, int]] = []  # (chat_id, message_id) in sending order
        self._attachments: dict[tuple[int, int], Json] = {}  # extra keys for recorded copies
        self._user_ids = itertools.count(6_100_000_001)
        self._group_ids = itertools.count(2_000_000_001)
        self._update_ids = itertools.count(700_000_001)
        self._query_ids = itertools.count(4_380_000_000_000_000_001)
        self._media_group_ids = itertools.count(13_900_000_000_000_001)
        self._open_queries: set[str] = set()

        # Files by file_id and by file_path; photo file_ids map to their whole PhotoSize list.
        self._files: dict[str, _StoredFile] = {}
        self._paths: dict[str, _StoredFile] = {}
        self._photo_sets: dict[str, list[Json]] = {}
        self._documents: dict[str, Json] = {}
        self._file_seq = itertools.count(1)

        # getUpdates state.
        self._updates: list[Json] = []
        self._allowed: frozenset[str] = _DEFAULT_UPDATE_TYPES
        self._wakeup = asyncio.Event()
        self._poll_generation = 0
        self._webhook_error: tuple[int, str] | None = None
        self._floods: dict[str, list[int]] = {}  # lower-case method -> [times left, retry_after]

        self._methods: dict[str, tuple[str, _Handler]] = {
            name.lower(): (name, handler)
            for name, handler in {
                "getMe": self._get_me,
                "getUpdates": self._get_updates,
                "setWebhook": self._set_webhook,
                "deleteWebhook": self._delete_webhook,
                "getWebhookInfo": self._get_webhook_info,
                "sendMessage": self._send_message,
                "sendPhoto": self._send_photo,
                "sendDocument": self._send_document,
                "sendMediaGroup": self._send_media_group,
                "sendChatAction": self._send_chat_action,
                "editMessageText": self._edit_message_text,
                "editMessageReplyMarkup": self._edit_message_reply_markup,
                "deleteMessage": self._delete_message,
                "answerCallbackQuery": self._answer_callback_query,
                "getFile": self._get_file,
                "createForumTopic": self._create_forum_topic,
                "getChat": self._get_chat,
                "getChatMember": self._get_chat_member,
            }.items()
        }

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        # Bots may upload up to 50 MB; aiohttp's default body limit is 1 MB.
        app = web.Application(client_max_size=60 * 1024 * 1024)
        app.router.add_route("*", "/file/bot{token}/{path:.+}", self._on_file)
        app.router.add_route("*", "/bot{token}/{method}", self._on_api)
        app.router.add_route("*", "/{tail:.*}", self._on_unknown_path)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        self.base = f"http://127.0.0.1:{self._server.port}"
        self.api_url = f"{self.base}/bot"
        self.file_url = f"{self.base}/file/bot"

    async def close(self) -> None:
        # Long-polling getUpdates calls would otherwise hold the server's shutdown for their timeout.
        self._closing = True
        self._wake()
        if self._server is not None:
            await self._server.close()
            self._server = None

    # ------------------------------------------------------------------ people and chats

    def user(
        self,
        first_name: str,
        *,
        last_name: str | None = None,
        username: str | None = None,
        language_code: str = "zh-hans",
    ) -> Json:
        user: Json = {"id": next(self._user_ids), "is_bot": False, "first_name": first_name}
        if last_name:
            user["last_name"] = last_name
        if username:
            user["username"] = username
        if language_code:
            user["language_code"] = language_code
        self._users[user["id"]] = user
        return copy.deepcopy(user)

    def private_chat(self, user: Json) -> Json:
        """The user's private chat with the bot. It exists from now on: on the real platform a bot
        cannot write first, so sending to a user who never got a private chat answers 403."""
        if user["id"] not in self._chats:
            chat: Json = {"id": user["id"], "type": "private", "first_name": user["first_name"]}
            for key in ("last_name", "username"):
                if user.get(key):
                    chat[key] = user[key]
            self._chats[user["id"]] = chat
            self._users.setdefault(user["id"], copy.deepcopy(user))
        return copy.deepcopy(self._chats[user["id"]])

    def block(self, user: Json) -> None:
        """The user blocks the bot: everything sent to their private chat answers 403 from now on."""
        self._blocked.add(user["id"])

    def group(self, title: str, *, forum: bool = False) -> Json:
        """A supergroup with the bot in it as an administrator (so it may create forum topics)."""
        chat: Json = {"id": int(f"-100{next(self._group_ids)}"), "title": title, "type": "supergroup"}
        if forum:
            chat["is_forum"] = True
        self._chats[chat["id"]] = chat
        return copy.deepcopy(chat)

    # ------------------------------------------------------------------ updates arriving for the bot

    def text(
        self,
        user: Json,
        text: str,
        *,
        chat: Json | None = None,
        thread_id: int | None = None,
        reply_to: Json | None = None,
        queue: bool = True,
    ) -> Json:
        msg = self._incoming(user, chat, thread_id, reply_to)
        msg["text"] = text
        command = re.match(r"/[A-Za-z0-9_]+(@[A-Za-z0-9_]+)?", text)
        if command:
            msg["entities"] = [{"type": "bot_command", "offset": 0, "length": _u16(command.group(0))}]
        return self._push("message", msg, queue)

    def photo(
        self,
        user: Json,
        data: bytes,
        *,
        caption: str | None = None,
        media_group_id: str | None = None,
        chat: Json | None = None,
        thread_id: int | None = None,
        reply_to: Json | None = None,
        queue: bool = True,
    ) -> Json:
        msg = self._incoming(user, chat, thread_id, reply_to)
        if media_group_id is not None:
            msg["media_group_id"] = media_group_id
        # Tests may pass bytes that are not a real image; pretend it is a typical phone photo then.
        msg["photo"] = self._make_photo(data, _image_size(data) or (1280, 960))
        if caption:
            msg["caption"] = caption
        return self._push("message", msg, queue)

    def document(
        self,
        user: Json,
        data: bytes,
        *,
        file_name: str,
        mime_type: str,
        caption: str | None = None,
        chat: Json | None = None,
        queue: bool = True,
    ) -> Json:
        msg = self._incoming(user, chat, None, None)
        msg["document"] = self._make_document(data, file_name, mime_type)
        if caption:
            msg["caption"] = caption
        return self._push("message", msg, queue)

    def press(self, user: Json, message: Json, data: str, *, queue: bool = True) -> Json:
        """The user taps the inline button with callback_data ``data`` under ``message``.

        The message's *current* state decides which buttons exist: a button the bot has since edited
        away cannot be pressed, just like in a real client."""
        stored = self._store.get(message["chat"]["id"], {}).get(message["message_id"])
        if stored is None:
            raise ValueError(f"message {message['message_id']} does not exist (any more) in that chat")
        rows = stored.get("reply_markup", {}).get("inline_keyboard", [])
        offered = [button.get("callback_data") for row in rows for button in row]
        if data not in offered:
            raise ValueError(f"no inline button with callback_data {data!r} on that message; it has {offered}")
        self._users.setdefault(user["id"], copy.deepcopy(user))
        query_id = str(next(self._query_ids))
        self._open_queries.add(query_id)
        query: Json = {
            "id": query_id,
            "from": copy.deepcopy(user),
            "message": copy.deepcopy(stored),
            # Stable per chat, like the real opaque value.
            "chat_instance": str((stored["chat"]["id"] * 2654435761) & 0x7FFFFFFFFFFFFFFF),
            "data": data,
        }
        return self._push("callback_query", query, queue)

    # ------------------------------------------------------------------ what the bot did

    def sent_to(self, chat_id: int, thread_id: int | None = None) -> list[Json]:
        """Messages the bot sent to the chat (to that forum topic if ``thread_id`` is given, otherwise
        to any topic), in sending order, in their latest state; deleted messages are left out."""
        found = []
        for cid, mid in self._bot_sent:
            msg = self._store.get(cid, {}).get(mid)
            if cid != chat_id or msg is None:
                continue
            if thread_id is not None and msg.get("message_thread_id") != thread_id:
                continue
            found.append(self._recorded(msg))
        return found

    @property
    def unconfirmed(self) -> int:
        """Updates queued for getUpdates that the bot has not confirmed with a later offset yet."""
        return len(self._updates)

    # ------------------------------------------------------------------ faults

    def rate_limit(self, method: str, times: int, retry_after: int = 1) -> None:
        self._floods[method.lower()] = [times, retry_after]

    # ------------------------------------------------------------------ webhook delivery

    async def deliver(self, update: Json, *, secret: str | None = USE_REGISTERED) -> int:
        """POST ``update`` to the registered webhook the way Telegram does; return the HTTP status."""
        if self.webhook is None:
            raise RuntimeError("no webhook is set: the bot has to call setWebhook first")
        headers = {"Content-Type": "application/json"}
        token = self.webhook.get("secret_token") if secret == USE_REGISTERED else secret
        if token is not None:
            headers["X-Telegram-Bot-Api-Secret-Token"] = token
        timeout = aiohttp.ClientTimeout(total=60)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.post(self.webhook["url"], data=json.dumps(update), headers=headers) as resp,
        ):
            status, reason = resp.status, resp.reason
        if 200 <= status < 300:
            # Delivered updates are no longer pending (getWebhookInfo.pending_update_count).
            self._updates = [u for u in self._updates if u["update_id"] != update.get("update_id")]
        else:
            self._webhook_error = (int(time.time()), f"Wrong response from the webhook: {status} {reason}")
        return status

    # ================================================================== HTTP layer

    async def _on_api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error_response(ApiError(401, "Unauthorized"))
        requested = request.match_info["method"]
        try:
            params = await _read_params(request)
        except ApiError as exc:
            return _error_response(exc)
        entry = self._methods.get(requested.lower())
        self.calls.append((entry[0] if entry else requested, params))
        if entry is None:
            return _error_response(ApiError(404, "Not Found"))
        name, handler = entry
        try:
            self._check_flood(name)
            result = await handler(params)
        except ApiError as exc:
            return _error_response(exc)
        body: Json = {"ok": True, "result": result}
        if isinstance(result, _Answer):
            body = {"ok": True, "result": result.result, "description": result.description}
        return _json_response(body, 200)

    async def _on_file(self, request: web.Request) -> web.Response:
        stored = self._paths.get(request.match_info["path"])
        if request.match_info["token"] != self.token or stored is None:
            return _error_response(ApiError(404, "Not Found"))
        return web.Response(body=stored.data, content_type="application/octet-stream")

    async def _on_unknown_path(self, request: web.Request) -> web.Response:
        return _error_response(ApiError(404, "Not Found"))

    def _check_flood(self, method: str) -> None:
        flood = self._floods.get(method.lower())
        if flood and flood[0] > 0:
            flood[0] -= 1
            raise ApiError(429, f"Too Many Requests: retry after {flood[1]}", {"retry_after": flood[1]})

    # ================================================================== methods

    async def _get_me(self, p: Json) -> Json:
        return {
            **self.bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _get_updates(self, p: Json) -> list[Json]:
        if self.webhook is not None:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = _opt_int(p, "offset")
        limit = min(max(_opt_int(p, "limit") or 100, 1), 100)
        timeout = max(_opt_int(p, "timeout") or 0, 0)
        allowed = p.get("allowed_updates")
        if isinstance(allowed, list):
            # An omitted list keeps the previous setting; an empty one restores the default.
            self._allowed = frozenset(allowed) or _DEFAULT_UPDATE_TYPES
        if offset is not None:
            self._confirm(offset)

        # Only one getUpdates may be pending: a newer one (or setWebhook) terminates the older.
        self._poll_generation += 1
        mine = self._poll_generation
        self._wake()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self._poll_generation != mine:
                raise ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; "
                    "make sure that only one bot instance is running",
                )
            if self.webhook is not None:
                raise ApiError(409, "Conflict: terminated by setWebhook request")
            # Updates of types the bot did not ask for are never produced by the real server.
            self._updates = [u for u in self._updates if _update_type(u) in self._allowed]
            if self._updates or self._closing:
                return copy.deepcopy(self._updates[:limit])
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return []
            wakeup = self._wakeup
            try:
                await asyncio.wait_for(wakeup.wait(), remaining)
            except TimeoutError:
                pass

    async def _set_webhook(self, p: Json) -> _Answer:
        url = p.get("url") or ""
        if not isinstance(url, str):
            raise ApiError(400, "Bad Request: invalid webhook URL specified")
        if url == "":
            return await self._delete_webhook(p)
        parts = urlsplit(url)
        # Deviation: the real server insists on HTTPS and ports 443/80/88/8443; a local fake must
        # deliver to plain http://127.0.0.1:<random port>.
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ApiError(400, "Bad Request: bad webhook: invalid webhook URL specified")
        secret = p.get("secret_token")
        if secret is not None and (not isinstance(secret, str) or not _SECRET_TOKEN.fullmatch(secret)):
            raise ApiError(400, "Bad Request: secret token contains unallowed characters")  # wording unverified
        max_connections = _opt_int(p, "max_connections") or 40
        if not 1 <= max_connections <= 100:
            raise ApiError(400, "Bad Request: invalid max_connections specified")  # wording unverified
        allowed = p.get("allowed_updates")
        if allowed is not None and not (isinstance(allowed, list) and all(isinstance(a, str) for a in allowed)):
            raise ApiError(400, "Bad Request: can't parse allowed updates JSON object")  # wording unverified
        if isinstance(allowed, list):
            self._allowed = frozenset(allowed) or _DEFAULT_UPDATE_TYPES
        drop = _opt_bool(p, "drop_pending_updates")
        if drop:
            self._updates.clear()
        already = self.webhook is not None and self.webhook["url"] == url
        self.webhook = {
            "url": url,
            "secret_token": secret,
            "allowed_updates": allowed,
            "max_connections": max_connections,
            "drop_pending_updates": drop,
            "ip_address": p.get("ip_address"),
        }
        self._webhook_error = None
        self._wake()  # a pending getUpdates is terminated with 409
        return _Answer(True, "Webhook is already set" if already else "Webhook was set")

    async def _delete_webhook(self, p: Json) -> _Answer:
        if _opt_bool(p, "drop_pending_updates"):
            self._updates.clear()
        was_set = self.webhook is not None
        self.webhook = None
        self._webhook_error = None
        return _Answer(True, "Webhook was deleted" if was_set else "Webhook is already deleted")

    async def _get_webhook_info(self, p: Json) -> Json:
        info: Json = {
            "url": self.webhook["url"] if self.webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        if self.webhook is not None:
            info["max_connections"] = self.webhook["max_connections"]
            info["ip_address"] = self.webhook["ip_address"] or "127.0.0.1"
            if self.webhook["allowed_updates"]:
                info["allowed_updates"] = self.webhook["allowed_updates"]
            if self._webhook_error is not None:
                info["last_error_date"], info["last_error_message"] = self._webhook_error
        return info

    async def _send_message(self, p: Json) -> Json:
        chat = self._chat(p)
        text, entities = _formatted(
            p.get("text"), p.get("parse_mode"), p.get("entities"),
            empty="Bad Request: message text is empty", too_long="Bad Request: message is too long",
            limit=4096,
        )
        thread_id, reply_to, markup = self._thread(chat, p), self._reply_target(chat, p), _markup(p)
        msg = self._outgoing(chat, thread_id, reply_to)
        msg["text"] = text
        if entities:
            msg["entities"] = entities
        return self._finish(msg, p, markup, {})

    async def _send_photo(self, p: Json) -> Json:
        chat = self._chat(p)
        if p.get("photo") in (None, ""):
            raise ApiError(400, "Bad Request: there is no photo in the request")
        sizes, data = self._photo_input(p, p["photo"])
        caption = _caption(p)
        thread_id, reply_to, markup = self._thread(chat, p), self._reply_target(chat, p), _markup(p)
        msg = self._outgoing(chat, thread_id, reply_to)
        msg["photo"] = sizes
        msg.update(caption)
        return self._finish(msg, p, markup, {"photo_bytes": data})

    async def _send_document(self, p: Json) -> Json:
        chat = self._chat(p)
        if p.get("document") in (None, ""):
            raise ApiError(400, "Bad Request: there is no document in the request")
        document, data = self._document_input(p, p["document"])
        caption = _caption(p)
        thread_id, reply_to, markup = self._thread(chat, p), self._reply_target(chat, p), _markup(p)
        msg = self._outgoing(chat, thread_id, reply_to)
        msg["document"] = document
        msg.update(caption)
        return self._finish(msg, p, markup, {"document_bytes": data})

    async def _send_media_group(self, p: Json) -> list[Json]:
        chat = self._chat(p)
        media = p.get("media")
        if media in (None, ""):
            raise ApiError(400, 'Bad Request: parameter "media" is required')
        if not isinstance(media, list):
            raise ApiError(400, "Bad Request: can't parse media JSON object")
        if len(media) > 10:
            raise ApiError(400, "Bad Request: too much messages to send as an album")
        if len(media) < 2:
            raise ApiError(400, "Bad Request: media group must include 2-10 items")  # wording unverified
        thread_id, reply_to = self._thread(chat, p), self._reply_target(chat, p)

        # Validate and store every item before sending any, so a bad item sends nothing at all.
        prepared: list[tuple[str, Any, bytes, Json]] = []
        for item in media:
            payload: Any
            kind = item.get("type") if isinstance(item, dict) else None
            if kind not in ("photo", "document"):
                raise ApiError(400, "Bad Request: can't parse InputMedia: unsupported media type")
            if item.get("media") in (None, ""):
                raise ApiError(400, "Bad Request: can't parse InputMedia: media not found")
            if kind == "photo":
                payload, data = self._photo_input(p, item["media"])
            else:
                payload, data = self._document_input(p, item["media"])
            prepared.append((kind, payload, data, _caption(item)))
        if len({kind for kind, *_ in prepared}) > 1:
            # Documents can only be grouped with documents (sendMediaGroup docs).
            raise ApiError(400, "Bad Request: can't use the media of the specified type in the album")

        group_id = str(next(self._media_group_ids))
        sent = []
        for kind, payload, data, caption in prepared:
            msg = self._outgoing(chat, thread_id, reply_to)
            msg["media_group_id"] = group_id
            msg[kind] = payload
            msg.update(caption)
            sent.append(self._finish(msg, p, None, {f"{kind}_bytes": data}))
        return sent

    async def _send_chat_action(self, p: Json) -> bool:
        chat = self._chat(p)
        self._thread(chat, p)
        if p.get("action") not in _CHAT_ACTIONS:
            raise ApiError(400, "Bad Request: wrong parameter action in request")
        return True

    async def _edit_message_text(self, p: Json) -> Json:
        msg = self._editable(p)
        if "text" not in msg:
            raise ApiError(400, "Bad Request: there is no text in the message to edit")
        text, entities = _formatted(
            p.get("text"), p.get("parse_mode"), p.get("entities"),
            empty="Bad Request: message text is empty", too_long="Bad Request: MESSAGE_TOO_LONG",
            limit=4096,
        )
        # Leaving reply_markup out of an edit removes the keyboard, as on the real platform.
        markup = _markup(p, inline_only=True)
        if text == msg["text"] and entities == msg.get("entities", []) and markup == msg.get("reply_markup"):
            raise ApiError(400, _MESSAGE_NOT_MODIFIED)
        msg["text"] = text
        _set_or_drop(msg, "entities", entities or None)
        _set_or_drop(msg, "reply_markup", markup)
        msg["edit_date"] = int(time.time())
        self._record(msg)
        return copy.deepcopy(msg)

    async def _edit_message_reply_markup(self, p: Json) -> Json:
        msg = self._editable(p)
        markup = _markup(p, inline_only=True)
        if markup == msg.get("reply_markup"):
            raise ApiError(400, _MESSAGE_NOT_MODIFIED)
        _set_or_drop(msg, "reply_markup", markup)
        msg["edit_date"] = int(time.time())
        self._record(msg)
        return copy.deepcopy(msg)

    async def _delete_message(self, p: Json) -> bool:
        chat = self._chat(p)
        message_id = _opt_int(p, "message_id")
        if message_id is None:
            raise ApiError(400, "Bad Request: message identifier is not specified")
        msg = self._store.get(chat["id"], {}).get(message_id)
        if msg is None:
            raise ApiError(400, "Bad Request: message to delete not found")
        if "forum_topic_created" in msg:
            raise ApiError(400, "Bad Request: message can't be deleted")
        del self._store[chat["id"]][message_id]
        return True

    async def _answer_callback_query(self, p: Json) -> bool:
        query_id = _req_str(p, "callback_query_id")
        if query_id not in self._open_queries:
            raise ApiError(400, _QUERY_INVALID)
        if len(p.get("text") or "") > 200:
            raise ApiError(400, "Bad Request: MESSAGE_TOO_LONG")
        # A query can be answered once; a second answer gets the same error as an unknown id.
        self._open_queries.discard(query_id)
        self.callback_answers.append(copy.deepcopy(p))
        return True

    async def _get_file(self, p: Json) -> Json:
        file_id = _req_str(p, "file_id")
        stored = self._files.get(file_id)
        if stored is None:
            raise ApiError(400, "Bad Request: invalid file_id")
        if len(stored.data) > _MAX_DOWNLOAD:
            raise ApiError(400, "Bad Request: file is too big")
        return {
            "file_id": file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data),
            "file_path": stored.file_path,
        }

    async def _create_forum_topic(self, p: Json) -> Json:
        chat = self._chat(p)
        if chat["type"] != "supergroup" or not chat.get("is_forum"):
            raise ApiError(400, "Bad Request: the chat is not a forum")
        name = _req_str(p, "name")
        if len(name) > 128:
            raise ApiError(400, "Bad Request: TOPIC_TITLE_INVALID")  # wording unverified
        color = _opt_int(p, "icon_color")
        if color is None:
            color = 0x6FB9F0
        elif color not in _TOPIC_COLORS:
            raise ApiError(400, "Bad Request: invalid icon_color specified")  # wording unverified
        # A topic's message_thread_id is the id of its "forum_topic_created" service message.
        service = self._outgoing(chat, None, None)
        thread_id = service["message_id"]
        topic: Json = {"message_thread_id": thread_id, "name": name, "icon_color": color}
        if p.get("icon_custom_emoji_id"):
            topic["icon_custom_emoji_id"] = p["icon_custom_emoji_id"]
        service.update(
            message_thread_id=thread_id,
            is_topic_message=True,
            forum_topic_created={k: v for k, v in topic.items() if k != "message_thread_id"},
        )
        self._store_message(service)
        self.topics.setdefault(chat["id"], []).append(topic)
        return copy.deepcopy(topic)

    async def _get_chat(self, p: Json) -> Json:
        chat = self._chat(p)
        private = chat["type"] == "private"
        # getChat answers a ChatFullInfo, whose accent/reaction/gift fields are required.
        return {
            **copy.deepcopy(chat),
            "accent_color_id": 0,
            "max_reaction_count": 11,
            "accepted_gift_types": {
                "unlimited_gifts": private,
                "limited_gifts": private,
                "unique_gifts": private,
                "premium_subscription": private,
                "gifts_from_channels": private,
            },
        }

    async def _get_chat_member(self, p: Json) -> Json:
        chat = self._chat(p)
        user_id = _opt_int(p, "user_id")
        if user_id is None:
            raise ApiError(400, "Bad Request: invalid user_id specified")
        if user_id == self.bot_user["id"]:
            if chat["type"] == "private":
                return {"status": "member", "user": copy.deepcopy(self.bot_user)}
            return _bot_administrator(self.bot_user)
        user = self._users.get(user_id)
        if user is None:
            return {"status": "left", "user": {"id": user_id, "is_bot": False, "first_name": ""}}
        return {"status": "member", "user": copy.deepcopy(user)}

    # ================================================================== helpers: resolving parameters

    def _chat(self, p: Json) -> Json:
        value = p.get("chat_id")
        if value in (None, ""):
            raise ApiError(400, "Bad Request: chat_id is empty")
        chat: Json | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            chat = self._chats.get(value)
            if value in self._blocked:
                raise ApiError(403, "Forbidden: bot was blocked by the user")
            if chat is None and value in self._users:
                raise ApiError(403, "Forbidden: bot can't initiate conversation with a user")
        elif isinstance(value, str) and value.startswith("@"):
            chat = next((c for c in self._chats.values() if c.get("username") == value[1:]), None)
        if chat is None:
            raise ApiError(400, "Bad Request: chat not found")
        return chat

    def _thread(self, chat: Json, p: Json) -> int | None:
        thread_id = _opt_int(p, "message_thread_id")
        if thread_id is None:
            return None
        known = {t["message_thread_id"] for t in self.topics.get(chat["id"], [])}
        if thread_id not in known:
            raise ApiError(400, "Bad Request: message thread not found")
        return thread_id

    def _reply_target(self, chat: Json, p: Json) -> Json | None:
        params = p.get("reply_parameters")
        if params is not None:
            if not isinstance(params, dict) or not isinstance(params.get("message_id"), int):
                raise ApiError(400, "Bad Request: can't parse reply parameters JSON object")
            message_id = params["message_id"]
            allow_missing = bool(params.get("allow_sending_without_reply"))
            chat_id = params.get("chat_id", chat["id"])
        else:
            message_id = _opt_int(p, "reply_to_message_id")
            allow_missing = _opt_bool(p, "allow_sending_without_reply")
            chat_id = chat["id"]
            if message_id is None:
                return None
        target = self._store.get(chat_id, {}).get(message_id) if chat_id == chat["id"] else None
        if target is None and not allow_missing:
            raise ApiError(400, "Bad Request: message to be replied not found")
        return target

    def _editable(self, p: Json) -> Json:
        if p.get("inline_message_id"):
            raise ApiError(400, "Bad Request: MESSAGE_ID_INVALID")  # no inline mode in this fake
        chat = self._chat(p)
        message_id = _opt_int(p, "message_id")
        if message_id is None:
            raise ApiError(400, "Bad Request: message identifier is not specified")
        msg = self._store.get(chat["id"], {}).get(message_id)
        if msg is None:
            raise ApiError(400, "Bad Request: message to edit not found")
        if msg["from"]["id"] != self.bot_user["id"] or "forum_topic_created" in msg:
            raise ApiError(400, "Bad Request: message can't be edited")
        return msg

    def _photo_input(self, p: Json, value: Any) -> tuple[list[Json], bytes]:
        """An InputFile-or-string photo parameter -> (PhotoSize list, original bytes)."""
        value = _attached(p, value)
        if isinstance(value, Upload):
            if not value.data:
                raise ApiError(400, "Bad Request: file must be non-empty")
            size = _image_size(value.data)
            if size is None:
                raise ApiError(400, "Bad Request: IMAGE_PROCESS_FAILED")
            return self._make_photo(value.data, size), value.data
        stored = self._existing_file(value)
        if stored.kind != "photo":
            raise ApiError(400, "Bad Request: type of file mismatch")
        return copy.deepcopy(self._photo_sets[stored.file_id]), stored.data

    def _document_input(self, p: Json, value: Any) -> tuple[Json, bytes]:
        value = _attached(p, value)
        if isinstance(value, Upload):
            if not value.data:
                raise ApiError(400, "Bad Request: file must be non-empty")
            name = value.filename or "document"
            mime = value.content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
            return self._make_document(value.data, name, mime), value.data
        stored = self._existing_file(value)
        if stored.kind != "document":
            raise ApiError(400, "Bad Request: type of file mismatch")
        return copy.deepcopy(self._documents[stored.file_id]), stored.data

    def _existing_file(self, value: Any) -> _StoredFile:
        if isinstance(value, str) and value in self._files:
            return self._files[value]
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            # The real server would download the URL; the fake never reaches out to the internet.
            raise ApiError(400, "Bad Request: failed to get HTTP URL content")
        raise ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")

    # ================================================================== helpers: messages and files

    def _new_message_id(self, chat_id: int) -> int:
        self._next_message_id[chat_id] = self._next_message_id.get(chat_id, 0) + 1
        return self._next_message_id[chat_id]

    def _message(self, chat: Json, sender: Json, thread_id: int | None, reply_to: Json | None) -> Json:
        msg: Json = {
            "message_id": self._new_message_id(chat["id"]),
            "from": copy.deepcopy(sender),
            "chat": copy.deepcopy(chat),
            "date": int(time.time()),
        }
        if thread_id is not None:
            msg["message_thread_id"] = thread_id
            msg["is_topic_message"] = True
            # Like the real platform: a topic message that replies to nothing else carries the
            # topic's creation service message as reply_to_message.
            if reply_to is None:
                reply_to = self._store[chat["id"]].get(thread_id)
        if reply_to is not None:
            # reply_to_message is never nested deeper than one level.
            msg["reply_to_message"] = {k: v for k, v in copy.deepcopy(reply_to).items() if k != "reply_to_message"}
        return msg

    def _outgoing(self, chat: Json, thread_id: int | None, reply_to: Json | None) -> Json:
        return self._message(chat, self.bot_user, thread_id, reply_to)

    def _incoming(self, user: Json, chat: Json | None, thread_id: int | None, reply_to: Json | None) -> Json:
        self._users.setdefault(user["id"], copy.deepcopy(user))
        if chat is not None and chat["id"] not in self._chats:
            raise ValueError(f"unknown chat {chat['id']}; make it with private_chat() or group()")
        chat = self._chats[chat["id"]] if chat is not None else self.private_chat(user)
        if thread_id is not None and thread_id not in {t["message_thread_id"] for t in self.topics.get(chat["id"], [])}:
            raise ValueError(f"chat {chat['id']} has no forum topic {thread_id}; let the bot create it first")
        if reply_to is not None:
            # Prefer the latest stored state over the (possibly stale, possibly recorded) dict given.
            reply_to = self._store.get(chat["id"], {}).get(reply_to["message_id"], _without_extras(reply_to))
        return self._message(chat, user, thread_id, reply_to)

    def _finish(self, msg: Json, p: Json, markup: Json | None, attachments: Json) -> Json:
        """Store a message the bot just sent, record it and return its wire form."""
        if markup is not None:
            msg["reply_markup"] = markup
        if _opt_bool(p, "protect_content"):
            msg["has_protected_content"] = True
        key = self._store_message(msg)
        if attachments:
            self._attachments[key] = attachments
        self._bot_sent.append(key)
        self._record(msg)
        return copy.deepcopy(msg)

    def _store_message(self, msg: Json) -> tuple[int, int]:
        key = (msg["chat"]["id"], msg["message_id"])
        self._store.setdefault(key[0], {})[key[1]] = msg
        return key

    def _record(self, msg: Json) -> None:
        self.messages.append(self._recorded(msg))

    def _recorded(self, msg: Json) -> Json:
        extras = self._attachments.get((msg["chat"]["id"], msg["message_id"]), {})
        return {**copy.deepcopy(msg), **extras}

    def _push(self, kind: str, payload: Json, queue: bool) -> Json:
        if kind == "message":
            self._store_message(payload)
        update = {"update_id": next(self._update_ids), kind: payload}
        if queue:
            self._updates.append(copy.deepcopy(update))
            self._wake()
        return copy.deepcopy(update)

    def _confirm(self, offset: int) -> None:
        if offset < 0:
            # A negative offset keeps only the last -offset updates and forgets the rest.
            self._updates = self._updates[offset:]
        else:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]

    def _wake(self) -> None:
        # Every waiter holds the old event; setting it and swapping in a fresh one wakes them all once.
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    def _new_file(self, data: bytes, kind: str, path: str) -> _StoredFile:
        n = next(self._file_seq)
        prefix = "AgACAgIAAxkB" if kind == "photo" else "BQACAgIAAxkB"
        stored = _StoredFile(
            file_id=f"{prefix}{n:06d}{secrets.token_urlsafe(18)}",
            file_unique_id=f"AQAD{n:06d}{secrets.token_urlsafe(3)}",
            data=data,
            file_path=path.format(n=n),
            kind=kind,
        )
        self._files[stored.file_id] = stored
        self._paths[stored.file_path] = stored
        return stored

    def _make_photo(self, data: bytes, size: tuple[int, int]) -> list[Json]:
        """Three PhotoSizes, smallest first. Only the largest serves the original bytes; the smaller
        ones serve smaller stand-in blobs, so a test can tell which size the bot downloaded."""
        width, height = size
        sizes: list[Json] = []
        for divisor in (4, 2, 1):
            blob = data if divisor == 1 else _stand_in_blob(len(data) // divisor, divisor)
            stored = self._new_file(blob, "photo", "photos/file_{n}.jpg")
            sizes.append(
                {
                    "file_id": stored.file_id,
                    "file_unique_id": stored.file_unique_id,
                    "file_size": len(blob),
                    "width": max(1, width // divisor),
                    "height": max(1, height // divisor),
                }
            )
        for photo_size in sizes:
            self._photo_sets[photo_size["file_id"]] = sizes
        return copy.deepcopy(sizes)

    def _make_document(self, data: bytes, file_name: str, mime_type: str) -> Json:
        suffix = re.sub(r"[^A-Za-z0-9.]", "", "." + file_name.rsplit(".", 1)[-1]) if "." in file_name else ""
        stored = self._new_file(data, "document", "documents/file_{n}" + suffix)
        document = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_name": file_name,
            "mime_type": mime_type,
            "file_size": len(data),
        }
        self._documents[stored.file_id] = document
        return copy.deepcopy(document)


# ====================================================================== module helpers


def _json_response(body: Json, status: int) -> web.Response:
    return web.Response(
        text=json.dumps(body, ensure_ascii=False), status=status, content_type="application/json"
    )


def _error_response(exc: ApiError) -> web.Response:
    body: Json = {"ok": False, "error_code": exc.code, "description": exc.description}
    if exc.parameters:
        body["parameters"] = exc.parameters
    return _json_response(body, exc.code)


async def _read_params(request: web.Request) -> Json:
    raw: dict[str, Any] = dict(request.query)
    if request.body_exists:
        if request.content_type == "application/json":
            try:
                body = json.loads(await request.read() or b"{}")
            except ValueError:
                raise ApiError(400, "Bad Request: can't parse JSON encoded request body") from None
            if not isinstance(body, dict):
                raise ApiError(400, "Bad Request: JSON object expected as request body")
            raw.update(body)
        elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            for key, value in (await request.post()).items():
                if isinstance(value, web.FileField):
                    raw[key] = Upload(value.filename, value.content_type, value.file.read())
                else:
                    raw[key] = value
    return {key: _decode(key, value) for key, value in raw.items()}


def _decode(key: str, value: Any) -> Any:
    """Turn a form/query string into the JSON value it encodes, except for free-text parameters."""
    if isinstance(value, str):
        if key in _TEXT_PARAMS:
            return value
        try:
            return json.loads(value)
        except ValueError:
            return value
    if key in _TEXT_PARAMS and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def _opt_int(p: Json, key: str) -> int | None:
    value = p.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, float) and math.isfinite(value):
        # The real server reads integers leniently: "0.3" is read as 0, like strtol would.
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f'Bad Request: field "{key}" must be of type Integer')  # wording unverified
    return value


def _opt_bool(p: Json, key: str) -> bool:
    value = p.get(key)
    if isinstance(value, str):
        return value.lower() in ("true", "1")
    return bool(value)


def _req_str(p: Json, key: str) -> str:
    value = p.get(key)
    if value is None or value == "":
        raise ApiError(400, f'Bad Request: parameter "{key}" is required')
    return str(value)


def _attached(p: Json, value: Any) -> Any:
    """Resolve an "attach://<name>" reference to the uploaded multipart part of that name."""
    if isinstance(value, str) and value.startswith("attach://"):
        part = p.get(value[len("attach://"):])
        if not isinstance(part, Upload):
            raise ApiError(400, "Bad Request: can't parse InputMedia: media not found")
        return part
    return value


def _update_type(update: Json) -> str:
    return next(key for key in update if key != "update_id")


def _without_extras(msg: Json) -> Json:
    return {k: v for k, v in msg.items() if not k.endswith("_bytes")}


def _set_or_drop(msg: Json, key: str, value: Any) -> None:
    if value is None:
        msg.pop(key, None)
    else:
        msg[key] = value


def _image_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # noqa: BLE001 - Pillow raises many kinds of errors for non-images
        return None


def _stand_in_blob(size: int, divisor: int) -> bytes:
    pattern = f"fake-telegram thumbnail 1/{divisor};".encode()
    return (pattern * (size // len(pattern) + 1))[: max(size, 1)]


def _bot_administrator(bot_user: Json) -> Json:
    rights = (
        "can_manage_chat", "can_delete_messages", "can_manage_video_chats", "can_restrict_members",
        "can_change_info", "can_invite_users", "can_post_stories", "can_edit_stories",
        "can_delete_stories", "can_pin_messages", "can_manage_topics",
    )
    member: Json = {"status": "administrator", "user": copy.deepcopy(bot_user), "can_be_edited": False,
                    "is_anonymous": False, "can_promote_members": False}
    member.update({right: True for right in rights})
    return member


def _markup(p: Json, *, inline_only: bool = False) -> Json | None:
    """Validate reply_markup. Only inline keyboards are part of the resulting Message; reply
    keyboards, ForceReply and ReplyKeyboardRemove are accepted but never echoed back."""
    markup = p.get("reply_markup")
    if markup is None or markup == "":
        return None
    if not isinstance(markup, dict):
        raise ApiError(400, "Bad Request: object expected as reply markup")
    if "inline_keyboard" not in markup:
        if inline_only:
            raise ApiError(400, "Bad Request: inline keyboard expected")
        if any(key in markup for key in ("keyboard", "remove_keyboard", "force_reply")):
            return None
        raise ApiError(400, "Bad Request: can't parse reply keyboard markup JSON object")
    rows = markup["inline_keyboard"]
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise ApiError(400, "Bad Request: can't parse inline keyboard markup JSON object")
    clean_rows = []
    for row in rows:
        clean_row = []
        for button in row:
            if not isinstance(button, dict) or not isinstance(button.get("text"), str):
                raise ApiError(400, 'Bad Request: can\'t parse inline keyboard button: Field "text" must be of type String')
            if sum(action in button for action in _INLINE_BUTTON_ACTIONS) != 1:
                raise ApiError(
                    400,
                    "Bad Request: can't parse inline keyboard button: "
                    "Text buttons are unallowed in the inline keyboard",
                )
            data = button.get("callback_data")
            if data is not None and not 1 <= len(str(data).encode()) <= 64:
                raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
            clean_row.append(copy.deepcopy(button))
        if clean_row:
            clean_rows.append(clean_row)
    # An empty inline keyboard is how a bot removes one.
    return {"inline_keyboard": clean_rows} if clean_rows else None


def _caption(p: Json) -> Json:
    """The caption and caption_entities fields for a media message (empty when there is none)."""
    raw = p.get("caption")
    if raw in (None, ""):
        return {}
    text, entities = _parse(str(raw), p.get("parse_mode"), p.get("caption_entities"))
    text, entities = _strip(text, entities)
    if len(text) > 1024:
        raise ApiError(400, "Bad Request: message caption is too long")
    fields: Json = {"caption": text} if text else {}
    if text and entities:
        fields["caption_entities"] = entities
    return fields


def _formatted(
    raw: Any, parse_mode: Any, entities: Any, *, empty: str, too_long: str, limit: int
) -> tuple[str, list[Json]]:
    text, parsed = _parse("" if raw is None else str(raw), parse_mode, entities)
    text, parsed = _strip(text, parsed)
    if not text:
        raise ApiError(400, empty)
    if len(text) > limit:
        raise ApiError(400, too_long)
    return text, parsed


# ====================================================================== formatting (parse_mode)


def _u16(text: str) -> int:
    """Entity offsets and lengths are measured in UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def _entities_error(message: str) -> ApiError:
    return ApiError(400, f"Bad Request: can't parse entities: {message}")


def _parse(text: str, parse_mode: Any, entities: Any) -> tuple[str, list[Json]]:
    if entities not in (None, ""):
        # Explicit entities win over parse_mode, as documented.
        if not isinstance(entities, list) or not all(isinstance(e, dict) for e in entities):
            raise ApiError(400, "Bad Request: can't parse entities JSON object")
        return text, copy.deepcopy(entities)
    mode = (parse_mode or "").lower() if isinstance(parse_mode, str) else ""
    if mode == "":
        return text, []
    if mode == "html":
        return _parse_html(text)
    if mode == "markdownv2":
        return _parse_markdown_v2(text)
    if mode == "markdown":
        return _parse_markdown(text)
    raise ApiError(400, f"Bad Request: unsupported parse_mode {parse_mode!r}")  # wording unverified


def _strip(text: str, entities: list[Json]) -> tuple[str, list[Json]]:
    """Telegram trims surrounding whitespace from texts and captions; entities move along."""
    stripped = text.strip()
    if stripped == text:
        return text, entities
    lead = _u16(text[: len(text) - len(text.lstrip())])
    total = _u16(stripped)
    kept = []
    for entity in entities:
        start = max(entity["offset"] - lead, 0)
        end = min(entity["offset"] + entity["length"] - lead, total)
        if end > start:
            kept.append({**entity, "offset": start, "length": end - start})
    return stripped, kept


def _sorted_entities(found: list[tuple[int, Json]]) -> list[Json]:
    """Order as the real server does: by offset, outer (longer) entities before inner ones."""
    found.sort(key=lambda item: (item[1]["offset"], -item[1]["length"], item[0]))
    return [entity for _, entity in found if entity["length"] > 0]


class _HtmlParser(html.parser.HTMLParser):
    """The HTML parse_mode: the documented tag set only; anything else is an error, as for real."""

    _SIMPLE: ClassVar[dict[str, str]] = {
        "b": "bold", "strong": "bold", "i": "italic", "em": "italic", "u": "underline",
        "ins": "underline", "s": "strikethrough", "strike": "strikethrough", "del": "strikethrough",
        "tg-spoiler": "spoiler", "pre": "pre",
    }

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.source = source
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", source)]
        self.parts: list[str] = []
        self.position = 0
        self.open: list[tuple[str, Json | None, int, int]] = []  # tag, entity, start, order
        self.found: list[tuple[int, Json]] = []
        self.order = itertools.count()

    def byte_offset(self) -> int:
        line, column = self.getpos()
        return len(self.source[: self.line_starts[line - 1] + column].encode())

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        entity: Json | None
        if tag in self._SIMPLE:
            entity = {"type": self._SIMPLE[tag]}
        elif tag == "span" and attributes.get("class") == "tg-spoiler":
            entity = {"type": "spoiler"}
        elif tag == "a":
            href = attributes.get("href")
            entity = {"type": "text_link", "url": href} if href else None
        elif tag == "code":
            language = attributes.get("class") or ""
            inside_pre = bool(self.open) and self.open[-1][0] == "pre" and self.open[-1][1] is not None
            if inside_pre and language.startswith("language-"):
                # <pre><code class="language-x"> is one pre entity with a language, not two entities.
                self.open[-1][1]["language"] = language[len("language-"):]  # type: ignore[index]
                entity = None
            else:
                entity = {"type": "code"}
        elif tag == "blockquote":
            entity = {"type": "expandable_blockquote" if "expandable" in attributes else "blockquote"}
        elif tag == "tg-emoji" and attributes.get("emoji-id"):
            entity = {"type": "custom_emoji", "custom_emoji_id": attributes["emoji-id"]}
        else:
            raise _entities_error(f'Unsupported start tag "{tag}" at byte offset {self.byte_offset()}')
        self.open.append((tag, entity, self.position, next(self.order)))

    def handle_endtag(self, tag: str) -> None:
        if not self.open:
            raise _entities_error(f'Unexpected end tag at byte offset {self.byte_offset()}')
        open_tag, entity, start, order = self.open.pop()
        if open_tag != tag:
            raise _entities_error(
                f'Unmatched end tag at byte offset {self.byte_offset()}, expected "</{open_tag}>", found "</{tag}>"'
            )
        if entity is not None:
            self.found.append((order, {**entity, "offset": start, "length": self.position - start}))

    def handle_data(self, data: str) -> None:
        self.parts.append(data)
        self.position += _u16(data)

    def handle_comment(self, data: str) -> None:
        raise _entities_error(f'Unsupported start tag "!--" at byte offset {self.byte_offset()}')

    def finish(self) -> tuple[str, list[Json]]:
        self.close()
        if self.open:
            raise _entities_error(f'Can\'t find end tag corresponding to start tag "{self.open[-1][0]}"')
        return "".join(self.parts), _sorted_entities(self.found)


def _parse_html(source: str) -> tuple[str, list[Json]]:
    parser = _HtmlParser(source)
    parser.feed(source)
    return parser.finish()


_MDV2_RESERVED = frozenset("_*[]()~`>#+-=|{}.!")
# Two-character markers first, so "__" is underline rather than two italics.
_MDV2_MARKERS = {"||": "spoiler", "__": "underline", "*": "bold", "_": "italic", "~": "strikethrough"}
_MD_NAMES = {
    "bold": "Bold", "italic": "Italic", "underline": "Underline", "strikethrough": "Strikethrough",
    "spoiler": "Spoiler", "text_link": "TextUrl", "code": "Code", "pre": "Pre",
}


def _unescape_v2(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text, flags=re.DOTALL)


def _find_unescaped(source: str, needle: str, start: int) -> int:
    i = start
    while i < len(source):
        if source[i] == "\\":
            i += 2
            continue
        if source.startswith(needle, i):
            return i
        i += 1
    return -1


def _pre_body(body: str) -> tuple[str, str | None]:
    """```lang\\ncode``` -> (code, lang): the first line names the language when it is one word."""
    if "\n" in body:
        first, rest = body.split("\n", 1)
        if first == "":
            return rest, None
        if re.fullmatch(r"[^\s`]+", first):
            return rest, first
    return body, None


def _parse_markdown_v2(source: str) -> tuple[str, list[Json]]:
    parts: list[str] = []
    found: list[tuple[int, Json]] = []
    open_: list[tuple[str, int, int]] = []  # type, start position, source index
    order = itertools.count()
    position = 0
    quote_start: int | None = None

    def emit(text: str) -> None:
        nonlocal position
        parts.append(text)
        position += _u16(text)

    def add(kind: str, start: int, extra: Json | None = None) -> None:
        found.append((next(order), {"type": kind, "offset": start, "length": position - start, **(extra or {})}))

    def byte_offset(index: int) -> int:
        return len(source[:index].encode())

    i = 0
    while i < len(source):
        c = source[i]
        if c == ">" and (i == 0 or source[i - 1] == "\n"):
            # A line starting with ">" is part of a block quotation.
            if quote_start is None:
                quote_start = position
            i += 1
            continue
        if c == "\n" and quote_start is not None and not source.startswith(">", i + 1):
            add("blockquote", quote_start)
            quote_start = None
        if c == "\\":
            if i + 1 >= len(source):
                raise _entities_error("Character '\\' is reserved and must be escaped with the preceding '\\'")
            emit(source[i + 1])
            i += 2
            continue
        if source.startswith("```", i):
            close = _find_unescaped(source, "```", i + 3)
            if close < 0:
                raise _entities_error(f"Can't find end of Pre entity at byte offset {byte_offset(i)}")
            body, language = _pre_body(source[i + 3 : close])
            start = position
            emit(_unescape_v2(body))
            add("pre", start, {"language": language} if language else None)
            i = close + 3
            continue
        if c == "`":
            close = _find_unescaped(source, "`", i + 1)
            if close < 0:
                raise _entities_error(f"Can't find end of Code entity at byte offset {byte_offset(i)}")
            start = position
            emit(_unescape_v2(source[i + 1 : close]))
            add("code", start)
            i = close + 1
            continue
        if c == "[":
            open_.append(("text_link", position, i))
            i += 1
            continue
        if c == "]" and open_ and open_[-1][0] == "text_link":
            _, start, _ = open_.pop()
            if not source.startswith("(", i + 1):
                raise _entities_error(f"Can't find end of a URL at byte offset {byte_offset(i + 1)}")
            close = _find_unescaped(source, ")", i + 2)
            if close < 0:
                raise _entities_error(f"Can't find end of a URL at byte offset {byte_offset(i + 1)}")
            add("text_link", start, {"url": _unescape_v2(source[i + 2 : close])})
            i = close + 1
            continue
        marker = next((m for m in _MDV2_MARKERS if source.startswith(m, i)), None)
        if marker is not None:
            kind = _MDV2_MARKERS[marker]
            # The same marker closes the innermost open entity of its kind, else opens one.
            index = next((n for n in range(len(open_) - 1, -1, -1) if open_[n][0] == kind), None)
            if index is None:
                open_.append((kind, position, i))
            else:
                _, start, _ = open_.pop(index)
                add(kind, start)
            i += len(marker)
            continue
        if c in _MDV2_RESERVED:
            raise _entities_error(f"Character '{c}' is reserved and must be escaped with the preceding '\\'")
        emit(c)
        i += 1
    if quote_start is not None:
        add("blockquote", quote_start)
    if open_:
        kind, _, index = open_[-1]
        raise _entities_error(f"Can't find end of {_MD_NAMES[kind]} entity at byte offset {byte_offset(index)}")
    return "".join(parts), _sorted_entities(found)


def _parse_markdown(source: str) -> tuple[str, list[Json]]:
    """The legacy Markdown parse_mode: *bold*, _italic_, `code`, ```pre```, [text](url); no nesting."""
    parts: list[str] = []
    found: list[tuple[int, Json]] = []
    order = itertools.count()
    position = 0

    def emit(text: str) -> None:
        nonlocal position
        parts.append(text)
        position += _u16(text)

    def unclosed(index: int) -> ApiError:
        return _entities_error(
            f"Can't find end of the entity starting at byte offset {len(source[:index].encode())}"
        )

    i = 0
    while i < len(source):
        c = source[i]
        if c == "\\" and i + 1 < len(source) and source[i + 1] in "_*`[":
            emit(source[i + 1])
            i += 2
            continue
        if source.startswith("```", i):
            close = source.find("```", i + 3)
            if close < 0:
                raise unclosed(i)
            body, language = _pre_body(source[i + 3 : close])
            start = position
            emit(body)
            found.append((next(order), {"type": "pre", "offset": start, "length": position - start,
                                        **({"language": language} if language else {})}))
            i = close + 3
            continue
        if c in "*_`":
            close = source.find(c, i + 1)
            if close < 0:
                raise unclosed(i)
            start = position
            emit(source[i + 1 : close])
            kind = {"*": "bold", "_": "italic", "`": "code"}[c]
            found.append((next(order), {"type": kind, "offset": start, "length": position - start}))
            i = close + 1
            continue
        if c == "[":
            close = source.find("]", i + 1)
            end = source.find(")", close + 2) if close >= 0 and source.startswith("(", close + 1) else -1
            if end < 0:
                raise unclosed(i)
            start = position
            emit(source[i + 1 : close])
            found.append((next(order), {"type": "text_link", "offset": start, "length": position - start,
                                        "url": source[close + 2 : end]}))
            i = end + 1
            continue
        emit(c)
        i += 1
    return "".join(parts), _sorted_entities(found)

