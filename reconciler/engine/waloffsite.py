"""Continuous WAL on Google Drive: where segments go with placement ``offsite``, the copy of the
spool's segments that follows the sets (placement ``spool``), reading them back for a recovery, and
Drive retention that understands chains.

Design decisions:
- Layout: ``<sets folder>/wal/<system identifier>/`` on Drive, the same names as the local WAL area
  (``<segment>[.partial].wal.zst[.age]`` and its signed ``.wal.json`` sidecar). A set listing of the
  sets folder ignores folders, and one folder per cluster keeps two histories apart as locally.
- ``DriveArea`` gives ``backup/walseg`` the interface of the local area (list, open, put_with,
  put_bytes, delete), so sealing, authentication and the "check before writing a byte" rule are one
  code path whatever the store. Bytes pass through a scratch directory in RAM (``<ram root>/
  wal-scratch``): with placement ``offsite`` nothing is written to persistent storage.
- Drive allows several files with one name, and the segment in progress is shipped again every
  ``interval``: a new copy is uploaded first and older copies are deleted after it, so a reader
  always finds one (the listing maps a name to the newest). A partial and its sidecar that disagree
  (a cut between the two uploads) fail the sidecar's sha256 and count as missing: the chain ends at
  the last complete segment, honestly.
- A segment leaves RAM only after Drive acknowledged it (md5 and size checked by the upload, then
  its sidecar stored). During an outage segments stay in the receive directory (and the replication
  slot keeps the server's copy); the Drive client's retries are short (the supervisor ticks every
  half second and retries on its own), and the outage is reported once as an event with the code
  ``upload_error``: the recovery point grows until Drive is back, then a second event says so.
- Recovery reads the local area first and Drive for what is not local (``Layered``): a spool machine
  replays its own copies, a new machine with only Drive replays Drive's. Every segment is
  authenticated by its sidecar either way. Drive being unreachable during a recovery is not fatal:
  the chain ends where the local segments end and the plan says why.
- Drive retention follows the local rule (``plan/walchain.unneeded`` per cluster): the kept bases are
  those of the Drive sets we vouch for, so a planted manifest cannot make segments look unneeded.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

from reconciler.backup import physical, walseg
from reconciler.engine import events, walhistory
from reconciler.errors import PermanentError, ReconcilerError
from reconciler.plan import walchain
from reconciler.plan.backupsets import StoredFile
from reconciler.plan.failures import FailureCode
from reconciler.spec.model import StateSpec
from reconciler.stores.base import PutResult
from reconciler.stores.gdrive import FolderMissing, GdriveStore, file_md5
from reconciler.stores.local import LocalStore
from reconciler.system import fs

log = logging.getLogger(__name__)

FOLDER = walseg.AREA  # "wal", below the sets folder
_DATA = ".wal.zst"  # backup/walseg's names: <stem>.wal.zst[.age] and its sidecar <stem>.wal.json
_SIDECAR = ".wal.json"
# The streaming shipper retries each Drive call briefly: the supervisor retries every tick anyway.
STREAM_ATTEMPTS = 3
STREAM_DEADLINE = 20.0


def enabled(spec: StateSpec) -> bool:
    gdrive = spec.backup.stores.gdrive
    return bool(gdrive.enabled and gdrive.credentials_file)


def drive(
    spec: StateSpec, *parts: str, attempts: int = 8, deadline: float = 600, create: bool = True
) -> GdriveStore:
    """The gdrive store scoped to ``<sets folder>/<parts...>``. Only writers create the folders
    (``create``): Drive allows two folders with one name, and a reader creating ``wal`` while the
    shipper does would leave the segments in a folder nobody finds."""
    gdrive = spec.backup.stores.gdrive
    if not enabled(spec):
        raise PermanentError("backup.stores.gdrive is not enabled in state.yaml")
    sub_path = "/".join(p for p in (gdrive.sub_path or "", *parts) if p)
    assert gdrive.credentials_file is not None
    return GdriveStore(
        gdrive.model_copy(update={"sub_path": sub_path}),
        spec.resolve(gdrive.credentials_file),
        attempts,
        deadline,
        create_folders=create,
    )


def scratch_dir(spec: StateSpec) -> str:
    return os.path.join(spec.ram_root, "wal-scratch")


def _scratch(directory: str, prefix: str) -> str:
    """A fresh temporary directory in the scratch area (created on first use: ``plan`` creates none)."""
    fs.ensure_dir(directory, 0o700)
    return tempfile.mkdtemp(prefix=prefix, dir=directory)


class DriveArea:
    """One cluster's WAL area on Drive, with the interface ``backup/walseg`` uses."""

    name = "gdrive"

    def __init__(self, store: GdriveStore, scratch: str) -> None:
        self.store = store
        self.scratch = scratch
        self._names: set[str] | None = None

    def describe(self) -> str:
        return self.store.describe()

    def list(self) -> builtins.list[StoredFile]:
        try:
            files = self.store.list()
        except FolderMissing:
            files = []  # nothing was ever shipped for this cluster
        self._names = {f.name for f in files}
        return files

    def open(self, name: str) -> BinaryIO:
        """The newest copy of ``name``; for a segment's data with several copies (a shipment of the
        segment in progress cut short), the newest one its newest sidecar describes."""
        ids = self.store.ids_named(name)
        if not ids:
            raise FileNotFoundError(name)
        stem, data, _ = name.partition(_DATA)
        wanted = self._described_sha256(f"{stem}{_SIDECAR}") if data and len(ids) > 1 else None
        tmp = _scratch(self.scratch, "get-")
        try:
            newest = None
            for index, file_id in enumerate(reversed(ids)):
                path = os.path.join(tmp, f"{index}")
                self.store.download(name, path, file_id)
                newest = newest or path
                if wanted is None or _sha256(path) == wanted:
                    return open(path, "rb")  # the caller closes it; the name goes at once
            assert newest is not None
            return open(newest, "rb")  # none matches: the caller's check says so
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _described_sha256(self, sidecar: str) -> str | None:
        """The sha256 the newest copy of ``sidecar`` names (unauthenticated: it only picks a copy;
        ``walseg.check`` authenticates the sidecar and checks the copy)."""
        try:
            with self.open(sidecar) as handle:
                document = json.loads(handle.read(64 * 1024))
        except (FileNotFoundError, ValueError):
            return None
        return str(document.get("sha256")) if isinstance(document, dict) else None

    def put_with(self, name: str, produce: Callable[[BinaryIO], None]) -> PutResult:
        tmp = _scratch(self.scratch, "put-")
        try:
            result = LocalStore(tmp).put_with(name, produce)
            self.replace(name, os.path.join(tmp, name))
            return result
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def put_bytes(self, name: str, data: bytes) -> PutResult:
        def write_all(out: BinaryIO) -> None:
            out.write(data)

        return self.put_with(name, write_all)

    def replace(self, name: str, path: str) -> None:
        """Upload ``path`` as ``name``. A segment's data keeps its older copies until the sidecar that
        describes the new one is stored: the sidecar is the commit point, so a cut anywhere leaves a
        consistent pair (the older one, or the newer one) that ``open`` finds."""
        older = self.store.ids_named(name) if name.endswith(_SIDECAR) else []
        self.store.upload(name, path)
        for file_id in older:
            self.store.delete_id(file_id)
        if name.endswith(_SIDECAR):
            stem = name.removesuffix(_SIDECAR)
            for data in (f"{stem}{_DATA}", f"{stem}{_DATA}.age"):
                for file_id in self.store.ids_named(data)[:-1]:
                    self.store.delete_id(file_id)
        if self._names is not None:
            self._names.add(name)

    def delete(self, name: str) -> None:
        if self._names is not None and name not in self._names:
            return  # not there when we last looked, and only we write here
        for file_id in self.store.ids_named(name):
            self.store.delete_id(file_id)
        if self._names is not None:
            self._names.discard(name)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def drive_area(
    spec: StateSpec, system_identifier: str, attempts: int = 8, deadline: float = 600, create: bool = True
) -> DriveArea:
    store = drive(spec, FOLDER, system_identifier, attempts=attempts, deadline=deadline, create=create)
    return DriveArea(store, scratch_dir(spec))


class ShippingArea(DriveArea):
    """The destination of the streaming shipper with placement ``offsite``: reports an outage once
    (the recovery point grows), and once more when Drive takes segments again."""

    def __init__(self, store: GdriveStore, scratch: str, state_dir: str, waiting: Callable[[], int]) -> None:
        super().__init__(store, scratch)
        self.state_dir = state_dir
        self.waiting = waiting
        self.failing: str | None = None

    def replace(self, name: str, path: str) -> None:
        try:
            super().replace(name, path)
        except (ReconcilerError, OSError) as exc:
            if self.failing is None:
                note_status(
                    self.state_dir,
                    "behind",
                    error=str(exc),
                    code=str(FailureCode.UPLOAD_ERROR),
                    waiting=self.waiting(),
                )
                events.emit(
                    self.state_dir,
                    "Warning",
                    "WalOffsiteBehind",
                    f"continuous WAL cannot reach {self.describe()} ({exc}); {self.waiting()} segment(s) wait "
                    "in RAM and the recovery point grows until Drive takes them",
                    code=str(FailureCode.UPLOAD_ERROR),
                )
            self.failing = str(exc)
            raise
        if self.failing is not None:
            self.failing = None
            note_status(self.state_dir, "caught_up")
            events.emit(
                self.state_dir,
                "Normal",
                "WalOffsiteCaughtUp",
                f"continuous WAL reaches {self.describe()} again; the waiting segments are being shipped",
            )


STATUS_FILE = "wal-offsite.json"


def note_status(state_dir: str, state: str, **details: Any) -> None:
    """What ``status`` shows as ``walOffsite``; written on a change of state only (not per tick)."""
    from reconciler.system import clock

    fs.atomic_write_json(
        os.path.join(state_dir, STATUS_FILE), {"state": state, "since": clock.now_iso(), **details}
    )


def status(state_dir: str) -> dict[str, Any] | None:
    """``behind`` (Drive unreachable: the recovery point grows, with the error and its code) or
    ``caught_up``; None when the off-site shipper never failed."""
    document = fs.read_json(os.path.join(state_dir, STATUS_FILE))
    return document if isinstance(document, dict) else None


def destination(spec: StateSpec, system_identifier: str, receive_dir: str) -> DriveArea | None:
    """Where the shipper puts segments: Drive with placement ``offsite``; None means the local area."""
    if spec.backup.continuous.placement != "offsite":
        return None

    def waiting() -> int:
        with contextlib.suppress(OSError):
            return sum(1 for n in os.listdir(receive_dir) if walchain.is_segment(n))
        return 0

    store = drive(spec, FOLDER, system_identifier, attempts=STREAM_ATTEMPTS, deadline=STREAM_DEADLINE)
    return ShippingArea(store, scratch_dir(spec), spec.state_path, waiting)


class Layered:
    """For a recovery: the local WAL area first, Drive's for what is not local."""

    def __init__(self, local: LocalStore, remote: DriveArea | None) -> None:
        self.local = local
        self.remote = remote
        self.unreachable: str | None = None
        self._local_names: set[str] = set()
        self.names: set[str] = set()  # of the last listing, both areas

    def list(self) -> builtins.list[StoredFile]:
        files = self.local.list()
        self._local_names = {f.name for f in files}
        if self.remote is not None:
            try:
                files += [f for f in self.remote.list() if f.name not in self._local_names]
            except ReconcilerError as exc:
                self.unreachable = str(exc)
                log.warning("WAL on Drive cannot be listed (%s); recovering from local WAL only", exc)
        self.names = {f.name for f in files}
        return files

    def from_drive(self, segment: str, partial: bool = False) -> bool:
        stem = f"{segment}.partial" if partial else segment
        return self.remote is not None and f"{stem}.wal.json" not in self._local_names

    def open(self, name: str) -> BinaryIO:
        if name in self._local_names or self.remote is None:
            return self.local.open(name)
        try:
            return self.remote.open(name)
        except ReconcilerError as exc:
            raise FileNotFoundError(f"{name} could not be read from Drive: {exc}") from None

    def put_with(self, name: str, produce: Callable[[BinaryIO], None]) -> PutResult:
        raise PermanentError("a recovery never writes WAL")

    def put_bytes(self, name: str, data: bytes) -> PutResult:
        raise PermanentError("a recovery never writes WAL")

    def delete(self, name: str) -> None:
        raise PermanentError("a recovery never deletes WAL")


def recovery_area(spec: StateSpec, local: LocalStore, system_identifier: str) -> Layered:
    remote = None
    if enabled(spec):
        try:
            remote = drive_area(spec, system_identifier, attempts=3, deadline=60, create=False)
        except (ReconcilerError, OSError) as exc:
            log.warning("WAL on Drive is unavailable: %s", exc)
    layered = Layered(local, remote)
    layered.list()
    return layered


def read_set_manifest(spec: StateSpec, set_name: str) -> bytes:
    """A set's manifest as stored on Drive (for ``plan``; the caller authenticates it)."""
    from reconciler.plan.backupsets import MANIFEST_SUFFIX

    store = drive(spec, attempts=3, deadline=60, create=False)
    scratch = _scratch(scratch_dir(spec), "manifest-")
    try:
        path = os.path.join(scratch, "manifest.json")
        store.download(f"{set_name}{MANIFEST_SUFFIX}", path)
        with open(path, "rb") as handle:
            return handle.read(4 * 1024 * 1024)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def fetch_set_before(ctx: Any, when: Any) -> str | None:
    """For ``restore --to`` when no local set fits (the disk was lost): fetch the newest complete Drive
    set taken before ``when`` that the local store lacks (vouched, then downloaded: ``offsite.fetch_set``);
    its WAL is then read from Drive like any other. None when Drive is off or holds no such set."""
    from reconciler.engine import backups, offsite

    if not enabled(ctx.spec):
        return None
    local = {listing.backup_set.name for listing in backups.list_sets(ctx)}
    store = drive(ctx.spec, attempts=3, deadline=60, create=False)
    try:
        remote = offsite.remote_sets(ctx, store)
    except FolderMissing:
        return None
    candidates = sorted(
        (s for s in remote if s.complete and s.created < when and s.name not in local),
        key=lambda s: s.created,
    )
    if not candidates:
        return None
    offsite.fetch_set(ctx, candidates[-1].name)
    return candidates[-1].name


# -- the off-site sync (placement spool) and Drive retention -------------------------------------


def upload_local_wal(spec: StateSpec, local_root: str, attempts: int, deadline: float) -> int:
    """Copy every complete local segment and timeline history (data, then sidecar) that Drive lacks;
    returns bytes sent."""
    if not os.path.isdir(local_root):
        return 0
    sent = 0
    for sysid in sorted(os.listdir(local_root)):
        local = LocalStore(os.path.join(local_root, sysid))
        complete, _ = walseg.listing(local)
        complete += walhistory.stored(local)  # timeline numbers taken (engine/walhistory)
        if not complete:
            continue
        area = drive_area(spec, sysid, attempts, deadline)
        remote = {f.name: f.size for f in area.list()}
        names = {f.name: f.size for f in local.list()}
        for segment in complete:
            files = sorted(n for n in names if n.startswith(f"{segment}.wal"))
            files.sort(key=lambda n: n.endswith(".wal.json"))  # the sidecar last
            if _on_drive(area, local.path, files, names, remote):
                continue
            for name in files:
                path = os.path.join(local.path, name)
                if remote.get(name) == names[name] and area.store.remote_md5(name) == file_md5(path):
                    continue
                area.replace(name, path)
                sent += names[name]
    if sent:
        log.info("uploaded %d bytes of WAL to Drive", sent)
    return sent


def _on_drive(
    area: DriveArea, local: str, files: builtins.list[str], sizes: dict[str, int], remote: dict[str, int]
) -> bool:
    """Drive holds this segment as stored locally: every file at its local size, and the sidecar (a
    few hundred bytes, naming the data's sha256) identical by md5. Only the sidecar is read: a week
    of WAL is not read back from the SD card on every sync (review15); the data's md5 was checked
    by its upload, and a restore authenticates it against the sidecar anyway."""
    sidecars = [n for n in files if n.endswith(_SIDECAR)]
    if len(sidecars) != 1 or any(remote.get(n) != sizes[n] for n in files):
        return False
    return area.store.remote_md5(sidecars[0]) == file_md5(os.path.join(local, sidecars[0]))


def base_starts(manifests: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """System identifier → first segments of the physical bases in these (vouched) manifests."""
    starts: dict[str, list[str]] = {}
    for document in manifests:
        for member in document.get("members", []):
            if member.get("content") == physical.CONTENT:
                starts.setdefault(str(member["system_identifier"]), []).append(str(member["start_segment"]))
    return starts


def _chunk_files(area: DriveArea) -> dict[str, str]:
    """Chunk file → its segment, from the area's last listing."""
    from reconciler.engine import walchunks

    parsed = {name: walchunks.parse(name) for name in area._names or ()}
    return {name: found[0] for name, found in parsed.items() if found is not None}


def prune_drive_wal(
    spec: StateSpec,
    sets_store: GdriveStore,
    vouched: list[str],
    local_path: str,
    attempts: int,
    deadline: float,
) -> list[str]:
    """Delete the Drive segments no vouched Drive set's base can replay (``walchain.unneeded``)."""
    from reconciler.plan.backupsets import MANIFEST_SUFFIX

    try:  # first: without WAL on Drive there is nothing to read the manifests for
        clusters = drive(spec, FOLDER, attempts=attempts, deadline=deadline, create=False).subfolders()
    except FolderMissing:
        clusters = []
    if not clusters:
        note_holdings(spec.state_path, {}, {})
        return []
    documents = []
    scratch = _scratch(scratch_dir(spec), "manifests-")
    try:
        for name in vouched:
            manifest_name = f"{name}{MANIFEST_SUFFIX}"
            path = os.path.join(local_path, manifest_name)
            if not (os.path.exists(path) and sets_store.remote_md5(manifest_name) == file_md5(path)):
                path = os.path.join(scratch, manifest_name)
                sets_store.download(manifest_name, path)
            with open(path, "rb") as handle:
                documents.append(json.loads(handle.read()))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    starts = base_starts(documents)
    deleted: list[str] = []
    held: dict[str, list[str]] = {}
    for sysid in clusters:
        area = drive_area(spec, sysid, attempts, deadline, create=False)
        complete, partial = walseg.listing(area)
        chunks = _chunk_files(area)  # the segment in progress as chunks (engine/walchunks)
        in_chunks = sorted(set(chunks.values()) - {*complete, *partial})
        # no kept base anywhere: never retention's job to decide a chain is moot (deletes nothing)
        gone = walchain.unneeded_in_cluster([*complete, *partial, *in_chunks], starts, sysid)
        for segment in gone:
            walseg.delete(area, segment)
            for name in (n for n, of in chunks.items() if of == segment):
                area.delete(name)
            deleted.append(segment)
        held[sysid] = sorted(set(complete) - set(gone))
    note_holdings(spec.state_path, held, starts)
    if deleted:
        log.info("Drive WAL retention deleted %d segment(s) no kept base can replay", len(deleted))
    return deleted


HOLDINGS_FILE = "wal-drive.json"


def note_holdings(state_dir: str, held: dict[str, list[str]], starts: dict[str, list[str]]) -> None:
    """What the sync leaves on Drive (complete segments per cluster, the kept bases' first segments):
    local WAL retention reads it to keep what Drive still needs and lacks (``plan/walkeep``)."""
    fs.atomic_write_json(os.path.join(state_dir, HOLDINGS_FILE), {"held": held, "starts": starts})


def holdings(spec: StateSpec) -> tuple[dict[str, list[str]], dict[str, list[str]]] | None:
    """(held, starts) as the last sync recorded them; ({}, {}) before the first sync (keep what Drive
    lacks); None without a Drive store (the local rule alone decides)."""
    if not enabled(spec):
        return None
    document = fs.read_json(os.path.join(spec.state_path, HOLDINGS_FILE))
    if not isinstance(document, dict):
        return {}, {}
    held, starts = document.get("held"), document.get("starts")
    return (held if isinstance(held, dict) else {}), (starts if isinstance(starts, dict) else {})
