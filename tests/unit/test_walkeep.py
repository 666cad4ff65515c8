"""Local WAL retention beside Drive (plan/walkeep): never delete what Drive needs and lacks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reconciler.plan import walchain, walkeep

CLUSTER = "7000000000000000001"


def name(n: int) -> str:
    return walchain.segment_name(1, n)


@given(
    local=st.sets(st.integers(min_value=0, max_value=80), max_size=40),
    local_base=st.integers(min_value=0, max_value=80),
    drive_bases=st.sets(st.integers(min_value=0, max_value=80), max_size=3),
    held=st.sets(st.integers(min_value=0, max_value=80), max_size=40),
)
def test_local_retention_keeps_every_segment_a_drive_base_needs_until_drive_holds_it(
    local: set[int], local_base: int, drive_bases: set[int], held: set[int]
) -> None:
    unneeded = walchain.unneeded([name(n) for n in local], [name(local_base)])
    starts = {CLUSTER: [name(b) for b in drive_bases]} if drive_bases else {}
    deleted = walkeep.locally_deletable(unneeded, CLUSTER, [name(n) for n in held], starts)
    assert set(deleted) <= set(unneeded)  # never more than the local rule
    for segment in deleted:
        number = walchain.parse(segment)[1]
        drive_needs = not drive_bases or any(b <= number for b in drive_bases)
        assert number in held or not drive_needs, f"{segment} deleted before Drive had it"
    # what Drive holds, or cannot replay, goes as the local rule says
    for segment in unneeded:
        number = walchain.parse(segment)[1]
        if number in held or (drive_bases and number < min(drive_bases)):
            assert segment in deleted


def test_without_drive_the_local_rule_alone_decides() -> None:
    unneeded = [name(1), name(2)]
    assert walkeep.locally_deletable(unneeded, CLUSTER, None, {}) == unneeded


def test_a_segment_drive_lacks_is_kept_while_no_sync_has_said_what_drive_keeps() -> None:
    assert walkeep.locally_deletable([name(1), name(2)], CLUSTER, [name(2)], {}) == [name(2)]
