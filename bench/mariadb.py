"""MariaDB (issue 16): backup, restore and the mode switch, each against the plain way, in one run.

Per scale (``--mb``, the database's size on disk, roughly; dataset: ``dataset.generate_mariadb``, varied
text, JSON and secondary indexes, so compression is not flattered):
- backup: ``reconciler backup`` (mariadb-dump → zstd → age, plus the per-table statistics of the same
  snapshot) vs plain ``mariadb-dump --single-transaction | gzip`` (and ``| zstd -3``). Targets: at most
  1.2x the plain dump's wall time, the reconciler's own peak RSS at most 64 MB.
- restore: ``reconciler restore`` (the deliberate one: a side database, the table checksums checked
  against the manifest, an atomic swap) vs plain ``gunzip | mariadb`` into an empty database.
- switch ram → disk and disk → ram while an application writes: one ``mariadb`` client per write over
  TCP as the application user (password auth), a write counting once its client exits 0 (the commit
  acknowledged). Write downtime = the longest gap between two acknowledged writes (resolution: one
  client start, ~10-30 ms); also the journal's drain → resume interval and the whole ``apply``, each
  per GB of data directory. Every acknowledged write must be in the database afterwards. The legacy
  downtime for comparison is what the plain way costs: the plain dump plus the plain restore.

Ratios are to the plain command of the same scale measured in the same run (the machine is shared).

Usage: python bench/mariadb.py [--mb 300] [--mb 1000 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import COMPARISON_COLUMNS, Recorder, comparison_table, measure
from _stack import bench_stack, free_port, print_table, write_results
from dataset import generate_mariadb
from switch import Writer, switch, writer_wait_for_ack

from tests.support.mariadb_client import tcp_statement

PY = sys.executable
PASSWORD = "bench-writer-Ü-password"
PASSWORD_ENV = "BENCH_MARIADB_PASSWORD"


class MariadbWriter(Writer):
    """``switch.Writer`` for MariaDB: one ``mariadb`` client per INSERT (an application reconnecting
    after each error), so a killed connection or a locked account shows as a gap."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.acked = {"mariadb": []}
        self.stopping = threading.Event()

    def _loop(self, name: str) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            result = tcp_statement(
                self.port, "bench", "bench", PASSWORD, f"INSERT INTO bench_writes (id) VALUES ({n})"
            )
            if result.returncode == 0:
                self.acked[name].append((n, time.perf_counter()))
            else:
                self.stopping.wait(0.01)  # the application's reconnect back-off

    def lost(self, client: list[str]) -> int:
        rows = subprocess.run(
            [*client, "-N", "-e", "SELECT id FROM bench_writes", "bench"],
            text=True,
            check=True,
            capture_output=True,
        ).stdout.split()
        return len({n for n, _ in self.acked["mariadb"]} - {int(r) for r in rows})


def run_sql(client: list[str], sql: str) -> str:
    return subprocess.run(
        [*client, "-N", "-e", sql], text=True, check=True, capture_output=True
    ).stdout.strip()


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_scale(megabytes: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    port = free_port()
    services = {
        "mariadb": {
            "database": "bench",
            "user": "bench",
            "password_env": PASSWORD_ENV,
            "port": port,
            "disk_dir": "./data/mariadb",
        }
    }
    os.environ[PASSWORD_ENV] = PASSWORD  # the reconciler (a child) reads the password from its env
    with bench_stack(extra={"services": services}, encrypted=True) as state:
        sock = str(state.parent / ".reconciler" / "run" / "mariadb" / "mariadb.sock")
        client = ["mariadb", "--no-defaults", "-S", sock, "-u", "root"]
        info = generate_mariadb(client, "bench", megabytes)
        print(f"  dataset: {json.dumps(info)}", flush=True)
        work = state.parent / "work"
        work.mkdir()
        dump = f"mariadb-dump --no-defaults -S {sock} -u root --single-transaction --quick bench"
        record = Recorder(scale_mb=megabytes, db_bytes=info["database_bytes"])

        m = measure([PY, "-m", "reconciler", "-f", str(state), "backup"])
        store = state.parent / "data" / "backups"
        record("reconciler backup", "backup", m, sum(p.stat().st_size for p in store.iterdir()))
        m = measure(["sh", "-c", f"{dump} | gzip > {work}/plain.sql.gz"])
        record(
            "mariadb-dump --single-transaction | gzip (plain)",
            "backup",
            m,
            (work / "plain.sql.gz").stat().st_size,
        )
        plain_dump = m.seconds
        m = measure(["sh", "-c", f"{dump} | zstd -3 -q > {work}/plain.sql.zst"])
        record(
            "mariadb-dump --single-transaction | zstd -3",
            "backup",
            m,
            (work / "plain.sql.zst").stat().st_size,
        )
        (work / "plain.sql.zst").unlink()  # the machine's disk is shared: keep only what is used

        m = measure(
            [PY, "-m", "reconciler", "-f", str(state), "restore", "--latest", "--yes", "--no-safety-backup"]
        )
        record("reconciler restore (side db, checksums, swap)", "restore", m)
        subprocess.run([*client, "-e", "CREATE DATABASE plain_restore"], check=True)
        m = measure(["sh", "-c", f"gunzip -c {work}/plain.sql.gz | {' '.join(client)} plain_restore"])
        record("gunzip | mariadb (plain)", "restore", m)
        plain_restore = m.seconds
        # experiment: the same plain restore with a buffer pool of 256 MB instead of the 64 MB we run with
        pool = run_sql(client, "SELECT @@innodb_buffer_pool_size")
        subprocess.run(
            [
                *client,
                "-e",
                "DROP DATABASE plain_restore; CREATE DATABASE plain_restore; "
                f"SET GLOBAL innodb_buffer_pool_size = {256 * 2**20}",
            ],
            check=True,
        )
        m = measure(["sh", "-c", f"gunzip -c {work}/plain.sql.gz | {' '.join(client)} plain_restore"])
        record("gunzip | mariadb, buffer pool 256 MB (experiment)", "restore", m)
        subprocess.run(
            [*client, "-e", f"DROP DATABASE plain_restore; SET GLOBAL innodb_buffer_pool_size = {pool}"],
            check=True,
        )
        shutil.rmtree(work)

        # the switch, under a live writer
        subprocess.run(
            [*client, "bench", "-e", "CREATE TABLE bench_writes (id INT PRIMARY KEY) ENGINE=InnoDB"],
            check=True,
        )
        data_dir_gb = dir_bytes(Path("/dev/shm/reconciler-bench") / state.parent.name / "mariadb") / 1e9
        writer = MariadbWriter(port)
        threads = writer.run()
        writer_wait_for_ack(writer, time.perf_counter())
        switches = []
        for mode, what in (("disk", "ram → disk"), ("ram", "disk → ram")):
            result = switch(state, mode, writer)
            if "failed" in result:  # recorded as such; the backup and restore figures still count
                print(f"  switch   {what}: FAILED {result['failed']}", flush=True)
                switches.append({"scale_mb": megabytes, "what": what, **result})
                break
            switches.append(
                {"scale_mb": megabytes, "what": what, "data_dir_gb": round(data_dir_gb, 3), **result}
            )
            print(f"  switch   {what:42} {json.dumps(result)}", flush=True)
        writer.stopping.set()
        for thread in threads:
            thread.join()
        lost = writer.lost(client)
        legacy = plain_dump + plain_restore
        for row in switches:
            row["lost_acknowledged_writes"] = lost
            if "failed" in row:
                continue
            row["legacy_downtime_seconds"] = round(legacy, 2)
            for key in ("writer_gap_seconds", "downtime_seconds", "total_seconds"):
                row[key.replace("_seconds", "_s_per_gb")] = round(row[key] / data_dir_gb, 2)
        return record.rows, switches


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, action="append", help="database size on disk in MB (repeatable)")
    scales = parser.parse_args().mb or [300, 1000]
    load = os.getloadavg()
    rows: list[dict[str, Any]] = []
    switches: list[dict[str, Any]] = []
    for megabytes in scales:
        print(f"scale ~{megabytes} MB:", flush=True)
        measured, switched = run_scale(megabytes)
        rows += measured
        switches += switched
    print_table(
        "MariaDB backup and restore (x base: to the plain command of the same scale, same run)",
        COMPARISON_COLUMNS,
        comparison_table(rows, "scale_mb", lambda r: "(plain)" in r["what"]),
    )
    print_table(
        "MariaDB mode switch under a live writer (per GB of data directory)",
        [
            "scale",
            "what",
            "data dir GB",
            "write gap s",
            "s/GB",
            "drain→resume s",
            "s/GB",
            "apply s",
            "s/GB",
            "x legacy",
            "lost",
        ],
        [
            [
                f"{r['scale_mb']} MB",
                r["what"],
                f"{r['data_dir_gb']:.2f}",
                f"{r['writer_gap_seconds']:.2f}",
                f"{r['writer_gap_s_per_gb']:.2f}",
                f"{r['downtime_seconds']:.2f}",
                f"{r['downtime_s_per_gb']:.2f}",
                f"{r['total_seconds']:.1f}",
                f"{r['total_s_per_gb']:.1f}",
                f"{r['writer_gap_seconds'] / r['legacy_downtime_seconds']:.2f}",
                str(r["lost_acknowledged_writes"]),
            ]
            for r in switches
            if "failed" not in r
        ]
        + [
            [f"{r['scale_mb']} MB", r["what"], "FAILED: " + r["failed"][:120]]
            for r in switches
            if "failed" in r
        ],
    )
    summary = {}
    for scale in scales:
        r = {row["what"]: row for row in rows if row["scale_mb"] == scale}
        plain = r["mariadb-dump --single-transaction | gzip (plain)"]
        summary[str(scale)] = {
            "backup_vs_plain": round(r["reconciler backup"]["seconds"] / plain["seconds"], 2),
            "restore_vs_plain": round(
                r["reconciler restore (side db, checksums, swap)"]["seconds"]
                / r["gunzip | mariadb (plain)"]["seconds"],
                2,
            ),
            "reconciler_own_peak_rss_mb": max(
                r["reconciler backup"]["peak_own_rss_mb"],
                r["reconciler restore (side db, checksums, swap)"]["peak_own_rss_mb"],
            ),
        }
    load_after = os.getloadavg()
    print(json.dumps(summary, indent=2), f"load average before {load}, after {load_after}")
    print(
        write_results(
            "mariadb", rows, switches=switches, summary=summary, load_before=load, load_after=load_after
        )
    )


if __name__ == "__main__":
    main()
