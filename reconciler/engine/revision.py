"""The git revision of state.yaml: what ``lastAppliedRevision`` and backup manifests name, and what the
daemon follows.

Design decisions:
- GitOps means *commit*, not save. In a git repository the daemon adopts state.yaml as committed at
  HEAD (``git show HEAD:./state.yaml``), so a half-edited file in an editor is never applied by
  itself; a human running `plan`/`apply` works on the file and is told when it differs from the
  commit. Outside a repository, or while state.yaml is not committed yet, the file is what counts.
- The committed blob is size-checked before it is read (``git cat-file -s``): a hostile commit cannot
  make the daemon read more than the loader accepts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from reconciler.errors import CommandFailed
from reconciler.system import proc


def _git(directory: str, *args: str) -> str | None:
    try:
        result = proc.run(["git", "-C", directory, *args], timeout=10)
    except (CommandFailed, OSError):
        return None
    return result.stdout.decode(errors="replace").strip()


def state_revision(state_file: str) -> str | None:
    """``<commit>`` of the last commit touching the file, with ``-dirty`` when it has local edits."""
    directory = os.path.dirname(os.path.abspath(state_file))
    name = os.path.basename(state_file)
    commit = _git(directory, "log", "-1", "--format=%H", "--", name)
    if not commit:
        return None
    dirty = _git(directory, "status", "--porcelain", "--", name)
    return f"{commit}-dirty" if dirty else commit


@dataclass(frozen=True)
class Committed:
    """state.yaml as committed at HEAD."""

    commit: str  # the HEAD commit
    data: bytes


def committed_state(state_file: str, max_bytes: int) -> Committed | None:
    """state.yaml at HEAD, when the file is tracked in a git repository; None otherwise.

    A blob larger than ``max_bytes`` comes back truncated to ``max_bytes + 1`` bytes (never read
    whole), so the loader reports it as too large."""
    directory = os.path.dirname(os.path.abspath(state_file))
    name = os.path.basename(state_file)
    commit = _git(directory, "rev-parse", "--verify", "--quiet", "HEAD")
    if not commit:
        return None
    size = _git(directory, "cat-file", "-s", f"{commit}:./{name}")
    if not size or not size.isdigit():
        return None  # not committed (yet): the file is what counts
    if int(size) > max_bytes:
        return Committed(commit, b"\0" * (max_bytes + 1))
    try:
        blob = proc.run(["git", "-C", directory, "cat-file", "blob", f"{commit}:./{name}"], timeout=10)
    except (CommandFailed, OSError):
        return None
    return Committed(commit, blob.stdout)


def differs_from_commit(state_file: str) -> str | None:
    """The HEAD commit when the working state.yaml has edits that are not committed; else None."""
    directory = os.path.dirname(os.path.abspath(state_file))
    name = os.path.basename(state_file)
    if not _git(directory, "status", "--porcelain", "--", name):
        return None
    head = _git(directory, "rev-parse", "--verify", "--quiet", "HEAD")
    tracked = head and _git(directory, "cat-file", "-t", f"{head}:./{name}")
    return head[:12] if head and tracked else None
