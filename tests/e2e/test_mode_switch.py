"""The mode switch under fire: SIGKILL at every step boundary and mid-step, in both directions.

Every time: a plain `reconciler apply` afterwards converges to the desired mode, the data equals the
original (row counts and checksums of every table, every Redis key), and no backup set was lost.
Also the failures that must roll back: a full disk during the copy, PostgreSQL refusing to start on
the new data directory, and a pre-switch backup that fails.

With live writers (``Writer``: an application inserting rows and SETting keys over TCP through
psycopg and redis-py, recording every write the server acknowledged): after any switch, completed,
rolled back at any step, or killed and resumed, every acknowledged write is present. Failpoints with
``wait_for_writers`` make sure the writers really tried to write in the dangerous windows (between
fingerprint and stop, while the new copy runs unverified) instead of hoping the timing hits them.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis

from reconciler.databases.postgres import table_stats
from reconciler.plan.actions import SWITCH_STEPS
from tests.conftest import Stack
from tests.integration.test_docker_runtime import docker_document, docker_stack, engine  # noqa: F401

pytestmark = pytest.mark.e2e

KILL_POINTS = [
    "switch.preflight.before",
    *[f"switch.{name}.after" for name, _ in SWITCH_STEPS],
    "backup.between-members",  # in the middle of the pre-switch backup
    "copy.halfway",  # in the middle of copying a data directory
    "switch.copy.between-services",  # postgres copied, redis not yet
]


def prepare(stack: Stack, mode: str, document: dict[str, Any] | None = None) -> dict[str, Any]:
    stack.write(document or stack.default_document(mode))
    stack.cli("apply")
    with psycopg.connect(**stack.pg_conninfo("app_db"), autocommit=True) as conn:
        conn.execute("SET ROLE app")
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric)")
        conn.execute(
            "INSERT INTO accounts SELECT g, 'ünïcödé ✓ ' || g, g * 1.5 FROM generate_series(1, 20000) g"
        )
        conn.execute("CREATE TABLE events (id bigserial, payload jsonb)")
        conn.execute(
            "INSERT INTO events (payload) SELECT jsonb_build_object('n', g) FROM generate_series(1, 5000) g"
        )
    client = redis.Redis(port=stack.redis_port)
    for i in range(300):
        client.set(f"session:{i}", os.urandom(32))
    client.rpush("queue", *[f"job-{i}" for i in range(100)])
    stack.cli("backup", "--trigger", "before-test")
    return fingerprint(stack)


def fingerprint(stack: Stack) -> dict[str, Any]:
    """Everything but what the live writers wrote (checked on its own, write by write)."""
    with psycopg.connect(**stack.pg_conninfo("app_db")) as conn:
        tables = {k: v for k, v in table_stats(conn).items() if k != "public.writes"}
    client = redis.Redis(port=stack.redis_port)
    keys = sorted(k for k in client.scan_iter() if not k.startswith(b"w:"))
    return {"tables": tables, "redis": {k: client.dump(k) for k in keys}}


def set_names(stack: Stack) -> set[str]:
    return {s["name"] for s in json.loads(stack.cli("backups", "-o", "json").stdout)["sets"] if s["complete"]}


def assert_converged(stack: Stack, mode: str, original: dict[str, Any], sets_before: set[str]) -> None:
    status = stack.status()
    for name in ("postgres", "redis"):
        service = status["services"][name]
        expected_dir = str(stack.ram_root / name) if mode == "ram" else str(stack.dir / "data" / name)
        assert service["running"] and service["data_dir"] == expected_dir, (name, service)
        assert service["on_tmpfs"] == (mode == "ram")
    assert fingerprint(stack) == original
    assert sets_before <= set_names(stack), "a backup set was lost"
    stack.cli("plan", check=0)
    assert not (stack.dir / ".reconciler" / "journal.json").exists()


@pytest.mark.parametrize("point", KILL_POINTS)
@pytest.mark.parametrize("direction", [("ram", "disk"), ("disk", "ram")], ids=["ram-to-disk", "disk-to-ram"])
def test_killed_at_any_point_the_next_apply_converges_with_the_same_data(
    stack: Stack, direction: tuple[str, str], point: str
) -> None:
    start, goal = direction
    original = prepare(stack, start)
    sets_before = set_names(stack)
    stack.edit(mode=goal)
    killed = stack.cli("apply", check=None, env={"RECONCILER_FAILPOINTS": f"{point}=kill"})
    assert killed.returncode == -9, f"the failpoint {point} was not reached:\n{killed.stderr[-2000:]}"
    if point != "switch.preflight.before" and not point.startswith("switch.backup-after"):
        plan = stack.cli("plan", check=2).stdout
        assert "resume the interrupted mode switch" in plan, plan
    stack.cli("apply")
    assert_converged(stack, goal, original, sets_before)


def test_a_state_file_changed_mid_switch_waits_for_the_safe_point(stack: Stack) -> None:
    original = prepare(stack, "ram")
    stack.edit(mode="disk")
    stack.cli("apply", check=None, env={"RECONCILER_FAILPOINTS": "switch.copy.after=kill"})
    stack.edit(mode="ram")  # the user changes their mind while the switch is half done
    plan = stack.cli("plan", check=2).stdout
    assert "resume the interrupted mode switch" in plan and "planned after it" in plan
    stack.cli("apply")  # finishes the switch to disk, then obeys state.yaml: back to ram
    assert_converged(stack, "ram", original, set())
    history = list((stack.dir / ".reconciler" / "journal-history").iterdir())
    statuses = sorted(json.loads(p.read_text())["status"] for p in history)
    assert statuses == ["done", "done"]


def _rolled_back(stack: Stack, original: dict[str, Any], result: subprocess.CompletedProcess[str]) -> None:
    assert "rolled back" in result.stderr
    assert_converged_in_ram = stack.status()["services"]
    for name in ("postgres", "redis"):
        assert assert_converged_in_ram[name]["running"] and assert_converged_in_ram[name]["on_tmpfs"]
    assert fingerprint(stack) == original
    history = [json.loads(p.read_text()) for p in (stack.dir / ".reconciler" / "journal-history").iterdir()]
    assert [h["status"] for h in history] == ["rolled-back"]


def test_disk_full_during_the_copy_rolls_back(stack: Stack) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test mounts a small tmpfs as the disk and needs root (CI runs as root)")
    original = prepare(stack, "ram")
    disk = stack.dir / "data"  # the "disk" is an 8 MiB filesystem: the backups fit, the data does not
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], check=True)
    try:
        stack.edit(mode="disk")
        result = stack.cli("apply", check=1)
        assert "failed at step precopy" in result.stderr and "No space left on device" in result.stderr
        stack.edit(mode="ram")
        _rolled_back(stack, original, result)
        assert sorted(os.listdir(disk)) == ["backups"], "the partial copy is removed"
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_postgres_refusing_to_start_on_the_new_directory_rolls_back(stack: Stack) -> None:
    original = prepare(stack, "ram")
    target = stack.dir / "data" / "postgres"
    stack.edit(mode="disk")
    breakage = f"sh:echo \"shared_buffers = 'plenty'\" >> {target}/postgresql.auto.conf"
    result = stack.cli("apply", check=1, env={"RECONCILER_FAILPOINTS": f"switch.start.before={breakage}"})
    assert "postgres did not start" in result.stderr
    stack.edit(mode="ram")
    _rolled_back(stack, original, result)
    assert not target.exists()


def test_a_failing_pre_switch_backup_moves_nothing(stack: Stack) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test mounts a small tmpfs as the backup store and needs root (CI runs as root)")
    original = prepare(stack, "ram")
    store = stack.dir / "data" / "backups"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(store)], check=True)
    try:
        stack.edit(mode="disk")
        result = stack.cli("apply", check=1)
        assert "failed at step backup" in result.stderr and "full" in result.stderr
        stack.edit(mode="ram")
        _rolled_back(stack, original, result)
        assert not (stack.dir / "data" / "postgres").exists()
    finally:
        subprocess.run(["umount", "-l", str(store)], check=False)


@pytest.mark.parametrize("point", ["switch.fingerprint.after", "switch.stop.after", "copy.halfway"])
def test_ram_lost_in_the_middle_of_a_switch_to_disk_is_restored_from_the_pre_switch_set(
    stack: Stack, point: str
) -> None:
    from tests.e2e.test_power_cut import power_cut

    original = prepare(stack, "ram")
    stack.edit(mode="disk")
    killed = stack.cli("apply", check=None, env={"RECONCILER_FAILPOINTS": f"{point}=kill"})
    assert killed.returncode == -9
    power_cut(stack)  # the machine reboots: every process gone, RAM empty
    stack.cli("apply")
    assert_converged(stack, "disk", original, set())
    history = [json.loads(p.read_text()) for p in (stack.dir / ".reconciler" / "journal-history").iterdir()]
    assert sorted((h["kind"], h["status"]) for h in history) == [
        ("mode switch", "abandoned"),
        ("restore on boot", "done"),
    ]
    assert stack.status()["lastRestore"]["set"].endswith("-pre-switch")


# -- live writers --------------------------------------------------------------------------------

WRITER_PASSWORD = "writer-secret-for-tests"


class Writer:
    """An application writing through the service ports while the switch runs.

    One thread inserts rows into PostgreSQL (psycopg, TCP, password auth as the app role), one SETs
    keys in Redis (redis-py, TCP); each reconnects after any error, as an app would, and records a
    write only once the server acknowledged it. Each attempt (successful or not) bumps a counter file,
    which the ``wait_for_writers`` failpoint reads.
    """

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.acked: dict[str, list[int]] = {"postgres": [], "redis": []}
        self.errors: dict[str, str] = {}
        self.attempts = {name: stack.dir / f"writer-{name}.attempts" for name in self.acked}
        self.stop_file = stack.dir / "writer.stop"  # a failpoint touches it to stop the writers
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._loop, args=(name, connect, write), daemon=True)
            for name, connect, write in (
                ("postgres", self._pg_connect, self._pg_write),
                ("redis", self._redis_connect, self._redis_write),
            )
        ]

    def _pg_connect(self) -> Any:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.stack.pg_port,
            user="app",
            password=WRITER_PASSWORD,
            dbname="app_db",
            autocommit=True,
            connect_timeout=3,
        )

    @staticmethod
    def _pg_write(conn: Any, n: int) -> None:
        conn.execute("INSERT INTO writes (id) VALUES (%s)", (n,))

    def _redis_connect(self) -> Any:
        return redis.Redis(port=self.stack.redis_port, socket_timeout=5, socket_connect_timeout=3)

    @staticmethod
    def _redis_write(client: Any, n: int) -> None:
        assert client.set(f"w:{n}", n)

    def _loop(self, name: str, connect: Any, write: Any) -> None:
        conn = None
        n = 0
        while not self.stopping.is_set() and not self.stop_file.exists():
            n += 1
            try:
                if conn is None:
                    conn = connect()
                write(conn, n)
                self.acked[name].append(n)
            except Exception as exc:  # refused, terminated, timed out: not acknowledged; reconnect
                self.errors[name] = f"{type(exc).__name__}: {exc}"
                with contextlib.suppress(Exception):
                    conn.close()  # type: ignore[union-attr]
                conn = None
                self.stopping.wait(0.02)  # an app's reconnect back-off, not synchronisation
            finally:
                self.attempts[name].write_text(str(n))

    def __enter__(self) -> Writer:
        for path in self.attempts.values():
            path.write_text("0")
        for thread in self.threads:
            thread.start()
        self.wait_for_acks(1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def wait_for_acks(self, more: int, timeout: float = 60) -> None:
        """Poll until each writer has had ``more`` further writes acknowledged (the servers serve)."""
        wanted = {name: len(acked) + more for name, acked in self.acked.items()}
        deadline = time.monotonic() + timeout
        while any(len(self.acked[name]) < count for name, count in wanted.items()):
            assert time.monotonic() < deadline, f"the writers got no acknowledgement: {self.errors}"
            self.stopping.wait(0.01)

    def wait_for_attempts_shell(self) -> str:
        """A shell command that returns once each writer made two more attempts (poll with a deadline)."""
        loops = []
        for path in self.attempts.values():
            loops.append(
                f"n=$(( $(cat {path}) + 2 )); i=0; "
                f"while [ $(cat {path}) -lt $n ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done"
            )
        return "sh:" + "; ".join(loops)

    def assert_every_acknowledged_write_present(self) -> None:
        assert all(self.acked.values()), "the writers never got an acknowledgement"
        with psycopg.connect(**self.stack.pg_conninfo("app_db")) as conn:
            rows = {int(r[0]) for r in conn.execute("SELECT id FROM writes").fetchall()}
        missing_pg = sorted(set(self.acked["postgres"]) - rows)
        client = redis.Redis(port=self.stack.redis_port)
        keys = {int(k[2:]) for k in client.scan_iter("w:*", count=1000)}
        missing_redis = sorted(set(self.acked["redis"]) - keys)
        assert not missing_pg and not missing_redis, (
            f"acknowledged writes lost: postgres {len(missing_pg)} of {len(self.acked['postgres'])} "
            f"(e.g. {missing_pg[:5]}), redis {len(missing_redis)} of {len(self.acked['redis'])} "
            f"(e.g. {missing_redis[:5]})"
        )


@contextlib.contextmanager
def writing(stack: Stack) -> Iterator[Writer]:
    with psycopg.connect(**stack.pg_conninfo("app_db"), autocommit=True) as conn:
        conn.execute(f"ALTER ROLE app PASSWORD '{WRITER_PASSWORD}'")
        conn.execute("CREATE TABLE writes (id int PRIMARY KEY)")
        conn.execute("ALTER TABLE writes OWNER TO app")
    with Writer(stack) as writer:
        yield writer


def failpoints(**points: str) -> dict[str, str]:
    return {"RECONCILER_FAILPOINTS": "\n".join(f"{k}={v}" for k, v in points.items())}


def dangerous_windows(writer: Writer) -> dict[str, str]:
    """Writers attempt writes between the fingerprint and the stop, and while the new copy is unverified."""
    wait = writer.wait_for_attempts_shell()
    return {"switch.fingerprint.after": wait, "switch.start.after": wait}


@pytest.mark.parametrize("direction", [("ram", "disk"), ("disk", "ram")], ids=["ram-to-disk", "disk-to-ram"])
def test_a_switch_under_live_writes_completes_and_keeps_every_acknowledged_write(
    stack: Stack, direction: tuple[str, str]
) -> None:
    start, goal = direction
    original = prepare(stack, start)
    with writing(stack) as writer:
        stack.edit(mode=goal)
        stack.cli("apply", env=failpoints(**dangerous_windows(writer)))
        writer.wait_for_acks(3)  # the new copy serves the writers again
    writer.assert_every_acknowledged_write_present()
    assert_converged(stack, goal, original, set())


ROLLBACK_POINTS = ["fingerprint", "stop", "copy", "start", "verify"]


@pytest.mark.parametrize("step", ROLLBACK_POINTS)
def test_a_switch_rolled_back_under_live_writes_keeps_every_acknowledged_write(
    stack: Stack, step: str
) -> None:
    original = prepare(stack, "ram")
    with writing(stack) as writer:
        stack.edit(mode="disk")
        points = {**dangerous_windows(writer), f"switch.{step}.before": "error"}
        result = stack.cli("apply", check=1, env=failpoints(**points))
        assert "rolled back" in result.stderr
        writer.wait_for_acks(3)  # the old copy is open to the writers again
    writer.assert_every_acknowledged_write_present()
    stack.edit(mode="ram")
    assert_converged(stack, "ram", original, set())


@pytest.mark.parametrize("point", ["drain", "fingerprint", "start", "verify"])
def test_a_switch_killed_under_live_writes_and_resumed_keeps_every_acknowledged_write(
    stack: Stack, point: str
) -> None:
    original = prepare(stack, "ram")
    with writing(stack) as writer:
        stack.edit(mode="disk")
        killed = stack.cli("apply", check=None, env=failpoints(**{f"switch.{point}.after": "kill"}))
        assert killed.returncode == -9, killed.stderr[-2000:]
        subprocess.run(writer.wait_for_attempts_shell()[3:], shell=True, check=True)  # they try meanwhile
        stack.cli("apply", env=failpoints(**dangerous_windows(writer)))
        writer.wait_for_acks(3)
    writer.assert_every_acknowledged_write_present()
    assert_converged(stack, "disk", original, set())


def test_ram_lost_after_verify_in_a_switch_to_ram_copies_the_disk_copy_again(stack: Stack) -> None:
    """Issue 12, item 9: the disk copy is the only copy then; going forward must not retire it."""
    from tests.e2e.test_power_cut import power_cut

    original = prepare(stack, "disk")
    with writing(stack) as writer:
        stack.edit(mode="ram")
        # writes acknowledged after the (online) pre-switch backup exist only in the disk copy
        # and the writers stop there, so that on the old code verification passes and the kill is reached
        stop = f"{writer.wait_for_attempts_shell()}; touch {writer.stop_file}"
        points = {"switch.backup.after": stop, "switch.verify.after": "kill"}
        killed = stack.cli("apply", check=None, env=failpoints(**points))
        assert killed.returncode == -9, killed.stderr[-2000:]
        power_cut(stack)  # the machine reboots: every process gone, RAM empty
        stack.cli("apply")
    writer.assert_every_acknowledged_write_present()
    assert_converged(stack, "ram", original, set())
    history = [json.loads(p.read_text()) for p in (stack.dir / ".reconciler" / "journal-history").iterdir()]
    assert [h["status"] for h in history] == ["done"]
    assert stack.status()["lastRestore"] is None, "restored from a backup set instead of the disk copy"


def test_on_docker_the_drain_closes_the_servers_not_only_the_app_containers(
    request: pytest.FixtureRequest,
) -> None:
    """The writers are not in drain.containers: only closing the servers keeps them out of the window."""
    dstack: Stack = request.getfixturevalue("docker_stack")
    original = prepare(dstack, "ram", docker_document(dstack, "ram"))
    with writing(dstack) as writer:
        dstack.edit(mode="disk")
        dstack.cli("apply", env=failpoints(**dangerous_windows(writer)))
        writer.wait_for_acks(3)
    writer.assert_every_acknowledged_write_present()
    assert fingerprint(dstack) == original
    dstack.cli("plan", check=0)
