"""Can we vouch for a backup set from its manifest alone? The I/O half of retention's trust rule.

Design decisions:
- Retention, the schedule and the naming of new sets count only sets we can vouch for; the policy is
  pure (``plan/backupsets.py``), the evidence comes from here. A set is vouched for when its manifest
  reads as a manifest, authenticates under the identity (``manifest.verify``: the same rule restore
  applies), describes this very set name and this stack, and every member it lists is in the listing
  with the recorded size. That is cheap (one small file and an HMAC per set, no member is read), so
  it runs on every ``plan``; a flipped byte inside a member is verification's job.
- The answer is a reason or None, never an exception: a planted, truncated, foreign or unsigned set is
  an ordinary finding, reported and left alone, not a failure of the operation that looked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from reconciler.backup import manifest
from reconciler.errors import ReconcilerError
from reconciler.plan.backupsets import MANIFEST_SUFFIX, BackupSet
from reconciler.spec.model import StateSpec
from reconciler.stores.local import LocalStore

MAX_MANIFEST_BYTES = 4 * 1024 * 1024


def doubt(
    backup_set: BackupSet, read: Callable[[str], bytes], mac_key: bytes | None, stack: str
) -> str | None:
    """Why ``backup_set`` cannot be vouched for, or None when it can. ``read(file name)`` returns the
    stored bytes of one file of the store (at most ``MAX_MANIFEST_BYTES`` are looked at)."""
    if not backup_set.complete:
        return "incomplete: it has no manifest"
    manifest_file = f"{backup_set.name}{MANIFEST_SUFFIX}"
    if any(f.name == manifest_file and f.size > MAX_MANIFEST_BYTES for f in backup_set.files):
        return "its manifest is too large to be one of ours"
    try:
        data = read(manifest_file)
    except OSError as exc:
        return f"its manifest cannot be read ({exc.strerror or exc})"
    if len(data) > MAX_MANIFEST_BYTES:
        return "its manifest is too large to be one of ours"
    try:
        document = manifest.decode(data)
        manifest.verify(document, mac_key)
    except manifest.ManifestRejected as exc:
        return str(exc)
    if document.get("set") != backup_set.name:
        return f"its manifest describes another set ({document.get('set')})"
    if document.get("stack") != stack:
        return f"it belongs to another stack ({document.get('stack')})"
    sizes = {f.name: f.size for f in backup_set.files}
    for member in document["members"]:
        if not isinstance(member, dict):
            return "its manifest lists a malformed member"
        name = str(member.get("file"))
        if name not in sizes:
            return f"member {name} is missing"
        if sizes[name] != member.get("size"):
            return f"member {name} holds {sizes[name]} bytes, the manifest says {member.get('size')}"
    return None


def mac_key_for(spec: StateSpec) -> tuple[bytes | None, str | None]:
    """(the key manifests authenticate under, None) or (None, why it is unavailable)."""
    from reconciler.backup import keys  # imported on demand: a routine ``plan`` with no sets skips it
    from reconciler.backup.create import identity_for_restore

    try:
        identity = identity_for_restore(spec)
    except (ReconcilerError, OSError, ValueError) as exc:
        return None, f"the identity to check it is unavailable ({exc})"
    return (keys.mac_key(identity) if identity is not None else None), None


def store_doubts(
    spec: StateSpec, sets: Iterable[BackupSet], read: Callable[[str], bytes]
) -> dict[str, str | None]:
    """``doubt`` for every complete set of one store, reading manifests through ``read``."""
    complete = [s for s in sets if s.complete]
    if not complete:
        return {}
    key, unavailable = mac_key_for(spec)
    if unavailable is not None:
        return {s.name: unavailable for s in complete}
    return {s.name: doubt(s, read, key, spec.stack) for s in complete}


def local_doubts(spec: StateSpec, store: LocalStore, sets: Iterable[BackupSet]) -> dict[str, str | None]:
    """``store_doubts`` for the sets of a local store."""

    def read(name: str) -> bytes:
        with store.open(name) as handle:
            return bytes(handle.read(MAX_MANIFEST_BYTES + 1))

    return store_doubts(spec, [s for s in sets if s.store == store.name], read)
