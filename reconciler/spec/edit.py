"""Edits of state.yaml made on the user's behalf, keeping their comments and layout.

Design decision: ``keygen --add-recipient`` changes one list in a file a human wrote and commits. It
goes through ruamel.yaml's round-trip mode, which keeps comments (including the
``# yaml-language-server: $schema=...`` line that gives editors completion), key order, flow or block
style and quoting. Re-emitting the whole document would still re-indent it to ruamel's own style, so
the usual layouts (a ``[...]`` list, a block list, no list yet) are edited as text at the positions
ruamel reports, and the result is checked by loading it again; only an unusual layout falls back to a
full round-trip dump. Pure: text in, text out; the caller reads, validates the result with the
loader, and writes atomically.
"""

from __future__ import annotations

from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from reconciler.errors import InvalidInput


class _Text:
    """A write-only text stream (the spec layer may not import io)."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str | bytes) -> None:
        self.parts.append(text.decode("utf-8") if isinstance(text, bytes) else text)


def add_recipient(text: str, recipient: str) -> str:
    """``text`` with ``recipient`` appended to backup.encryption.recipients (unchanged if present).

    The usual layouts are edited as text, one line or one ``[...]`` list, so nothing else in the file
    moves; any other layout goes through a round-trip dump.
    """
    document = YAML(typ="rt").load(text)
    current = _recipients(document)
    if current is not None and recipient in current:
        return text
    edited = _edit_in_place(text, document, recipient)
    if edited is not None and _recipients(YAML(typ="rt").load(edited)) == [*(current or []), recipient]:
        return edited
    return _round_trip(text, recipient)


def _recipients(document: Any) -> list[str] | None:
    backup = document.get("backup") if isinstance(document, dict) else None
    encryption = backup.get("encryption") if isinstance(backup, dict) else None
    if encryption == "none" or (isinstance(encryption, dict) and encryption.get("method") == "none"):
        raise InvalidInput(
            "backup.encryption is 'none' in state.yaml; set encryption to age before adding a recipient"
        )
    recipients = encryption.get("recipients") if isinstance(encryption, dict) else None
    if recipients is not None and not isinstance(recipients, list):
        raise InvalidInput("backup.encryption.recipients in state.yaml is not a list")
    return None if recipients is None else [str(r) for r in recipients]


def _edit_in_place(text: str, document: Any, recipient: str) -> str | None:
    """One inserted line or one edited ``[...]``, or None when the layout is not a usual one."""
    lines = text.splitlines(keepends=True)
    try:
        encryption = document["backup"]["encryption"]
        if not isinstance(encryption, CommentedMap) or encryption.fa.flow_style():
            return None
        recipients = encryption.get("recipients")
        if recipients is None:  # a new key, indented like the first key of encryption
            first = next(iter(encryption))
            line, column = encryption.lc.key(first)
            lines.insert(line, " " * column + f"recipients: [{recipient}]\n")
            return "".join(lines)
        if not isinstance(recipients, CommentedSeq):
            return None
        line, column = encryption.lc.value("recipients")
        row = lines[line]
        if row[column] == "[":  # a flow list on one line: edit inside the brackets
            close = row.find("]", column)
            if close < 0:
                return None
            inside = row[column + 1 : close].strip()
            lines[line] = (
                row[: column + 1] + (f"{inside}, {recipient}" if inside else recipient) + row[close:]
            )
            return "".join(lines)
        if len(recipients):  # a block list: one more line, prefixed like the last item
            line, column = recipients.lc.item(len(recipients) - 1)
            row = lines[line]
            ending = "\n" if row.endswith("\n") else ""
            lines[line] = row if ending else row + "\n"
            lines.insert(line + 1, row[:column] + recipient + "\n")
            return "".join(lines)
    except (KeyError, IndexError, TypeError, StopIteration):
        return None
    return None


def _round_trip(text: str, recipient: str) -> str:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap the user's long lines
    document = yaml.load(text)
    backup = _mapping(document, "backup", "backup")
    encryption = _mapping(backup, "encryption", "backup.encryption")
    recipients = encryption.get("recipients")
    if recipients is None:
        recipients = encryption["recipients"] = CommentedSeq()
    recipients.append(recipient)
    out = _Text()
    yaml.dump(document, out)
    return "".join(out.parts)


def _mapping(parent: Any, key: str, where: str) -> Any:
    if not isinstance(parent, dict):
        raise InvalidInput(f"{where} in state.yaml is not a mapping")
    if parent.get(key) is None:
        parent[key] = CommentedMap()
    if not isinstance(parent[key], dict):
        raise InvalidInput(f"{where} in state.yaml is not a mapping")
    return parent[key]
