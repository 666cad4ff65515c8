"""Continuous WAL with placement ``offsite``: the segment in progress goes to Drive as sealed delta
chunks, not as whole re-uploads.

Design decisions:
- Every ``interval`` the bytes received since the last acknowledged shipment become one chunk in the
  WAL spool's format (``backup/walspool``: zstd + age, HMAC bound to the stack, the cluster, the
  segment and the offset), uploaded as a file of its own next to the segments:
  ``<segment>.c<offset>-<end>.walchunk`` (hexadecimal WAL byte offsets) in ``<sets folder>/wal/
  <system identifier>/``. The uplink carries each WAL byte about once while the segment is in
  progress (re-uploading the whole sealed segment every interval measured twice the raw WAL); an
  idle database uploads nothing (the spooler's stat-and-compare, no read, no upload).
- The writer is the spool's ``Spooler`` with another place to put a chunk: the reading rules (where
  the received bytes end, the re-read of the last block, the rewrite from offset 0 when a byte read
  earlier changed) are one code path for both placements. A chunk counts as shipped only when Drive
  acknowledged it (md5 and size checked by the upload); until then the spooler's position does not
  move, so the next successful shipment carries every byte since the last acknowledged one. The
  position lives in RAM and is re-derived from Drive's listing (the names hold the offsets) when
  the shipper (re)starts a segment; an outage is reported by ``waloffsite.ShippingArea``.
- The name holds the end too, so the listing alone says how far the chunks reach and where a gap
  is. A rewrite from offset 0 uploads the new chunk before deleting the older ones; a reader at one
  offset takes the chunk that reaches furthest.
- A completed segment is shipped whole as before (``backup/walseg``) and its chunk files are deleted
  afterwards. A failed deletion is harmless: readers ignore chunks of a segment that exists complete,
  and the next completed segment's clean-up lists them again.
- Recovery rebuilds the segment in progress from the chunks in offset order: each is downloaded and
  checked on its own (``walspool.scan`` with the offset it must continue from); the first missing,
  torn or unauthentic one ends it and the plan says where and why (``spool_note``, event
  ``WalSpoolTruncated``); the rest is zero-padded as the spool does. A whole ``.partial`` shipped by
  the previous version is still used when it holds more received bytes than the chunks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from reconciler.backup import walseg, walspool
from reconciler.backup.create import Sealing
from reconciler.errors import ReconcilerError

log = logging.getLogger(__name__)

SUFFIX = ".walchunk"
SOURCE = "store on Google Drive, as chunks"  # ChainPlan.partial_source
_NAME = re.compile(r"^([0-9A-F]{24})\.c([0-9a-f]{8})-([0-9a-f]{8})" + re.escape(SUFFIX) + "$")


def name(segment: str, offset: int, end: int) -> str:
    return f"{segment}.c{offset:08x}-{end:08x}{SUFFIX}"


def parse(filename: str) -> tuple[str, int, int] | None:
    """(segment, offset, end) of a chunk file's name; None for any other name."""
    match = _NAME.match(filename)
    if match is None or int(match[2], 16) >= int(match[3], 16):
        return None
    return match[1], int(match[2], 16), int(match[3], 16)


def segments(names: Iterable[str]) -> list[str]:
    """The segments that have chunk files among ``names`` (sorted)."""
    return sorted({p[0] for p in map(parse, names) if p is not None})


def chain(names: Iterable[str], segment: str) -> tuple[list[tuple[str, int, int]], str | None]:
    """The chunk files of ``segment`` from offset 0 on, each continuing the previous one (at one
    offset the one reaching furthest), and why they stop before the last one listed (a gap)."""
    chunks = sorted((p[1], p[2], n) for n in names if (p := parse(n)) is not None and p[0] == segment)
    found: list[tuple[str, int, int]] = []
    end = 0
    while True:
        here = [c for c in chunks if c[0] == end]
        if not here:
            break
        offset, stop, filename = max(here, key=lambda c: c[1])
        found.append((filename, offset, stop))
        end = stop
    if any(c[1] > end for c in chunks):
        return found, f"the chunk from WAL byte {end} of {segment} is missing on Google Drive"
    return found, None


@dataclass
class DriveSpooler(walspool.Spooler):
    """The spool's writer, putting each chunk on Drive as a file of its own."""

    area: Any = None  # waloffsite.ShippingArea

    @classmethod
    def on(cls, area: Any, sealing: Sealing, stack: str, system_identifier: str) -> DriveSpooler:
        return cls("", sealing, stack, system_identifier, area=area)

    def follow(self, received_path: str, segment: str, complete: bool = False) -> int:
        try:
            return super().follow(received_path, segment, complete)
        except BaseException:
            self.mtime, self.settled = -1, False  # not acknowledged: read and ship it again next time
            if segment == self.segment and self.end == 0:
                self.segment = None  # the listing failed: derive the position again
            raise

    def _store(self, segment: str, chunk: bytes, offset: int, length: int) -> None:
        self.area.put_bytes(name(segment, offset, offset + length), chunk)

    def _replace(self, segment: str, chunk: bytes, length: int) -> None:
        new = name(segment, 0, length)
        self.area.put_bytes(new, chunk)
        for older in self._names(segment):
            if older != new:
                with contextlib.suppress(ReconcilerError, OSError):
                    self.area.delete(older)

    def _resume(self, segment: str) -> None:
        found, _ = chain(self._names(segment), segment)
        self.segment, self.tail, self.mtime, self.settled = segment, b"", -1, False
        self.end = found[-1][2] if found else 0

    def _names(self, segment: str) -> list[str]:
        """``segment``'s chunk files on Drive (one listing: once per segment, not per shipment)."""
        names = (f.name for f in self.area.list())
        return [n for n in names if (p := parse(n)) is not None and p[0] == segment]

    def has(self, segment: str) -> bool:
        return False  # completed segments are shipped whole, never spooled to their end here

    def shipped(self, segment: str) -> None:
        """``segment`` is on Drive complete: its chunk files go (a failure is harmless, see above)."""
        with contextlib.suppress(ReconcilerError, OSError):
            for filename in self._names(segment):
                self.area.delete(filename)
        if segment == self.segment:
            self.segment = None


@dataclass
class Read:
    """The chunks of one segment read back from Drive."""

    raw: list[bytes]  # WAL bytes, in order (decrypted only when an identity was given)
    end: int
    problem: str | None

    def note(self, segment: str) -> str | None:
        """None when every listed chunk is usable, else where and why they stop (``none of ...``
        when not even the first one is), in the words of ``recovery.spool_check``."""
        if self.problem is None:
            return None
        if self.end == 0:
            return f"none of the chunks of {segment} on Google Drive is usable: {self.problem}"
        return f"the chunks of {segment} on Google Drive stop at WAL byte {self.end}: {self.problem}"


def read(
    area: Any,
    names: Iterable[str],
    binding: walspool.Binding,
    mac_key: bytes | None,
    identity: Any,
    decode: bool = True,
) -> Read:
    """Download and check ``binding.segment``'s chunks in offset order; stop at the first bad one
    (``decode``: and decrypt them; a plan only checks)."""
    found, gap = chain(names, binding.segment)
    result = Read([], 0, None)
    for filename, offset, stop in found:
        try:
            with area.open(filename) as handle:
                data = handle.read()
        except (FileNotFoundError, ReconcilerError, OSError) as exc:
            result.problem = f"{filename} cannot be read ({exc})"
            return result
        checked = walspool.scan(data, mac_key, binding, start=offset)
        if checked.problem is not None or len(checked.chunks) != 1 or checked.end != stop:
            result.problem = f"{filename}: {checked.problem or 'not the one chunk its name says'}"
            return result
        if decode:
            try:
                result.raw.append(walspool.open_chunk(data, checked.chunks[0], identity))
            except Exception as exc:
                result.problem = f"{filename} does not decrypt ({type(exc).__name__})"
                return result
        result.end = stop
    result.problem = gap
    return result


def stage(
    area: Any,
    names: set[str],
    binding: walspool.Binding,
    mac_key: bytes | None,
    identity: Any,
    target: str,
) -> None:
    """Write the segment in progress rebuilt from its chunks to ``target``, zero-padded; a whole
    ``.partial`` of the previous version wins when it holds more received bytes."""
    raw = b"".join(read(area, names, binding, mac_key, identity).raw)
    segment = binding.segment
    if f"{segment}.partial.wal.json" in names:
        whole = f"{target}.whole"
        try:
            walseg.fetch(
                area,
                segment,
                whole,
                identity,
                mac_key,
                binding.stack,
                binding.system_identifier,
                partial=True,
            )
            with open(whole, "rb") as handle:
                if len(walspool.received(handle, 0)) > len(raw):
                    shutil.move(whole, target)
                    return
        except (walseg.SegmentRejected, OSError) as exc:
            log.warning("the whole copy of the segment in progress %s is not used: %s", segment, exc)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(whole)
    with open(target, "wb") as out:
        out.write(raw + bytes(walspool.SEGMENT_BYTES - len(raw)))
