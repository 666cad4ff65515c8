"""``reconciler events``: show the daemon's events log."""

from __future__ import annotations

import click

from reconciler.cli.common import FORMAT, CliState, context_or_last_valid, guard


@click.command()
@click.option(
    "-n", "--limit", type=int, default=50, show_default=True, help="Show the newest N events (0: all)."
)
@click.option("--warnings", is_flag=True, help="Only Warning events.")
@FORMAT
@click.pass_obj
@guard
def events(state: CliState, limit: int, warnings: bool, output_format: str) -> None:
    """Show what the daemon noticed and did (the events log), oldest first."""
    from reconciler.engine import events as event_log

    ctx, _ = context_or_last_valid(state)
    found = event_log.read(ctx.state_dir)
    if warnings:
        found = [e for e in found if e.get("type") == "Warning"]
    if limit:
        found = found[-limit:]
    if output_format == "json":
        state.out.json(found)
        return
    if not found:
        state.out.out.print(f"no events yet in {event_log.events_path(ctx.state_dir)}")
    for event in found:
        colour = "yellow" if event.get("type") == "Warning" else "green"
        message = str(event.get("message", "")).replace("[", "\\[")
        state.out.out.print(
            f"{event.get('time')} [{colour}]{event.get('type', '?'):<7}[/] {event.get('reason')}: {message}"
        )
