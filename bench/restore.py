"""Recovery time after a power cut: from "RAM is empty" to "the database answers queries with data".

reconciler: `reconciler apply` after the power cut (it finds the newest good set, checks it, initialises
the servers, restores, verifies the table checksums, swaps in the database).
legacy:     initialise and start empty servers, then the Loomio scripts' restore: whole-file Fernet
            decrypt and psql of the plain SQL dump.
Both on the same dataset and machine, in the same run. Target (issue 5): under half the legacy time.
(The Drive-emulator variant waits for the Drive store.)

Usage: python bench/restore.py [--mb 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psycopg
from _measure import Measurement, measure
from _stack import bench_stack, cli, print_table, write_results
from dataset import generate
from ruamel.yaml import YAML

from reconciler.databases.postgres import RESTORE_ENV

PY = sys.executable
HERE = Path(__file__).resolve().parent


class Legacy:
    """The legacy pipeline (bench/legacy_pipeline.py: pg_dump | Fernet, psql restore) against a bench
    stack's PostgreSQL. Its psql gets the same server settings as our pg_restore
    (maintenance_work_mem, synchronous_commit): the comparison is of the pipelines, not the settings."""

    def __init__(self, state: Path, conn: dict[str, Any]) -> None:
        self.state = state
        self.pg_args = ["-h", str(conn["host"]), "-p", str(conn["port"]), "-U", "postgres"]
        self.file = state.parent / "legacy.sql.enc"
        self.env = {"LEGACY_PASSWORD": "benchmark-password", **RESTORE_ENV}

    def backup(self) -> Measurement:
        plain = str(self.state.parent / "p.sql")
        argv = [PY, str(HERE / "legacy_pipeline.py"), "backup", *self.pg_args, "bench", plain, str(self.file)]
        return measure(argv, self.env)

    def restore(self) -> Measurement:
        argv = [PY, str(HERE / "legacy_pipeline.py"), "restore", str(self.file), *self.pg_args, "-d", "bench"]
        return measure(argv, self.env)


def power_cut(state: Path, ram_root: Path) -> None:
    for pidfile in (
        ram_root / "postgres" / "postmaster.pid",
        state.parent / ".reconciler/run/redis/redis.pid",
    ):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
    for entry in ram_root.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def rows_in(conn: dict[str, Any]) -> int:
    with psycopg.connect(**conn) as db:
        return int(db.execute("SELECT count(*) FROM documents").fetchone()[0])  # type: ignore[index]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=1000)
    megabytes = parser.parse_args().mb
    with bench_stack(encrypted=True) as state:
        document = YAML(typ="safe").load(state.read_text())
        ram_root = Path(document["ram"]["path"])
        port = document["services"]["postgres"]["port"]
        sock = str(state.parent / ".reconciler" / "run" / "postgres")
        bindir = next(Path("/usr/lib/postgresql").glob("*/bin"))
        conn = {"host": sock, "port": port, "user": "postgres", "dbname": "bench"}
        info = generate(conn, bindir, megabytes)
        expected = rows_in(conn)
        cli(state, "backup")
        legacy = Legacy(state, conn)
        legacy.backup()

        power_cut(state, ram_root)
        ours = measure([PY, "-m", "reconciler", "-f", str(state), "apply"])
        assert rows_in(conn) == expected

        # legacy: empty servers first (no backups in reach of the reconciler), then the old restore
        power_cut(state, ram_root)
        hidden = state.parent / "data" / "backups-hidden"
        (state.parent / "data" / "backups").rename(hidden)
        start = time.perf_counter()
        empty = measure([PY, "-m", "reconciler", "-f", str(state), "apply"])
        restore = legacy.restore()
        legacy_seconds = time.perf_counter() - start
        assert rows_in(conn) == expected
        shutil.rmtree(state.parent / "data" / "backups")  # the empty start's first set (of nothing)
        hidden.rename(state.parent / "data" / "backups")

    rows = [
        {
            "what": "reconciler apply after power cut",
            "seconds": round(ours.seconds, 2),
            "peak_tree_rss_mb": ours.row()["peak_tree_rss_mb"],
        },
        {
            "what": "legacy: start empty + Fernet + psql",
            "seconds": round(legacy_seconds, 2),
            "peak_tree_rss_mb": max(empty.row()["peak_tree_rss_mb"], restore.row()["peak_tree_rss_mb"]),
        },
    ]
    ratio = ours.seconds / legacy_seconds
    print_table(
        f"recovery after a power cut, ~{megabytes} MB ({info['database_bytes'] / 2**20:.0f} MiB on disk)",
        ["what", "seconds", "peak tree RSS MB", "x legacy"],
        [
            [
                r["what"],
                f"{r['seconds']:.1f}",
                f"{r['peak_tree_rss_mb']:.0f}",
                f"{r['seconds'] / legacy_seconds:.2f}",
            ]
            for r in rows
        ],
    )
    print(f"reconciler / legacy = {ratio:.2f} (target < 0.5)")
    print(
        f"results: {write_results('restore', rows, scale_mb=megabytes, dataset=info, ratio=round(ratio, 3))}"
    )


if __name__ == "__main__":
    main()
