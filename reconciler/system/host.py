"""Read-only facts about the host from /proc: mounts, memory, processes and their sockets.

Design decision: read /proc directly instead of shelling out to ``findmnt``, ``ss`` or ``ps``. It is
an order of magnitude faster (observation runs on every reconcile), needs no extra packages on a Pi,
and the parsers are small pure functions that are tested on captured text.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass

from reconciler.plan.observed import Filesystem


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str
    options: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        rest = right.split()
        if len(fields) < 6 or len(rest) < 3:
            continue
        mounts.append(Mount(_unescape(fields[4]), rest[0], rest[2]))
    return mounts


def read_mounts() -> list[Mount]:
    with open("/proc/self/mountinfo") as handle:
        return parse_mountinfo(handle.read())


def mount_for(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount that ``path`` lives on: the last-mounted, longest matching mount point."""
    path = os.path.normpath(path)
    best: Mount | None = None
    for mount in mounts:
        point = mount.mount_point
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mount_point)):
            best = mount
    return best


def nearest_existing(path: str) -> str:
    path = os.path.normpath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def filesystem_of(path: str, mounts: list[Mount] | None = None) -> Filesystem | None:
    mounts = read_mounts() if mounts is None else mounts
    existing = nearest_existing(path)
    mount = mount_for(existing, mounts)
    if mount is None:
        return None
    size: int | None = None
    used: int | None = None
    try:
        st = os.statvfs(existing)
        size = st.f_blocks * st.f_frsize
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
    except OSError:
        pass
    return Filesystem(mount.mount_point, mount.fstype, size, used, mount.options)


def parse_meminfo(text: str) -> dict[str, int]:
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return values


def memory() -> tuple[int, int]:
    """(MemTotal, MemAvailable) in bytes."""
    with open("/proc/meminfo") as handle:
        info = parse_meminfo(handle.read())
    return info.get("MemTotal", 0), info.get("MemAvailable", 0)


def tree_size(path: str) -> int:
    """Bytes in the regular files below ``path`` (like ``du --apparent-size``), without following links."""
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue  # a server deleted it while we walked
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
    return total


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def process_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]
    except (FileNotFoundError, ProcessLookupError):
        return []


def process_cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def processes_in(directory: str) -> set[int]:
    """Pids of processes whose working directory is ``directory`` (or below it)."""
    directory = os.path.normpath(directory)
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            cwd = process_cwd(int(entry))
            if cwd and (cwd == directory or cwd.startswith(directory + "/")) and process_alive(int(entry)):
                found.add(int(entry))
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def parse_listening(text: str) -> dict[str, int]:
    """/proc/net/tcp{,6} → {socket inode: port} for sockets in LISTEN state (0A)."""
    listening = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 9 and fields[3] == "0A":
            listening[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    return listening


def listening_sockets() -> dict[str, int]:
    """Every listening TCP socket on the host: {inode: port}. Read once per observation."""
    listening: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                listening.update(parse_listening(handle.read()))
        except FileNotFoundError:
            continue
    return listening


def listening_ports(pid: int, sockets: dict[str, int] | None = None) -> set[int]:
    inodes = _socket_inodes(pid)
    if not inodes:
        return set()
    sockets = listening_sockets() if sockets is None else sockets
    return {port for inode, port in sockets.items() if inode in inodes}


def is_root() -> bool:
    return os.geteuid() == 0


def service_account(preferred: str) -> tuple[str | None, int, int]:
    """(user name to run as, uid, gid): ``preferred`` system user when root, else ourselves."""
    if os.geteuid() != 0:
        return None, os.getuid(), os.getgid()
    try:
        entry = pwd.getpwnam(preferred)
    except KeyError:
        entry = pwd.getpwnam("postgres") if preferred != "postgres" else None  # type: ignore[assignment]
        if entry is None:
            raise
    return entry.pw_name, entry.pw_uid, entry.pw_gid


def reachable_by(path: str, uid: int, gid: int) -> bool:
    """Can a process with ``uid``/``gid`` traverse every existing parent directory of ``path``?"""
    if uid == 0 or uid == os.getuid():
        return True
    current = os.path.dirname(os.path.normpath(path))
    while True:
        try:
            st = os.stat(current)
        except FileNotFoundError:
            pass
        else:
            if st.st_uid == uid:
                allowed = bool(st.st_mode & 0o100)
            elif st.st_gid == gid:
                allowed = bool(st.st_mode & 0o010)
            else:
                allowed = bool(st.st_mode & 0o001)
            if not allowed:
                return False
        parent = os.path.dirname(current)
        if parent == current:
            return True
        current = parent
