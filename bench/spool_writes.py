"""Bytes the WAL spool writes to persistent storage per hour, at 10 and 100 transactions/s.

The spool writer is the streamer's thread in this process, so this process's ``/proc/self/io``
``write_bytes`` over a window that ships no segment (it starts on a fresh one and stays inside it)
is what the spool cost the card; ``pg_receivewal``'s own ``write_bytes`` should be ~0 (it receives
into RAM). Also reported: the chunk bytes appended, the number of chunks and the raw WAL bytes they
hold, hence the per-chunk overhead.

Usage: python bench/spool_writes.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psycopg
from _stack import bench_stack, cli
from continuous import _written, set_continuous
from ruamel.yaml import YAML

from reconciler.backup import walspool
from reconciler.engine import wal
from reconciler.engine.context import StackContext, load_spec


def commit_steadily(db: psycopg.Connection[Any], tps: int, seconds: float) -> None:
    """``tps`` small autocommitted INSERTs per second for ``seconds`` (the workload of bench/continuous)."""
    started, done = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        db.execute("INSERT INTO posts (body, at) VALUES (repeat('a community post ', 20), now())")
        done += 1
        time.sleep(max(0.0, started + done / tps - time.monotonic()))


def connection(state: Path) -> dict[str, Any]:
    document = YAML(typ="safe").load(state.read_text())
    sock = str(state.parent / ".reconciler" / "run" / "postgres")
    return {
        "host": sock,
        "port": document["services"]["postgres"]["port"],
        "user": "postgres",
        "dbname": "bench",
    }


def overhead(sealing: Any) -> float:
    """Mean bytes a chunk adds to incompressible content (header, mac, zstd frame, age header and tag)."""
    binding = walspool.Binding("bench", "1", "000000010000000000000001")
    sizes = [len(walspool.seal(os.urandom(1000), 0, sealing, binding)) - 1000 for _ in range(50)]
    return sum(sizes) / len(sizes)


def window(state: Path, conn: dict[str, Any], tps: int, seconds: float) -> dict[str, Any]:
    ctx = StackContext.build(load_spec(str(state)), str(state))
    supervisor = wal.WalSupervisor()
    supervisor.follow(ctx, ctx.observe())
    with psycopg.connect(**conn, autocommit=True) as db:
        deadline = time.monotonic() + 30
        while db.execute("SELECT count(*) FROM pg_replication_slots WHERE active").fetchone() != (1,):
            assert time.monotonic() < deadline, "the WAL stream did not start"
            time.sleep(0.1)
        db.execute("CREATE TABLE IF NOT EXISTS posts (id bigserial PRIMARY KEY, body text, at timestamptz)")
        db.execute("CHECKPOINT")
        db.execute("SELECT pg_switch_wal()")  # the window starts on a fresh segment
        time.sleep(2)  # the switch shipped, the first chunk of the new segment written
        streamer = supervisor.streamer
        assert streamer is not None and streamer.shipper is not None and streamer.shipper.spooler is not None
        spooler = streamer.shipper.spooler
        receiver = streamer.process.pid
        receiver_before, own_before = _written(receiver), _written("self")
        appended, chunks, raw_spooled = spooler.appended, spooler.chunks, spooler.raw
        start_lsn = db.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        segment = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint / 16777216"  # not pg_walfile_name: a
        first = db.execute(segment).fetchone()[0]  # type: ignore[index]  # boundary names the segment before
        started = time.monotonic()
        commit_steadily(db, tps, seconds)
        time.sleep(1)  # the last tick
        elapsed = time.monotonic() - started
        end = db.execute("SELECT pg_current_wal_lsn()").fetchone()
        assert end is not None and db.execute(segment).fetchone()[0] == first, (
            "a segment completed: shorten the window"
        )  # type: ignore[index]
        raw = int(db.execute("SELECT %s::pg_lsn - %s::pg_lsn", (str(end[0]), str(start_lsn))).fetchone()[0])  # type: ignore[index]
        own, receiver_written = _written("self") - own_before, _written(receiver) - receiver_before
        appended, chunks, raw_spooled = (
            spooler.appended - appended,
            spooler.chunks - chunks,
            spooler.raw - raw_spooled,
        )
    supervisor.stop()
    per_hour = 3600 / elapsed / 1e6
    return {
        "tps": tps,
        "seconds": round(elapsed, 1),
        "raw_wal_mb_per_hour": round(raw * per_hour, 1),
        "spool_write_bytes_mb_per_hour": round(own * per_hour, 1),
        "receiver_write_bytes_mb_per_hour": round(receiver_written * per_hour, 2),
        "chunk_bytes_mb_per_hour": round(appended * per_hour, 2),
        "chunks": chunks,
        "raw_in_chunks": raw_spooled,
        "mean_chunk_bytes": round(appended / chunks) if chunks else None,
        "mean_raw_bytes_per_chunk": round(raw_spooled / chunks) if chunks else None,
        "overhead_per_chunk": overhead(streamer.shipper.sealing),
        "ratio_chunk_to_raw": round(appended / raw_spooled, 3) if raw_spooled else None,
    }


def postgres_pids(state: Path, ram_or_disk: Path) -> list[int]:
    postmaster = int((ram_or_disk / "postmaster.pid").read_text().split()[0])
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    return [postmaster, *map(int, children)]


def disk_window(state: Path, conn: dict[str, Any], tps: int, seconds: float) -> dict[str, Any]:
    """Disk mode, same workload: what every PostgreSQL process wrote (WAL with its fsync per commit,
    bgwriter; a checkpoint falls in a 60 s window only by chance, so this is a lower bound)."""
    data_dir = state.parent / "data" / "postgres"
    with psycopg.connect(**conn, autocommit=True) as db:
        db.execute("CREATE TABLE IF NOT EXISTS posts (id bigserial PRIMARY KEY, body text, at timestamptz)")
        db.execute("CHECKPOINT")
        pids = postgres_pids(state, data_dir)
        before = {pid: _written(pid) for pid in pids}
        started = time.monotonic()
        commit_steadily(db, tps, seconds)
        elapsed = time.monotonic() - started
        written = sum(_written(pid) - before[pid] for pid in pids if Path(f"/proc/{pid}").exists())
    return {
        "tps": tps,
        "seconds": round(elapsed, 1),
        "disk_mode_write_bytes_mb_per_hour": round(written * 3600 / elapsed / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--disk", action="store_true", help="Disk mode, no continuous WAL, same workload.")
    args = parser.parse_args()
    if args.disk:
        with bench_stack(mode="disk") as state:
            cli(state, "apply")
            print(
                json.dumps(
                    [disk_window(state, connection(state), tps, args.seconds) for tps in (10, 100)], indent=2
                )
            )
        return
    with bench_stack(encrypted=True) as state:
        set_continuous(state, True)
        cli(state, "apply")
        cli(state, "backup")
        results = [window(state, connection(state), tps, args.seconds) for tps in (10, 100)]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
