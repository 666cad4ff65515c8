"""Backup-set naming and retention (restic semantics plus safety rules), with hypothesis properties."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.plan.actions import simulate_all
from reconciler.plan.backupsets import (
    MANIFEST_SUFFIX,
    BackupSet,
    StoredFile,
    group_sets,
    parse_set_name,
    retention,
    set_name,
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
) -> BackupSet:
    name = set_name(stack, created, trigger)
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


def test_keep_last_and_daily_like_restic() -> None:
    sets = [make_set(NOW - timedelta(hours=6 * i)) for i in range(20)]  # 5 days, 4 a day
    decision = retention(sets, RetentionSpec(keep_last=3, keep_daily=3, keep_weekly=0, keep_monthly=0), NOW)
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
    decision = retention([fresh, stale, good], RetentionSpec(), NOW)
    assert decision.delete == (stale.name,)


def test_nothing_is_deleted_while_the_newest_attempt_failed() -> None:
    sets = [make_set(NOW - timedelta(hours=i)) for i in range(50)]
    decision = retention(
        sets, RetentionSpec(keep_last=1, keep_daily=0, keep_weekly=0), NOW, newest_attempt_failed=True
    )
    assert decision.delete == () and decision.held_back == "the newest backup failed"


def test_the_newest_verified_set_survives_any_policy() -> None:
    sets = [make_set(NOW - timedelta(hours=i)) for i in range(10)]
    old_verified = sets[7].name
    policy = RetentionSpec(keep_last=1, keep_hourly=0, keep_daily=0, keep_weekly=0, keep_monthly=0)
    decision = retention(sets, policy, NOW, verified=frozenset({old_verified}))
    assert old_verified in decision.keep and sets[0].name in decision.keep
    assert len(decision.delete) == 8


times = st.integers(min_value=-48, max_value=24 * 90).map(lambda h: NOW - timedelta(hours=h, minutes=h % 7))
histories = st.lists(st.tuples(times, st.booleans(), st.booleans()), max_size=40)
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


def _sets(history: list[tuple[datetime, bool, bool]]) -> tuple[list[BackupSet], frozenset[str]]:
    by_name = {}
    verified = set()
    for created, complete, ok in history:
        s = make_set(created, complete)
        by_name[s.name] = s
        if ok and complete:
            verified.add(s.name)
    return list(by_name.values()), frozenset(verified)


@settings(max_examples=300)
@given(histories, policies, st.booleans(), st.randoms())
def test_retention_properties(
    history: list[tuple[datetime, bool, bool]], policy: RetentionSpec, failed: bool, rnd: random.Random
) -> None:
    sets, verified = _sets(history)
    decision = retention(sets, policy, NOW, verified, failed)
    complete = [s for s in sets if s.complete]
    deleted = set(decision.delete)
    # never deletes every complete set
    if complete:
        assert any(s.name not in deleted for s in complete)
    # the newest verified set (or newest complete when none is verified) is always kept
    candidates = [s for s in complete if s.name in verified] or complete
    if candidates:
        newest = max(candidates, key=lambda s: (s.created, s.name))
        assert newest.name not in deleted
    # nothing deleted after a failed attempt
    if failed:
        assert not deleted
    # independent of listing order
    shuffled = list(sets)
    rnd.shuffle(shuffled)
    assert retention(shuffled, policy, NOW, verified, failed) == decision
    # every set is either kept (with a reason) or deleted
    assert set(decision.keep) | deleted == {s.name for s in sets}
    assert not set(decision.keep) & deleted


@settings(max_examples=200)
@given(histories, policies)
def test_retention_is_idempotent(history: list[tuple[datetime, bool, bool]], policy: RetentionSpec) -> None:
    sets, verified = _sets(history)
    first = retention(sets, policy, NOW, verified)
    remaining = [s for s in sets if s.name not in first.delete]
    assert retention(remaining, policy, NOW, verified).delete == ()


def test_plan_shows_exactly_the_sets_retention_deletes() -> None:
    from reconciler.plan.observed import BackupsObservation
    from reconciler.plan.planner import plan
    from tests.unit.test_planner import fresh_world, spec

    desired = spec()
    sets = tuple(make_set(NOW - timedelta(hours=i), store="local") for i in range(40))
    world = fresh_world(desired)
    world = simulate_all(world, plan(desired, world, NOW).actions)
    from dataclasses import replace

    world = replace(world, backups=BackupsObservation(sets))
    result = plan(desired, world, NOW)
    prune = [a for a in result.actions if a.kind == "PruneBackups"]
    expected = retention(sets, desired.backup.retention, NOW).delete
    assert len(prune) == 1 and set(prune[0].set_names) == set(expected) and expected
    assert plan(desired, simulate_all(world, result.actions), NOW).in_sync
