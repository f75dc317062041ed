"""The `kefu` command.

    kefu demo [--host 127.0.0.1] [--port 8080] [--data-dir ./kefu-data] [--config kefu.toml]
    kefu run  [same options]   # also starts every platform whose settings are present (Telegram, ...)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from bots.app import KEY, create_app
from bots.settings import Settings, SettingsError, load_settings
from handlers.wording import TemplateProblem


class _Defaults(logging.Filter):
    """Every log line carries the session key and message id (never message text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.session = getattr(record, "session", "-") or "-"
        record.message_id = getattr(record, "message_id", "-") or "-"
        return True


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Defaults())
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(session)s %(message_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kefu", description="kefu (客服): customer-service bot for online shops")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("demo", "run the web chat and web desk on embedded defaults (no Redis, no platform tokens)"),
        ("run", "run the web chat, the web desk and every platform whose settings are present"),
    ):
        cmd = sub.add_parser(name, help=help_)
        cmd.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
        cmd.add_argument("--port", type=int, default=None, help="port (default 8080; 0 picks a free one)")
        cmd.add_argument("--data-dir", type=Path, default=None, help="where data lives (default ./kefu-data)")
        cmd.add_argument("--config", type=Path, default=None, help="a TOML settings file (or KEFU_CONFIG)")
    return p


async def serve(settings: Settings, platforms: bool) -> None:
    app = await create_app(settings, platforms)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = settings.public_url.rstrip("/") or f"http://{shown}:{port}"
    kefu = app[KEY]
    print(f"kefu is running for {settings.shop_name}", flush=True)
    print(f"  buyer chat:  {base}/", flush=True)
    print(f"  agent desk:  {base}/desk#token={kefu.desk_token}", flush=True)
    print(f"  desk token:  {kefu.desk_token}", flush=True)
    print(f"  data dir:    {Path(settings.data_dir).resolve()}", flush=True)
    if kefu.telegram is not None:
        mode = f"webhook {settings.telegram_webhook_url}" if settings.telegram_webhook_url else "polling"
        print(f"  telegram:    @{kefu.telegram.me.username if kefu.telegram.me else '?'} ({mode}; "
              f"desk {settings.telegram_desk_chat or 'not set'})", flush=True)
    print("Press Ctrl+C to stop.", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config, host=args.host, port=args.port, data_dir=args.data_dir)
    except SettingsError as exc:
        print(f"kefu: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    try:
        asyncio.run(serve(settings, platforms=args.command == "run"))
    except TemplateProblem as exc:
        print(f"kefu: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"kefu: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
