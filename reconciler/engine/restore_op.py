"""A restore is one journaled operation: completed or rolled back by the next ``apply``, never half.

Two operations share this module: *restore on boot* (services with no data are filled from the newest
usable set, ``RestoreFromBackup``) and the deliberate ``reconciler restore SET`` of a running stack.

Design decisions:
- Journaled like the mode switch (``engine/journal.py``): the journal is written before the first
  byte changes, so a reconciler killed at any instant leaves a running journal, which the planner turns
  into ``ResumeOperation`` and never into "in sync". Without it, a restore on boot killed after initdb
  or during pg_restore left an initialised, empty database that the next ``apply`` started and called
  Ready, and the next backups were of that empty database.
- Restore on boot resumes by *rolling back*: what it initialised is stopped and emptied (only the
  directories the planner found empty when the operation began), the journal is closed, and the
  planner plans the restore again from the candidates. Starting over is always correct; the sets are
  untouched. A completed restore whose journal was not closed yet is just closed.
- Defence in depth, independent of the journal: while a restore fills a data directory, its marker
  (``.reconciler-service.json``) carries ``"restoring": <operation id>``. Observation reports such a
  directory as *restore incomplete* (not initialised), so even a lost journal cannot make it "in sync",
  and ``reconciler backup`` refuses to back it up. The marker is cleared only when every service of
  the set is restored.
- ``reconciler restore SET`` stages everything before it changes anything: PostgreSQL into
  ``<db>__restoring`` (checked against the manifest), Redis's RDB next to the live one. Up to there an
  interruption rolls back (the side database dropped, the staged RDB removed): the stack serves what
  it served before. The point of no return is the first commit (the database swap, then the RDB
  replaced while Redis is stopped); from there a resumed operation only goes forward.
- After a deliberate restore, what the stack serves is what the next boot restores. At the point of
  no return every set restore on boot would try before the chosen one (every set after it in the sets'
  own order, the ``pre-restore`` safety set included; ``plan/selection.py`` ``superseded_by_restore``)
  is recorded as *superseded* in ``backups.json``; boot-restore selection never offers a superseded set, so a power
  cut before the post-restore backup still brings back the chosen set. The operation then takes a
  ``post-restore`` set, which becomes the newest. The superseded sets stay in the store: a deliberate
  ``reconciler restore <pre-restore set>`` undoes the restore (and un-supersedes that set).
- A journal found while the data it works on is gone (a power cut emptied RAM mid-operation) is
  abandoned; restore on boot then takes over with the same selection rules (superseded sets skipped).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import asdict
from functools import partial
from typing import Any

from reconciler.backup import keys
from reconciler.backup.create import identity_for_restore
from reconciler.backup.restore import (
    CheckedSet,
    SetRejected,
    classify_failure,
    load_and_check,
    restore_engine,
    restore_postgres,
    write_redis_rdb,
)
from reconciler.databases import postgres as pg
from reconciler.databases.engine import engine_for, engine_markers, engines
from reconciler.engine import backups, records, recovery, redissnap, status
from reconciler.engine.context import StackContext
from reconciler.engine.journal import Journal
from reconciler.engine.secrets import from_env_or_file, service_password
from reconciler.errors import CommandFailed, HostFault, PermanentError, ReconcilerError, coded
from reconciler.plan import faults
from reconciler.plan.actions import RestoreFromBackup
from reconciler.plan.failures import FailureCode
from reconciler.plan.selection import superseded_by_restore
from reconciler.runtimes.local import MARKER, holds_service_data, read_marker
from reconciler.stores.local import LocalStore
from reconciler.system import failpoints, fs

log = logging.getLogger(__name__)

BOOT = "restore on boot"
RESTORE = "restore"
KINDS = (BOOT, RESTORE)
INCOMING_RDB = "dump.rdb.incoming"


def _spec_hash(ctx: StackContext) -> str:
    from reconciler.engine.switch import spec_hash

    return spec_hash(ctx)


# -- the restoring marker -------------------------------------------------------------------------


def mark_restoring(data_dir: str, stack: str, service: str, operation: str | None) -> None:
    """Set (``operation``) or clear (``None``) the restore-incomplete flag in a data directory's marker."""
    document: dict[str, Any] = {**(read_marker(data_dir) or {}), "stack": stack, "service": service}
    if operation is None:
        document.pop("restoring", None)
    else:
        document["restoring"] = operation
    path = os.path.join(data_dir, MARKER)
    st = os.stat(data_dir)
    fs.atomic_write_json(path, document, 0o600)
    os.chown(path, st.st_uid, st.st_gid)


def _empty_dir(path: str) -> None:
    """Remove what is inside ``path`` and keep the directory (it may be a mount point)."""
    if not os.path.isdir(path):
        return
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def _clear(ctx: StackContext, services: list[str], data_dirs: list[str]) -> None:
    """Stop what runs from these directories and empty them: only ever directories a restore filled."""
    for name, data_dir in reversed(list(zip(services, data_dirs, strict=True))):
        try:
            ctx.runtime.stop_service(name, data_dir)
        except ReconcilerError as exc:
            log.warning("could not stop %s on %s: %s", name, data_dir, exc)
    for data_dir in data_dirs:
        _empty_dir(data_dir)


def refuse_backup_of_incomplete_data(ctx: StackContext) -> None:
    """``reconciler backup`` (and the daemon's backups) must never copy a restore that did not complete."""
    journal = Journal.load(ctx.state_dir)
    if journal is not None and journal.doc.get("kind") in KINDS:
        raise PermanentError(
            f"the {journal.doc['kind']} {journal.id} did not complete, so the data is not what any set holds; "
            "no backup is taken of it. Run `reconciler apply` to complete or roll back the restore first"
        )
    for name in ctx.spec.services.configured():
        marker = read_marker(ctx.spec.data_dir(name)) or {}
        if marker.get("restoring"):
            raise PermanentError(
                f"{name}'s data in {ctx.spec.data_dir(name)} is an incomplete restore ({marker['restoring']}); "
                "no backup is taken of it. Run `reconciler apply` to restore it again first"
            )


# -- restore on boot ----------------------------------------------------------------------------------


def restore_empty_services(ctx: StackContext, action: RestoreFromBackup) -> str:
    """Fill empty services from the first candidate set that passes every check; never start empty.

    Each candidate is authenticated and checksummed before anything is initialised; a failure during
    the restore itself stops what this attempt started and wipes what it initialised, then the next
    candidate is tried. Every rejection is recorded, so the planner will not offer it again.
    """
    journal = Journal.create(
        ctx.state_dir,
        BOOT,
        "a backup set",
        f"{action.mode} mode",
        _spec_hash(ctx),
        ["restore"],
        asdict(action),
    )
    started = time.monotonic()
    identity = identity_for_restore(ctx.spec)
    mac = keys.mac_key(identity) if identity is not None else None
    store = backups.local_store(ctx)
    rejected: list[dict[str, str]] = []
    for data_dir in action.data_dirs:  # a directory left by an interrupted restore (its journal lost)
        if (read_marker(data_dir) or {}).get("restoring"):
            _clear(ctx, list(action.services), list(action.data_dirs))
            break
    for store_name, set_name in action.candidates:
        try:
            if store_name == "gdrive":
                from reconciler.engine.offsite import fetch_set

                fetch_set(ctx, set_name)  # into the local store; the local checks follow
            checked = load_and_check(store, set_name, mac)
            replayed = _restore_fresh(ctx, action, checked, identity, store, journal.id)
        except SetRejected as exc:  # the set's content is at fault: remember it, try the next one
            records.reject(ctx, store_name, set_name, exc.reason)
            rejected.append({"set": set_name, "store": store_name, "reason": exc.reason})
            continue
        except Exception as exc:
            # Any other error (a server that does not start, a full tmpfs) is the host's, not the set's:
            # it propagates as a HostFault (transient: the daemon retries with backoff instead of
            # stalling), the set stays a candidate, and the next apply tries again from scratch.
            journal.finish("rolled-back", error=str(exc), set=set_name)
            fault = classify_failure(set_name, exc)
            if getattr(exc, "code", None) and fault is not exc:  # a Drive download keeps download_error
                coded(fault, str(exc.code))  # type: ignore[attr-defined]
            if isinstance(fault, SetRejected):  # never from Stage.SERVER; kept for the type checker
                raise fault from None
            raise fault from exc
        outcome = {
            "set": set_name,
            "store": store_name,
            "trigger": "empty data",
            "services": list(action.services),
            "seconds": round(time.monotonic() - started, 3),
            "rejected": rejected,
        }
        journal.done("restore", outcome)
        failpoints.hit("restore.boot.done")
        _record_restore(ctx, **outcome)
        journal.finish("done", set=set_name)
        if replayed:  # a new timeline: its chain starts from a new base (engine/recovery.after_boot)
            recovery.after_boot(ctx)
        return set_name
    _record_restore(
        ctx,
        set=None,
        services=list(action.services),
        seconds=round(time.monotonic() - started, 3),
        rejected=rejected,
    )
    journal.finish("failed", error="no backup set could be restored")
    listing = "; ".join(f"{r['set']} ({r['store']}): {r['reason']}" for r in rejected)
    raise coded(
        PermanentError(
            f"no backup set could be restored, so {' and '.join(action.services)} stay down instead of "
            f"starting empty. Rejected: {listing}. Fix the backups or run `reconciler apply --allow-empty`"
        ),
        FailureCode.RESTORE_ERROR,
    )


def _account(ctx: StackContext, name: str) -> tuple[str, str]:
    """(database, user) of a service whose engine is on the interface."""
    spec = ctx.spec.services.configured()[name]
    database, user = getattr(spec, "database", None), getattr(spec, "user", None)
    assert isinstance(database, str) and isinstance(user, str)
    return database, user


def _record_restore(ctx: StackContext, **fields: Any) -> None:
    records.update(ctx, last_restore={"finished": status.now_iso(), **fields})


def _content_errors_reject(set_name: str, exc: BaseException) -> BaseException:
    """Classify what escapes a restore step by the one policy (``plan.faults``): a content fault (the
    loader refuses the dump, decryption fails) rejects the set; a host fault becomes HostFault."""
    if isinstance(exc, SetRejected | HostFault):
        return exc
    if isinstance(exc, CommandFailed):
        return classify_failure(set_name, exc, faults.Stage.LOAD)
    if isinstance(exc, OSError):
        return classify_failure(set_name, exc, faults.Stage.WRITE)
    return exc


def _restore_fresh(
    ctx: StackContext,
    action: RestoreFromBackup,
    checked: CheckedSet,
    identity: Any,
    store: LocalStore,
    operation: str,
) -> bool:
    """Returns whether PostgreSQL was recovered physically (base + WAL)."""
    runtime = ctx.runtime
    replayed = False
    initialised: list[str] = []
    started_services: list[tuple[str, str]] = []
    try:
        for name, data_dir, port in zip(action.services, action.data_dirs, action.ports, strict=True):
            if checked.member(name) is None:
                raise SetRejected(checked.name, f"it holds no {name} member")
            if name == "postgres" and recovery.wanted(ctx, checked):  # base + WAL; logical if it fails
                mark = partial(mark_restoring, data_dir, ctx.spec.stack, name, operation)
                undo = partial(_clear, ctx, [name], [data_dir])
                source = recovery.Source(
                    store, checked, identity, keys.mac_key(identity) if identity else None
                )
                if recovery.boot_recover(ctx, source, data_dir, port, mark, undo):
                    initialised.append(data_dir)
                    started_services.append((name, data_dir))
                    replayed = True
                    continue
            initialised.append(data_dir)
            runtime.init_service(name, data_dir)
            # Flagged as soon as initdb ran: from then on the directory is no set's data (the defence that
            # does not depend on the journal). The docker runtime leaves the directory empty for the
            # image's entrypoint, which initialises only an empty one: there the flag follows the start.
            if not fs.is_empty_dir(data_dir):
                mark_restoring(data_dir, ctx.spec.stack, name, operation)
            failpoints.hit(f"restore.boot.{name}.init")
            if name == "redis":
                _, uid, gid = runtime.account("redis")
                try:
                    rdb = os.path.join(data_dir, "dump.rdb")
                    if redissnap.restore_newest(ctx, checked.name, identity, rdb, (uid, gid)) is None:
                        write_redis_rdb(store, checked, identity, rdb, (uid, gid))
                except Exception as exc:
                    raise _content_errors_reject(checked.name, exc) from None
                failpoints.hit("restore.boot.redis.rdb")
            runtime.start_service(name, data_dir, port)
            started_services.append((name, data_dir))
            mark_restoring(data_dir, ctx.spec.stack, name, operation)
            failpoints.hit(f"restore.boot.{name}.start")
            if name == "postgres":
                pgspec = ctx.spec.services.postgres
                assert pgspec is not None
                password_file = ctx.spec.resolve(pgspec.password_file) if pgspec.password_file else None
                password = from_env_or_file(pgspec.password_env, password_file, "services.postgres password")
                endpoint = runtime.endpoint(name, port)
                pg.ensure_role_and_database(endpoint, pgspec.user, pgspec.database, password)
                try:
                    restore_postgres(
                        store, checked, identity, endpoint, ctx.pg_bindir(), pgspec.database, pgspec.user
                    )
                except Exception as exc:
                    raise _content_errors_reject(checked.name, exc) from None
            engine = engine_for(name)
            if engine is not None:
                database, user = _account(ctx, name)
                endpoint = runtime.endpoint(name, port)
                engine.ensure(endpoint, database, user, service_password(ctx, name))
                try:
                    restore_engine(engine, store, checked, identity, endpoint, database)
                except Exception as exc:
                    raise _content_errors_reject(checked.name, exc) from None
        for name, data_dir in zip(action.services, action.data_dirs, strict=True):
            mark_restoring(data_dir, ctx.spec.stack, name, None)
        return replayed
    except BaseException:
        for name, data_dir in reversed(started_services):
            try:
                runtime.stop_service(name, data_dir)
            except ReconcilerError as exc:
                log.warning("could not stop %s after a failed restore: %s", name, exc)
        for data_dir in initialised:  # only what this attempt created: empty but for the failed restore
            _empty_dir(data_dir)
        raise


# -- reconciler restore SET -------------------------------------------------------------------------

_ENGINE_KINDS = tuple(engines())  # engines on the interface (databases/engine.py): their own steps

RESTORE_STEPS = (
    "safety-backup",  # the current data as a pre-restore set
    "supersede",  # the sets newer than the chosen one are never restored on boot once this commits
    "stage-postgres",  # the set into <db>__restoring, checked against the manifest
    "stage-redis",  # the set's RDB next to the live one
    *(f"stage-{kind}" for kind in _ENGINE_KINDS),  # into the engine's side database, checked
    "commit-postgres",  # point of no return: <db>__restoring replaces <db>
    *(f"commit-{kind}" for kind in _ENGINE_KINDS),  # the side database swapped in (MariaDB: RENAME TABLE)
    "commit-redis",  # redis stopped, the staged RDB replaces the live one, redis started
    "backup-after",  # a post-restore set: the newest set holds what the stack serves
)


def restore_set(ctx: StackContext, set_name: str | None, safety_backup: bool) -> backups.RestoreResult:
    """``reconciler restore``; the caller holds the stack's lock."""
    pending = Journal.load(ctx.state_dir)
    if pending is not None:
        raise PermanentError(
            f"an interrupted {pending.doc['kind']} ({pending.id}) must reach a safe point first; "
            "run `reconciler apply`, then restore"
        )
    started = time.monotonic()
    chosen = backups._choose(ctx, set_name)
    store = backups.local_store(ctx)
    identity = identity_for_restore(ctx.spec)
    checked = load_and_check(store, chosen, keys.mac_key(identity) if identity else None)
    backups._endpoints(ctx)  # every service runs: a restore replaces the data of a running stack
    spec = ctx.spec
    skip = set() if safety_backup else {"safety-backup"}
    if spec.services.postgres is None or checked.member("postgres") is None:
        skip |= {"stage-postgres", "commit-postgres"}
    if spec.services.redis is None or checked.member("redis") is None:
        skip |= {"stage-redis", "commit-redis"}
    for kind in engines():  # engines on the interface: stage-<kind>, commit-<kind>
        if kind not in spec.services.configured() or checked.member(kind) is None:
            skip |= {f"stage-{kind}", f"commit-{kind}"}
    journal = Journal.create(
        ctx.state_dir,
        RESTORE,
        "current data",
        chosen,
        _spec_hash(ctx),
        [step for step in RESTORE_STEPS if step not in skip],
        # Where the data is, frozen like the switch's parameters: a state.yaml edited while the restore is
        # interrupted (another mode, directory or port) is obeyed only after it reaches a safe point.
        {
            "set": chosen,
            "data_dirs": {name: spec.data_dir(name) for name in spec.services.configured()},
            "ports": {name: spec.port(name) for name in spec.services.configured()},
        },
    )
    evidence = _drive(ctx, journal)
    safety = (evidence.get("safety-backup") or {}).get("set")
    tables = int((evidence.get("stage-postgres") or {}).get("tables", 0))
    return backups.RestoreResult(chosen, time.monotonic() - started, safety, tables)


def resume(ctx: StackContext) -> None:
    """Bring an interrupted restore to a safe point: forward past the point of no return, else back."""
    journal = Journal.load(ctx.state_dir)
    if journal is None:
        return
    kind = journal.doc["kind"]
    log.warning("resuming the interrupted %s %s", kind, journal.id)
    if kind == BOOT:
        if not journal.pending():  # restored; only the record and the journal's closing were missing
            _record_restore(ctx, **journal.evidence("restore"))
            journal.finish("done")
            return
        payload = journal.doc["payload"]
        _clear(ctx, list(payload["services"]), list(payload["data_dirs"]))
        journal.finish("rolled-back", error="interrupted; the restore on boot starts over")
        return
    op = _Restore(ctx, journal)
    if op.data_lost():
        reason = "its data was lost (a reboot emptied RAM?); restore on boot takes over"
        if not journal.past_point_of_no_return:
            op.rollback()
        log.error("restore %s abandoned: %s", journal.id, reason)
        journal.finish("abandoned", error=reason)
        return
    op.ensure_running()
    if not journal.past_point_of_no_return:
        op.rollback()
        journal.finish("rolled-back", error="interrupted before its point of no return; nothing was replaced")
        return
    _drive(ctx, journal)


def _drive(ctx: StackContext, journal: Journal) -> dict[str, Any]:
    """Run the pending steps; returns every step's evidence."""
    op = _Restore(ctx, journal)
    started = time.monotonic()
    for name in journal.pending():
        failpoints.hit(f"restore.{name}.before")
        if name.startswith("commit-") and not journal.past_point_of_no_return:
            journal.set(past_point_of_no_return=True)
        journal.start(name)
        try:
            evidence = op.do(name)
        except (ReconcilerError, OSError) as exc:
            if journal.past_point_of_no_return:
                journal.set(last_error=str(exc))
                raise PermanentError(
                    f"the restore {journal.id} of {op.set_name} is past its point of no return and failed at step "
                    f"{name}: {exc}. Fix the cause and run `reconciler apply` to finish it"
                ) from None
            log.error("restore failed at step %s: %s; rolling back", name, exc)
            op.rollback()
            journal.finish("rolled-back", error=str(exc), failed_step=name)
            raise PermanentError(
                f"the restore of {op.set_name} failed at step {name} and was rolled back "
                f"(the stack serves the data it had before): {exc}"
            ) from None
        journal.done(name, evidence)
        failpoints.hit(f"restore.{name}.after")
    seconds = round(time.monotonic() - started, 3)
    _record_restore(
        ctx,
        set=op.set_name,
        store="local",
        seconds=seconds,
        safety_backup=(journal.evidence("safety-backup") or {}).get("set")
        if "safety-backup" in op.steps
        else None,
        rejected=[],
    )
    journal.finish("done", seconds=seconds)
    return {step["name"]: step["evidence"] or {} for step in journal.doc["steps"]}


class _Restore:
    def __init__(self, ctx: StackContext, journal: Journal) -> None:
        self.ctx = ctx
        self.journal = journal
        payload = journal.doc["payload"]
        self.set_name: str = payload["set"]
        self._dirs: dict[str, str] = payload.get("data_dirs") or {}
        self._ports: dict[str, int] = payload.get("ports") or {}
        self.steps = [step["name"] for step in journal.doc["steps"]]
        self.services = [
            name
            for name in ctx.spec.services.configured()
            if f"stage-{name}" in self.steps or f"commit-{name}" in self.steps
        ]

    def do(self, name: str) -> Any:
        step, _, kind = name.partition("-")
        if step in ("stage", "commit") and engine_for(kind) is not None:
            return (self.do_stage_engine if step == "stage" else self.do_commit_engine)(kind)
        return getattr(self, f"do_{name.replace('-', '_')}")()

    def _checked(self) -> tuple[CheckedSet, Any]:
        identity = identity_for_restore(self.ctx.spec)
        store = backups.local_store(self.ctx)
        return load_and_check(store, self.set_name, keys.mac_key(identity) if identity else None), identity

    def _dir(self, name: str) -> str:
        return self._dirs.get(name) or self.ctx.spec.data_dir(name)

    def _port(self, name: str) -> int:
        return int(self._ports.get(name) or self.ctx.spec.port(name))

    def _endpoint(self, name: str) -> Any:
        return self.ctx.runtime.endpoint(name, self._port(name))

    @property
    def _database(self) -> str:
        spec = self.ctx.spec.services.postgres
        assert spec is not None
        return spec.database

    @property
    def _side(self) -> str:
        return pg.staging_name(self._database, "__restoring")

    def _incoming(self) -> str:
        return os.path.join(self._dir("redis"), INCOMING_RDB)

    # -- steps -----------------------------------------------------------------------------------

    def do_safety_backup(self) -> Any:
        return {"set": backups.take_backup_locked(self.ctx, "pre-restore", None)["set"]}

    def do_supersede(self) -> Any:
        """Record every set boot could prefer to the chosen one as superseded (effective from the commit on).

        The intended change goes into the journal first, so a rollback knows exactly what to undo even
        when the reconciler died between the two writes."""
        # Drive too: a set newer than the chosen one that only Drive still holds must not win at boot.
        listed = [listing.backup_set for listing in backups.list_sets(self.ctx, with_remote=True)]
        newer = set(superseded_by_restore(listed, self.set_name))  # the sets' own order, as boot uses
        with records.changing(self.ctx) as document:
            current = set(document.get("superseded", []))
            change = {"added": sorted(newer - current), "unsuperseded": self.set_name in current}
            change |= redissnap.supersede(document)  # the Redis snapshots taken so far, likewise
            self.journal.set(supersede=change)
            document["superseded"] = sorted((current | newer) - {self.set_name})
        return change

    def do_stage_postgres(self) -> Any:
        spec = self.ctx.spec.services.postgres
        assert spec is not None
        checked, identity = self._checked()
        tables = restore_postgres(
            backups.local_store(self.ctx),
            checked,
            identity,
            self._endpoint("postgres"),
            self.ctx.pg_bindir(),
            spec.database,
            spec.user,
            swap=False,
        )
        return {"tables": len(tables)}

    def do_stage_redis(self) -> Any:
        checked, identity = self._checked()
        _, uid, gid = self.ctx.runtime.account("redis")
        write_redis_rdb(backups.local_store(self.ctx), checked, identity, self._incoming(), (uid, gid))
        return {"staged": INCOMING_RDB}

    def do_commit_postgres(self) -> Any:
        endpoint = self._endpoint("postgres")
        if _database_exists(endpoint, self._side):
            pg.swap_databases(endpoint, self._database, self._side)
        pg.drop_database(endpoint, pg.staging_name(self._database, "__replaced"))  # a swap cut short
        return {"swapped": self._database}

    def do_stage_engine(self, kind: str) -> Any:
        """The set into the engine's side database, checked against the manifest (not yet swapped)."""
        engine = engine_for(kind)
        assert engine is not None
        checked, identity = self._checked()
        endpoint = self._endpoint(kind)
        database, _ = _account(self.ctx, kind)
        refusal = engine.swap_refusal(endpoint, database)
        if refusal:  # refused before anything is staged: the swap could not replace the live database
            raise PermanentError(refusal)
        store = backups.local_store(self.ctx)
        tables = restore_engine(engine, store, checked, identity, endpoint, database, swap=False)
        return {"tables": len(tables)}

    def do_commit_engine(self, kind: str) -> Any:
        engine = engine_for(kind)
        assert engine is not None
        database, _ = _account(self.ctx, kind)
        engine.swap(self._endpoint(kind), database, engine.side_name(database))
        return {"swapped": database}

    def do_commit_redis(self) -> Any:
        runtime = self.ctx.runtime
        data_dir = self._dir("redis")
        runtime.stop_service("redis", data_dir)  # redis saves on shutdown: replace the file only afterwards
        if os.path.exists(self._incoming()):
            os.replace(self._incoming(), os.path.join(data_dir, "dump.rdb"))
            fs.fsync_dir(data_dir)
        runtime.start_service("redis", data_dir, self._port("redis"))
        return {"replaced": True}

    def do_backup_after(self) -> Any:
        try:
            return {"set": backups.take_backup_locked(self.ctx, "post-restore", None)["set"]}
        except ReconcilerError as exc:  # the superseded record already makes boot restore the chosen set
            log.warning("the backup after the restore failed: %s", exc)
            return {"error": str(exc)}

    # -- safe points -----------------------------------------------------------------------------

    def data_lost(self) -> bool:
        """The directories the restore works on (as frozen in the journal, whatever state.yaml says now)
        hold no data: a reboot emptied RAM. Observed like any data directory where it is one of the
        service's locations (on docker, a database an image's entrypoint re-created after a reboot is
        no data), else by its files."""
        observed = self.ctx.observe()
        for name in self.services:
            service = observed.services[name]
            directory = self._dir(name)
            location = next((loc for loc in (service.ram, service.disk) if loc.path == directory), None)
            if not (
                location.initialized
                if location is not None
                else holds_service_data(name, directory, engine_markers(name))
            ):
                return True
        return False

    def ensure_running(self) -> None:
        observed = self.ctx.observe()
        for name in self.services:
            if not observed.services[name].running:
                self.ctx.runtime.start_service(name, self._dir(name), self._port(name))

    def rollback(self) -> None:
        """Before the point of no return: drop what was staged, forget the supersession."""
        if "stage-postgres" in self.steps:
            try:
                pg.drop_database(self._endpoint("postgres"), self._side)
            except ReconcilerError as exc:
                log.warning("rollback: could not drop %s: %s", self._side, exc)
        for kind, engine in engines().items():
            if f"stage-{kind}" in self.steps:
                database, _ = _account(self.ctx, kind)
                try:
                    engine.drop(self._endpoint(kind), engine.side_name(database))
                except ReconcilerError as exc:
                    log.warning("rollback: could not drop the staged %s database: %s", kind, exc)
        if "stage-redis" in self.steps:
            for path in (self._incoming(), f"{self._incoming()}.restoring"):
                if os.path.exists(path):
                    os.unlink(path)
        change = self.journal.doc.get("supersede")
        if change:
            with records.changing(self.ctx) as document:
                current = set(document.get("superseded", [])) - set(change["added"])
                if change["unsuperseded"]:
                    current.add(self.set_name)
                document["superseded"] = sorted(current)
                redissnap.unsupersede(document, change)


def _database_exists(endpoint: Any, database: str) -> bool:
    with pg.connect(endpoint) as conn:
        return (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is not None
        )
