"""Small helpers shared by the HTTP adapters: JSON errors, signed media links, limits."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web

VISITOR = re.compile(r"^[A-Za-z0-9_\-.]{1,64}$")
CLIENT_MSG_ID = re.compile(r"^[\x21-\x7e]{1,128}$")


class BadRequest(Exception):
    """A request we refuse, with the status and the message the client gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Upload:
    data: bytes
    filename: str
    content_type: str


async def read_form(
    request: web.Request, names: tuple[str, ...], max_photo_bytes: int, max_field: int = 16_000
) -> tuple[dict[str, str], Upload | None]:
    """Read a multipart body: the named text fields and one file field `photo`.

    Stops reading as soon as the photo passes the limit (413), so a huge upload
    costs little."""
    fields: dict[str, str] = {}
    photo: Upload | None = None
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "photo" and part.filename is not None:
                data = bytearray()
                while chunk := await part.read_chunk(64 * 1024):
                    data.extend(chunk)
                    if len(data) > max_photo_bytes:
                        raise BadRequest(413, f"photo is larger than {max_photo_bytes // (1024 * 1024)} MB")
                if data:
                    photo = Upload(bytes(data), part.filename or "", part.headers.get("Content-Type", ""))
            elif part.name in names:
                value = await part.text()
                if len(value) > max_field:
                    raise BadRequest(413, f"field {part.name} is too long")
                fields[part.name] = value
    except BadRequest:
        raise
    except (ValueError, AssertionError) as exc:
        raise BadRequest(400, f"malformed multipart body: {exc}") from None
    return fields, photo


MAX_JSON = 64 * 1024  # a chat message or a desk action is a few hundred bytes


async def read_json(request: web.Request, limit: int = MAX_JSON) -> dict[str, Any]:
    """A JSON object body, read with a small limit of its own (photos come as multipart)."""
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest(413, f"JSON body larger than {limit // 1024} KB")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise BadRequest(413, f"JSON body larger than {limit // 1024} KB")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest(400, "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest(400, "body must be a JSON object")
    return data


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
