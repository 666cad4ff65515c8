"""Redis: the queries and commands the reconciler needs, whatever the runtime."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from reconciler.errors import TransientError
from reconciler.runtimes.base import Endpoint


@dataclass(frozen=True)
class RedisFacts:
    keys: int
    used_memory: int
    version: str


def client(endpoint: Endpoint) -> redis.Redis:
    return redis.Redis(host=endpoint.host, port=endpoint.port, socket_timeout=5, socket_connect_timeout=5)


def facts(endpoint: Endpoint) -> RedisFacts:
    try:
        with client(endpoint) as conn:
            info = conn.info()
            keys = sum(int(v["keys"]) for k, v in info.items() if k.startswith("db") and isinstance(v, dict))
    except redis.RedisError as exc:
        raise TransientError(f"cannot query redis on port {endpoint.port}: {exc}") from None
    return RedisFacts(keys, int(info.get("used_memory", 0)), str(info.get("redis_version", "")))
