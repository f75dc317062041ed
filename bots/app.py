"""The composition root: settings -> store -> handler context -> engine -> adapters -> aiohttp app.

Everything is wired here explicitly; nothing registers itself on import.

Roles (several processes need Redis):
  all     one process does everything (kefu demo, kefu run without --workers)
  web     HTTP: web chat/desk/admin API, platform webhooks and polling; messages are
          stored and acknowledged, workers handle them
  worker  handles stored messages (the engine) and sends the outbox
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

from bots import metrics
from bots.admin import Admin
from bots.adminpages import AdminPages
from bots.dingtalk import DingTalk, DingTalkSettings
from bots.dispatcher import Dispatcher
from bots.http import MediaSigner, error
from bots.pages import Pages
from bots.settings import Settings
from bots.telegram import Telegram, TelegramSettings
from bots.webchat import WebChat
from bots.webdesk import WebDesk
from bots.wecom import WeCom, WeComSettings
from handlers.context import Context
from handlers.engine import Engine
from handlers.setup import build_context, reload_wording
from handlers.wording import TemplateProblem
from state.media import MediaStore
from state.protocol import Store
from state.redis import RedisStore
from state.sqlite import SQLiteStore
from state.tasks import Stopper, stop_if_cancelled

log = logging.getLogger("kefu.app")

Role = Literal["all", "web", "worker"]
KEY: web.AppKey["Kefu"] = web.AppKey("kefu")
EXPIRE_EVERY = 3600.0
CONFIG_POLL = 0.5  # edits reach every process within a second
DEPTH_EVERY = 5.0


@dataclass
class Kefu:
    """The running parts, for the CLI and for tests."""

    settings: Settings
    role: Role
    store: Store
    media: MediaStore
    ctx: Context
    engine: Engine
    dispatcher: Dispatcher
    webchat: WebChat
    webdesk: WebDesk
    admin: Admin
    desk_token: str
    admin_token: str
    telegram: Telegram | None = None
    wecom: WeCom | None = None
    dingtalk: DingTalk | None = None
    config_version: int = 0
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    stopper: Stopper = field(default_factory=Stopper)


class RoleError(ValueError):
    pass


def make_store(settings: Settings) -> Store:
    if settings.redis_url:
        return RedisStore(settings.redis_url, namespace=settings.redis_namespace,
                          partitions=settings.ingress_partitions)
    return SQLiteStore(Path(settings.data_dir) / "kefu.db")


async def _secret(store: Store, name: str, given: str | None) -> str:
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


def _wecom(settings: Settings, ctx: Context, media: MediaStore) -> WeCom | None:
    needed = (settings.wecom_corp_id, settings.wecom_secret, settings.wecom_token, settings.wecom_aes_key)
    if not all(needed):
        return None
    secret = lambda v: v.get_secret_value() if v is not None else ""  # noqa: E731
    return WeCom(WeComSettings(
        corp_id=settings.wecom_corp_id, secret=secret(settings.wecom_secret), token=secret(settings.wecom_token),
        aes_key=secret(settings.wecom_aes_key), agent_id=settings.wecom_agent_id,
        open_kfid=settings.wecom_open_kfid, api_url=settings.wecom_api_url,
        robot_key=secret(settings.wecom_robot_key), agents=dict(settings.wecom_agents),
        handoff_pool=settings.wecom_handoff_pool, max_photo_bytes=int(settings.max_photo_mb * 1024 * 1024),
    ), ctx, media)


def _dingtalk(settings: Settings, ctx: Context, media: MediaStore) -> DingTalk | None:
    if not settings.dingtalk_app_key or settings.dingtalk_app_secret is None:
        return None
    secret = lambda v: v.get_secret_value() if v is not None else ""  # noqa: E731
    return DingTalk(DingTalkSettings(
        app_key=settings.dingtalk_app_key, app_secret=secret(settings.dingtalk_app_secret),
        robot_code=settings.dingtalk_robot_code, mode=settings.dingtalk_mode, api_url=settings.dingtalk_api_url,
        oapi_url=settings.dingtalk_oapi_url, desk_conversation=settings.dingtalk_desk_conversation,
        desk_webhook=secret(settings.dingtalk_desk_webhook),
        desk_webhook_secret=secret(settings.dingtalk_desk_webhook_secret),
        max_photo_bytes=int(settings.max_photo_mb * 1024 * 1024),
    ), ctx, media)


def _secret_setting(value: Any) -> str | None:
    return value.get_secret_value().strip() or None if value is not None else None


def _observe(kind: str, seconds: float) -> None:
    metrics.HANDLE_SECONDS.observe(seconds)
    metrics.HANDLED.labels(kind).inc()


async def start_kefu(settings: Settings, platforms: bool = True, role: Role = "all") -> Kefu:
    """Start everything this role runs; `platforms=False` (kefu demo) runs only the web chat and desk."""
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    store = make_store(settings)
    if role != "all" and not isinstance(store, RedisStore):
        raise RoleError("several processes need a shared store: set KEFU_REDIS_URL")
    await store.open()
    try:
        version = await store.config_version()
        ctx = await asyncio.to_thread(build_context, settings.shop(), store, settings.templates_dir,
                                      await store.template_overrides(), data_dir / "cache")
    except Exception:
        await store.close()
        raise
    # Photos are files: with several processes data_dir must be shared (a volume).
    media = MediaStore(data_dir / "media")
    desk_token = await _secret(store, "desk_token", _secret_setting(settings.desk_token))
    admin_token = await _secret(store, "admin_token", _secret_setting(settings.admin_token))
    signer = MediaSigner((await _secret(store, "media_key", None)).encode())
    max_photo = int(settings.max_photo_mb * 1024 * 1024)
    queued = isinstance(store, RedisStore)
    webchat = WebChat(store, media, signer, max_photo, queued=queued)
    webdesk = WebDesk(ctx, media, signer, desk_token, max_photo)
    channels: dict[str, Any] = {webchat.platform: webchat}
    desks: dict[str, Any] = {webdesk.name: webdesk}
    telegram = _telegram(settings, ctx, media) if platforms else None
    if telegram is not None:
        channels[telegram.platform] = telegram
        if settings.telegram_desk_chat is not None:
            desks[telegram.name] = telegram
    wecom = _wecom(settings, ctx, media) if platforms else None
    if wecom is not None:
        channels[wecom.platform] = wecom
        if settings.wecom_robot_key is not None or settings.wecom_agent_id is not None:
            desks[wecom.name] = wecom
    dingtalk = _dingtalk(settings, ctx, media) if platforms else None
    if dingtalk is not None:
        channels[dingtalk.platform] = dingtalk
        if settings.dingtalk_desk_conversation or settings.dingtalk_desk_webhook is not None:
            desks[dingtalk.name] = dingtalk
    dispatcher = Dispatcher(ctx, channels=channels, desks=desks, max_attempts=settings.send_max_attempts)
    engine = Engine(ctx, desks=list(desks), on_commit=dispatcher.flush, on_handled=_observe)
    dispatcher.report_failure = engine.handle
    webchat.engine = webdesk.engine = engine
    kefu = Kefu(settings, role, store, media, ctx, engine, dispatcher, webchat, webdesk,
                Admin(ctx, store, admin_token), desk_token, admin_token, telegram, wecom, dingtalk, version)
    handles = role in ("all", "worker")
    await dispatcher.start()
    try:
        if queued and handles:
            await webchat.worker.start()
        if telegram is not None:
            telegram.engine = engine
            await telegram.start(ingress=role in ("all", "web"), handle=handles)
        if wecom is not None:
            wecom.engine, wecom.flush = engine, dispatcher.flush_target
            await wecom.start(handle=handles)
        if dingtalk is not None:
            dingtalk.engine = engine
            await dingtalk.start(ingress=role in ("all", "web"), handle=handles)
    except Exception:
        await stop_kefu(kefu)
        raise
    kefu.tasks.append(asyncio.create_task(_housekeeping(store, kefu.stopper), name="kefu-expire"))
    kefu.tasks.append(asyncio.create_task(_watch_content(kefu), name="kefu-content"))
    if role in ("all", "web"):
        kefu.tasks.append(asyncio.create_task(_watch_depth(store, kefu.stopper), name="kefu-depth"))
    return kefu


async def stop_kefu(kefu: Kefu) -> None:
    if kefu.telegram is not None:
        await kefu.telegram.stop()
    if kefu.wecom is not None:
        await kefu.wecom.stop()
    if kefu.dingtalk is not None:
        await kefu.dingtalk.stop()
    await kefu.webchat.worker.stop()
    await kefu.stopper.finish(kefu.tasks)
    await kefu.dispatcher.stop()
    await kefu.store.close()


async def _housekeeping(store: Store, stopper: Stopper) -> None:
    while not stopper.stopping:
        try:
            await store.expire()
        except Exception:
            stop_if_cancelled()
            log.exception("expiring old records failed")
        await stopper.sleep(EXPIRE_EVERY)


async def _watch_content(kefu: Kefu) -> None:
    """An edit made in any process is served by this one at once (woken by the store; the
    version is also checked every CONFIG_POLL seconds in case a wake-up was missed)."""
    while not kefu.stopper.stopping:
        try:
            await kefu.store.config_wait(CONFIG_POLL)
            if kefu.stopper.stopping:
                return
            version = await kefu.store.config_version()
            if version == kefu.config_version:
                continue
            overrides = await kefu.store.template_overrides()
            await asyncio.to_thread(reload_wording, kefu.ctx, overrides)
            kefu.config_version = version
            log.info("wording reloaded (content version %d)", version)
        except TemplateProblem as exc:
            log.error("edited wording does not load; the previous version keeps serving: %s", exc)
            kefu.config_version = version
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stop_if_cancelled()
            log.warning("checking for edited wording failed: %s", exc.__class__.__name__)


async def _watch_depth(store: Store, stopper: Stopper) -> None:
    while not stopper.stopping:
        try:
            for queue, n in (await store.queue_depths()).items():
                metrics.QUEUE_DEPTH.labels(queue).set(n)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stop_if_cancelled()
            log.warning("reading queue depths failed: %s", exc.__class__.__name__)
        await stopper.sleep(DEPTH_EVERY)


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
    except (ConnectionError, TimeoutError) as exc:
        # The store is unreachable: nothing was acknowledged, the client may retry.
        log.warning("store unavailable on %s %s: %s", request.method, request.path, exc.__class__.__name__)
        return error(503, "temporarily unavailable, please retry (nothing was stored)")
    except Exception as exc:
        if exc.__class__.__module__.startswith("redis"):
            log.warning("store unavailable on %s %s: %s", request.method, request.path, exc.__class__.__name__)
            return error(503, "temporarily unavailable, please retry (nothing was stored)")
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error(500, "internal error; nothing you sent was lost if the response said ok")


def _probes(kefu: Kefu) -> list[web.RouteDef]:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "role": kefu.role})

    async def readyz(request: web.Request) -> web.Response:
        ok = await kefu.store.ping()
        return web.json_response({"ok": ok, "store": "redis" if isinstance(kefu.store, RedisStore) else "sqlite"},
                                 status=200 if ok else 503)

    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    return [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics_page)]


async def create_app(settings: Settings, platforms: bool = True, role: Role = "all") -> web.Application:
    """Start kefu's parts and return the aiohttp app serving them (web.run_app takes the coroutine)."""
    kefu = await start_kefu(settings, platforms, role)
    max_body = int(settings.max_photo_mb * 1024 * 1024) + 64 * 1024
    app = web.Application(client_max_size=max_body, middlewares=[json_errors, kefu.webdesk.auth])
    app[KEY] = kefu

    async def on_shutdown(app: web.Application) -> None:
        kefu.store.wake_all()  # open long polls answer now instead of holding the stop for 30 s

    async def on_cleanup(app: web.Application) -> None:
        await stop_kefu(kefu)

    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    app.add_routes(_probes(kefu))
    if role == "worker":
        return app  # workers answer only health checks and metrics
    app.add_routes(Pages(kefu).routes())
    app.add_routes(kefu.webchat.routes())
    app.add_routes(kefu.webdesk.routes())
    app.add_routes(kefu.admin.routes())
    app.add_routes((await AdminPages.start(kefu)).routes())
    if kefu.telegram is not None:
        app.add_routes(kefu.telegram.routes())
    if kefu.wecom is not None:
        app.add_routes(kefu.wecom.routes())
    if kefu.dingtalk is not None:
        app.add_routes(kefu.dingtalk.routes())
    return app
