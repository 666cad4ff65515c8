"""The local runtime against real PostgreSQL and Redis processes."""

from __future__ import annotations

import json
import os
import pwd
import signal
import stat
from pathlib import Path

import psycopg
import pytest
import redis

from reconciler.system import fs
from tests.conftest import Stack

pytestmark = pytest.mark.integration


def _pid(path: str) -> int:
    with open(path) as handle:
        return int(handle.readline())


def test_apply_brings_the_stack_up_in_ram_mode(stack: Stack) -> None:
    stack.write(stack.default_document("ram"))
    plan = stack.cli("plan", check=2).stdout
    assert plan.count("+ ") == 7 and "take a backup set (no backup set exists" in plan  # the first set
    stack.cli("apply")
    status = stack.status()
    assert status["in_sync"] is True
    for name in ("postgres", "redis"):
        service = status["services"][name]
        assert service["running"] and service["on_tmpfs"], service
        assert service["data_dir"] == str(stack.ram_root / name)
    assert stack.cli("plan").returncode == 0
    with psycopg.connect(**stack.pg_conninfo()) as conn:
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app_db'"
        ).fetchone()
    assert owner == ("app",)
    assert redis.Redis(port=stack.redis_port).ping()
    # data directories belong to the unprivileged service users, mode 0700
    pg_dir = os.stat(stack.ram_root / "postgres")
    assert stat.S_IMODE(pg_dir.st_mode) == 0o700
    assert pg_dir.st_uid == (pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.getuid())


def test_killed_postgres_is_detected_and_restarted_with_its_data(stack: Stack) -> None:
    stack.write(stack.default_document("ram"))
    stack.cli("apply")
    with psycopg.connect(**stack.pg_conninfo("app_db"), autocommit=True) as conn:
        conn.execute("CREATE TABLE survivors (id int); INSERT INTO survivors VALUES (1), (2)")
    os.kill(_pid(str(stack.ram_root / "postgres" / "postmaster.pid")), signal.SIGKILL)

    plan = stack.cli("plan", check=2)
    assert "start postgres" in plan.stdout and "died" in plan.stdout
    stack.cli("apply")
    stack.cli("plan", check=0)
    with psycopg.connect(**stack.pg_conninfo("app_db")) as conn:
        assert conn.execute("SELECT count(*) FROM survivors").fetchone() == (2,)


def test_killed_redis_is_detected_and_restarted(stack: Stack) -> None:
    stack.write(stack.default_document("ram"))
    stack.cli("apply")
    os.kill(_pid(str(stack.dir / ".reconciler/run/redis/redis.pid")), signal.SIGKILL)
    assert "start redis" in stack.cli("plan", check=2).stdout
    stack.cli("apply")
    assert redis.Redis(port=stack.redis_port).ping()


def test_disk_mode_keeps_data_on_disk(stack: Stack) -> None:
    stack.write(stack.default_document("disk"))
    stack.cli("apply")
    status = stack.status()
    assert status["services"]["postgres"]["data_dir"] == str(stack.dir / "data/postgres")
    assert status["services"]["postgres"]["on_tmpfs"] is False
    assert not stack.ram_root.exists()


def test_dedicated_tmpfs_is_mounted_and_resized(stack: Stack) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root to mount a tmpfs (CI runs as root)")
    stack.write(stack.default_document("ram", mount="always"))
    stack.cli("apply")
    mounts = Path("/proc/self/mountinfo").read_text()
    line = next(line for line in mounts.splitlines() if f" {stack.ram_root} " in line)
    assert " - tmpfs " in line and "size=262144k" in line
    document = stack.document()
    document["ram"]["tmpfs_size"] = "300MiB"
    stack.write(document)
    assert "resize the tmpfs" in stack.cli("plan", check=2).stdout
    stack.cli("apply")
    assert os.statvfs(stack.ram_root).f_blocks * os.statvfs(stack.ram_root).f_frsize == 300 * 1024**2


def test_mode_switch_moves_the_data_both_ways(stack: Stack) -> None:
    stack.write(stack.default_document("ram"))
    stack.cli("apply")
    with psycopg.connect(**stack.pg_conninfo("app_db"), autocommit=True) as conn:
        conn.execute("SET ROLE app; CREATE TABLE moved (id int, note text)")
        conn.execute("INSERT INTO moved SELECT g, 'ünïcödé ✓ ' || g FROM generate_series(1, 5000) g")
    redis.Redis(port=stack.redis_port).set("moved", "yes")

    stack.edit(mode="disk")
    plan = stack.cli("plan", check=2).stdout
    assert "switch postgres and redis from ram to disk mode" in plan and "expected write downtime" in plan
    stack.cli("apply")
    status = stack.status()
    assert status["services"]["postgres"]["data_dir"] == str(stack.dir / "data" / "postgres")
    assert not status["services"]["postgres"]["on_tmpfs"]
    assert not (stack.ram_root / "postgres").exists(), (
        "the tmpfs copy is removed once the disk copy is verified"
    )
    with psycopg.connect(**stack.pg_conninfo("app_db")) as conn:
        assert conn.execute("SELECT count(*), max(note) FROM moved").fetchone() == (5000, "ünïcödé ✓ 999")
    assert redis.Redis(port=stack.redis_port).get("moved") == b"yes"

    stack.edit(mode="ram")
    stack.cli("apply")
    assert stack.status()["services"]["redis"]["on_tmpfs"]
    with psycopg.connect(**stack.pg_conninfo("app_db")) as conn:
        assert conn.execute("SELECT count(*) FROM moved").fetchone() == (5000,)
    marker = (stack.dir / "data" / "postgres" / ".reconciler-service.json").read_text()
    assert '"stale": true' in marker, "the disk copy is kept as a stale safety copy"
    stack.cli("plan", check=0)
    triggers = [s["trigger"] for s in json.loads(stack.cli("backups", "-o", "json").stdout)["sets"]]
    assert triggers.count("pre-switch") == 2 and triggers.count("post-switch") == 2


def test_foreign_disk_dir_is_never_touched(stack: Stack) -> None:
    stack.write(stack.default_document("disk"))
    precious = stack.dir / "data" / "postgres" / "precious.txt"
    precious.parent.mkdir(parents=True)
    precious.write_text("do not lose me")
    result = stack.cli("apply", check=1)
    assert "refusing to touch it" in result.stderr
    assert precious.read_text() == "do not lose me"
    assert sorted(os.listdir(precious.parent)) == ["precious.txt"]


def test_a_second_apply_waits_for_nobody_and_says_who_holds_the_lock(stack: Stack) -> None:
    stack.write(stack.default_document("ram"))
    with fs.exclusive_lock(str(stack.dir / ".reconciler" / "lock"), "test"):
        result = stack.cli("apply", check=1)
    assert f"another reconciler (pid {os.getpid()})" in result.stderr
    assert not stack.ram_root.exists()


def test_down_stops_services_and_keeps_data(stack: Stack) -> None:
    stack.write(stack.default_document("ram"))
    stack.cli("apply")
    redis.Redis(port=stack.redis_port).set("kept", "yes")
    result = stack.cli("down")
    assert "Stopped 2 service(s)" in result.stdout
    status = stack.status()
    assert not status["services"]["postgres"]["running"] and not status["services"]["redis"]["running"]
    assert stack.cli("plan", check=2)
    stack.cli("apply")
    assert redis.Redis(port=stack.redis_port).get("kept") == b"yes"


def test_password_comes_from_the_environment_and_never_leaks(stack: Stack) -> None:
    secret = "s3cret-Pa55-" + os.urandom(4).hex()
    document = stack.default_document("ram")
    document["services"]["postgres"]["password_env"] = "TEST_PG_PASSWORD"
    stack.write(document)
    missing = stack.cli("apply")  # an unset variable warns; the password is set once it is there
    assert "TEST_PG_PASSWORD, which is not set" in missing.stderr
    stack.env["TEST_PG_PASSWORD"] = secret
    assert "set the password of role app" in stack.cli("plan", check=2).stdout
    result = stack.cli("apply")
    with psycopg.connect(
        host="127.0.0.1", port=stack.pg_port, user="app", password=secret, dbname="app_db"
    ) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)
    status_text = (stack.dir / ".reconciler" / "status.json").read_text()
    everything = result.stdout + result.stderr + status_text + stack.cli("status", "-o", "json").stdout
    assert secret not in everything
