"""Closing and reopening a server to its clients around a mode switch (the drain), on every runtime.

Why: stopping app containers is not enough. With the local runtime nothing stops the applications,
and on Docker a client outside ``drain.containers`` keeps writing. A write acknowledged by the old
copy after the fingerprint fails the verification; a write acknowledged by the *new* copy before
verification is thrown away by the rollback. Both lose what a client was told was saved. So the drain
closes the servers themselves, and the new copies are started closed; they are opened only once
verified (in ``resume``), so nothing a client was told is ever in a copy that might be discarded.

Design decisions:
- Done through the servers' own protocols, not by restarting them, so it works the same on both
  runtimes and costs milliseconds, not a restart (write downtime is the switch's main cost).
- PostgreSQL: a ``host all all all reject`` block is put at the top of ``pg_hba.conf`` and the
  configuration reloaded; new TCP connections are refused from then on, and every other client
  backend is terminated (its open transaction aborts: it was never acknowledged). The engine reaches
  the server as superuser over its unix socket, which the ``local`` lines still allow. The block is a
  file in the data directory, so the copy inherits it: the new server starts refusing clients, and
  verification happens before any client can connect. ``pg_reload_conf()`` only signals the
  postmaster, so the drain waits until a TCP probe is actually rejected before terminating backends.
- Redis: its listener is moved to a private port (``CONFIG SET port``, Redis ≥ 7) and every other
  client is killed in the same ``MULTI`` (Redis is single-threaded: nothing runs in between). The new
  copy, on the local runtime, is started on that private port and moved back once verified.
- Engines on the interface (``databases/engine.py``, MariaDB) bring their own ``close``/``open``
  with the same contract: closed state kept inside the data directory, so the copy starts closed.
- Idempotent: a resumed switch closes or opens again without harm (the block is recognised by its
  marker lines, a Redis already moved answers on the private port).
"""

from __future__ import annotations

import logging
import os
import socket
import time

from reconciler.databases import postgres as pg
from reconciler.databases import redis as rd
from reconciler.errors import PermanentError, ReconcilerError
from reconciler.runtimes.base import Endpoint

log = logging.getLogger(__name__)

BEGIN = "# reconciler: closed to clients for a mode switch (this block is removed when it ends)"
END = "# reconciler: end of the mode-switch block"
_BLOCK = f"{BEGIN}\nhost all all all reject\n{END}\n"
_CLOSE_TIMEOUT = 30.0
_PROBE_USER = "reconciler-drain-probe"


def private_port() -> int:
    """A free TCP port below the ephemeral range, where no application looks for the service."""
    for candidate in range(20000 + os.getpid() % 5000, 32000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return candidate
    raise PermanentError("no free TCP port between 20000 and 32000 for a private listener")


# -- PostgreSQL --------------------------------------------------------------------------------------


def _hba(data_dir: str) -> str:
    path = os.path.join(data_dir, "pg_hba.conf")
    if not os.path.isfile(path):
        raise PermanentError(
            f"{path} does not exist: the data directory has no pg_hba.conf in it (hba_file set elsewhere?), "
            "so the mode switch cannot close PostgreSQL to its clients"
        )
    return path


def _rewrite(path: str, text: str) -> None:
    st = os.stat(path)
    tmp = f"{path}.reconciler-tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, st.st_mode & 0o7777)
    os.chown(tmp, st.st_uid, st.st_gid)
    os.replace(tmp, path)


def mark_postgres_closed(data_dir: str) -> None:
    """Put the reject block at the top of pg_hba.conf (no reload: for a stopped data directory too)."""
    path = _hba(data_dir)
    with open(path) as handle:
        text = handle.read()
    if BEGIN not in text:
        _rewrite(path, _BLOCK + text)


def mark_postgres_open(data_dir: str) -> bool:
    """Remove the reject block from pg_hba.conf; True if there was one."""
    path = _hba(data_dir)
    with open(path) as handle:
        text = handle.read()
    if BEGIN not in text:
        return False
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END + "\n")
    _rewrite(path, head + tail)
    return True


def _tcp_refused(port: int) -> bool:
    try:
        pg.connect(Endpoint("127.0.0.1", port, _PROBE_USER)).close()
    except ReconcilerError as exc:
        text = str(exc)
        return "rejects connection" in text or "Connection refused" in text
    return False


def close_postgres(endpoint: Endpoint, data_dir: str, port: int) -> int:
    """Refuse new client connections and terminate the existing ones; the number terminated."""
    mark_postgres_closed(data_dir)
    with pg.connect(endpoint) as conn:
        conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + _CLOSE_TIMEOUT
        while not _tcp_refused(port):
            if time.monotonic() > deadline:
                raise PermanentError(
                    f"postgres on port {port} still accepts TCP clients {_CLOSE_TIMEOUT:.0f} s after its "
                    "pg_hba.conf was closed and reloaded; see its log"
                )
            time.sleep(0.01)
        terminated = 0
        while True:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            ).fetchall()
            if not rows:
                return terminated
            terminated += len(rows)
            if time.monotonic() > deadline:
                raise PermanentError(
                    f"postgres clients on port {port} did not exit after pg_terminate_backend"
                )
            time.sleep(0.01)


def open_postgres(endpoint: Endpoint, data_dir: str) -> None:
    """Let clients in again (the server must be running from ``data_dir``)."""
    if mark_postgres_open(data_dir):
        with pg.connect(endpoint) as conn:
            conn.execute("SELECT pg_reload_conf()")


# -- Redis ---------------------------------------------------------------------------------------


def _answers(endpoint: Endpoint) -> bool:
    try:
        with rd.Resp(endpoint, timeout=2) as conn:
            conn.command("PING")
    except ReconcilerError:
        return False
    return True


def move_redis(endpoint: Endpoint, to_port: int, kill_clients: bool, expected_dir: str | None = None) -> bool:
    """Move Redis's listener from ``endpoint.port`` to ``to_port``; False if it does not answer there
    (or, with ``expected_dir``, if the Redis answering there serves another directory).

    With ``kill_clients`` every other client is disconnected in the same transaction.
    """
    if not _answers(endpoint):
        return False
    with rd.Resp(endpoint, timeout=10) as conn:
        if expected_dir is not None and os.path.realpath(conn.config_get("dir")) != os.path.realpath(
            expected_dir
        ):
            return False
        try:
            conn.command("MULTI")
            conn.command("CONFIG", "SET", "port", str(to_port))
            if kill_clients:
                conn.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
                conn.command("CLIENT", "KILL", "TYPE", "pubsub", "SKIPME", "yes")
            conn.command("EXEC")
        except rd.RedisReplyError as exc:  # inside EXEC: the port could not be bound (taken?)
            raise PermanentError(f"redis could not move its listener to port {to_port}: {exc}") from None
    return True


def close_redis(endpoint: Endpoint, private: int) -> None:
    """Service port closed, clients disconnected; the server answers on ``private`` only."""
    if move_redis(endpoint, private, kill_clients=True):
        return
    if not _answers(Endpoint(endpoint.host, private, endpoint.user, endpoint.container)):
        raise PermanentError(
            f"redis answers neither on port {endpoint.port} nor on {private}; cannot drain it"
        )


def open_redis(endpoint: Endpoint, private: int, expected_dir: str | None = None) -> None:
    """Back on the service port (a no-op when it already listens there)."""
    moved = Endpoint(endpoint.host, private, endpoint.user, endpoint.container)
    if not move_redis(moved, endpoint.port, False, expected_dir) and not _answers(endpoint):
        raise PermanentError(f"redis answers neither on port {private} nor on {endpoint.port}")
