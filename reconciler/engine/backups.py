"""Backup operations on a stack: take, list, restore, verify, prune; each under the stack's lock.

Design decisions:
- Every operation records its outcome through ``engine/records.py`` (last attempt, verification
  results per set, last restore), the one module that writes ``<state_dir>/backups.json``, under its
  own lock. Retention reads it: nothing is pruned while the newest attempt failed, and the newest
  *verified* set is always kept.
- Retention, the schedule and new set names count only sets this module *vouches for*
  (``vouch_local``: the manifest reads, authenticates, names this set and stack, and the members
  have their recorded sizes; ``backup/vouch.py``). The policy that uses the verdicts is pure
  (``plan/backupsets.retention``).
- A new set's name carries a sequence number above every set we vouch for and above the recorded
  high-water mark, so it sorts after every existing set even when the host clock is behind.
- ``restore`` takes a ``pre-restore`` backup of the current data first (unless told not to), so a
  restore of the wrong set is itself undoable.
- ``verify`` restores into scratch servers on a private tmpfs directory and free ports, compares with
  what the manifest recorded at backup time, and always removes the scratch instance.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reconciler.backup import keys, vouch
from reconciler.backup.create import create_set, identity_for_restore
from reconciler.backup.restore import (
    SetRejected,
    classify_failure,
    load_and_check,
    restore_engine,
    restore_postgres,
    write_redis_rdb,
)
from reconciler.databases import postgres as pg
from reconciler.databases import redis as rd
from reconciler.databases.engine import engines, server_recipes
from reconciler.engine import events, records, status
from reconciler.engine.context import StackContext
from reconciler.engine.journal import Journal
from reconciler.engine.revision import state_revision
from reconciler.errors import PermanentError, ReconcilerError
from reconciler.plan import faults
from reconciler.plan.actions import RestoreFromBackup
from reconciler.plan.backupsets import (
    MANIFEST_SUFFIX,
    BackupSet,
    RetentionDecision,
    group_sets,
    newest_first,
    next_sequence,
    retention,
)
from reconciler.plan.failures import FailureCode, Operation, failure_code
from reconciler.plan.hosts import retained_here
from reconciler.plan.setsize import set_size_limit
from reconciler.runtimes.local import LocalRuntime, postgres_bindir
from reconciler.stores.local import LocalStore
from reconciler.system import clock, failpoints, fs

log = logging.getLogger(__name__)

Progress = Callable[[str, int], None]


def local_store(ctx: StackContext) -> LocalStore:
    return LocalStore(ctx.spec.resolve(ctx.spec.backup.stores.local.path))


def _mac_key(ctx: StackContext) -> bytes | None:
    identity = identity_for_restore(ctx.spec)
    return keys.mac_key(identity) if identity is not None else None


def vouch_local(ctx: StackContext, sets: list[BackupSet] | None = None) -> dict[str, str | None]:
    """Set name → None for each complete local set we can vouch for, else the reason we cannot."""
    store = local_store(ctx)
    sets = group_sets(store.list(), store.name, ctx.spec.stack) if sets is None else sets
    return vouch.local_doubts(ctx.spec, store, sets)


def _endpoints(ctx: StackContext) -> dict[str, Any]:
    observed = ctx.observe()
    endpoints = {}
    for name in ctx.spec.services.configured():
        service = observed.services[name]
        if not service.running or service.port is None:
            raise PermanentError(f"{name} is not running; run `reconciler apply` first")
        # RAM data only: a disk directory made by Compose (no marker of ours) is the user's data.
        ram = service.ram if service.data_dir == service.ram.path else None
        if ram is not None and not ram.initialized:
            raise PermanentError(
                f"{name} serves {ram.path}, which holds no data the reconciler initialised, restored or "
                "moved there (an empty database an image initialised by itself, e.g. after a reboot), while "
                "backup sets exist: a backup of it would become the newest set. Nothing was backed up. "
                "Run `reconciler apply` to restore the newest set first"
            )
        if ram is not None and ram.unclaimed:  # no set exists: it is the only data; adopt it
            ctx.runtime.claim_data_dir(name, ram.path)
        endpoints[name] = ctx.runtime.endpoint(name, service.port)
    return endpoints


def take_backup(
    ctx: StackContext, trigger: str = "manual", progress: Progress | None = None
) -> dict[str, Any]:
    """Take a set now (under the stack lock); returns its manifest. Refused while a restore is incomplete."""
    with fs.exclusive_lock(ctx.lock_path, f"stack {ctx.spec.stack}"):
        return take_backup_held(ctx, trigger, progress)


def backup_owed(ctx: StackContext) -> bool:
    """Whether the newest usable local set breaks backup.stale_after now (``plan/schedule.backup_drift``)."""
    from reconciler.plan.hosts import backups_scheduled_here
    from reconciler.plan.schedule import observed_backup_drift

    ours = frozenset(ctx.spec.services.configured())
    mine = backups_scheduled_here(ctx.observe().backups, ours, ctx.skipped_services)
    return observed_backup_drift(ctx.spec, mine, clock.now()) is not None


def take_backup_held(
    ctx: StackContext, trigger: str = "manual", progress: Progress | None = None
) -> dict[str, Any]:
    """``take_backup`` for a caller that already holds the stack lock (``apply``'s ``TakeBackup``):
    the same refusals, the same records."""
    from reconciler.engine.restore_op import refuse_backup_of_incomplete_data

    refuse_backup_of_incomplete_data(ctx)
    return take_backup_locked(ctx, trigger, progress)


def _new_set_position(ctx: StackContext) -> tuple[datetime, int]:
    """The new set's time (the clock's, whatever it says) and its sequence: above every local set we
    vouch for, every complete Drive set the last sync vouched for, and the recorded high-water mark.
    Planted names do not count, so they cannot push the numbers up; the caller holds the stack lock."""
    record = records.read(ctx)
    vouched = [name for name, why in vouch_local(ctx).items() if why is None]
    return clock.now(), next_sequence([*vouched, *_drive_sets_known(ctx, record)], record.sequence)


def _drive_sets_known(ctx: StackContext, record: records.BackupRecords) -> tuple[str, ...]:
    """The Drive sets the last sync vouched for; when no sync is on record (``backups.json`` lost with
    the state directory, a new checkout next to data that lives on), Drive is asked now. Otherwise the
    first set taken would be numbered below every older set on Drive: restore on boot would bring back
    the older data, and Drive retention would count the new set as the oldest. Drive out of reach:
    the set is still taken (a backup beats none) and the next one asks again."""
    from reconciler.engine.offsite import drive_store, remote_sets, vouch_remote

    if "remote_sets" in record.document:
        return record.remote_sets
    store = drive_store(ctx, attempts=2, deadline=30)
    if store is None:
        return ()
    try:
        sets = [s for s in remote_sets(ctx, store) if s.complete]
        vouched = sorted(name for name, why in vouch_remote(ctx, store, sets).items() if why is None)
    except ReconcilerError as exc:
        log.warning(
            "no Drive sync on record and %s is out of reach (%s): the new set may be numbered below "
            "older sets on Drive until a later set is taken with Drive reachable",
            store.describe(),
            exc,
        )
        return ()
    records.update(ctx, remote_sets=vouched)
    return tuple(vouched)


def take_backup_locked(ctx: StackContext, trigger: str, progress: Progress | None) -> dict[str, Any]:
    """Take a set; the caller holds the stack lock (a switch or a restore takes one mid-operation)."""
    store = local_store(ctx)
    store.clean_partials()
    started = clock.now_iso()
    _, exempt = set_size_limit(ctx.spec.backup.max_set_size, trigger, ctx.mode_override is not None)
    try:
        created, sequence = _new_set_position(ctx)
        records.note_sequence(ctx, sequence)  # a crashed attempt still uses up its number
        document = create_set(
            ctx.spec,
            _endpoints(ctx),
            ctx.pg_bindir(),
            store,
            trigger,
            created,
            state_revision(ctx.state_file),
            progress,
            sequence=sequence,
            size_limit_exempt=exempt is not None,
        )
    except ReconcilerError as exc:
        code = failure_code(exc, Operation.BACKUP).value
        records.update(
            ctx,
            last_attempt={
                "started": started,
                "result": "failed",
                "error": str(exc),
                "code": code,
                "trigger": trigger,
            },
        )
        raise
    size = sum(int(m["size"]) for m in document["members"])
    if exempt is not None:
        events.emit(
            ctx.state_dir, "Normal", "SizeLimitExempt", f"backup {document['set']}: {exempt}", size=size
        )
    records.update(
        ctx,
        last_attempt={"started": started, "result": "success", "set": document["set"], "trigger": trigger},
        last_success={
            "set": document["set"],
            "finished": clock.now_iso(),
            "size": size,
            "seconds": document["seconds"],
        },
    )
    return document


@dataclass(frozen=True)
class SetListing:
    backup_set: BackupSet
    verified: dict[str, Any] | None
    stores: tuple[str, ...] = ("local",)
    superseded: bool = False  # a deliberate restore discarded its data: restore on boot never uses it

    def to_dict(self, now: datetime) -> dict[str, Any]:
        s = self.backup_set
        return {
            "name": s.name,
            "created": s.created.isoformat().replace("+00:00", "Z"),
            "age_seconds": int((now - s.created).total_seconds()),
            "trigger": s.trigger,
            "size": s.size,
            "complete": s.complete,
            "stores": list(self.stores),
            "verified": self.verified,
            "superseded": self.superseded,
        }


def list_sets(ctx: StackContext, with_remote: bool = False) -> list[SetListing]:
    """Local sets; with ``with_remote``, also those on Drive (a set in both is listed once, both stores)."""
    record = records.read(ctx)
    verified = record.verifications
    superseded = record.superseded
    sets = group_sets(local_store(ctx).list(), "local", ctx.spec.stack)
    listings = [SetListing(s, verified.get(s.name), superseded=s.name in superseded) for s in sets]
    if not with_remote:
        return listings
    from reconciler.engine.offsite import drive_store, remote_sets

    store = drive_store(ctx)
    if store is None:
        return listings
    try:
        remote = {s.name: s for s in remote_sets(ctx, store)}
    except ReconcilerError as exc:
        log.warning("cannot list %s: %s", store.describe(), exc)
        return listings
    merged = []
    for listing in listings:
        other = remote.pop(listing.backup_set.name, None)
        both = other is not None and other.complete
        stores = ("local", "gdrive") if both else ("local",)
        merged.append(SetListing(listing.backup_set, listing.verified, stores, listing.superseded))
    merged += [
        SetListing(s, verified.get(s.name), ("gdrive",), s.name in superseded) for s in remote.values()
    ]
    order = {s.name: index for index, s in enumerate(newest_first(entry.backup_set for entry in merged))}
    return sorted(merged, key=lambda entry: order[entry.backup_set.name])


def _choose(ctx: StackContext, set_name: str | None) -> str:
    """The named set, or the newest (by the sets' own order) complete local set we vouch for."""
    sets = [listing.backup_set for listing in list_sets(ctx)]
    if set_name:
        if not any(s.name == set_name for s in sets):
            raise PermanentError(f"no backup set named {set_name} in {local_store(ctx).describe()}")
        return set_name
    complete = [s for s in sets if s.complete]
    if not complete:
        raise PermanentError(f"no complete backup set in {local_store(ctx).describe()}")
    doubts = vouch_local(ctx, complete)
    vouched = [s for s in complete if doubts.get(s.name, "not checked") is None]
    if not vouched:
        reasons = "; ".join(f"{s.name}: {doubts.get(s.name)}" for s in complete)
        raise PermanentError(
            f"no backup set in {local_store(ctx).describe()} can be vouched for ({reasons}); "
            "name a set explicitly to try it anyway"
        )
    return vouched[0].name


@dataclass
class RestoreResult:
    set_name: str
    seconds: float
    safety_backup: str | None
    tables: int


def restore(ctx: StackContext, set_name: str | None, safety_backup: bool = True) -> RestoreResult:
    """``reconciler restore``: one journaled operation (``engine/restore_op.py``)."""
    from reconciler.engine.restore_op import restore_set

    with fs.exclusive_lock(ctx.lock_path, f"stack {ctx.spec.stack}"):
        return restore_set(ctx, set_name, safety_backup)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def verify(ctx: StackContext, set_name: str | None) -> dict[str, Any]:
    """Restore a set into scratch servers on tmpfs, compare with its manifest, record the result.

    Only a content fault (``plan.faults``) fails the set: it is recorded as verified-and-failed and
    rejected for restores. A host fault (the scratch server cannot start: too few file descriptors,
    /dev/shm too small, a port taken) is reported with ``fault: host`` and recorded apart, in
    ``last_verify_error``: the set stays a candidate and unverified, so the daemon tries it again.
    """
    chosen = _choose(ctx, set_name)
    store = local_store(ctx)
    identity = identity_for_restore(ctx.spec)
    started = time.monotonic()
    result: dict[str, Any] = {"set": chosen, "verified_at": status.now_iso()}
    scratch: str | None = None
    runtime: LocalRuntime | None = None
    started_services: list[tuple[str, str]] = []
    try:
        scratch = tempfile.mkdtemp(prefix="reconciler-verify-", dir="/dev/shm")
        os.chmod(scratch, 0o755)
        runtime = LocalRuntime(f"{ctx.spec.stack}-verify", os.path.join(scratch, "state"), server_recipes())
        checked = load_and_check(store, chosen, keys.mac_key(identity) if identity else None)
        postgres_member = checked.member("postgres")
        if postgres_member is not None:
            data_dir = os.path.join(scratch, "postgres")
            port = _free_port()
            failpoints.hit("verify.port-chosen", port=port)  # tests take the port here, as a race would
            runtime.init_service("postgres", data_dir)
            runtime.start_service("postgres", data_dir, port)
            started_services.append(("postgres", data_dir))
            endpoint = runtime.endpoint("postgres", port)
            owner = str(postgres_member.get("owner") or "postgres")
            pg.ensure_role_and_database(endpoint, owner, str(postgres_member["database"]), None)
            tables = restore_postgres(
                store, checked, identity, endpoint, postgres_bindir(), str(postgres_member["database"]), owner
            )
            result["tables"] = len(tables)
            result["rows"] = sum(int(v[0]) for v in tables.values())
        for kind, engine in engines().items():
            member = checked.member(kind)
            if member is None:
                continue
            data_dir = os.path.join(scratch, kind)
            port = _free_port()
            runtime.init_service(kind, data_dir)
            runtime.start_service(kind, data_dir, port)
            started_services.append((kind, data_dir))
            endpoint = runtime.endpoint(kind, port)
            database = str(member["database"])
            engine.ensure(endpoint, database, str(member.get("owner") or database), None)
            tables = restore_engine(engine, store, checked, identity, endpoint, database)
            rows = [int(v[0]) for v in tables.values() if v[0] is not None]  # a view's entry has no rows
            result[f"{kind}_tables"] = len(rows)
            result[f"{kind}_rows"] = sum(rows)
        redis_member = checked.member("redis")
        if redis_member is not None:
            data_dir = os.path.join(scratch, "redis")
            runtime.init_service("redis", data_dir)
            _, uid, gid = runtime.account("redis")
            write_redis_rdb(store, checked, identity, os.path.join(data_dir, "dump.rdb"), (uid, gid))
            port = _free_port()
            runtime.start_service("redis", data_dir, port)
            started_services.append(("redis", data_dir))
            keys_now = rd.probe(runtime.endpoint("redis", port)).keys
            check = redis_member.get("check", {})
            expected = int(check.get("keys", keys_now))
            expires = check.get("expires")
            result["redis_keys"] = keys_now
            if not faults.redis_keys_consistent(
                expected, None if expires is None else int(expires), keys_now
            ):
                raise SetRejected(
                    chosen,
                    f"redis holds {keys_now} keys after restore, the manifest says {expected}"
                    + (f" ({expires} of them with a TTL)" if expires else ""),
                )
        if checked.base() is not None:  # the physical member, in its own scratch server (engine/recovery)
            from reconciler.engine.walverify import verify_physical

            base_dir = os.path.join(scratch, "postgres-base")
            started_services.append(("postgres", base_dir))
            result["base"] = verify_physical(ctx, store, checked, identity, runtime, base_dir, _free_port())
        result.update(ok=True, seconds=round(time.monotonic() - started, 3))
    except SetRejected as exc:
        result.update(
            ok=False,
            fault="content",
            code=failure_code(exc, Operation.VERIFY).value,
            reason=exc.reason,
            seconds=round(time.monotonic() - started, 3),
        )
    except Exception as exc:  # anything else is the host's: a server that cannot start, no fds, no space
        reason = str(classify_failure(chosen, _os_error_text(exc)))
        if runtime is not None:
            reason += _scratch_logs(runtime, reason)
        result.update(
            ok=False,
            fault="host",
            code=FailureCode.HOST_FAULT.value,
            reason=reason,
            seconds=round(time.monotonic() - started, 3),
        )
    finally:
        for name, data_dir in reversed(started_services):
            try:
                assert runtime is not None
                runtime.stop_service(name, data_dir)
            except ReconcilerError as exc:
                log.warning("could not stop scratch %s: %s", name, exc)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if result.get("fault") == "host":  # the host's problem: the set is neither verified nor rejected
        records.update(ctx, last_verify_error=result)
        log.warning("backup set %s could not be verified: %s", chosen, result["reason"])
        return result
    records.record_verification(ctx, chosen, result)  # one locked change: result and rejection together
    if not result["ok"]:
        log.warning("backup set %s (local) rejected: verification failed: %s", chosen, result["reason"])
    return result


def _scratch_logs(runtime: LocalRuntime, reason: str) -> str:
    """The end of a scratch server's log that ``reason`` points to: the real cause is there (e.g. "Too
    many open files"), and the file goes with the scratch directory."""
    tails = []
    for service in ("postgres", "redis", *runtime.recipes):
        path = runtime.log_file(service)
        if path in reason and os.path.exists(path):
            with open(path, "rb") as handle:
                lines = handle.read()[-4000:].decode(errors="replace").strip().splitlines()[-6:]
            tails.append(f"; {service}'s log ends: " + " | ".join(line.strip() for line in lines))
    return "".join(tails)


def _os_error_text(exc: BaseException) -> BaseException:
    """An OSError raised by Python itself (mkdtemp, open) reads best as its errno text and file."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return ReconcilerError(f"{exc.strerror}{where}")
    return exc


def prune_decision(ctx: StackContext) -> tuple[list[BackupSet], RetentionDecision]:
    """Retention of the local store: which sets go, with the reason each kept set stays."""
    sets = list(retained_here(tuple(listing.backup_set for listing in list_sets(ctx)), ctx.skipped_services))
    pending = Journal.load(ctx.state_dir)
    if pending is not None:
        # An interrupted operation may depend on any set (a restore past its point of no return on the
        # set it chose, an abandoned switch on its pre-switch set): nothing is deleted until it completes.
        reason = f"the {pending.doc.get('kind')} {pending.id} did not complete; run `reconciler apply` first"
        return sets, RetentionDecision({s.name: (reason,) for s in sets}, (), reason)
    record = records.read(ctx)
    return sets, retention(
        sets,
        ctx.spec.backup.retention,
        clock.now(),
        record.verified,
        record.newest_attempt_failed,
        record.protected,
        authenticity=vouch_local(ctx, sets),
        require_verified=ctx.spec.daemon.verify_new_sets,
        rejected=record.rejected_in("local"),
        superseded=record.superseded,
    )


def checked_prune_decision(ctx: StackContext) -> RetentionDecision:
    """``prune_decision``, but before anything goes every counted set that no verification vouched
    for is checksummed (its members' sha256, as a restore checks them first); a rotten one is rejected
    and the decision made again.

    Why: a set is vouched for from its manifest and the members' sizes alone (cheap enough for every
    ``plan``), and bit rot keeps the size. With ``verify_new_sets: false`` such a set counted, and
    ``keep_last: 1`` deleted the only set that restores. Sets checksummed once are remembered
    (``checksummed`` in the records), so a prune reads each set's members at most once.
    """
    identity = identity_for_restore(ctx.spec)
    mac = keys.mac_key(identity) if identity else None
    store = local_store(ctx)
    while True:
        _, decision = prune_decision(ctx)
        if not decision.delete:
            return decision
        record = records.read(ctx)
        done = record.document.get("checksummed")
        done = done if isinstance(done, dict) else {}
        unchecked = [n for n in decision.counted if n not in record.verified and n not in done]
        rotten = False
        for name in unchecked:
            try:
                load_and_check(store, name, mac)
            except SetRejected as exc:
                _reject(ctx, "local", name, exc.reason)
                rotten = True
                continue
            records.update(ctx, checksummed={name: clock.now_iso()})
        if not rotten:
            return decision


def prune(ctx: StackContext) -> list[str]:
    """Apply retention to the local store under the stack lock; returns the deleted set names."""
    with fs.exclusive_lock(ctx.lock_path, f"stack {ctx.spec.stack}"):
        decision = checked_prune_decision(ctx)
        delete_sets(ctx, decision.delete)
        return list(decision.delete)


def delete_sets(ctx: StackContext, names: tuple[str, ...] | list[str]) -> None:
    """Delete whole sets. The caller holds the lock and has applied the retention rules."""
    store = local_store(ctx)
    by_name = {s.name: s for s in group_sets(store.list(), store.name, ctx.spec.stack)}
    for name in names:
        if name not in by_name:
            continue
        # The manifest goes first: from then on the set is incomplete and never selected for a
        # restore, so an interrupted prune can never leave a "complete" set with missing members.
        files = sorted(by_name[name].files, key=lambda f: not f.name.endswith(MANIFEST_SUFFIX))
        for stored in files:
            store.delete(stored.name)
        log.info("deleted backup set %s from %s", name, store.describe())
    if names and ctx.spec.backup.continuous.enabled:  # the WAL only the deleted bases needed
        from reconciler.engine.wal import prune_segments

        prune_segments(ctx)


protect = records.protect  # the ProtectBackups step's entry point


def _reject(ctx: StackContext, store: str, set_name: str, reason: str) -> None:
    records.reject(ctx, store, set_name, reason)
    log.warning("backup set %s (%s) rejected: %s", set_name, store, reason)


def restore_empty_services(ctx: StackContext, action: RestoreFromBackup) -> str:
    """Restore on boot: one journaled operation (``engine/restore_op.py``)."""
    from reconciler.engine import restore_op

    return restore_op.restore_empty_services(ctx, action)
