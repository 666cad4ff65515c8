"""``reconciler gdrive``: Google Drive helpers (``login``)."""

from __future__ import annotations

import click

from reconciler.cli.common import CliState, guard, load


@click.group()
def gdrive() -> None:
    """Google Drive helpers."""


@gdrive.command()
@click.option(
    "--client-secrets", required=True, help="The OAuth client JSON (type: Desktop app) from Google Cloud."
)
@click.option(
    "--out", "out_path", default=None, help="Where to write the file (default: gdrive.credentials_file)."
)
@click.pass_obj
@guard
def login(state: CliState, client_secrets: str, out_path: str | None) -> None:
    """Create the authorized-user file for a personal Google account, without a browser on this machine."""
    from reconciler.errors import InvalidInput
    from reconciler.stores import gdrive_login

    if out_path is None:
        spec = load(state)
        if not spec.backup.stores.gdrive.credentials_file:
            raise InvalidInput("give --out PATH or set backup.stores.gdrive.credentials_file in state.yaml")
        out_path = spec.resolve(spec.backup.stores.gdrive.credentials_file)
    session = gdrive_login.start(client_secrets)
    click.echo("1. Open this address in a browser on any device and allow access:\n", err=True)
    click.echo(session.url(), err=True)
    click.echo(
        "\n2. The browser then fails to load a page on 127.0.0.1. Copy that page's full address.", err=True
    )
    pasted = click.prompt("3. Paste it here", err=True)
    gdrive_login.finish(session, gdrive_login.code_from(pasted, session), out_path)
    state.out.out.print(f"wrote {out_path} (mode 0600); set backup.stores.gdrive.credentials_file to it")
