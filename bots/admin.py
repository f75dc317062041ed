"""Editing wording and FAQ entries while kefu runs (JSON API; the admin pages build on it).

    GET    /api/admin/templates              every template key, and whether it was edited
    GET    /api/admin/templates/{key}        its source in force
    PUT    /api/admin/templates/{key}        {"source": "..."}: validated, stored, live in every process within 2 s
    DELETE /api/admin/templates/{key}        back to the file (an entry that only existed as an edit goes)

Keys: messages/<locale>/<name>, labels/<locale>, faq/<locale>/<id>, intents/<locale>.
Calls need `Authorization: Bearer <admin token>`.
"""

from __future__ import annotations

import asyncio
import hmac
from aiohttp import web

from bots.editor import Editor, Rejected
from bots.http import BadRequest, error, json_response, read_json
from handlers.context import Context
from handlers.wording import file_sources, valid_key
from state.protocol import Store


class Admin:
    def __init__(self, ctx: Context, store: Store, token: str) -> None:
        self.ctx = ctx
        self.store = store
        self.token = token
        self.editor = Editor(ctx, store)  # the admin pages save through the same one

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/admin/templates", self.list),
            web.get("/api/admin/templates/{key:.+}", self.get),
            web.put("/api/admin/templates/{key:.+}", self.put),
            web.delete("/api/admin/templates/{key:.+}", self.delete),
        ]

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())

    def _deny(self) -> web.Response:
        resp = error(401, "missing or wrong admin token (Authorization: Bearer <token>)")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="kefu admin"'
        return resp

    async def list(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._deny()
        edited = await self.store.template_overrides()
        keys = sorted(set(self.ctx.wording.sources) | set(edited))
        return json_response({"templates": [{"key": k, "edited": k in edited, "removed": k in edited and not edited[k].strip()}
                                            for k in keys]})

    async def get(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._deny()
        key = request.match_info["key"]
        edited = await self.store.template_overrides()
        if key in edited:
            return json_response({"key": key, "source": edited[key], "edited": True})
        files = await asyncio.to_thread(file_sources, self.ctx.wording.root)
        if key not in files:
            return error(404, f"no template {key}")
        return json_response({"key": key, "source": files[key][1], "edited": False})

    async def put(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._deny()
        key = request.match_info["key"]
        if not valid_key(key):
            return error(400, "key must be messages/<locale>/<name>, labels/<locale>, faq/<locale>/<id> or intents/<locale>")
        try:
            body = await read_json(request, limit=256 * 1024)
        except BadRequest as exc:
            return error(exc.status, str(exc))
        source = body.get("source")
        if not isinstance(source, str) or not source.strip():
            return error(400, "source is required (the template text)")
        return await self._save(key, source)

    async def delete(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._deny()
        key = request.match_info["key"]
        if not valid_key(key):
            return error(400, "not a template key")
        files = await asyncio.to_thread(file_sources, self.ctx.wording.root)
        edited = await self.store.template_overrides()
        if key not in files and key not in edited:
            return error(404, f"no template {key}")
        # A file-backed entry is removed with an empty edit; an edit-only one simply goes.
        return await self._save(key, "" if key in files and key.startswith("faq/") else None)

    async def _save(self, key: str, source: str | None) -> web.Response:
        try:
            # Validated as a whole, as it would be served: the old version keeps serving otherwise.
            version = await self.editor.save({key: source}, author="api")
        except Rejected as exc:
            return json_response({"error": "not saved: the template has problems",
                                  "problems": [p.text() for p in exc.problems]}, 422)
        return json_response({"ok": True, "key": key, "version": version})
