"""``reconciler apply``: converge the stack to state.yaml."""

from __future__ import annotations

import sys

import click

from reconciler.cli.commands.plan import show_plan
from reconciler.cli.common import FORMAT, CliState, context, guard, note_uncommitted
from reconciler.cli.progress import run_with_progress


@click.command()
@click.option("--dry-run", is_flag=True, help="Only show the plan (same as `reconciler plan`).")
@click.option(
    "--allow-empty",
    is_flag=True,
    help="Start services empty although backup sets exist that cannot be restored (they are protected).",
)
@FORMAT
@click.pass_obj
@guard
def apply(state: CliState, dry_run: bool, allow_empty: bool, output_format: str) -> None:
    """Converge the stack to state.yaml."""
    ctx = context(state)
    note_uncommitted(state)
    if dry_run:
        sys.exit(show_plan(state, ctx, output_format, allow_empty))
    result = run_with_progress(state, ctx, "apply", allow_empty)
    if output_format == "json":
        state.out.json(
            {
                "applied": [a.to_dict() for a in result.executed],
                "seconds": round(result.seconds, 3),
                "in_sync": True,
            }
        )
    elif result.executed:
        state.out.out.print(
            f"[green]Applied {len(result.executed)} step{'s' if len(result.executed) != 1 else ''} "
            f"in {result.seconds:.1f} s; stack {ctx.spec.stack} is in sync ({ctx.spec.mode} mode).[/]"
        )
    else:
        state.out.out.print(
            f"[green]No changes: stack {ctx.spec.stack} is in sync ({ctx.spec.mode} mode).[/]"
        )
