"""WAL segments in a store: compressed, encrypted and authenticated one by one, like set members.

Design decisions:
- A segment is stored as ``<segment>.wal.zst[.age]`` next to a small signed sidecar
  ``<segment>.wal.json`` (the segment in progress: ``<segment>.partial.wal...``). The sidecar carries
  the stack, the cluster's system identifier, the segment name, and size and sha256 of the stored
  bytes, under the same HMAC as a set manifest (key derived from the secret identity). Someone who
  knows only the public recipient can encrypt a segment, but cannot make one that is replayed; a
  segment of another cluster or stack, renamed into place, names another segment or cluster in its
  sidecar and is refused.
- The sidecar is written after the segment (each atomically): a segment without its sidecar is
  incomplete and counts as missing, never as present.
- ``fetch`` checks everything before writing a byte of WAL where PostgreSQL will read it, and writes
  it under a temporary name renamed into place: recovery never sees half a segment.
- The WAL area is the directory ``wal`` inside the local store: set listings ignore directories,
  and a copy of the store directory copies both.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

from pyrage import x25519

from reconciler.backup import manifest, pipeline, sealed
from reconciler.backup.create import Sealing
from reconciler.errors import PermanentError
from reconciler.plan import walchain
from reconciler.plan.backupsets import StoredFile
from reconciler.stores.base import PutResult
from reconciler.stores.local import LocalStore

FORMAT = "reconciler-wal-segment/1"
AREA = "wal"
_DATA = ".wal.zst"
_SIDECAR = ".wal.json"
_MAX_SIDECAR = 64 * 1024


class SegmentRejected(PermanentError):
    """This segment cannot be replayed; recovery stops before it."""

    def __init__(self, segment: str, reason: str) -> None:
        self.segment = segment
        self.reason = reason
        super().__init__(f"WAL segment {segment} rejected: {reason}")


class Area(Protocol):
    """Where segments are kept: the local store's WAL area, or one on Google Drive (engine/waloffsite)."""

    def list(self) -> list[StoredFile]: ...

    def open(self, name: str) -> BinaryIO: ...

    def put_with(self, name: str, produce: Callable[[BinaryIO], None]) -> PutResult: ...

    def put_bytes(self, name: str, data: bytes) -> PutResult: ...

    def delete(self, name: str) -> None: ...


def area(store_path: str) -> LocalStore:
    return LocalStore(os.path.join(store_path, AREA))


def _stem(segment: str, partial: bool) -> str:
    return f"{segment}.partial" if partial else segment


def listing(store: Area) -> tuple[list[str], list[str]]:
    """(complete segments, partial segments) that have their sidecar; anything else is not counted."""
    names = {f.name for f in store.list()}
    complete: list[str] = []
    partial: list[str] = []
    for name in names:
        if not name.endswith(_SIDECAR):
            continue
        stem = name.removesuffix(_SIDECAR)
        segment, _, kind = stem.partition(".")
        if not walchain.is_segment(segment) or kind not in ("", "partial"):
            continue
        if not any(n.startswith(f"{stem}{_DATA}") for n in names):
            continue
        (partial if kind else complete).append(segment)
    return sorted(complete), sorted(partial)


def ship(
    store: Area,
    source: str,
    segment: str,
    sealing: Sealing,
    stack: str,
    system_identifier: str,
    partial: bool = False,
) -> dict[str, Any]:
    """Store the WAL file at ``source`` as ``segment`` (sealed), then its signed sidecar."""
    stem = _stem(segment, partial)
    data_name = f"{stem}{_DATA}{sealing.suffix}"
    raw_size = 0

    def produce(out: BinaryIO) -> None:
        nonlocal raw_size
        with open(source, "rb") as handle:
            raw_size = pipeline.compress_encrypt(handle, out, sealing.recipients)

    result = store.put_with(data_name, produce)
    document: dict[str, Any] = {
        "format": FORMAT,
        "stack": stack,
        "system_identifier": system_identifier,
        "segment": segment,
        "partial": partial,
        "file": data_name,
        "size": result.size,
        "sha256": result.sha256,
        "raw_size": raw_size,
        "encryption": {"method": "age" if sealing.recipients else "none"},
    }
    if sealing.mac_key is not None:
        document = manifest.sign(document, sealing.mac_key)
    store.put_bytes(f"{stem}{_SIDECAR}", manifest.encode(document))
    if not partial:  # the complete segment supersedes what was shipped while it was in progress
        for name in (f"{segment}.partial{_SIDECAR}", f"{segment}.partial{_DATA}{sealing.suffix}"):
            store.delete(name)
    return document


def check(
    store: Area,
    segment: str,
    mac_key: bytes | None,
    stack: str,
    system_identifier: str,
    partial: bool = False,
) -> dict[str, Any]:
    """The verified sidecar of ``segment``; raises SegmentRejected with the reason."""
    stem = _stem(segment, partial)
    try:
        with store.open(f"{stem}{_SIDECAR}") as handle:
            data = handle.read(_MAX_SIDECAR + 1)
    except FileNotFoundError:
        raise SegmentRejected(segment, "it is missing") from None
    try:
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise manifest.ManifestRejected(f"its sidecar is not a {FORMAT} document")
        manifest.verify(document, mac_key)
    except (ValueError, manifest.ManifestRejected) as exc:
        raise SegmentRejected(segment, f"its sidecar does not authenticate ({exc})") from None
    if document.get("segment") != segment or bool(document.get("partial")) != partial:
        raise SegmentRejected(segment, f"its sidecar describes another segment ({document.get('segment')})")
    if document.get("stack") != stack or document.get("system_identifier") != system_identifier:
        raise SegmentRejected(segment, "it belongs to another stack or database cluster")
    digest, size = hashlib.sha256(), 0
    try:
        with store.open(str(document["file"])) as handle:
            while chunk := handle.read(pipeline.CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except (FileNotFoundError, ValueError):
        raise SegmentRejected(segment, "its data file is missing") from None
    if size != document.get("size") or digest.hexdigest() != document.get("sha256"):
        raise SegmentRejected(segment, "its data does not match its sidecar's size and sha256 (corrupt)")
    return document


def fetch(
    store: Area,
    segment: str,
    dest: str,
    identity: x25519.Identity | None,
    mac_key: bytes | None,
    stack: str,
    system_identifier: str,
    partial: bool = False,
) -> None:
    """Check ``segment``, then write its WAL bytes to ``dest`` (atomically)."""
    document = check(store, segment, mac_key, stack, system_identifier, partial)
    try:
        sealed.unseal(store, document, dest, identity)
    except sealed.Unreadable as exc:
        raise SegmentRejected(segment, f"it does not decrypt ({exc})") from None


def delete(store: Area, segment: str) -> None:
    """Remove a segment (complete and partial): the sidecar first, so it is never half present."""
    for stem in (segment, f"{segment}.partial"):
        store.delete(f"{stem}{_SIDECAR}")
        for suffix in (_DATA, f"{_DATA}.age"):
            store.delete(f"{stem}{suffix}")
