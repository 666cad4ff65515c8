"""Physical base backups of PostgreSQL: ``pg_basebackup`` as one tar stream into the set pipeline.

Design decisions:
- ``pg_basebackup -Ft -D - -X fetch``: PostgreSQL 15 writes a tar to stdout only without WAL
  *streaming* (``-X stream`` to stdout is refused), so the WAL the backup needs to be consistent is
  *fetched* at its end and lands in the same tar under ``pg_wal/``. A base backup without that WAL is
  useless; this one restores alone (to its stop LSN) and is also the start of a WAL chain that the
  continuous WAL (``backup.continuous``) extends. With ``-X fetch`` a server under heavy write load
  could recycle a segment before the fetch: pg_basebackup then fails loudly ("requested WAL segment
  has already been removed") and no set is written; the continuous WAL's replication slot keeps
  every segment until it is shipped, which closes that window when continuous protection runs.
- The stream is read once, as it passes to zstd and age (``TarTap``): the small ``backup_label``
  and ``backup_manifest`` members are kept in memory on the way, everything else is only counted.
  Nothing is written to disk (on a RAM-mode host a temporary tar would sit in RAM).
- PostgreSQL's own ``backup_manifest`` (injected by pg_basebackup at the end of the tar) holds a
  checksum of every file and the WAL range; after extraction ``pg_verifybackup`` checks it. Our set
  manifest records its sha256 and the facts a restore and a WAL chain need: system identifier,
  timeline, start and stop LSN, and the segment the backup starts in. The whole member is, like
  every member, authenticated by the set's MAC over its sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from typing import Any

from reconciler.backup.pipeline import CountingReader, Readable
from reconciler.runtimes.base import Endpoint

CONTENT = "pg_basebackup-tar"
MEMBER_SUFFIX = "pgbase.tar.zst"
_BLOCK = 512
_WANTED = frozenset({"backup_label", "backup_manifest"})
_MAX_CAPTURE = 64 * 1024 * 1024  # a backup_manifest is ~150 bytes per file: far below this


class TarTap(CountingReader):
    """A reader that passes a tar stream through unchanged and keeps chosen small members.

    It understands the ustar headers ``pg_basebackup`` writes (name, prefix, octal size); it never
    seeks and holds at most one header and the captured members in memory."""

    def __init__(self, raw: Readable, on_read: Callable[[int], None] | None = None) -> None:
        super().__init__(raw, on_read)
        self.files = 0
        self.captured: dict[str, bytes] = {}
        self.ended = False
        self._header = bytearray()
        self._remaining = 0  # bytes of the current member's data (with padding) still to pass
        self._size = 0
        self._capture: bytearray | None = None
        self._capture_name = ""

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self._feed(memoryview(data))
        return data

    def _feed(self, data: memoryview) -> None:
        offset = 0
        while offset < len(data) and not self.ended:
            if self._remaining:
                take = min(self._remaining, len(data) - offset)
                if self._capture is not None:
                    room = self._size - len(self._capture)
                    self._capture += data[offset : offset + min(take, max(room, 0))]
                self._remaining -= take
                offset += take
                if not self._remaining and self._capture is not None:
                    self.captured[self._capture_name] = bytes(self._capture)
                    self._capture = None
                continue
            take = min(_BLOCK - len(self._header), len(data) - offset)
            self._header += data[offset : offset + take]
            offset += take
            if len(self._header) == _BLOCK:
                self._header_complete(bytes(self._header))
                self._header.clear()

    def _header_complete(self, header: bytes) -> None:
        if header == bytes(_BLOCK):
            self.ended = True  # the end-of-archive blocks
            return
        name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
        if prefix:
            name = f"{prefix}/{name}"
        size_field = header[124:136].split(b"\0", 1)[0].strip()
        size = int(size_field, 8) if size_field else 0
        kind = header[156:157]
        if kind in (b"0", b"\0"):
            self.files += 1
        self._size = size
        self._remaining = (size + _BLOCK - 1) // _BLOCK * _BLOCK
        if name.removeprefix("./") in _WANTED and size <= _MAX_CAPTURE:
            self._capture = bytearray()
            self._capture_name = name.removeprefix("./")
            if not size:
                self.captured[self._capture_name] = b""
                self._capture = None


def basebackup_argv(bindir: str, client_args: list[str], label: str) -> list[str]:
    """pg_basebackup writing one tar (WAL fetched into it) to stdout, starting at once."""
    return [
        os.path.join(bindir, "pg_basebackup"),
        *client_args,
        "-D",
        "-",
        "-Ft",
        "-X",
        "fetch",
        "--checkpoint=fast",
        "--label",
        label,
        "--no-password",
    ]


_START_RE = re.compile(r"^START WAL LOCATION: (\S+) \(file ([0-9A-F]{24})\)$", re.MULTILINE)
_TIMELINE_RE = re.compile(r"^START TIMELINE: (\d+)$", re.MULTILINE)


class BaseBackupIncomplete(Exception):
    """The tar stream ended without what makes it a usable base backup."""


def facts(tap: TarTap) -> dict[str, Any]:
    """What the set manifest records about a base backup, read from the stream that just passed."""
    label = tap.captured.get("backup_label")
    pg_manifest = tap.captured.get("backup_manifest")
    if label is None or pg_manifest is None:
        missing = [name for name in sorted(_WANTED) if name not in tap.captured]
        raise BaseBackupIncomplete(f"pg_basebackup's tar holds no {' or '.join(missing)}")
    label_text = label.decode("utf-8", "replace")
    start = _START_RE.search(label_text)
    timeline = _TIMELINE_RE.search(label_text)
    if start is None or timeline is None:
        raise BaseBackupIncomplete("pg_basebackup's backup_label names no start location or timeline")
    try:
        document = json.loads(pg_manifest)
        ranges = document["WAL-Ranges"]
        stop_lsn = str(ranges[-1]["End-LSN"])
        stop_timeline = int(ranges[-1]["Timeline"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise BaseBackupIncomplete("pg_basebackup's backup_manifest names no WAL range") from None
    return {
        "start_lsn": start.group(1),
        "start_segment": start.group(2),
        "timeline": int(timeline.group(1)),
        "stop_lsn": stop_lsn,
        "stop_timeline": stop_timeline,
        "files": tap.files,
        "pg_manifest_sha256": hashlib.sha256(pg_manifest).hexdigest(),
        "pg_manifest_checksums": str(document.get("Files", [{}])[0].get("Checksum-Algorithm", "")),
    }


def lsn_value(lsn: str) -> int:
    """``0/2000100`` → an integer that orders like the WAL position."""
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def server_identity(endpoint: Endpoint) -> dict[str, Any]:
    """The system identifier and server version: a WAL chain belongs to exactly one cluster."""
    from reconciler.databases import postgres as pg

    with pg.connect(endpoint) as conn:
        row = conn.execute(
            "SELECT system_identifier::text, current_setting('server_version') FROM pg_control_system()"
        ).fetchone()
    assert row is not None
    return {"system_identifier": str(row[0]), "server_version": str(row[1])}


SLOT_WAL_LIMIT = "256MB"  # like max_wal_size in RAM mode: ~40 min of a busy community without a receiver


def slot_name(stack: str) -> str:
    """The physical replication slot of a stack's continuous WAL."""
    return "reconciler_" + re.sub(r"[^a-z0-9_]", "_", stack)


def receivewal_base(bindir: str, endpoint: Endpoint, slot: str) -> list[str]:
    return [
        os.path.join(bindir, "pg_receivewal"),
        *("-h", endpoint.host, "-p", str(endpoint.port), "-U", endpoint.user),
        *("-S", slot, "--no-password"),
    ]


def ensure_slot(bindir: str, endpoint: Endpoint, slot: str) -> None:
    """Create the slot unless it exists. Created before a base backup starts, it keeps every segment
    from the backup's start until pg_receivewal has it: no recycling during ``-X fetch``, and no gap
    between the base and the stream however long the daemon takes to start the receiver."""
    from reconciler.databases import postgres as pg
    from reconciler.system import proc

    proc.run([*receivewal_base(bindir, endpoint, slot), "--create-slot", "--if-not-exists"], timeout=30)
    # A slot whose receiver is not running (the daemon stopped) would keep WAL without bound, and in
    # RAM mode pg_wal is in RAM: past this much the server invalidates the slot instead (the chain then
    # has a gap, reported at recovery, and the next base starts a new one).
    with pg.connect(endpoint) as conn:
        row = conn.execute("SELECT current_setting('max_slot_wal_keep_size')").fetchone()
        if row is not None and row[0] == "-1":
            conn.execute(f"ALTER SYSTEM SET max_slot_wal_keep_size = '{SLOT_WAL_LIMIT}'")
            conn.execute("SELECT pg_reload_conf()")
