"""Redis snapshots between sets: one RDB, compressed, encrypted and authenticated, outside the sets.

Design decisions:
- A snapshot is ``<counter>.rdb.zst[.age]`` next to a small signed sidecar ``<counter>.rdb.json`` in
  ``<local store>/redis/<stack>/``. The directory is outside the set namespace: set listings ignore
  directories, so snapshots never count for, or disturb, set retention.
- The sidecar carries the stack, the service, the counter, ``after_set`` (the newest set when it was
  taken), size and sha256 of the stored bytes, under the same HMAC as a set manifest (key derived from
  the secret identity). Someone who knows only the public recipient can encrypt an RDB but cannot make
  a sidecar; a snapshot of another stack, or one renamed to another counter (to make an old one look
  newest), names another stack or counter in its sidecar and is refused. The counter and ``after_set``
  are the snapshot's position (``plan/redissnaps``): the host clock is never asked which is newer.
- The sidecar is written after the data (each atomically, ``LocalStore``): data without its sidecar
  (a snapshot cut short) is not a snapshot; deletion removes the sidecar first for the same reason.
- ``fetch`` checks size and sha256 before decrypting, and decrypts into a temporary file renamed into
  place: Redis never loads half an RDB, and an RDB that does not decrypt or decompress is refused.
- The RDB is Redis's own BGSAVE file (``databases/redis.snapshot``), read through an open handle: a
  later save renames a new file in and our handle keeps the one we asked for.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

from pyrage import x25519

from reconciler.backup import manifest, sealed
from reconciler.backup.create import Sealing
from reconciler.databases import redis as rd
from reconciler.errors import PermanentError
from reconciler.plan.redissnaps import Snapshot
from reconciler.runtimes.base import Endpoint
from reconciler.stores.local import LocalStore

FORMAT = "reconciler-redis-snapshot/1"
AREA = "redis"
_DATA = ".rdb.zst"
_SIDECAR = ".rdb.json"
_NAME = re.compile(r"^(\d{12})\.rdb\.json$")


class SnapshotRejected(PermanentError):
    """This snapshot cannot be loaded; the next older one (or the set's RDB) is used instead."""

    def __init__(self, counter: int, reason: str) -> None:
        self.counter = counter
        self.reason = reason
        super().__init__(f"Redis snapshot {counter} rejected: {reason}")


def area(store_path: str, stack: str) -> LocalStore:
    return LocalStore(os.path.join(store_path, AREA, stack))


def _stem(counter: int) -> str:
    return f"{counter:012d}"


def data_name(counter: int, sealing: Sealing) -> str:
    return f"{_stem(counter)}{_DATA}{sealing.suffix}"


def sidecar_name(counter: int) -> str:
    return f"{_stem(counter)}{_SIDECAR}"


def counters(names: Iterable[str]) -> list[int]:
    """Counters of the snapshots whose sidecar is among ``names`` (unchecked), oldest first."""
    return sorted(int(m.group(1)) for m in map(_NAME.match, names) if m)


def listing(store: LocalStore) -> list[int]:
    """``counters`` of a local area."""
    return counters(f.name for f in store.list()) if os.path.isdir(store.path) else []


def take(
    store: LocalStore,
    endpoint: Endpoint,
    counter: int,
    after_set: str,
    sealing: Sealing,
    stack: str,
    taken: str,
) -> dict[str, Any]:
    """BGSAVE, then store the RDB as snapshot ``counter`` (sealed), then its signed sidecar."""
    if endpoint.container is not None:
        raise PermanentError("Redis snapshots between sets need the local runtime")
    rdb_path, keys, expires = rd.snapshot(endpoint)
    stored = sealed.put(store, data_name(counter, sealing), rdb_path, sealing)
    document: dict[str, Any] = {
        "format": FORMAT,
        "stack": stack,
        "service": "redis",
        "counter": counter,
        "after_set": after_set,
        "taken": taken,  # informative only: the order is the counter's
        **stored,
        "check": {"keys": keys, "expires": expires},
        "encryption": {"method": "age" if sealing.recipients else "none"},
    }
    return sealed.put_sidecar(store, sidecar_name(counter), document, sealing)


def sidecar(store: LocalStore, counter: int, mac_key: bytes | None, stack: str) -> dict[str, Any]:
    """The authenticated sidecar of snapshot ``counter`` (its data is not read); raises SnapshotRejected."""
    try:
        document = sealed.read_sidecar(store, sidecar_name(counter), FORMAT, mac_key)
    except FileNotFoundError:
        raise SnapshotRejected(counter, "it is missing") from None
    except manifest.ManifestRejected as exc:
        raise SnapshotRejected(counter, f"its sidecar does not authenticate ({exc})") from None
    if document.get("counter") != counter:
        raise SnapshotRejected(counter, f"its sidecar describes another snapshot ({document.get('counter')})")
    if document.get("stack") != stack or document.get("service") != "redis":
        raise SnapshotRejected(counter, "it belongs to another stack or service")
    if not isinstance(document.get("after_set"), str) or document.get("file") != (
        f"{_stem(counter)}{_DATA}{'.age' if document.get('encryption', {}).get('method') == 'age' else ''}"
    ):
        raise SnapshotRejected(counter, "its sidecar names no valid data file")
    return document


def position(document: dict[str, Any]) -> Snapshot:
    return Snapshot(int(document["counter"]), str(document["after_set"]))


def check(store: LocalStore, counter: int, mac_key: bytes | None, stack: str) -> dict[str, Any]:
    """The sidecar, after the data's size and sha256 matched it; raises SnapshotRejected."""
    document = sidecar(store, counter, mac_key, stack)
    try:
        intact = sealed.matches(store, document)
    except FileNotFoundError:
        raise SnapshotRejected(counter, "its data file is missing") from None
    if not intact:
        raise SnapshotRejected(counter, "its data does not match its sidecar's size and sha256 (corrupt)")
    return document


def fetch(
    store: LocalStore,
    document: dict[str, Any],
    dest: str,
    identity: x25519.Identity | None,
    owner: tuple[int, int],
) -> None:
    """Decrypt a checked snapshot to ``dest`` atomically (owned by ``owner``, mode 0600)."""
    try:
        sealed.unseal(store, document, dest, identity, owner)
    except sealed.Unreadable as exc:
        raise SnapshotRejected(int(document["counter"]), f"it does not decrypt ({exc})") from None


def file_names(counter: int) -> list[str]:
    """Every name snapshot ``counter`` may have, the sidecar first (the order to delete them in: a
    snapshot is never half present)."""
    return [sidecar_name(counter), f"{_stem(counter)}{_DATA}", f"{_stem(counter)}{_DATA}.age"]


def delete(store: LocalStore, counter: int) -> None:
    for name in file_names(counter):
        store.delete(name)
