"""The WAL spool: the segment in progress, on persistent storage, as sealed and authenticated chunks.

Design decisions:
- ``pg_receivewal`` writes into RAM; every tick the bytes it added to the segment in progress since the
  last tick become one *chunk*, appended to ``<spool>/<segment>.walspool`` and fsynced. The card sees
  only compressed, encrypted WAL (no raw pages, no 16 MiB zero-fill), and nothing at all while the
  database is idle.
- One chunk is ``header | payload | mac``: the header is ``b"RWS1"``, the chunk's byte offset in the
  segment, its raw length and the payload length (big-endian u32 each); the payload is the raw bytes
  through zstd and age, for the stack's recipients (the same sealing as shipped segments; plain zstd
  with ``encryption: none``); the mac is HMAC-SHA256 over a domain string, the stack, the cluster's
  system identifier, the segment name, the header and the payload, keyed with the manifest key
  (derived from the secret identity). Someone who knows only the public recipient can encrypt a
  chunk, but cannot make one that authenticates; a chunk of another segment, cluster or stack does
  not authenticate here. (``encryption: none`` has no key: the mac is then keyed with the empty key,
  a checksum against torn and corrupt chunks, not an authentication, as for the rest of such sets.)
- Offsets are strict: the first chunk starts at 0, each next one where the previous one ended. A
  reordered, repeated or missing chunk breaks that and ends the scan, so the bytes recovered are
  always a prefix of the segment as ``pg_receivewal`` received it, never a mixture.
- A segment that completes is spooled to its end (the last chunk includes its zero padding) before
  the next segment gets a chunk and before it is shipped: a spool file covering the whole segment is
  a complete segment for recovery, so the seconds between a segment's completion and its shipping
  are covered too, and the next segment's chunks always follow a segment recovery has.
- Torn-write rule: a power cut during an append leaves a last chunk that is cut short (its lengths
  run past the end of the file) or does not authenticate. ``scan`` stops at the end of the last
  whole, authentic chunk and says where and why; recovery uses that prefix. A writer that resumes
  truncates the file to that point before appending.
- Where the received bytes end: ``pg_receivewal`` zero-fills a segment before writing into it, so the
  segment file's size says nothing. Every WAL page starts with a non-zero page header, so the received
  bytes end in the last 8 KiB block that is not all zeros, at its last non-zero byte. Trailing zero
  bytes of a record are then sent with the next chunk, or never: recovery pads the segment with zeros
  anyway, so the rebuilt segment equals the received one byte for byte. Bytes only ever change from
  zero to their final value; a read that overlaps a write can see a prefix of it, which is final. The
  writer re-reads the bytes it already spooled in their last block each tick, and if one changed
  (a read that saw a later byte before an earlier one) it rewrites the file from offset 0, atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import pyrage
import zstandard

from reconciler.backup import pipeline
from reconciler.backup.create import Sealing
from reconciler.plan import walchain
from reconciler.system import fs

SUFFIX = ".walspool"
MAGIC = b"RWS1"
HEADER = struct.Struct(">4sIII")  # magic, offset in the segment, raw length, payload length
MAC_BYTES = 32
PAGE = 8192  # XLOG_BLCKSZ: every WAL page begins with a non-zero header
SEGMENT_BYTES = 16 * 1024 * 1024
_DOMAIN = b"reconciler-wal-spool/1"


@dataclass(frozen=True)
class Binding:
    """What a chunk is bound to under its mac."""

    stack: str
    system_identifier: str
    segment: str


def path(directory: str, segment: str) -> str:
    return os.path.join(directory, f"{segment}{SUFFIX}")


def segments(directory: str) -> list[str]:
    """The segments that have a spool file in ``directory`` (sorted)."""
    if not os.path.isdir(directory):
        return []
    names = (n.removesuffix(SUFFIX) for n in os.listdir(directory) if n.endswith(SUFFIX))
    return sorted(n for n in names if walchain.is_segment(n))


def _mac(key: bytes | None, binding: Binding, header: bytes, payload: bytes) -> bytes:
    mac = hmac.new(key or b"", digestmod=hashlib.sha256)
    for part in (
        _DOMAIN,
        binding.stack.encode(),
        binding.system_identifier.encode(),
        binding.segment.encode(),
    ):
        mac.update(struct.pack(">I", len(part)) + part)
    mac.update(header)
    mac.update(payload)
    return mac.digest()


def seal(raw: bytes, offset: int, sealing: Sealing, binding: Binding) -> bytes:
    """One chunk holding ``raw``, the bytes at ``offset`` of ``binding.segment``."""
    payload = zstandard.ZstdCompressor(level=pipeline.ZSTD_LEVEL).compress(raw)
    if sealing.recipients:
        payload = pyrage.encrypt(payload, sealing.recipients)
    header = HEADER.pack(MAGIC, offset, len(raw), len(payload))
    return header + payload + _mac(sealing.mac_key, binding, header, payload)


@dataclass(frozen=True)
class Chunk:
    position: int  # where its payload starts in the file
    offset: int
    length: int
    payload_length: int


@dataclass
class Scan:
    """The whole, authentic chunks at the start of a spool file, in offset order."""

    chunks: list[Chunk] = field(default_factory=list)
    end: int = 0  # WAL bytes covered: the chunks' bytes are [0, end) of the segment
    valid: int = 0  # file bytes of those chunks (a writer truncates to this)
    problem: str | None = None  # why the scan stopped before the end of the file
    torn: bool = False  # the problem is a last chunk cut short (a power cut while it was appended)


def scan(data: bytes, mac_key: bytes | None, binding: Binding, start: int = 0) -> Scan:
    """Check ``data`` (a spool file) chunk by chunk; stop at the first torn or bad one. ``start``:
    the WAL offset the first chunk must have (a chunk file on Drive continues its predecessor)."""
    result = Scan(end=start)
    position = 0
    while position < len(data):
        where = f"chunk at byte {position} of the spool file of {binding.segment}"
        if len(data) - position < HEADER.size:
            result.problem, result.torn = f"{where} is torn (its header is cut short)", True
            break
        magic, offset, length, payload_length = HEADER.unpack_from(data, position)
        if magic != MAGIC:
            result.problem = f"{where} is not a spool chunk"
            break
        stop = position + HEADER.size + payload_length + MAC_BYTES
        if stop > len(data):
            result.problem, result.torn = (
                f"{where} is torn (cut short after {len(data) - position} bytes)",
                True,
            )
            break
        header = data[position : position + HEADER.size]
        payload = data[position + HEADER.size : stop - MAC_BYTES]
        if not hmac.compare_digest(data[stop - MAC_BYTES : stop], _mac(mac_key, binding, header, payload)):
            result.problem = (
                f"{where} does not authenticate (corrupt, forged, or of another segment, cluster or stack)"
            )
            break
        if offset != result.end or offset + length > SEGMENT_BYTES:
            result.problem = f"{where} holds WAL bytes from {offset}, expected {result.end} (out of order)"
            break
        result.chunks.append(Chunk(position + HEADER.size, offset, length, payload_length))
        result.end, result.valid, position = offset + length, stop, stop
    return result


def read(directory: str, mac_key: bytes | None, binding: Binding) -> tuple[bytes, Scan]:
    with open(path(directory, binding.segment), "rb") as handle:
        data = handle.read()
    return data, scan(data, mac_key, binding)


def open_chunk(data: bytes, chunk: Chunk, identity: Any) -> bytes:
    """The raw WAL bytes of an authenticated chunk."""
    payload = data[chunk.position : chunk.position + chunk.payload_length]
    if identity is not None:
        payload = pyrage.decrypt(payload, [identity])
    raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=max(chunk.length, 1))
    if len(raw) != chunk.length:
        raise ValueError(f"chunk at WAL byte {chunk.offset} holds {len(raw)} bytes, not {chunk.length}")
    return raw


def rebuild(data: bytes, result: Scan, identity: Any) -> bytes:
    """The segment as far as the spool holds it, padded with zeros to a whole segment."""
    raw = b"".join(open_chunk(data, chunk, identity) for chunk in result.chunks)
    return raw + bytes(SEGMENT_BYTES - len(raw))


def received(handle: Any, start: int) -> bytes:
    """The bytes of a segment being received, from ``start`` to the last non-zero byte (see above)."""
    handle.seek(start)
    blocks = []
    while True:
        block = handle.read(PAGE - (handle.tell() % PAGE))
        if not block or not block.strip(b"\0"):
            break
        blocks.append(block)
    return b"".join(blocks).rstrip(b"\0")


@dataclass
class Spooler:
    """Appends the new bytes of the segment in progress to its spool file, one chunk per call."""

    directory: str  # on persistent storage: one per cluster
    sealing: Sealing
    stack: str
    system_identifier: str
    segment: str | None = None
    end: int = 0  # WAL bytes of ``segment`` in its spool file
    tail: bytes = b""  # the spooled bytes of the last (partial) 8 KiB block, to check on the next read
    mtime: int = -1  # of the received file when it was last read
    settled: bool = False  # read twice with that mtime (file times are coarse): nothing new to read
    whole: set[str] = field(default_factory=set)  # completed segments spooled to their end
    appended: int = 0  # chunk bytes written (for measurements)
    chunks: int = 0
    raw: int = 0  # WAL bytes spooled

    def binding(self, segment: str) -> Binding:
        return Binding(self.stack, self.system_identifier, segment)

    def follow(self, received_path: str, segment: str, complete: bool = False) -> int:
        """Spool what ``received_path`` holds beyond what is spooled; returns chunk bytes written.

        ``complete``: the segment is complete; its last chunk runs to the end of the segment, zeros
        included, so that a spool file covering the whole segment says the segment is complete."""
        if complete and segment in self.whole:
            return 0
        if segment != self.segment:
            self._resume(segment)
        try:
            stat = os.stat(received_path)
            if stat.st_mtime_ns == self.mtime and self.settled and not complete:
                return 0  # idle: a stat, no read, no write
            self.settled = stat.st_mtime_ns == self.mtime
            with open(received_path, "rb") as handle:
                block_start = self.end - self.end % PAGE
                if complete:
                    handle.seek(block_start)
                    data = handle.read(SEGMENT_BYTES - block_start)
                else:
                    data = received(handle, block_start)
        except FileNotFoundError:
            return 0  # completed and renamed meanwhile: spooled to its end on the next tick
        self.mtime = stat.st_mtime_ns
        if len(data) < self.end - block_start:
            self.settled = False
            return 0  # a restarted receiver refilling the segment has not reached the spool's end yet
        if self.tail and data[: len(self.tail)] != self.tail:
            return self._rewrite(received_path, segment)
        new = data[self.end - block_start :]
        if complete and self.end + len(new) == SEGMENT_BYTES:
            self.whole.add(segment)
        if not new:
            return 0
        chunk = seal(new, self.end, self.sealing, self.binding(segment))
        self._store(segment, chunk, self.end, len(new))
        self._advance(data, block_start, len(chunk), len(new))
        return len(chunk)

    def _store(self, segment: str, chunk: bytes, offset: int, length: int) -> None:
        """Make ``chunk`` (WAL bytes ``[offset, offset + length)``) durable: appended and fsynced here;
        uploaded as a file of its own with placement ``offsite`` (engine/walchunks)."""
        target = path(self.directory, segment)
        created = not os.path.exists(target)
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(chunk)
            while view:  # a full disk first writes part of a chunk, then raises ENOSPC
                view = view[os.write(fd, view) :]
            os.fdatasync(fd)
        except BaseException:
            # part of this chunk may be in the file: the next call resumes from the last whole,
            # authentic chunk (cutting the rest off) instead of appending after a torn one
            self.segment = None
            raise
        finally:
            os.close(fd)
        if created:
            fs.fsync_dir(self.directory)  # once per segment: the new file's name is durable too

    def _advance(self, data: bytes, block_start: int, written: int, raw: int) -> None:
        self.end += raw
        new_block = self.end - self.end % PAGE
        self.tail = data[new_block - block_start : self.end - block_start]
        self.appended += written
        self.chunks += 1
        self.raw += raw

    def _resume(self, segment: str) -> None:
        """Continue ``segment``'s spool file where its last whole, authentic chunk ends: what follows
        (a torn tail, or chunks after one that does not authenticate) is cut off and spooled again
        from RAM."""
        self.segment, self.end, self.tail, self.mtime, self.settled = segment, 0, b"", -1, False
        target = path(self.directory, segment)
        if not os.path.exists(target):
            return
        _, found = read(self.directory, self.sealing.mac_key, self.binding(segment))
        if found.problem is not None:
            os.truncate(target, found.valid)
        self.end = found.end

    def _rewrite(self, received_path: str, segment: str) -> int:
        """The spool file afresh from offset 0, as one chunk (tmp, fsync, rename)."""
        with open(received_path, "rb") as handle:
            data = received(handle, 0)
        chunk = seal(data, 0, self.sealing, self.binding(segment))
        self._replace(segment, chunk, len(data))
        self.end = 0
        self._advance(data, 0, len(chunk), len(data))
        return len(chunk)

    def _replace(self, segment: str, chunk: bytes, length: int) -> None:
        """``chunk`` (from offset 0) replaces every chunk stored of ``segment``."""
        target = path(self.directory, segment)
        with open(f"{target}.tmp", "wb") as out:
            out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(f"{target}.tmp", target)
        fs.fsync_dir(self.directory)

    def has(self, segment: str) -> bool:
        return os.path.exists(path(self.directory, segment))

    def shipped(self, segment: str) -> None:
        """``segment`` is durable in the store: its spool file goes."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path(self.directory, segment))
        self.whole.discard(segment)
        if segment == self.segment:
            self.segment = None
