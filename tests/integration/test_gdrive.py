"""The Drive store: the real google-api-python-client over HTTP against a local Drive v3 emulator."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reconciler.errors import PermanentError
from reconciler.spec.model import GdriveStoreSpec
from reconciler.stores.gdrive import GdriveStore
from tests.support.gdrive_emulator import DriveEmulator

pytestmark = pytest.mark.integration
MIB = 1024 * 1024


def authorized_user_file(path: Path, emulator: DriveEmulator) -> str:
    path.write_text(
        json.dumps(
            {
                "type": "authorized_user",
                "client_id": "test-client.apps.googleusercontent.com",
                "client_secret": "test-client-secret-value",
                "refresh_token": "test-refresh-token-value",
                "token_uri": f"{emulator.url}token",
            }
        )
    )
    path.chmod(0o600)
    return str(path)


def service_account_file(path: Path, emulator: DriveEmulator) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "test",
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": "backup@test.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": f"{emulator.url}token",
            }
        )
    )
    path.chmod(0o600)
    return str(path)


def make_store(emulator: DriveEmulator, credentials: str, folder: str, **options: object) -> GdriveStore:
    spec = GdriveStoreSpec(
        enabled=True,
        folder_id=folder,
        credentials_file=credentials,
        api_url=emulator.url,
        chunk_size=options.pop("chunk_size", 256 * 1024),
        **options,  # type: ignore[arg-type]
    )
    return GdriveStore(spec, credentials, attempts=6, deadline=60)


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


@pytest.mark.parametrize("kind", ["authorized_user", "service_account"])
def test_upload_list_download_round_trip(tmp_path: Path, emulator: DriveEmulator, kind: str) -> None:
    folder = emulator.make_folder()
    maker = authorized_user_file if kind == "authorized_user" else service_account_file
    store = make_store(
        emulator, maker(tmp_path / "creds.json", emulator), folder, sub_path="reconciler/loomio"
    )
    source = random_file(tmp_path / "member.bin", 3 * MIB + 123)
    result = store.upload("set-a.postgres.pgdump.zst.age", str(source))
    assert int(result["size"]) == source.stat().st_size
    listed = {f.name: f.size for f in store.list()}
    assert listed == {"set-a.postgres.pgdump.zst.age": source.stat().st_size}
    store.download("set-a.postgres.pgdump.zst.age", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()
    # the sub-path was created below the folder, once
    sub = [m for m in emulator.state.files.values() if m["name"] == "loomio"]
    assert len(sub) == 1
    store.delete("set-a.postgres.pgdump.zst.age")
    assert store.list() == []


def test_listing_pages_through_everything(tmp_path: Path, emulator: DriveEmulator) -> None:
    folder = emulator.make_folder()
    store = make_store(emulator, authorized_user_file(tmp_path / "c.json", emulator), folder)
    small = random_file(tmp_path / "s.bin", 10)
    for i in range(1203 // 100):
        store.upload(f"f{i:04d}", str(small))
    for meta in list(emulator.state.files.values())[:0]:
        del meta
    # many more files straight in the emulator, to cross page boundaries (pageSize 1000)
    for i in range(1100):
        emulator.state.files[f"x{i}"] = {
            "id": f"x{i}",
            "name": f"bulk{i:05d}",
            "parents": [folder],
            "size": "1",
        }
    names = [f.name for f in store.list()]
    assert len(names) == 1100 + 12 and len(set(names)) == len(names)
    assert any(r.startswith("GET /drive/v3/files") for r in emulator.state.requests)


def test_a_dropped_connection_mid_upload_resumes_from_the_committed_offset(
    tmp_path: Path, emulator: DriveEmulator
) -> None:
    folder = emulator.make_folder()
    store = make_store(
        emulator, authorized_user_file(tmp_path / "c.json", emulator), folder, chunk_size=4 * MIB
    )
    source = random_file(tmp_path / "big.bin", 50 * MIB)
    emulator.inject("upload-chunk", "drop", times=2)
    store.upload("big", str(source))
    assert emulator.content(folder, "big") == source.read_bytes()
    sent = emulator.state.bytes_received
    assert sent < 1.3 * source.stat().st_size, f"resumed uploads must not start over ({sent} bytes sent)"


def test_rate_limits_and_server_errors_are_retried_honouring_retry_after(
    tmp_path: Path, emulator: DriveEmulator
) -> None:
    folder = emulator.make_folder()
    store = make_store(emulator, authorized_user_file(tmp_path / "c.json", emulator), folder)
    source = random_file(tmp_path / "f.bin", MIB)
    emulator.inject("create", status=429, reason="rateLimitExceeded", retry_after=1)
    emulator.inject("upload-chunk", status=503, reason="backendError")
    emulator.inject("list", status=500, reason="backendError")
    store.upload("f", str(source))
    assert [f.name for f in store.list()] == ["f"]


def test_quota_exceeded_stops_at_once_with_an_actionable_message(
    tmp_path: Path, emulator: DriveEmulator
) -> None:
    folder = emulator.make_folder()
    emulator.state.quota_limit = 2 * MIB
    store = make_store(emulator, authorized_user_file(tmp_path / "c.json", emulator), folder)
    source = random_file(tmp_path / "f.bin", 3 * MIB)
    with pytest.raises(PermanentError, match="Google Drive is full") as info:
        store.upload("f", str(source))
    assert "test-client-secret" not in str(info.value) and "refresh-token" not in str(info.value)
    assert store.free_bytes() == 2 * MIB


def test_missing_folder_and_bad_credentials_are_explained(tmp_path: Path, emulator: DriveEmulator) -> None:
    store = make_store(emulator, authorized_user_file(tmp_path / "c.json", emulator), "no-such-folder")
    with pytest.raises(PermanentError, match="does not exist or is not shared"):
        store.list()
    broken = tmp_path / "broken.json"
    broken.write_text('{"type": "authorized_user", "client_secret": "s3cr3t-v4lue"}')
    broken.chmod(0o600)
    with pytest.raises(PermanentError, match="incomplete or malformed") as info:
        make_store(emulator, str(broken), emulator.make_folder()).list()
    assert "s3cr3t" not in str(info.value)
    emulator.inject("token", status=400, reason="invalid_grant", times=20)  # a revoked refresh token
    other = authorized_user_file(tmp_path / "c2.json", emulator)
    with pytest.raises(PermanentError, match="rejected the credentials") as info:
        make_store(emulator, other, emulator.make_folder()).list()
    assert "refresh-token-value" not in str(info.value)


def test_a_dropped_download_is_retried(tmp_path: Path, emulator: DriveEmulator) -> None:
    folder = emulator.make_folder()
    store = make_store(emulator, authorized_user_file(tmp_path / "c.json", emulator), folder)
    source = random_file(tmp_path / "f.bin", 2 * MIB)
    store.upload("f", str(source))
    emulator.inject("download", "drop", times=2)
    store.download("f", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()


def test_the_bandwidth_limit_is_honoured(tmp_path: Path, emulator: DriveEmulator) -> None:
    import time

    folder = emulator.make_folder()
    rate = 1024 * 1024  # 1 MiB/s
    store = make_store(
        emulator, authorized_user_file(tmp_path / "c.json", emulator), folder, bandwidth_limit=rate
    )
    source = random_file(tmp_path / "f.bin", 3 * MIB)
    store.list()
    started = time.monotonic()
    store.upload("f", str(source))
    elapsed = time.monotonic() - started
    assert elapsed >= 0.9 * (3 * MIB) / rate, f"3 MiB at 1 MiB/s took only {elapsed:.2f} s"


def test_gdrive_login_writes_a_working_authorized_user_file(tmp_path: Path, emulator: DriveEmulator) -> None:
    import subprocess
    import sys
    import urllib.parse

    secrets = tmp_path / "client.json"
    secrets.write_text(
        json.dumps(
            {
                "installed": {
                    "client_id": "desktop.apps.googleusercontent.com",
                    "client_secret": "desktop-secret",
                    "auth_uri": f"{emulator.url}auth",
                    "token_uri": f"{emulator.url}token",
                }
            }
        )
    )
    out = tmp_path / "gdrive.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reconciler",
            "gdrive",
            "login",
            "--client-secrets",
            str(secrets),
            "--out",
            str(out),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None and process.stdin is not None
    url = ""
    while not url:
        line = process.stderr.readline()
        assert line, "the login printed no address"
        if line.startswith(f"{emulator.url}auth?"):
            url = line.strip()
    query = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)
    assert query["code_challenge_method"] == ["S256"] and query["access_type"] == ["offline"]
    process.stdin.write(f"http://127.0.0.1:8765/?state={query['state'][0]}&code=emulated-auth-code&scope=x\n")
    process.stdin.flush()
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert f"wrote {out}" in stdout
    assert (out.stat().st_mode & 0o777) == 0o600
    assert json.loads(out.read_text())["refresh_token"] == "emulated-refresh"
    store = make_store(emulator, str(out), emulator.make_folder())
    assert store.list() == []


def test_gdrive_login_rejects_an_address_from_another_attempt(tmp_path: Path) -> None:
    from reconciler.errors import InvalidInput
    from reconciler.stores import gdrive_login

    secrets = tmp_path / "client.json"
    secrets.write_text(json.dumps({"installed": {"client_id": "a", "client_secret": "b"}}))
    session = gdrive_login.start(str(secrets))
    with pytest.raises(InvalidInput, match="state mismatch"):
        gdrive_login.code_from("http://127.0.0.1:8765/?state=other&code=c", session)
    assert gdrive_login.code_from("bare-code", session) == "bare-code"
