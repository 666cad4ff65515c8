"""The switch's refresh copy and files a server writes through a memory mapping (real tmpfs, real mmap).

MariaDB memory-maps its redo log (``ib_logfile0``) when it lives on tmpfs. A store to a page already
mapped writable does not move the file's mtime on tmpfs, so the switch's refresh copy (which skips a
file whose size and mtime match the pre-copy's) kept the pre-copy's old log beside newer data files:
the copy did not start ("InnoDB: Your database may be corrupt ...", found by bench/mariadb.py), or
could have started with commits missing.
"""

from __future__ import annotations

import mmap
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.databases.engine import engine_mapped_files
from reconciler.system import fs
from tests.conftest import RAM_BASE

pytestmark = pytest.mark.integration


@pytest.fixture
def on_tmpfs() -> Iterator[Path]:
    RAM_BASE.mkdir(mode=0o755, exist_ok=True)
    directory = RAM_BASE / ("mapped-" + uuid.uuid4().hex[:10])
    (directory / "source").mkdir(parents=True)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_redo_log_written_through_its_mapping_after_the_precopy_is_copied_again(on_tmpfs: Path) -> None:
    source, target = on_tmpfs / "source", on_tmpfs / "target"
    log = source / "ib_logfile0"
    log.write_bytes(b"\0" * mmap.PAGESIZE * 4)
    (source / "ibdata1").write_bytes(b"data")
    with log.open("r+b") as handle, mmap.mmap(handle.fileno(), 0) as mapped:
        mapped[0:8] = b"lsn-0001"  # the server's first store: the page is now mapped writable
        since = os.stat(log).st_mtime_ns + 1  # the pre-copy starts after it
        fs.copy_tree(str(source), str(target))  # the pre-copy
        before = os.stat(log).st_mtime_ns
        mapped[0:8] = b"lsn-0002"  # a commit after the pre-copy, through the same mapping
    assert log.read_bytes()[:8] == b"lsn-0002"
    # the kernel behaviour the fix rests on: tmpfs did not move the mtime for that store
    assert os.stat(log).st_mtime_ns == before < since

    fs.refresh_copy(str(source), str(target), since, engine_mapped_files("mariadb"))

    assert (target / "ib_logfile0").read_bytes() == log.read_bytes(), "the copy kept the pre-copy's old log"
