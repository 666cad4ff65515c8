"""Continuous WAL: a supervised ``pg_receivewal`` and the shipping of what it writes.

Design decisions:
- ``pg_receivewal`` with a physical replication slot (``reconciler_<stack>``): the server keeps every
  segment until the receiver has flushed it, so nothing is recycled before it is safe; after a
  restart the receiver resumes from the slot, not from a guess. The server does not wait for it (no
  synchronous_standby_names): an SD card that stalls never stalls the application.
- ``pg_receivewal`` receives into RAM (``<ram root>/wal-receive/<system identifier>``) for both
  placements, without ``--synchronous``: it never writes to the SD card (its 16 MiB zero-fill of each
  segment and its raw pages measured ~120 MB/h at 10 tps when it received onto the card).
- Two placements (``backup.continuous.placement``): ``spool`` keeps the segment in progress on
  persistent storage as compressed, encrypted, authenticated chunks (``backup/walspool``): every
  ``TICK`` (0.5 s) the bytes received since the last tick become one chunk appended to
  ``<spool_dir>/<system identifier>/<segment>.walspool`` and fsynced; an idle database writes
  nothing. Recovery point: the last tick plus the receiver's latency, under a second. ``offsite``
  writes nothing to the card and ships the new bytes of the segment in progress every ``interval``
  as one sealed chunk (``engine/walchunks``): that interval is the recovery point.
- Shipping (``backup/walseg``): each completed segment is compressed, encrypted and authenticated
  into the WAL area of the local store, one directory per database cluster (its system identifier):
  a restore by initdb makes a new cluster whose segment names restart, and two histories must never
  share names. A segment is removed from the receive directory, and its spool file, only after it is
  stored (fsynced). Each tick spools a completed segment to its end first, then the next segment,
  then ships: shipping (seconds on a Pi) never delays the spool, and the spool never holds a segment
  whose predecessor is neither stored nor spooled whole.
- The supervisor is one thread with a short tick that lists one directory, stats one file and checks
  one child's exit status: the daemon's idle cost stays a few system calls per tick. A receiver that
  exits is restarted with capped backoff, and its stderr tail is reported once, not every tick.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from reconciler.backup import physical, walseg, walspool
from reconciler.backup.create import Sealing, sealing_for
from reconciler.engine import walhistory, walstatus
from reconciler.engine.context import StackContext
from reconciler.errors import CommandFailed, ReconcilerError
from reconciler.plan import walchain
from reconciler.plan.observed import ObservedState
from reconciler.runtimes.base import Endpoint
from reconciler.runtimes.local import postgres_bindir
from reconciler.spec.model import StateSpec
from reconciler.system import failpoints, fs, proc

log = logging.getLogger(__name__)

TICK = 0.5  # the spool's segment in progress gets a chunk this often (see the module docstring)
_BACKOFF_MAX = 30.0
_STEADY = 5.0  # a receiver up this long is streaming: its earlier error is cleared (engine/walstatus)


def receive_dir(spec: StateSpec) -> str:
    """Where pg_receivewal writes: RAM, for both placements."""
    return os.path.join(spec.ram_root, "wal-receive")


def spool_root(spec: StateSpec) -> str:
    """Where the spool's chunk files live (persistent storage), one directory per cluster."""
    return spec.resolve(spec.backup.continuous.spool_dir)


def store_area(spec: StateSpec, system_identifier: str) -> Any:
    """The WAL area of the local store for one cluster (``<store>/wal/<system identifier>``)."""
    from reconciler.stores.local import LocalStore

    return LocalStore(
        os.path.join(walseg.area(spec.resolve(spec.backup.stores.local.path)).path, system_identifier)
    )


def receivewal_argv(bindir: str, endpoint: Endpoint, directory: str, slot: str) -> list[str]:
    return [
        *physical.receivewal_base(bindir, endpoint, slot),
        *("-D", directory, "--no-loop", "--status-interval=1"),
    ]


def warn_raw_spool(spool: str) -> None:
    """Raw WAL in the spool directory (an earlier version of this issue received onto the card, or a
    planted file) carries no authentication: it is never moved into the receive directory (trusted
    like the data directory), never sealed into the store and never replayed. It is left alone, and
    said once (review15)."""
    raw = [n for n in os.listdir(spool) if walchain.is_segment(n.removesuffix(".partial"))]
    if raw:
        log.warning("continuous WAL: ignoring %d unauthenticated raw WAL file(s) in %s", len(raw), spool)


@dataclass
class Shipper:
    """Ships what ``pg_receivewal`` wrote in ``directory`` to the store; one cluster, one sealing."""

    spec: StateSpec
    directory: str
    sealing: Sealing
    system_identifier: str
    last_partial: float = 0.0
    spooler: walspool.Spooler | None = None  # placement ``spool``
    area: Any = None  # where segments go, chosen by placement (engine/waloffsite); None: not chosen yet
    chunks: Any = None  # placement ``offsite``: the segment in progress as chunks (engine/walchunks)
    whole_partials: bool = False  # the previous version's whole re-uploads instead (for measurements)
    histories: set[str] = field(default_factory=set)  # timeline history files shipped (engine/walhistory)

    def destination(self) -> Any:
        """Drive with placement ``offsite`` (nothing on persistent storage), else the local store."""
        if self.area is None:
            from reconciler.engine import waloffsite

            area = waloffsite.destination(self.spec, self.system_identifier, self.directory)
            self.area = area if area is not None else store_area(self.spec, self.system_identifier)
        return self.area

    def chunker(self) -> Any:
        """Placement ``offsite``: the writer of the segment in progress as chunks (engine/walchunks)."""
        if self.whole_partials or self.spec.backup.continuous.placement != "offsite":
            return None
        if self.chunks is None:
            from reconciler.engine import walchunks

            store = self.destination()
            self.chunks = walchunks.DriveSpooler.on(
                store, self.sealing, self.spec.stack, self.system_identifier
            )
        return self.chunks

    def ship_completed(self) -> list[str]:
        store = self.destination()
        walhistory.ship_new(
            store, self.directory, self.sealing, self.spec.stack, self.system_identifier, self.histories
        )
        shipped = []
        failure: Exception | None = None
        for name in sorted(os.listdir(self.directory)):
            if not walchain.is_segment(name):
                continue  # .partial (in progress), .history handled by recovery itself
            if failure is None:
                try:
                    failpoints.hit("wal.ship", segment=name)
                    walseg.ship(
                        store,
                        os.path.join(self.directory, name),
                        name,
                        self.sealing,
                        self.spec.stack,
                        self.system_identifier,
                    )
                    os.unlink(os.path.join(self.directory, name))
                    if self.spooler is not None:
                        self.spooler.shipped(name)
                    if self.chunker() is not None:  # its chunk files, from before a restart too
                        self.chunks.shipped(name)
                    shipped.append(name)
                    continue
                except (ReconcilerError, OSError) as exc:
                    if self.spooler is None:
                        raise
                    failure = exc
            # the store refuses it: the spool keeps it whole until it does (the chain goes on there)
            assert self.spooler is not None
            self.spooler.follow(os.path.join(self.directory, name), name, complete=True)
        if failure is not None:
            raise failure
        return shipped

    def spool_completed(self) -> bool:
        """Spool the completed segments that have a spool file to their end (placement ``spool``);
        False when one has none (then it is shipped before the next segment is spooled)."""
        if self.spooler is None:
            return True
        ready = True
        for name in sorted(os.listdir(self.directory)):
            if walchain.is_segment(name):
                if self.spooler.has(name):
                    self.spooler.follow(os.path.join(self.directory, name), name, complete=True)
                else:
                    ready = False
        return ready

    def spool_partial(self) -> int:
        """Append the new bytes of the segment in progress to the spool (placement ``spool``)."""
        if self.spooler is None:
            return 0
        partials = sorted(n for n in os.listdir(self.directory) if n.endswith(".partial"))
        name = partials[-1].removesuffix(".partial") if partials else ""
        if not walchain.is_segment(name):
            return 0
        return self.spooler.follow(os.path.join(self.directory, partials[-1]), name)

    def ship_partial(self) -> str | None:
        """Ship the segment in progress (placement ``offsite``, every ``interval``)."""
        partials = sorted(n for n in os.listdir(self.directory) if n.endswith(".partial"))
        if not partials:
            return None
        name = partials[-1].removesuffix(".partial")
        if not walchain.is_segment(name):
            return None
        store = self.destination()
        if self.chunker() is not None:
            self.chunks.follow(os.path.join(self.directory, partials[-1]), name)
            return name
        with contextlib.suppress(FileNotFoundError):  # completed and renamed while we looked
            walseg.ship(
                store,
                os.path.join(self.directory, partials[-1]),
                name,
                self.sealing,
                self.spec.stack,
                self.system_identifier,
                partial=True,
            )
            return name
        return None


class WalStreamer:
    """One ``pg_receivewal`` for one stack, supervised by a thread, and the shipping of its output."""

    def __init__(self, spec: StateSpec, endpoint: Endpoint, bindir: str) -> None:
        self.spec = spec
        self.endpoint = endpoint
        self.bindir = bindir
        self.directory = receive_dir(spec)
        self.slot = physical.slot_name(spec.stack)
        self.process: Any = None
        self.shipper: Shipper | None = None
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = 1.0
        self._next_start = 0.0
        self._log_path = os.path.join(spec.state_path, "pg_receivewal.log")
        self._fresh = False  # this tick noted an error (so it does not clear it)
        self._started = 0.0  # when the receiver was last started (monotonic)

    # -- one tick ---------------------------------------------------------------------------------

    def _start_receiver(self) -> None:
        identity = physical.server_identity(self.endpoint)
        # one receive directory per cluster: a restored (initdb'd) cluster's segment names start over,
        # and pg_receivewal resumes from the newest segment it finds in its directory
        self.directory = os.path.join(receive_dir(self.spec), identity["system_identifier"])
        fs.ensure_dir(os.path.dirname(self.directory), 0o700)
        fs.ensure_dir(self.directory, 0o700)
        sysid = identity["system_identifier"]
        self.shipper = Shipper(self.spec, self.directory, sealing_for(self.spec), sysid)
        if self.spec.backup.continuous.placement == "spool":
            spool = os.path.join(spool_root(self.spec), sysid)
            fs.ensure_dir(os.path.dirname(spool), 0o700)
            fs.ensure_dir(spool, 0o700)
            warn_raw_spool(spool)
            self.shipper.spooler = walspool.Spooler(spool, self.shipper.sealing, self.spec.stack, sysid)
        physical.ensure_slot(self.bindir, self.endpoint, self.slot)
        with open(self._log_path, "ab") as stderr:
            self.process = proc.spawn(
                receivewal_argv(self.bindir, self.endpoint, self.directory, self.slot),
                stdout=proc.DEVNULL,
                stderr=stderr,
            )
        log.info(
            "pg_receivewal started (pid %d) into %s, slot %s", self.process.pid, self.directory, self.slot
        )

    def tick(self, now: float) -> None:
        """Keep the receiver running and ship what is due. Errors are remembered and retried."""
        self._fresh = False
        try:
            if self.process is not None and self.process.poll() is not None:
                self._note_error(
                    f"pg_receivewal exited with code {self.process.returncode}: {self._log_tail()}"
                )
                self.process = None
                self._next_start = now + self._backoff
                self._backoff = min(self._backoff * 2, _BACKOFF_MAX)
            if self.process is None and now >= self._next_start:
                self._start_receiver()
                self._started = now
            if self.shipper is not None:
                ready = self.shipper.spool_completed()
                if ready:
                    self.shipper.spool_partial()
                try:
                    if self.shipper.ship_completed():
                        self._backoff = 1.0
                finally:
                    if not ready:  # shipped now, or spooled whole because the store refused it
                        self.shipper.spool_partial()
                continuous = self.spec.backup.continuous
                interval = continuous.interval.total_seconds()
                if continuous.placement == "offsite" and now - self.shipper.last_partial >= interval:
                    self.shipper.ship_partial()
                    self.shipper.last_partial = now
            # cleared once a receiver has stayed up (not in the back-off after an exit, nor in the
            # second before a receiver that cannot stream exits again)
            steady = self.process is not None and now - self._started >= _STEADY
            if steady and not self._fresh and self.last_error is not None:
                self.last_error = None
                walstatus.note(self.spec.state_path, None)
        except (ReconcilerError, CommandFailed, OSError) as exc:
            self._note_error(str(exc))
            self._next_start = now + self._backoff
            self._backoff = min(self._backoff * 2, _BACKOFF_MAX)

    def _note_error(self, message: str) -> None:
        self._fresh = True
        if message != self.last_error:
            log.warning("continuous WAL: %s", message)
            with contextlib.suppress(OSError):  # status shows it (engine/walstatus)
                walstatus.note(self.spec.state_path, message)
        self.last_error = message

    def _log_tail(self) -> str:
        try:
            with open(self._log_path, "rb") as handle:
                handle.seek(max(0, os.path.getsize(self._log_path) - 500))
                return handle.read().decode(errors="replace").strip().splitlines()[-1]
        except (OSError, IndexError):
            return "(no output)"

    # -- the thread -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wal-streamer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick(time.monotonic())
            self._stop.wait(TICK)

    def stop(self) -> None:
        """Stop the receiver (it flushed what it acknowledged) and ship what it completed."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except Exception:
                self.process.kill()
                self.process.wait()
            self.process = None
        if self.shipper is not None:
            with contextlib.suppress(ReconcilerError, OSError):
                self.shipper.ship_completed()
                self.shipper.spool_partial()
                if self.spec.backup.continuous.placement == "offsite":
                    self.shipper.ship_partial()


class WalSupervisor:
    """What the daemon holds: a streamer while continuous protection is on and PostgreSQL runs."""

    def __init__(self) -> None:
        self.streamer: WalStreamer | None = None
        self._key: tuple[Any, ...] | None = None

    def follow(self, ctx: StackContext, observed: ObservedState) -> None:
        """Called once per daemon pass: start, keep, restart (settings changed) or stop the streamer."""
        spec = ctx.spec
        service = observed.services.get("postgres")
        running = service is not None and service.running and service.port is not None
        wanted = spec.backup.continuous.enabled and running
        endpoint = ctx.runtime.endpoint("postgres", service.port) if wanted and service else None
        # a new server (a mode switch's copy, a restart) gets a new receiver at once: the old one may
        # wait out up to _BACKOFF_MAX of back-off from the switch's downtime, streaming nothing
        server = (service.pid, service.data_dir) if service else None
        key = (
            (spec.backup.continuous, spec.backup.encryption, spec.ram_root, endpoint, server)
            if wanted
            else None
        )
        if key == self._key:
            return
        self.stop()
        if endpoint is not None:
            self.streamer = WalStreamer(spec, endpoint, postgres_bindir())
            self.streamer.start()
        self._key = key

    def stop(self) -> None:
        if self.streamer is not None:
            self.streamer.stop()
            self.streamer = None
        self._key = None


def prune_segments(ctx: StackContext) -> list[str]:
    """WAL retention, after set retention (the caller holds the stack lock): delete the segments no
    kept, authenticated base can replay (``plan/walchain.unneeded``). Only sets we vouch for count,
    so a planted manifest cannot make segments look unneeded; a cluster with no kept base keeps its
    WAL unless another cluster has one (then it is the history a restore by initdb abandoned)."""
    import json

    from reconciler.engine import backups, waloffsite
    from reconciler.plan import walkeep
    from reconciler.plan.backupsets import MANIFEST_SUFFIX

    store = backups.local_store(ctx)
    starts: dict[str, list[str]] = {}
    for name, doubt in backups.vouch_local(ctx).items():
        if doubt is not None:
            continue
        with store.open(f"{name}{MANIFEST_SUFFIX}") as handle:
            document = json.loads(handle.read())
        for member in document["members"]:
            if member.get("content") == physical.CONTENT:
                starts.setdefault(str(member["system_identifier"]), []).append(str(member["start_segment"]))
    root = walseg.area(store.path).path
    deleted: list[str] = []
    if not starts or not os.path.isdir(root):
        return deleted
    drive = waloffsite.holdings(ctx.spec)  # Drive keeps its own sets: what it needs and lacks stays
    for sysid in os.listdir(root):
        area = store_area(ctx.spec, sysid)
        complete, partial = walseg.listing(area)
        # a cluster without a kept base, while another has one: everything of it is unneeded
        bases = starts.get(sysid) or ["FFFFFFFF" + "0" * 16]
        unneeded = walchain.unneeded([*complete, *partial], bases)
        held = None if drive is None else drive[0].get(sysid, [])
        for segment in walkeep.locally_deletable(unneeded, sysid, held, drive[1] if drive else {}):
            walseg.delete(area, segment)
            deleted.append(segment)
    if deleted:
        log.info("WAL retention deleted %d segment(s) no kept base can replay", len(deleted))
    return deleted
