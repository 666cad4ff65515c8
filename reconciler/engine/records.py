"""The backup records of a stack (``<state_dir>/backups.json``): one typed view, changed under a lock.

Design decisions:
- One module owns the file. Take, restore, verify, retention, Drive sync and the daemon all record
  here; none of them reaches into another module's helpers for it.
- Every change is a read-modify-write under an exclusive ``flock`` on ``backups.json.lock``, held only
  for that change (milliseconds), never for the operation that produced it: ``verify`` (minutes) and
  Drive ``sync`` (minutes) run at the same time in the daemon and in a hand-run CLI, and without the
  lock the slower writer used to put back the document it read before the other's change. The lock is
  separate from the stack lock (``flock`` on ``<state_dir>/lock``), which long operations hold; the
  kernel releases it when a process dies, so it can never be left stale.
- Writes are atomic (temp + fsync + rename), so a reader without the lock sees the old or the new
  document, never half of one. Reads therefore take no lock.
- ``sequence`` is the high-water mark of set sequence numbers handed out (see ``plan/backupsets``): a new
  set's number is above it even when the sets that carried the old numbers were pruned or live only on
  Drive.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from reconciler.engine.context import StackContext
from reconciler.system import failpoints, fs

RECORDS_FILE = "backups.json"


def path(ctx: StackContext) -> str:
    return os.path.join(ctx.state_dir, RECORDS_FILE)


@dataclass(frozen=True)
class BackupRecords:
    """A read-only view of the records; ``document`` is what ``status`` shows."""

    document: dict[str, Any]

    def _section(self, key: str) -> dict[str, Any]:
        value = self.document.get(key)
        return value if isinstance(value, dict) else {}

    @property
    def last_attempt(self) -> dict[str, Any]:
        return self._section("last_attempt")

    @property
    def last_success(self) -> dict[str, Any]:
        return self._section("last_success")

    @property
    def last_restore(self) -> dict[str, Any] | None:
        value = self.document.get("last_restore")
        return value if isinstance(value, dict) else None

    @property
    def newest_attempt_failed(self) -> bool:
        return self.last_attempt.get("result") == "failed"

    @property
    def verifications(self) -> dict[str, dict[str, Any]]:
        """Set name → result of its last verification (``ok``, ``reason``, ``seconds``, ...)."""
        return {k: v for k, v in self._section("verified").items() if isinstance(v, dict)}

    @property
    def verified(self) -> frozenset[str]:
        """Sets whose last verification passed."""
        return frozenset(name for name, result in self.verifications.items() if result.get("ok"))

    @property
    def rejected(self) -> dict[tuple[str, str], str]:
        """(store, set) → why that copy cannot be restored."""
        return {
            (key.partition("/")[0], key.partition("/")[2]): str(reason)
            for key, reason in self._section("rejected").items()
        }

    def rejected_in(self, store: str) -> dict[str, str]:
        return {name: reason for (where, name), reason in self.rejected.items() if where == store}

    @property
    def superseded(self) -> frozenset[str]:
        """Sets a deliberate restore discarded: restore on boot never uses them."""
        value = self.document.get("superseded")
        return (
            frozenset(name for name in value if isinstance(name, str))
            if isinstance(value, list)
            else frozenset()
        )

    @property
    def protected(self) -> frozenset[str]:
        value = self.document.get("protected")
        return frozenset(str(v) for v in value) if isinstance(value, list) else frozenset()

    @property
    def remote_sets(self) -> tuple[str, ...]:
        value = self.document.get("remote_sets")
        return tuple(str(v) for v in value) if isinstance(value, list) else ()

    @property
    def sequence(self) -> int:
        value = self.document.get("sequence")
        return value if isinstance(value, int) and value >= 0 else 0


def read(ctx: StackContext) -> BackupRecords:
    document = fs.read_json(path(ctx))
    return BackupRecords(document if isinstance(document, dict) else {})


@contextlib.contextmanager
def changing(ctx: StackContext) -> Iterator[dict[str, Any]]:
    """Hold the records lock and yield the current document; it is written back when the block ends
    without an exception."""
    os.makedirs(ctx.state_dir, exist_ok=True)
    fd = os.open(f"{path(ctx)}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocking: another holder is only ever a few ms long
        document = fs.read_json(path(ctx))
        document = document if isinstance(document, dict) else {}
        failpoints.hit("records.changing")
        yield document
        fs.atomic_write_json(path(ctx), document)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def update(ctx: StackContext, **changes: Any) -> None:
    """Set top-level entries; a dict merges into an existing dict entry (one level deep)."""
    with changing(ctx) as document:
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(document.get(key), dict):
                document[key] = {**document[key], **value}
            else:
                document[key] = value


def protect(ctx: StackContext, names: Iterable[str]) -> None:
    """Keep these sets whatever retention says (an empty start on request: see ProtectBackups)."""
    with changing(ctx) as document:
        current = document.get("protected")
        document["protected"] = sorted(set(current if isinstance(current, list) else []) | set(names))


def reject(ctx: StackContext, store: str, set_name: str, reason: str) -> None:
    """Remember that this copy's content is at fault: it is not offered for a restore again."""
    update(ctx, rejected={f"{store}/{set_name}": reason})


def record_verification(ctx: StackContext, set_name: str, result: dict[str, Any]) -> None:
    """Store a verification result of the local copy; a pass clears that copy's rejection, a content
    failure (``result["rejects"]`` not False) records one, in the same change."""
    with changing(ctx) as document:
        verified = document.get("verified")
        document["verified"] = {**(verified if isinstance(verified, dict) else {}), set_name: result}
        rejected = document.get("rejected")
        rejected = dict(rejected) if isinstance(rejected, dict) else {}
        if result.get("ok"):
            rejected.pop(f"local/{set_name}", None)
        elif result.get("rejects", True):
            rejected[f"local/{set_name}"] = f"verification failed: {result.get('reason')}"
        document["rejected"] = rejected


def note_sequence(ctx: StackContext, sequence: int) -> None:
    """Raise the high-water mark of handed-out set sequence numbers (never lowers it)."""
    with changing(ctx) as document:
        current = document.get("sequence")
        document["sequence"] = max(sequence, current if isinstance(current, int) else 0)
