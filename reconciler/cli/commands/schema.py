"""``reconciler schema``: export the JSON Schema or the option reference from the model."""

from __future__ import annotations

import sys

import click

from reconciler.cli import exit_codes
from reconciler.cli.common import CliState, guard


@click.command()
@click.option("--check", is_flag=True, help="Exit 1 when the file differs from the model.")
@click.option("--docs", is_flag=True, help="Write the Markdown option reference instead of the schema.")
@click.argument("path", required=False)
@click.pass_obj
@guard
def schema(state: CliState, check: bool, docs: bool, path: str | None) -> None:
    """Export the JSON Schema of state.yaml (or, with --docs, docs/OPTIONS.md) from the model."""
    from reconciler.spec.schema import options_markdown, schema_text

    text = options_markdown() if docs else schema_text()
    path = path or ("docs/OPTIONS.md" if docs else "schemas/state.schema.json")
    if check:
        try:
            with open(path, encoding="utf-8") as handle:
                current = handle.read()
        except FileNotFoundError:
            current = ""
        if current != text:
            state.out.error(f"{path} is stale; run `reconciler schema {path}`")
            sys.exit(exit_codes.ERROR)
        return
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    state.out.out.print(f"wrote {path}")
