"""The docker runtime: cost of one observe pass, and backup throughput through exec vs the local runtime.

In one run (needs a Docker engine and the test images: scripts/dockerd):
- a 5-container stack (PostgreSQL and Redis managed by the reconciler, plus three app containers):
  median of N in-process observe passes (everything `plan` observes: containers, host data directories,
  psql facts through exec, Redis INFO), and the Engine API part alone (list + inspect) (target < 100 ms);
- the same database (~--mb MB) backed up on the local runtime and on the docker runtime, where pg_dump
  runs inside the container and its output streams through the Engine API socket: seconds and MB/s,
  and the ratio.

Usage: python bench/docker_runtime.py [--mb 200] [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import docker
from _stack import bench_stack, cli, pg_conn, print_table, write_results
from dataset import generate
from ruamel.yaml import YAML

os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")


def fill(state: Path, megabytes: int) -> int:
    conn = pg_conn(state)
    return int(generate(conn, next(Path("/usr/lib/postgresql").glob("*/bin")), megabytes)["database_bytes"])


def timed_backup(state: Path) -> float:
    start = time.perf_counter()
    cli(state, "backup")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    engine = docker.from_env()
    rows: list[dict[str, Any]] = []

    with bench_stack(encrypted=True) as state:
        db_bytes = fill(state, args.mb)
        local_seconds = timed_backup(state)

    extra_containers = []
    with bench_stack(encrypted=True, runtime="docker") as state:
        stack = YAML(typ="safe").load(state.read_text())["stack"]
        try:
            for role in ("app", "worker", "proxy"):
                extra_containers.append(
                    engine.containers.run(
                        "reconciler/app:1",
                        ["sleep", "infinity"],
                        name=f"{stack}-{role}",
                        detach=True,
                        network_mode="none",
                    )
                )
            from reconciler.engine.context import StackContext, load_spec
            from reconciler.observe.docker import find_containers

            ctx = StackContext.build(load_spec(str(state)), str(state))
            ctx.observe()  # warm: client connection, imports
            observe_ms = []
            for _ in range(args.runs):
                start = time.perf_counter()
                ctx.observe()
                observe_ms.append((time.perf_counter() - start) * 1000)
            api_ms = []
            for _ in range(args.runs):
                start = time.perf_counter()
                find_containers(ctx.runtime, ["postgres", "redis"])
                api_ms.append((time.perf_counter() - start) * 1000)
            docker_db_bytes = fill(state, args.mb)
            docker_seconds = timed_backup(state)
        finally:
            for container in extra_containers:
                container.remove(force=True)
            for service in ("postgres", "redis"):
                subprocess.run(["docker", "rm", "-f", f"{stack}-{service}"], capture_output=True, check=False)

    rows = [
        {
            "what": "observe pass, 5 containers (ms, median)",
            "value": round(statistics.median(observe_ms), 1),
            "target": "< 100",
        },
        {
            "what": "Engine API part: list + inspect (ms, median)",
            "value": round(statistics.median(api_ms), 1),
        },
        {
            "what": "backup, local runtime (s)",
            "value": round(local_seconds, 2),
            "db_bytes": db_bytes,
            "mb_per_s": round(db_bytes / local_seconds / 1e6, 1),
        },
        {
            "what": "backup, docker exec (s)",
            "value": round(docker_seconds, 2),
            "db_bytes": docker_db_bytes,
            "mb_per_s": round(docker_db_bytes / docker_seconds / 1e6, 1),
        },
    ]
    print_table(
        f"docker runtime ({args.mb} MB database, {args.runs} observe passes)",
        ["what", "value", "MB/s", "ratio vs local"],
        [
            [rows[0]["what"], f"{rows[0]['value']:.1f}", "-", "-"],
            [rows[1]["what"], f"{rows[1]['value']:.1f}", "-", "-"],
            [rows[2]["what"], f"{local_seconds:.2f}", f"{rows[2]['mb_per_s']:.1f}", "1.00x"],
            [
                rows[3]["what"],
                f"{docker_seconds:.2f}",
                f"{rows[3]['mb_per_s']:.1f}",
                f"{docker_seconds / local_seconds:.2f}x time",
            ],
        ],
    )
    print(write_results("docker", rows, megabytes=args.mb))


if __name__ == "__main__":
    main()
