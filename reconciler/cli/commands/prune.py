"""``reconciler prune``: delete the sets the retention policy no longer keeps."""

from __future__ import annotations

import click

from reconciler.cli.common import CliState, context, guard


@click.command()
@click.option("--dry-run", is_flag=True, help="Only show which sets would be deleted.")
@click.pass_obj
@guard
def prune(state: CliState, dry_run: bool) -> None:
    """Delete backup sets that the retention policy no longer keeps."""
    from reconciler.engine import backups

    ctx = context(state)
    _, decision = backups.prune_decision(ctx)
    if decision.held_back:
        state.out.out.print(f"nothing pruned: {decision.held_back}")
        return
    deleted = decision.delete if dry_run else backups.prune(ctx)
    verb = "would delete" if dry_run else "deleted"
    for name in deleted:
        state.out.out.print(f"- {verb} {name}")
    state.out.out.print(f"{len(deleted)} set(s) {verb}, {len(decision.keep)} kept.")
