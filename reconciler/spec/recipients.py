"""Is a string an age X25519 recipient (``age1...``)? Decided here, in pure code, at validation time.

Why not ask pyrage: the spec layer is pure (import-linter forbids pyrage here), and validation must
refuse a bad recipient with its line and column before anything runs, not when the first backup
tries to encrypt to it an hour later. An age X25519 recipient is the Bech32 encoding (BIP 173, without
its 90-character limit) of the 32-byte public key under the human-readable part ``age``; checking the
checksum and the payload length is exactly what age itself does before it uses a recipient.
"""

from __future__ import annotations

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_X25519_KEY_BYTES = 32


def _polymod(values: list[int]) -> int:
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = (checksum & 0x1FFFFFF) << 5 ^ value
        for bit, generator in enumerate(_GENERATOR):
            if (top >> bit) & 1:
                checksum ^= generator
    return checksum


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _payload_bytes(data: list[int]) -> bytes | None:
    """5-bit groups → bytes; None when the padding is not canonical."""
    accumulator = bits = 0
    out = bytearray()
    for value in data:
        accumulator = (accumulator << 5) | value
        bits += 5
        while bits >= 8:
            bits -= 8
            out.append((accumulator >> bits) & 0xFF)
    if bits >= 5 or (accumulator << (8 - bits)) & 0xFF:
        return None
    return bytes(out)


def recipient_problem(text: str) -> str | None:
    """Why ``text`` is not an age X25519 recipient, or None when it is one."""
    if text != text.lower() and text != text.upper():
        return "mixes upper and lower case"
    lowered = text.lower()
    if not lowered.startswith("age1"):
        return "does not start with 'age1'"
    data_part = lowered[4:]
    if len(data_part) < 6 or any(c not in _CHARSET for c in data_part):
        return "is not Bech32 (it holds characters outside the Bech32 alphabet, or is too short)"
    data = [_CHARSET.index(c) for c in data_part]
    if _polymod(_hrp_expand("age") + data) != 1:
        return "has a wrong checksum (a typo, or a truncated copy)"
    payload = _payload_bytes(data[:-6])
    if payload is None or len(payload) != _X25519_KEY_BYTES:
        return "does not hold a 32-byte X25519 public key"
    return None
