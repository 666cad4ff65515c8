"""``reconciler daemon``: run the controller loop (``reconciler.daemon.loop``) in the foreground."""

from __future__ import annotations

import sys

import click

from reconciler.cli.common import CliState, guard


@click.command()
@click.pass_obj
@guard
def daemon(state: CliState) -> None:
    """Keep the stack converged and its backups fresh until SIGTERM/SIGINT (then a final backup in RAM mode)."""
    from reconciler.daemon.loop import Daemon

    sys.exit(Daemon(state.state_file).run())
