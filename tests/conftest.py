from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

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
from tests.support import TOKEN

ALWAYS_OPEN = {"hours_open": "00:00", "hours_close": "00:00"}


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
    return Settings(data_dir=data_dir, desk_token=TOKEN, **{**ALWAYS_OPEN, **extra})  # type: ignore[arg-type]


class Running:
    def __init__(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        self.server, self.http = server, http
        self.base = str(server.make_url("/")).rstrip("/")
        self.kefu: Kefu = server.app[KEY]


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    """kefu serving over real HTTP on loopback, embedded store in a temp dir."""
    server = TestServer(await create_app(make_settings(tmp_path / "data")))
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        yield Running(server, http)
    await server.close()
