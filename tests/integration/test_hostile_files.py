"""Hostile files: a legacy backup is a script, and whoever wrote it must not get a shell or a superuser.

The legacy tokens are built here with the format's own KDF (PBKDF2-HMAC-SHA256, the fixed salt,
100 000 iterations) over SQL that tries to escape: a psql shell command, and a ``RESET ROLE`` back to
the superuser followed by ``CREATE ROLE ... SUPERUSER`` and ``COPY ... TO PROGRAM``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import uuid
from pathlib import Path
from typing import BinaryIO

import psycopg
import pytest
from cryptography.fernet import Fernet

from reconciler.errors import PermanentError, ReconcilerError
from reconciler.runtimes.local import LocalRuntime
from reconciler.spec.model import GdriveStoreSpec
from reconciler.stores.gdrive import GdriveStore
from reconciler.stores.local import LocalStore
from tests.conftest import Stack
from tests.integration.test_backups import pg, seed, snapshot
from tests.integration.test_gdrive import authorized_user_file, make_store
from tests.support.gdrive_emulator import DriveEmulator

pytestmark = pytest.mark.integration

PASSWORD = "hostile-" + uuid.uuid4().hex


def legacy_file(directory: Path, sql: str) -> Path:
    key = base64.urlsafe_b64encode(
        hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), b"loomio-backup-salt", 100_000, 32)
    )
    path = directory / f"loomio_backup_{uuid.uuid4().hex[:6]}.sql.enc"
    path.write_bytes(Fernet(key).encrypt(sql.encode()))
    return path


DUMP_HEAD = """SET client_encoding = 'UTF8';
SELECT pg_catalog.set_config('search_path', '', false);
CREATE TABLE public.users (id integer NOT NULL, name text);
COPY public.users (id, name) FROM stdin;
1\tann
2\t\\N
\\.
"""


def restore(stack: Stack, path: Path) -> str:
    result = stack.cli(
        "restore",
        "--legacy",
        str(path),
        "--password-env",
        "LEGACY_PW",
        "--yes",
        check=1,
        env={"LEGACY_PW": PASSWORD},
    )
    return " ".join(
        json.loads(line)["message"] for line in result.stderr.splitlines() if line.startswith("{")
    )


def roles(stack: Stack) -> set[str]:
    with pg(stack, "postgres") as conn:
        return {str(r[0]) for r in conn.execute("SELECT rolname FROM pg_roles")}


def test_a_psql_shell_command_in_a_legacy_file_runs_nothing_and_changes_nothing(stack: Stack) -> None:
    stack.write(stack.default_document())
    stack.cli("apply")
    seed(stack, 10)
    before = snapshot(stack)
    marker = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    path = legacy_file(stack.dir, DUMP_HEAD + f"\\! touch {marker}\nSELECT 1;\n")
    stderr = restore(stack, path)
    assert not marker.exists(), "the legacy file ran a shell command"
    assert "psql command `\\!` on line 8" in stderr and "Nothing was changed" in stderr, stderr
    assert snapshot(stack) == before


def test_a_legacy_file_cannot_act_beyond_the_application_role(stack: Stack) -> None:
    stack.write(stack.default_document())
    stack.cli("apply")
    seed(stack, 10)
    before = snapshot(stack)
    evil = "evil_" + uuid.uuid4().hex[:8]
    marker = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    for attack in (
        f"RESET ROLE; CREATE ROLE {evil} SUPERUSER;",
        f"SET SESSION AUTHORIZATION postgres; CREATE ROLE {evil} SUPERUSER;",
        f"COPY (SELECT 1) TO PROGRAM 'touch {marker}';",
        f"ALTER ROLE app SUPERUSER; CREATE ROLE {evil};",
    ):
        stderr = restore(stack, legacy_file(stack.dir, DUMP_HEAD + attack + "\n"))
        assert "was refused by postgres (it runs as role app, not as a superuser)" in stderr, stderr
        assert "permission denied" in stderr or "must be superuser" in stderr, stderr
        assert evil not in roles(stack), attack
        assert not marker.exists(), attack
    with pg(stack, "postgres") as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'app'").fetchone() == (False,)
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'app_db__%'").fetchone() == (
            0,
        )
    assert snapshot(stack) == before


def app_login(stack: Stack, password: str) -> bool:
    try:
        with psycopg.connect(
            host="127.0.0.1",
            port=stack.pg_port,
            user="app",
            password=password,
            dbname="app_db",
            connect_timeout=5,
        ):
            return True
    except psycopg.OperationalError as exc:
        assert "password authentication failed" in str(exc), exc
        return False


def test_the_role_password_is_reconciled_and_never_reaches_the_server_log_or_environment(
    stack: Stack,
) -> None:
    first, second = "first-" + uuid.uuid4().hex, "second-" + uuid.uuid4().hex
    document = stack.default_document()
    document["services"]["postgres"]["password_env"] = "APP_DB_PASSWORD"
    stack.write(document)
    stack.env["APP_DB_PASSWORD"] = first
    stack.cli("apply")
    assert app_login(stack, first)
    with pg(stack, "postgres") as conn:  # the most talkative server log there is
        conn.execute("ALTER SYSTEM SET log_statement = 'all'")
        conn.execute("ALTER SYSTEM SET log_min_error_statement = 'debug5'")
        conn.execute("SELECT pg_reload_conf()")

    stack.env["APP_DB_PASSWORD"] = second
    plan = stack.cli("plan", check=2)
    assert "set the password of role app" in plan.stdout, plan.stdout
    stack.cli("apply")
    assert app_login(stack, second) and not app_login(stack, first)
    stack.cli("plan", check=0)

    runtime = LocalRuntime(document["stack"], str(stack.dir / ".reconciler"))
    server_log = Path(runtime.log_file("postgres")).read_text(errors="replace")
    assert "ALTER SYSTEM SET log_statement" in server_log or "statement:" in server_log
    postmaster = int((stack.ram_root / "postgres" / "postmaster.pid").read_text().split()[0])
    redis_pid = int(Path(runtime.redis_pidfile()).read_text().split()[0])
    for pid in (postmaster, redis_pid):
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"APP_DB_PASSWORD" not in environ and second.encode() not in environ, pid
    for secret in (first, second):
        assert secret not in server_log
        assert secret not in plan.stdout + plan.stderr

    del stack.env["APP_DB_PASSWORD"]
    unset = stack.cli("plan", check=0)
    assert "APP_DB_PASSWORD, which is not set" in unset.stdout + unset.stderr
    stack.cli("apply")
    assert app_login(stack, second)


# -- file modes ------------------------------------------------------------------------------------


def test_store_files_are_private_from_the_first_byte_and_the_directory_is_kept_0700(
    tmp_path: Path,
) -> None:
    old_umask = os.umask(0o022)
    try:
        store = LocalStore(str(tmp_path / "backups"))
        seen: list[int] = []

        def produce(out: BinaryIO) -> None:
            out.write(b"plaintext with encryption: none")
            seen.append(stat.S_IMODE(os.stat(tmp_path / "backups" / ".partial-s1.member").st_mode))

        store.put_with("s1.member", produce)
        assert seen == [0o600]
        assert stat.S_IMODE(os.stat(tmp_path / "backups" / "s1.member").st_mode) == 0o600

        loose = tmp_path / "loose"
        loose.mkdir()
        loose.chmod(0o755)
        LocalStore(str(loose)).put_bytes("s2.member", b"x")
        assert stat.S_IMODE(loose.stat().st_mode) == 0o700

        sticky = tmp_path / "sticky"  # the case: an existing store directory of mode 1777
        sticky.mkdir()
        sticky.chmod(0o1777)
        LocalStore(str(sticky)).put_bytes("s3.member", b"x")
        assert stat.S_IMODE(sticky.stat().st_mode) == 0o700

        foreign = tmp_path / "foreign"
        foreign.mkdir()
        os.chown(foreign, 65534, 65534)
        with pytest.raises(PermanentError, match="belongs to another user"):
            LocalStore(str(foreign)).put_bytes("s4.member", b"x")
        assert list(foreign.iterdir()) == []
        with pytest.raises(PermanentError, match="a shared system directory"):
            LocalStore("/tmp").put_bytes(f"s5-{uuid.uuid4().hex}.member", b"x")
        assert stat.S_IMODE(os.stat("/tmp").st_mode) == 0o1777
    finally:
        os.umask(old_umask)


def test_drive_downloads_are_private_and_a_leftover_is_never_a_set_member(
    tmp_path: Path, emulator: DriveEmulator
) -> None:
    old_umask = os.umask(0o022)
    try:
        store = make_store(
            emulator, authorized_user_file(tmp_path / "c.json", emulator), emulator.make_folder()
        )
        store.attempts = 2
        source = tmp_path / "member.bin"
        source.write_bytes(os.urandom(1024 * 1024))
        store.upload("set-a.postgres.pgdump.zst.age", str(source))
        local = LocalStore(str(tmp_path / "backups"))
        os.makedirs(local.path, mode=0o700)
        emulator.inject("download", "drop", times=100)
        with pytest.raises(ReconcilerError):
            store.download(
                "set-a.postgres.pgdump.zst.age", os.path.join(local.path, "set-a.postgres.pgdump.zst.age")
            )
        leftovers = list(Path(local.path).iterdir())
        assert leftovers, "the interrupted download left nothing to check"
        for leftover in leftovers:
            assert leftover.name.startswith("."), leftover
            assert stat.S_IMODE(leftover.stat().st_mode) == 0o600, leftover
        assert local.list() == []
        local.clean_partials()
        assert list(Path(local.path).iterdir()) == []
    finally:
        os.umask(old_umask)


def test_drive_credentials_other_users_can_read_are_refused(tmp_path: Path, emulator: DriveEmulator) -> None:
    credentials = authorized_user_file(tmp_path / "c.json", emulator)
    os.chmod(credentials, 0o644)
    store = make_store(emulator, credentials, emulator.make_folder())
    with pytest.raises(PermanentError, match=f"chmod 600 {credentials}"):
        store.list()
    assert "test-refresh-token-value" not in json.dumps(emulator.state.requests)


def test_drive_api_url_only_names_this_machine(stack: Stack, tmp_path: Path, emulator: DriveEmulator) -> None:
    document = stack.default_document()
    credentials = authorized_user_file(tmp_path / "c.json", emulator)
    document["backup"]["stores"] = {
        "gdrive": {
            "enabled": True,
            "folder_id": "f",
            "credentials_file": credentials,
            "api_url": "https://drive.attacker.example/",
        }
    }
    stack.write(document)
    refused = stack.cli("validate", check=64)
    assert "api_url may only name this machine" in refused.stdout + refused.stderr
    document["backup"]["stores"]["gdrive"]["api_url"] = emulator.url
    stack.write(document)
    stack.cli("validate", check=0)

    spec = GdriveStoreSpec.model_construct(
        enabled=True, folder_id="f", credentials_file=credentials, api_url="http://192.0.2.1:9/"
    )
    with pytest.raises(PermanentError, match="not a loopback address"):
        GdriveStore(spec, credentials).list()
