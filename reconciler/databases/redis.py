"""Redis: the queries and commands the reconciler needs, whatever the runtime.

Design decision: the reconciler speaks RESP itself (``Resp`` below) for the few commands it sends.
Observation runs on every ``plan`` and daemon tick, and importing redis-py costs ~48 ms there; in the
backup process it costs ~6 MB of RSS against a 64 MB budget. The tests use redis-py as the
independent client that checks what the reconciler did.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

from reconciler.errors import TransientError
from reconciler.runtimes.base import Endpoint


@dataclass(frozen=True)
class RedisFacts:
    keys: int
    used_memory: int
    version: str
    expires: int = 0  # keys with a TTL (INFO keyspace ``expires=``)


class RedisReplyError(Exception):
    pass


class Resp:
    """A minimal RESP2 client: the handful of commands the reconciler sends (INFO, BGSAVE, CONFIG GET).

    Why not redis-py: it costs ~48 ms of import time on every observation and ~6 MB of RSS in the
    backup process, for four commands whose protocol fits in this class.
    """

    def __init__(self, endpoint: Endpoint, timeout: float = 5.0) -> None:
        try:
            self.sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
        except OSError as exc:
            raise TransientError(f"cannot connect to redis on port {endpoint.port}: {exc}") from None
        self.reader = self.sock.makefile("rb")
        self.port = endpoint.port

    def __enter__(self) -> Resp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reader.close()
        self.sock.close()

    def command(self, *args: str) -> object:
        payload = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            payload.append(f"${len(data)}\r\n".encode() + data + b"\r\n")
        try:
            self.sock.sendall(b"".join(payload))
            return self._reply()
        except OSError as exc:
            raise TransientError(f"redis on port {self.port}: {exc}") from None

    def _reply(self) -> object:
        line = self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise TransientError(f"redis on port {self.port} closed the connection")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return body.decode()
        if kind == b"-":
            raise RedisReplyError(body.decode())
        if kind == b":":
            return int(body)
        if kind == b"$":
            length = int(body)
            if length < 0:
                return None
            data = self.reader.read(length + 2)[:-2]
            return data
        if kind == b"*":
            return [self._reply() for _ in range(int(body))]
        raise TransientError(f"redis on port {self.port} sent an unknown reply {line[:40]!r}")

    def info(self, section: str = "") -> dict[str, str]:
        reply = self.command("INFO", section) if section else self.command("INFO")
        assert isinstance(reply, bytes)
        return _parse_info(reply.decode(errors="replace"))

    def config_get(self, name: str) -> str:
        reply = self.command("CONFIG", "GET", name)
        assert isinstance(reply, list) and len(reply) == 2
        return bytes(reply[1]).decode()


def _parse_info(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[name] = value.strip()
    return fields


def _keys(info: dict[str, str], field: str = "keys") -> int:
    return sum(
        int(part.split("=")[1])
        for name, value in info.items()
        if name.startswith("db")
        for part in value.split(",")
        if part.startswith(f"{field}=")
    )


def probe(endpoint: Endpoint, timeout: float = 2.0) -> RedisFacts:
    """INFO: key count, used memory, version."""
    with Resp(endpoint, timeout) as conn:
        info = conn.info()
    return RedisFacts(
        _keys(info), int(info.get("used_memory", "0")), info.get("redis_version", ""), _keys(info, "expires")
    )


def snapshot(endpoint: Endpoint, timeout: float = 600) -> tuple[str, int, int]:
    """BGSAVE and wait for *our* save; return (path of the fresh RDB file, keys and keys with a TTL
    when it started). Keys with a TTL may expire before a restore loads the file: a check allows that.

    Done means ``rdb_bgsave_in_progress:0`` and ``rdb_last_bgsave_status:ok`` after the save counter
    (``rdb_saves``, Redis >= 7) moved past its value before our BGSAVE, so an earlier save can never be
    mistaken for ours. A save already running is waited for first (BGSAVE would refuse).
    """
    deadline = time.monotonic() + timeout
    with Resp(endpoint, timeout=30) as conn:
        while conn.info("persistence")["rdb_bgsave_in_progress"] != "0":
            if time.monotonic() > deadline:
                raise TransientError("a redis background save is stuck in progress")
            time.sleep(0.02)
        saves_before = int(conn.info("persistence")["rdb_saves"])
        keyspace = conn.info("keyspace")
        keys, expires = _keys(keyspace), _keys(keyspace, "expires")
        try:
            conn.command("BGSAVE")
        except RedisReplyError as exc:
            raise TransientError(f"redis refused BGSAVE: {exc}") from None
        while True:
            info = conn.info("persistence")
            finished = info["rdb_bgsave_in_progress"] == "0"
            if finished and int(info["rdb_saves"]) > saves_before:
                break
            if finished and info["rdb_last_bgsave_status"] != "ok":
                raise TransientError("redis BGSAVE failed (rdb_last_bgsave_status:err); see the redis log")
            if time.monotonic() > deadline:
                raise TransientError(f"redis BGSAVE did not finish within {timeout:.0f} s")
            time.sleep(0.01)
        if info["rdb_last_bgsave_status"] != "ok":
            raise TransientError("redis BGSAVE failed (rdb_last_bgsave_status:err); see the redis log")
        return os.path.join(conn.config_get("dir"), conn.config_get("dbfilename")), keys, expires


def digest(endpoint: Endpoint) -> str:
    """A digest of the whole dataset: Redis's own ``DEBUG DIGEST`` when allowed (the reconciler starts
    Redis with ``enable-debug-command local``), else a sha256 over every key's DUMP, in key order."""
    import hashlib

    with Resp(endpoint, timeout=60) as conn:
        try:
            reply = conn.command("DEBUG", "DIGEST")
            text = reply.decode() if isinstance(reply, bytes) else str(reply)
            return f"debug:{text}"
        except RedisReplyError:
            pass
        keys: list[bytes] = []
        cursor = "0"
        while True:
            page = conn.command("SCAN", cursor, "COUNT", "1000")
            assert isinstance(page, list)
            cursor = bytes(page[0]).decode()
            keys.extend(page[1])
            if cursor == "0":
                break
        total = hashlib.sha256()
        for key in sorted(keys):
            dumped = conn.command("DUMP", key.decode(errors="surrogateescape"))
            total.update(key + b"\0" + (dumped if isinstance(dumped, bytes) else b""))
        return f"dump-sha256:{len(keys)}:{total.hexdigest()}"
