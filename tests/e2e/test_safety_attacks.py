"""A hostile review of the data-safety work (issue 12): attacks that once made status lie or blocked
the fall-back to an older set, run through the real CLI against real servers."""

from __future__ import annotations

import pytest

from tests.conftest import Stack
from tests.integration.test_backups import backup_records, encrypted_stack, pg, sets

pytestmark = pytest.mark.e2e


def test_a_dump_the_server_refuses_is_rejected_even_when_its_rows_say_timed_out(stack: Stack) -> None:
    """A CHECK constraint whose SQL function names a table without its schema passes on the live
    server but fails in pg_restore (the dump sets ``search_path = ''``): the dump itself is refused,
    a content fault. PostgreSQL echoes the failing COPY line in ``CONTEXT``; a log row saying
    "Request timed out" once made the whole failure read as a host fault: never rejected, retried
    forever, and the machine blamed for it."""
    encrypted_stack(stack)
    with pg(stack) as conn:
        conn.execute("SET ROLE app")
        conn.execute("CREATE TABLE known_messages (msg text)")
        conn.execute("INSERT INTO known_messages VALUES ('Request timed out')")
        conn.execute(
            "CREATE FUNCTION is_known(m text) RETURNS boolean LANGUAGE sql "
            "AS $$ SELECT EXISTS (SELECT 1 FROM known_messages WHERE msg = m) $$"
        )
        conn.execute("CREATE TABLE request_log (msg text CHECK (is_known(msg)))")
        conn.execute("INSERT INTO request_log VALUES ('Request timed out')")
    stack.cli("backup")
    name = sets(stack)[0]["name"]

    result = stack.cli("verify", name, check=None)

    assert result.returncode == 1, result.stderr
    assert "problem of this host" not in result.stderr, result.stderr
    assert "does not exist" in result.stderr and "known_messages" in result.stderr, result.stderr
    record = backup_records(stack)
    assert f"local/{name}" in record.get("rejected", {}), "the dump is refused for its content"
    assert (record.get("last_verify_error") or {}).get("fault") != "host"
