"""Everything an engine operation needs about one stack, built once from the spec."""

from __future__ import annotations

import os
from dataclasses import dataclass

from reconciler.errors import PermanentError
from reconciler.observe.local import observe as observe_local
from reconciler.plan.observed import ObservedState
from reconciler.runtimes.local import LocalRuntime
from reconciler.spec.model import StateSpec


@dataclass
class StackContext:
    spec: StateSpec
    runtime: LocalRuntime
    state_file: str

    @classmethod
    def build(cls, spec: StateSpec, state_file: str) -> StackContext:
        if spec.runtime != "local":
            raise PermanentError(
                f"runtime '{spec.runtime}' is not available in this version; use `runtime: local`"
            )
        return cls(spec, LocalRuntime(spec.stack, spec.state_path), os.path.abspath(state_file))

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
        return observe_local(self.spec, self.runtime)
