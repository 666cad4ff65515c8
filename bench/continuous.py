"""Continuous protection, side by side in one run (issue 15, "Measure").

Sections (``--only``, comma-separated; all by default, in this order):

recovery-point  A writer commits numbered rows at 10 and 100 transactions/s and records when each was
                acknowledged; the daemon streams WAL (``reconciler daemon``, placements ``spool`` and
                ``offsite``); at a random moment the daemon, its children, the servers and the RAM
                die at once (the page cache survives, as in tests/e2e/test_power_cut.py); ``apply``
                restores on boot. Loss = how long before the cut the last row present was
                acknowledged (plus: acknowledged rows missing). Several cuts; max and median.
bytes           Bytes written to persistent storage per hour at 10 and 100 tps, same workload: RAM
                mode with the spool (daemon running) vs disk mode (daemon running, no continuous WAL).
                Counted from ``/proc/<pid>/io`` ``write_bytes`` of the postmaster and the daemon and
                all their descendants: a parent's counter includes the children it reaped, so
                backends, walwriter, checkpointer, pg_receivewal and short-lived zstd/age that exited
                during the window are included; tmpfs writes are not counted by the kernel. No file
                names are involved, so the figure stays right whatever the WAL code writes where.
                Hour = window (starts after a CHECKPOINT, ends with one, so the data-file writes of
                the window are inside it) extrapolated linearly + the measured cost of one WAL
                segment boundary times the segments per hour (raw WAL / wal_segment_size).
                write_bytes is charged when a page-cache folio becomes dirty, by the folio: on
                kernels with large folios on ext4 (6.16+) one small commit re-dirties up to 256 KiB,
                in both modes (and writeback writes the folio). So disk mode's write() volume
                (``wchar`` of the PostgreSQL tree, tmpfs writes included in RAM mode, so shown for
                disk mode) is reported too, and the spool is also compared with it (conservative).
uplink          Off-site placement at 10 tps: bytes shipped to Google Drive per day (the content of
                every upload into the Drive WAL area during the window, as the emulator received it,
                so a segment in progress shipped every interval counts each time) vs 24 logical dumps
                per day of the same database (the pg_dump member of a set taken with ``reconciler
                backup``).

Placement ``offsite`` ships WAL to Google Drive only (the spec refuses it without an enabled gdrive
store): those runs use the Drive emulator (tests/support/gdrive_emulator.py, a real HTTP server in
this process, files in /dev/shm), with the gdrive store enabled while the placement is ``offsite`` and
disabled otherwise (sets of the other sections stay local, as before).
recovery        Recovery time after a power cut at ``--mb``: base + WAL vs the same set's logical
                dump vs the legacy pipeline (start empty, Fernet + psql; bench/restore.py).
pgbench         pgbench tps with continuous WAL on vs off (daemon running in both; the state.yaml
                switch toggles the receiver), interleaved rounds on the ``--mb`` database.

Usage: python bench/continuous.py [--only recovery-point,bytes,uplink,recovery,pgbench] [--mb 300]
       python bench/continuous.py --mb 20 --seconds 10 --cuts 1 --uplink-seconds 20 \\
           --uplink-interval 5 --pgbench-seconds 5 --rounds 1          (a smoke run, ~4 minutes)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psycopg
from _measure import _children, measure
from _stack import bench_stack, cli, print_table, write_results
from dataset import generate
from gdrive import store_settings
from restore import Legacy, power_cut, rows_in
from ruamel.yaml import YAML

from tests.support.gdrive_emulator import DriveEmulator
from tests.support.ports import free_port

PY = sys.executable
HERE = Path(__file__).resolve().parent
SECTIONS = ("recovery-point", "bytes", "uplink", "recovery", "pgbench")
BODY = "repeat('a community post ', 20)"  # ~340 bytes a row: a short post


# -- the stack --------------------------------------------------------------------------------------


def daemon_settings() -> dict[str, Any]:
    """The daemon as shipped (default resync), its own metrics port; no verification of new sets and no
    backup set at shutdown (the bench stops daemons between sections, and a set is not what it measures)."""
    return {"daemon": {"metrics_port": free_port(), "verify_new_sets": False, "final_backup": False}}


def set_continuous(
    state: Path,
    enabled: bool,
    placement: str = "spool",
    interval: float = 60,
    drive: dict[str, Any] | None = None,
) -> None:
    """``drive``: the gdrive store block, required for placement ``offsite`` (enabled with it); any
    other placement disables a gdrive store the document has."""
    yaml = YAML()
    document = yaml.load(state.read_text())
    stores = document["backup"].setdefault("stores", {})
    if placement == "offsite":
        assert drive is not None, "placement offsite ships to Google Drive: pass the emulator's store"
        stores["gdrive"] = drive
    elif "gdrive" in stores:
        stores["gdrive"]["enabled"] = False
    document["backup"]["continuous"] = {
        "enabled": enabled,
        "placement": placement,
        "spool_dir": "./data/spool",
        "interval": f"{interval:g}s",
    }
    with state.open("w") as handle:
        yaml.dump(document, handle)


class Stack:
    """Paths and connection of one bench stack."""

    def __init__(self, state: Path) -> None:
        document = YAML(typ="safe").load(state.read_text())
        self.state = state
        self.ram_root = Path(document["ram"]["path"])
        self.conn: dict[str, Any] = {
            "host": str(state.parent / ".reconciler" / "run" / "postgres"),
            "port": document["services"]["postgres"]["port"],
            "user": "postgres",
            "dbname": "bench",
        }
        self.store = state.parent / "data" / "backups"
        self.emulator: DriveEmulator | None = None  # set when a section runs placement offsite
        self.drive: dict[str, Any] | None = None

    def sql(self, query: str, *params: Any) -> Any:
        with psycopg.connect(**self.conn, autocommit=True) as db:
            cursor = db.execute(query, params or None)
            row = cursor.fetchone() if cursor.description is not None else None
            return None if row is None else row[0]

    def postmaster(self) -> int:
        """The postmaster's pid, wherever the mode keeps the data directory."""
        for pidfile in (
            *self.ram_root.glob("postgres/postmaster.pid"),
            *self.state.parent.glob("data/*/postmaster.pid"),
        ):
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(pidfile.read_text().split()[0])
                os.kill(pid, 0)
                return pid
        raise AssertionError(f"no running postmaster for {self.state}")

    def streaming(self) -> bool:
        return bool(self.sql("SELECT count(*) = 1 FROM pg_replication_slots WHERE active"))

    def caught_up(self) -> bool:
        """The receiver (if any) has written everything the server has."""
        return (
            self.sql(
                "SELECT coalesce(bool_and(write_lsn >= pg_current_wal_lsn()), true) FROM pg_stat_replication"
            )
            is True
        )


def wait(what: str, predicate: Callable[[], Any], timeout: float = 120, daemon: Daemon | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if daemon is not None and daemon.process.poll() is not None:
            raise AssertionError(f"the daemon exited while waiting for {what}: {daemon.tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


class Daemon:
    """``reconciler daemon`` for a stack, as a user runs it."""

    def __init__(self, stack: Stack) -> None:
        self.log_path = stack.state.parent / "daemon.log"
        self.log = self.log_path.open("a")
        env = {k: v for k, v in os.environ.items() if k != "RECONCILER_STATE"}
        self.process = subprocess.Popen(
            [PY, "-m", "reconciler", "-f", str(stack.state), "daemon"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def tail(self) -> str:
        return self.log_path.read_text()[-2000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(120)
        finally:
            self.log.close()

    def kill(self) -> None:
        """The power cut for the daemon: it and every descendant (pg_receivewal, ...) die at once."""
        pids = descendants([self.process.pid])
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()
        self.log.close()


@contextlib.contextmanager
def running_daemon(stack: Stack, streaming: bool) -> Iterator[Daemon]:
    daemon = Daemon(stack)
    try:
        if streaming:
            wait("the WAL stream to be active", stack.streaming, daemon=daemon)
        else:
            wait("the daemon to start", lambda: '"Started"' in events(stack), daemon=daemon)
        yield daemon
    finally:
        if daemon.process.poll() is None:
            daemon.stop()


def events(stack: Stack) -> str:
    path = stack.state.parent / ".reconciler" / "events.jsonl"
    return path.read_text() if path.exists() else ""


# -- processes and their writes ---------------------------------------------------------------------


def descendants(roots: list[int]) -> list[int]:
    tree = _children()
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, []))
    return found


def write_bytes(pid: int, field: str = "write_bytes") -> int | None:
    """``write_bytes``: what the process sent towards storage (page-cache dirtying, so never tmpfs);
    ``wchar``: what it passed to write() and the like, to any file, pipe or socket."""
    try:
        with open(f"/proc/{pid}/io") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith(f"{field}:"))
    except (OSError, StopIteration):
        return None


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


class IoWindow:
    """Bytes a group of process trees sent towards storage between ``__init__`` and ``delta``.

    Sum over every process of each tree at the end minus the same at the start: a process that
    exited in between was reaped by its parent in the tree, whose counter now includes it (the
    kernel adds a reaped child's I/O accounting to its parent's). The roots must live through the
    window (checked)."""

    def __init__(self, roots: dict[str, int], field: str = "write_bytes") -> None:
        self.roots = roots
        self.field = field
        self.start = self._sample()

    def _sample(self) -> dict[str, int]:
        return {group: self._tree(group, root) for group, root in self.roots.items()}

    def _tree(self, group: str, root: int) -> int:
        """The tree's total, read when no process of it is between exit and reaping: a zombie's
        counter is unreadable, and would reappear in its parent's after the reaping (counted twice
        if the window started in between, never if it ended then)."""
        deadline = time.monotonic() + 10
        while True:
            assert write_bytes(root) is not None, f"{group} (pid {root}) exited during the window"
            values = [(write_bytes(pid, self.field), _state(pid)) for pid in descendants([root])]
            if all(value is not None and state not in ("Z", "X", None) for value, state in values):
                return sum(value or 0 for value, _ in values)
            assert time.monotonic() < deadline, f"{group}: a process stayed a zombie for 10 s"
            time.sleep(0.02)

    def delta(self) -> dict[str, int]:
        end = self._sample()
        return {group: end[group] - self.start[group] for group in self.roots}


def settled(window: IoWindow, quiet: float = 2.0, timeout: float = 10) -> dict[str, int]:
    """Wait until the group has written nothing for ``quiet`` seconds (at most ``timeout``: the daemon
    has idle writes of its own); return what it wrote."""
    deadline = time.monotonic() + timeout
    last, since = window.delta(), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.5)
        now = window.delta()
        if now != last:
            last, since = now, time.monotonic()
    return last


# -- the writer -------------------------------------------------------------------------------------


class Writer(threading.Thread):
    """Commits numbered rows (autocommit) at ``tps`` and records when each was acknowledged."""

    def __init__(self, stack: Stack, tps: float, first: int) -> None:
        super().__init__(daemon=True)
        self.conn, self.tps, self.first = stack.conn, tps, first
        self.acknowledged: dict[int, float] = {}
        self.started = time.monotonic()
        self.stop = threading.Event()

    def run(self) -> None:
        with contextlib.suppress(psycopg.Error), psycopg.connect(**self.conn, autocommit=True) as db:
            self.started = time.monotonic()
            n = self.first
            while not self.stop.is_set():
                db.execute(f"INSERT INTO numbers VALUES (%s, {BODY})", (n,))
                self.acknowledged[n] = time.monotonic()
                n += 1
                self.stop.wait(max(0.0, self.started + (n - self.first) / self.tps - time.monotonic()))


def create_numbers(stack: Stack) -> None:
    stack.sql("CREATE TABLE IF NOT EXISTS numbers (n bigint PRIMARY KEY, body text)")


# -- recovery point ---------------------------------------------------------------------------------


def one_cut(stack: Stack, tps: float, moment: float) -> dict[str, Any]:
    first = int(stack.sql("SELECT coalesce(max(n), 0) FROM numbers")) + 1
    recoveries = events(stack).count('"PhysicalRecovery"')
    with running_daemon(stack, streaming=True) as daemon:
        writer = Writer(stack, tps, first)
        writer.start()
        time.sleep(moment)  # the random moment of the cut
        cut = time.monotonic()
        daemon.kill()
        power_cut(stack.state, stack.ram_root)
        writer.stop.set()
        writer.join(30)
    apply = measure([PY, "-m", "reconciler", "-f", str(stack.state), "apply"])
    last = int(stack.sql("SELECT coalesce(max(n), 0) FROM numbers"))
    count = int(stack.sql("SELECT count(*) FROM numbers"))
    assert count == last, f"a gap: {count} rows up to {last}"
    attempted = max(writer.acknowledged, default=first - 1) + 1
    assert last <= attempted, f"row {last} was never written (last attempted {attempted})"
    # nothing of this cycle came back: the loss is at least the whole cycle
    loss = cut - (writer.acknowledged[last] if last >= first else writer.started)
    lost = sum(1 for n in writer.acknowledged if n > last)
    return {
        "moment_s": round(moment, 2),
        "acknowledged": len(writer.acknowledged),
        "lost_rows": lost,
        "loss_s": round(loss, 3),
        "apply_s": round(apply.seconds, 2),
        "physical": events(stack).count('"PhysicalRecovery"') > recoveries,
    }


def recovery_point(
    stack: Stack, tps_list: list[int], cuts: int, interval: float, seed: int
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    create_numbers(stack)
    rows = []
    for placement in ("spool", "offsite"):
        set_continuous(stack.state, True, placement, interval, stack.drive)
        cli(stack.state, "apply")
        for tps in tps_list:
            # spool: a few seconds of writing; offsite: the cut falls anywhere in an interval's cycle
            low = 2.0 if placement == "spool" else interval + 2.0
            samples = [one_cut(stack, tps, rng.uniform(low, low + max(4.0, interval))) for _ in range(cuts)]
            losses = [s["loss_s"] for s in samples]
            bound = 1.0 if placement == "spool" else interval
            rows.append(
                {
                    "placement": placement,
                    "tps": tps,
                    "cuts": samples,
                    "loss_max_s": max(losses),
                    "loss_median_s": round(statistics.median(losses), 3),
                    "lost_rows_max": max(s["lost_rows"] for s in samples),
                    "target_s": bound,
                    "ok": max(losses) <= bound and all(s["physical"] for s in samples),
                }
            )
    set_continuous(stack.state, True, "spool", interval)
    cli(stack.state, "apply")
    print_table(
        f"recovery point after a power cut ({cuts} cut(s) each; off-site interval {interval:g} s)",
        ["placement", "tps", "loss max s", "loss median s", "rows lost max", "target s", "ok"],
        [
            [
                r["placement"],
                str(r["tps"]),
                f"{r['loss_max_s']:.2f}",
                f"{r['loss_median_s']:.2f}",
                str(r["lost_rows_max"]),
                f"{r['target_s']:g}",
                str(r["ok"]),
            ]
            for r in rows
        ],
    )
    return rows


# -- bytes to persistent storage --------------------------------------------------------------------


def bytes_window(stack: Stack, daemon: Daemon, tps: int, seconds: float) -> dict[str, Any]:
    """One window of the workload; see the module docstring for the method."""
    create_numbers(stack)
    first = int(stack.sql("SELECT coalesce(max(n), 0) FROM numbers")) + 1
    segment = int(stack.sql("SELECT pg_size_bytes(current_setting('wal_segment_size'))"))
    roots = {"postgres": stack.postmaster(), "reconciler": daemon.process.pid}
    # warm-up: a fresh cluster zero-fills every new WAL segment (a checkpoint pre-allocates the next
    # one); a cluster that has run a while recycles old ones (renamed, not rewritten). A few switches
    # and checkpoints leave min_wal_size of recyclable segments, as on a machine that has been up.
    for _ in range(8):
        stack.sql("CHECKPOINT")
        stack.sql("SELECT pg_switch_wal()")
    stack.sql("CHECKPOINT")
    wait("the receiver to catch up", stack.caught_up, daemon=daemon)
    settled(IoWindow(roots))
    # the cost of one segment boundary: the switch and whatever follows it (shipping, zero-filling)
    boundary_window = IoWindow(roots)
    stack.sql("SELECT pg_switch_wal()")
    stack.sql(f"INSERT INTO numbers VALUES ({first}, {BODY})")
    wait("the receiver to catch up", stack.caught_up, daemon=daemon)
    boundary = settled(boundary_window)
    # the window: the workload, then a checkpoint, then the receiver's fsync tick
    start_lsn = str(stack.sql("SELECT pg_current_wal_lsn()"))
    start_segment = stack.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    window = IoWindow(roots)
    calls = IoWindow({"postgres": roots["postgres"]}, "wchar")  # disk mode's write() volume, see below
    started = time.monotonic()
    writer = Writer(stack, tps, first + 1)
    writer.start()
    time.sleep(seconds)
    writer.stop.set()
    writer.join(30)
    stack.sql("CHECKPOINT")
    wait("the receiver to catch up", stack.caught_up, daemon=daemon)
    time.sleep(1.0)  # the spool's fsync tick (0.5 s) after the last write
    written = window.delta()
    write_calls = calls.delta()["postgres"]
    elapsed = time.monotonic() - started
    raw = int(stack.sql("SELECT pg_current_wal_lsn() - %s::pg_lsn", start_lsn))
    crossed = stack.sql("SELECT pg_walfile_name(pg_current_wal_lsn())") != start_segment
    per_hour = 3600 / elapsed
    segments_per_hour = raw * per_hour / segment
    hourly = {g: written[g] * per_hour + boundary[g] * segments_per_hour for g in roots}
    return {
        "tps": tps,
        "transactions": len(writer.acknowledged),
        "seconds": round(elapsed, 1),
        "raw_wal_mb_per_hour": round(raw * per_hour / 1e6, 1),
        "window_bytes": written,
        "segment_boundary_bytes": boundary,
        "segments_per_hour": round(segments_per_hour, 2),
        "window_crossed_a_segment": crossed,
        "postgres_mb_per_hour": round(hourly["postgres"] / 1e6, 1),
        # the bytes PostgreSQL passed to write() (WAL, data files; and tmpfs in RAM mode), without the
        # segment boundaries: what a kernel that accounts 4 KiB pages would count, about
        "postgres_write_calls_mb_per_hour": round(write_calls * per_hour / 1e6, 1),
        "reconciler_mb_per_hour": round(hourly["reconciler"] / 1e6, 1),
        "total_mb_per_hour": round(sum(hourly.values()) / 1e6, 1),
    }


def bytes_per_hour(ram: Stack, tps_list: list[int], seconds: float) -> list[dict[str, Any]]:
    set_continuous(ram.state, True, "spool")
    cli(ram.state, "apply")
    cli(ram.state, "backup")  # no backup is due inside a window
    with running_daemon(ram, streaming=True) as daemon:
        spool = [{"mode": "ram + spool", **bytes_window(ram, daemon, tps, seconds)} for tps in tps_list]
    with bench_stack(mode="disk", encrypted=True, extra=daemon_settings()) as state:
        disk = Stack(state)
        cli(state, "backup")
        with running_daemon(disk, streaming=False) as daemon:
            plain = [{"mode": "disk", **bytes_window(disk, daemon, tps, seconds)} for tps in tps_list]
    rows = [*spool, *plain]
    for row in spool:
        reference = next(r for r in plain if r["tps"] == row["tps"])
        row["x_disk"] = round(row["total_mb_per_hour"] / reference["total_mb_per_hour"], 3)
        # conservative: against disk mode's write() volume, which the large-folio accounting of
        # recent kernels does not inflate (the spool's own figure keeps that inflation)
        row["x_disk_write_calls"] = round(
            row["total_mb_per_hour"] / reference["postgres_write_calls_mb_per_hour"], 3
        )
    print_table(
        f"bytes written to persistent storage per hour (window {seconds:g} s + segment boundaries)",
        [
            "mode",
            "tps",
            "raw WAL MB/h",
            "postgres MB/h",
            "reconciler MB/h",
            "total MB/h",
            "x disk",
            "pg write() MB/h",
            "x disk write()",
        ],
        [
            [
                r["mode"],
                str(r["tps"]),
                f"{r['raw_wal_mb_per_hour']:.1f}",
                f"{r['postgres_mb_per_hour']:.1f}",
                f"{r['reconciler_mb_per_hour']:.1f}",
                f"{r['total_mb_per_hour']:.1f}",
                f"{r['x_disk']:.3f}" if "x_disk" in r else "",
                f"{r['postgres_write_calls_mb_per_hour']:.1f}",
                f"{r['x_disk_write_calls']:.3f}" if "x_disk_write_calls" in r else "",
            ]
            for r in rows
        ],
    )
    return rows


# -- uplink -----------------------------------------------------------------------------------------


def wal_uploaded(emulator: DriveEmulator, folder: str) -> tuple[int, int]:
    """(uploads, bytes) stored so far into the Drive WAL area below the sets ``folder``
    (``wal/<system identifier>/``, engine/waloffsite.py): every upload, deleted versions included."""
    files = list(emulator.state.files.values())
    wal = {m["id"] for m in files if m["name"] == "wal" and folder in m.get("parents", [])}
    clusters = {m["id"] for m in files if wal & set(m.get("parents", []))}
    sizes = [size for _, parents, size in list(emulator.state.uploads) if clusters & set(parents)]
    return len(sizes), sum(sizes)


def uplink(stack: Stack, tps: int, seconds: float, interval: float) -> dict[str, Any]:
    """Off-site placement: every upload into the Drive WAL area, per day."""
    assert stack.emulator is not None and stack.drive is not None
    create_numbers(stack)
    set_continuous(stack.state, True, "offsite", interval, stack.drive)
    cli(stack.state, "apply")
    first = int(stack.sql("SELECT coalesce(max(n), 0) FROM numbers")) + 1
    with running_daemon(stack, streaming=True):
        uploads_before, bytes_before = wal_uploaded(stack.emulator, stack.drive["folder_id"])
        received_before = stack.emulator.state.bytes_received
        started = time.monotonic()
        writer = Writer(stack, tps, first)
        writer.start()
        time.sleep(seconds)
        writer.stop.set()
        writer.join(30)
        elapsed = time.monotonic() - started
        uploads_after, bytes_after = wal_uploaded(stack.emulator, stack.drive["folder_id"])
        received = stack.emulator.state.bytes_received - received_before
    shipped, uploads = bytes_after - bytes_before, uploads_after - uploads_before
    set_continuous(stack.state, True, "spool", interval)
    cli(stack.state, "apply")
    cli(stack.state, "backup")
    manifest = max(stack.store.glob("*.manifest.json"), key=lambda p: p.name)
    members = json.loads(manifest.read_text())["members"]
    dump = next(m for m in members if m.get("content") == "pg_dump-custom")["size"]
    row = {
        "tps": tps,
        "interval_s": interval,
        "seconds": round(elapsed, 1),
        "database_bytes": int(stack.sql("SELECT pg_database_size('bench')")),
        "wal_uploads": uploads,
        "wal_shipped_mb_per_day": round(shipped * 86400 / elapsed / 1e6, 1),
        # everything the emulator received (request bodies: metadata, any set, retried chunks)
        "drive_received_mb_per_day": round(received * 86400 / elapsed / 1e6, 1),
        "dump_mb": round(dump / 1e6, 1),
        "hourly_dumps_mb_per_day": round(dump * 24 / 1e6, 1),
    }
    row["x_dumps"] = round(row["wal_shipped_mb_per_day"] / row["hourly_dumps_mb_per_day"], 3)
    print_table(
        f"uplink per day at {tps} tps: off-site WAL (interval {interval:g} s) vs hourly logical dumps",
        ["database MB", "uploads", "WAL shipped MB/day", "one dump MB", "24 dumps MB/day", "x dumps"],
        [
            [
                f"{row['database_bytes'] / 1e6:.0f}",
                str(row["wal_uploads"]),
                f"{row['wal_shipped_mb_per_day']:.1f}",
                f"{row['dump_mb']:.1f}",
                f"{row['hourly_dumps_mb_per_day']:.1f}",
                f"{row['x_dumps']:.3f}",
            ]
        ],
    )
    return row


# -- recovery time ----------------------------------------------------------------------------------


class FirstAnswer(threading.Thread):
    """Polls (every 0.1 s, one indexed row) until the database answers with the newest row of the
    dataset: when the data is back for the application, which may be before ``apply`` returns (after
    a physical recovery it goes on to take a post-restore set)."""

    def __init__(self, conn: dict[str, Any], newest: int) -> None:
        super().__init__(daemon=True)
        self.conn, self.newest = conn, newest
        self.started = time.perf_counter()
        self.seconds: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(psycopg.Error), psycopg.connect(**self.conn, connect_timeout=2) as db:
                if db.execute("SELECT 1 FROM documents WHERE id = %s", (self.newest,)).fetchone():
                    self.seconds = time.perf_counter() - self.started
                    return
            self.stop.wait(0.1)


def timed_apply(stack: Stack, newest: int | None = None) -> tuple[float, float | None]:
    """(seconds of ``apply``, seconds until the database answered with the newest row, if polled).

    Polled for the physical path only: a logical restore swaps databases by renames after closing
    their sessions, and a poller's session arriving in between would make the rename fail; its
    ``apply`` returns right after the swap anyway."""
    poller = None if newest is None else FirstAnswer(stack.conn, newest)
    if poller is not None:
        poller.start()
    run = measure([PY, "-m", "reconciler", "-f", str(stack.state), "apply"])
    if poller is None:
        return run.seconds, None
    poller.stop.set()
    poller.join(10)
    return run.seconds, poller.seconds


def timed_rows(path: str, apply: float, answer: float | None, legacy: float) -> list[dict[str, Any]]:
    rows = [
        {
            "what": f"apply after power cut: {path}",
            "seconds": round(apply, 2),
            "x_legacy": round(apply / legacy, 3),
        }
    ]
    if answer is not None:
        rows.append(
            {
                "what": f"  of which until it answers: {path}",
                "seconds": round(answer, 2),
                "x_legacy": round(answer / legacy, 3),
            }
        )
    return rows


def recovery_times(stack: Stack, megabytes: int, info: dict[str, Any]) -> list[dict[str, Any]]:
    """Power cut, restore on boot from the same set: base + WAL, the logical dump, the legacy pipeline."""
    state, conn = stack.state, stack.conn
    expected = rows_in(conn)
    newest = int(stack.sql("SELECT max(id) FROM documents"))
    set_continuous(state, True)
    cli(state, "apply")
    backup = measure([PY, "-m", "reconciler", "-f", str(state), "backup"])
    baseline = Legacy(state, conn)
    legacy_backup = baseline.backup()

    power_cut(state, stack.ram_root)
    physical, physical_answer = timed_apply(stack, newest)
    assert rows_in(conn) == expected
    assert "PhysicalRecovery" in events(stack), "the physical path was not taken"

    set_continuous(state, False)
    power_cut(state, stack.ram_root)
    logical, logical_answer = timed_apply(stack)
    assert rows_in(conn) == expected

    # legacy: empty servers first (no backups in reach of the reconciler), then the old restore
    power_cut(state, stack.ram_root)
    hidden = stack.store.with_name("backups-hidden")
    stack.store.rename(hidden)
    try:
        start = time.perf_counter()
        measure([PY, "-m", "reconciler", "-f", str(state), "apply"])
        baseline.restore()
        legacy = time.perf_counter() - start  # psql returns once the data is in: done = answering
    finally:
        shutil.rmtree(stack.store, ignore_errors=True)  # what the empty start stored (a set of nothing)
        hidden.rename(stack.store)
    assert rows_in(conn) == expected
    set_continuous(state, True)
    cli(state, "apply")
    cli(state, "backup")  # a base of the cluster the legacy restore made, for the sections after
    rows: list[dict[str, Any]] = [
        {"what": "backup set (logical + base)", "seconds": round(backup.seconds, 2)},
        {"what": "legacy backup (pg_dump + Fernet)", "seconds": round(legacy_backup.seconds, 2)},
        *timed_rows("base + WAL", physical, physical_answer, legacy),
        *timed_rows("logical dump", logical, logical_answer, legacy),
        {"what": "legacy: start empty + Fernet + psql", "seconds": round(legacy, 2), "x_legacy": 1.0},
    ]
    print_table(
        f"recovery time after a power cut, ~{megabytes} MB ({info['database_bytes'] / 2**20:.0f} MiB on disk)",
        ["what", "seconds", "x legacy"],
        [[r["what"], f"{r['seconds']:.1f}", f"{r['x_legacy']:.2f}" if "x_legacy" in r else ""] for r in rows],
    )
    return rows


# -- overhead ---------------------------------------------------------------------------------------


def pgbench_round(stack: Stack, seconds: float) -> float:
    bindir = next(Path("/usr/lib/postgresql").glob("*/bin"))
    env = {
        **os.environ,
        "PGHOST": stack.conn["host"],
        "PGPORT": str(stack.conn["port"]),
        "PGUSER": "postgres",
    }
    result = subprocess.run(
        [str(bindir / "pgbench"), "-n", "-c", "2", "-j", "1", "-T", f"{seconds:g}", "bench"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(line for line in result.stdout.splitlines() if line.startswith("tps ="))
    return float(line.split()[2])


def overhead(stack: Stack, rounds: int, seconds: float) -> dict[str, Any]:
    """Interleaved rounds, on first: the state.yaml switch starts and stops the daemon's receiver."""
    on: list[float] = []
    off: list[float] = []
    cli(stack.state, "backup")
    with running_daemon(stack, streaming=True) as daemon:
        for _ in range(rounds):
            set_continuous(stack.state, True)
            wait("the WAL stream to be active", stack.streaming, daemon=daemon)
            wait("the receiver to catch up", stack.caught_up, daemon=daemon)
            on.append(pgbench_round(stack, seconds))
            set_continuous(stack.state, False)
            wait("the WAL stream to stop", lambda: not stack.streaming(), daemon=daemon)
            off.append(pgbench_round(stack, seconds))
        set_continuous(stack.state, True)
    row = {
        "rounds": rounds,
        "seconds_each": seconds,
        "tps_on": on,
        "tps_off": off,
        "median_on": round(statistics.median(on), 1),
        "median_off": round(statistics.median(off), 1),
    }
    row["on_over_off"] = round(row["median_on"] / row["median_off"], 3)
    print_table(
        f"pgbench (-c 2 -j 1, {seconds:g} s rounds, interleaved) with continuous WAL on vs off",
        ["rounds", "tps on (median)", "tps off (median)", "on / off"],
        [[str(rounds), f"{row['median_on']:.0f}", f"{row['median_off']:.0f}", f"{row['on_over_off']:.3f}"]],
    )
    return row


# -- main -------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated sections: {', '.join(SECTIONS)}"
    )
    parser.add_argument("--mb", type=int, default=300, help="database size for recovery, uplink and pgbench")
    parser.add_argument("--tps", default="10,100", help="transaction rates for recovery-point and bytes")
    parser.add_argument("--seconds", type=float, default=60, help="bytes: length of each window")
    parser.add_argument(
        "--cuts", type=int, default=3, help="recovery-point: power cuts per placement and rate"
    )
    parser.add_argument(
        "--interval", type=float, default=10, help="recovery-point: off-site interval, seconds"
    )
    parser.add_argument("--uplink-seconds", type=float, default=180, help="uplink: length of the window")
    parser.add_argument(
        "--uplink-interval",
        type=float,
        default=60,
        help="uplink: off-site interval (default 60 s, as the product)",
    )
    parser.add_argument("--pgbench-seconds", type=float, default=20, help="pgbench: length of each round")
    parser.add_argument("--rounds", type=int, default=3, help="pgbench: rounds on and off each")
    parser.add_argument("--seed", type=int, default=15, help="random moments of the cuts")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the stacks (servers, daemons, directories) are taken down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    tps_list = [int(t) for t in args.tps.split(",")]
    if "uplink" in only and args.uplink_seconds < 2 * args.uplink_interval:
        print(
            f"warning: an uplink window under two intervals ({args.uplink_seconds:g} s < 2 x {args.uplink_interval:g} s) sees 0-1 shipment"
        )
    results: dict[str, Any] = {"sections": only, "args": vars(args)}
    timings: dict[str, float] = {}
    loads: dict[str, list[float]] = {}

    def section(name: str, run: Callable[[], Any]) -> None:
        if name in only:
            started = time.monotonic()
            results[name.replace("-", "_")] = run()
            timings[name] = round(time.monotonic() - started, 1)
            loads[name] = [round(x, 2) for x in os.getloadavg()]
            print(f"{name}: {timings[name]:.0f} s, load average {loads[name]}")

    with contextlib.ExitStack() as resources:
        emulator, drive = None, None
        if {"recovery-point", "uplink"} & set(only):  # the stack stops before the emulator
            drive_dir = resources.enter_context(tempfile.TemporaryDirectory(dir="/dev/shm"))
            emulator = DriveEmulator(str(Path(drive_dir) / "drive"))
            resources.callback(emulator.stop)
            drive = store_settings(Path(drive_dir), emulator)
        state = resources.enter_context(bench_stack(encrypted=True, extra=daemon_settings()))
        stack = Stack(state)
        stack.emulator, stack.drive = emulator, drive
        set_continuous(state, True)
        cli(state, "apply")
        cli(state, "backup")
        section(
            "recovery-point", lambda: recovery_point(stack, tps_list, args.cuts, args.interval, args.seed)
        )
        section("bytes", lambda: bytes_per_hour(stack, tps_list, args.seconds))
        if {"recovery", "uplink", "pgbench"} & set(only):
            bindir = next(Path("/usr/lib/postgresql").glob("*/bin"))
            stack.sql("DROP TABLE IF EXISTS numbers")
            started = time.monotonic()
            results["dataset"] = generate(stack.conn, bindir, args.mb)
            timings["dataset"] = round(time.monotonic() - started, 1)
            cli(state, "backup")
        section("recovery", lambda: recovery_times(stack, args.mb, results["dataset"]))
        section("uplink", lambda: uplink(stack, tps_list[0], args.uplink_seconds, args.uplink_interval))
        section("pgbench", lambda: overhead(stack, args.rounds, args.pgbench_seconds))
    # a partial run gets its own file (bench/results/continuous-<sections>.json): runs of single
    # sections one after the other (as on a machine short of disk space) do not overwrite each other
    name = "continuous" if only == list(SECTIONS) else "continuous-" + "-".join(only)
    path = write_results(name, [], scale_mb=args.mb, timings=timings, load=loads, **results)
    print(f"section seconds: {timings}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
