"""Small helpers shared by the HTTP adapters: JSON errors, signed media links, limits."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any

from aiohttp import web

VISITOR = re.compile(r"^[A-Za-z0-9_\-.]{1,64}$")
CLIENT_MSG_ID = re.compile(r"^[\x21-\x7e]{1,128}$")


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, ensure_ascii=False), status=status, content_type="application/json", charset="utf-8"
    )


def error(status: int, message: str, **extra: Any) -> web.Response:
    return json_response({"error": message, **extra}, status=status)


class MediaSigner:
    """Links to stored photos carry an HMAC, so only the case's own pages can show them."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def sign(self, media_id: str) -> str:
        return hmac.new(self._key, media_id.encode(), hashlib.sha256).hexdigest()[:32]

    def url(self, media_id: str | None) -> str | None:
        if not media_id:
            return None
        return f"/media/{media_id}?sig={self.sign(media_id)}"

    def valid(self, media_id: str, sig: str) -> bool:
        return hmac.compare_digest(self.sign(media_id), sig or "")
