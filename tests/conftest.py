from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import AsyncIterator

from bots.cli import one_blas_thread

one_blas_thread()  # before numpy loads (the routing model): tests run the engine in this process

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bots.app import KEY, Kefu, create_app
from bots.settings import Settings
from handlers.config import ShopConfig
from handlers.context import Context
from handlers.engine import Engine
from handlers.setup import build_context
from state.sqlite import SQLiteStore
from state.redis import RedisStore
from tests.support import REDIS_URL, TOKEN

ALWAYS_OPEN = {"hours_open": "00:00", "hours_close": "00:00"}


async def drop_namespace(ns: str) -> None:
    """Delete every key a test left under this Redis namespace."""
    cleanup = RedisStore(REDIS_URL, namespace=ns)
    await cleanup.drop_namespace()
    await cleanup.r.aclose()


@pytest.fixture
async def redis_namespace() -> AsyncIterator[str]:
    """A fresh Redis namespace for the test's kefu processes, dropped afterwards."""
    ns = f"kefu-test-{uuid.uuid4().hex[:8]}"
    yield ns
    await drop_namespace(ns)


@pytest.fixture(autouse=True, scope="session")
def _own_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`kefu route` keeps vectors under $XDG_CACHE_HOME/kefu: tests use their own, not the user's."""
    import os

    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))


@pytest.fixture
def shop() -> ShopConfig:
    return ShopConfig(**ALWAYS_OPEN)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "kefu.db")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def ctx(shop: ShopConfig, store: SQLiteStore) -> Context:
    return build_context(shop, store)


@pytest.fixture
def engine(ctx: Context) -> Engine:
    """The handler chain on a real SQLite store, with no adapters and no network."""
    return Engine(ctx, desks=["web"])


def make_settings(data_dir: Path, **extra: object) -> Settings:
    return Settings(data_dir=data_dir, desk_token=TOKEN, admin_token="test-admin-token",  # type: ignore[arg-type]
                    **{**ALWAYS_OPEN, **extra})


class Running:
    def __init__(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        self.server, self.http = server, http
        self.base = str(server.make_url("/")).rstrip("/")
        self.kefu: Kefu = server.app[KEY]


@pytest.fixture(params=["sqlite", "redis"])
async def running(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Running]:
    """kefu serving over real HTTP on loopback: on the embedded store (messages handled
    before the answer) and on Redis (stored, acknowledged, handled by the ingress worker)."""
    extra: dict[str, object] = {}
    if request.param == "redis":
        extra = {"redis_url": REDIS_URL, "redis_namespace": f"kefu-test-{uuid.uuid4().hex[:8]}",
                 "ingress_partitions": 4}
    server = TestServer(await create_app(make_settings(tmp_path / "data", **extra)))
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            yield Running(server, http)
    finally:
        kefu = server.app[KEY]
        closing = asyncio.ensure_future(server.close())
        done, _ = await asyncio.wait({closing}, timeout=15)
        if not done:
            for task in asyncio.all_tasks():
                print("STUCK TASK", task.get_name())
                task.print_stack(limit=12)
            await closing
        if isinstance(kefu.store, RedisStore):
            await drop_namespace(kefu.store.ns)
