"""Issue 14: backup age and RAM headroom as drift in the pure planner (hypothesis, clock jumps included)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.plan.actions import FallBackToDisk, StartService, SwitchMode, TakeBackup, simulate_all
from reconciler.plan.backupsets import BackupSet, order_key
from reconciler.plan.observed import BackupsObservation, Filesystem, ObservedState
from reconciler.plan.planner import Plan, plan
from reconciler.plan.schedule import (
    CLOCK_SKEW,
    backup_drift,
    backup_schedule,
    observed_backup_drift,
    observed_backup_schedule,
    ram_headroom,
)
from reconciler.spec.loader import parse_state
from reconciler.spec.model import StateSpec
from tests.unit.test_planner import GIB, NOW, fresh_world, spec
from tests.unit.test_retention import make_set

BACKUPS = "backup: {cadence: 1h, stale_after: 2h, encryption: none}\n"
SPEC_HEAD = """version: 1
stack: demo
mode: ram
services:
  postgres: {database: app, user: app, port: 5433, disk_dir: /srv/pg}
  redis: {port: 6380, disk_dir: /srv/redis}
"""


def converged(extra: str = BACKUPS, mode: str = "ram") -> tuple[StateSpec, ObservedState]:
    desired = spec(mode=mode, extra=extra)
    world = fresh_world(desired)
    return desired, simulate_all(world, plan(desired, world, NOW).actions)


def vouched(*sets: BackupSet, **fields: Any) -> BackupsObservation:
    """What observation reports: every complete local set vouched for, unless told otherwise."""
    authenticity = {("local", s.name): None for s in sets if s.complete}
    return BackupsObservation(tuple(sets), **{"authenticity": authenticity, **fields})


def with_sets(world: ObservedState, *sets: BackupSet) -> ObservedState:
    return replace(world, backups=vouched(*sets))


def takes(result: Plan) -> list[TakeBackup]:
    return [a for a in result.actions if isinstance(a, TakeBackup)]


# -- backup age ------------------------------------------------------------------------------------


def test_a_stale_newest_set_is_a_planned_backup_with_its_numbers() -> None:
    desired, world = converged()
    newest = make_set(NOW - timedelta(hours=3, minutes=12), sequence=2, stack="demo")
    older = make_set(NOW - timedelta(hours=1), sequence=1, stack="demo")  # newer by time, older by sequence
    result = plan(desired, with_sets(world, newest, older), NOW)
    (action,) = takes(result)
    assert action.describe() == (
        f"take a backup set (the newest set {newest.name} is 3 h 12 min old, stale_after 2 h 0 min)"
    )
    assert action.trigger == "stale" and not result.in_sync
    fresh = make_set(NOW - timedelta(hours=1, minutes=59), sequence=3, stack="demo")
    assert plan(desired, with_sets(world, newest, fresh), NOW).in_sync


def test_no_backup_at_all_is_drift_in_both_modes_and_says_what_is_at_risk() -> None:
    for mode, risk in (("ram", "a power cut would lose the data in RAM"), ("disk", "only on this disk")):
        desired, world = converged(mode=mode)
        world = with_sets(world)
        (action,) = takes(plan(desired, world, NOW))
        assert risk in action.describe() and action.trigger == "first"
        after = simulate_all(world, (action,))
        assert plan(desired, after, NOW).in_sync


def test_when_state_yaml_makes_backups_impossible_it_is_a_warning_not_an_action() -> None:
    desired, world = converged(extra="")  # encryption: age with no recipient fails closed
    result = plan(desired, with_sets(world), NOW)
    assert result.in_sync and not takes(result)
    assert any("no recipient" in w and "power cut" in w for w in result.warnings)


def test_a_rejected_or_planted_newest_set_does_not_make_the_backups_fresh() -> None:
    desired, world = converged()
    good = make_set(NOW - timedelta(hours=5), sequence=1, stack="demo")
    bad = make_set(NOW - timedelta(minutes=5), sequence=2, stack="demo")
    rejected = vouched(good, bad, rejected={("local", bad.name): "sha256 does not match"})
    assert "5 h 0 min old" in takes(plan(desired, replace(world, backups=rejected), NOW))[0].reason
    planted = BackupsObservation(
        (good, bad), authenticity={("local", good.name): None, ("local", bad.name): "no"}
    )
    assert takes(plan(desired, replace(world, backups=planted), NOW))


def test_a_switch_and_the_backup_it_owes_are_one_plan() -> None:
    _, world = converged(mode="disk")
    ram = spec(mode="ram", extra=BACKUPS)
    world = with_sets(world, make_set(NOW - timedelta(hours=3), sequence=1, stack="demo"))
    kinds = [type(a).__name__ for a in plan(ram, world, NOW).actions]
    # the step is skipped when the switch's post-switch set already made the backups fresh
    assert "SwitchMode" in kinds and kinds[-1] == "TakeBackup"


offsets = st.integers(min_value=-30 * 86400, max_value=30 * 86400)


@settings(max_examples=300)
@given(st.lists(st.tuples(offsets, st.booleans()), max_size=8), offsets)
def test_drift_is_exactly_an_unmeasurable_or_older_than_stale_after_newest_set(
    history: list[tuple[int, bool]], now_offset: int
) -> None:
    desired = spec(extra=BACKUPS)
    now = NOW + timedelta(seconds=now_offset)
    sets = tuple(
        make_set(NOW - timedelta(seconds=o), complete=c, sequence=i + 1, stack="demo", trigger=f"t{i}")
        for i, (o, c) in enumerate(history)
    )
    drift = backup_drift(desired, sets, now)
    counted = [s for s in sets if s.complete]
    if not counted:
        assert drift is not None and drift.trigger == "first"
        return
    newest = max(counted, key=order_key)
    if newest.created > now + CLOCK_SKEW:  # from the future: never fresh, however far ahead
        assert drift is not None and "after the host clock" in drift.reason
    else:
        assert (drift is None) == (now - newest.created <= timedelta(hours=2))
    # the daemon's BackupFresh condition and the plan never disagree
    assert backup_schedule(desired, sets, now).fresh == (drift is None)


@settings(max_examples=200)
@given(
    st.lists(st.tuples(offsets, st.integers(1, 8)), max_size=6), st.lists(offsets, min_size=1, max_size=12)
)
def test_whatever_the_clock_does_one_apply_per_reading_leaves_the_plan_in_sync(
    history: list[tuple[int, int]], readings: list[int]
) -> None:
    """A Pi's clock behind, jumping forward, jumping back: each reading costs at most one backup (no
    storm), and a set from the future never keeps the plan quiet."""
    desired, world = converged()
    sets = tuple(
        make_set(NOW - timedelta(seconds=o), sequence=n, stack="demo", trigger=f"t{i}")
        for i, (o, n) in enumerate(history)
    )
    world = with_sets(world, *sets)
    for reading in readings:
        now = NOW + timedelta(seconds=reading)
        first = plan(desired, world, now)
        assert len(takes(first)) <= 1
        world = simulate_all(world, first.actions)
        assert not plan(desired, world, now).actions


# -- RAM headroom ----------------------------------------------------------------------------------


def squeezed(world: ObservedState, host_available: int, tmpfs_free: int) -> ObservedState:
    root = replace(
        world.ram_root,
        exists=True,
        filesystem=Filesystem(world.ram_root.path, "tmpfs", 4 * GIB, 4 * GIB - tmpfs_free),
        dedicated_mount=False,
    )
    return replace(world, ram_root=root, host=replace(world.host, mem_available=host_available))


def test_host_memory_and_tmpfs_space_are_two_checks_with_two_messages() -> None:
    desired, world = converged()
    host_only = ram_headroom(desired, squeezed(world, GIB // 2, 3 * GIB))
    assert (
        len(host_only.problems) == 1
        and "512 MiB of host memory available (MemAvailable)" in host_only.message
    )
    tmpfs_only = ram_headroom(desired, squeezed(world, 8 * GIB, GIB // 4))
    assert (
        len(tmpfs_only.problems) == 1
        and "256 MiB free on the tmpfs at /dev/shm/rc/demo" in tmpfs_only.message
    )
    assert "host memory" not in tmpfs_only.message
    both = ram_headroom(desired, squeezed(world, GIB // 2, GIB // 4))
    assert len(both.problems) == 2 and both.available == GIB // 4
    assert ram_headroom(desired, squeezed(world, 8 * GIB, 3 * GIB)).ok


def test_low_headroom_with_warn_is_unhealable_drift_that_leaves_other_repairs_alone() -> None:
    desired, world = converged()
    world = with_sets(squeezed(world, GIB // 2, 3 * GIB), make_set(NOW, sequence=1, stack="demo"))
    postgres = world.services["postgres"]
    world = world.with_service(replace(postgres, running=False, pid=None, port=None, data_dir=None))
    result = plan(desired, world, NOW)
    assert not result.in_sync and not result.blockers
    assert [type(a) for a in result.actions][:1] == [StartService]  # the dead service is still healed
    (problem,) = result.unhealable
    assert "512 MiB of host memory" in problem and "fallback-to-disk" in problem
    assert "1 problem apply cannot heal" in result.summary()
    assert plan(desired, world, NOW, upkeep=False).unhealable == ()  # the daemon's own question


def test_low_headroom_with_fallback_to_disk_plans_the_fallback_and_the_switch() -> None:
    extra = BACKUPS + "daemon: {}\n"
    desired = spec(extra=extra).model_copy(
        update={"ram": spec(extra=extra).ram.model_copy(update={"on_pressure": "fallback-to-disk"})}
    )
    _, world = converged()
    world = with_sets(squeezed(world, 8 * GIB, GIB // 4), make_set(NOW, sequence=1, stack="demo"))
    result = plan(desired, world, NOW)
    assert isinstance(result.actions[0], FallBackToDisk) and "free on the tmpfs" in result.actions[0].reason
    switch = result.actions[1]
    assert isinstance(switch, SwitchMode) and (switch.from_mode, switch.to_mode) == ("ram", "disk")
    # once the override makes the effective mode disk, the same world after the switch is in sync
    disk = desired.model_copy(update={"mode": "disk"}).with_base_dir(desired.base_dir)
    assert plan(disk, simulate_all(world, result.actions), NOW).in_sync


@settings(max_examples=200)
@given(st.integers(0, 24 * GIB), st.integers(0, 4 * GIB), st.booleans())
def test_the_planner_and_the_daemon_judge_headroom_with_the_same_function(
    host_available: int, tmpfs_free: int, in_ram: bool
) -> None:
    desired, world = converged(mode="ram" if in_ram else "disk")
    desired = spec(extra=BACKUPS)
    world = with_sets(squeezed(world, host_available, tmpfs_free), make_set(NOW, sequence=1, stack="demo"))
    result = plan(desired, world, NOW)
    verdict = ram_headroom(desired, world)
    if in_ram:
        assert len(result.unhealable) == len(verdict.problems)
        assert all(p in u for p, u in zip(verdict.problems, result.unhealable, strict=True))
    else:  # entering RAM mode is the switch's preflight, not a headroom drift
        assert result.unhealable == ()


def test_a_tmpfs_the_plan_grows_is_judged_at_its_new_size_not_as_pressure() -> None:
    """The obvious cure for a nearly full tmpfs is a larger ram.tmpfs_size, which apply makes by
    resizing the mount: the plan must not call that unhealable, nor fall back to disk instead."""
    for on_pressure in ("warn", "fallback-to-disk"):
        extra = (
            BACKUPS
            + f"ram: {{path: /dev/shm/rc/demo, mount: always, tmpfs_size: 4GiB, on_pressure: {on_pressure}}}\n"
        )
        desired = parse_state(SPEC_HEAD + extra, "state.yaml", "/srv")
        _, world = converged()
        full = Filesystem(world.ram_root.path, "tmpfs", GIB, GIB - 100 * 1024**2)  # 100 MiB free of 1 GiB
        world = replace(
            world,
            ram_root=replace(world.ram_root, exists=True, filesystem=full, dedicated_mount=True),
            host=replace(world.host, is_root=True),
        )
        world = with_sets(world, make_set(NOW, sequence=1, stack="demo"))
        result = plan(desired, world, NOW)
        assert [type(a).__name__ for a in result.actions] == ["ResizeRamRoot"], result
        assert result.unhealable == (), on_pressure
        after = simulate_all(world, result.actions)
        assert plan(desired, after, NOW).in_sync


def test_entering_ram_mode_is_refused_when_it_would_leave_the_tmpfs_below_min_headroom() -> None:
    """min_headroom bounds the tmpfs as well as host memory: a switch the preflight lets through must
    not be RAM-headroom drift the moment it ends (unhealable with warn, a fallback to disk otherwise)."""
    extra = "ram: {path: /dev/shm/rc/demo, mount: never, tmpfs_size: 50%, min_headroom: 3GiB}\n"
    disk = parse_state(SPEC_HEAD.replace("mode: ram", "mode: disk") + extra, "state.yaml", "/srv")
    ram = parse_state(SPEC_HEAD + extra, "state.yaml", "/srv")
    world = simulate_all(fresh_world(disk), plan(disk, fresh_world(disk), NOW).actions)
    pg = world.services["postgres"]
    data = int(9.8 * GIB)  # x1.2 fits the 12 GiB tmpfs, but leaves 2.2 GiB of it free, below 3 GiB
    world = world.with_service(replace(pg, disk=replace(pg.disk, size_bytes=data)))
    world = with_sets(world, make_set(NOW, sequence=1, stack="demo"))
    result = plan(ram, world, NOW)
    assert not any(isinstance(a, SwitchMode) for a in result.actions), result.actions
    (blocker,) = result.blockers
    assert "tmpfs" in blocker and "below ram.min_headroom" in blocker


def test_the_daemon_replaces_a_rejected_newest_set_at_once_then_once_per_cadence() -> None:
    desired = spec(extra=BACKUPS)  # cadence 1 h, stale_after 2 h
    good = make_set(NOW - timedelta(hours=5), sequence=1, stack="demo")
    bad = make_set(NOW - timedelta(minutes=5), sequence=2, stack="demo")
    backups = vouched(good, bad, rejected={("local", bad.name): "sha256 does not match"})
    first = observed_backup_schedule(desired, backups, NOW)
    assert first.due and first.replacement and not first.fresh  # as plan says: a set is owed
    assert observed_backup_drift(desired, backups, NOW) is not None
    again = observed_backup_schedule(desired, backups, NOW, replaced_at=NOW - timedelta(minutes=10))
    assert not again.due and not again.fresh and again.next_at == NOW + timedelta(minutes=50)
    later = observed_backup_schedule(desired, backups, NOW, replaced_at=NOW - timedelta(hours=1))
    assert later.due
