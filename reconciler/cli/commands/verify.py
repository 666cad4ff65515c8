"""``reconciler verify``: restore a set into scratch servers and check it against its manifest."""

from __future__ import annotations

import sys

import click

from reconciler.cli import exit_codes
from reconciler.cli.common import FORMAT, CliState, context, guard


@click.command()
@click.argument("set_name", required=False)
@FORMAT
@click.pass_obj
@guard
def verify(state: CliState, set_name: str | None, output_format: str) -> None:
    """Restore a set into scratch servers on tmpfs and check it against its manifest."""
    from reconciler.engine import backups

    ctx = context(state)
    result = backups.verify(ctx, set_name)
    if output_format == "json":
        state.out.json(result)
    elif result["ok"]:
        state.out.out.print(
            f"{result['set']} verified: {result.get('tables', 0)} tables, {result.get('rows', 0)} rows, "
            f"{result.get('redis_keys', 0)} redis keys match the manifest ({result['seconds']:.1f} s)"
        )
    elif result.get("fault") == "host":
        state.out.error(f"{result['set']} could not be verified: {result['reason']}")
    else:
        state.out.error(f"{result['set']} FAILED verification: {result['reason']}")
    if not result["ok"]:
        sys.exit(exit_codes.ERROR)
