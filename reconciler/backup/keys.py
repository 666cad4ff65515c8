"""age identities: generate, store safely, load with clear errors, derive the manifest MAC key.

Design decisions:
- The identity file has the same format as ``age-keygen`` output, so the standard ``age -d -i FILE``
  can decrypt a backup without this tool (disaster recovery must not depend on us).
- Anyone who knows the public recipient can *encrypt* a file that decrypts fine; encryption alone
  does not prove who made a backup. The manifest therefore carries an HMAC under a key derived (HKDF)
  from the secret identity: only a holder of the identity can produce a set that restore accepts.
- Errors name the file, never its content.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from datetime import UTC, datetime

from pyrage import x25519

from reconciler.errors import InvalidInput, PermanentError

_MAC_SALT = b"reconciler/manifest-mac/v1"


def generate(path: str) -> str:
    """Write a new identity file (mode 0600, never overwriting) and return its public recipient."""
    identity = x25519.Identity.generate()
    recipient = str(identity.to_public())
    created = datetime.now(UTC).isoformat(timespec="seconds")
    content = f"# created: {created}\n# public key: {recipient}\n{identity}\n"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InvalidInput(
            f"{path} already exists; refusing to overwrite an identity (backups depend on it)"
        ) from None
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    return recipient


def load(path: str) -> x25519.Identity:
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        raise PermanentError(
            f"identity file {path} does not exist; create one with `reconciler keygen` "
            "(and keep a copy somewhere safe: without it no backup can be restored)"
        ) from None
    except (PermissionError, UnicodeDecodeError):
        raise PermanentError(f"identity file {path} is not readable") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermanentError(f"identity file {path} is accessible by other users; run `chmod 600 {path}`")
    secrets = [line.strip() for line in lines if line.strip().startswith("AGE-SECRET-KEY-")]
    if not secrets:
        raise PermanentError(f"identity file {path} holds no age identity (AGE-SECRET-KEY-...)")
    try:
        return x25519.Identity.from_str(secrets[0])
    except Exception:
        raise PermanentError(f"identity file {path} holds a malformed age identity") from None


def recipient_of(identity: x25519.Identity) -> str:
    return str(identity.to_public())


def parse_recipients(recipients: list[str]) -> list[x25519.Recipient]:
    parsed = []
    for text in recipients:
        try:
            parsed.append(x25519.Recipient.from_str(text))
        except Exception:
            raise InvalidInput(
                f"backup.encryption.recipients: {text[:16]}... is not a valid age recipient"
            ) from None
    return parsed


def hkdf_sha256(secret: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 HKDF with SHA-256 (stdlib only: importing `cryptography` costs ~6 MB of RSS)."""
    prk = hmac.new(salt, secret, hashlib.sha256).digest()
    output, block = b"", b""
    counter = 1
    while len(output) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        output += block
        counter += 1
    return output[:length]


def mac_key(identity: x25519.Identity) -> bytes:
    return hkdf_sha256(str(identity).encode(), _MAC_SALT, b"manifest")


def key_id(key: bytes) -> str:
    """A public fingerprint of a MAC key, so a rejection can say "made with another identity"."""
    return hashlib.sha256(b"key-id" + key).hexdigest()[:16]
