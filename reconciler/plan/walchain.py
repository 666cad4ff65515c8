"""WAL segment names and chains: which shipped segments a recovery can replay, and where it must stop.

Design decisions:
- A segment's name is its position: ``TTTTTTTTLLLLLLLLSSSSSSSS`` (timeline, log, segment; 16 MiB
  segments, so ``SSSSSSSS`` runs 00000000-000000FF within a log). The successor of a segment is pure
  arithmetic, so a gap is found from a listing alone.
- A chain starts at the base backup's first segment and follows successors on the base's timeline
  while each is present; the first missing one is the gap, and recovery can go no further than the
  end of the segment before it (the last consistent point). A ``.partial`` (the segment in progress
  when the stream stopped) may end a chain, never continue it.
- A rejected segment (bad MAC, planted, corrupt) is treated as missing: the chain stops before it.
  Segments after a gap are never replayed, however many there are: replaying them would invent a
  history PostgreSQL cannot connect to the data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")
SEGMENTS_PER_LOG = 0x100  # 4 GiB per log / 16 MiB per segment


def is_segment(name: str) -> bool:
    return bool(SEGMENT_RE.match(name))


def parse(name: str) -> tuple[int, int]:
    """(timeline, absolute segment number) of a segment name."""
    if not is_segment(name):
        raise ValueError(f"{name!r} is not a WAL segment name")
    return int(name[:8], 16), int(name[8:16], 16) * SEGMENTS_PER_LOG + int(name[16:], 16)


def segment_name(timeline: int, number: int) -> str:
    log, seg = divmod(number, SEGMENTS_PER_LOG)
    return f"{timeline:08X}{log:08X}{seg:08X}"


def successor(name: str) -> str:
    timeline, number = parse(name)
    return segment_name(timeline, number + 1)


@dataclass(frozen=True)
class Chain:
    """What a recovery from ``start`` will replay: complete segments in order, then maybe a partial."""

    start: str
    segments: tuple[str, ...]
    partial: str | None
    gap: str | None  # the first segment missing after the chain, when later segments exist
    after_gap: int  # how many segments exist beyond the gap (never replayed)

    @property
    def replayed(self) -> int:
        return len(self.segments) + (1 if self.partial else 0)


def chain(
    start: str, complete: Iterable[str], partial: Iterable[str] = (), rejected: Iterable[str] = ()
) -> Chain:
    """The longest run of segments from ``start`` on its timeline; ``rejected`` ones count as missing."""
    timeline, first = parse(start)
    bad = set(rejected)
    have = {parse(n)[1] for n in complete if is_segment(n) and parse(n)[0] == timeline and n not in bad}
    partials = {parse(n)[1] for n in partial if is_segment(n) and parse(n)[0] == timeline and n not in bad}
    segments = []
    number = first
    while number in have:
        segments.append(segment_name(timeline, number))
        number += 1
    ends_partial = segment_name(timeline, number) if number in partials else None
    beyond = [n for n in have | partials if n > number]
    gap = segment_name(timeline, number) if beyond and ends_partial is None else None
    if ends_partial is not None:
        later = [n for n in have | partials if n > number]
        gap = segment_name(timeline, number + 1) if later else None
        beyond = later
    return Chain(start, tuple(segments), ends_partial, gap, len(beyond))


def unneeded(segments: Iterable[str], base_starts: Iterable[str]) -> list[str]:
    """The segments no kept base's chain can reach (what WAL retention may delete).

    A segment is needed when a kept base on its timeline starts at or before it. Segments of a
    timeline older than every kept base's are an abandoned history and go; a timeline newer than the
    newest base (no base yet, e.g. right after a point-in-time restore) is kept whole. With no kept
    base at all nothing is deleted: it is never retention's job to decide that a WAL chain is moot."""
    starts: dict[int, int] = {}
    for start in base_starts:
        timeline, number = parse(start)
        starts[timeline] = min(number, starts.get(timeline, number))
    if not starts:
        return []
    oldest_timeline = min(starts)
    deletable = []
    for name in segments:
        if not is_segment(name):
            continue
        timeline, number = parse(name)
        if timeline in starts:
            if number < starts[timeline]:
                deletable.append(name)
        elif timeline < oldest_timeline:
            deletable.append(name)
    return sorted(deletable)


def unneeded_in_cluster(
    segments: Iterable[str], starts_by_cluster: Mapping[str, Iterable[str]], cluster: str
) -> list[str]:
    """``unneeded`` for one cluster's segments, given the kept bases of every cluster. A cluster with
    no kept base while another has one is the history a restore by initdb abandoned: all of it goes.
    With no kept base anywhere nothing goes."""
    if not starts_by_cluster:
        return []
    bases = list(starts_by_cluster.get(cluster, ())) or ["FFFFFFFF" + "0" * 16]
    return unneeded(segments, bases)


def bounded(found: Chain, until: str | None) -> Chain:
    """What ``verify`` replays after a base: ``found`` cut at ``until`` (the next base's stop segment,
    or None: the end of the chain).

    Past the next base, the WAL is that base's to prove: a gap there is reported when that base is
    verified, not here. Short of it, the window must be whole: a chain that ends before ``until`` has
    a gap (the first segment it could not reach) even when no later segment was listed."""
    if until is None:
        return found
    timeline, limit = parse(found.start)[0], parse(until)[1]
    segments = tuple(s for s in found.segments if parse(s)[1] <= limit)
    partial = found.partial if found.partial is not None and parse(found.partial)[1] <= limit else None
    if (found.partial is not None and parse(found.partial)[1] >= limit) or (
        found.segments and parse(found.segments[-1])[1] >= limit
    ):
        return Chain(found.start, segments, partial, None, 0)
    if found.gap is not None:
        return Chain(found.start, segments, partial, found.gap, found.after_gap)
    if found.partial is not None:
        last = parse(found.partial)[1]
    else:
        last = parse(found.segments[-1])[1] if found.segments else parse(found.start)[1] - 1
    return Chain(found.start, segments, partial, segment_name(timeline, last + 1), found.after_gap)
