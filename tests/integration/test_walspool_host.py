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


def test_a_full_spool_disk_is_an_error_and_the_spool_resumes_whole_once_there_is_room(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test mounts a small tmpfs as the spool and needs root (CI runs as root)")
    spool = tmp_path / "spool"
    spool.mkdir()
    received = tmp_path / f"{SEGMENT}.partial"
    wal = bytearray(os.urandom(16 * 1024))  # incompressible "WAL": every page non-zero
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
        more = os.urandom(64 * 1024)  # the spool file's last page has room for a part of this chunk only
        with open(received, "r+b") as handle:
            handle.seek(len(wal))
            handle.write(more)
        wal += more
        with pytest.raises(OSError):  # a full disk is an error (the streamer reports it and retries) ...
            spooler.follow(str(received), SEGMENT)
        filler.unlink()  # ... and once there is room again, the spool goes on from its last whole chunk
        later = os.urandom(8 * 1024)
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
