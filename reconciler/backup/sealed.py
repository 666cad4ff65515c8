"""One sealed file in a store next to a signed sidecar: the primitives the areas outside the sets share.

Why a module: WAL segments (``backup/walseg``) and Redis snapshots (``backup/redissnap``) are both one
file compressed and encrypted into a store area, described by a small JSON sidecar under the manifest
MAC, checked (size, sha256) before a byte is decrypted, and decrypted into a temporary file renamed into
place. The steps are the same; only the document's fields and the reasons' wording differ.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Any, BinaryIO

from pyrage import x25519

from reconciler.backup import manifest, pipeline
from reconciler.backup.create import Sealing
from reconciler.stores.local import LocalStore

MAX_SIDECAR = 64 * 1024


def put(store: LocalStore, name: str, source_path: str, sealing: Sealing) -> dict[str, Any]:
    """Compress and encrypt the file at ``source_path`` into ``store`` as ``name`` (atomically); the
    fields a sidecar records about it."""
    raw_size = 0

    def produce(out: BinaryIO) -> None:
        nonlocal raw_size
        with open(source_path, "rb") as handle:  # an open handle keeps the file a later rename replaces
            raw_size = pipeline.compress_encrypt(handle, out, sealing.recipients)

    result = store.put_with(name, produce)
    return {"file": name, "size": result.size, "sha256": result.sha256, "raw_size": raw_size}


def put_sidecar(store: LocalStore, name: str, document: dict[str, Any], sealing: Sealing) -> dict[str, Any]:
    """Sign ``document`` (when there is a key) and store it as ``name``; returns what was stored."""
    if sealing.mac_key is not None:
        document = manifest.sign(document, sealing.mac_key)
    store.put_bytes(name, manifest.encode(document))
    return document


def read_sidecar(store: LocalStore, name: str, kind: str, mac_key: bytes | None) -> dict[str, Any]:
    """The authenticated sidecar ``name`` of format ``kind``. Raises FileNotFoundError when it is
    missing, ManifestRejected when it is not a signed ``kind`` document."""
    with store.open(name) as handle:
        data = handle.read(MAX_SIDECAR + 1)
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise manifest.ManifestRejected(f"its sidecar is not JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != kind:
        raise manifest.ManifestRejected(f"its sidecar is not a {kind} document")
    manifest.verify(document, mac_key)
    return document


def matches(store: LocalStore, document: dict[str, Any]) -> bool:
    """The stored file has the size and sha256 its sidecar records. FileNotFoundError when it is gone."""
    digest, size = hashlib.sha256(), 0
    with store.open(str(document["file"])) as handle:
        while chunk := handle.read(pipeline.CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size == document.get("size") and digest.hexdigest() == document.get("sha256")


def unseal(
    store: Any,  # a LocalStore, or anything with its ``open`` (walseg's Drive area)
    document: dict[str, Any],
    dest: str,
    identity: x25519.Identity | None,
    owner: tuple[int, int] | None = None,
) -> None:
    """Decrypt and decompress the file of a checked sidecar to ``dest`` through ``dest.restoring``,
    fsynced, (chowned, mode 0600) and renamed: a reader never sees half a file. An OSError is the
    host's and propagates; anything else (age, zstd) is the file's, raised as ``Unreadable``."""
    tmp = f"{dest}.restoring"
    try:
        with store.open(str(document["file"])) as source, open(tmp, "wb") as out:
            pipeline.decrypt_decompress(source, out, identity)
            out.flush()
            os.fsync(out.fileno())
        if owner is not None:
            os.chown(tmp, *owner)
            os.chmod(tmp, 0o600)
        os.replace(tmp, dest)
    except Exception as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise
        raise Unreadable(f"{type(exc).__name__}: {exc}") from None


class Unreadable(Exception):
    """The stored file does not decrypt or decompress."""
