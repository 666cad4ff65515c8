"""Continuous protection, side by side in one run (issue 15).

1. Recovery time after a power cut from the same set: base + WAL (``backup.continuous``) vs the
   logical dump (the same set's pg_dump member, continuous switched off for the second run).
2. WAL volume at 10 and 100 transactions/s: raw WAL the server wrote vs compressed, encrypted bytes
   shipped to the store, per hour (the spool's persistent-storage writes are the raw WAL).

Usage: python bench/continuous.py [--mb 300] [--seconds 30]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psycopg
from _measure import measure
from _stack import bench_stack, cli, print_table, write_results
from dataset import generate
from restore import power_cut, rows_in
from ruamel.yaml import YAML

from reconciler.backup import walseg
from reconciler.engine import wal
from reconciler.engine.context import StackContext, load_spec

PY = sys.executable


def set_continuous(state: Path, enabled: bool) -> None:
    yaml = YAML()
    document = yaml.load(state.read_text())
    document["backup"]["continuous"] = {"enabled": enabled, "placement": "spool", "spool_dir": "./data/spool"}
    with state.open("w") as handle:
        yaml.dump(document, handle)


def wal_volume(state: Path, conn: dict[str, Any], tps: int, seconds: float) -> dict[str, Any]:
    ctx = StackContext.build(load_spec(str(state)), str(state))
    supervisor = wal.WalSupervisor()
    supervisor.follow(ctx, ctx.observe())
    with psycopg.connect(**conn, autocommit=True) as db:
        deadline = time.monotonic() + 30
        while db.execute("SELECT count(*) FROM pg_replication_slots WHERE active").fetchone() != (1,):
            assert time.monotonic() < deadline, "the WAL stream did not start"
            time.sleep(0.1)
        sysid = str(db.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])  # type: ignore[index]
        db.execute("CREATE TABLE IF NOT EXISTS posts (id bigserial PRIMARY KEY, body text, at timestamptz)")
        start_lsn = db.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        shipped_before = sum(f.size for f in wal.store_area(ctx.spec, sysid).list())
        started = time.monotonic()
        done = 0
        while time.monotonic() - started < seconds:
            db.execute("INSERT INTO posts (body, at) VALUES (repeat('a community post ', 20), now())")
            done += 1
            time.sleep(max(0.0, started + done / tps - time.monotonic()))
        elapsed = time.monotonic() - started
        raw = int(db.execute("SELECT pg_current_wal_lsn() - %s::pg_lsn", (str(start_lsn),)).fetchone()[0])  # type: ignore[index]
        db.execute("SELECT pg_switch_wal()")
    store = wal.store_area(ctx.spec, sysid)
    supervisor.stop()  # ships what was completed (the switch above completed the last segment)
    shipped = sum(f.size for f in store.list()) - shipped_before
    segments = len(walseg.listing(store)[0])
    per_hour = 3600 / elapsed
    return {
        "tps": tps,
        "transactions": done,
        "raw_wal_mb_per_hour": round(raw * per_hour / 2**20, 1),
        "shipped_mb_per_hour": round(shipped * per_hour / 2**20, 1),
        "segments": segments,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    with bench_stack(encrypted=True) as state:
        set_continuous(state, True)
        cli(state, "apply")
        document = YAML(typ="safe").load(state.read_text())
        ram_root = Path(document["ram"]["path"])
        port = document["services"]["postgres"]["port"]
        sock = str(state.parent / ".reconciler" / "run" / "postgres")
        bindir = next(Path("/usr/lib/postgresql").glob("*/bin"))
        conn = {"host": sock, "port": port, "user": "postgres", "dbname": "bench"}
        info = generate(conn, bindir, args.mb)
        expected = rows_in(conn)
        backup = measure([PY, "-m", "reconciler", "-f", str(state), "backup"])

        power_cut(state, ram_root)
        physical = measure([PY, "-m", "reconciler", "-f", str(state), "apply"])
        assert rows_in(conn) == expected
        events = (state.parent / ".reconciler" / "events.jsonl").read_text()
        assert "PhysicalRecovery" in events, "the physical path was not taken"

        set_continuous(state, False)
        power_cut(state, ram_root)
        logical = measure([PY, "-m", "reconciler", "-f", str(state), "apply"])
        assert rows_in(conn) == expected

        set_continuous(state, True)
        cli(state, "apply")
        volumes = [wal_volume(state, conn, tps, args.seconds) for tps in (10, 100)]

    rows = [
        {"what": "backup set (logical + base)", "seconds": round(backup.seconds, 2)},
        {"what": "apply after power cut: base + WAL", "seconds": round(physical.seconds, 2)},
        {"what": "apply after power cut: logical dump", "seconds": round(logical.seconds, 2)},
    ]
    print_table(
        f"continuous protection, ~{args.mb} MB ({info['database_bytes'] / 2**20:.0f} MiB on disk)",
        ["what", "seconds"],
        [[r["what"], f"{r['seconds']:.1f}"] for r in rows],
    )
    print_table(
        "WAL volume per hour",
        ["tps", "raw WAL MB/h", "shipped MB/h"],
        [[str(v["tps"]), str(v["raw_wal_mb_per_hour"]), str(v["shipped_mb_per_hour"])] for v in volumes],
    )
    print(f"results: {write_results('continuous', rows, scale_mb=args.mb, dataset=info, wal=volumes)}")


if __name__ == "__main__":
    main()
