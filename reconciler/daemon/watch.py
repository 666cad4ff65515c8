"""Wake-ups from the filesystem: state.yaml saved, or a new git commit of it.

Design decisions:
- The directory holding state.yaml is watched, not the file: editors and ``git checkout`` replace the
  file by renaming a new one over it, which a watch on the old inode would miss. The watch is not
  recursive, because the disk-mode data directories often live below that directory and PostgreSQL
  writes there constantly.
- For commits, ``HEAD``, ``packed-refs`` and ``refs/heads`` of the enclosing git directory are watched.
- A change only *wakes* the loop (level-triggered): the pass that follows reads state.yaml and observes
  the world afresh, so a burst of saves coalesces into one reconcile and a missed event costs at most
  one resync period.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def git_dir(start: str) -> str | None:
    directory = os.path.abspath(start)
    while True:
        candidate = os.path.join(directory, ".git")
        if os.path.isdir(candidate):
            return candidate
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


class StateWatcher:
    def __init__(self, state_file: str, wake: Callable[[str], None]) -> None:
        self.state_file = os.path.abspath(state_file)
        self.wake = wake
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="state-watcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    def _run(self) -> None:
        from watchfiles import watch

        logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every change at INFO

        directory = os.path.dirname(self.state_file)
        git = git_dir(directory)
        paths = [directory]
        git_refs = None
        if git is not None:
            git_refs = os.path.join(git, "refs", "heads")
            paths += [git, git_refs] if os.path.isdir(git_refs) else [git]
        watched_git = {os.path.join(git, "HEAD"), os.path.join(git, "packed-refs")} if git else set()

        def relevant(_change: object, path: str) -> bool:
            return (
                path == self.state_file
                or path in watched_git
                or (
                    git_refs is not None and path.startswith(git_refs + os.sep) and not path.endswith(".lock")
                )
            )

        try:
            for changes in watch(
                *paths,
                watch_filter=relevant,
                recursive=False,
                debounce=50,
                step=25,
                stop_event=self.stop_event,
                raise_interrupt=False,
            ):
                what = (
                    "state.yaml changed"
                    if any(p == self.state_file for _, p in changes)
                    else "new git commit"
                )
                self.wake(what)
        except Exception as exc:  # the periodic resync still converges; say why edits are not seen at once
            log.warning("watching %s stopped (%s); changes are picked up at the next resync", directory, exc)
