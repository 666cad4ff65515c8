"""When a Stalled daemon may try again: the world it stalled on, reduced to the facts that matter.

Design decisions:
- Stalled means "no retry until state.yaml or the observed world changes". The old test compared the
  *plan* before and after, which changes by itself: a mode switch's description carries the data
  size (every write changes it) and a failed switch leaves a pre-switch backup set behind, which makes
  retention pending. So a switch failing at ``verify`` was retried every resync, each attempt cutting
  writes for a second and leaving one more set behind.
- The key is taken from an observation made *after* the failed attempt, so whatever the attempt
  itself left behind (a new set, restarted services with new pids) is part of the baseline and does
  not count as a change.
- Only facts someone acts on are in the key: which services run (and their pids: a human restarting
  one is a change), where their data is, what the directories hold, the RAM root's mount, the journal,
  the backup sets and what the records say about them. Volatile figures (sizes, used bytes, free
  memory) are left out: they move with every write and would turn Stalled back into a retry loop.
- A *blocked* plan is different: nothing was attempted, re-planning costs one observation, and a
  blocker may lift by a figure (memory freed). The loop re-plans it every pass and reports a blocker
  again only when its wording changes beyond the numbers in it (``blocker_key``).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable

from reconciler.plan.observed import DataDir, Filesystem, ObservedState


def _filesystem(fs: Filesystem | None) -> Hashable:
    return None if fs is None else (fs.mount_point, fs.fstype, fs.size_bytes, fs.options)


def _directory(d: DataDir) -> Hashable:
    return (d.path, d.exists, d.initialized, d.foreign, d.reachable, d.stale, _filesystem(d.filesystem))


def world_key(observed: ObservedState) -> tuple[Hashable, ...]:
    services = tuple(
        (
            name,
            s.running,
            s.pid,
            s.port,
            s.data_dir,
            s.died,
            _directory(s.ram),
            _directory(s.disk),
            s.databases,
            s.roles,
            s.drift,
            s.unmanaged_mount,
            s.container,
        )
        for name, s in sorted(observed.services.items())
    )
    root = observed.ram_root
    backups = observed.backups
    return (
        services,
        (root.path, root.exists, root.dedicated_mount, _filesystem(root.filesystem)),
        tuple(sorted((s.store, s.name, s.complete) for s in backups.sets)),
        backups.verified,
        backups.newest_attempt_failed,
        tuple(sorted(backups.rejected.items())),
        backups.protected,
        observed.operation,
        observed.host.is_root,
    )


_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def blocker_key(blockers: Iterable[str]) -> tuple[str, ...]:
    """Blockers with their figures blanked: "needs 1.2 GiB" and "needs 1.3 GiB" are the same news."""
    return tuple(sorted(_NUMBER.sub("#", b) for b in blockers))
