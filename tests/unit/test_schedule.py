"""When the daemon owes a backup, which set it verifies, and the RAM headroom verdict (pure, hypothesis)."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from reconciler.daemon.loop import Backoff
from reconciler.daemon.metrics import Snapshot
from reconciler.plan.backupsets import order_key
from reconciler.plan.observed import Filesystem, HostObservation, ObservedState, RamRoot
from reconciler.plan.schedule import CLOCK_SKEW, backup_schedule, ram_headroom, set_to_verify
from reconciler.spec.model import StateSpec
from tests.unit.test_retention import NOW, make_set


def spec(**overrides: object) -> StateSpec:
    document: dict[str, object] = {
        "version": 1,
        "stack": "loomio",
        "mode": "ram",
        "services": {"postgres": {"database": "app", "user": "app", "disk_dir": "./data/pg"}},
        "backup": {"cadence": "1h", "stale_after": "2h", "encryption": "none"},
        **overrides,
    }
    return StateSpec.model_validate(document)


ages = st.lists(st.integers(min_value=-86400, max_value=7 * 86400), max_size=12)


@given(ages, st.lists(st.booleans(), max_size=12))
def test_a_backup_is_due_exactly_when_the_newest_complete_set_is_a_cadence_old(
    offsets: list[int], complete: list[bool]
) -> None:
    sets = tuple(
        make_set(
            NOW - timedelta(seconds=offset),
            complete=complete[i] if i < len(complete) else True,
            sequence=i + 1,
            trigger=f"t{i}",
        )
        for i, offset in enumerate(offsets)
    )
    schedule = backup_schedule(spec(), sets, NOW)
    counted = [s for s in sets if s.complete]
    if not counted:
        assert schedule.due and schedule.newest is None and not schedule.fresh
        return
    newest = max(counted, key=order_key)  # the sets' own order: the last one taken
    assert schedule.newest == newest.name
    if newest.created > NOW + CLOCK_SKEW:  # the clock is behind the newest set: age unknown
        assert schedule.due and not schedule.fresh and schedule.age is None and "behind" in schedule.reason
        return
    age = NOW - newest.created
    assert schedule.due == (age >= timedelta(hours=1))
    assert schedule.fresh == (age <= timedelta(hours=2))
    assert schedule.next_at == (NOW if schedule.due else newest.created + timedelta(hours=1))
    assert schedule.next_at >= NOW


def test_a_clock_behind_the_newest_set_gets_one_backup_then_ages_are_measured_again() -> None:
    """Issue 12 item 7: after a power cut the Pi's clock is behind the newest set."""
    newest = make_set(NOW + timedelta(days=2), sequence=7)
    first = backup_schedule(spec(), (newest,), NOW)
    assert first.due and not first.fresh and "behind" in first.reason and first.newest == newest.name
    taken = make_set(NOW, sequence=8)  # the set the daemon takes, named after the clock but numbered after
    second = backup_schedule(spec(), (newest, taken), NOW + timedelta(minutes=10))
    assert not second.due and second.newest == taken.name and second.fresh
    assert second.next_at == NOW + timedelta(hours=1)


def test_a_clock_that_jumps_forward_makes_one_backup_due() -> None:
    newest = make_set(NOW - timedelta(minutes=5), sequence=3)
    assert not backup_schedule(spec(), (newest,), NOW).due
    jumped = backup_schedule(spec(), (newest,), NOW + timedelta(days=200))
    assert jumped.due and not jumped.fresh


def test_sets_it_cannot_vouch_for_do_not_count() -> None:
    real = make_set(NOW - timedelta(hours=3), sequence=1)
    planted = make_set(NOW - timedelta(minutes=1), sequence=99, trigger="x")
    authenticity = {real.name: None, planted.name: "the manifest is not valid JSON"}
    schedule = backup_schedule(spec(), (real, planted), NOW, authenticity)
    assert schedule.due and schedule.newest == real.name
    assert set_to_verify(spec(), (real, planted), frozenset(), authenticity) == real.name


def test_other_stores_and_incomplete_sets_do_not_count() -> None:
    sets = (make_set(NOW, store="gdrive"), make_set(NOW, complete=False), make_set(NOW, stack="other"))
    assert backup_schedule(spec(), sets, NOW).due


@given(st.lists(st.tuples(st.integers(-86400 * 30, 7 * 86400), st.integers(1, 50)), max_size=12))
def test_the_set_to_verify_is_the_newest_complete_one_unless_already_tried(
    raw: list[tuple[int, int]],
) -> None:
    sets = tuple(
        make_set(NOW - timedelta(seconds=o), sequence=n, trigger=f"t{i}") for i, (o, n) in enumerate(raw)
    )
    chosen = set_to_verify(spec(), sets, frozenset())
    if not sets:
        assert chosen is None
        return
    newest = max(sets, key=order_key)  # even when it is dated ahead of the clock
    assert chosen == newest.name
    assert set_to_verify(spec(), sets, frozenset({newest.name})) is None
    assert set_to_verify(spec(daemon={"verify_new_sets": False}), sets, frozenset()) is None


def observed(mem_available: int, tmpfs_size: int | None = None, tmpfs_used: int = 0) -> ObservedState:
    filesystem = Filesystem("/dev/shm/x", "tmpfs", tmpfs_size, tmpfs_used) if tmpfs_size else None
    return ObservedState(
        {}, RamRoot("/dev/shm/x", True, filesystem, True), HostObservation(10**10, mem_available, True)
    )


def test_headroom_is_the_smaller_of_host_memory_and_tmpfs_space() -> None:
    gib = 1024**3
    tight = spec(ram={"min_headroom": "1GiB"})
    assert ram_headroom(tight, observed(8 * gib)).ok
    verdict = ram_headroom(tight, observed(8 * gib, tmpfs_size=4 * gib, tmpfs_used=3.5 * gib))  # type: ignore[arg-type]
    assert not verdict.ok and "tmpfs" in verdict.message and verdict.available == gib // 2
    host_short = ram_headroom(tight, observed(gib // 4, tmpfs_size=4 * gib))
    assert not host_short.ok and "MemAvailable" in host_short.message
    assert ram_headroom(spec(mode="disk", ram={"min_headroom": "1GiB"}), observed(1)).ok


@given(st.integers(min_value=1, max_value=40))
def test_backoff_grows_is_capped_and_resets(failures: int) -> None:
    backoff = Backoff(cap_seconds=30)
    delays = [backoff.failed() for _ in range(failures)]
    assert all(0 < d <= 30 for d in delays)
    assert delays[0] <= 4  # 2 s initial + up to 2 s jitter
    assert backoff.succeeded() is True and backoff.failures == 0 and backoff.succeeded() is False


def test_metrics_render_in_the_prometheus_text_format() -> None:
    snapshot = Snapshot()
    snapshot.set("reconciler_backup_age_seconds", 12.5, "Age of the newest backup set.")
    snapshot.add("reconciler_reconcile_total", 1, "Passes.")
    snapshot.add("reconciler_reconcile_total", 1, "Passes.")
    snapshot.set_labelled("reconciler_mode", {"mode": "ram", "stack": "s"}, 1, "Current mode.")
    text = snapshot.render()
    assert "# TYPE reconciler_reconcile_total counter\nreconciler_reconcile_total 2\n" in text
    assert "reconciler_backup_age_seconds 12.5\n" in text
    assert 'reconciler_mode{mode="ram",stack="s"} 1\n' in text
    snapshot.set("reconciler_backup_age_seconds", None, "gone")
    assert "backup_age" not in snapshot.render()
