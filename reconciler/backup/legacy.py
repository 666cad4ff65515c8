"""The legacy Loomio RAM-mode backup format: one Fernet token over a plain-SQL pg_dump.

Key = urlsafe_b64encode(PBKDF2-HMAC-SHA256(password, salt=b"loomio-backup-salt", 100000, 32)).
The format cannot be streamed (a Fernet token is authenticated as a whole), so the file is decrypted
in memory once, entirely, *before* any database is touched: a wrong password or a damaged file fails
here and changes nothing. (The old scripts called this AES-256; Fernet is AES-128-CBC + HMAC-SHA256.)

A legacy file is hostile input: anyone who knew the installation's password could have written it,
and its plaintext is a *script*. It is therefore never given to ``psql``, whose backslash commands
(``\\!`` runs a shell command, ``\\o |cmd``, ``\\copy ... program``) would act as the user running it.
``script_parts`` cuts the SQL into plain SQL text and ``COPY ... FROM stdin`` blocks with their data,
which the engine sends to the server over the wire protocol, where a backslash command is only a
syntax error. A line that *is* a psql command outside COPY data is refused before anything is touched,
with its line number, except pg_dump's own ``\\restrict``/``\\unrestrict`` markers (they only
restrict psql itself). What the SQL may do is bounded by the server: the engine runs it logged in
as the application's role, never as a superuser.
"""

from __future__ import annotations

import base64
import os
import re
import stat
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from reconciler.errors import InvalidInput, PermanentError

SALT = b"loomio-backup-salt"
ITERATIONS = 100_000

_COPY_FROM_STDIN = re.compile(rb"^COPY .+ FROM stdin;\s*$")
_HARMLESS_META = re.compile(rb"^\\(restrict|unrestrict)( +\S+)?\s*$")


@dataclass(frozen=True)
class ScriptPart:
    """SQL text to run as is, or (``copy_data`` set) one ``COPY ... FROM stdin`` and its rows."""

    sql: bytes
    copy_data: bytes | None = None


def derive_key(password: str) -> bytes:
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=SALT, iterations=ITERATIONS)
    return base64.urlsafe_b64encode(kdf.derive(password.encode()))


def decrypt(path: str, password: str) -> bytes:
    token = _read_regular_file(path).strip()
    try:
        return Fernet(derive_key(password)).decrypt(token)
    except InvalidToken:
        raise PermanentError(
            f"cannot decrypt {path}: wrong password (the installation's BACKUP_ENCRYPTION_KEY) or a damaged "
            "file. Nothing was changed"
        ) from None


def _read_regular_file(path: str) -> bytes:
    """The file's bytes; a directory, FIFO or device is refused before reading (opened non-blocking,
    checked with fstat), so `restore --legacy` can neither hang on a pipe nor read /dev/zero forever."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InvalidInput(f"legacy backup {path} does not exist") from None
    except OSError as exc:
        raise InvalidInput(f"legacy backup {path} cannot be opened: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a pipe, socket or device)"
        raise InvalidInput(f"legacy backup {path} is {kind}; give the *.sql.enc file")
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def script_parts(sql: bytes, path: str) -> list[ScriptPart]:
    """Cut a plain-SQL dump into parts; refuse psql commands (checked whole, before any part runs)."""
    parts: list[ScriptPart] = []
    pending: list[bytes] = []
    lines = iter(enumerate(sql.split(b"\n"), start=1))
    for number, line in lines:
        if _COPY_FROM_STDIN.match(line):
            if pending:
                parts.append(ScriptPart(b"\n".join(pending)))
                pending = []
            rows: list[bytes] = []
            for _, row in lines:
                if row == b"\\.":
                    break
                rows.append(row + b"\n")
            else:
                raise PermanentError(
                    f"legacy backup {path}: the COPY on line {number} has no end marker (\\.): the file is "
                    "truncated. Nothing was changed"
                )
            parts.append(ScriptPart(line.rstrip(), b"".join(rows)))
        elif line.lstrip().startswith(b"\\"):
            if _HARMLESS_META.match(line.strip()):
                continue
            command = line.strip().split(b" ", 1)[0].decode(errors="replace")
            raise PermanentError(
                f"legacy backup {path} contains the psql command `{command}` on line {number}: a backup may "
                "hold SQL only, and psql commands can run programs. Nothing was changed"
            )
        else:
            pending.append(line)
    if any(line.strip() for line in pending):
        parts.append(ScriptPart(b"\n".join(pending)))
    return parts
