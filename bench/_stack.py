"""A throw-away stack for benchmarks: its own directory, RAM root and free ports; removed afterwards."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

# Ports come from the tests' machine-wide reservation (tests/support/ports.py): a benchmark may run
# while a test run does, and both start servers.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.ports import free_port

RESULTS = Path(__file__).resolve().parent / "results"


@contextmanager
def bench_stack(
    mode: str = "ram", extra: dict[str, Any] | None = None, encrypted: bool = False, runtime: str = "local"
) -> Iterator[Path]:
    """Yield the path of a state.yaml for a running stack; take it down afterwards.

    ``runtime="docker"`` uses the images of scripts/docker-images (the caller removes the containers).
    """
    name = "b" + uuid.uuid4().hex[:8]
    directory = Path("/tmp/reconciler-bench") / name
    directory.mkdir(parents=True, mode=0o755)
    os.chmod(directory.parent, 0o755)
    os.chmod(directory, 0o755)
    ram = Path("/dev/shm/reconciler-bench") / name
    document: dict[str, Any] = {
        "version": 1,
        "stack": name,
        "mode": mode,
        "services": {
            "postgres": {
                "database": "bench",
                "user": "bench",
                "port": free_port(),
                "disk_dir": "./data/postgres",
            },
            "redis": {"port": free_port(), "disk_dir": "./data/redis"},
        },
        "ram": {"path": str(ram), "mount": "never", "tmpfs_size": "50%", "min_headroom": "256MiB"},
        "backup": {"encryption": "none"},
        **(extra or {}),
    }
    if runtime == "docker":
        document["runtime"] = "docker"
        document["services"]["postgres"]["image"] = "reconciler/postgres:15"
        document["services"]["redis"]["image"] = "reconciler/redis:7"
    if encrypted:
        from reconciler.backup import keys

        recipient = keys.generate(str(directory / "keys" / "backup.key"))
        document["backup"] = {"encryption": {"recipients": [recipient], "identity_file": "./keys/backup.key"}}
    state = directory / "state.yaml"
    with state.open("w") as handle:
        YAML().dump(document, handle)
    try:
        cli(state, "apply")
        yield state
    finally:
        cli(state, "down", check=False)
        shutil.rmtree(ram, ignore_errors=True)
        shutil.rmtree(directory, ignore_errors=True)


def cli(state: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "-f", str(state), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if check and result.returncode != 0:  # say why: a bare CalledProcessError hides the reconciler's message
        raise RuntimeError(f"reconciler {' '.join(args)} exited {result.returncode}: {result.stderr[-1500:]}")
    return result


def machine() -> dict[str, Any]:
    with open("/proc/meminfo") as handle:
        mem_kib = int(handle.readline().split()[1])
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024**2, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def write_results(name: str, rows: list[dict[str, Any]], **extra: Any) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(
        json.dumps({"benchmark": name, "machine": machine(), "rows": rows, **extra}, indent=2) + "\n"
    )
    return path


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right" if column != columns[0] else "left")
    for row in rows:
        table.add_row(*row)
    Console(width=200).print(table)


def pg_conn(state: Path) -> dict[str, Any]:
    """psycopg connection arguments for a bench stack's PostgreSQL (its socket, as the superuser)."""
    document = YAML(typ="safe").load(state.read_text())
    return {
        "host": str(state.parent / ".reconciler" / "run" / "postgres"),
        "port": document["services"]["postgres"]["port"],
        "user": "postgres",
        "dbname": "bench",
    }
