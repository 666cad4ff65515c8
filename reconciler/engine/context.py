"""Everything an engine operation needs about one stack, built once from the spec.

Design decision: the RAM-pressure fallback of the daemon (``ram.on_pressure: fallback-to-disk``) is a
*mode override* recorded next to the status file, bound to the exact bytes of state.yaml it overrode.
Every command builds its context here, so ``plan``, ``apply`` and the daemon all see the same effective
mode (no fight between a hand-run ``apply`` and the daemon), and the override ends by itself when the
user edits state.yaml: the edit is the human saying "try again".
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

from reconciler.observe.local import observe as observe_local
from reconciler.plan.observed import ObservedState
from reconciler.runtimes.base import Runtime
from reconciler.runtimes.local import LocalRuntime, postgres_bindir
from reconciler.spec.model import StateSpec
from reconciler.system import fs

OVERRIDE_FILE = "mode-override.json"


def state_file_digest(state_file: str) -> str:
    try:
        with open(state_file, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return ""


@dataclass
class StackContext:
    spec: StateSpec
    runtime: Any  # LocalRuntime | DockerRuntime (runtimes/base.Runtime, plus runtime-specific helpers)
    state_file: str
    mode_override: dict[str, Any] | None = None  # set while the daemon's RAM-pressure fallback holds

    @classmethod
    def build(cls, spec: StateSpec, state_file: str) -> StackContext:
        state_file = os.path.abspath(state_file)
        override = read_override(spec.state_path, state_file)
        if override is not None and override.get("mode") != spec.mode:
            spec = spec.model_copy(update={"mode": override["mode"]}).with_base_dir(spec.base_dir)
        else:
            override = None
        runtime: Runtime
        if spec.runtime == "docker":
            from reconciler.runtimes.docker import DockerRuntime

            runtime = DockerRuntime(spec.stack, spec.state_path, spec)
        else:
            runtime = LocalRuntime(spec.stack, spec.state_path)
        return cls(spec, runtime, state_file, override)

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


def load_spec(state_file: str) -> StateSpec:
    """Read and validate state.yaml; every problem is reported at once (``SpecInvalid``)."""
    from reconciler.errors import InvalidInput
    from reconciler.spec.loader import parse_state

    try:
        with open(state_file, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise InvalidInput(f"state file {state_file} not found (use -f/--file to point at another)") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{state_file} is not valid UTF-8 text (byte {exc.start})") from None
    return parse_state(text, source=state_file, base_dir=os.path.dirname(os.path.abspath(state_file)))


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
