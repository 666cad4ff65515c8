"""The ``reconciler`` command line: parse, call the engine, render, exit with a meaningful code.

Design decisions:
- Nothing but parsing, rendering and exit codes lives in ``reconciler.cli``; every decision is in the
  layers below.
- This module only builds the group (its global options) and registers the verbs; each verb is one
  module in ``reconciler.cli.commands`` (borgmatic's layout), so a change to one verb touches one file.
- Heavy imports (pydantic models, database drivers, rich) happen inside the commands, so that
  ``reconciler --help`` and a no-op ``plan`` stay fast.
- Every ``ReconcilerError`` becomes one clear line on stderr and the exit code of its class
  (``reconciler.cli.common.guard``); a traceback means a bug, and is only shown with ``-v``.
"""

from __future__ import annotations

import os

import click

# pydantic scans every installed distribution for plugins on import (~25-30 ms); we use none.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from reconciler.cli.commands import (
    apply,
    backup,
    backups,
    daemon,
    down,
    events,
    gdrive,
    keygen,
    plan,
    prune,
    restore,
    schema,
    status,
    sync,
    validate,
    verify,
)
from reconciler.cli.common import CliState


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-f",
    "--file",
    "state_file",
    default="state.yaml",
    envvar="RECONCILER_STATE",
    show_default=True,
    help="The desired-state file.",
)
@click.option("--no-color", is_flag=True, help="Plain output (also when NO_COLOR is set).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging and tracebacks.")
@click.version_option(package_name="reconciler")
@click.pass_context
def cli(ctx: click.Context, state_file: str, no_color: bool, verbose: bool) -> None:
    """Keep a stack's PostgreSQL and Redis in RAM or disk mode, with safe backups."""
    ctx.obj = CliState(state_file, not no_color, verbose)


for _verb in (
    validate.validate,
    plan.plan,
    apply.apply,
    down.down,
    status.status,
    schema.schema,
    keygen.keygen,
    backup.backup,
    sync.sync,
    backups.list_backups,
    restore.restore,
    verify.verify,
    prune.prune,
    daemon.daemon,
    events.events,
    gdrive.gdrive,
):
    cli.add_command(_verb)


def main() -> None:
    cli(prog_name="reconciler")


if __name__ == "__main__":
    main()
