"""A service added to a stack (or moved here from another host) that no backup set holds yet.

The sets this host already has hold only the other services. Trying them for the new, empty service
must not mark them rejected: they are good sets of the services they hold, and the next power cut
needs them.
"""

from __future__ import annotations

import pytest

from tests.conftest import Stack
from tests.e2e.test_power_cut import power_cut
from tests.integration.test_backups import pg

pytestmark = pytest.mark.e2e


def postgres_rows(stack: Stack) -> int:
    with pg(stack) as conn:
        row = conn.execute("SELECT count(*) FROM notes").fetchone()
    assert row is not None
    return int(row[0])


def test_adding_redis_never_rejects_the_postgres_sets_a_later_power_cut_restores_from(stack: Stack) -> None:
    document = stack.default_document("ram")
    redis = document["services"].pop("redis")
    stack.write(document)
    stack.cli("apply")
    with pg(stack) as conn:
        conn.execute("SET ROLE app")
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY)")
        conn.execute("INSERT INTO notes SELECT generate_series(1, 321)")
    stack.cli("backup")

    document["services"]["redis"] = redis  # the stack grows a redis (or redis moves to this host)
    stack.write(document)
    plan = stack.cli("plan", check=None)
    assert "EMPTY" in plan.stdout and "restore" not in plan.stdout.lower(), plan.stdout
    stack.cli("apply")  # on old main: exit 1, "no backup set could be restored", both sets rejected
    assert not stack.status()["lastRestore"], "no set holds redis: nothing to restore it from"
    listing = stack.cli("backups", "-o", "json").stdout
    assert "rejected" not in listing, listing

    power_cut(stack)
    stack.cli("apply")
    assert postgres_rows(stack) == 321
