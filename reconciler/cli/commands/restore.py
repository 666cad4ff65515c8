"""``reconciler restore``: restore a backup set (or a legacy backup) into the running stack."""

from __future__ import annotations

import click

from reconciler.cli.common import CliState, context, guard


@click.command()
@click.argument("set_name", required=False)
@click.option("--latest", is_flag=True, help="Restore the newest complete set.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@click.option("--no-safety-backup", is_flag=True, help="Skip the pre-restore backup of the current data.")
@click.option(
    "--legacy", "legacy_file", default=None, help="Restore a legacy Loomio *.sql.enc backup instead."
)
@click.option("--password-env", default=None, help="With --legacy: variable holding the legacy password.")
@click.option(
    "--to",
    "to_time",
    default=None,
    help="Point-in-time recovery of PostgreSQL (backup.continuous): e.g. '2026-11-22 14:03' (this host's "
    "local time unless an offset is given).",
)
@click.pass_obj
@guard
def restore(
    state: CliState,
    set_name: str | None,
    latest: bool,
    yes: bool,
    no_safety_backup: bool,
    legacy_file: str | None,
    password_env: str | None,
    to_time: str | None,
) -> None:
    """Restore a backup set into the running stack (replaces the current data)."""
    from reconciler.engine import backups
    from reconciler.errors import InvalidInput

    ctx = context(state, "restore")
    if to_time:  # base + WAL replayed up to a time (engine/recovery.py)
        from reconciler.engine.recovery import parse_target, restore_to_time

        when = parse_target(to_time)
        if not yes and not click.confirm(f"Replace PostgreSQL's data with its state at {when}?", err=True):
            raise InvalidInput("restore cancelled; nothing was changed")
        state.out.out.print(f"restored PostgreSQL to {when}: {restore_to_time(ctx, when).describe()}")
        return
    if legacy_file:
        if not password_env:
            raise InvalidInput("--legacy needs --password-env VARIABLE (the legacy BACKUP_ENCRYPTION_KEY)")
        from reconciler.engine.legacy import restore_legacy

        if not yes and not click.confirm(
            f"Replace database {ctx.spec.services.postgres.database if ctx.spec.services.postgres else '?'} with {legacy_file}?",
            err=True,
        ):
            raise InvalidInput("restore cancelled; nothing was changed")
        tables = restore_legacy(ctx, legacy_file, password_env, safety_backup=not no_safety_backup)
        state.out.out.print(f"restored legacy backup {legacy_file}: {tables} tables in the database")
        return
    if not set_name and not latest:
        raise InvalidInput("name a set (see `reconciler backups`) or pass --latest")
    target = set_name or "the newest complete set"
    if not yes and not click.confirm(
        f"Replace the current data of stack {ctx.spec.stack} with {target}?", err=True
    ):
        raise InvalidInput("restore cancelled; nothing was changed")
    result = backups.restore(ctx, set_name, safety_backup=not no_safety_backup)
    safety = f"; the data before it is in {result.safety_backup}" if result.safety_backup else ""
    state.out.out.print(
        f"restored {result.set_name} ({result.tables} tables) in {result.seconds:.1f} s{safety}"
    )
