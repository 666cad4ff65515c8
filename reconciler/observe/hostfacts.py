"""The facts host conditions are decided on: the hostname, which named files exist, named variables.

Design decision: read only what state.yaml's ``hosts:`` conditions name, and nothing slow: the
hostname is the kernel's (``uname -n``, what ``hostname`` sets, per UTS namespace), never a DNS
lookup; a file is one ``stat``. This runs before every command and every daemon pass, on hosts the
stack is not for too, so it must stay cheap (microseconds) and must never fail: a file that cannot be
checked (permission denied, a broken link) counts as missing.
"""

from __future__ import annotations

import os

from reconciler.plan.hosts import HostFacts, referenced
from reconciler.spec.model import StateSpec


def host_facts(spec: StateSpec) -> HostFacts:
    files, names = referenced(spec)
    return HostFacts(
        hostname=os.uname().nodename,
        existing_files=frozenset(path for path in files if os.path.exists(path)),
        env={name: os.environ[name] for name in names if name in os.environ},
    )
