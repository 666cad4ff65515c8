"""MariaDB on the docker runtime: its container removed by hand, and its port taken meanwhile.

The container is recreated on the data directory the reconciler kept (nothing to restore: the data is
still there). While another process holds the port, mariadbd cannot listen: that is the host's fault,
not the data's, and it carries the code docs/FAILURES.md gives it (``host_fault``: "a port taken, a
server ... that does not start"), so an alert on ``host_fault`` fires for it; once the port is free the
stack converges with every row.
"""

from __future__ import annotations

import socket

import pytest

from tests.conftest import Stack
from tests.integration.test_mariadb import containers, mariadb_content, mixed_stack, seed_mariadb

pytestmark = pytest.mark.e2e


def test_a_mariadb_container_removed_by_hand_whose_port_is_taken_is_a_host_fault_then_converges(
    stack: Stack,
) -> None:
    mixed_stack(stack, runtime="docker")
    seed_mariadb(stack, 200)
    expected = mariadb_content(stack)
    name = f"{stack.document()['stack']}-mariadb"
    (container,) = [c for c in containers(stack) if c.name == name]
    container.remove(force=True)

    port = stack.mariadb_port  # type: ignore[attr-defined]
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        taken = stack.cli("apply", check=1)
    assert f"could not listen on port {port}" in taken.stderr, taken.stderr[-2000:]
    assert '"code": "host_fault"' in taken.stderr, taken.stderr[-2000:]

    stack.cli("apply")
    stack.cli("plan", check=0)
    assert mariadb_content(stack) == expected
