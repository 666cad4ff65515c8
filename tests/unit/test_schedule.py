"""When the daemon owes a backup, which set it verifies, and the RAM headroom verdict (pure, hypothesis)."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from reconciler.daemon.loop import Backoff
from reconciler.daemon.metrics import Snapshot
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
        make_set(NOW - timedelta(seconds=offset), complete=complete[i] if i < len(complete) else True)
        for i, offset in enumerate(offsets)
    )
    schedule = backup_schedule(spec(), sets, NOW)
    counted = [s for s in sets if s.complete and s.created <= NOW + CLOCK_SKEW]
    if not counted:
        assert schedule.due and schedule.newest is None and not schedule.fresh
        return
    newest = max(s.created for s in counted)
    assert schedule.due == (NOW - newest >= timedelta(hours=1))
    assert schedule.fresh == (NOW - newest <= timedelta(hours=2))
    assert schedule.next_at == (NOW if schedule.due else newest + timedelta(hours=1))
    assert schedule.next_at >= NOW


def test_sets_from_the_future_do_not_silence_backups() -> None:
    future = make_set(NOW + timedelta(days=2))
    schedule = backup_schedule(spec(), (future,), NOW)
    assert schedule.due and "future" in schedule.reason


def test_other_stores_and_incomplete_sets_do_not_count() -> None:
    sets = (make_set(NOW, store="gdrive"), make_set(NOW, complete=False), make_set(NOW, stack="other"))
    assert backup_schedule(spec(), sets, NOW).due


@given(ages)
def test_the_set_to_verify_is_the_newest_complete_one_unless_already_tried(offsets: list[int]) -> None:
    sets = tuple(make_set(NOW - timedelta(seconds=abs(o))) for o in offsets)
    chosen = set_to_verify(spec(), sets, frozenset(), NOW)
    if not sets:
        assert chosen is None
        return
    newest = max(sets, key=lambda s: (s.created, s.name))
    assert chosen == newest.name
    assert set_to_verify(spec(), sets, frozenset({newest.name}), NOW) is None
    assert set_to_verify(spec(daemon={"verify_new_sets": False}), sets, frozenset(), NOW) is None


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
