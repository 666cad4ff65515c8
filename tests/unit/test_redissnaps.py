"""Redis snapshots between sets: which one a restore loads, which ones retention deletes (pure policy)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from reconciler.plan import redissnaps
from reconciler.plan.backupsets import set_name
from reconciler.plan.redissnaps import Snapshot

BASE = datetime(2026, 11, 22, tzinfo=UTC)


def a_set(sequence: int, hours: int = 0) -> str:
    """A set name; ``hours`` shifts its time, which must never decide the order (no RTC on a Pi)."""
    return set_name("app", BASE + timedelta(hours=hours), "scheduled", sequence)


snapshots = st.lists(
    st.builds(
        lambda counter, after, hours: Snapshot(counter, a_set(after, hours) if after else ""),
        st.integers(min_value=1, max_value=60),
        st.integers(min_value=0, max_value=8),
        st.integers(min_value=-48, max_value=48),
    ),
    max_size=20,
    unique_by=lambda s: s.counter,
)


@given(
    snapshots,
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=-48, max_value=48),
    st.integers(0, 60),
)
def test_a_restore_loads_only_snapshots_taken_after_its_set_and_not_superseded_newest_first(
    known: list[Snapshot], chosen: int, hours: int, superseded: int
) -> None:
    usable = redissnaps.usable_for(known, a_set(chosen, hours), superseded)
    assert [s.counter for s in usable] == sorted((s.counter for s in usable), reverse=True)
    for s in known:
        after = redissnaps.set_key(s.after_set)[0] if s.after_set else -1
        if s.counter <= superseded or after < chosen:  # superseded, or taken before the set
            assert s not in usable
        elif after > chosen:  # taken after a later set: usable whatever the dates say
            assert s in usable


def test_the_clock_never_orders_sets_a_snapshot_after_a_later_sequence_is_newer_whatever_its_date() -> None:
    taken_after_set_2 = Snapshot(5, a_set(2, hours=-30))  # the Pi booted a day behind
    assert redissnaps.usable_for([taken_after_set_2], a_set(1, hours=+5), 0) == [taken_after_set_2]
    assert redissnaps.usable_for([Snapshot(6, a_set(1, hours=+50))], a_set(2, hours=0), 0) == []


@given(snapshots, st.one_of(st.none(), st.integers(min_value=1, max_value=8)), st.integers(0, 60))
def test_retention_keeps_at_most_keep_and_only_snapshots_a_restore_could_load(
    known: list[Snapshot], newest: int | None, superseded: int
) -> None:
    newest_set = a_set(newest) if newest else None
    doomed = set(redissnaps.unneeded(known, newest_set, superseded))
    kept = [s for s in known if s.counter not in doomed]
    assert doomed <= {s.counter for s in known}
    assert len(kept) <= redissnaps.KEEP
    if newest_set is not None:
        usable = redissnaps.usable_for(known, newest_set, superseded)
        # every kept one is loadable after the newest set, and the newest loadable ones are all kept
        assert set(kept) <= set(usable)
        assert usable[: redissnaps.KEEP] == sorted(kept, key=lambda s: s.counter, reverse=True)
    assert all(s.counter > superseded for s in kept)


@given(st.lists(st.integers(min_value=0, max_value=10**6), max_size=10), st.integers(0, 10**6))
def test_a_new_counter_is_above_every_known_one_and_the_high_water_mark(known: list[int], high: int) -> None:
    counter = redissnaps.next_counter(known, high)
    assert counter > high and all(counter > k for k in known)


def test_newest_set_is_by_sequence_not_by_time() -> None:
    assert redissnaps.newest_set([a_set(3, hours=-10), a_set(2, hours=+10)]) == a_set(3, hours=-10)
    assert redissnaps.newest_set([]) is None
