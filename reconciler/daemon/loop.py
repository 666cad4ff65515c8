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
- The loop is the scheduler; what time drives is in ``daemon/tasks`` (one object per upkeep task,
  each owning its schedule and backoff): after a pass in sync the loop runs them in order, and it
  sleeps until the earliest of the resync, the reconcile retry and the tasks' wake-ups.
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
from types import FrameType
from typing import Any

from reconciler.daemon import shutdown
from reconciler.daemon.failures import FailureReporter
from reconciler.daemon.hostgate import back_for_this_host, idle_not_for_host
from reconciler.daemon.metrics import MetricsServer, Snapshot
from reconciler.daemon.notify import Notifier
from reconciler.daemon.stall import blocker_key, world_key
from reconciler.daemon.tasks.backup import ScheduledBackup
from reconciler.daemon.tasks.base import Backoff, Upkeep, UpkeepTask
from reconciler.daemon.tasks.offsite import OffsiteSync
from reconciler.daemon.tasks.pressure import RamPressure
from reconciler.daemon.tasks.publish import BackupMetrics
from reconciler.daemon.tasks.redissnap import RedisSnapshots
from reconciler.daemon.tasks.services import ServicesRunning
from reconciler.daemon.tasks.verify import VerifyNewest
from reconciler.daemon.tasks.wal import ContinuousWal
from reconciler.daemon.watch import ContainerWatcher, ProcessWatcher, StateWatcher
from reconciler.engine import events, status
from reconciler.engine.apply import apply, plan_observed
from reconciler.engine.context import (
    StackContext,
    read_state_bytes,
    remember_valid_spec,
    state_file_digest,
)
from reconciler.engine.revision import committed_state, differs_from_commit, state_revision
from reconciler.errors import LockHeld, PermanentError, PlanBlocked, ReconcilerError, SpecInvalid
from reconciler.plan.failures import FailureCode, Operation, failure_code
from reconciler.plan.observed import ObservedState
from reconciler.spec.loader import MAX_STATE_BYTES, parse_state_bytes
from reconciler.spec.model import StateSpec
from reconciler.system import fs

log = logging.getLogger(__name__)

EXIT_SHUTDOWN_TIMEOUT = 3


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
        self.failures = FailureReporter(self.state_dir, self.snapshot, self.notifier)
        self.metrics: MetricsServer | None = None
        self._wake = threading.Event()
        self._reasons: set[str] = set()
        self._reasons_lock = threading.Lock()
        self._stop = threading.Event()
        self._stop_signal: str | None = None
        self._final_backup_running = False  # what a shutdown timeout interrupted (its failure code)
        backoff_max = self.spec.daemon.backoff_max.total_seconds()
        self.reconcile_backoff = Backoff(backoff_max)
        self.next_retry: float | None = None
        # Upkeep, in the order it runs after a pass in sync; each task owns its schedule and backoff.
        self.backup = ScheduledBackup(self, backoff_max)
        self.offsite = OffsiteSync(self, backoff_max)
        self.wal = ContinuousWal()  # pg_receivewal while backup.continuous is on (engine/wal.py)
        self.tasks: list[UpkeepTask] = [
            ServicesRunning(self),
            self.wal,
            RamPressure(self),
            self.backup,
            RedisSnapshots(self, backoff_max),  # Redis between sets (continuous protection)
            VerifyNewest(self),
            self.offsite,
            BackupMetrics(self, self.backup),
        ]
        self.stalled_on: tuple[Any, ...] | None = None  # the world key of a failed attempt, or None
        self.blocked_on: tuple[str, ...] | None = None  # the blockers of a blocked plan, figures blanked
        self.observed: ObservedState | None = None  # the newest observation (what /metrics reports)
        self.observed_stale = True  # the engine acted since: observe again before publishing
        self.processes = ProcessWatcher(self._process_exited)
        self.containers = ContainerWatcher(self._process_exited)
        self.last_error: str | None = None
        self.invalid_digest: str | None = None
        self.passes = 0
        self.errors = 0
        self.last_pass_end = time.monotonic()
        self.pass_started: float | None = None
        self.started_at = status.now_iso()
        self._pending_conditions: status.Conditions = {}
        self._pending_fields: dict[str, Any] = {}

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
        for task in self.tasks:
            wakeup = task.wakeup(now)
            if wakeup is not None:
                deadlines[wakeup[0]] = wakeup[1]
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
        # no webhook ping: it could hold the exit for its own timeout
        operation = Operation.BACKUP if self._final_backup_running else Operation.APPLY
        self.failures.report("ShutdownTimeout", message, operation=operation, notify=False)
        os._exit(EXIT_SHUTDOWN_TIMEOUT)

    def _shutdown(self) -> int:
        code = shutdown.EXIT_OK
        ctx = self._context()
        if ctx is not None and ctx.for_this_host and ctx.spec.mode == "ram" and ctx.spec.daemon.final_backup:
            self._final_backup_running = True
            code = shutdown.final_backup(self.state_dir, self.failures, ctx)
        events.emit(
            self.state_dir, "Normal", "Stopped", f"daemon stopped ({self._stop_signal or 'asked to stop'})"
        )
        self._write_daemon_status(running=False)
        return code

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
            self.note({"SpecValid": (True, "Valid", "state.yaml is valid and adopted")})
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
            self.note({"SpecValid": (False, "Invalid", message, FailureCode.SPEC_INVALID)})
            self._flush()
            self.failures.report("SpecInvalid", message, exc, code=FailureCode.SPEC_INVALID)
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
        self.note({"SpecValid": (True, "Valid", "state.yaml is valid and adopted")})

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
            if not ctx.for_this_host:  # hosts: idle cheaply, watching state.yaml only
                idle_not_for_host(self, ctx)
                ctx = None
                return
            back_for_this_host(self)
            if self._converge(ctx, reasons):
                ctx = self._context() or ctx
                shutdown.resume_apps(self.state_dir, ctx, self.failures)
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
            **({} if ours else {"code": FailureCode.SERVICE_DOWN.value}),
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
            # Behind the host conditions; without upkeep (the upkeep tasks keep those promises).
            the_plan = plan_observed(ctx, observed, upkeep=False)
            if not the_plan.in_sync:
                if the_plan.blockers:
                    raise PlanBlocked(list(the_plan.blockers))
                steps = "; ".join(a.describe() for a in the_plan.actions)
                attempted = True
                self._apply(ctx, f"{steps} (woken by: {', '.join(sorted(reasons))})")
            else:
                self.note(
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
            self.note({"Reconciling": (False, "Idle", "no reconcile in progress")})
        self.stalled_on = self.blocked_on = None
        self.next_retry = None
        if self.reconcile_backoff.succeeded():
            events.emit(self.state_dir, "Normal", "Recovered", "reconcile succeeded again")
            self.notifier.success("recovered")
        return True

    def _apply(self, ctx: StackContext, why: str) -> None:
        self.observed_stale = True
        events.emit(self.state_dir, "Normal", "Reconciling", why)
        self.note({"Reconciling": (True, "Applying", why)})
        self._flush()
        result = apply(ctx, progress=self._step_event, upkeep=False)
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
        code = failure_code(exc)
        self.note(
            {
                "Stalled": (True, type(exc).__name__, str(exc), code),
                "Ready": (False, "Stalled", str(exc), code),
            }
        )
        log.error("stalled: %s", message)
        self.failures.report("Stalled", message, exc)

    def _blocked(self, exc: ReconcilerError) -> None:
        """The plan refuses to act (nothing attempted): re-planned every pass, reported when it changes."""
        key = blocker_key(str(exc).split("; "))
        new = key != self.blocked_on
        self.blocked_on = key
        self.next_retry = None
        message = f"{exc}. The daemon stops retrying until state.yaml or the stack changes"
        code = failure_code(exc)
        self.note(
            {
                "Stalled": (True, type(exc).__name__, str(exc), code),
                "Ready": (False, "Stalled", str(exc), code),
            }
        )
        if new:
            self._failed(exc, message, "Stalled")
            log.error("stalled: %s", message)
            self.failures.report("Stalled", message, exc)

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
        code = self.failures.report(
            "ReconcileFailed", message, exc, notify=self.reconcile_backoff.failures == 1
        )
        self.note({"Ready": (False, "ReconcileFailed", str(exc), code)})

    # ---- upkeep: what time drives ---------------------------------------------------------------

    @property
    def stalled(self) -> bool:
        return self.stalled_on is not None or self.blocked_on is not None

    def _upkeep(self, ctx: StackContext) -> None:
        """Run the upkeep tasks in order (``daemon/tasks``); one that changed the stack ends the upkeep."""
        # The pass's own observation when nothing acted since (one observation per idle pass).
        observed = self.observed if not self.observed_stale and self.observed else self._observe(ctx)
        assert observed is not None
        upkeep = Upkeep(ctx, observed)
        for task in self.tasks:
            task.run(upkeep)
            if upkeep.stop:
                return  # the next pass observes the stack afresh

    def apply_now(self, ctx: StackContext, why: str) -> None:
        """Converge at once from an upkeep task (the RAM-pressure fallback); a failure retries like a pass."""
        try:
            self._apply(ctx, why)
        except ReconcilerError as exc:
            self._transient(exc)
        finally:
            self.note({"Reconciling": (False, "Idle", "no reconcile in progress")})

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
        self.note(
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
            lastFailure=self.failures.last,
        )
        self._flush()

    def note(self, conditions: status.Conditions, **fields: Any) -> None:
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
