"""The streaming pipeline: bytes → zstd → age, and back, in constant memory.

Design decisions:
- Pull-based compression (``ZstdCompressor.stream_reader``) feeds ``pyrage.encrypt_io`` directly, which
  pushes ciphertext into the store's writer: no stage ever holds more than a chunk, so peak memory does
  not grow with the database (the legacy scripts' whole-file Fernet needed ~5x the dump in RAM).
- age's STREAM construction authenticates every 64 KiB chunk and the end of the stream, so a
  truncated or altered file fails to decrypt. Restore still checks the manifest's sha256 of the whole
  file *before* streaming into a database, so that nothing is half-restored from a bad file.
- ``encryption: none`` writes plain ``.zst`` files: the same pipeline without the age stage.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import BinaryIO, Protocol

import pyrage
import zstandard
from pyrage import x25519

CHUNK = 1024 * 1024
ZSTD_LEVEL = 3


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class CountingReader:
    """Wraps a binary reader, counts the bytes read through it, and reports them to ``on_read``."""

    def __init__(self, raw: Readable, on_read: Callable[[int], None] | None = None) -> None:
        self.raw = raw
        self.count = 0
        self.on_read = on_read

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        if self.on_read is not None:
            self.on_read(self.count)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


def compress_encrypt(
    source: Readable,
    out: BinaryIO,
    recipients: list[x25519.Recipient] | None,
    on_read: Callable[[int], None] | None = None,
) -> int:
    """Stream ``source`` through zstd (and age when ``recipients``) into ``out``; return raw bytes read."""
    counting = CountingReader(source, on_read)
    compressed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_reader(counting, read_size=CHUNK)  # type: ignore[arg-type]
    if recipients:
        pyrage.encrypt_io(compressed, out, recipients)
    else:
        shutil.copyfileobj(compressed, out, CHUNK)
    return counting.count


class _NonClosing:
    """A writer whose close() does not close the wrapped stream (zstd closes what it wraps)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        self.raw.flush()


def decrypt_decompress(source: BinaryIO, out: BinaryIO, identity: x25519.Identity | None) -> None:
    """Stream an encrypted (or plain .zst) file into ``out`` as the original bytes."""
    decompressor = zstandard.ZstdDecompressor().stream_writer(_NonClosing(out), write_size=CHUNK)  # type: ignore[arg-type]
    if identity is not None:
        pyrage.decrypt_io(source, decompressor, [identity])
    else:
        shutil.copyfileobj(source, decompressor, CHUNK)
    decompressor.flush()  # type: ignore[no-untyped-call]
