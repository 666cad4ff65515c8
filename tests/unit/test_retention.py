"""Backup-set naming, order and retention (restic semantics, counting only sets it can vouch for), with
hypothesis properties over hostile stores: corrupt, planted, foreign, unverified, rejected, future-dated,
empty and duplicate sets."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.plan.actions import simulate_all
from reconciler.plan.backupsets import (
    MANIFEST_SUFFIX,
    BackupSet,
    RetentionDecision,
    StoredFile,
    group_sets,
    newest_first,
    next_sequence,
    order_key,
    parse_set_name,
    retention,
    set_name,
    set_sequence,
    split_file_name,
)
from reconciler.spec.model import RetentionSpec

NOW = datetime(2026, 11, 21, 16, 0, tzinfo=UTC)


def make_set(
    created: datetime,
    complete: bool = True,
    trigger: str = "scheduled",
    store: str = "local",
    stack: str = "loomio",
    sequence: int | None = None,
) -> BackupSet:
    name = set_name(stack, created, trigger, sequence)
    files = [StoredFile(f"{name}.postgres.pgdump.zst.age", 100)]
    if complete:
        files.append(StoredFile(f"{name}{MANIFEST_SUFFIX}", 10))
    return BackupSet(name, stack, created.replace(microsecond=0), trigger, store, tuple(files))


def test_names_carry_utc_time_and_trigger() -> None:
    name = set_name("loomio", datetime(2026, 11, 21, 17, 0, 5, tzinfo=UTC), "pre-switch")
    assert name == "loomio-20261121T170005Z-pre-switch"
    assert parse_set_name(name) == ("loomio", datetime(2026, 11, 21, 17, 0, 5, tzinfo=UTC), "pre-switch")
    assert split_file_name(f"{name}.redis.rdb.zst.age") == (name, "redis.rdb.zst.age")
    assert parse_set_name("loomio-2026-11-21") is None
    assert split_file_name("notes.txt") is None


def test_names_carry_a_sequence_that_orders_them_and_legacy_names_still_parse() -> None:
    when = datetime(2026, 11, 21, 17, 0, 5, tzinfo=UTC)
    name = set_name("loomio", when, "scheduled", 42)
    assert name == "loomio-20261121T170005Z-000042-scheduled"
    assert parse_set_name(name) == ("loomio", when, "scheduled")
    assert set_sequence(name) == 42 and set_sequence("loomio-20261121T170005Z-scheduled") == 0
    assert parse_set_name("loomio-20261121T170005Z-000042-pre-switch") == ("loomio", when, "pre-switch")
    assert parse_set_name("my-stack-2-20261121T170005Z-7-manual") == ("my-stack-2", when, "manual")
    # a set taken later, with a clock a day behind, still sorts after the older one
    older = make_set(when, sequence=41)
    newer = make_set(when - timedelta(days=1), sequence=42)
    legacy = make_set(when + timedelta(days=3650))  # a legacy name dated ten years ahead
    assert newest_first([legacy, older, newer]) == [newer, older, legacy]
    assert next_sequence([older.name, legacy.name], high_water=7) == 42
    assert next_sequence([], high_water=0) == 1


def test_grouping_ignores_foreign_files_and_other_stacks() -> None:
    a = make_set(NOW - timedelta(hours=1))
    files = [
        *a.files,
        StoredFile("README.txt", 5),
        StoredFile("other-20261121T150000Z-manual.manifest.json", 1),
    ]
    sets = group_sets(files, "local", "loomio")
    assert [s.name for s in sets] == [a.name]
    assert sets[0].complete and sets[0].size == 110


def vouch_all(sets: Iterable[BackupSet]) -> dict[str, str | None]:
    return {s.name: None for s in sets if s.complete}


def decide(
    sets: list[BackupSet],
    policy: RetentionSpec,
    now: datetime = NOW,
    verified: frozenset[str] = frozenset(),
    failed: bool = False,
    **kwargs: object,
) -> RetentionDecision:
    """Retention over a store whose every complete set is vouched for, verification off (the old rules)."""
    options: dict[str, object] = {"authenticity": vouch_all(sets), "require_verified": False, **kwargs}
    return retention(sets, policy, now, verified, failed, **options)  # type: ignore[arg-type]


ONLY_LAST = RetentionSpec(keep_last=1, keep_hourly=0, keep_daily=0, keep_weekly=0, keep_monthly=0)


def test_keep_last_and_daily_like_restic() -> None:
    sets = [make_set(NOW - timedelta(hours=6 * i)) for i in range(20)]  # 5 days, 4 a day
    decision = decide(sets, RetentionSpec(keep_last=3, keep_daily=3, keep_weekly=0, keep_monthly=0))
    kept = set(decision.keep)
    newest_of_day = {}
    for s in sets:
        newest_of_day.setdefault(s.created.date(), s.name)
    expected = {s.name for s in sets[:3]} | set(list(newest_of_day.values())[:3])
    assert kept == expected
    assert set(decision.delete) == {s.name for s in sets} - expected


def test_incomplete_sets_are_removed_only_after_a_grace_period() -> None:
    fresh = make_set(NOW - timedelta(minutes=5), complete=False)
    stale = make_set(NOW - timedelta(days=2), complete=False)
    good = make_set(NOW - timedelta(hours=1))
    decision = decide([fresh, stale, good], RetentionSpec())
    assert decision.delete == (stale.name,)


def test_nothing_is_deleted_while_the_newest_attempt_failed() -> None:
    sets = [make_set(NOW - timedelta(hours=i)) for i in range(50)]
    decision = decide(sets, RetentionSpec(keep_last=1, keep_daily=0, keep_weekly=0), failed=True)
    assert decision.delete == () and decision.held_back == "the newest backup failed"


def test_the_newest_verified_set_survives_any_policy() -> None:
    sets = [make_set(NOW - timedelta(hours=i)) for i in range(10)]
    old_verified = sets[7].name
    decision = decide(sets, ONLY_LAST, verified=frozenset({old_verified}), require_verified=True)
    # sets[0..6] are newer and not verified yet: kept, not counted; sets[8], sets[9] are superseded
    assert old_verified in decision.keep and sets[0].name in decision.keep
    assert decision.counted == (old_verified,)
    assert set(decision.delete) == {sets[8].name, sets[9].name}


def test_a_planted_far_future_set_neither_counts_nor_makes_real_sets_go() -> None:
    """Issue 12 item 2: a file named like a far-future set, holding garbage, made prune delete every real set."""
    real = [make_set(NOW - timedelta(hours=i), sequence=10 - i) for i in range(3)]
    planted = [
        make_set(datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC), trigger="x"),
        make_set(datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC), trigger="x", sequence=999_999_999),
    ]
    authenticity = {**vouch_all(real), **{p.name: "the manifest is not valid JSON" for p in planted}}
    decision = retention(real + planted, ONLY_LAST, NOW, authenticity=authenticity, require_verified=False)
    assert real[0].name in decision.keep and decision.counted[0] == real[0].name
    assert all(p.name in decision.keep and p.name not in decision.delete for p in planted)
    assert set(decision.delete) == {real[1].name, real[2].name}


def test_a_corrupt_newest_set_does_not_make_the_good_older_sets_go() -> None:
    """Issue 12 item 2: with keep_last 1 a corrupt newest set was kept and every good older set deleted."""
    good = [make_set(NOW - timedelta(hours=i + 1), sequence=5 - i) for i in range(3)]
    corrupt = make_set(NOW, sequence=6)
    sets = [corrupt, *good]
    authenticity = {**vouch_all(good), corrupt.name: "member x holds 3 bytes, the manifest says 900"}
    decision = retention(sets, ONLY_LAST, NOW, authenticity=authenticity, require_verified=False)
    assert good[0].name in decision.keep and corrupt.name in decision.keep
    assert set(decision.delete) == {good[1].name, good[2].name}
    # the same with verification on: an unverified (or rejected) newest set does not count either
    verified = frozenset(s.name for s in good)
    for extra in ({}, {"rejected": {corrupt.name: "sha256 mismatch"}}):
        on = retention(sets, ONLY_LAST, NOW, verified, authenticity=vouch_all(sets), **extra)  # type: ignore[arg-type]
        assert on.counted[0] == good[0].name and set(on.delete) == {good[1].name, good[2].name}


def test_unchecked_sets_are_never_counted_nor_deleted() -> None:
    sets = [make_set(NOW - timedelta(hours=i)) for i in range(5)]
    decision = retention(sets, ONLY_LAST, NOW)  # the caller vouched for nothing
    assert decision.delete == () and decision.held_back and "counted" in decision.held_back


def test_retention_of_complete_sets_ignores_the_clock() -> None:
    """Issue 12 item 7: a clock behind the newest set (or jumping) must not change what retention keeps."""
    sets = [make_set(NOW - timedelta(hours=3 * i), sequence=20 - i) for i in range(12)]
    sets.append(make_set(NOW - timedelta(days=400), sequence=30))  # taken while the clock was a year behind
    baseline = decide(sets, RetentionSpec(keep_last=2, keep_daily=1, keep_weekly=0, keep_monthly=0))
    assert sets[-1].name in baseline.keep  # the newest by sequence, whatever its time
    for skew in (timedelta(days=-3650), timedelta(hours=-5), timedelta(days=30)):
        assert (
            decide(sets, RetentionSpec(keep_last=2, keep_daily=1, keep_weekly=0, keep_monthly=0), NOW + skew)
            == baseline
        )


# -- hypothesis: random hostile stores ---------------------------------------------------------------

KINDS = ("vouched", "corrupt", "planted", "foreign", "unsigned", "unchecked")
set_specs = st.tuples(
    st.integers(min_value=-48, max_value=24 * 90),  # hours ago (negative: ahead of the clock)
    st.one_of(st.none(), st.integers(1, 60)),  # sequence (None: a legacy name)
    st.booleans(),  # complete
    st.sampled_from(KINDS),
    st.booleans(),  # verified
    st.booleans(),  # rejected
    st.booleans(),  # listed twice
    st.booleans(),  # empty files (size 0)
)
histories = st.lists(set_specs, max_size=30)
policies = (
    st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5), st.integers(0, 3), st.integers(0, 2))
    .filter(any)
    .map(  # a policy keeping nothing is refused at validation
        lambda keep: RetentionSpec(
            keep_last=keep[0],
            keep_hourly=keep[1],
            keep_daily=keep[2],
            keep_weekly=keep[3],
            keep_monthly=keep[4],
        )
    )
)


class Store:
    def __init__(self, raw: list[tuple[int, int | None, bool, str, bool, bool, bool, bool]]) -> None:
        self.listing: list[BackupSet] = []
        self.authenticity: dict[str, str | None] = {}
        verified: set[str] = set()
        rejected: dict[str, str] = {}
        seen: set[str] = set()
        for index, (hours, number, complete, kind, ok, bad, twice, empty) in enumerate(raw):
            created = NOW - timedelta(hours=hours, minutes=index % 7)
            sequence = number
            if kind == "planted":
                created = datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC) - timedelta(seconds=index)
                sequence = None if number is None else 10**9 + index
            s = make_set(created, complete, trigger=f"t{index}", sequence=sequence)
            if empty:
                s = replace(s, files=tuple(replace(f, size=0) for f in s.files))
            if s.name in seen:
                continue
            seen.add(s.name)
            self.listing.append(s)
            if twice:
                self.listing.append(replace(s, files=s.files[:1]))  # a duplicate, less complete listing
            if complete and kind != "unchecked":
                self.authenticity[s.name] = None if kind == "vouched" else f"{kind} manifest"
            if ok:
                verified.add(s.name)
            if bad:
                rejected[s.name] = "sha256 mismatch"
        self.verified = frozenset(verified)
        self.rejected = rejected
        self.sets = {s.name: s for s in self.listing if s.complete or s.name not in self.complete_names}

    @property
    def complete_names(self) -> set[str]:
        return {s.name for s in self.listing if s.complete}

    def decide(
        self,
        policy: RetentionSpec,
        require_verified: bool,
        failed: bool = False,
        now: datetime = NOW,
        listing: list[BackupSet] | None = None,
    ) -> RetentionDecision:
        return retention(
            self.listing if listing is None else listing,
            policy,
            now,
            self.verified,
            failed,
            authenticity=self.authenticity,
            require_verified=require_verified,
            rejected=self.rejected,
        )

    def counts(self, s: BackupSet, require_verified: bool) -> bool:
        return (
            s.complete
            and self.authenticity.get(s.name, "unchecked") is None
            and s.name not in self.rejected
            and (not require_verified or s.name in self.verified)
        )


@settings(max_examples=400, deadline=None)
@given(histories, policies, st.booleans(), st.booleans(), st.randoms())
def test_retention_counts_and_deletes_only_what_it_can_vouch_for(
    raw: list[tuple[int, int | None, bool, str, bool, bool, bool, bool]],
    policy: RetentionSpec,
    require_verified: bool,
    failed: bool,
    rnd: random.Random,
) -> None:
    store = Store(raw)
    decision = store.decide(policy, require_verified, failed)
    sets = list(store.sets.values())
    deleted = set(decision.delete)
    counted = newest_first(s for s in sets if store.counts(s, require_verified))
    # every set is either kept with a reason or deleted, never both
    assert set(decision.keep) | deleted == set(store.sets) and not set(decision.keep) & deleted
    # a failed newest attempt holds everything
    if failed:
        assert not deleted
        return
    # exactly the sets it can vouch for (and verified, where verification is on) are counted
    assert list(decision.counted) == [s.name for s in counted]
    # a complete set it cannot vouch for is never deleted
    for s in sets:
        if s.complete and store.authenticity.get(s.name, "unchecked") is not None:
            assert s.name not in deleted, s.name
    # the newest counted set and the keep_last newest counted sets always stay
    for s in counted[: max(policy.keep_last, 1)]:
        assert s.name not in deleted
    # nothing newer than the newest counted set is deleted; with nothing counted, nothing is deleted
    for name in deleted:
        assert counted and order_key(store.sets[name]) < order_key(counted[0])
    # what does not count never makes a counted set go: the same store without the uncounted sets
    only_counted = [s for s in store.listing if store.counts(s, require_verified)]
    alone = store.decide(policy, require_verified, listing=only_counted)
    for s in counted:
        assert (s.name in deleted) == (s.name in alone.delete), s.name
    # independent of listing order and duplicates
    shuffled = store.listing + store.listing[: len(store.listing) // 2]
    rnd.shuffle(shuffled)
    assert store.decide(policy, require_verified, listing=shuffled) == decision
    # which complete sets go never depends on the clock (only an incomplete set's grace period does)
    for skew in (timedelta(days=-3650), timedelta(hours=-7), timedelta(days=365)):
        other = store.decide(policy, require_verified, now=NOW + skew)
        assert {n for n in other.delete if store.sets[n].complete} == {
            n for n in deleted if store.sets[n].complete
        }


@settings(max_examples=300, deadline=None)
@given(histories, policies, st.booleans(), st.sets(st.integers(0, 39)))
def test_retention_keeps_the_set_restore_on_boot_would_choose(
    raw: list[tuple[int, int | None, bool, str, bool, bool, bool, bool]],
    policy: RetentionSpec,
    require_verified: bool,
    marked: set[int],
) -> None:
    """Whatever a deliberate restore superseded, the newest set restore on boot would still choose (by the
    sets' own order, neither rejected nor superseded) is kept: it used to lose to newer superseded sets
    that counted, and with them the data the stack serves after a lost post-restore set."""
    store = Store(raw)
    superseded = frozenset(s.name for i, s in enumerate(store.sets.values()) if i in marked)
    decision = retention(
        store.listing,
        policy,
        NOW,
        store.verified,
        authenticity=store.authenticity,
        require_verified=require_verified,
        rejected=store.rejected,
        superseded=superseded,
    )
    usable = newest_first(
        s
        for s in store.sets.values()
        if s.complete and s.name not in store.rejected and s.name not in superseded
    )
    if usable:
        assert usable[0].name not in decision.delete
        assert "newest set restore on boot would choose" in decision.keep[usable[0].name]
    # superseded sets are ordinary sets otherwise: nothing else is kept that the rules would delete
    plain = store.decide(policy, require_verified)
    assert set(decision.delete) == set(plain.delete) - {usable[0].name if usable else ""}


def test_a_lost_post_restore_set_does_not_make_retention_delete_the_restored_set() -> None:
    older = make_set(NOW - timedelta(hours=5), True, trigger="older", sequence=1)
    newer = make_set(NOW - timedelta(hours=4), True, trigger="newer", sequence=2)
    pre = make_set(NOW - timedelta(hours=1), True, trigger="pre-restore", sequence=3)
    sets = [older, newer, pre]
    vouched = {s.name: None for s in sets}

    def decide(superseded: frozenset[str]) -> RetentionDecision:
        return retention(
            sets,
            RetentionSpec(keep_last=1),
            NOW,
            authenticity=vouched,
            require_verified=False,
            superseded=superseded,
        )

    assert decide(frozenset()).delete == (newer.name, older.name)
    decision = decide(frozenset({newer.name, pre.name}))
    assert decision.delete == (newer.name,)
    assert decision.keep[older.name] == ("newest set restore on boot would choose",)


@settings(max_examples=200, deadline=None)
@given(histories, policies, st.booleans())
def test_retention_is_idempotent(
    raw: list[tuple[int, int | None, bool, str, bool, bool, bool, bool]], policy: RetentionSpec, require: bool
) -> None:
    store = Store(raw)
    first = store.decide(policy, require)
    remaining = [s for s in store.listing if s.name not in first.delete]
    assert store.decide(policy, require, listing=remaining).delete == ()


def test_plan_shows_exactly_the_sets_retention_deletes() -> None:
    from reconciler.plan.observed import BackupsObservation
    from reconciler.plan.planner import plan
    from tests.unit.test_planner import fresh_world, spec

    desired = spec()
    sets = tuple(make_set(NOW - timedelta(hours=i), store="local", stack=desired.stack) for i in range(40))
    world = fresh_world(desired)
    world = simulate_all(world, plan(desired, world, NOW).actions)
    verified = frozenset(s.name for s in sets)
    authenticity = {("local", s.name): None for s in sets}
    world = replace(world, backups=BackupsObservation(sets, verified, authenticity=authenticity))
    result = plan(desired, world, NOW)
    prune = [a for a in result.actions if a.kind == "PruneBackups"]
    expected = retention(sets, desired.backup.retention, NOW, verified, authenticity=vouch_all(sets)).delete
    assert len(prune) == 1 and set(prune[0].set_names) == set(expected) and expected
    assert plan(desired, simulate_all(world, result.actions), NOW).in_sync
    # without the engine's word on the manifests, the plan deletes nothing
    unchecked = replace(world, backups=BackupsObservation(sets, verified))
    assert not [a for a in plan(desired, unchecked, NOW).actions if a.kind == "PruneBackups"]
