"""Photos and files buyers send, stored as files under the data dir.

Content-addressed (sha256), so the same photo sent twice is stored once.
Image checks run off the event loop: Pillow parses untrusted bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Formats every current browser and messenger client can display.
IMAGE_FORMATS = {"JPEG": ("jpg", "image/jpeg"), "PNG": ("png", "image/png"),
                 "GIF": ("gif", "image/gif"), "WEBP": ("webp", "image/webp")}
MAX_PIXELS = 60_000_000  # a phone photo is ~12-50 MP; beyond this is a decompression bomb
_ID = re.compile(r"^[0-9a-f]{40}\.(jpg|png|gif|webp|bin)$")


class NotAnImage(ValueError):
    """The bytes are not a photo we can show to an agent."""


@dataclass(frozen=True)
class StoredMedia:
    id: str
    content_type: str
    size: int
    width: int | None = None
    height: int | None = None


def inspect_image(data: bytes) -> tuple[str, str, int, int]:
    """Return (ext, content_type, width, height) or raise NotAnImage."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format or ""
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise NotAnImage(f"image too large: {width}x{height} pixels")
            img.verify()
    except NotAnImage:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise NotAnImage(str(exc) or exc.__class__.__name__) from exc
    if fmt not in IMAGE_FORMATS:
        raise NotAnImage(f"unsupported image format {fmt or 'unknown'}")
    ext, ctype = IMAGE_FORMATS[fmt]
    return ext, ctype, width, height


class MediaStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, media_id: str) -> Path:
        if not _ID.match(media_id):
            raise KeyError(media_id)
        return self.root / media_id[:2] / media_id

    async def save_image(self, data: bytes) -> StoredMedia:
        """Validate and store a photo; raises NotAnImage for anything else."""
        ext, ctype, width, height = await asyncio.to_thread(inspect_image, data)
        media_id = f"{hashlib.sha256(data).hexdigest()[:40]}.{ext}"
        await asyncio.to_thread(self._write, media_id, data)
        return StoredMedia(id=media_id, content_type=ctype, size=len(data), width=width, height=height)

    def _write(self, media_id: str, data: bytes) -> None:
        path = self._path(media_id)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # Unique per write: the same photo may be saved by two requests at once.
        tmp = path.with_suffix(path.suffix + f".{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # atomic: readers never see half a photo

    async def read(self, media_id: str) -> bytes:
        return await asyncio.to_thread(self._path(media_id).read_bytes)

    def exists(self, media_id: str) -> bool:
        try:
            return self._path(media_id).is_file()
        except KeyError:
            return False

    def content_type(self, media_id: str) -> str:
        ext = media_id.rsplit(".", 1)[-1]
        for e, ctype in IMAGE_FORMATS.values():
            if e == ext:
                return ctype
        return "application/octet-stream"
