"""Restore a legacy Loomio backup into the stack's PostgreSQL (side database, check, swap)."""

from __future__ import annotations

import os

from reconciler.backup import legacy
from reconciler.databases import postgres as pg
from reconciler.engine import backups
from reconciler.engine.context import StackContext
from reconciler.engine.secrets import from_env_or_file
from reconciler.errors import CommandFailed, PermanentError
from reconciler.runtimes.local import postgres_bindir
from reconciler.system import fs, proc


def restore_legacy(ctx: StackContext, path: str, password_env: str, safety_backup: bool = True) -> int:
    spec = ctx.spec.services.postgres
    if spec is None:
        raise PermanentError("the stack has no postgres service to restore into")
    password = from_env_or_file(password_env, None, "--password-env")
    assert password is not None
    sql = legacy.decrypt(path, password)  # before anything is touched: a wrong password changes nothing
    with fs.exclusive_lock(ctx.lock_path, f"stack {ctx.spec.stack}"):
        endpoint = backups._endpoints(ctx)["postgres"]
        if safety_backup:
            backups.take_backup_locked(ctx, "pre-restore", None)
        side = f"{spec.database}__restoring"
        pg.recreate_database(endpoint, side, spec.user)
        argv = [
            os.path.join(postgres_bindir(), "psql"),
            *pg.client_args(endpoint),
            "-d",
            side,
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "--single-transaction",
        ]
        try:
            with proc.streaming(argv, stdin=proc.PIPE) as child:
                assert child.stdin is not None
                child.stdin.write(f'SET ROLE "{spec.user}";\n'.encode())
                child.stdin.write(sql)
        except CommandFailed:
            pg.drop_database(endpoint, side)
            raise
        with pg.connect(endpoint, side) as conn:
            tables = len(pg.table_stats(conn))
        pg.swap_databases(endpoint, spec.database, side)
        return tables
