"""``reconciler sync``: upload local sets missing on Google Drive, apply Drive's retention."""

from __future__ import annotations

import click

from reconciler.cli.common import CliState, context, guard


@click.command()
@click.pass_obj
@guard
def sync(state: CliState) -> None:
    """Upload complete local sets missing on Google Drive, then apply Drive's retention."""
    from reconciler.engine import offsite

    ctx = context(state)
    result = offsite.sync(ctx)
    state.out.out.print(
        f"uploaded {len(result.uploaded)} set(s) ({result.bytes_sent} bytes), pruned {len(result.pruned)} on Drive"
    )
