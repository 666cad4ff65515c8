"""Continuous WAL with placement ``offsite`` against the Drive emulator (engine/waloffsite).

Commits ``--tps`` small transactions per second for ``--seconds`` while the WAL streams to Drive with
the segment in progress shipped every ``--interval``, and measures: bytes the emulator received (the
uplink, every shipment of the segment in progress included), per hour; raw WAL the server wrote;
bytes written to persistent storage by this process and the receiver (must be ~0: /proc/<pid>/io
counts no tmpfs writes); and the latency of one shipment of the segment in progress (sealing in RAM,
resumable upload, sidecar, deletion of the older copies).

``--modes chunks,whole`` measures the delta chunks (engine/walchunks) and the previous whole
re-upload of the segment in progress one after the other on the same stack.

Usage: python bench/wal_offsite.py [--tps 10] [--seconds 180] [--interval 60] [--modes chunks,whole]
       [--fill-mb 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import psycopg
from _measure import commit_posts
from _stack import bench_stack, cli, pg_conn, print_table, write_results
from continuous import write_bytes
from gdrive import store_settings
from ruamel.yaml import YAML

from reconciler.engine import wal
from reconciler.engine.context import StackContext, load_spec
from tests.support.gdrive_emulator import DriveEmulator


def written(pid: int | str) -> int:
    value = write_bytes(pid)
    assert value is not None, f"/proc/{pid}/io is unreadable (the process exited?)"
    return value


def run(
    state: Path,
    emulator: DriveEmulator,
    tps: int,
    seconds: float,
    interval: int,
    mode: str = "chunks",
    fill_mb: float = 0,
) -> dict[str, Any]:
    yaml = YAML()
    document = yaml.load(state.read_text())
    document["backup"]["stores"] = {"gdrive": store_settings(state.parent, emulator)}
    document["backup"]["continuous"] = {"enabled": True, "placement": "offsite", "interval": f"{interval}s"}
    with state.open("w") as handle:
        yaml.dump(document, handle)
    cli(state, "apply")
    ctx = StackContext.build(load_spec(str(state)), str(state))
    conn = pg_conn(state)
    supervisor = wal.WalSupervisor()
    supervisor.follow(ctx, ctx.observe())
    latencies: list[float] = []
    try:
        streamer = supervisor.streamer
        assert streamer is not None
        with psycopg.connect(**conn, autocommit=True) as db:
            deadline = time.monotonic() + 30
            while db.execute("SELECT count(*) FROM pg_replication_slots WHERE active").fetchone() != (1,):
                assert time.monotonic() < deadline, f"the WAL stream did not start: {streamer.last_error}"
                time.sleep(0.1)
            db.execute(
                "CREATE TABLE IF NOT EXISTS posts (id bigserial PRIMARY KEY, body text, at timestamptz)"
            )
            db.execute("CHECKPOINT")
            db.execute("SELECT pg_switch_wal()")
            if fill_mb:  # start mid-segment: a whole re-upload costs more the fuller the segment is
                rows = int(fill_mb * 1e6 / 700)
                db.execute(
                    "INSERT INTO posts (body, at) SELECT repeat(md5(g::text), 16), now() "
                    "FROM generate_series(1, %s) g",
                    (rows,),
                )
            time.sleep(2)
            assert streamer.shipper is not None and streamer.process is not None
            shipper = streamer.shipper
            shipper.whole_partials = mode == "whole"  # the previous version: the whole segment each time
            if fill_mb:  # the fill goes up before the window opens, in both modes
                shipper.last_partial = 0.0
                time.sleep(5)
            original = shipper.ship_partial

            def timed() -> str | None:
                began = time.monotonic()
                name = original()
                latencies.append(time.monotonic() - began)
                return name

            shipper.ship_partial = timed  # type: ignore[method-assign]
            received_before = emulator.state.bytes_received
            disk_before = written("self") + written(streamer.process.pid)
            start_lsn = db.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
            done, elapsed = commit_posts(db, tps, seconds)
            raw = db.execute("SELECT pg_current_wal_lsn() - %s::pg_lsn", (start_lsn,)).fetchone()[0]  # type: ignore[index]
            uplink = emulator.state.bytes_received - received_before
            disk = written("self") + written(streamer.process.pid) - disk_before
    finally:
        supervisor.stop()
    per_hour = 3600 / elapsed
    return {
        "mode": mode,
        "tps": tps,
        "fill_mb": fill_mb,
        "interval_s": interval,
        "seconds": round(elapsed, 1),
        "transactions": done,
        "raw_wal_mb_per_hour": round(float(raw) * per_hour / 1e6, 2),
        "uplink_mb_per_hour": round(uplink * per_hour / 1e6, 2),
        "persistent_bytes_written": disk,
        "shipments": len(latencies),
        "shipment_latency_ms_median": round(sorted(latencies)[len(latencies) // 2] * 1000, 1)
        if latencies
        else None,
        "shipment_latency_ms_max": round(max(latencies) * 1000, 1) if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tps", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--interval", type=int, default=60)
    parser.add_argument(
        "--modes", default="chunks,whole", help="chunks (delta chunks) and/or whole (the previous re-uploads)"
    )
    parser.add_argument("--fill-mb", type=float, default=0, help="WAL written into the segment first")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir="/dev/shm") as drive_dir:
        emulator = DriveEmulator(drive_dir)
        try:
            with bench_stack("ram", encrypted=True) as state:
                for mode in args.modes.split(","):
                    rows.append(
                        run(state, emulator, args.tps, args.seconds, args.interval, mode, args.fill_mb)
                    )
        finally:
            emulator.stop()
    columns = list(rows[0])
    print_table(
        "continuous WAL off-site (Drive emulator)", columns, [[str(r[c]) for c in columns] for r in rows]
    )
    write_results("wal_offsite", rows)


if __name__ == "__main__":
    main()
