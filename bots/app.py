"""The composition root: settings -> store -> handler context -> engine -> adapters -> aiohttp app.

Everything is wired here explicitly; nothing registers itself on import.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from bots.dispatcher import Dispatcher
from bots.http import MediaSigner, error
from bots.pages import Pages
from bots.settings import Settings
from bots.telegram import Telegram, TelegramSettings
from bots.webchat import WebChat
from bots.webdesk import WebDesk
from handlers.context import Context
from handlers.engine import Engine
from handlers.setup import build_context
from state.media import MediaStore
from state.sqlite import SQLiteStore

log = logging.getLogger("kefu.app")

KEY: web.AppKey["Kefu"] = web.AppKey("kefu")
EXPIRE_EVERY = 3600.0


@dataclass
class Kefu:
    """The running parts, for the CLI and for tests."""

    settings: Settings
    store: SQLiteStore
    media: MediaStore
    ctx: Context
    engine: Engine
    dispatcher: Dispatcher
    webchat: WebChat
    webdesk: WebDesk
    desk_token: str
    telegram: Telegram | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)


async def _secret(store: SQLiteStore, name: str, given: str | None) -> str:
    """A configured secret wins; else one generated once and kept in the store."""
    if given:
        return given
    return await store.set_meta_if_absent(name, secrets.token_urlsafe(24))


def _telegram(settings: Settings, ctx: Context, media: MediaStore) -> Telegram | None:
    if settings.telegram_token is None:
        return None
    return Telegram(TelegramSettings(
        token=settings.telegram_token.get_secret_value(), api_url=settings.telegram_api_url,
        file_url=settings.telegram_file_url, desk_chat=settings.telegram_desk_chat,
        webhook_url=settings.telegram_webhook_url,
        webhook_secret=settings.telegram_webhook_secret.get_secret_value() if settings.telegram_webhook_secret else "",
        poll_timeout=settings.telegram_poll_timeout, max_photo_bytes=int(settings.max_photo_mb * 1024 * 1024),
    ), ctx, media)


async def start_kefu(settings: Settings, platforms: bool = True) -> Kefu:
    """Start everything; `platforms=False` (kefu demo) runs only the web chat and web desk."""
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    store = SQLiteStore(data_dir / "kefu.db")
    await store.open()
    try:
        ctx = build_context(settings.shop(), store, settings.templates_dir)
    except Exception:
        await store.close()
        raise
    media = MediaStore(data_dir / "media")
    configured = settings.desk_token.get_secret_value().strip() if settings.desk_token is not None else ""
    desk_token = await _secret(store, "desk_token", configured or None)
    signer = MediaSigner((await _secret(store, "media_key", None)).encode())
    max_photo = int(settings.max_photo_mb * 1024 * 1024)
    webchat = WebChat(store, media, signer, max_photo)
    webdesk = WebDesk(ctx, media, signer, desk_token, max_photo)
    channels: dict[str, Any] = {webchat.platform: webchat}
    desks: dict[str, Any] = {webdesk.name: webdesk}
    telegram = _telegram(settings, ctx, media) if platforms else None
    if telegram is not None:
        channels[telegram.platform] = telegram
        if settings.telegram_desk_chat is not None:
            desks[telegram.name] = telegram
    dispatcher = Dispatcher(ctx, channels=channels, desks=desks, max_attempts=settings.send_max_attempts)
    engine = Engine(ctx, desks=list(desks), on_commit=dispatcher.flush)
    dispatcher.report_failure = engine.handle
    webchat.engine = webdesk.engine = engine
    kefu = Kefu(settings, store, media, ctx, engine, dispatcher, webchat, webdesk, desk_token, telegram)
    await dispatcher.start()
    if telegram is not None:
        telegram.engine = engine
        try:
            await telegram.start()
        except Exception:
            await dispatcher.stop()
            await store.close()
            raise
    kefu.tasks.append(asyncio.create_task(_housekeeping(store), name="kefu-expire"))
    return kefu


async def stop_kefu(kefu: Kefu) -> None:
    if kefu.telegram is not None:
        await kefu.telegram.stop()
    for task in kefu.tasks:
        task.cancel()
    await asyncio.gather(*kefu.tasks, return_exceptions=True)
    await kefu.dispatcher.stop()
    await kefu.store.close()


async def _housekeeping(store: SQLiteStore) -> None:
    while True:
        try:
            await store.expire()
        except Exception:
            log.exception("expiring old records failed")
        await asyncio.sleep(EXPIRE_EVERY)


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """API errors are JSON with a clear message, never an HTML page or a traceback."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as exc:
        return error(413, f"body too large: {exc.text}")
    except web.HTTPException as exc:
        if request.path.startswith("/api/") and exc.status >= 400:
            return error(exc.status, exc.reason)
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error(500, "internal error; nothing you sent was lost if the response said ok")


async def create_app(settings: Settings, platforms: bool = True) -> web.Application:
    """Start kefu's parts and return the aiohttp app serving them (web.run_app takes the coroutine)."""
    kefu = await start_kefu(settings, platforms)
    max_body = int(settings.max_photo_mb * 1024 * 1024) + 64 * 1024
    app = web.Application(client_max_size=max_body, middlewares=[json_errors, kefu.webdesk.auth])
    app[KEY] = kefu

    async def on_shutdown(app: web.Application) -> None:
        kefu.store.wake_all()  # open long polls answer now instead of holding the stop for 30 s

    async def on_cleanup(app: web.Application) -> None:
        await stop_kefu(kefu)

    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    app.add_routes(Pages(kefu).routes())
    app.add_routes(kefu.webchat.routes())
    app.add_routes(kefu.webdesk.routes())
    if kefu.telegram is not None:
        app.add_routes(kefu.telegram.routes())
    return app
