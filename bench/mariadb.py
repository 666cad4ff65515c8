"""MariaDB backup and restore: reconciler vs plain `mariadb-dump | gzip` (and `| zstd -3`), in one run.

For each: wall time, peak RSS of the command's own process and of its whole process tree, output size.
The reconciler's backup also takes the per-table statistics of the same snapshot and encrypts with
age; its restore loads into a side database, checks it against the manifest and swaps it in.

Usage: python bench/mariadb.py [--rows 2000000] [--rows 200000 ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import measure
from _stack import bench_stack, free_port, print_table, write_results

PY = sys.executable


def run_scale(rows: int) -> list[dict[str, Any]]:
    services = {
        "mariadb": {"database": "bench", "user": "bench", "port": free_port(), "disk_dir": "./data/mariadb"}
    }
    with bench_stack(extra={"services": services}, encrypted=True) as state:
        sock = str(state.parent / ".reconciler" / "run" / "mariadb" / "mariadb.sock")
        client = ["mariadb", "--no-defaults", "-S", sock, "-u", "root"]
        subprocess.run(
            [*client, "bench"],
            input="CREATE TABLE orders (id INT PRIMARY KEY, title VARCHAR(100), price DOUBLE, note TEXT) "
            "ENGINE=InnoDB; INSERT INTO orders SELECT seq, CONCAT('Ware #', seq, ' some title text here'), "
            f"seq * 1.5, REPEAT(MD5(seq), 2) FROM seq_1_to_{rows}; ANALYZE TABLE orders;",
            text=True,
            check=True,
            capture_output=True,
        )
        size = subprocess.run(
            [
                *client,
                "-N",
                "-e",
                "SELECT SUM(data_length + index_length) FROM information_schema.tables "
                "WHERE table_schema = 'bench'",
            ],
            text=True,
            check=True,
            capture_output=True,
        ).stdout.strip()
        work = state.parent / "work"
        work.mkdir()
        dump = f"mariadb-dump --no-defaults -S {sock} -u root --single-transaction --quick bench"
        results: list[dict[str, Any]] = []

        def record(what: str, kind: str, m: Any, output: int | None = None) -> None:
            results.append(
                {
                    "rows": rows,
                    "db_bytes": int(size),
                    "what": what,
                    "kind": kind,
                    **m.row(),
                    "output_bytes": output,
                }
            )
            print(
                f"  {kind:8} {what:34} {m.seconds:7.1f} s  own {m.peak_own_rss / 2**20:6.1f} MB", flush=True
            )

        m = measure([PY, "-m", "reconciler", "-f", str(state), "backup"])
        store = state.parent / "data" / "backups"
        record("reconciler backup", "backup", m, sum(p.stat().st_size for p in store.iterdir()))
        m = measure(["sh", "-c", f"{dump} | gzip > {work}/plain.sql.gz"])
        record("mariadb-dump | gzip (plain)", "backup", m, (work / "plain.sql.gz").stat().st_size)
        m = measure(["sh", "-c", f"{dump} | zstd -3 -q > {work}/plain.sql.zst"])
        record("mariadb-dump | zstd -3", "backup", m, (work / "plain.sql.zst").stat().st_size)

        m = measure(
            [PY, "-m", "reconciler", "-f", str(state), "restore", "--latest", "--yes", "--no-safety-backup"]
        )
        record("reconciler restore (side db, check, swap)", "restore", m)
        subprocess.run([*client, "-e", "CREATE DATABASE plain_restore"], check=True)
        m = measure(["sh", "-c", f"gunzip -c {work}/plain.sql.gz | {' '.join(client)} plain_restore"])
        record("gunzip | mariadb (plain)", "restore", m)
        return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, action="append", help="rows in the benchmark table (repeatable)")
    scales = parser.parse_args().rows or [2_000_000]
    results: list[dict[str, Any]] = []
    for rows in scales:
        print(f"{rows} rows:", flush=True)
        results += run_scale(rows)
    table = []
    for row in results:
        base = next(
            r
            for r in results
            if r["rows"] == row["rows"] and r["kind"] == row["kind"] and "(plain)" in r["what"]
        )
        table.append(
            [
                f"{row['rows']}",
                row["kind"],
                row["what"],
                f"{row['seconds']:.1f}",
                f"{row['seconds'] / base['seconds']:.2f}",
                f"{row['peak_own_rss_mb']:.0f}",
                f"{(row['output_bytes'] or 0) / 2**20:.1f}",
            ]
        )
    print_table(
        "MariaDB backup and restore", ["rows", "kind", "what", "s", "x plain", "own MB", "out MB"], table
    )
    print(write_results("mariadb", results))


if __name__ == "__main__":
    main()
