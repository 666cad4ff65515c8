"""The mode switch: drain → backup → fingerprint → stop → copy → start → verify → retire → resume → backup.

Design decisions:
- Journaled: every step is recorded before and after it runs (``engine/journal.py``). Each step has a
  read-only ``check`` ("already done?") and an idempotent ``do``; a resumed operation runs ``check``
  first, so a finished step is never redone blindly and a half-done one is redone from scratch.
- The old copy stays authoritative until ``verify`` passes: the copy goes to a temporary name and is
  renamed into place, and the old data is only retired after verification. Before that point any
  failure rolls back (services and apps back on the old mode, the new copy removed); after it, the
  operation only goes forward.
- Verification compares what matters to a user, not bytes: PostgreSQL per-table row counts and
  checksums of the application database, and Redis's own dataset digest (``DEBUG DIGEST``), taken
  with the apps drained right before the stop and again on the new data directories.
- Physical copy of the stopped data directories (seconds per GB). When the PostgreSQL major version of
  the data differs from the server binaries, the copy cannot be used: the new directory is
  initialised and filled from the pre-switch backup set instead (logical restore).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from reconciler.backup import keys
from reconciler.backup.create import identity_for_restore
from reconciler.backup.restore import load_and_check, restore_postgres
from reconciler.databases import postgres as pg
from reconciler.databases import redis as rd
from reconciler.databases.engine import engine_for, engine_mapped_files, engine_markers
from reconciler.engine import backups, drain, records
from reconciler.engine.context import StackContext
from reconciler.engine.journal import Journal
from reconciler.errors import PermanentError, ReconcilerError, coded
from reconciler.plan.actions import SwitchMode
from reconciler.plan.failures import FailureCode
from reconciler.runtimes.local import MARKER, holds_service_data, postgres_bindir, read_marker
from reconciler.system import failpoints, fs

log = logging.getLogger(__name__)

KIND = "mode switch"
Progress = Callable[[str], None]


def spec_hash(ctx: StackContext) -> str:
    return hashlib.sha256(ctx.spec.model_dump_json().encode()).hexdigest()[:16]


def start_switch(ctx: StackContext, action: SwitchMode, progress: Progress | None = None) -> None:
    if ctx.spec.drain.containers and ctx.spec.runtime == "local":
        raise PermanentError(
            "drain.containers needs the docker runtime (containers are drained through the Docker Engine API); "
            "with the local runtime leave drain.containers empty and stop your applications yourself"
        )
    journal = Journal.create(
        ctx.state_dir,
        KIND,
        action.from_mode,
        action.to_mode,
        spec_hash(ctx),
        action.step_names(),
        {**asdict(action), "private_port": drain.private_port()},
    )
    _drive(ctx, journal, progress)


def resume(ctx: StackContext, progress: Progress | None = None) -> None:
    journal = Journal.load(ctx.state_dir)
    if journal is None:
        return
    pending = journal.pending()
    where = pending[0] if pending else "finish"
    log.warning("resuming the interrupted %s %s at step %s", journal.doc["kind"], journal.id, where)
    _drive(ctx, journal, progress)


def _drive(ctx: StackContext, journal: Journal, progress: Progress | None) -> None:
    op = _Switch(ctx, journal)
    if not journal.past_point_of_no_return and op.source_lost() and op.check("copy") is None:
        # RAM emptied by a reboot before the new copy was complete: neither rollback nor the copy can
        # proceed. Abandon the switch; the planner then restores the newest set (the pre-switch one,
        # when it was taken) into the desired mode, exactly as after any reboot with empty RAM.
        op.remove_new_copies()
        reason = (
            "the data to move was lost (a reboot emptied RAM?) before its new copy was complete; "
            "the stack is restored from the newest backup set instead"
        )
        log.error("mode switch %s abandoned: %s", journal.id, reason)
        journal.finish("abandoned", error=reason)
        return
    if journal.past_point_of_no_return and "retire" in journal.pending() and op.target_lost():
        if op.source_lost():
            raise PermanentError(
                f"the mode switch {journal.id} passed verification, then both copies were lost: "
                "restore from the newest backup set (`reconciler apply --allow-empty` is NOT the answer)"
            )
        # The verified new copy is gone (RAM emptied by a reboot after `verify`, before the old copy was
        # retired). The old copy is now the only one and nothing has written to it since the fingerprint
        # (it is closed to clients): going forward means copying it again, never retiring it.
        log.warning("mode switch %s: the new copy was lost after verification; copying again", journal.id)
        op.remove_new_copies()
        journal.redo(["copy", "start", "verify"], past_point_of_no_return=False)
    started = time.monotonic()
    for name in journal.pending():
        if progress:
            progress(name)
        journal.start(name)
        try:
            failpoints.hit(f"switch.{name}.before")  # inside: an injected error fails the step
            evidence = op.check(name)
            if evidence is None:
                evidence = op.do(name)
        except (ReconcilerError, OSError) as exc:
            if journal.past_point_of_no_return:
                journal.set(last_error=str(exc))
                raise coded(
                    PermanentError(
                        f"the mode switch {journal.id} is past its point of no return and failed at step "
                        f"{name}: {exc}. The data is verified in its new place; fix the cause and run "
                        "`reconciler apply` to finish"
                    ),
                    FailureCode.SWITCH_ERROR,
                ) from None
            log.error("mode switch failed at step %s: %s; rolling back", name, exc)
            op.rollback()
            journal.finish("rolled-back", error=str(exc), failed_step=name)
            raise coded(
                PermanentError(
                    f"the mode switch failed at step {name} and was rolled back (the stack runs in "
                    f"{journal.doc['from']} mode as before): {exc}"
                ),
                FailureCode.SWITCH_ERROR,
            ) from None
        # The point of no return is recorded in the same atomic write as the step that passed it.
        journal.done(name, evidence, **({"past_point_of_no_return": True} if name == "verify" else {}))
        failpoints.hit(f"switch.{name}.after")
    journal.finish("done", seconds=round(time.monotonic() - started, 3))


class _Switch:
    def __init__(self, ctx: StackContext, journal: Journal) -> None:
        self.ctx = ctx
        self.journal = journal
        payload = journal.doc["payload"]
        self.from_mode: str = payload["from_mode"]
        self.to_mode: str = payload["to_mode"]
        self.services: list[str] = list(payload["services"])
        self.sources: list[str] = list(payload["sources"])
        self.targets: list[str] = list(payload["targets"])
        self.ports: list[int] = list(payload["ports"])
        self.keep_old_copy: bool = bool(payload["keep_old_copy"])
        self.data_bytes: int = int(payload["data_bytes"])
        # Redis listens here while closed to clients (journals from before it existed: a fresh one).
        self.private_port: int = int(payload.get("private_port") or drain.private_port())

    # -- dispatch ----------------------------------------------------------------------------

    def check(self, name: str) -> Any:
        """Evidence that the step is already done (read-only), or None."""
        checker = getattr(self, f"check_{name.replace('-', '_')}", None)
        return checker() if checker else None

    def do(self, name: str) -> Any:
        return getattr(self, f"do_{name.replace('-', '_')}")()

    def _tmp(self, target: str) -> str:
        return f"{target}.switching-{self.journal.id}"

    def _aside(self, target: str) -> str:
        return f"{target}.replaced-{self.journal.id}"

    # -- steps -------------------------------------------------------------------------------

    def do_preflight(self) -> Any:
        if self.to_mode == "ram":
            root = self.ctx.spec.ram_root
            os.makedirs(root, exist_ok=True)
            st = os.statvfs(root)
            free = st.f_bavail * st.f_frsize
            if self.data_bytes * 1.2 > free:
                raise PermanentError(
                    f"the tmpfs at {root} has {free} bytes free, the data needs {self.data_bytes}"
                )
        return {"data_bytes": self.data_bytes}

    def do_drain(self) -> Any:
        names = list(self.ctx.spec.drain.containers)
        stopped = (
            self.ctx.runtime.stop_containers(names) if names and self.ctx.spec.runtime == "docker" else []
        )
        # The containers are the polite part; closing the servers is what guarantees that nothing
        # writes between the fingerprint and the stop (engine/drain.py).
        earlier = list(self.journal.doc.get("drained_containers") or [])  # a drain resumed after a crash
        stopped = earlier + [name for name in stopped if name not in earlier]
        self.journal.set(drained_containers=stopped)
        terminated = self._close(self.sources, self.private_port)
        return {"containers": stopped, "terminated_clients": terminated}

    def check_backup(self) -> Any:
        evidence = self.journal.evidence("backup")
        return evidence if evidence and evidence.get("checked") else None

    def do_backup(self) -> Any:
        document = backups.take_backup_locked(self.ctx, "pre-switch", None)
        identity = identity_for_restore(self.ctx.spec)
        load_and_check(
            backups.local_store(self.ctx), document["set"], keys.mac_key(identity) if identity else None
        )
        return {"set": document["set"], "checked": True}

    def do_fingerprint(self) -> Any:
        return self._fingerprint(self.sources)

    def do_stop(self) -> Any:
        for name, source in zip(self.services, self.sources, strict=True):
            self.ctx.runtime.stop_service(name, source)
        return {"stopped": self.services}

    def do_precopy(self) -> Any:
        """The bulk of the copy, outside the write-downtime window; ``copy`` later moves only changes."""
        since = time.time_ns()
        started = time.monotonic()
        copied = 0
        for name, source, target in zip(self.services, self.sources, self.targets, strict=True):
            tmp = self._tmp(target)
            shutil.rmtree(tmp, ignore_errors=True)  # a pre-copy cut short by a crash starts over
            if name == "postgres" and not self._same_postgres_major(source):
                continue  # the logical path restores from the pre-switch set in `copy`
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            copied += fs.copy_tree(source, tmp)
            fs.sync_tree(tmp)
        return {"since_ns": since, "bytes": copied, "seconds": round(time.monotonic() - started, 3)}

    def check_copy(self) -> Any:
        for target in self.targets:
            marker = read_marker(target)
            if not marker or marker.get("operation") != self.journal.id:
                return None
        return self.journal.evidence("copy") or {"resumed": True}

    def do_copy(self) -> Any:
        started = time.monotonic()
        copied = 0
        since = int((self.journal.evidence("precopy") or {}).get("since_ns", 0))
        for name, source, target in zip(self.services, self.sources, self.targets, strict=True):
            tmp = self._tmp(target)
            if os.path.isdir(target) and fs.is_empty_dir(target):
                os.rmdir(target)
            if os.path.exists(target):
                marker = read_marker(target)
                if marker and marker.get("operation") == self.journal.id:
                    shutil.rmtree(target)  # our own copy from an interrupted run
                else:  # a stale safety copy from an earlier switch: set aside, removed at retire
                    shutil.rmtree(self._aside(target), ignore_errors=True)
                    os.rename(target, self._aside(target))
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            if name == "postgres" and not self._same_postgres_major(source):
                self._logical_copy(target)
                continue
            if os.path.isdir(tmp) and since:
                copied += fs.refresh_copy(source, tmp, since, engine_mapped_files(name))
            else:
                shutil.rmtree(tmp, ignore_errors=True)
                copied += fs.copy_tree(source, tmp)
            self._write_marker(tmp, name)
            fs.sync_tree(tmp)
            os.rename(tmp, target)
            fs.fsync_dir(os.path.dirname(target))
            failpoints.hit("switch.copy.between-services")
        seconds = time.monotonic() - started
        total = copied + int((self.journal.evidence("precopy") or {}).get("bytes", 0))
        precopy_seconds = float((self.journal.evidence("precopy") or {}).get("seconds", 0))
        if total and seconds + precopy_seconds > 0:
            records.update(self.ctx, copy_bytes_per_second=round(total / (seconds + precopy_seconds)))
        return {"bytes_in_window": copied, "seconds": round(seconds, 3)}

    def check_start(self) -> Any:
        observed = self.ctx.observe()
        running = all(
            observed.services[name].running and observed.services[name].data_dir == target
            for name, target in zip(self.services, self.targets, strict=True)
            if not self._late(name)
        )
        return {"resumed": True} if running else None

    def do_start(self) -> Any:
        """Started closed to clients: verification happens before anyone can write to the new copy."""
        started = []
        for name, target, port in zip(self.services, self.targets, self.ports, strict=True):
            if self._late(name):
                continue  # started in `resume`, after the point of no return
            if name == "postgres":
                drain.mark_postgres_closed(target)  # already there from the copy; a logical copy needs it
            self.ctx.runtime.start_service(name, target, self._new_port(name, port))
            started.append(name)
        return {"started": started}

    def _late(self, name: str) -> bool:
        """Redis on the docker runtime: its container can only start on its own port, open to clients.

        So it is verified offline (its RDB, written by the clean stop, byte-identical in both places)
        and started only once past the point of no return: nothing it accepts is ever rolled back.
        """
        return name == "redis" and self.ctx.spec.runtime == "docker"

    def _new_port(self, name: str, port: int) -> int:
        """Redis's port while closed. The docker runtime cannot start a container on another port
        than its own (a recreate), so there the new Redis is closed only by the drained apps."""
        return self.private_port if name == "redis" and self.ctx.spec.runtime == "local" else port

    def do_verify(self) -> Any:
        late = [name for name in self.services if self._late(name)]
        before = {
            k: v for k, v in self.journal.evidence("fingerprint").items() if k.split(":")[0] not in late
        }
        after = self._fingerprint(self.targets, skip=late)
        for name in late:
            index = self.services.index(name)
            rdb = [_sha256(os.path.join(d, "dump.rdb")) for d in (self.sources[index], self.targets[index])]
            after[f"{name}:dump.rdb"] = rdb[1]
            before[f"{name}:dump.rdb"] = rdb[0]
        if after != before:
            differing = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            raise PermanentError(
                f"the data differs after the copy ({', '.join(differing)}); the old copy is untouched"
            )
        return {"matched": sorted(after)}

    def do_retire(self) -> Any:
        retired = []
        for name, source, target in zip(self.services, self.sources, self.targets, strict=True):
            shutil.rmtree(self._aside(target), ignore_errors=True)
            if not os.path.exists(source):
                continue
            if self.keep_old_copy:
                if name == "postgres":
                    drain.mark_postgres_open(source)  # a safety copy someone may start by hand
                self._write_marker(source, name, stale=True)
            else:
                shutil.rmtree(source)
            retired.append(source)
        return {"retired": retired, "kept_as_stale": self.keep_old_copy}

    def do_resume(self) -> Any:
        for name, target, port in zip(self.services, self.targets, self.ports, strict=True):
            if self._late(name):
                self.ctx.runtime.start_service(name, target, port)
        self._open(self.targets)
        return {"containers": self._start_drained()}

    def _start_drained(self) -> list[str]:
        drained = self.journal.doc.get("drained_containers") or []
        if drained:
            self.ctx.runtime.start_containers(list(drained))
        return list(drained)

    def _close(self, directories: list[str], private: int) -> int:
        terminated = 0
        for name, directory, port in zip(self.services, directories, self.ports, strict=True):
            endpoint = self.ctx.runtime.endpoint(name, port)
            engine = engine_for(name)
            if engine is not None:
                terminated += engine.close(endpoint, directory)
            elif name == "postgres":
                terminated += drain.close_postgres(endpoint, directory, port)
            else:
                drain.close_redis(endpoint, private)
        return terminated

    def _open(self, directories: list[str]) -> None:
        for name, directory, port in zip(self.services, directories, self.ports, strict=True):
            endpoint = self.ctx.runtime.endpoint(name, port)
            engine = engine_for(name)
            if engine is not None:
                engine.open(endpoint, directory)
            elif name == "postgres":
                drain.open_postgres(endpoint, directory)
            else:  # the Redis found on the private port must be ours (its dir), never another stack's
                expected = directory if self.ctx.spec.runtime == "local" else None
                drain.open_redis(endpoint, self.private_port, expected)

    def do_backup_after(self) -> Any:
        try:
            return {"set": backups.take_backup_locked(self.ctx, "post-switch", None)["set"]}
        except ReconcilerError as exc:  # the switch itself is done and verified; the daemon retries backups
            log.warning("the backup after the mode switch failed: %s", exc)
            return {"error": str(exc)}

    # -- helpers -----------------------------------------------------------------------------

    def _write_marker(self, directory: str, service: str, stale: bool = False) -> None:
        path = os.path.join(directory, MARKER)
        st = os.stat(directory)
        document: dict[str, Any] = {
            "stack": self.ctx.spec.stack,
            "service": service,
            "operation": self.journal.id,
        }
        if stale:
            document["stale"] = True
        fs.atomic_write_json(path, document, 0o600)
        os.chown(path, st.st_uid, st.st_gid)

    def _same_postgres_major(self, source: str) -> bool:
        if self.ctx.spec.runtime == "docker":
            return True  # the same container image serves the data before and after the switch
        try:
            with open(os.path.join(source, "PG_VERSION")) as handle:
                data_major = handle.read().strip()
        except FileNotFoundError:
            return True
        return os.path.basename(
            os.path.dirname(postgres_bindir())
        ) == data_major or not postgres_bindir().startswith("/usr/lib/postgresql/")

    def _logical_copy(self, target: str) -> None:
        """Fill a fresh PostgreSQL data directory from the pre-switch set (different major version)."""
        spec = self.ctx.spec.services.postgres
        assert spec is not None
        set_name = self.journal.evidence("backup")["set"]
        identity = identity_for_restore(self.ctx.spec)
        store = backups.local_store(self.ctx)
        checked = load_and_check(store, set_name, keys.mac_key(identity) if identity else None)
        port = self.ports[self.services.index("postgres")]
        runtime = self.ctx.runtime
        runtime.init_service("postgres", target)
        runtime.start_service("postgres", target, port)
        try:
            endpoint = runtime.endpoint("postgres", port)
            pg.ensure_role_and_database(endpoint, spec.user, spec.database, None)
            restore_postgres(store, checked, identity, endpoint, postgres_bindir(), spec.database, spec.user)
        finally:
            runtime.stop_service("postgres", target)
        self._write_marker(target, "postgres")

    def _fingerprint(self, directories: list[str], skip: list[str] | None = None) -> dict[str, Any]:
        observed = self.ctx.observe()
        result: dict[str, Any] = {}
        for name, directory in zip(self.services, directories, strict=True):
            if name in (skip or []):
                continue
            service = observed.services[name]
            if not service.running or service.data_dir != directory:
                raise PermanentError(f"{name} is not running from {directory}; cannot fingerprint its data")
            port = self.ports[self.services.index(name)]
            if name == "redis" and (directory in self.sources or self._new_port(name, port) != port):
                port = self.private_port  # closed to clients: on its private port
            endpoint = self.ctx.runtime.endpoint(name, port)
            engine = engine_for(name)
            if engine is not None:
                database = self.ctx.spec.services.database_of(name)
                assert database is not None
                for table, stats in engine.stats(endpoint, database).items():
                    result[f"{name}:{table}"] = stats
            elif name == "postgres":
                spec = self.ctx.spec.services.postgres
                assert spec is not None
                with pg.connect(endpoint, spec.database) as conn:
                    for table, stats in pg.table_stats(conn).items():
                        result[f"postgres:{table}"] = stats
            else:
                result["redis:digest"] = rd.digest(endpoint)
        return result

    # -- rollback ----------------------------------------------------------------------------

    def source_lost(self) -> bool:
        """A data directory to move is gone (RAM emptied by a reboot), so the old copy cannot be used."""
        return self._lost(self.sources)

    def target_lost(self) -> bool:
        """A verified new copy is gone (RAM emptied by a reboot)."""
        return self._lost(self.targets)

    def _lost(self, directories: list[str]) -> bool:
        """A service still running from the directory holds its data (a Redis that never saved has an
        empty one), and a directory holds data by the observer's own test, not only by our marker:
        directories that Compose or an image's entrypoint initialised carry none."""
        observed = self.ctx.observe().services
        for name, directory in zip(self.services, directories, strict=True):
            service = observed.get(name)
            if service is not None and service.running and service.data_dir == directory:
                continue
            if not holds_service_data(name, directory, engine_markers(name)):
                return True
        return False

    def rollback(self) -> None:
        """Back to the old mode: new copies removed, services on the old data, opened, apps resumed.

        The new copies never accepted a client (started closed), so removing them discards nothing
        any client was told was saved.
        """
        self.remove_new_copies()
        for name, source, port in zip(self.services, self.sources, self.ports, strict=True):
            observed = self.ctx.observe().services[name]
            if not (observed.running and observed.data_dir == source):
                self.ctx.runtime.start_service(name, source, port)
        if self.journal.step("drain")["status"] != "pending":
            self._open(self.sources)
        self._start_drained()

    def remove_new_copies(self) -> None:
        """Stop anything running from the new copies, remove them (only ours), put set-aside dirs back."""
        runtime = self.ctx.runtime
        for name, target in zip(self.services, self.targets, strict=True):
            try:
                runtime.stop_service(name, target)
            except ReconcilerError as exc:
                log.warning("rollback: could not stop %s on %s: %s", name, target, exc)
        for target in self.targets:
            shutil.rmtree(self._tmp(target), ignore_errors=True)
            marker = read_marker(target)
            if marker and marker.get("operation") == self.journal.id:
                shutil.rmtree(target, ignore_errors=True)
            if os.path.exists(self._aside(target)) and not os.path.exists(target):
                os.rename(self._aside(target), target)


def _sha256(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except FileNotFoundError:
        return None
