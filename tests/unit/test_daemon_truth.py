"""What ends a stall, and what the metrics snapshot renders at scrape time (pure, hypothesis)."""

from __future__ import annotations

import time
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from reconciler.daemon.metrics import Snapshot
from reconciler.daemon.stall import blocker_key, world_key
from reconciler.plan import observed as o

TMPFS = o.Filesystem("/dev/shm", "tmpfs", size_bytes=1 << 30, used_bytes=0)


def world(
    running: bool = True, pid: int = 100, size: int = 1000, used: int = 0, free: int = 1 << 30
) -> o.ObservedState:
    ram = o.DataDir(
        "/dev/shm/s/postgres",
        exists=True,
        initialized=True,
        filesystem=replace(TMPFS, used_bytes=used),
        size_bytes=size,
    )
    postgres = o.ServiceObservation(
        "postgres",
        running=running,
        pid=pid if running else None,
        port=5432 if running else None,
        data_dir=ram.path if running else None,
        ram=ram,
        disk=o.DataDir("/srv/postgres"),
        size_bytes=size,
    )
    return o.ObservedState(
        {"postgres": postgres},
        o.RamRoot("/dev/shm/s", exists=True, filesystem=replace(TMPFS, used_bytes=used)),
        o.HostObservation(mem_total=2 << 30, mem_available=free),
    )


@given(st.integers(0, 1 << 40), st.integers(0, 1 << 30), st.integers(0, 1 << 33))
def test_writes_and_memory_figures_are_not_a_change_of_the_world(size: int, used: int, free: int) -> None:
    assert world_key(world(size=size, used=used, free=free)) == world_key(world())


@given(st.integers(1, 1 << 22))
def test_a_service_that_died_or_was_restarted_is_a_change(pid: int) -> None:
    assert world_key(world(running=False)) != world_key(world())
    assert (world_key(world(pid=pid)) == world_key(world())) == (pid == 100)


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=2, max_size=2))
def test_a_blocker_is_the_same_news_whatever_its_figures(figures: list[float]) -> None:
    first, second = (f"the data needs {x:.1f} GiB, the tmpfs has 3 GiB free" for x in figures)
    assert blocker_key([first]) == blocker_key([second])
    assert blocker_key([first]) != blocker_key(["data found in both locations"])


def age(snapshot: Snapshot) -> float:
    line = next(x for x in snapshot.render().splitlines() if x.startswith("reconciler_backup_age_seconds "))
    return float(line.split()[1])


def test_the_backup_age_is_computed_at_every_scrape() -> None:
    snapshot = Snapshot()
    snapshot.set_age("reconciler_backup_age_seconds", time.time() - 100, "Age of the newest backup set.")
    first = age(snapshot)
    assert 100 <= first < 160
    snapshot.set_age("reconciler_backup_age_seconds", time.time() - 1000, "Age of the newest backup set.")
    assert age(snapshot) >= 1000
    snapshot.set_age("reconciler_backup_age_seconds", None, "gone")
    assert "backup_age" not in snapshot.render()


def test_per_service_series_are_kept_side_by_side() -> None:
    snapshot = Snapshot()
    snapshot.set_labelled("reconciler_service_up", {"service": "postgres"}, 1, "Up.", only=False)
    snapshot.set_labelled("reconciler_service_up", {"service": "redis"}, 0, "Up.", only=False)
    text = snapshot.render()
    assert 'reconciler_service_up{service="postgres"} 1\n' in text
    assert 'reconciler_service_up{service="redis"} 0\n' in text
    assert text.count("# TYPE reconciler_service_up gauge") == 1
