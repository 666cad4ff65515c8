"""A database name at the length limit and the staging names a restore derives from it.

PostgreSQL truncates identifiers to 63 bytes silently: for a 63-byte name, `<name>__restoring` is the
live database itself. A restore must refuse before it touches anything, never drop the live data.
"""

from __future__ import annotations

import pytest

from tests.conftest import Stack
from tests.integration.test_backups import pg

pytestmark = pytest.mark.integration

LONG = "d" * 63  # the longest name PostgreSQL keeps whole (the spec allows it)


def notes(stack: Stack) -> int:
    with pg(stack, LONG) as conn:
        row = conn.execute("SELECT count(*) FROM notes").fetchone()
    assert row is not None
    return int(row[0])


def test_a_restore_of_a_63_byte_database_never_drops_the_live_database(stack: Stack) -> None:
    document = stack.default_document("disk")
    del document["services"]["redis"]
    document["services"]["postgres"]["database"] = LONG
    stack.write(document)
    stack.cli("apply")
    with pg(stack, LONG) as conn:
        conn.execute("SET ROLE app")
        conn.execute("CREATE TABLE notes (id int)")
        conn.execute("INSERT INTO notes SELECT generate_series(1, 77)")
    stack.cli("backup")
    with pg(stack, LONG) as conn:
        conn.execute("INSERT INTO notes VALUES (1000)")

    result = stack.cli("restore", "--latest", "--yes", check=1)
    assert "63 bytes long" in result.stderr and "not touched" in result.stderr, result.stderr
    assert notes(stack) == 78  # on old main: the live database was dropped ("does not exist")
