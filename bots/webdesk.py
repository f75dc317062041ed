"""The web desk: agents work cases from a browser (page at `/desk`, JSON API).

Every /api/desk call needs `Authorization: Bearer <desk token>`.
"""

from __future__ import annotations

import hmac
import time
import uuid
from typing import Any, Awaitable, Callable

from aiohttp import web

from bots.http import CLIENT_MSG_ID, BadRequest, MediaSigner, error, json_response, read_form, read_json
from handlers.cards import build_card, case_summary, iso
from handlers.context import Context
from handlers.desk import normalize_case_id
from handlers.engine import Engine
from handlers.model import AgentCommand, Case, DeskAction, Media
from handlers.privacy import mask
from state.media import MediaStore, NotAnImage

DESK = "web"
FEED = "kefu:desk:web:feed"
VERBS = ("take", "reply", "note", "resolve", "reopen")
STATUSES = ("open", "taken", "resolved")
MAX_WAIT = 30.0


class WebDesk:
    name = DESK

    def __init__(self, ctx: Context, media: MediaStore, signer: MediaSigner, token: str, max_photo_bytes: int) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.media = media
        self.signer = signer
        self.token = token
        self.max_photo_bytes = max_photo_bytes
        self.engine: Engine | None = None

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/desk/cases", self.list_cases),
            web.get("/api/desk/cases/{case_id}", self.get_case),
            web.post("/api/desk/cases/{case_id}/{verb}", self.act),
            web.get("/api/desk/feed", self.feed),
        ]

    @web.middleware
    async def auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/api/desk/"):
            header = request.headers.get("Authorization", "")
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
                resp = error(401, "missing or wrong desk token (Authorization: Bearer <token>)")
                resp.headers["WWW-Authenticate"] = 'Bearer realm="kefu desk"'
                return resp
        return await handler(request)

    # --- outbound: case news goes to the desk feed the page listens to ------------------
    async def publish(self, actions: list[DeskAction], card: Callable[[], Awaitable[dict[str, Any] | None]]) -> None:
        # The page fetches the card itself when it hears of a change: the feed item stays small.
        now = time.time()
        await self.store.mailbox_append(FEED, [
            {"type": a.kind, "case_id": a.case_id, "who": a.who, "agent": a.agent,
             "text": mask(a.text) if a.who == "buyer" else a.text,
             "photos": [p.id for p in a.photos], "at": now}
            for a in actions
        ])

    # --- API --------------------------------------------------------------------------------
    def _with_urls(self, card: dict[str, Any]) -> dict[str, Any]:
        for p in card.get("photos", []):
            p["url"] = self.signer.url(p["id"])
        for m in card.get("transcript", []):
            m["photo_urls"] = [self.signer.url(pid) for pid in m.get("photos", [])]
        return card

    async def list_cases(self, request: web.Request) -> web.Response:
        status = request.query.get("status") or None
        if status is not None and status not in STATUSES:
            return error(400, f"status must be one of {', '.join(STATUSES)}")
        rows = await self.store.find_cases(status=status, limit=500)
        now = time.time()
        return json_response({"cases": [case_summary(self.ctx, Case.model_validate(r.data), now) for r in rows]})

    async def get_case(self, request: web.Request) -> web.Response:
        row = await self.store.get_case(normalize_case_id(request.match_info["case_id"]))
        if row is None:
            return error(404, "no such case")
        return json_response(self._with_urls(await build_card(self.ctx, Case.model_validate(row.data), time.time())))

    async def act(self, request: web.Request) -> web.Response:
        assert self.engine is not None
        verb = request.match_info["verb"]
        if verb not in VERBS:
            return error(404, f"unknown action {verb!r}; use one of {', '.join(VERBS)}")
        case_id = normalize_case_id(request.match_info["case_id"])
        photos: tuple[Media, ...] = ()
        try:
            if request.content_type.startswith("multipart/"):
                body, photo = await read_form(request, ("agent", "text", "summary", "client_msg_id"),
                                              self.max_photo_bytes)
                if photo is not None:
                    try:
                        stored = await self.media.save_image(photo.data)
                    except NotAnImage as exc:
                        return error(415, f"not a photo: {exc}")
                    photos = (Media(id=stored.id, content_type=stored.content_type, size=stored.size,
                                    width=stored.width, height=stored.height),)
            else:
                body = await read_json(request)
        except BadRequest as exc:
            return error(exc.status, str(exc))
        if not isinstance(body, dict):
            return error(400, "body must be a JSON object")
        agent = body.get("agent")
        if not isinstance(agent, str) or not agent.strip() or len(agent) > 64:
            return error(400, "agent is required: the agent's name, at most 64 characters")
        text = body.get("summary") if verb == "resolve" else body.get("text")
        if text is None:
            text = body.get("text") or body.get("summary") or ""
        if not isinstance(text, str) or len(text) > 4000:
            return error(400, "text must be a string of at most 4000 characters")
        msg_id = body.get("client_msg_id") or uuid.uuid4().hex
        if not isinstance(msg_id, str) or not CLIENT_MSG_ID.match(msg_id):
            return error(400, "client_msg_id must be 1-128 printable ASCII characters")
        if await self.store.get_case(case_id) is None:
            return error(404, "no such case")
        outcome = await self.engine.handle(AgentCommand(
            message_id=f"{verb}:{msg_id}", case_id=case_id, verb=verb, agent=agent.strip(),  # type: ignore[arg-type]
            at=time.time(), text=text, photos=photos, desk=DESK,
        ))
        if outcome.error:
            status = {"not_found": 404, "conflict": 409, "invalid": 400}.get(outcome.error, 400)
            return error(status, outcome.detail or outcome.error, code=outcome.error)
        row = await self.store.get_case(case_id)
        assert row is not None
        card = self._with_urls(await build_card(self.ctx, Case.model_validate(row.data), time.time()))
        return json_response({"ok": True, "duplicate": outcome.duplicate, "case": card})

    async def feed(self, request: web.Request) -> web.Response:
        try:
            after = int(request.query.get("after", "0") or 0)
            wait = min(max(float(request.query.get("wait", "0") or 0), 0.0), MAX_WAIT)
        except ValueError:
            return error(400, "after must be an integer and wait a number of seconds")
        if request.query.get("tail"):
            # Where a freshly opened desk page starts listening.
            return json_response({"events": [], "last": await self.store.mailbox_last(FEED)})
        items = await self.store.mailbox_read(FEED, after, wait=wait)
        return json_response({"last": items[-1][0] if items else after, "events": [
            {"seq": seq, **{k: v for k, v in item.items() if k != "at"}, "at": iso(item.get("at"))}
            for seq, item in items
        ]})
