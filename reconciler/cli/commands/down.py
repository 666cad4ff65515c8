"""``reconciler down``: stop the stack's services, data left in place."""

from __future__ import annotations

import click

from reconciler.cli.common import CliState, context, guard
from reconciler.cli.progress import run_with_progress


@click.command()
@click.pass_obj
@guard
def down(state: CliState) -> None:
    """Stop the stack's services. Data stays where it is (on tmpfs: until reboot)."""
    ctx = context(state)
    result = run_with_progress(state, ctx, "down")
    for warning in result.plan.warnings:
        state.out.err.print(f"[yellow]warning:[/] {warning}")
    state.out.out.print(f"Stopped {len(result.executed)} service(s) of stack {ctx.spec.stack}.")
