"""The local store: backup files in one directory.

Design decision: every file is written under a hidden temporary name in the same directory, fsynced,
renamed into place and the directory fsynced. A crash, a full disk or a killed process leaves at most
a ``.partial`` file, which listings ignore and the next write removes; it never leaves a truncated
file under a real name. Files are mode 0600 from their first byte (a set written with
``encryption: none`` is plaintext) and the directory is kept 0700 (``ensure_private_dir``).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import logging
import os
import stat
from collections.abc import Callable
from typing import BinaryIO

from reconciler.errors import PermanentError, coded
from reconciler.plan.backupsets import StoredFile
from reconciler.plan.failures import FailureCode
from reconciler.stores.base import PutResult
from reconciler.system import fs

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
_SHARED_DIRS = frozenset({"/", "/tmp", "/var/tmp", "/dev/shm", "/run/shm", "/run", "/var", "/home"})
_PARTIAL_PREFIX = ".partial-"


class OverLimit(PermanentError):
    """A write went past the byte limit it was given (``put_with(limit=...)``); nothing was kept."""

    code = FailureCode.TOO_LARGE

    def __init__(self, name: str, written: int, limit: int) -> None:
        self.name = name
        self.written = written  # bytes the file would hold with the write that went over
        self.limit = limit
        super().__init__(f"{name} went past its limit of {limit} bytes ({written} bytes); it was not kept")


class _OverLimitSignal(OSError):
    """Raised inside the producer (pyrage wraps what its writer raises; the writer remembers this)."""


class _HashingWriter:
    """Passes writes through, computing size and sha256 of what was written; refuses to go past ``limit``
    (checked before each write, so the file never holds more than the limit)."""

    def __init__(self, raw: BinaryIO, limit: int | None = None) -> None:
        self.raw = raw
        self.limit = limit
        self.digest = hashlib.sha256()
        self.size = 0
        self.over: int | None = None  # the size the write that went past the limit would have made
        self.error: OSError | None = None  # remembered: producers (pyrage) wrap it in their own types

    def write(self, data: bytes) -> int:
        if self.limit is not None and self.size + len(data) > self.limit:
            self.over = self.size + len(data)
            self.error = _OverLimitSignal(errno.EFBIG, "over the size limit")
            raise self.error
        try:
            self.raw.write(data)
        except OSError as exc:
            self.error = exc
            raise
        self.digest.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True


class LocalStore:
    name = "local"

    def __init__(self, path: str) -> None:
        self.path = path

    def describe(self) -> str:
        return f"local directory {self.path}"

    def _target(self, name: str) -> str:
        if "/" in name or name.startswith("."):
            raise ValueError(f"invalid backup file name {name!r}")
        return os.path.join(self.path, name)

    def list(self) -> list[StoredFile]:
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return []
        return [
            StoredFile(entry.name, entry.stat().st_size)
            for entry in entries
            if not entry.name.startswith(".") and entry.is_file()
        ]

    def put(self, name: str, source: BinaryIO) -> PutResult:
        def copy(out: BinaryIO) -> None:
            while chunk := source.read(CHUNK):
                out.write(chunk)

        return self.put_with(name, copy)

    def put_bytes(self, name: str, data: bytes) -> PutResult:
        def write_all(out: BinaryIO) -> None:
            out.write(data)

        return self.put_with(name, write_all)

    def put_with(self, name: str, produce: Callable[[BinaryIO], None], limit: int | None = None) -> PutResult:
        """Atomically store what ``produce`` writes into the stream it is given.

        With ``limit``, the write that would take the file past ``limit`` bytes stops it: the partial
        file is removed and ``OverLimit`` raised (failure code ``too_large``). A full store is
        ``store_full``; any other failure of the store's own writes is ``store_error`` (a failure of
        ``produce``'s source, such as a dump that exits, propagates as it is)."""
        target = self._target(name)
        self.ensure_private_dir()
        tmp = os.path.join(self.path, f"{_PARTIAL_PREFIX}{name}")
        writer: _HashingWriter | None = None
        producing = False
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
            with open(os.open(tmp, flags, 0o600), "wb") as handle:
                os.fchmod(handle.fileno(), 0o600)  # an old partial keeps its mode through O_TRUNC
                writer = _HashingWriter(handle, limit)
                producing = True
                produce(writer)  # type: ignore[arg-type]
                producing = False
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, target)
            fs.fsync_dir(self.path)
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if writer is not None and writer.over is not None and limit is not None:
                raise OverLimit(name, writer.over, limit) from None
            own = writer.error if writer is not None and writer.error is not None else None
            if own is None and isinstance(exc, OSError) and not producing:
                own = exc
            if own is not None and own.errno in (errno.ENOSPC, errno.EDQUOT):
                raise coded(
                    PermanentError(
                        f"the local store {self.path} is full while writing {name}; free space or move "
                        "backup.stores.local.path to a larger disk. Nothing was deleted"
                    ),
                    FailureCode.STORE_FULL,
                ) from None
            if own is not None:
                raise coded(
                    PermanentError(
                        f"the local store {self.path} could not be written ({name}): "
                        f"{own.strerror or type(own).__name__}"
                    ),
                    FailureCode.STORE_ERROR,
                ) from None
            raise
        return PutResult(writer.size, writer.digest.hexdigest())

    def ensure_private_dir(self) -> None:
        """The store directory exists, is ours and is mode 0700 (a loose one is tightened).

        A directory of another user's, or one of the system's shared directories (/tmp, /dev/shm, ...),
        is refused: whoever else can write there could read sets written with ``encryption: none`` or
        swap files under us, and tightening /tmp would break the system. A dedicated mount (a tmpfs
        root is 1777) is ours to tighten.
        """
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        st = os.stat(self.path)
        if st.st_uid != os.geteuid() or os.path.realpath(self.path) in _SHARED_DIRS:
            whose = "another user" if st.st_uid != os.geteuid() else "everyone (a shared system directory)"
            raise coded(
                PermanentError(
                    f"the local store {self.path} belongs to {whose}; point backup.stores.local.path at a "
                    "directory of its own (it is created with mode 0700)"
                ),
                FailureCode.STORE_ERROR,
            )
        if stat.S_IMODE(st.st_mode) != 0o700:
            log.warning("the local store %s had mode %04o; set to 0700", self.path, stat.S_IMODE(st.st_mode))
            os.chmod(self.path, 0o700)

    def open(self, name: str) -> BinaryIO:
        return open(self._target(name), "rb")

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._target(name))

    def clean_partials(self) -> builtins.list[str]:
        """Remove temporary files left by an interrupted write (none can be in progress: we hold the lock)."""
        removed = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.path):
                if entry.name.startswith(_PARTIAL_PREFIX):
                    os.unlink(entry.path)
                    removed.append(entry.name)
        return removed
