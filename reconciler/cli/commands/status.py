"""``reconciler status``: render the stack's status document (built by
``reconciler.engine.status_document``)."""

from __future__ import annotations

import click

from reconciler.cli.common import FORMAT, CliState, context_or_last_valid, guard


@click.command()
@FORMAT
@click.pass_obj
@guard
def status(state: CliState, output_format: str) -> None:
    """Show services, where their data lives, conditions and the last run."""
    from reconciler.cli.render import status_text
    from reconciler.engine import status_document

    ctx, invalid = context_or_last_valid(state)
    document = status_document.build(ctx, invalid)
    if output_format == "json":
        state.out.json(document)
    else:
        for line in status_text(document):
            state.out.out.print(line)
