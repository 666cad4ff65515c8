"""The backup file format: streaming zstd+age round trips and the signed manifest."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyrage import x25519

from reconciler.backup import keys, legacy, manifest, pipeline
from reconciler.errors import InvalidInput, PermanentError

IDENTITY = x25519.Identity.generate()
SHARED = Path(__file__).resolve().parents[3] / "shared"


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=300_000), st.booleans())
def test_pipeline_round_trip(data: bytes, encrypted: bool) -> None:
    out = io.BytesIO()
    recipients = [IDENTITY.to_public()] if encrypted else None
    assert pipeline.compress_encrypt(io.BytesIO(data), out, recipients) == len(data)
    if encrypted:
        assert out.getvalue().startswith(b"age-encryption.org/v1")
    back = io.BytesIO()
    pipeline.decrypt_decompress(io.BytesIO(out.getvalue()), back, IDENTITY if encrypted else None)
    assert back.getvalue() == data


def _encrypted(data: bytes) -> bytes:
    out = io.BytesIO()
    pipeline.compress_encrypt(io.BytesIO(data), out, [IDENTITY.to_public()])
    return out.getvalue()


def test_truncated_or_flipped_ciphertext_fails_to_decrypt() -> None:
    blob = _encrypted(os.urandom(500_000))
    with pytest.raises(Exception, match="decrypt"):
        pipeline.decrypt_decompress(io.BytesIO(blob[:-1000]), io.BytesIO(), IDENTITY)
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x01
    with pytest.raises(Exception, match="decrypt"):
        pipeline.decrypt_decompress(io.BytesIO(bytes(flipped)), io.BytesIO(), IDENTITY)


def test_wrong_identity_cannot_decrypt() -> None:
    with pytest.raises(Exception, match="No matching keys"):
        pipeline.decrypt_decompress(
            io.BytesIO(_encrypted(b"x" * 1000)), io.BytesIO(), x25519.Identity.generate()
        )


def _document() -> dict[str, object]:
    return {
        "format": manifest.FORMAT,
        "set": "s",
        "encryption": {"method": "age"},
        "members": [{"sha256": "ab"}],
    }


def test_manifest_mac_accepts_its_own_and_rejects_tampering_and_forgery() -> None:
    key = keys.mac_key(IDENTITY)
    signed = manifest.sign(_document(), key)
    manifest.verify(manifest.decode(manifest.encode(signed)), key)

    altered = manifest.decode(manifest.encode(signed))
    altered["members"][0]["sha256"] = "cd"  # type: ignore[index]
    with pytest.raises(manifest.ManifestRejected, match="altered"):
        manifest.verify(altered, key)

    forged = manifest.sign(_document(), keys.mac_key(x25519.Identity.generate()))  # knows only the recipient
    with pytest.raises(manifest.ManifestRejected, match="another identity"):
        manifest.verify(forged, key)

    with pytest.raises(manifest.ManifestRejected, match="not signed"):
        manifest.verify(_document(), key)


def test_keygen_writes_a_0600_age_keygen_compatible_file_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "backup.key"
    recipient = keys.generate(str(path))
    assert recipient.startswith("age1")
    assert (path.stat().st_mode & 0o777) == 0o600
    assert keys.recipient_of(keys.load(str(path))) == recipient
    assert f"# public key: {recipient}" in path.read_text()
    with pytest.raises(InvalidInput, match="refusing to overwrite"):
        keys.generate(str(path))
    path.chmod(0o644)
    with pytest.raises(PermanentError, match="chmod 600"):
        keys.load(str(path))
    with pytest.raises(PermanentError, match="does not exist"):
        keys.load(str(tmp_path / "missing.key"))


def test_legacy_fixture_decrypts_with_its_password_and_not_without() -> None:
    fixture = SHARED / "fixtures" / "loomio_backup_20251105_130000.sql.enc"
    assert fixture.exists(), f"the shared fixture is missing at {fixture}"
    password = "3f9c2a7d5e8b41c6a0d9e7f2b4c8a1d6e5f3b2a9c7d4e1f8a6b3c0d9e2f5a7b4"
    sql = legacy.decrypt(str(fixture), password)
    assert b"CREATE TABLE" in sql and "ünïcödé ✓".encode() in sql
    with pytest.raises(PermanentError, match="wrong password") as info:
        legacy.decrypt(str(fixture), "not-the-password")
    assert "not-the-password" not in str(info.value)


def test_hkdf_matches_rfc5869_and_the_cryptography_library() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    # RFC 5869 test case 1
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    expected = "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    assert keys.hkdf_sha256(ikm, salt, info, 42).hex() == expected
    reference = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"s", info=b"i").derive(b"secret")
    assert keys.hkdf_sha256(b"secret", b"s", b"i") == reference
