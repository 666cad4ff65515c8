"""``reconciler validate``: check state.yaml and say where each problem is."""

from __future__ import annotations

import click

from reconciler.cli.common import FORMAT, CliState, guard, load


@click.command()
@FORMAT
@click.pass_obj
@guard
def validate(state: CliState, output_format: str) -> None:
    """Check state.yaml; report every problem with its line and column."""
    spec = load(state)
    if output_format == "json":
        state.out.json({"valid": True, "stack": spec.stack})
    else:
        state.out.out.print(f"{state.state_file} is valid (stack {spec.stack}, mode {spec.mode}).")
