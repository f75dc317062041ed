"""The web chat: a buyer channel for the shop's own site (page at `/`, JSON API).

POST /api/webchat/messages   JSON {visitor, text|payload, client_msg_id[, name]} or multipart with a photo
GET  /api/webchat/messages   ?visitor=&after=&wait=   long poll for the bot's and agents' messages
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from bots import metrics
from bots.http import (
    CLIENT_MSG_ID, VISITOR, BadRequest, MediaSigner, Upload, error, json_response, read_form, read_json,
)
from handlers.cards import iso
from handlers.engine import Engine
from bots.ingress import IngressWorker
from handlers.model import Buyer, BuyerMessage, Channel, FileInfo, Media, Reply
from state.keys import session_key
from state.media import MediaStore, NotAnImage
from state.protocol import IngressRow, Store

log = logging.getLogger("kefu.webchat")

PLATFORM = "webchat"
MAX_TEXT = 4000
MAX_WAIT = 30.0
FIELDS = ("visitor", "client_msg_id", "text", "payload", "name")


class WebChat:
    platform = PLATFORM
    max_text = MAX_TEXT

    def __init__(
        self, store: Store, media: MediaStore, signer: MediaSigner, max_photo_bytes: int, bot: str = "web",
        queued: bool = False,
    ) -> None:
        self.store = store
        self.media = media
        self.signer = signer
        self.max_photo_bytes = max_photo_bytes
        self.bot = bot
        self.engine: Engine | None = None  # set by the app (the engine needs the dispatcher first)
        # Queued (several processes): a message is stored, acknowledged, and handled by a worker.
        # Inline (one process, embedded store): handled before the answer, replies readable at once.
        self.queued = queued
        self.worker = IngressWorker(store, "webchat", self._handle_rows, group_window=0)

    async def _handle_rows(self, rows: list[IngressRow]) -> None:
        assert self.engine is not None
        for row in rows:
            await self.engine.handle(BuyerMessage.model_validate(row.payload))

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/webchat/messages", self.post_message),
            web.get("/api/webchat/messages", self.get_messages),
        ]

    def box(self, visitor: str) -> str:
        return session_key(PLATFORM, self.bot, visitor)

    # --- outbound: the dispatcher delivers a turn's replies into the visitor's mailbox ----------
    async def send(self, channel: Channel, replies: list[Reply], key: str = "") -> None:
        now = time.time()
        # Keyed: a delivery repeated after a crash lands once.
        await self.store.mailbox_append(
            session_key(channel.platform, channel.bot, channel.chat),
            [
                {
                    "from": r.sender, "agent": r.agent, "text": r.text,
                    "buttons": [{"text": b.text, "payload": b.payload} for b in r.buttons],
                    "photo": r.photo.id if r.photo else None, "at": now,
                }
                for r in replies
            ],
            key=key or None,
        )

    # --- inbound -------------------------------------------------------------------------------
    async def post_message(self, request: web.Request) -> web.Response:
        assert self.engine is not None
        try:
            photo: Upload | None = None
            if request.content_type.startswith("multipart/"):
                fields, photo = await read_form(request, FIELDS, self.max_photo_bytes, MAX_TEXT * 4)
            else:
                fields = await read_json(request)
        except BadRequest as exc:
            return error(exc.status, str(exc))
        visitor = str(fields.get("visitor") or "")
        client_msg_id = str(fields.get("client_msg_id") or "")
        text = fields.get("text")
        payload = fields.get("payload")
        name = fields.get("name")
        if not VISITOR.match(visitor):
            return error(400, "visitor is required: 1-64 letters, digits, '_', '-' or '.'")
        if not CLIENT_MSG_ID.match(client_msg_id):
            return error(400, "client_msg_id is required: 1-128 printable ASCII characters, no spaces")
        if text is not None and not isinstance(text, str):
            return error(400, "text must be a string")
        if payload is not None and (not isinstance(payload, str) or len(payload) > 200):
            return error(400, "payload must be a string of at most 200 characters")
        if name is not None and (not isinstance(name, str) or len(name) > 64):
            return error(400, "name must be a string of at most 64 characters")
        text = (text or "").strip()
        if len(text) > MAX_TEXT:
            return error(413, f"text is longer than {MAX_TEXT} characters")
        if not text and not payload and photo is None:
            return error(400, "a message needs text, a payload or a photo")

        photos: tuple[Media, ...] = ()
        files: tuple[FileInfo, ...] = ()
        photo_url = None
        if photo is not None:
            try:
                stored = await self.media.save_image(photo.data)
                photos = (Media(id=stored.id, content_type=stored.content_type, size=stored.size,
                                width=stored.width, height=stored.height),)
                photo_url = self.signer.url(stored.id)
            except NotAnImage as exc:
                files = (FileInfo(name=photo.filename[:200], content_type=photo.content_type[:100],
                                  size=len(photo.data), reason=str(exc)[:200]),)

        event = BuyerMessage(
            message_id=f"{visitor}:{client_msg_id}",
            channel=Channel(platform=PLATFORM, bot=self.bot, chat=visitor),
            buyer=Buyer(id=visitor, name=(name or "").strip()),
            at=time.time(), text=text, payload=payload or None, photos=photos, files=files,
        )
        metrics.EVENTS_IN.labels("webchat").inc()
        if self.queued:
            new = await self.store.ingress_push("webchat", event.message_id, self.box(visitor),
                                                event.model_dump(mode="json"))
            duplicate = not new
        else:
            duplicate = (await self.engine.handle(event)).duplicate
        body: dict[str, Any] = {"ok": True, "duplicate": duplicate}
        if photo_url:
            body["photo_url"] = photo_url
        if files:
            body["not_a_photo"] = True
        return json_response(body)

    async def get_messages(self, request: web.Request) -> web.Response:
        visitor = request.query.get("visitor", "")
        if not VISITOR.match(visitor):
            return error(400, "visitor is required: 1-64 letters, digits, '_', '-' or '.'")
        try:
            after = int(request.query.get("after", "0") or 0)
            wait = min(max(float(request.query.get("wait", "0") or 0), 0.0), MAX_WAIT)
        except ValueError:
            return error(400, "after must be an integer and wait a number of seconds")
        box = self.box(visitor)
        items = await self.store.mailbox_read(box, after, wait=wait)
        return json_response({"messages": [
            {
                "seq": seq, "from": item["from"], "agent": item.get("agent"), "text": item["text"],
                "buttons": item.get("buttons", []), "photo_url": self.signer.url(item.get("photo")),
                "at": iso(item.get("at")),
            }
            for seq, item in items
        ]})
