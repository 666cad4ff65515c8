"""WAL chains: what a recovery replays and where it must stop (a gap, a rejected segment)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reconciler.plan import walchain


def test_successor_crosses_a_log_boundary() -> None:
    assert walchain.successor("0000000100000000000000FF") == "000000010000000100000000"
    assert walchain.successor("000000010000000100000000") == "000000010000000100000001"


@given(
    start=st.integers(min_value=0, max_value=600),
    present=st.sets(st.integers(min_value=0, max_value=700), max_size=60),
    partial=st.sets(st.integers(min_value=0, max_value=700), max_size=3),
    rejected=st.sets(st.integers(min_value=0, max_value=700), max_size=5),
)
def test_a_chain_is_contiguous_and_stops_at_the_first_missing_segment(
    start: int, present: set[int], partial: set[int], rejected: set[int]
) -> None:
    name = lambda n: walchain.segment_name(1, n)  # noqa: E731
    other_timeline = [walchain.segment_name(2, n) for n in present]
    chain = walchain.chain(
        name(start),
        [name(n) for n in present] + other_timeline,
        [name(n) for n in partial],
        [name(n) for n in rejected],
    )
    usable = present - rejected
    numbers = [walchain.parse(s)[1] for s in chain.segments]
    assert numbers == list(range(start, start + len(numbers)))  # contiguous from the base
    assert set(numbers) <= usable
    end = start + len(numbers)
    assert end not in usable  # nothing replayable was left out
    assert chain.partial == (name(end) if end in partial - rejected else None)
    after = end + (1 if chain.partial else 0)
    beyond = {n for n in usable | (partial - rejected) if n >= after}
    assert chain.after_gap == len(beyond)
    assert (chain.gap is not None) == bool(beyond)
    if chain.gap is not None:
        assert chain.gap == name(after)


def test_a_rejected_segment_ends_the_chain_before_it() -> None:
    names = [walchain.segment_name(1, n) for n in range(5, 10)]
    chain = walchain.chain(names[0], names, rejected=[names[2]])
    assert chain.segments == tuple(names[:2]) and chain.gap == names[2] and chain.after_gap == 2


@given(
    bases=st.lists(st.tuples(st.integers(1, 3), st.integers(0, 300)), max_size=4),
    segments=st.sets(st.tuples(st.integers(1, 4), st.integers(0, 400)), max_size=80),
)
def test_retention_never_deletes_a_segment_a_kept_base_can_replay(
    bases: list[tuple[int, int]], segments: set[tuple[int, int]]
) -> None:
    names = [walchain.segment_name(t, n) for t, n in segments]
    starts = [walchain.segment_name(t, n) for t, n in bases]
    gone = set(walchain.unneeded(names, starts))
    assert gone <= set(names)
    for start in starts:  # every chain from a kept base is the same after retention
        kept = [n for n in names if n not in gone]
        assert walchain.chain(start, kept) == walchain.chain(start, names)
    if not bases:
        assert not gone


@given(
    start=st.integers(min_value=0, max_value=200),
    present=st.sets(st.integers(min_value=0, max_value=300), max_size=60),
    partial=st.sets(st.integers(min_value=0, max_value=300), max_size=2),
    until=st.none() | st.integers(min_value=0, max_value=300),
)
def test_verify_replays_up_to_the_next_base_and_reports_a_gap_only_short_of_it(
    start: int, present: set[int], partial: set[int], until: int | None
) -> None:
    name = lambda n: walchain.segment_name(1, n)  # noqa: E731
    found = walchain.chain(name(start), [name(n) for n in present | {start}], [name(n) for n in partial])
    window = walchain.bounded(found, None if until is None else name(max(until, start)))
    if until is None:
        assert window == found
        return
    limit = max(until, start)
    numbers = [walchain.parse(s)[1] for s in window.segments]
    assert numbers == [walchain.parse(s)[1] for s in found.segments][: len(numbers)]  # a prefix
    assert all(n <= limit for n in numbers)
    reached = walchain.parse(window.partial)[1] if window.partial else numbers[-1]
    have = present | {start}
    whole = all(n in have for n in range(start, limit)) and (limit in have or limit in partial)
    assert (window.gap is None) == whole  # whole: every segment up to the next base's is there
    if window.gap is not None:
        assert walchain.parse(window.gap)[1] == reached + 1 <= limit
    else:
        assert reached == limit
