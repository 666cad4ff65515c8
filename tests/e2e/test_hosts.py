"""Host conditions: one state.yaml in one git repository, two checkouts standing for two machines.

Each "machine" is a real process with its own hostname: ``unshare --uts`` gives the reconciler a UTS
namespace of its own and ``hostname`` sets it there (no mock: the reconciler reads ``uname -n`` as on
a Pi). File and environment conditions are real files and real variables. Both checkouts use the same
ports and RAM root, as two Pis would; they never run the same service at once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RAM_BASE, TEST_BASE, Stack
from tests.e2e.test_daemon import RunningDaemon, daemons
from tests.e2e.test_daemon_gitops import git

pytestmark = pytest.mark.e2e
__all__ = ["daemons"]


def as_host(
    stack: Stack, hostname: str, *args: str, check: int | None = 0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``reconciler -f <checkout>/state.yaml ARGS`` on a machine called ``hostname``."""
    stack.command_prefix = _in_uts(hostname, [])
    try:
        return stack.cli(*args, check=check, env=env)
    finally:
        stack.command_prefix = []


def _in_uts(hostname: str, command: list[str]) -> list[str]:
    return ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname, *command]


def status_as(stack: Stack, hostname: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    return dict(json.loads(as_host(stack, hostname, "status", "-o", "json", env=env).stdout))


@pytest.fixture
def second(stack: Stack) -> Iterator[Stack]:
    """A second checkout (a second machine) of the repository in ``stack.dir``; made by ``clone``."""
    directory = TEST_BASE / uuid.uuid4().hex[:10]
    other = Stack(directory, RAM_BASE / directory.name)
    try:
        yield other
    finally:
        other.teardown()


def one_repository(stack: Stack, second: Stack, document: dict[str, Any]) -> None:
    stack.write(document)
    git(stack.dir, "init", "-q")
    git(stack.dir, "add", "state.yaml")
    git(stack.dir, "commit", "-qm", "one state.yaml for two machines")
    subprocess.run(["git", "clone", "-q", str(stack.dir), str(second.dir)], check=True)
    os.chmod(second.dir, 0o755)
    assert second.state_file.read_bytes() == stack.state_file.read_bytes()


def pid_of(status: dict[str, Any], service: str) -> int | None:
    svc = status["services"].get(service) or {}
    return svc.get("pid") if svc.get("running") else None


def test_the_stack_runs_on_the_machine_its_hostname_names_and_nowhere_else(
    stack: Stack, second: Stack
) -> None:
    document = stack.default_document("ram")
    document["hosts"] = {"hostname": ["pi-KITCHEN", "kitchen-*"]}
    one_repository(stack, second, document)

    # The other machine: plan says why, apply does nothing at all, status and hand-run commands say so.
    plan = as_host(second, "pi-attic", "plan", check=0)
    assert "not for this host: hostname 'pi-attic' matches none of pi-KITCHEN, kitchen-*" in plan.stdout
    assert "No changes: the stack is not for this host." in plan.stdout
    assert json.loads(as_host(second, "pi-attic", "plan", "-o", "json").stdout)["actions"] == []
    applied = as_host(second, "pi-attic", "apply", check=0)
    assert "not for this host" in applied.stdout
    assert not (second.dir / ".reconciler").exists() and not (second.dir / "data").exists()
    assert not (stack.ram_root / "postgres").exists()
    refused = as_host(second, "pi-attic", "backup", check=1)
    assert "not for this host" in refused.stderr and "'pi-attic'" in refused.stderr
    status = status_as(second, "pi-attic")
    assert status["forThisHost"]["matches"] is False and "'pi-attic'" in status["forThisHost"]["reason"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "NotForThisHost", status["conditions"]
    assert "not for this host" in as_host(second, "pi-attic", "status").stdout

    # The machine it is for (the short name of an FQDN, any case): it starts.
    as_host(stack, "PI-Kitchen.lan", "apply", check=0)
    running = status_as(stack, "pi-kitchen")
    assert running["in_sync"] and running["forThisHost"]["matches"], running
    pg = pid_of(running, "postgres")
    assert pg is not None and pid_of(running, "redis") is not None

    # That machine is renamed: it no longer matches. Nothing is stopped or deleted; plan says so.
    plan = as_host(stack, "pi-renamed", "plan", check=0)
    assert "not for this host: hostname 'pi-renamed'" in plan.stdout
    assert "left alone" in plan.stdout
    assert json.loads(as_host(stack, "pi-renamed", "plan", "-o", "json").stdout)["actions"] == []
    as_host(stack, "pi-renamed", "apply", check=0)
    still = status_as(stack, "pi-renamed")
    assert pid_of(still, "postgres") == pg and pid_of(still, "redis") is not None, still
    assert (stack.ram_root / "postgres" / "PG_VERSION").exists()
    # A human stops them with down, which does not ask the conditions.
    as_host(stack, "pi-renamed", "down", check=0)
    assert pid_of(status_as(stack, "pi-renamed"), "postgres") is None


def test_services_split_across_two_machines_by_hostname_file_and_environment(
    stack: Stack, second: Stack
) -> None:
    marker = TEST_BASE / f"cache-host-{uuid.uuid4().hex[:8]}"
    document = stack.default_document("ram")
    document["services"]["postgres"]["hosts"] = {"hostname": ["pi-kitchen"]}
    document["services"]["redis"]["hosts"] = {"file_exists": str(marker), "env": {"RECONCILER_ROLE": "cache"}}
    one_repository(stack, second, document)
    role = {"RECONCILER_ROLE": "cache"}
    try:
        # Kitchen: postgres only; redis is named, and why, with the actual hostname.
        plan = as_host(stack, "pi-kitchen", "plan", check=2)
        assert (
            f"redis is not for this host ({marker} does not exist; $RECONCILER_ROLE is not set" in plan.stdout
        )
        assert "start postgres" in plan.stdout and "start redis" not in plan.stdout
        as_host(stack, "pi-kitchen", "apply", check=0)
        kitchen = status_as(stack, "pi-kitchen")
        assert pid_of(kitchen, "postgres") is not None and "redis" not in kitchen["services"], kitchen
        assert kitchen["forThisHost"]["skippedServices"].keys() == {"redis"}
        as_host(stack, "pi-kitchen", "backup", check=0)
        kitchen_sets = [p.name for p in (stack.dir / "data" / "backups").iterdir()]
        assert any(".postgres." in n for n in kitchen_sets) and not any(".redis." in n for n in kitchen_sets)

        # Attic, with the marker file but without the variable: neither service, the stack idles.
        marker.touch()
        plan = as_host(second, "pi-attic", "plan", check=0)
        assert "none of its services is for this host" in plan.stdout
        assert "$RECONCILER_ROLE is not set (wanted 'cache')" in plan.stdout
        as_host(second, "pi-attic", "apply", check=0)
        assert not (second.dir / ".reconciler").exists()

        # Attic with the variable (a wrong value first: never printed): redis only.
        wrong = as_host(second, "pi-attic", "plan", check=0, env={"RECONCILER_ROLE": "secret-xyz"})
        assert "set to another value than 'cache'" in wrong.stdout and "secret-xyz" not in wrong.stdout
        as_host(second, "pi-attic", "apply", check=0, env=role)
        attic = status_as(second, "pi-attic", env=role)
        assert pid_of(attic, "redis") is not None and "postgres" not in attic["services"], attic
        assert attic["forThisHost"]["skippedServices"].keys() == {"postgres"}
        as_host(second, "pi-attic", "backup", check=0, env=role)
        attic_sets = [p.name for p in (second.dir / "data" / "backups").iterdir()]
        assert any(".redis." in n for n in attic_sets) and not any(".postgres." in n for n in attic_sets)
        # Kitchen's postgres was not touched by any of this.
        assert pid_of(status_as(stack, "pi-kitchen"), "postgres") == pid_of(kitchen, "postgres")

        # The marker goes away on the attic: redis is no longer for it, and it is left running.
        marker.unlink()
        plan = as_host(second, "pi-attic", "plan", check=0, env=role)
        assert "not for this host" in plan.stdout and "left alone" in plan.stdout
        as_host(second, "pi-attic", "apply", check=0, env=role)
        assert pid_of(status_as(second, "pi-attic", env=role), "redis") == pid_of(attic, "redis")
    finally:
        marker.unlink(missing_ok=True)


def test_a_split_host_restores_only_from_sets_that_hold_its_service_and_rotates_only_its_own(
    stack: Stack, second: Stack
) -> None:
    """One store shared by both machines (a NAS, or one Drive folder): after a reboot the kitchen
    restores postgres from its own set, not from the attic's newer redis-only set, and its retention
    (keep_last: 1) never deletes the attic's sets."""
    shared = TEST_BASE / f"shared-store-{uuid.uuid4().hex[:8]}"
    document = stack.default_document("ram")
    document["services"]["postgres"]["hosts"] = {"hostname": ["pi-kitchen"]}
    document["services"]["redis"]["hosts"] = {"hostname": ["pi-attic"]}
    document["backup"] = {"encryption": "none", "stores": {"local": {"path": str(shared)}}}
    document["backup"]["retention"] = {"keep_last": 1}
    document["daemon"] = {"verify_new_sets": False, "metrics_port": None}  # retention acts on every set
    one_repository(stack, second, document)
    try:
        as_host(stack, "pi-kitchen", "apply", check=0)
        as_host(stack, "pi-kitchen", "backup", check=0)
        as_host(second, "pi-attic", "apply", check=0)
        as_host(second, "pi-attic", "backup", check=0)
        as_host(second, "pi-attic", "backup", check=0)
        attic_sets = sorted(p.name.split(".")[0] for p in shared.glob("*.redis.*"))
        assert len(attic_sets) == 3  # the first set the attic's apply took, and two backups

        def attic_files() -> list[str]:
            return sorted(p.name for p in shared.iterdir() if p.name.split(".")[0] in attic_sets)

        before = attic_files()

        # The kitchen reboots: its RAM is gone.
        as_host(stack, "pi-kitchen", "down", check=0)
        shutil.rmtree(stack.ram_root / "postgres")
        plan = as_host(stack, "pi-kitchen", "plan", check=2)
        assert "restore postgres" in plan.stdout and "EMPTY" not in plan.stdout, plan.stdout
        as_host(stack, "pi-kitchen", "apply", check=0)
        restored = status_as(stack, "pi-kitchen")
        assert restored["lastRestore"] and ".redis." not in json.dumps(restored["lastRestore"])
        assert pid_of(restored, "postgres") is not None
        # Nothing of the attic's was deleted or rejected by the kitchen.
        assert attic_files() == before  # the kitchen rotates only its own sets
        assert restored["lastRestore"]["rejected"] == [], restored["lastRestore"]
        as_host(stack, "pi-kitchen", "plan", check=0)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_set_taken_before_the_split_is_rotated_by_one_host_once_the_other_has_a_newer_set(
    stack: Stack,
) -> None:
    """A stack ran on one machine (sets hold postgres and redis), then was split: postgres on the
    kitchen, redis on the attic, one shared store, keep_last 1. The pre-split set stays while it is the
    attic's only redis backup; once the attic has its own, the kitchen (postgres: first by name) rotates
    it and the attic never does. Before the owner rule, neither host ever deleted it."""
    document = stack.default_document("ram")
    document["backup"]["retention"] = {"keep_last": 1}
    document["daemon"] = {"verify_new_sets": False, "metrics_port": None}
    stack.write(document)
    as_host(stack, "pi-kitchen", "apply", check=0)
    store = stack.dir / "data" / "backups"
    pre_split = {p.name.split(".")[0] for p in store.glob("*.redis.*")}
    assert len(pre_split) == 1 and {p.name.split(".")[0] for p in store.glob("*.postgres.*")} == pre_split

    def names() -> set[str]:
        return {p.name.split(".")[0] for p in store.iterdir() if ".manifest." in p.name}

    document["services"]["postgres"]["hosts"] = {"hostname": ["pi-kitchen"]}
    document["services"]["redis"]["hosts"] = {"hostname": ["pi-attic"]}
    stack.write(document)
    as_host(stack, "pi-kitchen", "backup", check=0)
    assert pre_split <= names()  # the attic's only redis backup: kept
    as_host(stack, "pi-attic", "backup", check=0)
    as_host(stack, "pi-attic", "prune", check=0)
    assert pre_split <= names()  # not the attic's to rotate
    as_host(stack, "pi-kitchen", "backup", check=0)
    as_host(stack, "pi-kitchen", "prune", check=0)
    assert not pre_split & names()
    assert any(s.endswith("manual") for s in names())


class DaemonOnHost(RunningDaemon):
    """``reconciler daemon`` on a machine called ``hostname``."""

    def __init__(self, stack: Stack, hostname: str) -> None:
        self.stack = stack
        self.log = open(stack.dir / "daemon.log", "w")  # noqa: SIM115 (closed in stop)
        command = [sys.executable, "-m", "reconciler", "-f", str(stack.state_file), "daemon"]
        env = {k: v for k, v in os.environ.items() if k != "RECONCILER_STATE"}
        self.process = subprocess.Popen(
            _in_uts(hostname, command), stdout=self.log, stderr=subprocess.STDOUT, env=env
        )


def _cpu_seconds(pid: int) -> float:
    """CPU time of the process and of its children it waited for (git, for HEAD's state.yaml)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def test_the_daemon_idles_where_the_stack_is_not_for_it_and_starts_when_a_commit_names_it(
    stack: Stack, second: Stack, daemons: list[RunningDaemon]
) -> None:
    document = stack.default_document("ram")
    document["hosts"] = {"hostname": ["pi-kitchen"]}
    document["daemon"] = {"resync": "1s", "metrics_port": None, "verify_new_sets": False}
    document["backup"]["cadence"] = "5s"
    document["backup"]["stale_after"] = "1m"
    one_repository(stack, second, document)

    daemon = DaemonOnHost(second, "pi-attic")
    daemons.append(daemon)
    idle = daemon.wait_event("NotForThisHost")
    assert "'pi-attic'" in idle["message"] and "left alone" in idle["message"]

    # Idle: several passes (resync 1 s, a backup would be due every 5 s), yet nothing observed or done.
    before = _cpu_seconds(daemon.process.pid)
    started = time.monotonic()
    daemon.wait_for("ten idle passes", lambda: _passes(second) >= 10, timeout=60)
    cpu, wall = _cpu_seconds(daemon.process.pid) - before, time.monotonic() - started
    print(f"idle daemon: {cpu:.3f} s CPU in {wall:.1f} s wall ({_passes(second)} passes)")
    assert cpu / wall < 0.05, (cpu, wall)
    assert set(daemon.reasons()) <= {"Started", "NotForThisHost"}, daemon.reasons()
    assert not (second.dir / "data").exists() and not (stack.ram_root / "postgres").exists()
    assert daemon.reasons().count("NotForThisHost") == 1  # said once, not at every pass

    # The repository now names this machine too; the attic pulls it: the daemon starts the stack.
    stack.edit(hosts={"hostname": ["pi-kitchen", "pi-attic"]})
    git(stack.dir, "commit", "-qam", "the attic too")
    git(second.dir, "pull", "-q", "--ff-only")
    daemon.wait_event("Converged", timeout=180)
    assert "ForThisHost" in daemon.reasons()
    assert pid_of(status_as(second, "pi-attic"), "postgres") is not None
    assert daemon.stop() == 0


def _passes(stack: Stack) -> int:
    path = stack.dir / ".reconciler" / "status.json"
    try:
        return int(json.loads(path.read_text()).get("daemon", {}).get("passes", 0))
    except (OSError, ValueError):
        return 0


@pytest.mark.parametrize("where", ["service", "stack"])
def test_a_switch_interrupted_before_a_service_stops_being_for_this_host_still_finishes(
    stack: Stack, where: str
) -> None:
    """The switch to disk is killed halfway; meanwhile state.yaml (a pull, an environment variable gone
    after the reboot) says redis is not for this host. The journal moved redis too, so resuming it must
    still take redis to a safe point: never a KeyError on every apply with both services stopped."""
    from tests.e2e.test_mode_switch import fingerprint, prepare

    original = prepare(stack, "ram")
    stack.edit(mode="disk")
    killed = stack.cli("apply", check=None, env={"RECONCILER_FAILPOINTS": "switch.copy.after=kill"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    document = stack.document()
    condition = {"env": {"REDIS_ON_THIS_HOST": "yes"}}
    if where == "service":
        document["services"]["redis"]["hosts"] = condition
    else:  # the whole stack moves away: the daemon would idle, `apply` would refuse, both left stopped
        document["hosts"] = condition
    stack.write(document)

    stack.cli("apply")
    assert not (stack.dir / ".reconciler" / "journal.json").exists()
    services = stack.status()["services"]
    assert services["postgres"]["running"] and services["postgres"]["data_dir"] == str(
        stack.dir / "data" / "postgres"
    )
    assert fingerprint(stack) == original  # redis too: the switch it was part of finished
