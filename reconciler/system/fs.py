"""Durable filesystem primitives: atomic writes and the lock.

Design decisions:
- Every file the reconciler writes for its own bookkeeping (status, journal, manifests) is written
  atomically: a temporary name in the same directory, fsync, rename, fsync of the directory. A crash at
  any instant leaves either the old file or the new one, never a torn one.
- The lock is ``flock`` on a file in the state directory: the kernel drops it when the process dies
  (even on SIGKILL), so a crashed reconciler never leaves a stale lock behind that a human must remove.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Callable, Collection, Iterator
from typing import Any

from reconciler.errors import LockHeld


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes, mode: int = 0o644) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def atomic_write_json(path: str, document: Any, mode: int = 0o644) -> None:
    atomic_write_bytes(
        path, (json.dumps(document, indent=2, sort_keys=True, default=str) + "\n").encode(), mode
    )


def read_json(path: str) -> Any | None:
    try:
        with open(path, "rb") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


def ensure_dir(path: str, mode: int = 0o755, owner: tuple[int, int] | None = None) -> None:
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, *owner)


def is_empty_dir(path: str) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except FileNotFoundError:
        return True


@contextlib.contextmanager
def exclusive_lock(path: str, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` or raise ``LockHeld`` naming the holder."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise LockHeld(
                f"another reconciler (pid {holder}) is already working on {what}; "
                "wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def lock_holder(path: str) -> str | None:
    """The pid written by whoever holds the ``exclusive_lock`` at ``path``, or None when nobody does."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            return os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        return None
    finally:
        os.close(fd)


def copy_tree(source: str, target: str, progress: Callable[[int], None] | None = None) -> int:
    """Copy a stopped data directory, preserving modes, ownership, times and symlinks; return bytes.

    In-process on purpose: an external ``cp`` would outlive a killed reconciler and keep writing into
    a directory that the resumed operation is re-creating. File data moves with ``sendfile`` (the kernel
    copies, nothing passes through Python).
    """
    from reconciler.system import failpoints

    copied = 0
    halfway_hit = False
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(source) for f in files)
    for directory, subdirs, files in os.walk(source):
        destination = _mirror_directory(directory, source, target)
        for name in [*files, *[d for d in subdirs if os.path.islink(os.path.join(directory, d))]]:
            src = os.path.join(directory, name)
            dst = os.path.join(destination, name)
            fst = os.lstat(src)
            if os.path.islink(src):
                os.symlink(os.readlink(src), dst)
                os.lchown(dst, fst.st_uid, fst.st_gid)
                continue
            _copy_file(src, dst, fst)
            copied += fst.st_size
            if progress:
                progress(copied)
            if not halfway_hit and copied * 2 >= total:
                halfway_hit = True
                failpoints.hit("copy.halfway")
    return copied


def refresh_copy(source: str, target: str, since_ns: int, always: Collection[str] = ()) -> int:
    """Make ``target`` (an earlier copy of ``source``) identical to it again; return bytes copied.

    A file is skipped only when size and mtime match *and* it was last modified before ``since_ns``
    (when the earlier copy started), so a change made while or after it was read is always copied
    again, whatever the filesystem's timestamp granularity. Files and directories that disappeared
    from ``source`` are removed from ``target``.

    ``always`` (paths relative to ``source``) are copied whatever their times say: a file a server
    writes through a shared memory mapping keeps its mtime on tmpfs (shmem has no ``page_mkwrite``, so
    a store to a page already mapped writable never reaches ``file_update_time``): MariaDB's redo log
    ``ib_logfile0`` in RAM mode. Skipping it by mtime gave the copy an old log with newer data files.
    """
    import shutil

    copied = 0
    for directory, subdirs, files in os.walk(source):
        destination = _mirror_directory(directory, source, target)
        wanted = set(files) | set(subdirs)
        for existing in os.listdir(destination):
            if existing not in wanted:
                gone = os.path.join(destination, existing)
                shutil.rmtree(gone) if os.path.isdir(gone) and not os.path.islink(gone) else os.unlink(gone)
        for name in files:
            src = os.path.join(directory, name)
            dst = os.path.join(destination, name)
            fst = os.lstat(src)
            try:
                dstat = os.lstat(dst)
                unchanged = (
                    os.path.relpath(src, source) not in always
                    and dstat.st_size == fst.st_size
                    and dstat.st_mtime_ns == fst.st_mtime_ns
                    and fst.st_mtime_ns < since_ns
                )
            except FileNotFoundError:
                unchanged = False
            if unchanged:
                continue
            if os.path.islink(src):
                if os.path.lexists(dst):
                    os.unlink(dst)
                os.symlink(os.readlink(src), dst)
                continue
            _copy_file(src, dst, fst)
            copied += fst.st_size
    return copied


def _mirror_directory(directory: str, source: str, target: str) -> str:
    """Create ``directory``'s counterpart below ``target`` with the same mode and owner; return it."""
    destination = os.path.normpath(os.path.join(target, os.path.relpath(directory, source)))
    st = os.lstat(directory)
    os.makedirs(destination, exist_ok=True)
    os.chmod(destination, st.st_mode & 0o7777)
    os.chown(destination, st.st_uid, st.st_gid)
    return destination


def _copy_file(src: str, dst: str, st: os.stat_result) -> None:
    """sendfile in 1 GiB calls (the kernel moves the bytes), then mode, owner and times."""
    with open(src, "rb") as source, open(dst, "wb") as target:
        offset = 0
        while offset < st.st_size:
            sent = os.sendfile(target.fileno(), source.fileno(), offset, 1 << 30)
            if sent == 0:
                break
            offset += sent
    os.chmod(dst, st.st_mode & 0o7777)
    os.chown(dst, st.st_uid, st.st_gid)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def sync_tree(path: str) -> None:
    """fsync every file and directory below ``path`` (a no-op cost on tmpfs)."""
    for directory, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(directory)
