"""``reconciler daemon``: a level-triggered controller loop that keeps the stack converged and its
backups fresh, healing what it finds broken.

Design decisions:
- Level-triggered, like a Kubernetes controller: a wake-up (state.yaml saved, a git commit, the
  periodic resync, a retry or a backup coming due) carries no instruction. Each pass re-reads
  state.yaml, observes everything afresh and converges with the same ``apply`` a human runs. Wake-ups
  that arrive during a pass coalesce into one next pass, so nothing is lost and nothing runs twice.
- Healing is nothing special: PostgreSQL killed, a tmpfs wiped, a container gone: each is a
  difference between state.yaml and the world, which the planner already turns into start or
  restore actions. The daemon adds only what time drives (``plan/schedule.py``): a backup that has
  come due, verification of a new set (so retention can make progress), Drive uploads that failed,
  and the RAM-pressure watch.
- Errors are classified once (``errors.py``): a transient failure retries with capped exponential
  backoff and jitter (tenacity's wait strategy), reset by the next success; a permanent one sets
  Stalled and stops retrying until state.yaml or the observed world changes (``daemon/stall.py``
  says what counts as a change). Every failed attempt is an event, not only the first.
- Healing does not wait for the resync: the process watcher (``watch.ProcessWatcher``) wakes the loop
  the instant a service process exits, and the loop re-arms it after every pass with the pids it has
  just observed. What the daemon publishes (metrics, ``/healthz``) comes from the newest observation,
  so a dead service is reported as down at once, not after the next pass.
  An invalid edit of state.yaml is reported and ignored: the daemon keeps converging to the last
  valid spec rather than stopping, because the stack still needs its backups.
- Signals only set flags; the pass in progress runs to its end (every step is journaled or idempotent,
  so the alternative of stopping mid-step would only add a resume). A watchdog enforces
  ``daemon.shutdown_timeout``: past it the process exits and the journal resumes the work next time.
- One daemon per stack, by an flock next to the status file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import tenacity

from reconciler.daemon.metrics import MetricsServer, Snapshot
from reconciler.daemon.notify import Notifier
from reconciler.daemon.stall import blocker_key, world_key
from reconciler.daemon.watch import ContainerWatcher, ProcessWatcher, StateWatcher
from reconciler.engine import backups as engine_backups
from reconciler.engine import events, records, status
from reconciler.engine.apply import apply
from reconciler.engine.context import (
    StackContext,
    read_state_bytes,
    remember_valid_spec,
    state_file_digest,
    write_override,
)
from reconciler.engine.revision import committed_state, differs_from_commit, state_revision
from reconciler.engine.wal import WalSupervisor
from reconciler.errors import LockHeld, PermanentError, ReconcilerError, SpecInvalid
from reconciler.plan.observed import ObservedState
from reconciler.plan.planner import plan
from reconciler.plan.schedule import backup_schedule, ram_headroom, set_to_verify
from reconciler.spec.loader import MAX_STATE_BYTES, parse_state_bytes
from reconciler.spec.model import StateSpec
from reconciler.system import clock, fs

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FINAL_BACKUP_FAILED = 1
EXIT_SHUTDOWN_TIMEOUT = 3


class Backoff:
    """Consecutive failures → the next delay (tenacity's exponential wait with jitter), reset on success."""

    def __init__(self, cap_seconds: float) -> None:
        self.failures = 0
        self._wait = tenacity.wait_exponential_jitter(multiplier=2, max=cap_seconds, jitter=2)
        self._state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})

    def failed(self) -> float:
        self.failures += 1
        self._state.attempt_number = self.failures
        return float(self._wait(self._state))

    def succeeded(self) -> bool:
        """Reset; True when this ends a run of failures (a recovery worth telling)."""
        recovered = self.failures > 0
        self.failures = 0
        return recovered


class Daemon:
    def __init__(self, state_file: str, on_ready: Callable[[Daemon], None] | None = None) -> None:
        self.state_file = os.path.abspath(state_file)
        data, self.revision = self._read_desired()
        self.spec: StateSpec = self._parse(data, self.revision)  # must be valid to start at all
        remember_valid_spec(self.spec.state_path, data)
        self.spec_digest = hashlib.sha256(data).hexdigest()
        self.uncommitted_noted: str | None = None
        self.state_dir = self.spec.state_path
        self.on_ready = on_ready
        self.snapshot = Snapshot()
        self.notifier = Notifier(self.spec.daemon.webhook_env)
        self.metrics: MetricsServer | None = None
        self._wake = threading.Event()
        self._reasons: set[str] = set()
        self._reasons_lock = threading.Lock()
        self._stop = threading.Event()
        self._stop_signal: str | None = None
        self.reconcile_backoff = Backoff(self.spec.daemon.backoff_max.total_seconds())
        self.backup_backoff = Backoff(self.spec.daemon.backoff_max.total_seconds())
        self.offsite_backoff = Backoff(self.spec.daemon.backoff_max.total_seconds())
        self.next_retry: float | None = None
        self.next_backup_try = 0.0
        self.next_offsite: float = 0.0
        self.offsite_pending = True  # check Drive once at start: uploads may have failed while we were down
        self.stalled_on: tuple[Any, ...] | None = None  # the world key of a failed attempt, or None
        self.blocked_on: tuple[str, ...] | None = None  # the blockers of a blocked plan, figures blanked
        self.observed: ObservedState | None = None  # the newest observation (what /metrics reports)
        self.observed_stale = True  # the engine acted since: observe again before publishing
        self.processes = ProcessWatcher(self._process_exited)
        self.containers = ContainerWatcher(self._process_exited)
        self.wal = WalSupervisor()  # continuous WAL (engine/wal.py), while backup.continuous is on
        self.last_error: str | None = None
        self.invalid_digest: str | None = None
        self.passes = 0
        self.errors = 0
        self.last_pass_end = time.monotonic()
        self.pass_started: float | None = None
        self.started_at = status.now_iso()
        self.next_backup_at: datetime | None = None
        self._pending_conditions: status.Conditions = {}
        self._pending_fields: dict[str, Any] = {}
        self.headroom_ok = True

    # ---- wake-ups -------------------------------------------------------------------------------

    def wake(self, reason: str) -> None:
        with self._reasons_lock:
            self._reasons.add(reason)
        self._wake.set()

    def request_stop(self, reason: str) -> None:
        if self._stop_signal is None:
            self._stop_signal = reason
            log.info("%s: finishing the current pass, then shutting down", reason)
        self._stop.set()
        self._wake.set()

    def _take_reasons(self) -> set[str]:
        with self._reasons_lock:
            reasons, self._reasons = self._reasons, set()
        self._wake.clear()
        return reasons

    def _sleep(self) -> set[str]:
        resync = self.spec.daemon.resync.total_seconds()
        now = time.monotonic()
        deadlines = {"resync": now + resync * (1 + random.uniform(0, 0.1))}
        if self.next_retry is not None:
            deadlines["retry after failure"] = self.next_retry
        if self.next_backup_at is not None:
            seconds = (self.next_backup_at - datetime.now(UTC)).total_seconds()
            deadlines["backup due"] = max(now + seconds, self.next_backup_try)
        if self.offsite_pending and self.spec.backup.stores.gdrive.enabled:
            deadlines["offsite retry"] = self.next_offsite
        # A deadline already past means work that could not run (a backup due while a service is down):
        # it waits for the resync instead of spinning.
        deadlines = {k: v for k, v in deadlines.items() if v > now or k == "resync"}
        reason, deadline = min(deadlines.items(), key=lambda item: item[1])
        self.snapshot.set(
            "reconciler_next_wakeup_seconds", max(deadline - now, 0), "Seconds until the next pass."
        )
        if self._wake.wait(timeout=max(deadline - time.monotonic(), 0)):
            return self._take_reasons()
        return {reason} | self._take_reasons()

    # ---- life cycle -----------------------------------------------------------------------------

    def run(self) -> int:
        lock = os.path.join(self.state_dir, "daemon.lock")
        try:
            with fs.exclusive_lock(lock, f"stack {self.spec.stack}"):
                return self._run_locked()
        except LockHeld as exc:
            holder = str(exc).split("(pid ", 1)[-1].split(")", 1)[0]
            raise LockHeld(
                f"a reconciler daemon (pid {holder}) already runs for stack {self.spec.stack} "
                f"(lock {lock}); one daemon per stack. Stop it first, or use `reconciler status`"
            ) from None

    def _run_locked(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        watcher = StateWatcher(self.state_file, self.wake)
        watcher.start()
        if self.spec.runtime == "docker":
            self.containers.start()
        else:
            self.processes.start()
        port = self.spec.daemon.metrics_port
        if port is not None:
            self.metrics = MetricsServer(self.snapshot, port, self._liveness)
            self.metrics.start()
        events.emit(
            self.state_dir,
            "Normal",
            "Started",
            f"daemon started (pid {os.getpid()}) for stack {self.spec.stack}"
            + (f"; metrics on http://127.0.0.1:{self.metrics.port}/metrics" if self.metrics else ""),
        )
        self.snapshot.set("reconciler_spec_valid", 1, "1 when state.yaml is valid and adopted.")
        self._write_daemon_status(running=True)
        if self.on_ready:
            self.on_ready(self)
        reasons = {"startup"}
        try:
            while not self._stop.is_set():
                self._pass(reasons)
                if self._stop.is_set():
                    break
                reasons = self._sleep()
            return self._shutdown()
        finally:
            watcher.stop()
            self.wal.stop()
            self.processes.stop()
            self.containers.stop()
            if self.metrics:
                self.metrics.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._stop_signal is None:
            timeout = self.spec.daemon.shutdown_timeout.total_seconds()
            watchdog = threading.Timer(timeout, self._shutdown_timed_out, args=(timeout,))
            watchdog.daemon = True
            watchdog.start()
        self.request_stop(f"received {name}")

    def _shutdown_timed_out(self, timeout: float) -> None:
        message = (
            f"graceful shutdown took longer than daemon.shutdown_timeout ({timeout:.0f} s); exiting now. "
            "Any interrupted operation is journaled and resumes at the next start"
        )
        log.error(message)
        events.emit(self.state_dir, "Warning", "ShutdownTimeout", message)
        os._exit(EXIT_SHUTDOWN_TIMEOUT)

    def _shutdown(self) -> int:
        code = EXIT_OK
        ctx = self._context()
        if ctx is not None and ctx.spec.mode == "ram" and ctx.spec.daemon.final_backup:
            code = self._final_backup(ctx)
        events.emit(
            self.state_dir, "Normal", "Stopped", f"daemon stopped ({self._stop_signal or 'asked to stop'})"
        )
        self._write_daemon_status(running=False)
        return code

    def _final_backup(self, ctx: StackContext) -> int:
        """The RAM-mode backup at exit, taken only once the apps' writers are drained.

        A backup taken while the apps still write misses every write acknowledged after its snapshot,
        and at a host shutdown those are lost with the RAM. The apps (``drain.containers``) are
        stopped first and left stopped: after a reboot they must not write into the stack before the
        daemon has restored it; the next daemon start resumes them once the stack is in sync. If they
        cannot be stopped, no backup is taken (it would not hold the last writes) and an event says so.
        """
        try:
            drained = self._drain_apps(ctx)
        except ReconcilerError as exc:
            message = f"final backup skipped: the apps could not be drained first ({exc})"
            events.emit(self.state_dir, "Warning", "FinalBackupSkipped", message)
            self.notifier.fail(message)
            return EXIT_FINAL_BACKUP_FAILED
        observed = ctx.observe()
        if not all(s.running for s in observed.services.values()):
            events.emit(
                self.state_dir,
                "Warning",
                "FinalBackupSkipped",
                "final backup skipped: not every service is running",
            )
            return EXIT_OK
        try:
            document = engine_backups.take_backup(ctx, "shutdown")
        except ReconcilerError as exc:
            events.emit(self.state_dir, "Warning", "FinalBackupFailed", f"final backup failed: {exc}")
            self.notifier.fail(f"final backup failed: {exc}")
            return EXIT_FINAL_BACKUP_FAILED
        after = f" after draining {', '.join(drained)}" if drained else ""
        events.emit(
            self.state_dir,
            "Normal",
            "FinalBackup",
            f"final backup set {document['set']} taken{after} before exit",
        )
        return EXIT_OK

    @property
    def _drained_path(self) -> str:
        return os.path.join(self.state_dir, "shutdown-drained.json")

    def _drain_apps(self, ctx: StackContext) -> list[str]:
        names = list(ctx.spec.drain.containers)
        if not names:
            return []
        stopped = list(ctx.runtime.stop_containers(names))
        recorded = fs.read_json(self._drained_path)
        earlier = list(recorded.get("containers", [])) if isinstance(recorded, dict) else []
        fs.atomic_write_json(
            self._drained_path, {"containers": [*earlier, *(n for n in stopped if n not in earlier)]}
        )
        events.emit(
            self.state_dir, "Normal", "AppsDrained", f"stopped {', '.join(names)} before the final backup"
        )
        return names

    def _resume_apps(self, ctx: StackContext) -> None:
        """Start the apps the last shutdown drained, now that the stack is in sync again."""
        recorded = fs.read_json(self._drained_path)
        names = list(recorded.get("containers", [])) if isinstance(recorded, dict) else []
        if names:
            try:
                ctx.runtime.start_containers(names)
                events.emit(self.state_dir, "Normal", "AppsResumed", f"started {', '.join(names)} again")
            except Exception as exc:  # an engine error must not stop the loop; it is reported
                message = f"could not start {', '.join(names)} again after the last shutdown: {exc}; start them by hand"
                log.warning(message)
                events.emit(self.state_dir, "Warning", "AppsNotResumed", message)
        if recorded is not None:
            os.unlink(self._drained_path)

    # ---- one pass -------------------------------------------------------------------------------

    def _context(self) -> StackContext | None:
        try:
            ctx = StackContext.build(self.spec, self.state_file)
            ctx.revision = self.revision
            return ctx
        except ReconcilerError as exc:
            self._blocked(exc)
            return None

    def _read_desired(self) -> tuple[bytes, str | None]:
        """The desired state to follow: state.yaml as committed at HEAD in a git repository (GitOps:
        commit, not save), else the file; with the commit it came from."""
        committed = committed_state(self.state_file, MAX_STATE_BYTES)
        if committed is not None:
            return committed.data, committed.commit
        return read_state_bytes(self.state_file), None

    def _parse(self, data: bytes, revision: str | None = None) -> StateSpec:
        source = self.state_file + (f" (commit {revision[:12]})" if revision else "")
        return parse_state_bytes(data, source=source, base_dir=os.path.dirname(self.state_file))

    def _note_uncommitted(self) -> None:
        """One event per distinct uncommitted edit: saved but not committed is not applied."""
        head = differs_from_commit(self.state_file) if self.revision else None
        marker = f"{head}:{state_file_digest(self.state_file)}" if head else None
        if marker and marker != self.uncommitted_noted:
            events.emit(
                self.state_dir,
                "Normal",
                "UncommittedEdit",
                f"state.yaml has edits that are not committed; the daemon follows the commit {head} "
                "until they are (GitOps: commit, not save)",
            )
        self.uncommitted_noted = marker

    def _reload(self) -> None:
        """Adopt a changed state.yaml if it is valid; otherwise report it and keep the last valid spec."""
        try:
            data, revision = self._read_desired()
        except Exception:  # unreadable now (a hostile replacement): the digest below reports it
            data, revision = b"", None
        digest = hashlib.sha256(data).hexdigest() if data else ""
        self._note_uncommitted()
        if digest == self.spec_digest and self.invalid_digest is not None:
            self.invalid_digest = None
            events.emit(
                self.state_dir, "Normal", "SpecValid", "state.yaml is back to the adopted, valid spec"
            )
            self._note({"SpecValid": (True, "Valid", "state.yaml is valid and adopted")})
            self.snapshot.set("reconciler_spec_valid", 1, "1 when state.yaml is valid and adopted.")
        if digest in (self.spec_digest, self.invalid_digest):
            return
        try:
            if not data:
                read_state_bytes(self.state_file)  # raises with the reason the file cannot be read
            spec = self._parse(data, revision)
            if spec.stack != self.spec.stack or spec.state_path != self.spec.state_path:
                raise PermanentError(
                    "stack and state_dir cannot change while the daemon runs (its lock and status live "
                    "there); restart the daemon to adopt them"
                )
        except Exception as exc:  # any failure, even a loader bug or MemoryError: report, keep the last spec
            self.invalid_digest = digest
            self.snapshot.set("reconciler_spec_valid", 0, "1 when state.yaml is valid and adopted.")
            problems = [str(p) for p in exc.problems] if isinstance(exc, SpecInvalid) else []
            cause = (
                str(exc) if isinstance(exc, ReconcilerError) else f"loading it failed ({type(exc).__name__})"
            )
            message = f"state.yaml was not adopted: {cause}" + (
                ": " + "; ".join(problems) if problems else ""
            )
            message += "; the daemon keeps the last valid spec"
            log.error(message)
            events.emit(self.state_dir, "Warning", "SpecInvalid", message)
            self._note({"SpecValid": (False, "Invalid", message)})
            self._flush()
            self.notifier.fail(message)
            return
        self.spec, self.spec_digest, self.invalid_digest, self.revision = spec, digest, None, revision
        remember_valid_spec(self.state_dir, data)
        self.stalled_on = self.blocked_on = None  # a new spec is a new chance
        self.snapshot.set("reconciler_spec_valid", 1, "1 when state.yaml is valid and adopted.")
        events.emit(
            self.state_dir,
            "Normal",
            "SpecChanged",
            f"adopted state.yaml as committed in {revision[:12]}"
            if revision
            else "adopted the new state.yaml",
        )
        self._note({"SpecValid": (True, "Valid", "state.yaml is valid and adopted")})

    @property
    def _status_path(self) -> str:
        return os.path.join(self.state_dir, "status.json")

    def _pass(self, reasons: set[str]) -> None:
        self.passes += 1
        self.pass_started = time.monotonic()
        self.snapshot.add("reconciler_reconcile_total", 1, "Reconcile passes run.")
        log.debug("pass %d (%s)", self.passes, ", ".join(sorted(reasons)))
        ctx: StackContext | None = None
        try:
            self._reload()
            ctx = self._context()
            if ctx is None:
                return
            if self._converge(ctx, reasons):
                ctx = self._context() or ctx
                self._resume_apps(ctx)
                self._upkeep(ctx)
        finally:
            if ctx is not None and self.observed_stale:
                self._observe(ctx, quiet=True)
            self._arm_watcher()
            self.pass_started = None
            self.last_pass_end = time.monotonic()
            self._write_daemon_status(running=True)

    # ---- observation: the newest one is what the daemon reports --------------------------------

    def _observe(self, ctx: StackContext, quiet: bool = False) -> ObservedState | None:
        try:
            observed = ctx.observe()
        except ReconcilerError as exc:
            if not quiet:
                raise
            log.warning("could not observe the stack: %s", exc)
            return None
        self.observed, self.observed_stale = observed, False
        wanted = set(ctx.spec.services.configured())
        for name, service in observed.services.items():
            if name in wanted:
                self._service_up(name, service.running)
        return observed

    def _service_up(self, name: str, up: bool) -> None:
        self.snapshot.set_labelled(
            "reconciler_service_up",
            {"service": name},
            1 if up else 0,
            "1 while the service state.yaml wants is running (from the newest observation).",
            only=False,
        )

    def _arm_watcher(self) -> None:
        observed = self.observed
        if observed is not None:
            self.processes.arm({n: s.pid for n, s in observed.services.items() if s.running and s.pid})
            self.containers.arm({n: s.container for n, s in observed.services.items() if s.container})

    def _process_exited(self, name: str, what: str) -> None:
        """From the watcher's thread: report the death at once and wake the loop to heal it."""
        self._service_up(name, False)
        ours = self.pass_started is not None  # our own steps stop services (a switch, a restore)
        events.emit(
            self.state_dir,
            "Normal" if ours else "Warning",
            "ProcessExited",
            f"{name} ({what}) exited" + ("" if ours else "; converging now"),
        )
        self.wake(f"{name} exited")

    def _converge(self, ctx: StackContext, reasons: set[str]) -> bool:
        """Apply when the plan is not empty; True when the stack is in sync afterwards."""
        attempted = False
        try:
            observed = self._observe(ctx)
            assert observed is not None
            key = (self.spec_digest, ctx.spec.mode, world_key(observed))
            if self.stalled_on is not None:
                if self.stalled_on == key:
                    return False
                log.info("state.yaml or the observed world changed since the daemon stalled; trying again")
            the_plan = plan(ctx.spec, observed, datetime.now(UTC))
            if not the_plan.in_sync:
                if the_plan.blockers:
                    raise PermanentError("; ".join(the_plan.blockers))
                steps = "; ".join(a.describe() for a in the_plan.actions)
                attempted = True
                self._apply(ctx, f"{steps} (woken by: {', '.join(sorted(reasons))})")
            else:
                self._note(
                    {
                        "Ready": (
                            True,
                            "InSync",
                            f"stack in {ctx.spec.mode} mode with every service running",
                        ),
                        "Stalled": (False, "Converged", "the stack matches state.yaml"),
                    },
                    lastAppliedRevision=self.revision or state_revision(self.state_file),
                )
        except PermanentError as exc:
            if attempted:
                after = self._observe(ctx, quiet=True)  # what the failed attempt left is the baseline
                self._stalled((self.spec_digest, ctx.spec.mode, world_key(after) if after else None), exc)
            else:
                self._blocked(exc)
            return False
        except ReconcilerError as exc:
            self._transient(exc)
            return False
        finally:
            self._note({"Reconciling": (False, "Idle", "no reconcile in progress")})
        self.stalled_on = self.blocked_on = None
        self.next_retry = None
        if self.reconcile_backoff.succeeded():
            events.emit(self.state_dir, "Normal", "Recovered", "reconcile succeeded again")
            self.notifier.success("recovered")
        return True

    def _apply(self, ctx: StackContext, why: str) -> None:
        self.observed_stale = True
        events.emit(self.state_dir, "Normal", "Reconciling", why)
        self._note({"Reconciling": (True, "Applying", why)})
        self._flush()
        result = apply(ctx, progress=self._step_event)
        self._observe(ctx, quiet=True)  # what is reported from now on is the converged stack
        message = f"applied {len(result.executed)} step(s) in {result.seconds:.1f} s"
        events.emit(self.state_dir, "Normal", "Converged", message)

    def _step_event(self, index: int, total: int, action: Any) -> None:
        events.emit(self.state_dir, "Normal", "Step", f"step {index}/{total}: {action.describe()}")

    def _stalled(self, signature: tuple[Any, ...], exc: ReconcilerError) -> None:
        """An attempt failed for good: report it (every time) and wait for state.yaml or the world."""
        self.stalled_on = signature
        self.blocked_on = None
        message = f"{exc}. The daemon stops retrying until state.yaml or the stack changes"
        self._failed(exc, message, "Stalled")
        self._note({"Stalled": (True, type(exc).__name__, str(exc)), "Ready": (False, "Stalled", str(exc))})
        log.error("stalled: %s", message)
        events.emit(self.state_dir, "Warning", "Stalled", message)
        self.notifier.fail(message)

    def _blocked(self, exc: ReconcilerError) -> None:
        """The plan refuses to act (nothing attempted): re-planned every pass, reported when it changes."""
        key = blocker_key(str(exc).split("; "))
        new = key != self.blocked_on
        self.blocked_on = key
        self.next_retry = None
        message = f"{exc}. The daemon stops retrying until state.yaml or the stack changes"
        self._note({"Stalled": (True, type(exc).__name__, str(exc)), "Ready": (False, "Stalled", str(exc))})
        if new:
            self._failed(exc, message, "Stalled")
            log.error("stalled: %s", message)
            events.emit(self.state_dir, "Warning", "Stalled", message)
            self.notifier.fail(message)

    def _failed(self, exc: ReconcilerError, message: str, reason: str) -> None:
        self.errors += 1
        self.snapshot.add("reconciler_reconcile_errors_total", 1, "Reconcile passes that failed.")
        self.snapshot.set(
            "reconciler_last_error_timestamp_seconds", time.time(), "When the last error happened."
        )
        self.snapshot.set_labelled(
            "reconciler_last_error",
            {"reason": reason, "error": type(exc).__name__},
            1,
            "The last error's kind.",
        )
        self.last_error = message

    def _transient(self, exc: ReconcilerError) -> None:
        delay = self.reconcile_backoff.failed()
        self.next_retry = time.monotonic() + delay
        message = f"{exc}; retrying in {delay:.0f} s (attempt {self.reconcile_backoff.failures})"
        self._failed(exc, message, "ReconcileFailed")
        log.warning("reconcile failed: %s", message)
        events.emit(self.state_dir, "Warning", "ReconcileFailed", message)
        self._note({"Ready": (False, "ReconcileFailed", str(exc))})
        if self.reconcile_backoff.failures == 1:
            self.notifier.fail(str(exc))

    # ---- upkeep: what time drives ---------------------------------------------------------------

    @property
    def stalled(self) -> bool:
        return self.stalled_on is not None or self.blocked_on is not None

    def _upkeep(self, ctx: StackContext) -> None:
        # The pass's own observation when nothing acted since (one observation per idle pass).
        observed = self.observed if not self.observed_stale and self.observed else self._observe(ctx)
        assert observed is not None
        down = [n for n in ctx.spec.services.configured() if not observed.services[n].running]
        if down:  # died after the apply looked, before the watcher was armed: converge again at once
            message = f"{' and '.join(down)} stopped running during the pass; converging again"
            events.emit(self.state_dir, "Warning", "ServiceDown", message)
            self.wake(message)
            return
        self.wal.follow(ctx, observed)
        if self._pressure(ctx, observed):
            return  # the fallback switch changed the stack; the next pass observes it afresh
        took = self._backup_if_due(ctx, observed)
        self._verify_newest(ctx)
        self._offsite(ctx, after_backup=took)
        self._publish(ctx)

    def _pressure(self, ctx: StackContext, observed: ObservedState) -> bool:
        headroom = ram_headroom(ctx.spec, observed)
        self.snapshot.set("reconciler_ram_headroom_bytes", headroom.available, "Memory left for RAM mode.")
        was_ok = self.headroom_ok
        self.headroom_ok = headroom.ok
        if headroom.ok:
            self._note({"RamHeadroom": (True, "Sufficient", headroom.message)})
            if not was_ok:
                events.emit(self.state_dir, "Normal", "RamHeadroomRecovered", headroom.message)
            return False
        if ctx.spec.ram.on_pressure == "fallback-to-disk":
            message = f"{headroom.message}: switching to disk mode (ram.on_pressure: fallback-to-disk)"
            events.emit(self.state_dir, "Warning", "RamPressureFallback", message)
            self._note({"RamHeadroom": (False, "FellBackToDisk", message)})
            self.notifier.fail(message)
            write_override(ctx.state_dir, self.state_file, "disk", headroom.message, status.now_iso())
            fallback = StackContext.build(self.spec, self.state_file)
            try:
                self._apply(fallback, "switching to disk mode because of RAM pressure")
            except ReconcilerError as exc:
                self._transient(exc)
            finally:
                self._note({"Reconciling": (False, "Idle", "no reconcile in progress")})
            return True
        self._note({"RamHeadroom": (False, "Low", headroom.message)})
        if was_ok:
            log.warning("RAM pressure: %s", headroom.message)
            events.emit(self.state_dir, "Warning", "RamPressure", headroom.message)
        return False

    def _backup_if_due(self, ctx: StackContext, observed: ObservedState) -> bool:
        now = clock.now()
        schedule = backup_schedule(
            ctx.spec, observed.backups.sets, now, observed.backups.authenticity_in("local")
        )
        self.next_backup_at = schedule.next_at
        if not schedule.due or time.monotonic() < self.next_backup_try:
            self._backup_conditions(ctx, schedule.fresh, schedule.reason)
            return False
        if not all(s.running for s in observed.services.values()):
            return False
        log.info("backup due: %s", schedule.reason)
        self.notifier.start()
        try:
            document = engine_backups.take_backup(ctx, "scheduled")
        except ReconcilerError as exc:
            delay = self.backup_backoff.failed()
            self.next_backup_try = time.monotonic() + delay
            message = f"scheduled backup failed: {exc}; retrying in {delay:.0f} s"
            events.emit(self.state_dir, "Warning", "BackupFailed", message)
            self.snapshot.add("reconciler_backup_failures_total", 1, "Scheduled backups that failed.")
            self._backup_conditions(ctx, schedule.fresh, message)
            self.notifier.fail(message)
            return False
        self.backup_backoff.succeeded()
        self.next_backup_try = 0.0
        size = sum(int(m["size"]) for m in document["members"])
        events.emit(
            self.state_dir,
            "Normal",
            "BackupTaken",
            f"backup set {document['set']} ({size} bytes, {document['seconds']:.1f} s): {schedule.reason}",
        )
        self.snapshot.add("reconciler_backups_total", 1, "Scheduled backups taken.")
        self.notifier.success(f"backup set {document['set']}")
        self.next_backup_at = datetime.now(UTC) + ctx.spec.backup.cadence
        self._backup_conditions(ctx, True, f"newest set {document['set']} was just taken")
        return True

    def _backup_conditions(self, ctx: StackContext, fresh: bool, message: str) -> None:
        self._note(
            {"BackupFresh": (fresh, "Fresh" if fresh else "Stale", message)},
            nextScheduledBackup=self.next_backup_at.isoformat(timespec="seconds").replace("+00:00", "Z")
            if self.next_backup_at
            else None,
        )

    def _verify_newest(self, ctx: StackContext) -> None:
        tried = frozenset(records.read(ctx).verifications)
        sets = tuple(listing.backup_set for listing in engine_backups.list_sets(ctx))
        target = set_to_verify(ctx.spec, sets, tried, engine_backups.vouch_local(ctx, list(sets)))
        if target is None:
            return
        result = engine_backups.verify(ctx, target)
        if result.get("ok"):
            events.emit(
                self.state_dir,
                "Normal",
                "SetVerified",
                f"backup set {target} verified ({result.get('seconds')} s)",
            )
            try:
                pruned = engine_backups.prune(ctx)
            except ReconcilerError as exc:
                events.emit(self.state_dir, "Warning", "PruneFailed", f"retention could not run: {exc}")
                return
            if pruned:
                events.emit(
                    self.state_dir,
                    "Normal",
                    "Pruned",
                    f"retention deleted {len(pruned)} set(s): {', '.join(pruned)}",
                )
        else:
            message = f"backup set {target} failed verification: {result.get('reason')}"
            events.emit(self.state_dir, "Warning", "SetVerificationFailed", message)
            self.notifier.fail(message)

    def _offsite(self, ctx: StackContext, after_backup: bool) -> None:
        gdrive = ctx.spec.backup.stores.gdrive
        if not gdrive.enabled:
            return
        cadence = ctx.spec.backup.cadence.total_seconds()
        if after_backup:
            self.offsite_pending = True
            self.next_offsite = 0.0
        if not self.offsite_pending or time.monotonic() < self.next_offsite:
            return
        from reconciler.engine import offsite

        try:
            result = offsite.sync(ctx, attempts=3, deadline=60)
        except ReconcilerError as exc:
            delay = self.offsite_backoff.failed()
            self.next_offsite = time.monotonic() + delay
            message = f"Drive sync failed: {exc}; retrying in {delay:.0f} s (sets stay in the local store)"
            events.emit(self.state_dir, "Warning", "OffsiteSyncFailed", message)
            self._note({"OffsiteInSync": (False, "SyncFailed", message)})
            if self.offsite_backoff.failures == 1:
                self.notifier.fail(message)
            return
        if self.offsite_backoff.succeeded():
            self.notifier.success("Drive sync recovered")
        uploaded = list(getattr(result, "uploaded", []))
        if uploaded:
            events.emit(
                self.state_dir,
                "Normal",
                "OffsiteSynced",
                f"uploaded {len(uploaded)} set(s) to Drive: {', '.join(uploaded)}",
            )
        self._note({"OffsiteInSync": (True, "Synced", "every local set is on Drive")})
        # Check again after a cadence even without a new backup: a set deleted on Drive is re-uploaded.
        self.offsite_pending = True
        self.next_offsite = time.monotonic() + cadence

    def _publish(self, ctx: StackContext) -> None:
        last = records.read(ctx).last_success
        newest = last.get("set")
        if newest:
            from reconciler.plan.backupsets import parse_set_name

            parsed = parse_set_name(str(newest))
            if parsed:  # the age is computed at every scrape from this timestamp
                self.snapshot.set_age(
                    "reconciler_backup_age_seconds", parsed[1].timestamp(), "Age of the newest backup set."
                )
            self.snapshot.set(
                "reconciler_last_backup_size_bytes", last.get("size"), "Size of the last backup set."
            )
            self.snapshot.set(
                "reconciler_last_backup_duration_seconds", last.get("seconds"), "Duration of the last backup."
            )
        if self.next_backup_at:
            self.snapshot.set(
                "reconciler_next_backup_timestamp_seconds",
                self.next_backup_at.timestamp(),
                "When the next backup is due.",
            )

    def _write_daemon_status(self, running: bool) -> None:
        spec = self._effective_mode()
        self.snapshot.set("reconciler_up", 1 if running else 0, "1 while the daemon runs.")
        self.snapshot.set("reconciler_stalled", 1 if self.stalled else 0, "1 while the daemon is Stalled.")
        self.snapshot.set_labelled(
            "reconciler_mode",
            {"mode": spec, "runtime": self.spec.runtime, "stack": self.spec.stack},
            1,
            "Current mode.",
        )
        self._note(
            {},
            daemon={
                "running": running,
                "pid": os.getpid(),
                "started": self.started_at,
                "passes": self.passes,
                "errors": self.errors,
                "lastPass": status.now_iso(),
                "stalled": self.stalled,
            },
            mode=spec,
        )
        self._flush()

    def _note(self, conditions: status.Conditions, **fields: Any) -> None:
        """Buffer status changes; one atomic write per pass (the state dir may be on an SD card)."""
        self._pending_conditions.update(conditions)
        self._pending_fields.update(fields)

    def _flush(self) -> None:
        if self._pending_conditions or self._pending_fields:
            status.update(self._status_path, self._pending_conditions, **self._pending_fields)
        self._pending_conditions, self._pending_fields = {}, {}

    def _effective_mode(self) -> str:
        from reconciler.engine.context import read_override

        override = read_override(self.state_dir, self.state_file)
        return str(override["mode"]) if override else self.spec.mode

    def _liveness(self) -> tuple[bool, str]:
        if self.stalled:
            return False, "stalled: see `reconciler status`" + (
                f" ({self.last_error})" if self.last_error else ""
            )
        down = sorted(
            dict(labels)["service"]
            for labels, up in self.snapshot.labelled_values("reconciler_service_up").items()
            if not up and dict(labels)["service"] in self.spec.services.configured()
        )
        if down:
            return (
                False,
                f"{' and '.join(down)} down (state.yaml wants {'them' if len(down) > 1 else 'it'} running)",
            )
        resync = self.spec.daemon.resync.total_seconds()
        started = self.pass_started
        if started is not None:
            limit = max(3600.0, 3 * resync)
            busy = time.monotonic() - started
            return (busy < limit, f"pass in progress for {busy:.0f} s")
        idle = time.monotonic() - self.last_pass_end
        return (idle < 3 * resync + 5, f"last pass finished {idle:.0f} s ago")
