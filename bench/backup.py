"""Backup and restore: reconciler vs raw pg_dump -Fc vs the legacy Loomio pipeline, in one run.

For each: wall time, peak RSS of the command's own process and of its whole process tree.
Targets (issue 3): backup within 1.2x of raw `pg_dump -Fc`; reconciler's own peak RSS under 64 MB at
every scale; restore at least 2x faster than the legacy pipeline.

Usage: python bench/backup.py [--mb 1000] [--mb 200 ...]   (database size on disk, roughly)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import COMPARISON_COLUMNS, Recorder, comparison_table, measure
from _stack import bench_stack, print_table, write_results
from dataset import generate
from ruamel.yaml import YAML

PY = sys.executable
HERE = Path(__file__).resolve().parent


def run_scale(megabytes: int) -> list[dict[str, Any]]:
    with bench_stack(encrypted=True) as state:
        document = YAML(typ="safe").load(state.read_text())
        port = document["services"]["postgres"]["port"]
        sock = str(state.parent / ".reconciler" / "run" / "postgres")
        bindir = next(Path("/usr/lib/postgresql").glob("*/bin"))
        conn = {"host": sock, "port": port, "user": "postgres", "dbname": "bench"}
        info = generate(conn, bindir, megabytes)
        pg_args = ["-h", sock, "-p", str(port), "-U", "postgres"]
        work = state.parent / "work"
        work.mkdir()
        env = {"LEGACY_PASSWORD": "benchmark-password"}
        record = Recorder(scale_mb=megabytes, db_bytes=info["database_bytes"])

        m = measure([PY, "-m", "reconciler", "-f", str(state), "backup"])
        store = state.parent / "data" / "backups"
        record("reconciler backup", "backup", m, sum(p.stat().st_size for p in store.iterdir()))
        raw = work / "raw.dump"
        m = measure([str(bindir / "pg_dump"), *pg_args, "-Fc", "-f", str(raw), "bench"])
        record("pg_dump -Fc (raw)", "backup", m, raw.stat().st_size)
        legacy = work / "legacy.sql.enc"
        m = measure(
            [
                PY,
                str(HERE / "legacy_pipeline.py"),
                "backup",
                *pg_args,
                "bench",
                str(work / "plain.sql"),
                str(legacy),
            ],
            env,
        )
        record("legacy: plain dump + Fernet", "backup", m, legacy.stat().st_size)

        m = measure(
            [PY, "-m", "reconciler", "-f", str(state), "restore", "--latest", "--yes", "--no-safety-backup"]
        )
        record("reconciler restore", "restore", m)
        createdb = [str(bindir / "psql"), *pg_args, "-d", "postgres", "-Xqc"]
        subprocess.run([*createdb, "CREATE DATABASE raw_restore"], check=True)
        m = measure([str(bindir / "pg_restore"), *pg_args, "-d", "raw_restore", str(raw)])
        record("pg_restore (raw)", "restore", m)
        subprocess.run([*createdb, "CREATE DATABASE legacy_restore"], check=True)
        m = measure(
            [PY, str(HERE / "legacy_pipeline.py"), "restore", str(legacy), *pg_args, "-d", "legacy_restore"],
            env,
        )
        record("legacy: Fernet + psql", "restore", m)
        return record.rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, action="append", help="database size on disk in MB (repeatable)")
    scales = parser.parse_args().mb or [1000]
    rows: list[dict[str, Any]] = []
    for megabytes in scales:
        print(f"scale ~{megabytes} MB:", flush=True)
        rows += run_scale(megabytes)
    print_table(
        "backup and restore (ratio: to the raw pg_dump/pg_restore of the same scale)",
        COMPARISON_COLUMNS,
        comparison_table(rows, "scale_mb", lambda r: "raw" in r["what"]),
    )
    summary = {}
    for scale in scales:
        r = {row["what"]: row for row in rows if row["scale_mb"] == scale}
        summary[str(scale)] = {
            "backup_vs_raw": round(r["reconciler backup"]["seconds"] / r["pg_dump -Fc (raw)"]["seconds"], 2),
            "restore_speedup_vs_legacy": round(
                r["legacy: Fernet + psql"]["seconds"] / r["reconciler restore"]["seconds"], 2
            ),
            "reconciler_own_peak_rss_mb": max(
                r["reconciler backup"]["peak_own_rss_mb"], r["reconciler restore"]["peak_own_rss_mb"]
            ),
        }
    print(json.dumps(summary, indent=2))
    print(f"results: {write_results('backup', rows, summary=summary)}")


if __name__ == "__main__":
    main()
