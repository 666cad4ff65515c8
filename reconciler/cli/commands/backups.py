"""``reconciler backups``: list backup sets with their age, size, stores and verification."""

from __future__ import annotations

import click

from reconciler.cli.common import FORMAT, CliState, context, guard


@click.command(name="backups")
@FORMAT
@click.pass_obj
@guard
def list_backups(state: CliState, output_format: str) -> None:
    """List backup sets: name, age, size, store, complete (superseded: never restored on boot), verified."""
    from datetime import UTC, datetime

    from reconciler.engine import backups
    from reconciler.spec.units import format_bytes, format_duration

    ctx = context(state)
    now = datetime.now(UTC)
    listing = [entry.to_dict(now) for entry in backups.list_sets(ctx, with_remote=True)]
    if output_format == "json":
        state.out.json({"stack": ctx.spec.stack, "sets": listing})
        return
    if not listing:
        state.out.out.print(f"no backup sets in {backups.local_store(ctx).describe()}")
        return
    from datetime import timedelta

    from rich.table import Table

    table = Table(box=None)
    for column in ("set", "age", "size", "stores", "complete", "verified"):
        table.add_column(column)
    for entry in listing:
        verified = entry["verified"]
        mark = (
            "-"
            if verified is None
            else ("yes" if verified.get("ok") else f"FAILED: {verified.get('reason')}")
        )
        table.add_row(
            entry["name"],
            format_duration(timedelta(seconds=max(entry["age_seconds"], 0))),
            format_bytes(entry["size"]),
            ",".join(entry["stores"]),
            ("yes, superseded" if entry["superseded"] else "yes") if entry["complete"] else "NO",
            mark,
        )
    state.out.out.print(table)
