"""The git revision of state.yaml, for ``lastAppliedRevision`` and backup manifests."""

from __future__ import annotations

import os

from reconciler.errors import CommandFailed
from reconciler.system import proc


def state_revision(state_file: str) -> str | None:
    """``<commit>`` of the last commit touching the file, with ``-dirty`` when it has local edits."""
    directory = os.path.dirname(os.path.abspath(state_file))
    name = os.path.basename(state_file)
    try:
        commit = proc.run(["git", "-C", directory, "log", "-1", "--format=%H", "--", name], timeout=10)
        if not commit.stdout.strip():
            return None
        dirty = proc.run(["git", "-C", directory, "status", "--porcelain", "--", name], timeout=10)
    except CommandFailed:
        return None
    revision = commit.stdout.decode().strip()
    return f"{revision}-dirty" if dirty.stdout.strip() else revision
