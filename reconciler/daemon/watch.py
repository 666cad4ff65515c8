"""Wake-ups: state.yaml saved, a new git commit of it, or a service process that exited.

Design decisions:
- The directory holding state.yaml is watched, not the file: editors and ``git checkout`` replace the
  file by renaming a new one over it, which a watch on the old inode would miss. The watch is not
  recursive, because the disk-mode data directories often live below that directory and PostgreSQL
  writes there constantly.
- For commits, ``HEAD``, ``packed-refs`` and ``refs/heads`` of the enclosing git directory are watched.
- A change only *wakes* the loop (level-triggered): the pass that follows reads state.yaml and observes
  the world afresh, so a burst of saves coalesces into one reconcile and a missed event costs at most
  one resync period.
- Service processes are watched through pidfds (``os.pidfd_open``), not by waiting for the resync:
  the local runtime's servers are daemonized (not our children, so ``waitpid`` cannot see them), but a
  pidfd becomes readable the moment its process exits, whoever its parent is. One thread blocks in
  ``poll`` on the pidfds plus a self-pipe (used to re-arm and to stop): zero CPU while nothing happens.
- The docker runtime's containers are watched through the Engine's event stream instead
  (``ContainerWatcher``: ``die`` and ``destroy`` of the stack's containers). A pidfd of the container's
  main process would work only while the reconciler shares the host's pid namespace; in a container
  of its own (compose/) ``State.Pid`` means nothing to it. The stream is one long-lived request on
  its own client (docker-py clients are not shared across threads here), blocking with no timeout;
  when the engine goes away the watcher reconnects with a capped backoff, and the resync covers the gap.
  ``docker rm -f`` sends ``die`` while the container still exists, marked for removal (it cannot be
  started, nor its name reused): that ``die`` is skipped and the ``destroy`` that follows wakes the loop.
- The loop re-arms the watcher after every pass with the pids it has just observed (level-triggered:
  the watcher remembers nothing the observation does not confirm). A pid that already fired is not
  armed again while the observation still names it (a zombie, or a pid of another pid namespace that
  ``pidfd_open`` cannot see): that would wake the loop in a busy circle. It is forgotten once the
  observation stops naming it, so a later process that reuses the number is watched again.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import threading
from collections.abc import Callable
from typing import Any

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


class ProcessWatcher:
    """Calls ``on_exit(service, "pid N")`` (from its own thread) the moment a watched process exits."""

    def __init__(self, on_exit: Callable[[str, str], None]) -> None:
        self.on_exit = on_exit
        self._lock = threading.Lock()
        self._wanted: dict[str, int] = {}
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.thread = threading.Thread(target=self._run, name="process-watcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def arm(self, pids: dict[str, int]) -> None:
        """Watch exactly these processes (service name → pid) from now on."""
        with self._lock:
            if pids == self._wanted or self._stopping:
                return
            self._wanted = dict(pids)
            self._poke()

    def stop(self) -> None:
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._poke()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        if not self.thread.is_alive():
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe already holds a wake-up
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        armed: dict[int, tuple[str, int]] = {}  # pidfd → (service, pid)
        fired: set[int] = set()  # pids that exited and that the observation still names
        try:
            while True:
                with self._lock:
                    if self._stopping:
                        return
                    wanted = dict(self._wanted)
                for fd, (name, pid) in list(armed.items()):
                    if wanted.get(name) != pid:
                        poller.unregister(fd)
                        os.close(fd)
                        del armed[fd]
                fired &= set(wanted.values())
                watching = {pid for _, pid in armed.values()}
                for name, pid in wanted.items():
                    if pid in watching or pid in fired:
                        continue
                    try:
                        fd = os.pidfd_open(pid)
                    except OSError as exc:
                        if exc.errno != errno.ESRCH:
                            raise
                        fired.add(pid)  # gone between the observation and now
                        self.on_exit(name, f"pid {pid}")
                        continue
                    armed[fd] = (name, pid)
                    poller.register(fd, select.POLLIN)
                for fd, _mask in poller.poll():  # blocks: no timeout, no CPU while nothing happens
                    if fd == self._wake_r:
                        os.read(self._wake_r, 4096)
                        continue
                    name, pid = armed.pop(fd)
                    poller.unregister(fd)
                    os.close(fd)
                    fired.add(pid)
                    self.on_exit(name, f"pid {pid}")
        except Exception as exc:  # the resync still heals; say why it is slower
            log.warning("watching service processes stopped (%s); deaths are noticed at the next resync", exc)
        finally:
            for fd in armed:
                os.close(fd)


class ContainerWatcher:
    """Calls ``on_exit(service, "container X: die")`` when a watched container stops or is removed."""

    EVENTS = ("die", "destroy")

    def __init__(self, on_exit: Callable[[str, str], None]) -> None:
        self.on_exit = on_exit
        self._lock = threading.Lock()
        self._wanted: dict[str, str] = {}  # container name → service
        self._stopping = threading.Event()
        self._stream: Any = None
        self.thread = threading.Thread(target=self._run, name="container-watcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def arm(self, containers: dict[str, str]) -> None:
        """Watch these containers (service name → container name) from now on."""
        with self._lock:
            self._wanted = {container: service for service, container in containers.items()}

    def stop(self) -> None:
        self._stopping.set()
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()  # unblocks the read in the watcher's thread
        if self.thread.is_alive():
            self.thread.join(timeout=5)

    def _run(self) -> None:
        from reconciler.runtimes.docker import connect_engine

        delay = 1.0
        while not self._stopping.is_set():
            try:
                client = connect_engine()
                self._stream = client.events(
                    decode=True, filters={"type": "container", "event": list(self.EVENTS)}
                )
                if self._stopping.is_set():
                    return
                delay = 1.0
                for event in self._stream:
                    actor = event.get("Actor") or {}
                    name = str((actor.get("Attributes") or {}).get("name", ""))
                    with self._lock:
                        service = self._wanted.get(name)
                    action = str(event.get("Action") or event.get("status"))
                    if service is not None and not (action == "die" and _being_removed(client, name)):
                        self.on_exit(service, f"container {name}: {action}")
            except Exception as exc:
                if self._stopping.is_set():
                    return
                log.warning(
                    "the Docker event stream failed (%s); reconnecting in %.0f s, the resync covers the gap",
                    exc,
                    delay,
                )
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, 60.0)


def _being_removed(client: Any, name: str) -> bool:
    try:
        state = client.api.inspect_container(name).get("State") or {}
    except Exception:  # gone already (404): the destroy event has been sent, or is on its way
        return True
    return bool(state.get("Status") == "removing")
