"""Off-site copies: push complete local sets to Google Drive, prune Drive, fetch sets back for a restore.

Design decisions:
- Drive only ever receives *complete* local sets, uploaded file by file with the manifest last: a set
  cut short by a crash or an outage lacks its manifest on Drive, is never selected for a restore, and
  the next sync completes it (members already there with the right size and md5 are not sent again).
- Nothing on Drive is deleted because it is missing locally (RAM mode may keep only one local set);
  Drive has its own retention (``gdrive.retention``, default: the local policy).
- A failed upload never fails the backup that produced the set: the set stays local, the failure is
  recorded, and the next sync (or the daemon) retries. A full Drive is refused up front (about.get).
- Restoring from Drive downloads the set into the local store first (atomic per file), then the
  ordinary local checks and restore run: one restore path, whatever the store.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime

from reconciler.engine import backups, status
from reconciler.engine.context import StackContext
from reconciler.errors import PermanentError, ReconcilerError
from reconciler.plan.backupsets import MANIFEST_SUFFIX, BackupSet, group_sets, retention
from reconciler.stores.gdrive import GdriveStore, file_md5
from reconciler.system import failpoints

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
        result.pruned = prune_remote(ctx, store)
    except ReconcilerError as exc:
        backups._update_records(
            ctx, last_upload={"finished": status.now_iso(), "result": "failed", "error": str(exc)}
        )
        raise
    backups._update_records(
        ctx,
        last_upload={"finished": status.now_iso(), "result": "success", "uploaded": result.uploaded},
        remote_sets=sorted(_complete_remote_names(store, ctx)),
    )
    return result


def _complete_remote_names(store: GdriveStore, ctx: StackContext) -> list[str]:
    return [s.name for s in remote_sets(ctx, store) if s.complete]


def prune_remote(ctx: StackContext, store: GdriveStore) -> list[str]:
    policy = ctx.spec.backup.stores.gdrive.retention or ctx.spec.backup.retention
    sets = remote_sets(ctx, store)
    record = backups.records(ctx)
    verified = frozenset(name for name, v in record.get("verified", {}).items() if v.get("ok"))
    decision = retention(
        sets, policy, datetime.now(UTC), verified, False, frozenset(record.get("protected", []))
    )
    by_name = {s.name: s for s in sets}
    for name in decision.delete:
        files = sorted(
            by_name[name].files, key=lambda f: not f.name.endswith(MANIFEST_SUFFIX)
        )  # manifest first
        for stored in files:
            store.delete(stored.name)
    return list(decision.delete)


def fetch_set(ctx: StackContext, set_name: str) -> None:
    """Download a set from Drive into the local store, so the local checks and restore can run."""
    store = drive_store(ctx)
    if store is None:
        raise PermanentError("backup.stores.gdrive is not enabled in state.yaml")
    local = backups.local_store(ctx)
    local.ensure_private_dir()
    remote = next((s for s in remote_sets(ctx, store) if s.name == set_name), None)
    if remote is None or not remote.complete:
        raise PermanentError(f"backup set {set_name} is not complete on {store.describe()}")
    present = {f.name: f.size for f in local.list()}
    # members first, manifest last: an interrupted fetch leaves an incomplete (ignored) local set
    for stored in sorted(remote.files, key=lambda f: f.name.endswith(MANIFEST_SUFFIX)):
        if present.get(stored.name) != stored.size:
            store.download(stored.name, os.path.join(local.path, stored.name))
