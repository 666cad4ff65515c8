"""The one place where the reconciler starts external programs.

Design decisions (borgmatic's "one subprocess choke point"):
- Every external command goes through ``run`` (capture, wait) or ``spawn`` (streaming pipes). That
  gives one place to log commands, drop privileges, enforce timeouts and turn failures into
  ``CommandFailed`` with the tail of stderr, and one place to audit for secrets.
- Secrets never travel in argv (visible to every user in /proc/*/cmdline); callers pass them in
  ``env`` (e.g. PGPASSWORD), and ``env`` is never logged. Servers we start (``inherit_env=False``)
  get a scrubbed environment: they outlive us, and /proc/<pid>/environ would keep our secrets.
- ``user``: PostgreSQL refuses to run as root, so commands for a service run as that service's
  unprivileged system user when the reconciler itself runs as root.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any

from reconciler.errors import CommandFailed

log = logging.getLogger(__name__)

_STDERR_TAIL = 2000


# What a long-lived server started by us may inherit from our environment: nothing else. The
# reconciler's environment holds secrets (POSTGRES_PASSWORD, BACKUP_ENCRYPTION_KEY, ...), and a server
# that outlives us would keep them in /proc/<pid>/environ for as long as it runs.
_SERVER_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ")


def _environment(env: Mapping[str, str] | None, inherit: bool = True) -> dict[str, str]:
    merged = dict(os.environ) if inherit else {k: os.environ[k] for k in _SERVER_ENV if k in os.environ}
    if env:
        merged.update(env)
    return merged


def run(
    argv: Sequence[str],
    *,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout: float | None = 120,
    check: bool = True,
    input_bytes: bytes | None = None,
    inherit_env: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command to completion, capturing its output.

    ``inherit_env=False`` for servers (and programs that start them): they get only ``env`` and the
    locale and PATH, never our secrets.
    """
    argv = list(argv)
    log.debug("run %s", " ".join(argv))
    try:
        result = subprocess.run(
            argv,
            input=input_bytes,
            capture_output=True,
            env=_environment(env, inherit_env),
            cwd=cwd,
            user=user,
            timeout=timeout,
            check=False,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise CommandFailed(argv, 127, f"{argv[0]} is not installed or not on PATH") from None
    except subprocess.TimeoutExpired:
        raise CommandFailed(argv, -1, f"timed out after {timeout} s") from None
    if check and result.returncode != 0:
        raise CommandFailed(argv, result.returncode, result.stderr.decode(errors="replace")[-_STDERR_TAIL:])
    return result


def spawn(
    argv: Sequence[str],
    *,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = subprocess.PIPE,
    stderr: int | IO[bytes] | None = subprocess.PIPE,
) -> subprocess.Popen[bytes]:
    """Start a command with pipes for streaming; the caller must ``wait`` and check its exit code."""
    argv = list(argv)
    log.debug("spawn %s", " ".join(argv))
    try:
        return subprocess.Popen(
            argv, stdin=stdin, stdout=stdout, stderr=stderr, env=_environment(env), user=user
        )
    except FileNotFoundError:
        raise CommandFailed(argv, 127, f"{argv[0]} is not installed or not on PATH") from None


def detach(argv: Sequence[str], *, user: str | None = None, log_path: str = os.devnull) -> None:
    """Start a server that outlives us and is not our child (``setsid -f`` forks it away, so no zombie
    is ever left for a long-running daemon to reap). It gets the scrubbed server environment and its
    output goes to ``log_path``; whether it came up is for the caller to observe."""
    argv = ["setsid", "-f", *argv]
    log.debug("detach %s", " ".join(argv))
    with open(log_path, "ab") as output:
        try:
            code = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                env=_environment(None, inherit=False),
                user=user,
                check=False,
                timeout=30,
            ).returncode
        except FileNotFoundError:
            raise CommandFailed(argv, 127, "setsid is not installed or not on PATH") from None
    if code != 0:
        raise CommandFailed(argv, code, f"could not start {argv[2]}; see {log_path}")


@contextlib.contextmanager
def streaming(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = subprocess.DEVNULL,
    start: Callable[[], Any] | None = None,
) -> Iterator[Any]:
    """Run a child that the caller feeds (``stdin=PIPE``) or reads (``stdout=PIPE``) as a stream.

    ``start`` replaces the local spawn with another process-like object (``stdin``, ``stdout``,
    ``wait``, ``kill``, ``stderr_text``): a program inside a container, streamed through the Engine API.

    Its stderr is drained in a thread (a full stderr pipe would block it). If the caller's work fails,
    the child is killed before being waited for: a child still reading an open stdin would never exit.
    A child that stops reading (BrokenPipeError) is not an error of ours: its exit code says why.
    On leaving, a non-zero exit raises ``CommandFailed`` with the tail of its stderr.
    """
    import threading

    argv = list(argv)
    process: Any = (
        start() if start else spawn(argv, env=env, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
    )
    chunks: list[bytes] = []
    drain = threading.Thread(
        target=lambda: chunks.append(process.stderr.read() if getattr(process, "stderr", None) else b"")
    )
    drain.start()
    try:
        yield process
        if process.stdin is not None:
            process.stdin.close()
    except BrokenPipeError:
        pass
    except BaseException:
        process.kill()
        raise
    finally:
        code = process.wait()
        drain.join()
        if start:
            chunks.append(process.stderr_text())
    if code != 0:
        raise CommandFailed(argv, code, b"".join(chunks).decode(errors="replace")[-_STDERR_TAIL:])


def check_exit(process: subprocess.Popen[bytes], argv: Sequence[str], stderr: bytes = b"") -> None:
    code = process.wait()
    if code != 0:
        raise CommandFailed(list(argv), code, stderr.decode(errors="replace")[-_STDERR_TAIL:])


def widen_pipe(stream: IO[bytes], size: int = 1024 * 1024) -> None:
    """Raise a pipe's kernel buffer (64 KiB by default) so producer and consumer switch less often."""
    import contextlib
    import fcntl

    # Above /proc/sys/fs/pipe-max-size an unprivileged user is refused: the default still works.
    with contextlib.suppress(OSError):
        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, size)


PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
