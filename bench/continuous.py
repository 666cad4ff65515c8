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
from _measure import commit_posts, measure
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


def _written(pid: int | str) -> int:
    """Bytes this process caused to be written to storage (tmpfs writes do not count)."""
    with open(f"/proc/{pid}/io") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("write_bytes:"))


def wal_volume(state: Path, conn: dict[str, Any], tps: int, seconds: float) -> dict[str, Any]:
    """Commit ``tps`` small transactions per second for ``seconds`` while the WAL streams to the spool.

    Measured: raw WAL (LSN difference), bytes the receiver wrote to persistent storage (its
    /proc/<pid>/io, the spool), and the compressed, encrypted segments shipped (in-process shipper)."""
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
        db.execute("CHECKPOINT")  # full-page images after a checkpoint are part of any hour; start from one
        db.execute("SELECT pg_switch_wal()")  # the window starts on a fresh segment
        store = wal.store_area(ctx.spec, sysid)
        time.sleep(1)
        shipped_before = sum(f.size for f in store.list())
        assert supervisor.streamer is not None and supervisor.streamer.process is not None
        receiver = supervisor.streamer.process.pid
        receiver_before, own_before = _written(receiver), _written("self")
        start_lsn = db.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        done, elapsed = commit_posts(db, tps, seconds)
        end = db.execute("SELECT pg_current_wal_lsn(), pg_walfile_name(pg_current_wal_lsn())").fetchone()
        assert end is not None
        raw = int(db.execute("SELECT %s::pg_lsn - %s::pg_lsn", (str(end[0]), str(start_lsn))).fetchone()[0])  # type: ignore[index]
        receiver_written = _written(receiver) - receiver_before
        db.execute("SELECT pg_switch_wal()")
    deadline = time.monotonic() + 60
    while end[1] not in walseg.listing(store)[0]:  # the window's last segment shipped
        assert time.monotonic() < deadline, "the window's WAL was not shipped"
        time.sleep(0.2)
    shipped = sum(f.size for f in store.list()) - shipped_before
    shipper_written = _written("self") - own_before
    supervisor.stop()
    per_hour = 3600 / elapsed / 2**20
    return {
        "tps": tps,
        "transactions": done,
        "seconds": round(elapsed, 1),
        "raw_wal_mb_per_hour": round(raw * per_hour, 1),
        "spool_written_mb_per_hour": round(receiver_written * per_hour, 1),
        "shipped_mb_per_hour": round(shipped * per_hour, 1),
        "shipper_written_mb_per_hour": round(shipper_written * per_hour, 1),
    }


def recovery_times(state: Path, conn: dict[str, Any], ram_root: Path, megabytes: int) -> list[dict[str, Any]]:
    """Power cut, restore on boot from the same set: base + WAL, then the logical dump."""
    bindir = next(Path("/usr/lib/postgresql").glob("*/bin"))
    info = generate(conn, bindir, megabytes)
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
    rows: list[dict[str, Any]] = [
        {"what": "backup set (logical + base)", "seconds": round(backup.seconds, 2)},
        {"what": "apply after power cut: base + WAL", "seconds": round(physical.seconds, 2)},
        {"what": "apply after power cut: logical dump", "seconds": round(logical.seconds, 2)},
    ]
    print_table(
        f"continuous protection, ~{megabytes} MB ({info['database_bytes'] / 2**20:.0f} MiB on disk)",
        ["what", "seconds"],
        [[r["what"], f"{r['seconds']:.1f}"] for r in rows],
    )
    return [*rows, {"dataset": info}]


_COLUMNS = (
    "tps",
    "raw_wal_mb_per_hour",
    "spool_written_mb_per_hour",
    "shipped_mb_per_hour",
    "shipper_written_mb_per_hour",
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--wal-only", action="store_true", help="Skip the recovery-time comparison.")
    args = parser.parse_args()
    with bench_stack(encrypted=True) as state:
        set_continuous(state, True)
        cli(state, "apply")
        document = YAML(typ="safe").load(state.read_text())
        ram_root = Path(document["ram"]["path"])
        sock = str(state.parent / ".reconciler" / "run" / "postgres")
        port = document["services"]["postgres"]["port"]
        conn = {"host": sock, "port": port, "user": "postgres", "dbname": "bench"}
        rows = [] if args.wal_only else recovery_times(state, conn, ram_root, args.mb)
        if args.wal_only:
            cli(state, "backup")  # the slot and a base, as with continuous protection running
        volumes = [wal_volume(state, conn, tps, args.seconds) for tps in (10, 100)]
    print_table(
        "WAL volume per hour (extrapolated from the window)",
        ["tps", "raw WAL MB/h", "spool writes MB/h", "shipped MB/h", "shipper writes MB/h"],
        [[str(v[k]) for k in _COLUMNS] for v in volumes],
    )
    print(f"results: {write_results('continuous', rows, scale_mb=args.mb, wal=volumes)}")


if __name__ == "__main__":
    main()
