"""What local WAL retention may delete when Google Drive also keeps sets (placement ``spool``).

Design decisions (review15, issue 15):
- The local store and Drive keep sets by their own rules, and the off-site sync copies local WAL to
  Drive only when it runs. A segment local retention deletes before the sync uploaded it is lost to
  Drive for good: a point-in-time restore from a Drive set older than every local set then meets a
  gap. So local retention deletes a segment only when Drive holds it already, or Drive's kept bases
  cannot replay it (``walchain.unneeded_in_cluster`` with Drive's bases).
- What Drive holds and which bases it keeps is what the last sync saw (recorded by the sync, read by
  local retention without a network call). Not knowing is conservative: with no record, or no Drive
  base recorded, nothing Drive lacks is deleted; the next sync uploads it and a later retention pass
  deletes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from reconciler.plan import walchain


def locally_deletable(
    unneeded_here: Iterable[str],
    cluster: str,
    drive_held: Iterable[str] | None,
    drive_starts: Mapping[str, Iterable[str]],
) -> list[str]:
    """The segments of ``cluster`` local retention may delete: those no local base needs
    (``unneeded_here``) that Drive either holds (``drive_held``, complete segments) or does not need.
    ``drive_held`` None means no Drive store: the local rule alone decides."""
    candidates = sorted(set(unneeded_here))
    if drive_held is None:
        return candidates
    held = set(drive_held)
    moot = set(walchain.unneeded_in_cluster(candidates, drive_starts, cluster))
    return [s for s in candidates if s in held or s in moot]
