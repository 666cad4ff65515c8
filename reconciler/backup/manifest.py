"""The manifest: the commit marker and the integrity record of a backup set.

Design decisions:
- Written last. A set whose manifest is missing is incomplete and is never restored.
- It records, per member file, the size and sha256 *of the stored (encrypted) bytes*: restore checks
  them before streaming anything into a database, so a truncated or flipped file is rejected before it
  can half-overwrite live data.
- An HMAC-SHA256 over the canonical JSON (sorted keys, no whitespace, without the ``mac`` field) under
  a key derived from the secret identity authenticates the whole set: sizes and hashes of every member
  included. A set planted by someone who knows only the public recipient fails here.
- It stays readable without the key (no secrets inside), so ``reconciler backups`` can list sets and
  their sizes on a machine that holds only the public key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from reconciler.backup.keys import key_id

FORMAT = "reconciler-backup-set/1"


class ManifestRejected(Exception):
    """The manifest is malformed, unsigned when it must be signed, or its MAC does not verify."""


def canonical(document: dict[str, Any]) -> bytes:
    body = {k: v for k, v in document.items() if k != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(document: dict[str, Any], key: bytes) -> dict[str, Any]:
    value = hmac.new(key, canonical(document), hashlib.sha256).hexdigest()
    return {**document, "mac": {"alg": "hmac-sha256", "key_id": key_id(key), "value": value}}


def encode(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def decode(data: bytes) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestRejected(f"manifest is not valid JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ManifestRejected(f"manifest is not a {FORMAT} document")
    if not isinstance(document.get("members"), list):
        raise ManifestRejected("manifest lists no members")
    return document


def verify(document: dict[str, Any], key: bytes | None) -> None:
    """Raise ManifestRejected unless the MAC verifies (or the set is explicitly unencrypted and unsigned)."""
    mac = document.get("mac")
    method = document.get("encryption", {}).get("method")
    if key is None:
        if method == "none" and mac is None:
            return
        raise ManifestRejected("the set is signed but no identity is available to check it")
    if not isinstance(mac, dict) or "value" not in mac:
        raise ManifestRejected("the manifest is not signed: it was not made by a holder of this identity")
    expected = hmac.new(key, canonical(document), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, str(mac["value"])):
        if mac.get("key_id") != key_id(key):
            raise ManifestRejected(
                "the manifest was signed with another identity (or forged by someone who knows only the "
                "public recipient)"
            )
        raise ManifestRejected("the manifest's MAC does not match its content: it was altered")
