"""Restore selection (hypothesis properties) and the planner's never-start-empty rule."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.plan.actions import InitService, ProtectBackups, RestoreFromBackup, simulate_all
from reconciler.plan.backupsets import BackupSet, StoredFile, order_key
from reconciler.plan.observed import BackupsObservation
from reconciler.plan.planner import plan
from reconciler.plan.selection import CLOCK_SKEW_TOLERANCE, select_restore, superseded_by_restore
from reconciler.spec.model import RetentionSpec, StateSpec
from tests.unit.test_planner import NOW, fresh_world, spec
from tests.unit.test_retention import make_set as _make_set


def make_set(*args: object, **kwargs: object) -> BackupSet:
    """A set of the demo stack (postgres and redis): it holds a member of each."""
    made = _make_set(*args, stack="demo", **kwargs)  # type: ignore[arg-type]
    return replace(made, files=(*made.files, StoredFile(f"{made.name}.redis.rdb.zst.age", 10)))


def keep_last_only(desired: StateSpec) -> StateSpec:
    """The same spec with the harshest retention: only the newest set survives."""
    retention = RetentionSpec(keep_last=1, keep_daily=0, keep_weekly=0)
    return desired.model_copy(update={"backup": desired.backup.model_copy(update={"retention": retention})})


copies = st.tuples(
    st.integers(-24 * 400, 24 * 30),  # hours ago (negative: ahead of the host clock)
    st.sampled_from(["local", "gdrive"]),
    st.booleans(),  # complete
    st.booleans(),  # rejected
    st.one_of(st.none(), st.integers(1, 12)),  # the set's sequence (None: a legacy name)
)


def _build(
    raw: list[tuple[int, str, bool, bool, int | None]],
) -> tuple[list[BackupSet], dict[tuple[str, str], str]]:
    sets, rejected = [], {}
    for hours, store, complete, bad, sequence in raw:
        s = make_set(NOW - timedelta(hours=hours), complete, store=store, sequence=sequence)
        sets.append(s)
        if bad:
            rejected[(store, s.name)] = "corrupt"
    return sets, rejected


def _usable(sets: list[BackupSet], rejected: dict[tuple[str, str], str]) -> list[BackupSet]:
    complete = {(s.store, s.name): s for s in sets if s.complete}
    return [s for key, s in complete.items() if key not in rejected]


@settings(max_examples=400)
@given(st.lists(copies, max_size=30), st.randoms())
def test_selection_properties(raw: list[tuple[int, str, bool, bool, int | None]], rnd: random.Random) -> None:
    sets, rejected = _build(raw)
    selection = select_restore(sets, rejected, NOW)
    usable = _usable(sets, rejected)
    # a result exists iff a usable copy exists
    assert (selection.chosen is not None) == bool(usable)
    # never an incomplete or rejected copy
    for s in selection.candidates:
        assert s.complete and (s.store, s.name) not in rejected
    # every usable copy is a candidate, once
    assert {(s.store, s.name) for s in selection.candidates} == {(s.store, s.name) for s in usable}
    assert len(selection.candidates) == len({(s.store, s.name) for s in usable})
    # newest first by the sets' own order (sequence, then time), whatever the host clock says
    keys = [order_key(s) for s in selection.candidates]
    assert keys == sorted(keys, reverse=True)
    if usable:
        assert selection.chosen is not None
        assert order_key(selection.chosen) == max(order_key(s) for s in usable)
        assert selection.chosen.store == min(
            (s.store for s in usable if s.name == selection.chosen.name), key=lambda store: store != "local"
        )
    # local before gdrive for the same set
    order = [(s.name, s.store) for s in selection.candidates]
    for name, store in order:
        if store == "gdrive" and (name, "local") in order:
            assert order.index((name, "local")) < order.index((name, "gdrive"))
    # the order never depends on the clock (a Pi that boots hours or a year behind, or jumps ahead)
    for skew in (timedelta(days=-400), timedelta(hours=-6), timedelta(days=30)):
        assert select_restore(sets, rejected, NOW + skew).candidates == selection.candidates
    # a first candidate dated ahead of the clock earns one warning (the clock is probably behind)
    ahead = selection.chosen is not None and selection.chosen.created > NOW + CLOCK_SKEW_TOLERANCE
    assert len(selection.warnings) == int(ahead)
    # independent of listing order
    shuffled = list(sets)
    rnd.shuffle(shuffled)
    assert select_restore(shuffled, rejected, NOW) == selection


def test_empty_input() -> None:
    selection = select_restore([], {}, NOW)
    assert selection.chosen is None and selection.candidates == () and selection.rejected == ()


def vouched(sets: tuple[BackupSet, ...] | list[BackupSet]) -> BackupsObservation:
    """The sets, every complete one vouched for by the engine and verified."""
    return BackupsObservation(
        tuple(sets),
        frozenset(s.name for s in sets if s.complete),
        authenticity={(s.store, s.name): None for s in sets if s.complete},
    )


def _world_with(sets: list[BackupSet], rejected: dict[tuple[str, str], str] | None = None, **spec_args: str):  # type: ignore[no-untyped-def]
    desired = spec(**spec_args)
    world = replace(fresh_world(desired), backups=replace(vouched(sets), rejected=rejected or {}))
    return desired, world


def test_empty_ram_with_backups_restores_instead_of_starting_empty() -> None:
    older, newer = make_set(NOW - timedelta(hours=2)), make_set(NOW - timedelta(hours=1))
    desired, world = _world_with([older, newer])
    result = plan(desired, world, NOW)
    restore = [a for a in result.actions if isinstance(a, RestoreFromBackup)]
    assert len(restore) == 1 and not [a for a in result.actions if isinstance(a, InitService)]
    assert restore[0].candidates == (("local", newer.name), ("local", older.name))
    assert restore[0].services == ("postgres", "redis")
    assert "restore postgres and redis from backup set" in restore[0].describe()
    assert plan(desired, simulate_all(world, result.actions), NOW).in_sync


def test_a_service_no_set_holds_starts_empty_and_the_others_are_restored_from_their_sets() -> None:
    """Redis was added to a postgres stack after its last backup, then the RAM was lost: postgres is
    restored from the postgres-only sets, redis starts empty. Before, both were put in one restore that
    rejected every set for holding no redis member, and postgres stayed down."""
    older, newer = (
        _make_set(NOW - timedelta(hours=2), stack="demo"),
        _make_set(NOW - timedelta(hours=1), stack="demo"),
    )
    desired, world = _world_with([older, newer])
    result = plan(desired, world, NOW)
    restore = [a for a in result.actions if isinstance(a, RestoreFromBackup)]
    assert len(restore) == 1 and restore[0].services == ("postgres",)
    assert restore[0].candidates == (("local", newer.name), ("local", older.name))
    assert [a.service_name for a in result.actions if isinstance(a, InitService)] == ["redis"]
    assert any("holds redis" in w and "EMPTY" in w for w in result.warnings), result.warnings
    # redis alone empty (postgres kept its data): no set is tried for it, none is rejected
    only_redis = replace(
        world,
        services={**world.services, "postgres": simulate_all(world, result.actions).services["postgres"]},
    )
    again = plan(desired, only_redis, NOW)
    assert not [a for a in again.actions if isinstance(a, RestoreFromBackup)]


def test_no_backup_anywhere_starts_empty_and_says_so() -> None:
    desired, world = _world_with([make_set(NOW, complete=False)])
    result = plan(desired, world, NOW)
    assert any(isinstance(a, InitService) for a in result.actions)
    assert any(
        "no backup of stack demo exists in any store (1 incomplete set(s) ignored)" in w
        for w in result.warnings
    )
    assert any("EMPTY" in w for w in result.warnings)


def test_all_sets_rejected_blocks_and_names_every_set() -> None:
    a, b = make_set(NOW - timedelta(hours=2)), make_set(NOW - timedelta(hours=1))
    rejected = {("local", a.name): "sha256 mismatch", ("local", b.name): "signed with another identity"}
    desired, world = _world_with([a, b], rejected)
    result = plan(desired, world, NOW)
    assert result.actions == ()
    assert a.name in result.blockers[0] and b.name in result.blockers[0]
    assert "sha256 mismatch" in result.blockers[0] and "--allow-empty" in result.blockers[0]


def test_allow_empty_protects_the_old_sets_from_retention_forever() -> None:
    real = [make_set(NOW - timedelta(days=d)) for d in range(1, 4)]
    rejected = {("local", s.name): "corrupt" for s in real}
    desired, world = _world_with(real, rejected)
    result = plan(desired, world, NOW, allow_empty=True)
    assert isinstance(result.actions[0], ProtectBackups) or any(
        isinstance(a, ProtectBackups) for a in result.actions
    )
    world = simulate_all(world, result.actions)
    # a month of hourly backups of the (empty) database later, with keep_last=1 only:
    empties = tuple(make_set(NOW - timedelta(hours=h, minutes=30)) for h in range(0, 24 * 30, 1))
    protected = world.backups.protected
    world = replace(world, backups=replace(vouched(world.backups.sets + empties), protected=protected))
    strict = keep_last_only(spec())
    pruned = [a for a in plan(strict, world, NOW).actions if a.kind == "PruneBackups"]
    deleted = set(pruned[0].set_names)  # type: ignore[attr-defined]
    assert not deleted & {s.name for s in real}, "real sets must survive backups of the empty database"
    assert len(deleted) == len(empties) - 1


def test_restore_candidates_are_never_pruned_in_the_same_plan() -> None:
    sets = [make_set(NOW - timedelta(hours=h)) for h in range(1, 40)]
    desired = spec()
    strict = keep_last_only(desired)
    world = replace(fresh_world(desired), backups=vouched(sets))
    result = plan(strict, world, NOW)
    assert not [a for a in result.actions if a.kind == "PruneBackups"]


def test_with_the_clock_behind_the_newest_set_is_still_restored_first() -> None:
    """Issue 12 item 7: a Pi boots with its clock behind the newest set; that set must still win."""
    older = make_set(NOW - timedelta(hours=3), sequence=1)
    newest = make_set(NOW + timedelta(days=2), sequence=2)  # taken when the clock was right
    desired, world = _world_with([older, newest])
    result = plan(desired, world, NOW)
    restore = next(a for a in result.actions if isinstance(a, RestoreFromBackup))
    assert restore.candidates == (("local", newest.name), ("local", older.name))
    assert any("clock is probably behind" in w for w in result.warnings)
    # and a set taken while the clock was behind sorts after the older data by its sequence
    behind = make_set(NOW - timedelta(days=30), sequence=3)
    assert select_restore([older, newest, behind], {}, NOW).chosen == behind


def test_sets_protected_by_an_empty_start_are_not_pruned_in_the_same_plan() -> None:
    real = [make_set(NOW - timedelta(days=d)) for d in range(1, 4)]
    desired = spec()
    strict = keep_last_only(desired)
    world = replace(
        fresh_world(desired),
        backups=replace(vouched(real), rejected={("local", s.name): "bad" for s in real}),
    )
    result = plan(strict, world, NOW, allow_empty=True)
    assert any(isinstance(a, ProtectBackups) for a in result.actions)
    assert not [a for a in result.actions if a.kind == "PruneBackups"]


def test_sets_of_the_same_second_are_ordered_as_listings_and_retention_order_them() -> None:
    first = make_set(NOW - timedelta(hours=1), trigger="first")
    second = make_set(NOW - timedelta(hours=1), trigger="second")
    assert first.created == second.created
    selection = select_restore([first, second], {}, NOW)
    assert [s.name for s in selection.candidates] == [second.name, first.name]
    from reconciler.plan.backupsets import group_sets

    listed = group_sets([*first.files, *second.files], "local", "demo")
    assert listed[0].name == selection.candidates[0].name


@settings(max_examples=400)
@given(st.lists(copies, min_size=1, max_size=30), st.data(), st.integers(-24 * 400, 24 * 400))
def test_after_a_deliberate_restore_boot_chooses_the_restored_set_until_a_newer_one_exists(
    raw: list[tuple[int, str, bool, bool, int | None]], data: st.DataObject, later_hours: int
) -> None:
    """Whatever the clock said when the sets were taken (a chosen set dated in the future included) and
    whatever it says at boot, restore on boot prefers the set a deliberate restore chose over every set
    it did not supersede, and supersedes nothing boot would try after it."""
    sets, _ = _build(raw)
    complete = [s for s in sets if s.complete]
    if not complete:
        return
    chosen = data.draw(st.sampled_from(complete))
    superseded = superseded_by_restore(sets, chosen.name)
    assert chosen.name not in superseded
    discarded = {(store, name): "superseded" for name in superseded for store in ("local", "gdrive")}
    boot = select_restore(sets, discarded, NOW + timedelta(hours=later_hours))
    assert boot.chosen is not None and boot.chosen.name == chosen.name
    assert all(order_key(s) > order_key(chosen) for s in sets if s.name in superseded)
