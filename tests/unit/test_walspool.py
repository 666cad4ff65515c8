"""The WAL spool's chunk format (backup/walspool): round trip, torn tails, reordered and foreign chunks."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from pyrage import x25519

from reconciler.backup import walspool
from reconciler.backup.create import Sealing

IDENTITY = x25519.Identity.generate()
KEY = os.urandom(32)
SEALING = Sealing([IDENTITY.to_public()], [str(IDENTITY.to_public())], KEY)
SEGMENT = "000000010000000000000003"
BINDING = walspool.Binding("shop", "7301234567890123456", SEGMENT)

pieces = st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=6)


def spool(parts: list[bytes], sealing: Sealing = SEALING, binding: walspool.Binding = BINDING) -> list[bytes]:
    chunks, offset = [], 0
    for raw in parts:
        chunks.append(walspool.seal(raw, offset, sealing, binding))
        offset += len(raw)
    return chunks


@settings(max_examples=40, deadline=None)
@given(pieces)
def test_round_trip(parts: list[bytes]) -> None:
    data = b"".join(spool(parts))
    found = walspool.scan(data, KEY, BINDING)
    assert found.problem is None and found.valid == len(data)
    raw = b"".join(parts)
    assert found.end == len(raw)
    rebuilt = walspool.rebuild(data, found, IDENTITY)
    assert rebuilt == raw + bytes(walspool.SEGMENT_BYTES - len(raw))


@settings(max_examples=40, deadline=None)
@given(pieces, st.data())
def test_a_file_cut_at_any_byte_gives_the_longest_whole_prefix(
    parts: list[bytes], data: st.DataObject
) -> None:
    chunks = spool(parts)
    whole = b"".join(chunks)
    cut = round(data.draw(st.floats(0, 1)) * len(whole))  # age's header varies in length (grease)
    found = walspool.scan(whole[:cut], KEY, BINDING)
    boundaries = [sum(len(c) for c in chunks[:i]) for i in range(len(chunks) + 1)]
    kept = max(i for i, b in enumerate(boundaries) if b <= cut)
    assert found.valid == boundaries[kept]
    assert found.end == sum(len(p) for p in parts[:kept])
    assert (found.problem is None) == (cut == boundaries[kept])
    assert found.problem is None or (found.torn and "torn" in found.problem)
    rebuilt = walspool.rebuild(whole[:cut], found, IDENTITY)
    assert rebuilt[: found.end] == b"".join(parts)[: found.end]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=500), min_size=2, max_size=5), st.data())
def test_reordered_or_repeated_chunks_are_refused(parts: list[bytes], data: st.DataObject) -> None:
    chunks = spool(parts)
    i = data.draw(st.integers(0, len(chunks) - 2))
    j = data.draw(st.integers(i + 1, len(chunks) - 1))
    for altered in (
        [*chunks[:i], chunks[j], *chunks[i + 1 : j], chunks[i], *chunks[j + 1 :]],  # swapped
        [*chunks[: i + 1], chunks[i], *chunks[i + 1 :]],  # repeated
        [*chunks[:i], *chunks[i + 1 :]],  # one left out
    ):
        found = walspool.scan(b"".join(altered), KEY, BINDING)
        assert found.end == sum(len(p) for p in parts[:i]) or altered[i] == chunks[i]
        assert found.problem is not None and "out of order" in found.problem
        assert len(found.chunks) <= i + 1


@settings(max_examples=30, deadline=None)
@given(pieces, st.data())
def test_foreign_forged_and_flipped_chunks_are_refused(parts: list[bytes], data: st.DataObject) -> None:
    chunks = spool(parts)
    i = data.draw(st.integers(0, len(chunks) - 1))
    offset = sum(len(p) for p in parts[:i])
    forged_sealing = Sealing(SEALING.recipients, [], os.urandom(32))  # knows only the recipient
    for foreign in (
        walspool.seal(
            parts[i], offset, SEALING, walspool.Binding("shop", BINDING.system_identifier, "0" * 23 + "4")
        ),
        walspool.seal(parts[i], offset, SEALING, walspool.Binding("shop", "1234", SEGMENT)),
        walspool.seal(
            parts[i], offset, SEALING, walspool.Binding("other", BINDING.system_identifier, SEGMENT)
        ),
        walspool.seal(parts[i], offset, forged_sealing, BINDING),
    ):
        found = walspool.scan(b"".join([*chunks[:i], foreign, *chunks[i + 1 :]]), KEY, BINDING)
        assert found.end == offset and len(found.chunks) == i
        assert found.problem is not None and "does not authenticate" in found.problem
    whole = bytearray(b"".join(chunks))
    flip = int(data.draw(st.floats(0, 1, exclude_max=True)) * len(whole))
    whole[flip] ^= 1 << data.draw(st.integers(0, 7))
    found = walspool.scan(bytes(whole), KEY, BINDING)
    assert found.problem is not None and found.valid <= flip


def test_the_received_bytes_end_at_the_last_non_zero_byte_of_the_last_written_page() -> None:
    import io

    page = bytes([0x10, 0xD1]) + bytes(100) + b"x" + bytes(walspool.PAGE - 103)  # ends in zeros
    segment = page * 3 + bytes(walspool.PAGE * 5)
    assert walspool.received(io.BytesIO(segment), 0) == (page * 3).rstrip(b"\0")
    assert walspool.received(io.BytesIO(segment), walspool.PAGE + 5) == (page * 3)[
        walspool.PAGE + 5 :
    ].rstrip(b"\0")
    assert walspool.received(io.BytesIO(bytes(walspool.PAGE * 2)), 0) == b""


def test_the_per_chunk_overhead_is_small() -> None:
    raw = os.urandom(64)  # incompressible: the overhead alone
    chunk = walspool.seal(raw, 0, SEALING, BINDING)
    overhead = len(chunk) - len(raw)
    # header 16 + mac 32 + zstd frame ~10 + age's header ~200, plus the grease stanza rage adds with a
    # random length (measured 297-416 bytes in all): well under the 4 KiB page each fsync rewrites
    assert overhead < 700, overhead
    plain = walspool.seal(raw, 0, Sealing(None, [], None), BINDING)
    assert len(plain) - len(raw) < 70
