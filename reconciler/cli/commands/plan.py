"""``reconciler plan``: show what ``apply`` would change; ``show_plan`` is shared with ``apply --dry-run``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from reconciler.cli import exit_codes
from reconciler.cli.common import FORMAT, CliState, context, guard, note_uncommitted

if TYPE_CHECKING:
    from reconciler.engine.context import StackContext


def show_plan(state: CliState, ctx: StackContext, output_format: str, allow_empty: bool = False) -> int:
    from reconciler.cli.render import plan_text
    from reconciler.engine.apply import compute_plan

    the_plan = compute_plan(ctx, allow_empty)
    spec = ctx.spec
    override = ctx.mode_override
    replay: list[str] = []
    if spec.backup.continuous.enabled:  # base + WAL a restore on boot replays (imported only then: speed)
        from reconciler.engine.recovery import preview

        replay = preview(ctx, the_plan.actions)
        from reconciler.engine.redissnap import plan_lines

        replay += plan_lines(ctx, the_plan.actions)
    if output_format == "json":
        state.out.json(
            {
                "stack": spec.stack,
                "mode": spec.mode,
                "runtime": spec.runtime,
                "modeOverride": override,
                **the_plan.to_dict(),
                **({"replay": replay} if replay else {}),
            }
        )
    else:
        if override:
            state.out.err.print(
                f"[yellow]note:[/] {spec.mode} mode instead of state.yaml's: the daemon fell back at "
                f"{override['since']} ({override['reason']}); edit state.yaml to try again"
            )
        for line in plan_text(the_plan, spec.stack, spec.mode, spec.runtime):
            state.out.out.print(line)
        for line in replay:
            state.out.out.print(f"  {line}", soft_wrap=True)
    if the_plan.blockers or the_plan.unhealable:
        return exit_codes.ERROR
    return exit_codes.OK if the_plan.in_sync else exit_codes.CHANGES_PENDING


@click.command()
@FORMAT
@click.pass_obj
@guard
def plan(state: CliState, output_format: str) -> None:
    """Show what `apply` would change. Exit 0: in sync, 2: changes pending, 1: blocked, drift apply
    cannot heal, or error."""
    ctx = context(state)
    note_uncommitted(state)
    sys.exit(show_plan(state, ctx, output_format))
