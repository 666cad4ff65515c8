"""``reconciler keygen``: create an age identity, optionally adding its recipient to state.yaml."""

from __future__ import annotations

import os

import click

from reconciler.cli.common import CliState, guard, load


@click.command()
@click.option(
    "--out", "path", default=None, help="Identity file to create (default: backup.encryption.identity_file)."
)
@click.option(
    "--add-recipient",
    is_flag=True,
    help="Also add the new recipient to backup.encryption.recipients in state.yaml (comments and layout kept).",
)
@click.pass_obj
@guard
def keygen(state: CliState, path: str | None, add_recipient: bool) -> None:
    """Create an age identity (mode 0600). The recipient (public key) goes to stdout, messages to stderr."""
    from reconciler.backup import keys
    from reconciler.errors import InvalidInput

    spec = load(state) if path is None or add_recipient else None
    if path is None:
        assert spec is not None
        if not spec.backup.encryption.identity_file:
            raise InvalidInput("give --out PATH or set backup.encryption.identity_file in state.yaml")
        path = spec.resolve(spec.backup.encryption.identity_file)
    if spec is not None and add_recipient and spec.backup.encryption.method == "none":
        raise InvalidInput(
            "backup.encryption is 'none' in state.yaml; set it to age before adding a recipient"
        )
    recipient = keys.generate(path)
    state.out.err.print(
        f"wrote {path} (mode 0600). Keep a copy somewhere safe: without it no backup can be restored.",
        soft_wrap=True,
    )
    print(recipient, flush=True)  # first: if editing state.yaml fails below, the recipient is not lost
    if add_recipient:
        _add_recipient(state.state_file, recipient)
        state.out.err.print(
            f"added its recipient (printed on stdout) to backup.encryption.recipients in {state.state_file}",
            soft_wrap=True,
        )
    else:
        state.out.err.print(
            "Its recipient (public key, printed on stdout) belongs in backup.encryption.recipients in "
            "state.yaml; `reconciler keygen --add-recipient` puts it there.",
            soft_wrap=True,
        )


def _add_recipient(state_file: str, recipient: str) -> None:
    """Rewrite state.yaml (atomically, same mode, through a symlink) with the recipient added."""
    from reconciler.engine.context import read_state_bytes
    from reconciler.spec.edit import add_recipient
    from reconciler.spec.loader import parse_state_bytes
    from reconciler.system import fs

    target = os.path.realpath(state_file)
    text = add_recipient(read_state_bytes(target).decode("utf-8-sig"), recipient)
    parse_state_bytes(text.encode(), source=state_file, base_dir=os.path.dirname(target))
    fs.atomic_write_bytes(target, text.encode(), os.stat(target).st_mode & 0o7777)
