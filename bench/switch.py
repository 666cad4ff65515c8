"""Mode switch: write downtime and total time, disk→ram and ram→disk, vs the legacy way, in one run.

Write downtime = from the start of the drain step to the end of the resume step, read from the
operation's journal (each step records when it started and finished). The legacy way (what the old
Makefile did): a full plain dump, then psql into the freshly started servers on the other side; the
application is down for all of it.
Targets (issue 7): downtime under 2 s per GB of data directory, at least 5x shorter than legacy.

``--writer`` (issue 12): an application writes during each switch (psycopg over TCP inserting rows,
redis-py SETting keys, each reconnecting after errors). Its longest gap between two acknowledged
writes is the write downtime a client sees; afterwards every acknowledged write must be present.

Usage: python bench/switch.py [--mb 1000] [--writer]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import bench_stack, cli, print_table, write_results
from dataset import generate
from ruamel.yaml import YAML

from reconciler.databases.postgres import RESTORE_ENV


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Writer:
    """Writes through the service ports during a switch; records acknowledged writes and their times."""

    def __init__(self, state: Path) -> None:
        document = YAML(typ="safe").load(state.read_text())
        self.pg_port = document["services"]["postgres"]["port"]
        self.redis_port = document["services"]["redis"]["port"]
        self.acked: dict[str, list[tuple[int, float]]] = {"postgres": [], "redis": []}
        self.stopping = threading.Event()

    def _pg(self) -> Any:
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=self.pg_port,
            user="bench",
            password="bench-writer",
            dbname="bench",
            autocommit=True,
            connect_timeout=3,
        )

    def _redis(self) -> Any:
        import redis

        return redis.Redis(port=self.redis_port, socket_timeout=5, socket_connect_timeout=3)

    def _loop(self, name: str) -> None:
        conn: Any = None
        n = 0
        while not self.stopping.is_set():
            n += 1
            try:
                if conn is None:
                    conn = self._pg() if name == "postgres" else self._redis()
                if name == "postgres":
                    conn.execute("INSERT INTO bench_writes (id) VALUES (%s)", (n,))
                else:
                    conn.set(f"w:{n}", n)
                self.acked[name].append((n, time.perf_counter()))
            except Exception:  # refused or terminated: not acknowledged; reconnect after a back-off
                with contextlib.suppress(Exception):
                    conn.close()
                conn = None
                self.stopping.wait(0.01)

    def run(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._loop, args=(name,), daemon=True) for name in self.acked]
        for thread in threads:
            thread.start()
        return threads

    def longest_gap(self, since: float) -> float:
        gaps = []
        for acked in self.acked.values():
            times = [t for _, t in acked if t >= since]
            gaps.append(max((b - a for a, b in itertools.pairwise(times)), default=0.0))
        return round(max(gaps), 2)

    def missing(self, sock: str, bindir: Path) -> dict[str, int]:
        rows = subprocess.run(
            [
                str(bindir / "psql"),
                "-h",
                sock,
                "-p",
                str(self.pg_port),
                "-U",
                "postgres",
                "-d",
                "bench",
                "-XAtc",
                "SELECT id FROM bench_writes",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        keys = {k.decode() for k in self._redis().scan_iter("w:*", count=1000)}
        return {
            "postgres": len({n for n, _ in self.acked["postgres"]} - {int(r) for r in rows}),
            "redis": len({n for n, _ in self.acked["redis"]} - {int(k[2:]) for k in keys}),
        }


def switch(state: Path, mode: str, writer: Writer | None = None) -> dict[str, Any]:
    document = YAML(typ="safe").load(state.read_text())
    document["mode"] = mode
    with state.open("w") as handle:
        YAML().dump(document, handle)
    start = time.perf_counter()
    applied = cli(state, "apply", check=False)
    total = time.perf_counter() - start
    if applied.returncode != 0:
        return {"total_seconds": round(total, 2), "failed": applied.stderr.strip().splitlines()[-1]}
    history = sorted((state.parent / ".reconciler" / "journal-history").iterdir())
    journal = json.loads(history[-1].read_text())
    steps = {s["name"]: round(_ts(s["finished"]) - _ts(s["started"]), 3) for s in journal["steps"]}
    by_name = {s["name"]: s for s in journal["steps"]}
    downtime = _ts(by_name["resume"]["finished"]) - _ts(by_name["drain"]["started"])
    result = {"total_seconds": round(total, 2), "downtime_seconds": round(downtime, 2), "steps": steps}
    if writer is not None:
        writer_wait_for_ack(writer, time.perf_counter())
        result["writer_gap_seconds"] = writer.longest_gap(start)
    return result


def writer_wait_for_ack(writer: Writer, after: float) -> None:
    """Poll until both writers had a write acknowledged after ``after`` (the new copy serves them)."""
    deadline = time.monotonic() + 60
    while any(not acked or acked[-1][1] < after for acked in writer.acked.values()):
        if time.monotonic() > deadline:
            raise SystemExit("the writer got no acknowledgement after the switch")
        writer.stopping.wait(0.01)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=1000)
    parser.add_argument("--writer", action="store_true", help="write during each switch (issue 12)")
    parser.add_argument("--no-legacy", action="store_true", help="skip the legacy dump + restore")
    args = parser.parse_args()
    megabytes = args.mb
    with bench_stack(mode="disk", encrypted=True) as state:
        document = YAML(typ="safe").load(state.read_text())
        port = document["services"]["postgres"]["port"]
        sock = str(state.parent / ".reconciler" / "run" / "postgres")
        bindir = next(Path("/usr/lib/postgresql").glob("*/bin"))
        info = generate(
            {"host": sock, "port": port, "user": "postgres", "dbname": "bench"}, bindir, megabytes
        )
        data_dir_gb = (
            sum(p.stat().st_size for p in (state.parent / "data" / "postgres").rglob("*") if p.is_file())
            / 1e9
        )

        writer = None
        if args.writer:
            subprocess.run(
                [
                    str(bindir / "psql"),
                    "-h",
                    sock,
                    "-p",
                    str(port),
                    "-U",
                    "postgres",
                    "-d",
                    "bench",
                    "-Xqc",
                    "ALTER ROLE bench PASSWORD 'bench-writer'; CREATE TABLE bench_writes (id int PRIMARY KEY); "
                    "ALTER TABLE bench_writes OWNER TO bench",
                ],
                check=True,
            )
            writer = Writer(state)
            threads = writer.run()
            writer_wait_for_ack(writer, time.perf_counter())
        to_ram = switch(state, "ram", writer)
        to_disk = switch(state, "disk", writer) if "failed" not in to_ram else {"failed": "not run"}
        if writer is not None:
            writer.stopping.set()
            for thread in threads:
                thread.join()
            lost = writer.missing(sock, bindir)
            print("acknowledged writes:", {k: len(v) for k, v in writer.acked.items()}, "lost:", lost)
            to_disk["lost_acknowledged_writes"] = lost
        if args.no_legacy or "failed" in to_ram or "failed" in to_disk:
            print(json.dumps({"disk → ram": to_ram, "ram → disk": to_disk}, indent=1))
            print(f"results: {write_results('switch', [to_ram, to_disk], scale_mb=megabytes, dataset=info)}")
            return

        # legacy: full plain dump, then restore with psql into a fresh database (the app is down throughout)
        pg = ["-h", sock, "-p", str(port), "-U", "postgres"]
        plain = state.parent / "legacy.sql"
        start = time.perf_counter()
        subprocess.run(
            [str(bindir / "pg_dump"), *pg, "-Fp", "--no-owner", "--no-acl", "-f", str(plain), "bench"],
            check=True,
        )
        subprocess.run(
            [str(bindir / "psql"), *pg, "-d", "postgres", "-Xqc", "CREATE DATABASE legacy_copy"], check=True
        )
        subprocess.run(
            [
                str(bindir / "psql"),
                *pg,
                "-d",
                "legacy_copy",
                "-Xq",
                "-v",
                "ON_ERROR_STOP=1",
                "-f",
                str(plain),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ, **RESTORE_ENV},  # the same server settings as our own restore path
        )
        legacy = time.perf_counter() - start

    rows = [
        {
            "what": "disk → ram",
            **to_ram,
            "downtime_s_per_gb": round(to_ram["downtime_seconds"] / data_dir_gb, 2),
        },
        {
            "what": "ram → disk",
            **to_disk,
            "downtime_s_per_gb": round(to_disk["downtime_seconds"] / data_dir_gb, 2),
        },
        {
            "what": "legacy (dump + psql restore)",
            "total_seconds": round(legacy, 2),
            "downtime_seconds": round(legacy, 2),
            "downtime_s_per_gb": round(legacy / data_dir_gb, 2),
            "steps": {},
        },
    ]
    print_table(
        f"mode switch, data directory {data_dir_gb:.2f} GB",
        ["what", "downtime s", "s per GB", "total s", "x legacy downtime"],
        [
            [
                r["what"],
                f"{r['downtime_seconds']:.1f}",
                f"{r['downtime_s_per_gb']:.2f}",
                f"{r['total_seconds']:.1f}",
                f"{r['downtime_seconds'] / legacy:.2f}",
            ]
            for r in rows
        ],
    )
    for row in rows[:2]:
        print(row["what"], "steps (s):", json.dumps(row["steps"]))
    print(
        f"results: {write_results('switch', rows, scale_mb=megabytes, dataset=info, data_dir_gb=round(data_dir_gb, 3))}"
    )


if __name__ == "__main__":
    main()
