"""Redis: the queries and commands the reconciler needs, whatever the runtime.

Design decision: ``probe`` speaks the two lines of RESP that ``INFO`` needs over a plain socket
instead of importing redis-py. It runs on every observation (every ``plan`` and every daemon tick),
and importing redis-py costs ~48 ms here, more than the whole observation budget. Everything else
(backups, restores) uses redis-py.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis

from reconciler.errors import TransientError
from reconciler.runtimes.base import Endpoint


@dataclass(frozen=True)
class RedisFacts:
    keys: int
    used_memory: int
    version: str


def client(endpoint: Endpoint) -> redis.Redis:
    import redis

    return redis.Redis(host=endpoint.host, port=endpoint.port, socket_timeout=5, socket_connect_timeout=5)


def _parse_info(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[name] = value.strip()
    return fields


def probe(endpoint: Endpoint, timeout: float = 2.0) -> RedisFacts:
    """INFO over a raw socket: key count, used memory, version."""
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nINFO\r\n")
            reader = sock.makefile("rb")
            header = reader.readline()
            if not header.startswith(b"$"):
                raise TransientError(f"redis on port {endpoint.port} answered INFO with {header[:60]!r}")
            body = reader.read(int(header[1:]))
    except OSError as exc:
        raise TransientError(f"cannot query redis on port {endpoint.port}: {exc}") from None
    info = _parse_info(body.decode(errors="replace"))
    keys = sum(
        int(part.split("=")[1])
        for name, value in info.items()
        if name.startswith("db")
        for part in value.split(",")
        if part.startswith("keys=")
    )
    return RedisFacts(keys, int(info.get("used_memory", "0")), info.get("redis_version", ""))


def facts(endpoint: Endpoint) -> RedisFacts:
    import redis

    try:
        with client(endpoint) as conn:
            info = conn.info()
            keys = sum(int(v["keys"]) for k, v in info.items() if k.startswith("db") and isinstance(v, dict))
    except redis.RedisError as exc:
        raise TransientError(f"cannot query redis on port {endpoint.port}: {exc}") from None
    return RedisFacts(keys, int(info.get("used_memory", 0)), str(info.get("redis_version", "")))
