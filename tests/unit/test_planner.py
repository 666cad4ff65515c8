"""The planner: table-driven cases and hypothesis properties over generated worlds."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.plan.actions import (
    EnsureDatabase,
    InitService,
    PrepareRamRoot,
    ResizeRamRoot,
    RestartService,
    StartService,
    SwitchMode,
    simulate_all,
)
from reconciler.plan.observed import (
    DataDir,
    Filesystem,
    HostObservation,
    ObservedState,
    RamRoot,
    ServiceObservation,
)
from reconciler.plan.planner import plan, plan_down
from reconciler.spec.loader import parse_state
from reconciler.spec.model import StateSpec

NOW = datetime(2026, 11, 21, 16, 0, tzinfo=UTC)
GIB = 1024**3
TMPFS = Filesystem("/dev/shm", "tmpfs", 12 * GIB, 0)
EXT4 = Filesystem("/", "ext4", 200 * GIB, 10 * GIB)


def spec(
    mode: str = "ram", mount: str = "never", services: str = "both", size: str = "25%", extra: str = ""
) -> StateSpec:
    text = f"""
version: 1
stack: demo
mode: {mode}
services:
"""
    if services in ("both", "postgres"):
        text += "  postgres: {database: app, user: app, port: 5433, disk_dir: /srv/pg}\n"
    if services in ("both", "redis"):
        text += "  redis: {port: 6380, disk_dir: /srv/redis}\n"
    text += f"ram: {{path: /dev/shm/rc/demo, mount: {mount}, tmpfs_size: '{size}'}}\n"
    return parse_state(text + extra, "state.yaml", "/srv")


def fresh_world(desired: StateSpec, is_root: bool = False) -> ObservedState:
    services = {
        name: ServiceObservation(
            name=name,
            ram=DataDir(desired.ram_dir(name), filesystem=TMPFS),
            disk=DataDir(desired.disk_dir(name), filesystem=EXT4),
        )
        for name in desired.services.configured()
    }
    return ObservedState(
        services, RamRoot(desired.ram_root, filesystem=TMPFS), HostObservation(24 * GIB, 20 * GIB, is_root)
    )


def kinds(actions: tuple[object, ...]) -> list[str]:
    return [type(a).__name__ for a in actions]


# -- table-driven ---------------------------------------------------------------------------------


def test_first_start_in_ram_mode() -> None:
    desired = spec()
    result = plan(desired, fresh_world(desired), NOW)
    assert kinds(result.actions) == [
        "PrepareRamRoot",
        "InitService",
        "StartService",
        "EnsureDatabase",
        "InitService",
        "StartService",
    ]
    assert result.summary() == "Plan: 6 to add, 0 to change, 0 to remove."
    assert result.actions[1] == InitService("postgres", "/dev/shm/rc/demo/postgres", "ram")


def test_root_mounts_a_dedicated_tmpfs_with_the_size_limit() -> None:
    desired = spec(mount="auto", size="4GiB")
    first = plan(desired, fresh_world(desired, is_root=True), NOW).actions[0]
    assert first == PrepareRamRoot("/dev/shm/rc/demo", True, str(4 * GIB), 4 * GIB)


def test_disk_mode_needs_no_ram_root() -> None:
    desired = spec(mode="disk")
    result = plan(desired, fresh_world(desired), NOW)
    assert "PrepareRamRoot" not in kinds(result.actions)
    assert result.actions[0] == InitService("postgres", "/srv/pg", "disk")


def test_converged_world_needs_nothing() -> None:
    desired = spec()
    world = simulate_all(fresh_world(desired), plan(desired, fresh_world(desired), NOW).actions)
    assert plan(desired, world, NOW).in_sync
    assert plan(desired, world, NOW).summary() == "No changes: the stack is in sync."


def test_dead_process_is_restarted_and_says_so() -> None:
    desired = spec()
    world = simulate_all(fresh_world(desired), plan(desired, fresh_world(desired), NOW).actions)
    pg = world.services["postgres"]
    world = world.with_service(replace(pg, running=False, pid=4242, port=None, data_dir=None, died=True))
    result = plan(desired, world, NOW)
    assert result.actions[0] == StartService(
        "postgres", desired.ram_dir("postgres"), 5433, "process 4242 died"
    )
    assert isinstance(result.actions[1], EnsureDatabase) and not result.actions[1].known_missing
    assert result.warnings[0] == "postgres was not running: its process had died"


def test_port_change_restarts() -> None:
    desired = spec()
    world = simulate_all(fresh_world(desired), plan(desired, fresh_world(desired), NOW).actions)
    world = world.with_service(replace(world.services["redis"], port=6379))
    assert plan(desired, world, NOW).actions == (
        RestartService("redis", desired.ram_dir("redis"), 6380, "listening on 6379, want 6380"),
    )


def test_mode_change_with_data_is_one_journaled_switch() -> None:
    ram = spec("ram")
    world = simulate_all(fresh_world(ram), plan(ram, fresh_world(ram), NOW).actions)
    pg, rd = world.services["postgres"], world.services["redis"]
    world = world.with_service(replace(pg, ram=replace(pg.ram, size_bytes=40 * 1024**2)))
    world = world.with_service(replace(rd, ram=replace(rd.ram, size_bytes=2 * 1024**2)))
    result = plan(spec("disk"), world, NOW)
    assert [type(a).__name__ for a in result.actions] == ["SwitchMode"]
    switch = result.actions[0]
    assert isinstance(switch, SwitchMode)
    assert (switch.from_mode, switch.to_mode, switch.services) == ("ram", "disk", ("postgres", "redis"))
    assert switch.targets == ("/srv/pg", "/srv/redis") and not switch.keep_old_copy
    assert switch.data_bytes == 42 * 1024**2
    assert "expected write downtime" in switch.describe()
    assert switch.step_names()[:5] == ["preflight", "backup", "precopy", "drain", "fingerprint"]
    assert "online, before draining" in switch.steps()[1]
    assert "while the services still run" in switch.steps()[2]
    drained = replace(switch, backup_while_drained=True)
    assert drained.step_names()[:5] == ["preflight", "precopy", "drain", "backup", "fingerprint"]
    after = simulate_all(world, result.actions)
    assert plan(spec("disk"), after, NOW).in_sync


def test_repairs_that_the_switch_needs_come_before_it() -> None:
    # The switch starts with a backup of the running services: a dead Redis is started where its data
    # is, and a missing application database is created, before the switch, not after it.
    ram = spec("ram")
    world = simulate_all(fresh_world(ram), plan(ram, fresh_world(ram), NOW).actions)
    pg, rd = world.services["postgres"], world.services["redis"]
    world = world.with_service(replace(pg, roles=frozenset({"postgres"}), databases=frozenset({"postgres"})))
    world = world.with_service(replace(rd, running=False, pid=4242, died=True, data_dir=None, port=None))
    result = plan(spec("disk"), world, NOW)
    assert kinds(result.actions) == ["EnsureDatabase", "StartService", "SwitchMode"]
    start = result.actions[1]
    assert isinstance(start, StartService) and start.data_dir == ram.ram_dir("redis")
    after = simulate_all(world, result.actions)
    assert plan(spec("disk"), after, NOW).in_sync


def test_switch_into_ram_is_refused_when_the_data_does_not_fit() -> None:
    disk = spec("disk", services="postgres")
    world = simulate_all(fresh_world(disk), plan(disk, fresh_world(disk), NOW).actions)
    pg = world.services["postgres"]
    world = world.with_service(replace(pg, disk=replace(pg.disk, size_bytes=20 * GIB)))
    result = plan(spec("ram", services="postgres"), world, NOW)
    assert result.actions == ()
    assert "does not fit the tmpfs" in result.blockers[0] and "20 GiB" in result.blockers[0]
    world = replace(world, host=replace(world.host, mem_available=2 * GIB))
    world = world.with_service(replace(pg, disk=replace(pg.disk, size_bytes=GIB)))
    result = plan(spec("ram", services="postgres"), world, NOW)
    assert "below ram.min_headroom" in result.blockers[0]


def test_an_interrupted_operation_is_resumed_before_anything_else() -> None:
    from reconciler.plan.observed import OperationObservation

    desired = spec("disk")
    world = replace(
        fresh_world(desired),
        operation=OperationObservation("op1", "mode switch", "ram", "disk", "copy", False),
    )
    result = plan(desired, world, NOW)
    assert [type(a).__name__ for a in result.actions] == ["ResumeOperation"]
    assert "changes to state.yaml are planned after it" in result.warnings[0]


def test_data_in_both_places_is_refused() -> None:
    desired = spec("ram", services="postgres")
    world = fresh_world(desired)
    pg = world.services["postgres"]
    world = world.with_service(
        replace(
            pg,
            ram=replace(pg.ram, exists=True, initialized=True),
            disk=replace(pg.disk, exists=True, initialized=True),
        )
    )
    result = plan(desired, world, NOW)
    assert result.actions == () and "refusing to guess" in result.blockers[0]


def test_a_stale_copy_does_not_count_as_data() -> None:
    desired = spec("ram", services="postgres")
    world = fresh_world(desired)
    pg = world.services["postgres"]
    world = world.with_service(replace(pg, disk=replace(pg.disk, exists=True, initialized=True, stale=True)))
    result = plan(desired, world, NOW)
    assert any(isinstance(a, InitService) for a in result.actions)


def test_foreign_directory_is_never_initialised() -> None:
    desired = spec("disk", services="postgres")
    world = fresh_world(desired)
    pg = world.services["postgres"]
    world = world.with_service(replace(pg, disk=replace(pg.disk, exists=True, foreign=True)))
    result = plan(desired, world, NOW)
    assert result.actions == () and "refusing to touch it" in result.blockers[0]


def test_ram_path_not_on_tmpfs_is_refused() -> None:
    desired = spec()
    world = replace(fresh_world(desired), ram_root=RamRoot(desired.ram_root, filesystem=EXT4))
    result = plan(desired, world, NOW)
    assert result.actions == () and "not on a tmpfs" in result.blockers[0]


def test_never_mount_over_existing_ram_data() -> None:
    desired = spec(mount="always")
    world = fresh_world(desired)
    pg = world.services["postgres"]
    world = world.with_service(replace(pg, ram=replace(pg.ram, exists=True, initialized=True)))
    result = plan(desired, world, NOW)
    assert result.actions == () and "would hide that data" in result.blockers[0]


def test_a_service_running_from_its_disk_dir_does_not_block_mounting_the_ram_root() -> None:
    # Compose started the containers on their disk directories; RAM mode is wanted: the RAM root holds
    # nothing, so the tmpfs is mounted and the data moves there by a switch, not a blocker about data
    # that is not there.
    desired = spec(mount="always")
    world = fresh_world(desired, is_root=True)
    for name in ("postgres", "redis"):
        svc = world.services[name]
        world = world.with_service(
            replace(
                svc,
                running=True,
                pid=100,
                port=desired.port(name),
                data_dir=desired.disk_dir(name),
                disk=replace(svc.disk, exists=True, initialized=True),
            )
        )
    result = plan(desired, world, NOW)
    assert not any("would hide that data" in b for b in result.blockers), result.blockers
    assert "PrepareRamRoot" in kinds(result.actions)


def test_tmpfs_resize_and_refusal_to_shrink_below_use() -> None:
    desired = spec(mount="always", size="2GiB")
    world = simulate_all(fresh_world(desired), plan(desired, fresh_world(desired), NOW).actions)
    bigger = spec(mount="always", size="3GiB")
    assert plan(bigger, world, NOW).actions == (
        ResizeRamRoot("/dev/shm/rc/demo", str(3 * GIB), 3 * GIB, 2 * GIB),
    )
    fs = world.ram_root.filesystem
    assert fs is not None
    full = replace(world, ram_root=replace(world.ram_root, filesystem=replace(fs, used_bytes=int(1.5 * GIB))))
    result = plan(spec(mount="always", size="1GiB"), full, NOW)
    assert result.actions == () and "cannot shrink" in result.blockers[0]


def test_unreachable_disk_dir_is_refused() -> None:
    desired = spec("disk", services="redis")
    world = fresh_world(desired)
    rd = world.services["redis"]
    world = world.with_service(replace(rd, disk=replace(rd.disk, reachable=False)))
    assert "cannot reach" in plan(desired, world, NOW).blockers[0]


def test_down_stops_running_services_in_reverse_order() -> None:
    desired = spec()
    world = simulate_all(fresh_world(desired), plan(desired, fresh_world(desired), NOW).actions)
    result = plan_down(desired, world)
    assert [a.service for a in result.actions] == ["redis", "postgres"]
    assert all(a.marker == "-" and not a.destroys_data for a in result.actions)
    assert "survives `down` but not a reboot" in result.warnings[0]


# -- properties over generated worlds --------------------------------------------------------------

filesystems = st.sampled_from([TMPFS, EXT4, None])


@st.composite
def data_dirs(draw: st.DrawFn, path: str) -> DataDir:
    exists = draw(st.booleans())
    initialized = exists and draw(st.booleans())
    foreign = exists and not initialized and draw(st.booleans())
    return DataDir(path, exists, initialized, foreign, draw(st.booleans()), draw(filesystems))


@st.composite
def worlds(draw: st.DrawFn) -> tuple[StateSpec, ObservedState]:
    desired = spec(
        mode=draw(st.sampled_from(["ram", "disk"])),
        mount=draw(st.sampled_from(["auto", "always", "never"])),
        services=draw(st.sampled_from(["both", "postgres", "redis"])),
        size=draw(st.sampled_from(["25%", "1GiB", "8GiB"])),
        extra=draw(st.sampled_from(["", "backup: {encryption: none}\n"])),  # backups possible or not
    )
    services = {}
    for name in desired.services.configured():
        ram = draw(data_dirs(desired.ram_dir(name)))
        disk = draw(data_dirs(desired.disk_dir(name)))
        running = draw(st.booleans())
        where = draw(st.sampled_from([ram, disk])) if running else None
        services[name] = ServiceObservation(
            name=name,
            running=running,
            pid=123 if running else draw(st.sampled_from([None, 99])),
            port=draw(st.sampled_from([desired.port(name), 7000])) if running else None,
            data_dir=where.path if where else None,
            died=not running and draw(st.booleans()),
            ram=replace(ram, initialized=True, exists=True, foreign=False) if where is ram else ram,
            disk=replace(disk, initialized=True, exists=True, foreign=False) if where is disk else disk,
            databases=draw(st.sampled_from([None, frozenset(), frozenset({"app"})])) if running else None,
            roles=draw(st.sampled_from([None, frozenset(), frozenset({"app"})])) if running else None,
        )
    mounted = draw(st.booleans())
    root_fs = (
        replace(TMPFS, mount_point=desired.ram_root, size_bytes=draw(st.sampled_from([GIB, 6 * GIB])))
        if mounted
        else draw(filesystems)
    )
    root = RamRoot(
        desired.ram_root, exists=mounted or draw(st.booleans()), filesystem=root_fs, dedicated_mount=mounted
    )
    host = HostObservation(24 * GIB, draw(st.integers(0, 24 * GIB)), draw(st.booleans()))
    from reconciler.plan.backupsets import BackupSet, StoredFile
    from reconciler.plan.backupsets import set_name as _name
    from reconciler.plan.observed import BackupsObservation

    sets = []
    rejected = {}
    for hours, complete, bad in draw(
        st.lists(st.tuples(st.integers(0, 24 * 60), st.booleans(), st.booleans()), max_size=12)
    ):
        created = NOW - timedelta(hours=hours)
        name = _name("demo", created, "scheduled")
        files = (
            (StoredFile(f"{name}.manifest.json", 1),)
            if complete
            else (StoredFile(f"{name}.redis.rdb.zst", 1),)
        )
        sets.append(BackupSet(name, "demo", created, "scheduled", "local", files))
        if bad:
            rejected[("local", name)] = "corrupt"
    backups = BackupsObservation(tuple({s.name: s for s in sets}.values()), rejected=rejected)
    return desired, ObservedState(services, root, host, backups)


@settings(max_examples=400)
@given(worlds(), st.booleans())
def test_the_plan_converges_in_one_apply(world: tuple[StateSpec, ObservedState], allow_empty: bool) -> None:
    desired, observed = world
    first = plan(desired, observed, NOW, allow_empty)
    if first.blockers:
        assert first.actions == (), "a blocked plan must change nothing"
        return
    after = simulate_all(observed, first.actions)
    second = plan(desired, after, NOW, allow_empty)
    # what apply cannot heal (RAM headroom under ram.on_pressure: warn) stays, and nothing else
    assert not second.actions and not second.blockers, (
        f"not converged: {[a.describe() for a in second.actions]} {second.blockers}"
    )
    assert all(problem.startswith("RAM headroom: ") for problem in second.unhealable)


@settings(max_examples=400)
@given(worlds())
def test_no_action_destroys_data_without_a_backup_before_it(world: tuple[StateSpec, ObservedState]) -> None:
    desired, observed = world
    backed_up: set[str] = set()
    for action in plan(desired, observed, NOW).actions + plan_down(desired, observed).actions:
        if action.kind.startswith("Backup") and action.service:
            backed_up.add(action.service)
        if action.destroys_data:
            assert action.service in backed_up, f"{action.describe()} without a backup first"


@settings(max_examples=400)
@given(worlds())
def test_never_initialises_where_data_or_foreign_files_are(world: tuple[StateSpec, ObservedState]) -> None:
    desired, observed = world
    for action in plan(desired, observed, NOW).actions:
        if isinstance(action, InitService):
            from reconciler.plan.selection import select_restore

            assert (
                select_restore(observed.backups.sets, observed.backups.rejected, NOW, "demo").chosen is None
            ), "never start empty while a usable backup exists"
            service = observed.services[action.service_name]
            assert not service.location(desired.mode).foreign
            other = service.location("disk" if desired.mode == "ram" else "ram")
            assert not other.initialized, "an empty start while the data sits in the other mode"
        if isinstance(action, PrepareRamRoot) and action.mount:
            assert not any(s.ram.initialized for s in observed.services.values())


@given(worlds())
def test_planning_is_deterministic(world: tuple[StateSpec, ObservedState]) -> None:
    desired, observed = world
    assert plan(desired, observed, NOW) == plan(desired, observed, NOW)


@settings(max_examples=300)
@given(worlds(), st.data())
def test_a_restore_that_did_not_complete_is_never_in_sync(
    world: tuple[StateSpec, ObservedState], data: st.DataObject
) -> None:
    """Issue 12 item 1: a data directory an interrupted restore left behind (its marker says
    "restoring") is restored again, even while a server runs from it; it is never served as it is."""
    desired, observed = world
    name = data.draw(st.sampled_from(sorted(desired.services.configured())))
    service = observed.services[name]
    target = replace(
        service.location(desired.mode), exists=True, initialized=False, foreign=False, restore_incomplete=True
    )
    running = data.draw(st.booleans())
    service = replace(
        service,
        **({"ram": target} if desired.mode == "ram" else {"disk": target}),  # type: ignore[arg-type]
        running=running,
        pid=123 if running else None,
        port=desired.port(name) if running else None,
        data_dir=target.path if running else None,
    )
    result = plan(desired, observed.with_service(service), NOW)
    assert not result.in_sync
    from reconciler.plan.actions import RestoreFromBackup
    from reconciler.plan.selection import select_restore

    usable = select_restore(observed.backups.sets, observed.backups.rejected, NOW, "demo").chosen
    restores = [a for a in result.actions if isinstance(a, RestoreFromBackup)]
    other = service.location("disk" if desired.mode == "ram" else "ram")
    if usable is not None and not result.blockers and not (other.initialized and not other.stale):
        assert restores and name in restores[0].services


def test_the_switch_estimate_includes_the_drained_apps_stop_timeout_on_docker() -> None:
    text = """
version: 1
stack: demo
runtime: docker
mode: disk
services:
  postgres: {database: app, user: app, port: 5433, disk_dir: /srv/pg}
drain: {containers: [demo-app], stop_timeout: 25s}
ram: {path: /dev/shm/rc/demo, mount: never}
"""
    disk = parse_state(text, "state.yaml", "/srv")
    ram = parse_state(text.replace("mode: disk", "mode: ram"), "state.yaml", "/srv")
    world = simulate_all(fresh_world(disk), plan(disk, fresh_world(disk), NOW).actions)
    switch = plan(ram, world, NOW).actions[-1]
    assert isinstance(switch, SwitchMode) and switch.drain_stop_timeout_seconds == 25
    assert f"up to {switch.expected_downtime_seconds + 25:.1f} s" in switch.describe()
    assert "drain.stop_timeout" in switch.describe()
