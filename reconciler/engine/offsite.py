"""Off-site copies: push complete local sets to Google Drive, prune Drive, fetch sets back for a restore.

Design decisions:
- Drive only ever receives *complete* local sets, uploaded file by file with the manifest last: a set
  cut short by a crash or an outage lacks its manifest on Drive, is never selected for a restore, and
  the next sync completes it (members already there with the right size and md5 are not sent again).
- Nothing on Drive is deleted because it is missing locally (RAM mode may keep only one local set);
  Drive has its own retention (``gdrive.retention``, default: the local policy), the same pure policy
  as the local store's: it counts only Drive sets we vouch for (``vouch_remote``: a manifest identical
  to a local one we vouch for is not downloaded again, any other is fetched and checked), keeps what
  it cannot vouch for (a file planted in a shared folder), and deletes nothing while the newest backup
  attempt failed.
- A failed upload never fails the backup that produced the set: the set stays local, the failure is
  recorded, and the next sync (or the daemon) retries. A full Drive is refused up front (about.get).
- Restoring from Drive downloads the set into the local store first (atomic per file), then the
  ordinary local checks and restore run: one restore path, whatever the store.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field

from reconciler.backup import vouch
from reconciler.backup.restore import SetRejected
from reconciler.engine import backups, records, waloffsite
from reconciler.engine.context import StackContext
from reconciler.errors import PermanentError, ReconcilerError, TransientError, coded
from reconciler.plan.backupsets import MANIFEST_SUFFIX, BackupSet, group_sets, retention
from reconciler.plan.failures import FailureCode
from reconciler.plan.faults import Stage
from reconciler.plan.hosts import retained_here
from reconciler.stores.gdrive import GdriveStore, file_md5
from reconciler.system import clock, failpoints

log = logging.getLogger(__name__)


def drive_store(ctx: StackContext, attempts: int = 8, deadline: float = 600) -> GdriveStore | None:
    spec = ctx.spec.backup.stores.gdrive
    if not spec.enabled or not spec.credentials_file:
        return None
    return GdriveStore(spec, ctx.spec.resolve(spec.credentials_file), attempts, deadline)


@dataclass
class SyncResult:
    uploaded: list[str] = field(default_factory=list)  # set names completed on Drive
    pruned: list[str] = field(default_factory=list)
    bytes_sent: int = 0


def remote_sets(ctx: StackContext, store: GdriveStore) -> list[BackupSet]:
    return group_sets(store.list(), store.name, ctx.spec.stack)


def upload_set(ctx: StackContext, store: GdriveStore, backup_set: BackupSet, remote: dict[str, int]) -> int:
    """Upload one complete local set, members first, manifest last; skip files already there intact."""
    local = backups.local_store(ctx)
    members = sorted(backup_set.files, key=lambda f: f.name.endswith(MANIFEST_SUFFIX))
    sent = 0
    for index, stored in enumerate(members):
        path = os.path.join(local.path, stored.name)
        if remote.get(stored.name) == stored.size and store.remote_md5(stored.name) == file_md5(path):
            continue
        if stored.name in remote:
            store.delete(stored.name)  # a different file under that name: never trust it
        store.upload(stored.name, path)
        sent += stored.size
        if index == 0:
            failpoints.hit("gdrive.between-members")
    return sent


def sync(ctx: StackContext, attempts: int = 8, deadline: float = 600) -> SyncResult:
    """Upload every complete local set missing (or incomplete) on Drive, then apply Drive retention.

    ``attempts``/``deadline`` bound the retries of each Drive call; the daemon passes small ones and
    retries whole syncs with its own backoff, so an outage never holds a pass for minutes.
    """
    store = drive_store(ctx, attempts, deadline)
    if store is None:
        raise PermanentError("backup.stores.gdrive is not enabled in state.yaml")
    result = SyncResult()
    try:
        listing = store.list()
        remote_files = {f.name: f.size for f in listing}
        complete_remote = {s.name for s in group_sets(listing, store.name, ctx.spec.stack) if s.complete}
        local_sets = [listing.backup_set for listing in backups.list_sets(ctx) if listing.backup_set.complete]
        missing = [s for s in reversed(local_sets) if s.name not in complete_remote]  # oldest first
        needed = sum(s.size for s in missing)
        free = store.free_bytes() if missing else None
        if free is not None and needed > free:
            raise PermanentError(
                f"Google Drive has {free} bytes free, the {len(missing)} set(s) to upload need {needed}: "
                "free space on Drive or lower its retention (backup.stores.gdrive.retention)"
            )
        for backup_set in missing:
            result.bytes_sent += upload_set(ctx, store, backup_set, remote_files)
            result.uploaded.append(backup_set.name)
            log.info("uploaded backup set %s to %s", backup_set.name, store.describe())
        # after the sets: a dead disk still leaves Drive with base + WAL (engine/waloffsite)
        wal_root = os.path.join(backups.local_store(ctx).path, waloffsite.FOLDER)
        result.bytes_sent += waloffsite.upload_local_wal(ctx.spec, wal_root, attempts, deadline)
        result.pruned, vouched = prune_remote(ctx, store)
        waloffsite.prune_drive_wal(
            ctx.spec, store, vouched, backups.local_store(ctx).path, attempts, deadline
        )
    except ReconcilerError as exc:
        code = coded(exc, FailureCode.UPLOAD_ERROR).code
        records.update(
            ctx,
            last_upload={"finished": clock.now_iso(), "result": "failed", "error": str(exc), "code": code},
        )
        raise
    records.update(
        ctx,
        last_upload={"finished": clock.now_iso(), "result": "success", "uploaded": result.uploaded},
        remote_sets=vouched,  # complete Drive sets we vouch for: new set numbers go above them
    )
    return result


def vouch_remote(ctx: StackContext, store: GdriveStore, sets: list[BackupSet]) -> dict[str, str | None]:
    """Set name → None for each complete Drive set we can vouch for, else the reason we cannot. A
    manifest identical (md5) to the local one is read locally; any other is downloaded to be checked."""
    local = backups.local_store(ctx)
    scratch = tempfile.mkdtemp(prefix="vouch-", dir=ctx.state_dir)

    def read(name: str) -> bytes:
        path = os.path.join(local.path, name)
        if not (os.path.exists(path) and store.remote_md5(name) == file_md5(path)):
            path = os.path.join(scratch, name)
            store.download(name, path)
        with open(path, "rb") as handle:
            return handle.read(vouch.MAX_MANIFEST_BYTES + 1)

    try:
        return vouch.store_doubts(ctx.spec, sets, read)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def prune_remote(ctx: StackContext, store: GdriveStore) -> tuple[list[str], list[str]]:
    """Apply Drive retention; returns the deleted set names and the complete sets we vouch for."""
    policy = ctx.spec.backup.stores.gdrive.retention or ctx.spec.backup.retention
    sets = list(retained_here(tuple(remote_sets(ctx, store)), ctx.skipped_services))
    record = records.read(ctx)
    authenticity = vouch_remote(ctx, store, sets)
    decision = retention(
        sets,
        policy,
        clock.now(),
        record.verified,
        record.newest_attempt_failed,
        record.protected,
        authenticity=authenticity,
        require_verified=ctx.spec.daemon.verify_new_sets,
        rejected=record.rejected_in(store.name),
        superseded=record.superseded,
    )
    if decision.held_back:
        log.info("Drive retention on hold: %s", decision.held_back)
    by_name = {s.name: s for s in sets}
    for name in decision.delete:
        files = sorted(
            by_name[name].files, key=lambda f: not f.name.endswith(MANIFEST_SUFFIX)
        )  # manifest first
        for stored in files:
            store.delete(stored.name)
    vouched = sorted(
        name for name, why in authenticity.items() if why is None and name not in decision.delete
    )
    return list(decision.delete), vouched


def fetch_set(ctx: StackContext, set_name: str) -> None:
    """Download a set from Drive into the local store, so the local checks and restore can run.

    A local file is kept only when its size *and* md5 equal Drive's: a local member with flipped bytes
    of the same size (the corrupt local copy that made restore fall back to Drive in the first place)
    is replaced by Drive's copy, never checked a second time in place of it. A download whose md5
    differs from what Drive reports is a transfer fault (an error to retry), not the set's.
    """
    try:
        _fetch_set(ctx, set_name)
    except ReconcilerError as exc:  # a rejected set keeps its own code (auth_error, verify_error)
        raise coded(exc, FailureCode.DOWNLOAD_ERROR) from None


def _fetch_set(ctx: StackContext, set_name: str) -> None:
    store = drive_store(ctx)
    if store is None:
        raise PermanentError("backup.stores.gdrive is not enabled in state.yaml")
    local = backups.local_store(ctx)
    local.ensure_private_dir()
    remote = next((s for s in remote_sets(ctx, store) if s.name == set_name), None)
    if remote is None or not remote.complete:
        raise PermanentError(f"backup set {set_name} is not complete on {store.describe()}")
    # Its manifest is checked before any member is fetched: a set planted in a shared folder (a huge
    # sequence sorts it first) would otherwise fill the local disk with its members, a "host fault"
    # retried on every boot before any real set is tried.
    doubt = vouch_remote(ctx, store, [remote]).get(set_name, "its manifest could not be checked")
    if doubt is not None:
        raise SetRejected(
            set_name, f"its copy on {store.describe()} cannot be vouched for: {doubt}", Stage.AUTHENTICATE
        )
    present = {f.name: f.size for f in local.list()}
    # members first, manifest last: an interrupted fetch leaves an incomplete (ignored) local set
    for stored in sorted(remote.files, key=lambda f: f.name.endswith(MANIFEST_SUFFIX)):
        path = os.path.join(local.path, stored.name)
        md5 = store.remote_md5(stored.name)
        if present.get(stored.name) == stored.size and md5 is not None and file_md5(path) == md5:
            continue
        store.download(stored.name, path)
        if md5 is not None and file_md5(path) != md5:
            raise TransientError(
                f"{stored.name} downloaded from {store.describe()} has md5 {file_md5(path)}, Drive reports "
                f"{md5}: the transfer was damaged; it will be fetched again"
            )
