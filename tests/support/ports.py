"""TCP ports for throw-away servers, reserved across every process on the machine.

The tests run in parallel (pytest-xdist workers), several test runs and benchmarks may run on one
machine at once, and every stack needs ports of its own. Asking the kernel for an ephemeral port
(``bind(("127.0.0.1", 0))``) is not enough: the socket is closed at once, so another process (or the
same one, on the next call) may be handed the same port before the server binds it, and a port in the
ephemeral range may also be taken meanwhile by any outgoing connection's local end.

So a port comes from a range below the kernel's ephemeral range (32768-60999 by default; checked at
run time) and is written, under an ``flock``, into one registry file shared by every process:
``/tmp/reconciler-ports/registry``, one line ``port pid start-time`` per reserved port. A port stays
reserved for the lifetime of the process that took it (a test run hands out about a thousand, the
range holds twelve thousand); lines of processes that are gone (pid not running, or running with
another start time, i.e. a reused pid) are dropped by the next reservation, so nothing needs cleaning
up after a crash. A port is handed out only if it can also be bound right now, on 127.0.0.1 and on
all addresses (host-network containers listen everywhere), which skips ports some unrelated server
holds.
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
from pathlib import Path

REGISTRY_DIR = Path("/tmp/reconciler-ports")
LOW = 20000


def _ephemeral_low() -> int:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
        return int(handle.read().split()[0])


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _bindable(port: int) -> bool:
    for address in ("127.0.0.1", "0.0.0.0"):
        with socket.socket() as sock:
            try:
                sock.bind((address, port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A port no other live process has reserved through this module, and free right now."""
    REGISTRY_DIR.mkdir(mode=0o777, exist_ok=True)
    me = f"{os.getpid()} {_start_time(os.getpid())}"
    high = min(_ephemeral_low(), 32768)
    with open(REGISTRY_DIR / "registry", "a+") as registry:
        fcntl.flock(registry, fcntl.LOCK_EX)
        registry.seek(0)
        live: list[str] = []
        taken: set[int] = set()
        started: dict[str, str | None] = {}  # pid -> start time, read once per reservation
        for line in registry.read().splitlines():
            fields = line.split()
            if len(fields) != 3:
                continue
            if fields[1] not in started:
                started[fields[1]] = _start_time(int(fields[1]))
            if started[fields[1]] == fields[2]:
                live.append(line)
                taken.add(int(fields[0]))
        # Start anywhere in the range: processes then rarely probe the same ports one after another.
        start = random.randrange(LOW, high)
        for port in [*range(start, high), *range(LOW, start)]:
            if port not in taken and _bindable(port):
                registry.seek(0)
                registry.truncate()
                registry.write("".join(f"{line}\n" for line in [*live, f"{port} {me}"]))
                registry.flush()
                return port
    raise RuntimeError(
        f"no free port left in {LOW}-{high - 1}: {len(taken)} are reserved in {REGISTRY_DIR}/registry "
        "by live processes; stop stray test runs"
    )
