"""The tests' port reservation (tests/support/ports.py) across processes, as pytest-xdist workers use it.

The suite runs on several worker processes, and other test runs or benchmarks may share the machine:
a port one process handed to a server-to-be must never be handed to another, and a crashed process
must not keep its ports forever.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT
from tests.support import ports

# Each process prints its ports, then stays alive until told to exit (its stdin closes): ports of a
# process that is gone are free again by design, so "at once" means every reserver is still alive.
RESERVE = (
    "import sys; from tests.support.ports import free_port; "
    "print(*[free_port() for _ in range({n})], flush=True); sys.stdin.read()"
)


def _reserve_in_processes(processes: int, each: int) -> dict[int, list[int]]:
    """pid -> the ports that process reserved, all of them reserved while every process was alive
    (they have exited when this returns)."""
    started = [
        subprocess.Popen(
            [sys.executable, "-c", RESERVE.format(n=each)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(processes)
    ]
    handed: dict[int, list[int]] = {}
    for process in started:
        assert process.stdout is not None
        handed[process.pid] = [int(port) for port in process.stdout.readline().split()]
    for process in started:
        process.communicate(timeout=120)
    return handed


def test_processes_reserving_at_once_never_get_the_same_port() -> None:
    handed = [port for batch in _reserve_in_processes(6, 100).values() for port in batch]
    assert len(handed) == 600
    assert len(set(handed)) == 600, sorted(p for p in set(handed) if handed.count(p) > 1)
    # below the ephemeral range: no bind(0) and no outgoing connection can take one meanwhile
    assert all(ports.LOW <= port < ports._ephemeral_low() for port in handed)


def test_a_port_held_by_a_live_process_is_not_handed_out_and_a_dead_ones_is_released() -> None:
    mine = ports.free_port()
    ((pid, others),) = _reserve_in_processes(1, 1).items()  # it has exited: its reservation lapses
    assert mine not in others
    ports.free_port()  # any reservation drops the lines of processes that are gone
    owners = {int(line.split()[0]): int(line.split()[1]) for line in ports_registry() if line}
    assert owners.get(mine) == os.getpid()
    assert pid not in owners.values()


def ports_registry() -> list[str]:
    return (ports.REGISTRY_DIR / "registry").read_text().split("\n")
