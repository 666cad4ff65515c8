"""The legacy Loomio RAM-mode backup format: one Fernet token over a plain-SQL pg_dump.

Key = urlsafe_b64encode(PBKDF2-HMAC-SHA256(password, salt=b"loomio-backup-salt", 100000, 32)).
The format cannot be streamed (a Fernet token is authenticated as a whole), so the file is decrypted
in memory once, entirely, *before* any database is touched: a wrong password or a damaged file fails
here and changes nothing. (The old scripts called this AES-256; Fernet is AES-128-CBC + HMAC-SHA256.)
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from reconciler.errors import PermanentError

SALT = b"loomio-backup-salt"
ITERATIONS = 100_000


def derive_key(password: str) -> bytes:
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=SALT, iterations=ITERATIONS)
    return base64.urlsafe_b64encode(kdf.derive(password.encode()))


def decrypt(path: str, password: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            token = handle.read().strip()
    except FileNotFoundError:
        raise PermanentError(f"legacy backup {path} does not exist") from None
    try:
        return Fernet(derive_key(password)).decrypt(token)
    except InvalidToken:
        raise PermanentError(
            f"cannot decrypt {path}: wrong password (the installation's BACKUP_ENCRYPTION_KEY) or a damaged "
            "file. Nothing was changed"
        ) from None
