"""The WAL spool under host faults (review15): a full spool disk is an error to report and retry,
never a spool file whose later chunks are all unusable."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from pyrage import x25519

from reconciler.backup import walspool
from reconciler.backup.create import Sealing

pytestmark = pytest.mark.integration

IDENTITY = x25519.Identity.generate()
KEY = os.urandom(32)
SEALING = Sealing([IDENTITY.to_public()], [str(IDENTITY.to_public())], KEY)
SEGMENT = "000000010000000000000003"
SYSID = "7301234567890123456"


def wal_bytes(n: int) -> bytes:
    """Incompressible bytes without zeros: the spool reads received WAL up to its last non-zero byte."""
    return bytes(b | 1 for b in os.urandom(n))


def test_a_full_spool_disk_is_an_error_and_the_spool_resumes_whole_once_there_is_room(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test mounts a small tmpfs as the spool and needs root (CI runs as root)")
    spool = tmp_path / "spool"
    spool.mkdir()
    received = tmp_path / f"{SEGMENT}.partial"
    wal = bytearray(wal_bytes(16 * 1024))  # incompressible "WAL": every page non-zero
    received.write_bytes(bytes(wal) + bytes(walspool.SEGMENT_BYTES - len(wal)))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(spool)], check=True)
    try:
        spooler = walspool.Spooler(str(spool), SEALING, "shop", SYSID)
        assert spooler.follow(str(received), SEGMENT) > 0
        filler = spool / "filler"
        # the disk fills up (another writer)
        with open(filler, "wb", buffering=0) as handle, pytest.raises(OSError):
            while True:
                handle.write(os.urandom(4096))
        more = wal_bytes(64 * 1024)  # the spool file's last page has room for a part of this chunk only
        with open(received, "r+b") as handle:
            handle.seek(len(wal))
            handle.write(more)
        wal += more
        with pytest.raises(OSError):  # a full disk is an error (the streamer reports it and retries) ...
            spooler.follow(str(received), SEGMENT)
        filler.unlink()  # ... and once there is room again, the spool goes on from its last whole chunk
        later = wal_bytes(8 * 1024)
        with open(received, "r+b") as handle:
            handle.seek(len(wal))
            handle.write(later)
        wal += later
        spooler.mtime = -1  # file times are coarse: the writes above may share one mtime
        spooler.follow(str(received), SEGMENT)
        data, found = walspool.read(str(spool), KEY, walspool.Binding("shop", SYSID, SEGMENT))
        assert found.problem is None, found.problem
        assert found.end == len(wal)
        assert walspool.rebuild(data, found, IDENTITY)[: len(wal)] == bytes(wal)
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)


def test_a_full_tmpfs_during_a_physical_recovery_is_retried_never_the_logical_fallback(
    tmp_path: Path,
) -> None:
    """``recovery.boot_recover`` fell back to the set's logical dump on *any* failure: a tmpfs too full
    for the base and its WAL brought PostgreSQL back at the set's point (the WAL since then given up,
    and deleted by retention once the new cluster had a base). The machine's faults are retried now;
    only the base's own failures fall back (review15)."""
    from reconciler.engine import recovery
    from reconciler.errors import CommandFailed
    from reconciler.system import proc

    if os.geteuid() != 0:
        pytest.fail("this test mounts a small tmpfs and needs root (CI runs as root)")
    full = tmp_path / "ram"
    full.mkdir()
    payload = tmp_path / "base"
    payload.mkdir()
    (payload / "big").write_bytes(os.urandom(512 * 1024))
    archive = tmp_path / "base.tar"
    proc.run(["tar", "-cf", str(archive), "-C", str(payload), "big"])
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(full)], check=True)
    try:
        with pytest.raises(OSError) as written:  # staging a segment into pg_wal on a full tmpfs
            (full / "segment").write_bytes(bytes(256 * 1024))
        assert recovery.host_fault(written.value)
        with pytest.raises(CommandFailed) as extracted:  # tar extracting the base into it
            proc.run(["tar", "-xf", str(archive), "-C", str(full)])
        assert recovery.host_fault(extracted.value), extracted.value.stderr_tail
    finally:
        subprocess.run(["umount", "-l", str(full)], check=False)
    (tmp_path / "bad.tar").write_bytes(os.urandom(4096))  # a base tar refused for its content
    with pytest.raises(CommandFailed) as refused:
        proc.run(["tar", "-xf", str(tmp_path / "bad.tar"), "-C", str(tmp_path)])
    assert not recovery.host_fault(refused.value), refused.value.stderr_tail
