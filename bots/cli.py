"""The `kefu` command.

    kefu demo   [--host 127.0.0.1] [--port 8080] [--data-dir ./kefu-data] [--config kefu.toml]
    kefu run    [same options] [--workers N] [--role all|web]
    kefu worker [--data-dir ...] [--config ...] [--port 0]      # needs KEFU_REDIS_URL
    kefu route  --faq FAQ.yaml ["message" | --eval QUESTIONS.tsv]

`demo` runs the web chat and web desk on embedded defaults. `run` also starts every
platform whose settings are present; with `--workers N` (Redis) it runs the web
process here and N worker processes it restarts if they die. `worker` is one
worker process (docker compose scales these).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


class _Defaults(logging.Filter):
    """Every log line carries the session key and message id (never message text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.session = getattr(record, "session", "-") or "-"
        record.message_id = getattr(record, "message_id", "-") or "-"
        return True


def setup_logging(level: str, tag: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Defaults())
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s %(levelname)s {tag}%(name)s [%(session)s %(message_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kefu", description="kefu (客服): customer-service bot for online shops")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("route", help="route messages with an FAQ sheet, or measure routing (kefu route -h)")
    for name, help_ in (
        ("demo", "run the web chat and web desk on embedded defaults (no Redis, no platform tokens)"),
        ("run", "run the web chat, the web desk and every platform whose settings are present"),
        ("worker", "run one worker process (handles stored messages, sends replies); needs Redis"),
    ):
        cmd = sub.add_parser(name, help=help_)
        cmd.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
        cmd.add_argument("--port", type=int, default=None,
                         help="port (default 8080; 0 picks a free one; a worker serves /healthz and /metrics there)")
        cmd.add_argument("--data-dir", type=Path, default=None, help="where data lives (default ./kefu-data)")
        cmd.add_argument("--config", type=Path, default=None, help="a TOML settings file (or KEFU_CONFIG)")
        if name == "run":
            cmd.add_argument("--workers", type=int, default=0,
                             help="worker processes to start and supervise (needs KEFU_REDIS_URL)")
            cmd.add_argument("--role", choices=["all", "web"], default=None,
                             help="all: this process also handles messages; web: only takes them in")
    return p


async def serve(settings: Any, platforms: bool, role: str, quiet: bool = False) -> None:
    from aiohttp import web

    from bots.app import KEY, create_app

    app = await create_app(settings, platforms, role)  # type: ignore[arg-type]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = settings.public_url.rstrip("/") or f"http://{shown}:{port}"
    kefu = app[KEY]
    if role == "worker":
        print(f"kefu worker {os.getpid()} running (health and metrics on {base})", flush=True)
    elif not quiet:
        from state.redisconn import where as redis_where

        store = "redis " + redis_where(settings.redis_url) if settings.redis_url else "embedded SQLite"
        print(f"kefu is running for {settings.shop_name}", flush=True)
        print(f"  buyer chat:  {base}/", flush=True)
        print(f"  agent desk:  {base}/desk#token={kefu.desk_token}", flush=True)
        print(f"  desk token:  {kefu.desk_token}", flush=True)
        print(f"  admin token: {kefu.admin_token}", flush=True)
        print(f"  data dir:    {Path(settings.data_dir).resolve()}", flush=True)
        print(f"  store:       {store}", flush=True)
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


class Supervisor:
    """Keeps N worker processes running; a worker that dies is started again."""

    def __init__(self, argv: list[str], count: int) -> None:
        self.argv = argv
        self.count = count
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self.stopping = False

    def start(self) -> None:
        for i in range(self.count):
            self._spawn(i)

    def _spawn(self, i: int) -> None:
        self.procs[i] = subprocess.Popen(self.argv)

    async def watch(self) -> None:
        while not self.stopping:
            for i, proc in enumerate(self.procs):
                if proc is not None and proc.poll() is not None and not self.stopping:
                    logging.getLogger("kefu.supervisor").warning(
                        "worker %d (pid %d) exited with %s; starting it again", i, proc.pid, proc.returncode)
                    await asyncio.sleep(0.5)
                    self._spawn(i)
            await asyncio.sleep(0.5)

    def stop(self) -> None:
        self.stopping = True
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 20
        for proc in self.procs:
            if proc is not None:
                try:
                    proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    proc.kill()


async def run_with_workers(settings: Any, role: str, workers: int, worker_argv: list[str]) -> None:
    sup = Supervisor(worker_argv, workers)
    sup.start()
    watcher = asyncio.create_task(sup.watch())
    try:
        await serve(settings, platforms=True, role=role)
    finally:
        watcher.cancel()
        sup.stop()


# Must be set before numpy is first imported (the imports below are lazy for that reason).
# The routing model multiplies small matrices; with a BLAS thread per core every message
# spins all cores, and on a server the cores are already busy with other conversations
# (measured: 17.8 ms -> 4.4 ms of CPU per message on the embedded store, 2 cores).
# Parallelism comes from worker processes instead. An operator's own setting wins.
BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def one_blas_thread() -> None:
    for name in BLAS_THREADS:
        os.environ.setdefault(name, "1")


def main(argv: list[str] | None = None) -> int:
    one_blas_thread()
    raw = sys.argv[1:] if argv is None else argv
    if raw[:1] == ["route"]:  # its own options; needs no settings or store
        from bots.route_cli import main as route_main

        return route_main(raw[1:])
    args = _parser().parse_args(argv)
    workers = getattr(args, "workers", 0) or 0
    if workers and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Metrics of all processes add up at the web process's /metrics.
        data = args.data_dir or Path(os.environ.get("KEFU_DATA_DIR", "kefu-data"))
        mdir = Path(data) / "metrics"
        shutil.rmtree(mdir, ignore_errors=True)
        mdir.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(mdir)

    from redis.exceptions import ConnectionError as RedisUnreachable

    from bots.app import RoleError
    from bots.settings import SettingsError, load_settings
    from handlers.wording import TemplateProblem

    overrides: dict[str, Any] = {"host": args.host, "port": args.port, "data_dir": args.data_dir}
    if args.command == "worker" and args.port is None:
        overrides["port"] = 0
    try:
        settings = load_settings(args.config, **overrides)
    except SettingsError as exc:
        print(f"kefu: {exc}", file=sys.stderr)
        return 2
    role = {"demo": "all", "worker": "worker"}.get(args.command) or args.role or ("web" if workers else "all")
    setup_logging(settings.log_level, "" if role == "all" else f"{role}[{os.getpid()}] ")
    if (workers or role != "all") and not settings.redis_url:
        print("kefu: several processes need a shared store: set KEFU_REDIS_URL (e.g. redis://127.0.0.1:6379/0)",
              file=sys.stderr)
        return 2
    try:
        if workers:
            worker_argv = [sys.executable, "-m", "bots.cli", "worker", "--port", "0"]
            if args.data_dir:
                worker_argv += ["--data-dir", str(args.data_dir)]
            if args.config:
                worker_argv += ["--config", str(args.config)]
            asyncio.run(run_with_workers(settings, role, workers, worker_argv))
        else:
            asyncio.run(serve(settings, platforms=args.command != "demo", role=role))
    except (TemplateProblem, RoleError) as exc:
        print(f"kefu: {exc}", file=sys.stderr)
        return 2
    except RedisUnreachable as exc:
        from state.redisconn import where

        print(f"kefu: cannot reach Redis ({where(settings.redis_url)}): {str(exc).split(' : ')[0][:200]}",
              file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"kefu: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
