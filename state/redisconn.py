"""One Redis client for the store, from a URL: a plain Redis, or the master a set of Sentinels names.

    redis://[user:password@]host:6379/0                 one Redis (rediss:// for TLS, unix:// too)
    redis+sentinel://[user:password@]h1:26379,h2:26379/mymaster[/0][?sentinel_password=…]

With Sentinel, the client asks the Sentinels for the current master and follows a failover on its
own: connections to the old master are dropped and the next command goes to the new one. The user
and password are the Redis servers'; `sentinel_password` is for the Sentinels if they have one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

SENTINEL_SCHEMES = ("redis+sentinel", "sentinel")
# Shared by both kinds of connection.
OPTIONS: dict[str, Any] = {"decode_responses": True, "health_check_interval": 15, "socket_keepalive": True}
MAX_CONNECTIONS = 64
POOL_TIMEOUT = 20  # seconds a caller waits for a free connection under a burst


class SentinelBlockingPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel-managed connections, with callers waiting for a free one instead of failing."""


@dataclass(frozen=True)
class SentinelURL:
    hosts: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None
    sentinel_password: str | None


class BadRedisURL(ValueError):
    pass


def parse_sentinel(url: str) -> SentinelURL:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    hosts: list[tuple[str, int]] = []
    for item in filter(None, netloc.split(",")):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "26379")
        try:
            hosts.append((host.strip("[]") or "127.0.0.1", int(port or 26379)))
        except ValueError:
            raise BadRedisURL(f"bad Sentinel address {item!r} in KEFU_REDIS_URL") from None
    path = [p for p in parts.path.split("/") if p]
    if not hosts or not path:
        raise BadRedisURL("a Sentinel URL is redis+sentinel://host:26379[,host2:26379]/service_name[/db]")
    try:
        db = int(path[1]) if len(path) > 1 else 0
    except ValueError:
        raise BadRedisURL(f"bad database number {path[1]!r} in KEFU_REDIS_URL") from None
    query = parse_qs(parts.query)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    sentinel_password = query.get("sentinel_password", [None])[0]
    return SentinelURL(hosts, unquote(path[0]), db, user, password, sentinel_password)


def where(url: str) -> str:
    """The URL without user, password or query: safe to print and log."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"


def connect(url: str) -> Any:
    """An asyncio Redis client for `url` (see the module doc); nothing is contacted yet."""
    if urlsplit(url).scheme in SENTINEL_SCHEMES:
        s = parse_sentinel(url)
        sentinel_kwargs: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 5}
        if s.sentinel_password:
            sentinel_kwargs["password"] = s.sentinel_password
        sentinel = Sentinel(s.hosts, sentinel_kwargs=sentinel_kwargs)
        return sentinel.master_for(
            s.service, connection_pool_class=SentinelBlockingPool, db=s.db, username=s.username,
            password=s.password, socket_connect_timeout=5, max_connections=MAX_CONNECTIONS, timeout=POOL_TIMEOUT,
            **OPTIONS,
        )
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=MAX_CONNECTIONS, timeout=POOL_TIMEOUT,
                                                    **OPTIONS)
    return aioredis.Redis(connection_pool=pool)
