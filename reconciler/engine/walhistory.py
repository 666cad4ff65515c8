"""Timeline history files (``<timeline>.history``): shipped like segments, staged before a recovery.

Design decisions (review15, issue 15):
- A recovery promotes onto a new timeline, numbered one above the newest timeline whose history file
  PostgreSQL finds. It looks in ``pg_wal`` only (``restore_command = '/bin/false'``), and a recovered
  data directory holds no history of an abandoned recovery: without these files a second recovery
  from the same base reused the first one's timeline number, and the store then held authenticated
  segments of the abandoned history under the names the new timeline writes (the chain prefers a
  complete store segment over the spool's copy, hiding the new segment in progress).
- So the history files ``pg_receivewal`` receives are sealed and authenticated into the WAL area
  exactly like segments (``backup/walseg``, stem ``<timeline>.history``; ``walseg.listing`` and
  retention ignore them: they are tiny and a timeline number must stay taken), and every authentic
  one is staged into ``pg_wal`` before recovery starts: PostgreSQL then picks a fresh number.
  One that does not authenticate is skipped (said once): it would only ever raise the number.
- Recovery follows the base's own timeline (``recovery_target_timeline = 'current'``, set by
  ``engine/recovery``): the chain (``plan/walchain``) stages that timeline only, and with the
  default ``latest`` a staged history of an abandoned timeline would make PostgreSQL switch to it
  at its branch point and end recovery there, for want of its segments.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from typing import Any

from reconciler.backup import walseg
from reconciler.backup.create import Sealing
from reconciler.errors import ReconcilerError

log = logging.getLogger(__name__)

HISTORY_RE = re.compile(r"^[0-9A-F]{8}\.history$")
_SIDECAR = ".wal.json"


def is_history(name: str) -> bool:
    return bool(HISTORY_RE.match(name))


def ship_new(
    store: walseg.Area, directory: str, sealing: Sealing, stack: str, sysid: str, shipped: set[str]
) -> None:
    """Seal the history files in the receive directory not yet shipped by this shipper into ``store``
    (the file stays: ``pg_receivewal`` looks for it there). A failure is retried on the next tick."""
    for name in sorted(n for n in os.listdir(directory) if is_history(n) and n not in shipped):
        try:
            walseg.ship(store, os.path.join(directory, name), name, sealing, stack, sysid)
        except (ReconcilerError, OSError) as exc:
            # retried every tick: the store's outage is reported by the segments' shipping, once
            log.debug("continuous WAL: timeline history %s not shipped yet: %s", name, exc)
            return
        shipped.add(name)


def stored(store: walseg.Area) -> list[str]:
    """The history files in ``store`` that have their sidecar (unchecked: ``walseg.fetch`` checks)."""
    names = {f.name.removesuffix(_SIDECAR) for f in store.list() if f.name.endswith(_SIDECAR)}
    return sorted(n for n in names if is_history(n))


def stage(
    store: walseg.Area,
    raw_dirs: list[str],
    pg_wal: str,
    identity: Any,
    mac_key: bytes | None,
    stack: str,
    sysid: str,
) -> list[str]:
    """Write every authentic history file of the cluster into ``pg_wal``; returns their names."""
    staged = []
    for name in stored(store):
        try:
            walseg.fetch(store, name, os.path.join(pg_wal, name), identity, mac_key, stack, sysid)
        except walseg.SegmentRejected as exc:
            log.warning("timeline history skipped: %s", exc)
            continue
        staged.append(name)
    for directory in raw_dirs:  # the receive directory (RAM): as trusted as the data directory
        for name in sorted(n for n in os.listdir(directory) if is_history(n) and n not in staged):
            shutil.copyfile(os.path.join(directory, name), os.path.join(pg_wal, name))
            staged.append(name)
    return staged
