"""TarTap reads pg_basebackup's tar as it streams by, whatever sizes the pipe hands it."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.backup import physical

LABEL = (
    b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"
    b"CHECKPOINT LOCATION: 0/2000060\nSTART TIMELINE: 1\n"
)
MANIFEST = json.dumps(
    {
        "Files": [{"Path": "PG_VERSION", "Checksum-Algorithm": "CRC32C"}],
        "WAL-Ranges": [{"Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100"}],
    }
).encode()


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class _Chunked:
    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data, self.sizes, self.offset = data, sizes, 0

    def read(self, size: int = -1) -> bytes:
        step = self.sizes[self.offset % len(self.sizes)] if self.sizes else size
        chunk = self.data[self.offset : self.offset + min(step, size if size > 0 else step)]
        self.offset += len(chunk)
        return chunk


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=8),
    filler=st.binary(max_size=5000),
)
def test_tap_captures_label_and_manifest_at_any_chunking(sizes: list[int], filler: bytes) -> None:
    data = _tar(
        [
            ("backup_label", LABEL),
            ("base/1/1259", filler),
            ("PG_VERSION", b"15\n"),
            ("backup_manifest", MANIFEST),
        ]
    )
    tap = physical.TarTap(_Chunked(data, sizes))
    out = b"".join(iter(lambda: tap.read(4096), b""))
    assert out == data  # passed through unchanged
    assert tap.captured == {"backup_label": LABEL, "backup_manifest": MANIFEST}
    assert tap.files == 4 and tap.ended
    facts = physical.facts(tap)
    assert facts["start_lsn"] == "0/2000028" and facts["stop_lsn"] == "0/2000100"
    assert facts["start_segment"] == "000000010000000000000002" and facts["timeline"] == 1


def test_a_stream_without_its_manifest_is_not_a_base_backup() -> None:
    tap = physical.TarTap(io.BytesIO(_tar([("backup_label", LABEL), ("PG_VERSION", b"15\n")])))
    while tap.read(1000):
        pass
    with pytest.raises(physical.BaseBackupIncomplete, match="backup_manifest"):
        physical.facts(tap)


def test_lsn_values_order_like_wal_positions() -> None:
    assert physical.lsn_value("0/FFFFFFFF") < physical.lsn_value("1/0") < physical.lsn_value("1/10")
