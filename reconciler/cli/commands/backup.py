"""``reconciler backup``: take one backup set now, then upload it when Drive is enabled."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from reconciler.cli.common import FORMAT, CliState, context, guard
from reconciler.cli.progress import byte_progress

if TYPE_CHECKING:
    from reconciler.engine.context import StackContext


@click.command()
@click.option(
    "--trigger", default="manual", show_default=True, help="Why this set is taken (part of its name)."
)
@FORMAT
@click.pass_obj
@guard
def backup(state: CliState, trigger: str, output_format: str) -> None:
    """Take one consistent, encrypted backup set of every service now."""
    from reconciler.engine import backups
    from reconciler.spec.units import format_bytes

    ctx = context(state)
    with byte_progress(state, "backup") as bar:
        tasks: dict[str, Any] = {}

        def progress(member: str, done: int) -> None:
            if bar is not None:
                if member not in tasks:
                    tasks[member] = bar.add_task(member, total=None)
                bar.update(tasks[member], completed=done)

        document = backups.take_backup(ctx, trigger, progress)
    size = sum(int(m["size"]) for m in document["members"])
    uploaded = _upload_after_backup(state, ctx)
    if output_format == "json":
        state.out.json(
            {
                "set": document["set"],
                "size": size,
                "seconds": document["seconds"],
                "members": document["members"],
                "uploaded": uploaded,
            }
        )
    else:
        state.out.out.print(
            f"backup set {document['set']}: {format_bytes(size)} in {document['seconds']:.1f} s"
        )


def _upload_after_backup(state: CliState, ctx: StackContext) -> list[str] | None:
    """Push to Drive when enabled; a failed upload leaves the set local and is retried by the next sync."""
    from reconciler.engine import offsite
    from reconciler.errors import ReconcilerError

    if offsite.drive_store(ctx) is None:
        return None
    try:
        return offsite.sync(ctx).uploaded
    except ReconcilerError as exc:
        state.out.error(f"the set is stored locally, but the upload to Google Drive failed: {exc}")
        return []
