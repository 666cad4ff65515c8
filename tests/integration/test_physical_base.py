"""Physical base backups (``backup.continuous``): a member of the set that restores by hand alone."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest

from reconciler.backup.physical import lsn_value
from tests.conftest import Stack, free_port
from tests.integration.test_backups import member_file, pg, seed, sets, with_keys

pytestmark = pytest.mark.integration


def continuous_stack(stack: Stack) -> None:
    recipient = with_keys(stack)
    document = stack.default_document("ram")
    document["backup"] = {
        "encryption": {"recipients": [recipient], "identity_file": "./keys/backup.key"},
        "continuous": {"enabled": True},
    }
    stack.write(document)
    stack.cli("apply")


def test_base_backup_is_a_signed_member_that_starts_a_server_by_hand(stack: Stack) -> None:
    continuous_stack(stack)
    seed(stack, 700)
    stack.cli("backup")
    name = sets(stack)[0]["name"]
    document = json.loads((stack.dir / "data" / "backups" / f"{name}.manifest.json").read_text())
    logical, base = [m for m in document["members"] if m["service"] == "postgres"]
    assert logical["content"] == "pg_dump-custom"  # the logical member stays, and comes first
    assert base["content"] == "pg_basebackup-tar"
    assert base["file"] == f"{name}.pgbase.tar.zst.age"
    with pg(stack, "postgres") as conn:
        row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    assert row is not None and base["system_identifier"] == row[0]
    with pg(stack, "postgres") as conn:  # the slot exists before the base, and cannot fill RAM
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (1,)
        assert conn.execute("SHOW max_slot_wal_keep_size").fetchone() == ("256MB",)
    assert base["timeline"] == 1 and base["files"] > 100
    assert lsn_value(base["start_lsn"]) <= lsn_value(base["stop_lsn"]) and len(base["start_segment"]) == 24
    assert "mac" in document
    verified = json.loads(stack.cli("verify", "-o", "json").stdout)
    # the logical path as before, and the base in a scratch server of its own
    assert verified["ok"] is True and verified["base"]["ok"] is True, verified
    assert verified["base"]["databases"] == 3
    # no receiver ran: nothing was shipped after the base, which is the whole chain (no gap)
    assert verified["base"]["wal"]["ok"] and verified["base"]["wal"]["segments"] == 0, verified

    # disaster recovery by hand: age | zstd | tar, then PostgreSQL starts from it with its own WAL
    key = stack.dir / "keys" / "backup.key"
    target = stack.dir / "by-hand"
    target.mkdir(mode=0o700)
    blob = member_file(stack, name, "pgbase")
    subprocess.run(f"age -d -i {key} {blob} | zstd -d | tar -x -C {target}", shell=True, check=True)
    assert (target / "backup_label").exists() and any((target / "pg_wal").glob("0000000*"))
    shutil.chown(target, "postgres", "postgres")
    for path in target.rglob("*"):
        shutil.chown(path, "postgres", "postgres")
    bindir = next(Path("/usr/lib/postgresql").glob("*/bin"))
    verified = subprocess.run(
        ["runuser", "-u", "postgres", "--", str(bindir / "pg_verifybackup"), str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    port = free_port()
    sockets = stack.dir / "by-hand-run"
    sockets.mkdir()
    shutil.chown(sockets, "postgres", "postgres")
    options = f"-c port={port} -c listen_addresses= -c unix_socket_directories={sockets}"
    start = [str(bindir / "pg_ctl"), "-D", str(target), "-o", options, "-l", str(sockets / "log"), "-w"]
    subprocess.run(["runuser", "-u", "postgres", "--", *start, "start"], check=True, env={**os.environ})
    try:
        with psycopg.connect(host=str(sockets), port=port, user="postgres", dbname="app_db") as conn:
            row = conn.execute("SELECT count(*) FROM discussions").fetchone()
        assert row == (700,)
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", *start, "-m", "immediate", "stop"], check=False)


def test_without_continuous_no_base_backup_is_taken(stack: Stack) -> None:
    recipient = with_keys(stack)
    document = stack.default_document("ram")
    document["backup"] = {"encryption": {"recipients": [recipient], "identity_file": "./keys/backup.key"}}
    stack.write(document)
    stack.cli("apply")
    seed(stack, 10)
    stack.cli("backup")
    name = sets(stack)[0]["name"]
    document = json.loads((stack.dir / "data" / "backups" / f"{name}.manifest.json").read_text())
    assert [m["content"] for m in document["members"]] == ["redis-rdb", "pg_dump-custom"]


def test_a_base_that_fails_pg_verifybackup_is_reported_and_the_set_still_verifies(stack: Stack) -> None:
    """A base altered inside (re-sealed and re-signed by a holder of the identity, so every outer
    check passes): verify names it, and the set's logical path stays verified."""
    from reconciler.backup import keys, manifest, pipeline

    continuous_stack(stack)
    seed(stack, 50)
    stack.cli("backup")
    name = sets(stack)[0]["name"]
    key_file = stack.dir / "keys" / "backup.key"
    identity = keys.load(str(key_file))
    blob = member_file(stack, name, "pgbase")
    with blob.open("rb") as source, (stack.dir / "base.tar").open("wb") as out:
        pipeline.decrypt_decompress(source, out, identity)
    tar = bytearray((stack.dir / "base.tar").read_bytes())
    marker = tar.find(b"PG_VERSION")  # the header of PG_VERSION; its content is the next block
    tar[marker + 512 : marker + 514] = b"99"
    with blob.open("wb") as out:
        pipeline.compress_encrypt(io.BytesIO(bytes(tar)), out, [identity.to_public()])
    path = stack.dir / "data" / "backups" / f"{name}.manifest.json"
    document = json.loads(path.read_text())
    document.pop("mac")
    for member in document["members"]:
        if member["content"] == "pg_basebackup-tar":
            member["size"] = blob.stat().st_size
            member["sha256"] = hashlib.sha256(blob.read_bytes()).hexdigest()
    path.write_bytes(manifest.encode(manifest.sign(document, keys.mac_key(identity))))

    verified = json.loads(stack.cli("verify", "-o", "json").stdout)
    assert verified["ok"] is True
    assert verified["base"]["ok"] is False and "PG_VERSION" in verified["base"]["reason"], verified
