"""Physical recovery: a base backup plus every shipped WAL segment, to the last second or to a time.

Design decisions:
- Check first, then replay. The set (base included) is authenticated and checksummed by
  ``load_and_check`` before this runs; every WAL segment is authenticated and checksummed
  (``backup/walseg``) *before* PostgreSQL sees it, in chain order. The first segment that is missing,
  corrupt, planted or of another cluster ends the chain (``plan/walchain``): recovery stops at the
  last consistent point before it and the result says so, naming the segment and the reason.
  Segments after a gap are never replayed.
- The segments are staged into the new data directory's ``pg_wal`` by the reconciler (root, holding
  the identity), and PostgreSQL recovers with ``restore_command = '/bin/false'`` (archive recovery
  requires one; it finds nothing there and reads ``pg_wal``): the server's account never needs the
  secret identity, which a ``restore_command`` calling back into the reconciler would.
- The segment in progress ends the chain: from the receive directory when it survived (RAM: a
  restart without a power cut), else from the spool's chunks (placement ``spool``, about one second
  behind the last commit; each chunk authenticated, the first torn or bad one ends it, padded with
  zeros, which recovery reads as the end of WAL: ``backup/walspool``), else from the store
  (placement ``offsite``, at most ``interval`` behind). Segments that completed in the receive
  directory but were not shipped are used too: it is as trusted as the data directory.
- ``recovery_target_action = 'promote'``: the recovered server becomes a primary on a new timeline.
  The recovery settings are reset with ``ALTER SYSTEM RESET`` once it is promoted, so they never
  apply to a later start.
- A recovery target beyond the end of the chain makes PostgreSQL 15 stop with "recovery ended before
  configured recovery target was reached": that is reported as such, never as a successful restore.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from reconciler.backup import physical, pipeline, walseg, walspool
from reconciler.backup.restore import CheckedSet
from reconciler.databases import postgres as pg
from reconciler.engine import events, wal, walchunks, walhistory, waloffsite
from reconciler.engine.context import StackContext
from reconciler.errors import CommandFailed, HostFault, PermanentError, ReconcilerError
from reconciler.plan import faults, walchain
from reconciler.stores.local import LocalStore
from reconciler.system import proc

log = logging.getLogger(__name__)

SEGMENT_BYTES = 16 * 1024 * 1024
_PROMOTE_TIMEOUT = 900.0
_RECOVERY_SETTINGS = (
    "restore_command",
    "recovery_target_time",
    "recovery_target_action",
    "recovery_target_timeline",
)


@dataclass
class ChainPlan:
    """Which base and how much WAL a recovery will replay (also what ``plan`` can show)."""

    set: str
    base_stop: str
    segments: list[str]
    partial: str | None
    partial_source: str | None  # receive directory, spool (chunks), store, store on Google Drive
    gap: str | None
    after_gap: int
    rejected: dict[str, str] = field(default_factory=dict)
    spool_segments: list[str] = field(default_factory=list)
    spool_note: str | None = None  # where and why the spool's chunks of the partial stop early
    chunk_segments: list[str] = field(default_factory=list)  # complete segments rebuilt from the spool
    from_drive: int = 0  # how many of the replayed segments come from Google Drive (engine/waloffsite)
    drive_unreachable: str | None = None

    def describe(self) -> str:
        text = f"base {self.set} + {len(self.segments)} WAL segment(s)"
        if self.from_drive:
            text += f" ({self.from_drive} from Google Drive)"
        if self.drive_unreachable:
            text += f" (WAL on Google Drive could not be read: {self.drive_unreachable})"
        if self.partial:
            text += f" + the segment in progress {self.partial} (from the {self.partial_source})"
        if self.spool_note:
            text += f"; {self.spool_note}"
        if self.gap:
            why = self.rejected.get(self.gap, "it is missing")
            text += (
                f"; recovery stops at the last consistent point before segment {self.gap} ({why}); "
                f"{self.after_gap} later segment(s) are not replayed"
            )
        return text


def stop_segment(base: dict[str, Any]) -> str:
    return walchain.segment_name(
        int(base["stop_timeline"]), physical.lsn_value(str(base["stop_lsn"])) // SEGMENT_BYTES
    )


def chain_plan(
    ctx: StackContext, checked: CheckedSet, mac_key: bytes | None, verify: bool = True
) -> ChainPlan:
    """The chain from ``checked``'s base: every segment checked in order, the first bad one ends it
    (``verify=False``: from the listing alone, for ``plan``)."""
    base = checked.base()
    if base is None:
        raise PermanentError(f"backup set {checked.name} holds no physical base backup")
    sysid = str(base["system_identifier"])
    start = stop_segment(base)
    store = waloffsite.recovery_area(ctx.spec, wal.store_area(ctx.spec, sysid), sysid)
    complete, store_partials = walseg.listing(store)
    spool_names = [name for directory in raw_dirs(ctx, sysid) for name in os.listdir(directory)]
    spool_complete = [n for n in spool_names if walchain.is_segment(n)]
    spool_partials = [n.removesuffix(".partial") for n in spool_names if n.endswith(".partial")]
    chunked = sorted({s for d in spool_dirs(ctx, sysid) for s in walspool.segments(d)})
    whole = [s for s in chunked if spool_check(ctx, sysid, s, mac_key, whole=True) is None]
    chunked = [s for s in chunked if s not in whole]
    from_chunks = [s for s in whole if s not in complete]
    on_drive = walchunks.segments(store.names)  # placement ``offsite``: the segment in progress
    rejected: dict[str, str] = {}
    while True:
        chain = walchain.chain(
            start,
            {start, *complete, *spool_complete, *whole},
            {*store_partials, *spool_partials, *chunked, *on_drive},
            rejected,
        )
        newly = False
        for segment in chain.segments if verify else ():
            if (segment == start and segment not in complete) or segment in spool_complete:
                continue  # the base's own copy, or a local spool file
            if segment in from_chunks:
                continue  # spooled whole and authenticated (completed, not shipped before the cut)
            try:
                walseg.check(store, segment, mac_key, ctx.spec.stack, sysid)
            except walseg.SegmentRejected as exc:
                if segment in whole:
                    from_chunks.append(segment)  # the spool's copy is good
                    continue
                rejected[segment] = exc.reason
                newly = True
                break
        note = None
        if verify and not newly and chain.partial and chain.partial not in spool_partials:
            if chain.partial in chunked or chain.partial in on_drive:
                if chain.partial in chunked:
                    note = spool_check(ctx, sysid, chain.partial, mac_key)
                else:
                    binding = walspool.Binding(ctx.spec.stack, sysid, chain.partial)
                    found = walchunks.read(store, store.names, binding, mac_key, None, decode=False)
                    note = found.note(chain.partial)
                if note is None or not note.startswith("none of"):
                    break
                if chain.partial not in store_partials:
                    rejected[chain.partial] = note
                    newly = True
                    continue
                # nothing usable in the spool or the chunks: the store's copy
                (chunked if chain.partial in chunked else on_drive).remove(chain.partial)
            try:
                walseg.check(store, chain.partial, mac_key, ctx.spec.stack, sysid, partial=True)
            except walseg.SegmentRejected as exc:
                rejected[chain.partial] = exc.reason
                newly = True
        if not newly:
            break
    source = None
    if chain.partial is not None:
        source = "receive directory" if chain.partial in spool_partials else "store"
        source = "spool" if source == "store" and chain.partial in chunked else source
        source = walchunks.SOURCE if source == "store" and chain.partial in on_drive else source
    if source == "store" and chain.partial is not None and store.from_drive(chain.partial, partial=True):
        source = "store on Google Drive"
    drive_count = sum(1 for s in chain.segments if s in complete and store.from_drive(s))
    return ChainPlan(
        checked.name,
        start,
        list(chain.segments),
        chain.partial,
        source,
        chain.gap,
        chain.after_gap,
        rejected,
        [s for s in chain.segments if s in spool_complete],
        note if source in ("spool", walchunks.SOURCE) else None,
        [s for s in chain.segments if s in from_chunks and s not in spool_complete],
        drive_count,
        store.unreachable,
    )


def raw_dirs(ctx: StackContext, sysid: str) -> list[str]:
    """Where raw WAL files of the cluster may be: the receive directory only (RAM; a restart without a
    power cut), as trusted as the data directory. Never the spool directory on persistent storage: a
    raw file there carries no authentication (only sealed chunks do), so it could be planted."""
    directory = os.path.join(wal.receive_dir(ctx.spec), sysid)
    return [directory] if os.path.isdir(directory) else []


def spool_dirs(ctx: StackContext, sysid: str) -> list[str]:
    """The cluster's spool directories: the live one, then those a restore retired (``_retire_spool``).
    A retired one is removed only once a post-restore set exists; until then it holds the segment in
    progress of the timeline that set's predecessor replays (a second power cut before that set:
    the live spool then holds the new timeline's chunks only). Chunks are bound to their segment's
    name, which carries the timeline, so a retired file is used only for its own segment (review15)."""
    root = wal.spool_root(ctx.spec)
    retired = (
        sorted(n for n in os.listdir(root) if n.startswith(f"{sysid}.retired-"))
        if os.path.isdir(root)
        else []
    )
    return [os.path.join(root, sysid), *(os.path.join(root, n) for n in retired)]


def spool_dir_of(ctx: StackContext, sysid: str, segment: str) -> str:
    """The spool directory holding the most of ``segment`` (the live one when none holds it)."""
    have = [d for d in spool_dirs(ctx, sysid) if os.path.exists(walspool.path(d, segment))]
    if not have:
        return os.path.join(wal.spool_root(ctx.spec), sysid)
    return max(have, key=lambda d: os.path.getsize(walspool.path(d, segment)))


def spool_check(
    ctx: StackContext, sysid: str, segment: str, mac_key: bytes | None, whole: bool = False
) -> str | None:
    """None when every chunk of ``segment``'s spool file is whole and authentic (``whole``: and they
    cover the whole segment), else where and why they stop (``none of ...`` when not even the first
    one is usable)."""
    binding = walspool.Binding(ctx.spec.stack, sysid, segment)
    # a spool file that cannot be read (no file descriptors, an I/O error) is the host's fault: it
    # propagates, and is never a gap that would end the chain and be retired after the recovery
    _, found = walspool.read(spool_dir_of(ctx, sysid, segment), mac_key, binding)
    if found.problem is None:
        return "not the whole segment" if whole and found.end < walspool.SEGMENT_BYTES else None
    if not found.chunks:
        return f"none of the spool's chunks of {segment} is usable: {found.problem}"
    return f"the spool's chunks stop at WAL byte {found.end}: {found.problem}"


def extract_base(store: LocalStore, checked: CheckedSet, identity: Any, data_dir: str) -> None:
    """Decrypt the base's tar into ``data_dir`` (which must be empty) with ``tar``."""
    base = checked.base()
    assert base is not None
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    if os.listdir(data_dir) not in ([], [".reconciler-service.json"]):
        raise PermanentError(f"refusing to extract a base backup into {data_dir}: it is not empty")
    with (
        store.open(str(base["file"])) as source,
        proc.streaming(["tar", "-x", "-C", data_dir, "--no-same-owner"], stdin=proc.PIPE) as tar,
    ):
        pipeline.decrypt_decompress(source, tar.stdin, identity)


def stage_wal(
    ctx: StackContext,
    plan: ChainPlan,
    checked: CheckedSet,
    identity: Any,
    mac_key: bytes | None,
    data_dir: str,
) -> None:
    base = checked.base()
    assert base is not None
    sysid = str(base["system_identifier"])
    store = waloffsite.recovery_area(ctx.spec, wal.store_area(ctx.spec, sysid), sysid)
    raw = {name: os.path.join(d, name) for d in reversed(raw_dirs(ctx, sysid)) for name in os.listdir(d)}
    pg_wal = os.path.join(data_dir, "pg_wal")
    # the timelines taken before (an abandoned recovery's too): the promotion picks a fresh number
    walhistory.stage(store, raw_dirs(ctx, sysid), pg_wal, identity, mac_key, ctx.spec.stack, sysid)
    complete, _ = walseg.listing(store)
    for segment in plan.segments:
        target = os.path.join(pg_wal, segment)
        if segment in plan.spool_segments:
            shutil.copyfile(raw[segment], target)
        elif segment in plan.chunk_segments:
            from_spool(ctx, sysid, segment, identity, mac_key, target)
        elif segment in complete:
            walseg.fetch(store, segment, target, identity, mac_key, ctx.spec.stack, sysid)
    if plan.partial is not None:
        target = os.path.join(pg_wal, plan.partial)
        if plan.partial_source == "receive directory":
            shutil.copyfile(raw[f"{plan.partial}.partial"], target)
        elif plan.partial_source == "spool":
            from_spool(ctx, sysid, plan.partial, identity, mac_key, target)
        elif plan.partial_source == walchunks.SOURCE:
            binding = walspool.Binding(ctx.spec.stack, sysid, plan.partial)
            walchunks.stage(store, store.names, binding, mac_key, identity, target)
        else:  # the store: local, or Google Drive
            walseg.fetch(store, plan.partial, target, identity, mac_key, ctx.spec.stack, sysid, partial=True)


def from_spool(
    ctx: StackContext, sysid: str, segment: str, identity: Any, mac_key: bytes | None, target: str
) -> None:
    """``segment`` rebuilt from the spool's chunks (up to the first torn or bad one), zero-padded."""
    binding = walspool.Binding(ctx.spec.stack, sysid, segment)
    data, found = walspool.read(spool_dir_of(ctx, sysid, segment), mac_key, binding)
    with open(target, "wb") as out:
        out.write(walspool.rebuild(data, found, identity))


def write_recovery_settings(data_dir: str, target: datetime | None) -> None:
    # the base's own timeline only: the chain stages no other (engine/walhistory)
    lines = [
        "restore_command = '/bin/false'",
        "recovery_target_action = 'promote'",
        "recovery_target_timeline = 'current'",
    ]
    if target is not None:
        lines.append(f"recovery_target_time = '{target.isoformat()}'")
    with open(os.path.join(data_dir, "postgresql.auto.conf"), "a") as handle:
        handle.write("\n# reconciler: physical recovery (reset after promotion)\n" + "\n".join(lines) + "\n")
    open(os.path.join(data_dir, "recovery.signal"), "w").close()


def chown_tree(path: str, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def wait_promoted(ctx: StackContext, port: int) -> None:
    wait_promoted_at(ctx.runtime.endpoint("postgres", port))


def wait_promoted_at(endpoint: Any) -> None:
    deadline = time.monotonic() + _PROMOTE_TIMEOUT
    while True:
        with pg.connect(endpoint) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row is not None and row[0] is False:
                for setting in _RECOVERY_SETTINGS:
                    conn.execute(f"ALTER SYSTEM RESET {setting}")
                conn.execute("SELECT pg_reload_conf()")
                return
        if time.monotonic() > deadline:
            raise PermanentError(f"PostgreSQL was still recovering after {_PROMOTE_TIMEOUT:.0f} s")
        time.sleep(0.2)


@dataclass(frozen=True)
class Source:
    """A checked set with a base, and what reading it and its WAL needs."""

    store: LocalStore
    checked: CheckedSet
    identity: Any
    mac_key: bytes | None


def recover_into(
    ctx: StackContext,
    source: Source,
    data_dir: str,
    port: int,
    target: datetime | None = None,
    on_extracted: Callable[[], None] | None = None,
) -> ChainPlan:
    """Fill the empty ``data_dir`` from the set's base and its WAL chain, start, wait for promotion."""
    store, checked, identity, mac_key = source.store, source.checked, source.identity, source.mac_key
    plan = chain_plan(ctx, checked, mac_key)
    log.info("physical recovery: %s", plan.describe())
    extract_base(store, checked, identity, data_dir)
    stage_wal(ctx, plan, checked, identity, mac_key, data_dir)
    write_recovery_settings(data_dir, target)
    _, uid, gid = ctx.runtime.account("postgres")
    chown_tree(data_dir, uid, gid)
    os.chmod(data_dir, 0o700)
    if on_extracted is not None:
        on_extracted()
    try:
        ctx.runtime.start_service("postgres", data_dir, port)
    except Exception as exc:
        if target is not None:
            raise PermanentError(
                f"recovery to {target.isoformat()} did not complete: PostgreSQL stopped (a target after the "
                f"end of the shipped WAL ends recovery before it is reached; {plan.describe()}): {exc}"
            ) from None
        raise
    wait_promoted(ctx, port)
    return plan


def wanted(ctx: StackContext, checked: CheckedSet) -> bool:
    """Restore on boot goes physical when continuous protection is on and the set holds a base."""
    return ctx.spec.backup.continuous.enabled and checked.base() is not None


def boot_recover(
    ctx: StackContext,
    source: Source,
    data_dir: str,
    port: int,
    mark: Callable[[], None],
    undo: Callable[[], None],
) -> ChainPlan | None:
    """Restore on boot, physically: the plan replayed, or None after ``undo`` (the caller then restores
    the set's logical dump, which stays the proven path: a physical recovery that fails for any reason
    costs the seconds it took, never the restore)."""
    try:
        plan = recover_into(ctx, source, data_dir, port, None, mark)
    except Exception as exc:
        if host_fault(exc):  # the machine's, not the base's: retried, never the logical fallback
            undo()
            raise
        log.warning(
            "physical recovery from %s failed (%s); restoring its logical dump instead",
            source.checked.name,
            exc,
        )
        events.emit(
            ctx.state_dir,
            "Warning",
            "PhysicalRecoveryFailed",
            f"physical recovery from {source.checked.name} failed ({exc}); restored its logical dump instead",
        )
        undo()
        return None
    _retire_spool(ctx, source)
    if plan.spool_note:
        events.emit(ctx.state_dir, "Warning", "WalSpoolTruncated", f"restore on boot: {plan.spool_note}")
    if plan.gap:
        events.emit(ctx.state_dir, "Warning", "WalGap", f"restore on boot: {plan.describe()}")
    else:
        events.emit(ctx.state_dir, "Normal", "PhysicalRecovery", f"restore on boot: {plan.describe()}")
    return plan


def host_fault(exc: BaseException) -> bool:
    """A failure of the machine during a physical recovery (the reconciler's own reads and writes:
    spool, store, the new ``pg_wal`` on a full tmpfs; a tool that says so). Falling back to the
    logical dump for it would bring PostgreSQL back at the set's point, and once the new cluster has
    a base, retention deletes the old cluster's WAL: acknowledged writes lost for a host fault.
    It is retried instead, like any host fault of a restore (``plan.faults``)."""
    if isinstance(exc, OSError | HostFault):
        return True
    return isinstance(exc, CommandFailed) and faults.host_signature(exc.stderr_tail) is not None


def base_for_time(ctx: StackContext, when: datetime) -> tuple[Source, str]:
    """The newest vouched set holding a base that was taken before ``when`` (checked in full)."""
    from reconciler.backup import keys
    from reconciler.backup.create import identity_for_restore
    from reconciler.backup.restore import SetRejected, load_and_check
    from reconciler.engine import backups

    store = backups.local_store(ctx)
    identity = identity_for_restore(ctx.spec)
    mac_key = keys.mac_key(identity) if identity is not None else None
    reasons = []
    for attempt in range(2):  # the second time after fetching a set from Drive (engine/waloffsite)
        if attempt and not waloffsite.fetch_set_before(ctx, when):
            break
        doubts = backups.vouch_local(ctx)
        for listing in backups.list_sets(ctx):
            candidate = listing.backup_set
            if not candidate.complete or doubts.get(candidate.name, "not checked") is not None:
                continue
            if candidate.created >= when:
                continue
            try:
                checked = load_and_check(store, candidate.name, mac_key)
            except SetRejected as exc:
                reasons.append(f"{candidate.name}: {exc.reason}")
                continue
            base = checked.base()
            # the base must be consistent before the target: its stream ended before it (under the MAC)
            if (
                base is not None
                and datetime.fromisoformat(str(base.get("finished", "9999-12-31T00:00:00Z"))) < when
            ):
                return Source(store, checked, identity, mac_key), candidate.name
    raise PermanentError(
        f"no backup set with a physical base backup was taken before {when.isoformat()} "
        f"(backup.continuous must have been on then){'; rejected: ' + '; '.join(reasons) if reasons else ''}"
    )


def restore_to_time(ctx: StackContext, when: datetime) -> ChainPlan:
    """``reconciler restore --to TIME``: PostgreSQL as it was at ``when`` (Redis is not changed).

    The current data directory is kept aside until the recovered server is promoted, and put back if
    recovery fails. Then a ``post-restore`` set is taken at once: it becomes the newest set, so the next
    boot restores this state and not the old timeline's WAL past ``when``."""
    from reconciler.engine import backups
    from reconciler.engine.journal import Journal
    from reconciler.system import clock, fs

    with fs.exclusive_lock(ctx.lock_path, f"stack {ctx.spec.stack}"):
        pending = Journal.load(ctx.state_dir)
        if pending is not None:
            raise PermanentError(
                f"an interrupted {pending.doc['kind']} ({pending.id}) must reach a safe point first; "
                "run `reconciler apply`, then restore"
            )
        source, _ = base_for_time(ctx, when)
        data_dir, port = ctx.spec.data_dir("postgres"), ctx.spec.port("postgres")
        aside = f"{data_dir}.before-restore-{clock.now().strftime('%Y%m%dT%H%M%SZ')}"
        ctx.runtime.stop_service("postgres", data_dir)
        os.rename(data_dir, aside)
        from reconciler.engine.restore_op import mark_restoring

        try:  # the new directory is the reconciler's own (the docker runtime checks its marker)
            plan = recover_into(
                ctx,
                source,
                data_dir,
                port,
                when,
                lambda: mark_restoring(data_dir, ctx.spec.stack, "postgres", None),
            )
        except BaseException:
            with contextlib.suppress(Exception):
                ctx.runtime.stop_service("postgres", data_dir)
            shutil.rmtree(data_dir, ignore_errors=True)
            os.rename(aside, data_dir)
            ctx.runtime.start_service("postgres", data_dir, port)
            raise
        shutil.rmtree(aside)
        _retire_spool(ctx, source)
        backups.take_backup_locked(ctx, "post-restore", None)
    events.emit(
        ctx.state_dir, "Normal", "PointInTimeRestore", f"restored to {when.isoformat()}: {plan.describe()}"
    )
    return plan


def _retire_spool(ctx: StackContext, source: Source) -> None:
    """The spool of the old timeline goes aside: pg_receivewal resumes from the newest file it finds,
    which lies on the old timeline (past the recovered point after ``--to``), and the server refuses
    to stream from there ("disconnected", in a loop). After a restore on boot the retired files were
    replayed and are removed once the post-restore set holds them; after ``--to`` they are the only
    copy of the abandoned history's last seconds and are kept."""
    base = source.checked.base()
    assert base is not None
    for root in (wal.receive_dir(ctx.spec), wal.spool_root(ctx.spec)):
        spool = os.path.join(root, str(base["system_identifier"]))
        if os.path.isdir(spool):
            os.rename(spool, f"{spool}.retired-{int(time.time())}")


def parse_target(text: str) -> datetime:
    """``2026-11-22 14:03`` (this host's local time) or with an offset; always aware."""
    from reconciler.errors import InvalidInput

    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(
            f"--to {text!r} is not a time such as '2026-11-22 14:03' or '2026-11-22T14:03:00+01:00'"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.astimezone()


def preview(ctx: StackContext, actions: Any) -> list[str]:
    """For ``plan``: which base and how much WAL a planned restore on boot will replay. Reads the
    manifest (authenticated) and the WAL listing only; each segment is checked when it is replayed."""
    from reconciler.backup import manifest
    from reconciler.backup.create import identity_for_restore
    from reconciler.backup.keys import mac_key
    from reconciler.engine import backups
    from reconciler.plan.actions import RestoreFromBackup
    from reconciler.plan.backupsets import MANIFEST_SUFFIX

    if not ctx.spec.backup.continuous.enabled:
        return []
    action = next((a for a in actions if isinstance(a, RestoreFromBackup) and "postgres" in a.services), None)
    if action is None:
        return []
    store_name, set_name = action.candidates[0]
    if store_name not in ("local", "gdrive"):
        return [f"postgres: whether {set_name} replays WAL is known once it is fetched from {store_name}"]
    try:
        identity = identity_for_restore(ctx.spec)
        key = mac_key(identity) if identity is not None else None
        if store_name == "gdrive":  # only its manifest is read (checked below), from Drive
            document = manifest.decode(waloffsite.read_set_manifest(ctx.spec, set_name))
        else:
            with backups.local_store(ctx).open(f"{set_name}{MANIFEST_SUFFIX}") as handle:
                document = manifest.decode(handle.read(4 * 1024 * 1024))
        manifest.verify(document, key)
    except (OSError, manifest.ManifestRejected, ReconcilerError) as exc:
        return [f"postgres: cannot tell what {set_name} will replay ({exc})"]
    checked = CheckedSet(set_name, document)
    if checked.base() is None:
        return [f"postgres: {set_name} holds no base backup; its logical dump will be restored"]
    return [f"postgres: {chain_plan(ctx, checked, key, verify=False).describe()}"]


def after_boot(ctx: StackContext) -> None:
    """After a physical restore on boot: take a ``post-restore`` set at once (the caller holds the lock).

    The recovered server was promoted onto a new timeline, and a chain follows one timeline: until a
    base exists on the new one, the next power cut would replay the old chain and lose what was
    written since. A failure here is reported, never the restore's failure: the stack serves its data,
    and the scheduled backup retries."""
    from reconciler.engine import backups

    try:
        backups.take_backup_locked(ctx, "post-restore", None)
        for spool in (wal.receive_dir(ctx.spec), wal.spool_root(ctx.spec)):  # replayed, in the new base
            for name in os.listdir(spool) if os.path.isdir(spool) else []:
                if ".retired-" in name:
                    shutil.rmtree(os.path.join(spool, name), ignore_errors=True)
    except (ReconcilerError, OSError) as exc:
        log.warning("no post-restore set after the physical recovery: %s", exc)
        events.emit(
            ctx.state_dir,
            "Warning",
            "PostRestoreBackupFailed",
            f"no base on the new timeline yet ({exc}): until the next backup set, a power cut loses what "
            "is written from now on",
        )
