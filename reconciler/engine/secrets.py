"""Resolve secret references (``*_env``, ``*_file``) at the moment they are needed.

Design decision: a secret is read as late as possible and never stored on an object that might be
logged, printed or serialised. Errors name the reference (variable or path), never the value.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from reconciler.errors import PermanentError

if TYPE_CHECKING:
    from reconciler.engine.context import StackContext


def from_env_or_file(env_name: str | None, file_path: str | None, what: str) -> str | None:
    if env_name:
        value = os.environ.get(env_name)
        if value is None:
            raise PermanentError(
                f"{what}: environment variable {env_name} is not set; export it before running"
            )
        return value
    if file_path:
        try:
            st = os.stat(file_path)
            with open(file_path) as handle:
                value = handle.read().strip()
        except FileNotFoundError:
            raise PermanentError(f"{what}: secret file {file_path} does not exist") from None
        except PermissionError:
            raise PermanentError(f"{what}: secret file {file_path} is not readable") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PermanentError(
                f"{what}: secret file {file_path} is readable by other users; run `chmod 600 {file_path}`"
            )
        return value
    return None


def service_password(ctx: StackContext, service: str) -> str | None:
    """The configured password of a SQL service's application role/user (postgres, mariadb), or None."""
    spec = ctx.spec.services.configured()[service]
    env_name = getattr(spec, "password_env", None)
    file_name = getattr(spec, "password_file", None)
    return from_env_or_file(
        env_name, ctx.spec.resolve(file_name) if file_name else None, f"services.{service} password"
    )
