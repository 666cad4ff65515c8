"""Restore a legacy Loomio backup into the stack's PostgreSQL (side database, check, swap).

Design decision: the decrypted SQL is hostile input (see ``reconciler.backup.legacy``). It never
reaches psql, and it runs in a session whose *login* role is the application's role, not the
superuser: ``RESET ROLE``, ``SET SESSION AUTHORIZATION`` or ``COPY ... PROGRAM`` cannot climb back to
superuser rights, because the session never had them. The superuser only creates the empty side
database (owned by the application's role) and swaps it in after the script succeeded and was
checked; the script runs in one transaction, so a failing statement leaves nothing behind. What the
application role may change about *itself* (its password, its settings) is outside the side database
and outside that transaction once the script says ``COMMIT``: it is read before the script and put
back afterwards, and a file that changed it is refused.

Not journaled (unlike ``engine/restore_op.py``), so two rules keep it from losing data:
- it refuses to start while a restore or switch is incomplete (``reconciler apply`` first): its
  pre-restore backup would copy data no set holds, and the resumed operation would overwrite it;
- a ``post-restore`` set is taken right after the swap, so the next boot restores the imported data and
  not the newest set from before it. Known gap: a power cut between the swap and that set (seconds)
  brings back the data from before the import; the legacy file can be imported again.
"""

from __future__ import annotations

from dataclasses import replace

from reconciler.backup import legacy
from reconciler.databases import postgres as pg
from reconciler.engine import backups
from reconciler.engine.context import StackContext
from reconciler.engine.secrets import from_env_or_file
from reconciler.errors import PermanentError, ReconcilerError
from reconciler.runtimes.base import Endpoint
from reconciler.system import fs


def restore_legacy(ctx: StackContext, path: str, password_env: str, safety_backup: bool = True) -> int:
    spec = ctx.spec.services.postgres
    if spec is None:
        raise PermanentError("the stack has no postgres service to restore into")
    password = from_env_or_file(password_env, None, "--password-env")
    assert password is not None
    sql = legacy.decrypt(path, password)  # before anything is touched: a wrong password changes nothing
    parts = legacy.script_parts(sql, path)  # a psql command in the file stops here, too
    del sql
    with fs.exclusive_lock(ctx.lock_path, f"stack {ctx.spec.stack}"):
        from reconciler.engine.restore_op import refuse_backup_of_incomplete_data

        refuse_backup_of_incomplete_data(ctx)
        endpoint = backups._endpoints(ctx)["postgres"]
        if safety_backup:
            backups.take_backup_locked(ctx, "pre-restore", None)
        side = pg.staging_name(spec.database, "__restoring")
        pg.recreate_database(endpoint, side, spec.user)
        role_before = pg.role_state(endpoint, spec.user)
        try:
            pg.run_script_as(replace(endpoint, user=spec.user), side, [(p.sql, p.copy_data) for p in parts])
        except ReconcilerError as exc:
            pg.drop_database(endpoint, side)
            _keep_role(endpoint, spec.user, role_before, path)
            raise PermanentError(
                f"legacy backup {path} was refused by postgres (it runs as role {spec.user}, not as a "
                f"superuser): {exc}. The database {spec.database} was not changed"
            ) from None
        try:
            _keep_role(endpoint, spec.user, role_before, path)
            _plain_database(endpoint, side, path)
        except PermanentError:
            pg.drop_database(endpoint, side)
            raise
        with pg.connect(endpoint, side) as conn:
            tables = len(pg.table_stats(conn))
        pg.swap_databases(endpoint, spec.database, side)
        try:
            backups.take_backup_locked(ctx, "post-restore", None)
        except ReconcilerError as exc:
            raise PermanentError(
                f"the legacy backup was imported ({tables} tables), but the backup after it failed: {exc}. "
                "Until a backup succeeds, the next boot restores the data from before the import; "
                "run `reconciler backup` now"
            ) from None
        return tables


def _keep_role(endpoint: Endpoint, role: str, before: pg.RoleState, path: str) -> None:
    """The script may change its login role's password and settings, which outlive the side database
    (and a ``COMMIT`` in the script escapes its transaction): put them back, and refuse the file."""
    if pg.role_state(endpoint, role) == before:
        return
    pg.put_role_state(endpoint, role, before)
    raise PermanentError(
        f"legacy backup {path} changes role {role} itself (ALTER ROLE: its password or settings); a backup "
        f"may hold data only. The role was put back as it was and the database was not changed"
    )


def _plain_database(endpoint: Endpoint, database: str, path: str) -> None:
    """Settings the script gave its database (``ALTER DATABASE ... SET``, a connection limit) would
    follow it into the live database: ``default_transaction_read_only`` or ``CONNECTION LIMIT 0``
    would shut the application out. A plain dump never sets them, so such a file is refused."""
    changed = pg.database_settings(endpoint, database)
    if changed:
        raise PermanentError(
            f"legacy backup {path} changes its database's own settings ({', '.join(changed)[:200]}); a "
            "backup may hold data only. The database was not changed"
        )
