"""The two web pages (buyer chat at `/`, agents' desk at `/desk`), their static files,
signed media downloads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from jinja2 import Environment, FileSystemLoader, select_autoescape

from bots.http import error

if TYPE_CHECKING:
    from bots.app import Kefu

WEB = Path(__file__).resolve().parent / "web"
STATIC = {"kefu.css": "text/css", "chat.js": "application/javascript", "desk.js": "application/javascript"}


class Pages:
    def __init__(self, kefu: "Kefu") -> None:
        self.kefu = kefu
        self.env = Environment(loader=FileSystemLoader(WEB), autoescape=select_autoescape(["html"]))

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.chat),
            web.get("/desk", self.desk),
            web.get("/static/{name}", self.static),
            web.get("/media/{media_id}", self.media),
        ]

    def _ui(self, locale: str) -> dict[str, str]:
        w = self.kefu.ctx.wording
        keys = w.labels.get(w.default_locale, {}).get("ui", {}).keys()
        return {k: w.label("ui", k, locale) for k in keys}

    def _page(self, name: str, locale: str) -> web.Response:
        ui = self._ui(locale)
        html = self.env.get_template(name).render(
            shop_name=self.kefu.settings.shop_name, ui=ui, ui_json=json.dumps(ui, ensure_ascii=False),
            lang=locale,
        )
        return web.Response(text=html, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store", "X-Frame-Options": "SAMEORIGIN"})

    async def chat(self, request: web.Request) -> web.Response:
        lang = request.query.get("lang")
        locale = lang if lang in self.kefu.ctx.wording.messages else self.kefu.settings.locale
        return self._page("chat.html", locale)

    async def desk(self, request: web.Request) -> web.Response:
        return self._page("desk.html", self.kefu.settings.desk_locale)

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.FileResponse(WEB / name, headers={"Content-Type": STATIC[name]})

    async def media(self, request: web.Request) -> web.StreamResponse:
        media_id = request.match_info["media_id"]
        if not self.kefu.webchat.signer.valid(media_id, request.query.get("sig", "")):
            return error(403, "bad or missing media signature")
        if not self.kefu.media.exists(media_id):
            return error(404, "no such media")
        body = await self.kefu.media.read(media_id)
        return web.Response(body=body, content_type=self.kefu.media.content_type(media_id),
                            headers={"Cache-Control": "private, max-age=86400"})
