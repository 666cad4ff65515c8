"""Everything an engine operation needs about one stack, built once from the spec.

Design decision: the RAM-pressure fallback of the daemon (``ram.on_pressure: fallback-to-disk``) is a
*mode override* recorded next to the status file, bound to the exact bytes of state.yaml it overrode.
Every command builds its context here, so ``plan``, ``apply`` and the daemon all see the same effective
mode (no fight between a hand-run ``apply`` and the daemon), and the override ends by itself when the
user edits state.yaml: the edit is the human saying "try again".
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from typing import Any

from reconciler.databases.engine import server_recipes
from reconciler.errors import InvalidInput, PermanentError, ReconcilerError
from reconciler.observe.hostfacts import host_facts
from reconciler.observe.local import observe as observe_local
from reconciler.observe.local import read_journal
from reconciler.plan.hosts import HostVerdict, decide, finishing_here, for_this_host
from reconciler.plan.observed import ObservedState
from reconciler.runtimes.base import Runtime
from reconciler.runtimes.local import LocalRuntime, postgres_bindir
from reconciler.spec.model import SERVICE_KINDS, StateSpec
from reconciler.system import fs

OVERRIDE_FILE = "mode-override.json"


def state_file_digest(state_file: str) -> str:
    try:
        return hashlib.sha256(read_state_bytes(state_file)).hexdigest()
    except (OSError, InvalidInput):
        return ""


def read_state_bytes(state_file: str) -> bytes:
    """The bytes of state.yaml, at most one more than the loader accepts (so it can say "too large").

    Hostile files end here with ``InvalidInput`` rather than a crash or a hang: a directory, a FIFO or a
    device (``/dev/zero``) is refused before reading (opened non-blocking, checked with fstat), a symlink
    loop or a permission problem is named, and nothing beyond the size bound is ever read.
    """
    from reconciler.spec.loader import MAX_STATE_BYTES

    try:
        fd = os.open(state_file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InvalidInput(f"state file {state_file} not found (use -f/--file to point at another)") from None
    except OSError as exc:
        why = "is a symbolic link loop" if exc.errno == errno.ELOOP else f"cannot be opened: {exc.strerror}"
        raise InvalidInput(f"state file {state_file} {why}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a pipe, socket or device)"
            raise InvalidInput(f"state file {state_file} is {kind}; point -f/--file at the YAML file")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_STATE_BYTES:
            chunk = os.read(fd, MAX_STATE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise InvalidInput(f"state file {state_file} cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)


@dataclass
class StackContext:
    spec: StateSpec
    runtime: Any  # LocalRuntime | DockerRuntime (runtimes/base.Runtime, plus runtime-specific helpers)
    state_file: str
    mode_override: dict[str, Any] | None = None  # set while the daemon's RAM-pressure fallback holds
    revision: str | None = None  # the commit the spec was read from (the daemon follows HEAD), if any
    # ``hosts:`` decided on this machine; ``spec`` holds only the services for this host, ``full_spec``
    # all of them (what `down`, a human's command, stops)
    host: HostVerdict | None = None
    full_spec: StateSpec | None = None

    @classmethod
    def build(cls, spec: StateSpec, state_file: str, apply_hosts: bool = True) -> StackContext:
        """``apply_hosts=False``: every service of the spec, whatever ``hosts:`` says (`down`)."""
        state_file = os.path.abspath(state_file)
        verdict = decide(spec, host_facts(spec)) if apply_hosts else None
        if verdict is not None and (verdict.skipped or not verdict.matches):
            verdict = finishing_here(verdict, journaled_services(spec.state_path))
        full_spec, spec = spec, for_this_host(spec, verdict) if verdict is not None else spec
        override = read_override(spec.state_path, state_file)
        if override is not None and override.get("mode") != spec.mode:
            spec = spec.model_copy(update={"mode": override["mode"]}).with_base_dir(spec.base_dir)
        else:
            override = None
        runtime: Runtime
        if spec.runtime == "docker":
            from reconciler.runtimes.docker import DockerRuntime

            runtime = DockerRuntime(
                spec.stack, spec.state_path, spec, server_recipes(spec.services.configured())
            )
        else:
            runtime = LocalRuntime(spec.stack, spec.state_path, server_recipes(spec.services.configured()))
        return cls(spec, runtime, state_file, override, host=verdict, full_spec=full_spec)

    @property
    def skipped_services(self) -> frozenset[str]:
        """Services ``hosts:`` leaves to other hosts (their sets are not this host's to rotate)."""
        return frozenset(self.host.skipped) if self.host is not None else frozenset()

    @property
    def for_this_host(self) -> bool:
        """False when state.yaml's ``hosts:`` leaves this machine out: nothing is done here."""
        return self.host is None or self.host.matches

    def require_this_host(self, command: str) -> None:
        """Refuse a command that would act on a stack that is not for this host."""
        if self.host is not None and not self.host.matches:
            raise PermanentError(
                f"stack {self.spec.stack} is not for this host: {self.host.stack_reason}; `{command}` does "
                "nothing here (see hosts: in state.yaml)"
            )

    def pg_bindir(self) -> str:
        """Where psql/pg_dump/pg_restore come from: the host's, or (docker) the container's PATH."""
        return "" if self.spec.runtime == "docker" else postgres_bindir()

    @property
    def state_dir(self) -> str:
        return self.spec.state_path

    @property
    def lock_path(self) -> str:
        return os.path.join(self.state_dir, "lock")

    @property
    def status_path(self) -> str:
        return os.path.join(self.state_dir, "status.json")

    def observe(self) -> ObservedState:
        if isinstance(self.runtime, LocalRuntime):
            return observe_local(self.spec, self.runtime)
        from reconciler.observe.docker import observe as observe_docker

        return observe_docker(self.spec, self.runtime)


def journaled_services(state_dir: str) -> frozenset[str] | None:
    """The services an unfinished operation's journal names (a switch's ``services``, a restore's
    ``data_dirs``), or None when none is unfinished. A journal that cannot be read is reported where
    the operation is resumed; here it keeps every service (the conservative reading)."""
    try:
        document = read_journal(state_dir)
    except (ReconcilerError, OSError):
        return frozenset(SERVICE_KINDS)
    if document is None:
        return None
    payload = document.get("payload") or {}
    named = payload.get("services") or list(payload.get("data_dirs") or ())
    return frozenset(str(name) for name in named) if named else frozenset(SERVICE_KINDS)


def load_spec(state_file: str) -> StateSpec:
    """Read and validate state.yaml; every problem is reported at once (``SpecInvalid``)."""
    from reconciler.spec.loader import parse_state_bytes

    data = read_state_bytes(state_file)
    return parse_state_bytes(data, source=state_file, base_dir=os.path.dirname(os.path.abspath(state_file)))


def read_override(state_dir: str, state_file: str) -> dict[str, Any] | None:
    """The recorded mode override, if it was made for the current contents of state.yaml."""
    document = fs.read_json(os.path.join(state_dir, OVERRIDE_FILE))
    if not isinstance(document, dict) or document.get("mode") not in ("ram", "disk"):
        return None
    return document if document.get("state_sha256") == state_file_digest(state_file) else None


def write_override(state_dir: str, state_file: str, mode: str, reason: str, since: str) -> None:
    fs.atomic_write_json(
        os.path.join(state_dir, OVERRIDE_FILE),
        {"mode": mode, "reason": reason, "since": since, "state_sha256": state_file_digest(state_file)},
    )


def fall_back_to_disk(ctx: StackContext, reason: str) -> None:
    """Record the RAM-pressure fallback and make ``ctx`` the disk-mode context every later step (and
    every later command, until state.yaml is edited) uses; the planned switch then moves the data."""
    from reconciler.system import clock

    write_override(ctx.state_dir, ctx.state_file, "disk", reason, clock.now_iso())
    fallen = StackContext.build(ctx.spec, ctx.state_file)
    ctx.spec, ctx.runtime, ctx.mode_override = fallen.spec, fallen.runtime, fallen.mode_override


LAST_VALID_FILE = "last-valid-state.yaml"


def remember_valid_spec(state_dir: str, data: bytes) -> None:
    """Keep the bytes of the state.yaml last adopted (by `apply` or the daemon) in the state directory,
    so that `status` and `events` can still show the stack while the file is invalid. Written only when
    it changed (the state directory may be on an SD card)."""
    path = os.path.join(state_dir, LAST_VALID_FILE)
    try:
        with open(path, "rb") as handle:
            if handle.read() == data:
                return
    except OSError:
        pass
    try:
        os.makedirs(state_dir, exist_ok=True)
        fs.atomic_write_bytes(path, data, 0o600)
    except OSError:  # a convenience for `status`: never the reason an apply or a daemon fails
        return


def last_valid_spec(state_file: str) -> StateSpec | None:
    """The spec last adopted for this state file, when the file itself is invalid now: looked for in the
    default state directory and in the one the invalid file names (read by a plain line match, never by
    parsing what failed to parse). None when there is none or it is not valid either."""
    from reconciler.spec.loader import MAX_STATE_BYTES, parse_state_bytes

    base = os.path.dirname(os.path.abspath(state_file))
    candidates = [os.path.join(base, ".reconciler")]
    try:
        with open(state_file, "rb") as handle:
            head = handle.read(MAX_STATE_BYTES)
        named = re.search(rb"^state_dir:[ \t]*['\"]?([^'\"#\s]+)", head, re.MULTILINE)
        if named:
            candidates.insert(0, os.path.join(base, named.group(1).decode("utf-8", "replace")))
    except OSError:
        pass
    for directory in candidates:
        path = os.path.join(directory, LAST_VALID_FILE)
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_STATE_BYTES + 1)
            spec = parse_state_bytes(data, source=f"{state_file} (last valid: {path})", base_dir=base)
        except (OSError, InvalidInput):
            continue
        if os.path.normpath(spec.state_path) == os.path.normpath(directory):
            return spec
    return None
