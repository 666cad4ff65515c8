"""Redis: the queries and commands the reconciler needs, whatever the runtime.

Design decision: ``probe`` speaks the two lines of RESP that ``INFO`` needs over a plain socket
instead of importing redis-py. It runs on every observation (every ``plan`` and every daemon tick),
and importing redis-py costs ~48 ms here, more than the whole observation budget. Everything else
(backups, restores) uses redis-py.
"""

from __future__ import annotations

import os
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


def snapshot(endpoint: Endpoint, timeout: float = 600) -> tuple[str, int]:
    """BGSAVE and wait for *our* save; return (path of the fresh RDB file, keys when it started).

    Done means ``rdb_bgsave_in_progress:0`` and ``rdb_last_bgsave_status:ok`` after the save counter
    (``rdb_saves``, Redis >= 7) moved past its value before our BGSAVE, so an earlier save can never be
    mistaken for ours. A save already running is waited for first (BGSAVE would refuse).
    """
    import time

    import redis

    deadline = time.monotonic() + timeout
    with client(endpoint) as conn:
        while conn.info("persistence")["rdb_bgsave_in_progress"]:
            if time.monotonic() > deadline:
                raise TransientError("a redis background save is stuck in progress")
            time.sleep(0.02)
        saves_before = int(conn.info("persistence")["rdb_saves"])
        keys = sum(int(v["keys"]) for v in conn.info("keyspace").values())
        try:
            conn.bgsave()
        except redis.ResponseError as exc:
            raise TransientError(f"redis refused BGSAVE: {exc}") from None
        while True:
            info = conn.info("persistence")
            if not info["rdb_bgsave_in_progress"] and int(info["rdb_saves"]) > saves_before:
                break
            if not info["rdb_bgsave_in_progress"] and info["rdb_last_bgsave_status"] != "ok":
                raise TransientError("redis BGSAVE failed (rdb_last_bgsave_status:err); see the redis log")
            if time.monotonic() > deadline:
                raise TransientError(f"redis BGSAVE did not finish within {timeout:.0f} s")
            time.sleep(0.01)
        if info["rdb_last_bgsave_status"] != "ok":
            raise TransientError("redis BGSAVE failed (rdb_last_bgsave_status:err); see the redis log")
        directory = str(conn.config_get("dir")["dir"])
        filename = str(conn.config_get("dbfilename")["dbfilename"])
    return os.path.join(directory, filename), keys
