"""Backups against real servers: round trip, tampering, planted sets, full disk, DR by hand, legacy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from reconciler.databases.postgres import table_stats
from tests.conftest import ROOT, Stack

pytestmark = pytest.mark.integration

LEGACY = ROOT.parent / "shared" / "fixtures" / "loomio_backup_20251105_130000.sql.enc"
LEGACY_PASSWORD = "3f9c2a7d5e8b41c6a0d9e7f2b4c8a1d6e5f3b2a9c7d4e1f8a6b3c0d9e2f5a7b4"


def with_keys(stack: Stack, name: str = "backup.key") -> str:
    key = stack.dir / "keys" / name
    recipient = stack.cli("keygen", "--out", str(key)).stdout.strip()
    return recipient


def encrypted_stack(stack: Stack, **retention: int) -> str:
    recipient = with_keys(stack)
    document = stack.default_document("ram")
    document["backup"] = {
        "encryption": {"recipients": [recipient], "identity_file": "./keys/backup.key"},
        "retention": retention or {"keep_last": 24},
    }
    stack.write(document)
    stack.cli("apply")
    return recipient


def pg(stack: Stack, dbname: str = "app_db") -> psycopg.Connection[Any]:
    return psycopg.connect(**stack.pg_conninfo(dbname), autocommit=True)


def seed(stack: Stack, rows: int = 2000) -> None:
    with pg(stack) as conn:
        conn.execute("SET ROLE app")
        conn.execute("CREATE TABLE IF NOT EXISTS discussions (id serial PRIMARY KEY, title text, meta jsonb)")
        conn.execute(
            "INSERT INTO discussions (title, meta) SELECT 'Proposal #' || g || ' — ünïcödé ✓', "
            "jsonb_build_object('n', g) FROM generate_series(1, %s) g",
            (rows,),
        )
    client = redis.Redis(port=stack.redis_port)
    for i in range(50):
        client.set(f"key:{i}", f"value ✓ {i}")
    client.hset("hash", mapping={"a": "1", "b": "2"})


def snapshot(stack: Stack) -> tuple[dict[str, Any], dict[bytes, Any]]:
    with pg(stack) as conn:
        tables = table_stats(conn)
    client = redis.Redis(port=stack.redis_port)
    keys = {k: client.dump(k) for k in client.scan_iter()}
    return tables, keys


def sets(stack: Stack) -> list[dict[str, Any]]:
    return list(json.loads(stack.cli("backups", "-o", "json").stdout)["sets"])


def member_file(stack: Stack, set_name: str, service: str) -> Path:
    return next((stack.dir / "data" / "backups").glob(f"{set_name}.{service}.*"))


def test_round_trip_restores_identical_content(stack: Stack) -> None:
    encrypted_stack(stack)
    seed(stack)
    before = snapshot(stack)
    stack.cli("backup")
    with pg(stack) as conn:
        conn.execute("DELETE FROM discussions WHERE id % 3 = 0")
        conn.execute("UPDATE discussions SET title = 'changed' WHERE id = 1")
    redis.Redis(port=stack.redis_port).flushall()
    assert snapshot(stack) != before

    result = stack.cli("restore", "--latest", "--yes")
    assert "restored" in result.stdout
    assert snapshot(stack) == before
    # the restored objects belong to the application role, not to the superuser
    with pg(stack) as conn:
        assert conn.execute(
            "SELECT tableowner FROM pg_tables WHERE tablename = 'discussions'"
        ).fetchone() == ("app",)
    # the data from before the restore was kept as a pre-restore set, and the restored data is the
    # newest set (a post-restore set), so the next boot restores what the stack now serves
    assert [s["trigger"] for s in sets(stack)][:2] == ["post-restore", "pre-restore"]


def test_backup_files_are_encrypted_and_listed(stack: Stack) -> None:
    encrypted_stack(stack)
    seed(stack, 100)
    stack.cli("backup", "--trigger", "scheduled")
    listing = sets(stack)  # apply took the stack's first set (no backup at all is drift), then this one
    assert [s["trigger"] for s in listing] == ["scheduled", "first"] and listing[0]["complete"]
    assert listing[0]["verified"] is None
    blob = member_file(stack, listing[0]["name"], "postgres").read_bytes()
    assert blob.startswith(b"age-encryption.org/v1") and "ünïcödé".encode() not in blob
    stack.cli("verify")
    assert sets(stack)[0]["verified"]["ok"] is True


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_sets_are_detected_and_never_restored(stack: Stack, damage: str) -> None:
    encrypted_stack(stack)
    seed(stack, 500)
    stack.cli("backup")
    name = sets(stack)[0]["name"]
    with pg(stack) as conn:
        conn.execute("INSERT INTO discussions (title) VALUES ('written after the backup')")
    current = snapshot(stack)
    path = member_file(stack, name, "postgres")
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) - 4096]))
        expected = "truncated"
    else:
        data[len(data) // 2] ^= 0x40
        path.write_bytes(bytes(data))
        expected = "sha256 does not match"
    result = stack.cli("restore", name, "--yes", check=1)
    assert expected in result.stderr and name in result.stderr
    assert snapshot(stack) == current
    verify = stack.cli("verify", name, check=1)
    assert expected in verify.stderr
    assert sets(stack)[0]["verified"]["ok"] is False


def test_a_set_planted_by_someone_with_only_the_public_key_is_rejected(stack: Stack) -> None:
    recipient = encrypted_stack(stack)
    seed(stack, 100)
    # The attacker encrypts to the victim's public recipient and signs with their own identity.
    with_keys(stack, "attacker.key")
    attacker = stack.document()
    attacker["backup"]["encryption"] = {"recipients": [recipient], "identity_file": "./keys/attacker.key"}
    attacker_file = stack.dir / "attacker.yaml"
    stack.write(attacker)
    stack.state_file.rename(attacker_file)
    subprocess.run(
        [os.sys.executable, "-m", "reconciler", "-f", str(attacker_file), "backup", "--trigger", "manual"],  # type: ignore[attr-defined]
        check=True,
        capture_output=True,
    )
    victim = dict(attacker)
    victim["backup"] = {
        **attacker["backup"],
        "encryption": {"recipients": [recipient], "identity_file": "./keys/backup.key"},
    }
    stack.write(victim)
    planted = sets(stack)[0]["name"]
    current = snapshot(stack)
    result = stack.cli("restore", planted, "--yes", check=1)
    assert "signed with another identity" in result.stderr
    assert snapshot(stack) == current


def test_a_wrong_identity_file_is_reported_and_restores_nothing(stack: Stack) -> None:
    encrypted_stack(stack)
    seed(stack, 100)
    stack.cli("backup")
    key = stack.dir / "keys" / "backup.key"
    key.unlink()
    with_keys(stack)  # a different identity at the same path
    current = snapshot(stack)
    result = stack.cli("restore", "--latest", "--yes", check=1)
    assert "another identity" in result.stderr
    assert "AGE-SECRET-KEY" not in result.stderr + result.stdout
    assert snapshot(stack) == current


def test_no_recipient_means_no_backup(stack: Stack) -> None:
    document = stack.default_document("ram")
    document["backup"] = {"encryption": {"recipients": [], "identity_file": "./keys/backup.key"}}
    stack.write(document)
    stack.cli("apply")
    result = stack.cli("backup", check=1)
    assert "recipients is empty" in result.stderr and "reconciler keygen" in result.stderr
    assert not (stack.dir / "data" / "backups").exists() or not os.listdir(stack.dir / "data" / "backups")


def test_full_disk_leaves_no_complete_looking_set_and_keeps_older_ones(stack: Stack) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test mounts a small tmpfs as the store and needs root (CI runs as root)")
    encrypted_stack(stack)
    seed(stack, 100)
    store = stack.dir / "data" / "backups"
    store.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(store)], check=True)
    try:
        stack.cli("backup")
        good = sets(stack)[0]["name"]
        with pg(stack) as conn:  # ~6 MB of incompressible text: the next set cannot fit in 1 MiB
            conn.execute("SET ROLE app")
            conn.execute(
                "CREATE TABLE filler AS SELECT g, (SELECT string_agg(md5(random()::text || g || x), '') "
                "FROM generate_series(1, 40) x) AS junk FROM generate_series(1, 5000) g"
            )
        result = stack.cli("backup", check=1)
        assert "full" in result.stderr and "Nothing was deleted" in result.stderr
        assert '"code": "store_full"' in result.stderr, "failure code (docs/FAILURES.md)"
        listing = sets(stack)
        assert [s["name"] for s in listing if s["complete"]] == [good]
        assert not [p for p in os.listdir(store) if p.startswith(".partial")]
        assert all(s["complete"] for s in listing)
        stack.cli("verify", good)
    finally:
        subprocess.run(["umount", "-l", str(store)], check=False)


def test_disaster_recovery_by_hand_with_age_zstd_and_pg_restore(stack: Stack) -> None:
    encrypted_stack(stack)
    seed(stack, 300)
    stack.cli("backup")
    name = sets(stack)[0]["name"]
    with pg(stack, "postgres") as conn:
        conn.execute("CREATE DATABASE by_hand OWNER app")
    bindir = next(Path("/usr/lib/postgresql").glob("*/bin"))
    key = stack.dir / "keys" / "backup.key"
    dump = member_file(stack, name, "postgres")
    conn_args = f"-h {stack.pg_conninfo()['host']} -p {stack.pg_port} -U postgres"
    # exactly the command documented in the README
    subprocess.run(
        f"age -d -i {key} {dump} | zstd -d | {bindir}/pg_restore {conn_args} -d by_hand --no-owner --role=app",
        shell=True,
        check=True,
    )
    with pg(stack) as conn:
        original = table_stats(conn)
    with pg(stack, "by_hand") as conn:
        assert table_stats(conn) == original
    rdb = member_file(stack, name, "redis")
    head = subprocess.run(
        f"age -d -i {key} {rdb} | zstd -d | head -c 5", shell=True, capture_output=True, check=True
    )
    assert head.stdout == b"REDIS"


def test_legacy_loomio_backup_is_imported_and_a_wrong_password_changes_nothing(stack: Stack) -> None:
    assert LEGACY.exists(), f"the shared fixture is missing at {LEGACY}"
    encrypted_stack(stack)
    seed(stack, 10)
    current = snapshot(stack)
    wrong = stack.cli(
        "restore",
        "--legacy",
        str(LEGACY),
        "--password-env",
        "LEGACY_PW",
        "--yes",
        check=1,
        env={"LEGACY_PW": "wrong"},
    )
    assert "wrong password" in wrong.stderr and "Nothing was changed" in wrong.stderr
    assert snapshot(stack) == current

    stack.cli(
        "restore",
        "--legacy",
        str(LEGACY),
        "--password-env",
        "LEGACY_PW",
        "--yes",
        env={"LEGACY_PW": LEGACY_PASSWORD},
    )
    with pg(stack) as conn:
        counts = {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
            for t in ("users", "groups", "memberships", "discussions", "events")
        }
        titles = [r[0] for r in conn.execute("SELECT title FROM discussions WHERE title LIKE '%ünïcödé ✓%'")]
    assert counts == {"users": 500, "groups": 20, "memberships": 2000, "discussions": 3000, "events": 20000}
    assert "Proposal #7 — ünïcödé ✓" in titles


def test_retention_is_planned_and_applied_and_keeps_the_newest(stack: Stack) -> None:
    encrypted_stack(stack, keep_last=2, keep_hourly=0, keep_daily=0, keep_weekly=0, keep_monthly=0)
    stack.edit(
        daemon={"verify_new_sets": False}
    )  # count sets unverified (with it on, only verified sets count)
    for trigger in ("one", "two", "three", "four"):
        stack.cli("backup", "--trigger", trigger)
    names = [s["name"] for s in sets(stack)]
    assert len(names) == 5  # with the first set apply took
    plan = stack.cli("plan", check=2).stdout
    assert "delete 3 backup set(s)" in plan
    assert all(name in plan for name in names[2:]) and names[0] not in plan and names[1] not in plan
    stack.cli("apply")
    assert [s["name"] for s in sets(stack)] == names[:2]
    stack.cli("plan", check=0)


def test_back_to_back_sets_get_names_in_the_order_they_were_taken(stack: Stack) -> None:
    """Names carry whole seconds; a `-manual` set right after a `-scheduled` one must still sort newer:
    the sequence in the name orders them, whatever the seconds (or the clock) say."""
    from reconciler.engine import backups
    from reconciler.engine.context import StackContext, load_spec
    from reconciler.plan.backupsets import set_sequence

    encrypted_stack(stack)
    ctx = StackContext.build(load_spec(str(stack.state_file)), str(stack.state_file))
    first = backups.take_backup(ctx, "scheduled")["set"]
    seed(stack, 10)
    second = backups.take_backup(ctx, "manual")["set"]
    assert set_sequence(second) > set_sequence(first) > 0, (first, second)
    assert backups.list_sets(ctx)[0].backup_set.name == second  # newest first


def cli_under(stack: Stack, prefix: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI run under a wrapper that degrades the host (prlimit, a private mount namespace)."""
    env = {**os.environ, **stack.env}
    env.pop("RECONCILER_STATE", None)
    return subprocess.run(
        [*prefix, sys.executable, "-m", "reconciler", "-f", str(stack.state_file), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def backup_records(stack: Stack) -> dict[str, Any]:
    return dict(json.loads((stack.dir / ".reconciler" / "backups.json").read_text()))


# Takes the port verify just chose, the way a racing process would, and keeps it until killed.
PORT_THIEF = """
import os, signal, socket, sys
sock = socket.socket()
sock.bind(("127.0.0.1", int(os.environ["FAILPOINT_PORT"])))
sock.listen()
child = os.fork()
if child:
    with open(sys.argv[1], "w") as handle:
        handle.write(str(child))
    os._exit(0)
signal.pause()
"""

UNSHARE = ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
HOST_FAULTS = {
    # the scratch server is refused file descriptors
    "too few file descriptors": (["prlimit", "--nofile=40:40"], "insufficient file descriptors"),
    # /dev/shm, where verify puts its scratch servers, is too small for them
    "/dev/shm too small": (
        [*UNSHARE, 'mount -t tmpfs -o size=512k tmpfs /dev/shm && exec "$@"', "sh"],
        "No space left on device",
    ),
    # another process binds the scratch server's port between verify's choice and the server's start
    "a port taken": ([], "Address already in use"),
}


@pytest.mark.parametrize("fault", sorted(HOST_FAULTS))
def test_a_host_fault_during_verify_does_not_reject_the_set(stack: Stack, fault: str) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs in a private mount namespace and needs root (CI runs as root)")
    encrypted_stack(stack)
    seed(stack, 200)
    stack.cli("backup")
    name = sets(stack)[0]["name"]
    prefix, cause = HOST_FAULTS[fault]
    thief, thief_pid = stack.dir / "port_thief.py", stack.dir / "port_thief.pid"
    thief.write_text(PORT_THIEF)
    if fault == "a port taken":
        failpoint = f"verify.port-chosen=sh:{sys.executable} {thief} {thief_pid} >/dev/null 2>&1"
        stack.env["RECONCILER_FAILPOINTS"] = failpoint
    try:
        result = cli_under(stack, prefix, "verify", name)
    finally:
        stack.env.pop("RECONCILER_FAILPOINTS", None)
        if thief_pid.exists():
            os.kill(int(thief_pid.read_text()), signal.SIGKILL)
    assert result.returncode == 1, result.stderr
    assert "could not be verified" in result.stderr and "problem of this host" in result.stderr
    assert cause in result.stderr, result.stderr
    assert '"code": "host_fault"' in result.stderr, "failure code (docs/FAILURES.md)"
    record = backup_records(stack)
    assert f"local/{name}" not in record.get("rejected", {}), "a host fault must not reject the set"
    assert name not in record.get("verified", {}), "the set stays unverified, so the daemon tries it again"
    assert record["last_verify_error"]["fault"] == "host"
    stack.cli("verify", name)  # the host is healthy again: the same set verifies
    assert backup_records(stack)["verified"][name]["ok"] is True


def context(stack: Stack) -> Any:
    from reconciler.engine.context import StackContext, load_spec

    return StackContext.build(load_spec(str(stack.state_file)), str(stack.state_file))


def take_plain_sql_set(stack: Stack) -> str:
    """A valid, signed set whose postgres member is a plain SQL dump (``pg_dump -Fp``), which
    pg_restore refuses: made through the library, as a state.yaml allowing ``-Fp`` once did."""
    from reconciler.backup.create import create_set
    from reconciler.engine import backups, records

    ctx = context(stack)
    postgres = ctx.spec.services.postgres.model_copy(update={"dump_options": ["-Fp"]})
    services = ctx.spec.services.model_copy(update={"postgres": postgres})
    spec = ctx.spec.model_copy(update={"services": services}).with_base_dir(ctx.spec.base_dir)
    store = backups.local_store(ctx)
    created, sequence = backups._new_set_position(ctx)  # named and numbered like every set the engine takes
    records.note_sequence(ctx, sequence)
    document = create_set(
        spec,
        backups._endpoints(ctx),
        ctx.pg_bindir(),
        store,
        "plain",
        created,
        None,
        sequence=sequence,
    )
    return str(document["set"])


def test_a_set_pg_restore_refuses_falls_back_to_the_older_set_on_boot_and_says_why(stack: Stack) -> None:
    from tests.e2e.test_power_cut import power_cut

    encrypted_stack(stack)
    seed(stack, 300)
    stack.cli("backup")
    good = sets(stack)[0]["name"]
    expected = snapshot(stack)
    with pg(stack) as conn:
        conn.execute("INSERT INTO discussions (title) VALUES ('after the good set')")
    bad = take_plain_sql_set(stack)
    assert sets(stack)[0]["name"] == bad
    power_cut(stack)

    stack.cli("apply")
    assert snapshot(stack) == expected
    restore = stack.status()["lastRestore"]
    assert restore["set"] == good
    reasons = {r["set"]: r["reason"] for r in restore["rejected"]}
    assert set(reasons) == {bad}
    # pg_restore's own words, not a guess about the identity file
    assert "pg_restore: error: input file appears to be a text format dump" in reasons[bad]
    assert "identity" not in reasons[bad] and "decrypt" not in reasons[bad]


def text_hash_stats(stack: Stack, recorded: bool) -> dict[str, list[Any]]:
    """What PostgreSQL 13 computes for the manifest: hash_record_extended exists from 14 on, so every
    table is hashed by its text form. Computed here in plain SQL, independently of the reconciler."""
    stats: dict[str, list[Any]] = {}
    with pg(stack) as conn:
        tables = conn.execute(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        for schema, table in tables:
            row = conn.execute(
                f'SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text FROM "{schema}"."{table}" t'
            ).fetchone()
            assert row is not None
            stats[f"{schema}.{table}"] = [int(row[0]), str(row[1])] + (["text"] if recorded else [])
    return stats


def rewrite_manifest(stack: Stack, name: str, change: Any) -> None:
    """Edit a set's manifest and sign it again with the stack's own identity (as its maker would)."""
    from reconciler.backup import keys, manifest

    path = stack.dir / "data" / "backups" / f"{name}.manifest.json"
    document = manifest.decode(path.read_bytes())
    change(document)
    mac_key = keys.mac_key(keys.load(str(stack.dir / "keys" / "backup.key")))
    path.write_bytes(manifest.encode(manifest.sign(document, mac_key)))


@pytest.mark.parametrize("method_recorded", [True, False], ids=["method-recorded", "older-manifest"])
def test_a_set_taken_on_postgresql_13_checks_and_restores_on_15(stack: Stack, method_recorded: bool) -> None:
    """The Debian 11 -> 12 upgrade path: a set whose table checksums were computed the PostgreSQL 13 way.

    No PostgreSQL 13 runs here, so its manifest is produced by recomputing the checksums with the only
    method 13 has (the text form) and signing the manifest again with the stack's identity.
    """
    encrypted_stack(stack)
    seed(stack, 400)
    stack.cli("backup")
    name = sets(stack)[0]["name"]
    as_on_13 = text_hash_stats(stack, method_recorded)
    expected = snapshot(stack)

    def as_made_on_postgresql_13(document: dict[str, Any]) -> None:
        member = next(m for m in document["members"] if m["service"] == "postgres")
        assert set(member["check"]["tables"]) == set(as_on_13)
        member["check"]["tables"] = as_on_13
        member["server_version"] = "13.16 (Debian 13.16-0+deb11u1)"

    rewrite_manifest(stack, name, as_made_on_postgresql_13)
    stack.cli("verify", name)
    assert backup_records(stack)["verified"][name]["ok"] is True
    with pg(stack) as conn:
        conn.execute("DELETE FROM discussions WHERE id % 2 = 0")
    stack.cli("restore", name, "--yes")
    assert snapshot(stack) == expected


def test_redis_keys_that_expire_between_the_backup_and_verify_do_not_fail_the_set(stack: Stack) -> None:
    import time

    encrypted_stack(stack)
    seed(stack, 50)
    client = redis.Redis(port=stack.redis_port)
    sessions = [f"session:{i}" for i in range(20)]
    for key in sessions:
        client.set(key, "short-lived", px=8000)
    stack.cli("backup")
    name = sets(stack)[0]["name"]
    document = json.loads((stack.dir / "data" / "backups" / f"{name}.manifest.json").read_text())
    check = next(m for m in document["members"] if m["service"] == "redis")["check"]
    assert check["expires"] == len(sessions), "the keys with a TTL were in the snapshot"
    deadline = time.monotonic() + 60
    while client.exists(*sessions):  # poll the real expiry, no fixed sleep
        assert time.monotonic() < deadline, "the keys never expired"
        time.sleep(0.2)
    result = json.loads(stack.cli("verify", name, "-o", "json").stdout)
    assert result["ok"] is True
    assert result["redis_keys"] == check["keys"] - len(sessions)
    assert f"local/{name}" not in backup_records(stack).get("rejected", {})
