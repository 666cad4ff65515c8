"""Hostile-input review (issue 13 follow-up): attacks that got past the first round of defences.

The application role owns its database, so it (or a legacy file, which runs as it) can create
functions, operators and casts there. Whatever the reconciler later runs *as the superuser* inside
that database must not resolve to one of them: PostgreSQL picks an exact-type match in ``public``
over a ``pg_catalog`` function that needs a cast (the CVE-2018-1058 class), and the owner of a
table's row type may create a cast from it to ``text``.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from psycopg import sql

from tests.conftest import Stack
from tests.integration.test_backups import pg, seed
from tests.integration.test_hostile_files import PASSWORD, legacy_file

pytestmark = pytest.mark.integration

_BODY = """
BEGIN
  IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
    EXECUTE 'COPY (SELECT 1) TO ''{marker}''';
    EXECUTE 'ALTER ROLE app SUPERUSER';
  END IF;
  RETURN 0;
END"""

_TROJANS = """
CREATE TABLE public.bait (id integer);
INSERT INTO public.bait VALUES (1);
CREATE FUNCTION public.hash_record_extended(public.bait, integer) RETURNS bigint
  LANGUAGE plpgsql AS $fn${body}$fn$;
CREATE FUNCTION public.hashtextextended(text, integer) RETURNS bigint
  LANGUAGE plpgsql AS $fn${body}$fn$;
CREATE FUNCTION public.bait_text(public.bait) RETURNS text
  LANGUAGE plpgsql AS $fn$BEGIN PERFORM public.hashtextextended('x'::text, 0); RETURN 'bait'; END$fn$;
CREATE CAST (public.bait AS text) WITH FUNCTION public.bait_text(public.bait);
"""


def trojans(marker: Path) -> str:
    """SQL (for the application role) planting functions and a cast that, when a superuser calls
    them, write ``marker`` as the server (``COPY ... TO`` a file needs superuser rights and is allowed
    in the read-only transaction a backup reads in) and make the application role a superuser."""
    return _TROJANS.format(body=_BODY.format(marker=marker))


def assert_not_run(stack: Stack, marker: Path) -> None:
    assert not marker.exists(), "the superuser ran a function the application role planted"
    with pg(stack, "postgres") as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'app'").fetchone() == (False,)


def test_a_backup_never_runs_the_application_roles_functions_as_the_superuser(stack: Stack) -> None:
    stack.write(stack.default_document())
    stack.cli("apply")
    seed(stack, 10)
    marker = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    with pg(stack) as conn:
        conn.execute("SET ROLE app")
        conn.execute(trojans(marker))
    stack.cli("backup")
    assert_not_run(stack, marker)


def test_a_legacy_file_cannot_plant_functions_the_superuser_then_runs(stack: Stack) -> None:
    stack.write(stack.default_document())
    stack.cli("apply")
    marker = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    path = legacy_file(stack.dir, "SET client_encoding = 'UTF8';\n" + trojans(marker))
    stack.cli(
        "restore",
        *("--legacy", str(path), "--password-env", "LEGACY_PW", "--yes", "--no-safety-backup"),
        env={"LEGACY_PW": PASSWORD},
    )
    assert_not_run(stack, marker)


@pytest.mark.parametrize("key", ["disk_dir", "state_dir"])
def test_a_directory_name_in_state_yaml_runs_no_shell_command(stack: Stack, key: str) -> None:
    """``pg_ctl start`` runs the server through /bin/sh with the data directory in double quotes and
    the socket directory (under state_dir) bare: a commit of state.yaml must not run a command."""
    marker = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    document = stack.default_document(mode="disk")
    if key == "disk_dir":
        document["services"]["postgres"]["disk_dir"] = f"./data/pg$(touch {marker})"
    else:
        document["state_dir"] = f"./st`touch {marker}`"
    stack.write(document)
    result = stack.cli("apply", check=None)
    assert not marker.exists(), "a directory name in state.yaml ran a shell command"
    assert result.returncode == 64 and "through /bin/sh" in result.stderr, result.stderr


# Passwords where SASLprep matters: each maps, normalizes or is prohibited differently, and the
# verifier computed here must be the one PostgreSQL (and libpq, when the application logs in) derive.
TRICKY_PASSWORDS = [
    'it\'s "quoted" \\ back`slash` $(x) ;--',
    "naïve café ✓ 🔑",
    "soft\u00adhyphen and\u00a0nbsp",
    "Ⅸ ﬁ ² ｆｕｌｌ",
    "ﬁשלוםa",  # right-to-left letters with left-to-right ones: SASLprep's bidi rule fails, raw bytes
    "שלום ﬁ",  # a right-to-left password that does not end right-to-left: raw bytes too
    "שﬁלום",  # starts and ends right-to-left, a left-to-right letter inside: raw bytes
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",  # Arabic, all right-to-left: SASLprep applies
    "tab\there",  # a control character: prohibited, raw bytes
]


def test_the_verifier_computed_here_is_the_one_postgresql_derives(stack: Stack) -> None:
    """A mismatch means the application cannot log in while observation reports the password in sync."""
    from reconciler.databases.postgres import verifier_matches

    stack.write(stack.default_document())
    stack.cli("apply")
    mismatched = []
    with pg(stack, "postgres") as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        for password in TRICKY_PASSWORDS:
            conn.execute(sql.SQL("ALTER ROLE app PASSWORD {}").format(sql.Literal(password)))
            row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'").fetchone()
            assert row is not None and str(row[0]).startswith("SCRAM-SHA-256$")
            if not verifier_matches(str(row[0]), password):
                mismatched.append(password)
    assert mismatched == []


def _role_state(stack: Stack) -> tuple[object, ...]:
    with pg(stack, "postgres") as conn:
        row = conn.execute(
            "SELECT a.rolpassword, (SELECT array_agg(s.setdatabase::text || ':' || array_to_string(s.setconfig, ',')"
            " ORDER BY s.setdatabase) FROM pg_db_role_setting s WHERE s.setrole = a.oid)"
            " FROM pg_authid a WHERE a.rolname = 'app'"
        ).fetchone()
    assert row is not None
    return tuple(row)


@pytest.mark.parametrize(
    "attack",
    [
        "ALTER ROLE app PASSWORD 'known-to-the-attacker';",
        "ALTER ROLE app SET default_transaction_read_only = on;",
        "COMMIT; ALTER ROLE app PASSWORD 'known-to-the-attacker'; ALTER ROLE app SET statement_timeout = 1;"
        " SELECT 1/0;",
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_read_only = on',"
        " current_database()); END $$;",
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I CONNECTION LIMIT 0', current_database()); END $$;",
    ],
    ids=["password", "setting", "commit-then-fail", "database-setting", "connection-limit"],
)
def test_a_legacy_file_cannot_change_the_application_role_or_its_database_settings(
    stack: Stack, attack: str
) -> None:
    """The script runs logged in as the application role, which may change its own password and
    settings; they outlive the side database (and a ``COMMIT`` in the script escapes its transaction)."""
    document = stack.default_document()
    document["services"]["postgres"]["password_env"] = "APP_DB_PASSWORD"
    stack.write(document)
    stack.env["APP_DB_PASSWORD"] = "the-real-one-" + uuid.uuid4().hex
    stack.cli("apply")
    before = _role_state(stack)
    path = legacy_file(stack.dir, "SET client_encoding = 'UTF8';\n" + attack + "\n")
    result = stack.cli(
        "restore",
        *("--legacy", str(path), "--password-env", "LEGACY_PW", "--yes", "--no-safety-backup"),
        check=None,
        env={"LEGACY_PW": PASSWORD},
    )
    assert result.returncode != 0, "a legacy file that changes the application role was restored"
    assert _role_state(stack) == before
    with pg(stack, "postgres") as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase"
            " WHERE d.datname = 'app_db'"
        ).fetchone() == (0,)
        assert conn.execute("SELECT datconnlimit FROM pg_database WHERE datname = 'app_db'").fetchone() == (
            -1,
        )
