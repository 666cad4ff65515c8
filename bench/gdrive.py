"""Drive store throughput against the local emulator, vs a plain HTTP PUT/GET of the same bytes.

Measures, in one run on loopback:
- upload and download throughput of the Drive store (the real google-api-python-client: resumable,
  chunked, md5-checked) against a plain single-request HTTP PUT/GET of the same bytes to the same
  server (the baseline: what the wire and the server cost without the protocol);
- bytes sent per byte stored, without faults and with a dropped connection every few chunks.

Usage: python bench/gdrive.py [--mb 64] [--chunk-mib 8]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stack import print_table, write_results

from reconciler.spec.model import GdriveStoreSpec
from reconciler.stores.gdrive import GdriveStore
from tests.support.gdrive_emulator import DriveEmulator


def credentials(path: Path, emulator: DriveEmulator) -> str:
    path.write_text(
        json.dumps(
            {
                "type": "authorized_user",
                "client_id": "bench",
                "client_secret": "bench",
                "refresh_token": "bench",
                "token_uri": f"{emulator.url}token",
            }
        )
    )
    path.chmod(0o600)
    return str(path)


def store_settings(directory: Path, emulator: DriveEmulator) -> dict[str, Any]:
    """The state.yaml ``backup.stores.gdrive`` block of a stack backed by the emulator: a fresh
    folder and credentials (in ``directory``) that the emulator's token endpoint accepts."""
    return {
        "enabled": True,
        "folder_id": emulator.make_folder(),
        "credentials_file": credentials(directory / "gdrive.json", emulator),
        "api_url": emulator.url,
    }


def plain_put_get(emulator: DriveEmulator, data_path: Path) -> tuple[float, float]:
    """One resumable session with a single PUT of everything, then one GET of the file: the floor."""
    size = data_path.stat().st_size
    conn = http.client.HTTPConnection("127.0.0.1", emulator.port, timeout=120)
    folder = emulator.make_folder("plain")
    conn.request(
        "POST",
        "/upload/drive/v3/files?uploadType=resumable",
        body=json.dumps({"name": "plain", "parents": [folder]}),
        headers={"X-Upload-Content-Length": str(size), "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    response.read()
    location = response.getheader("Location")
    assert location is not None
    start = time.perf_counter()
    with data_path.open("rb") as handle:
        conn.request(
            "PUT",
            location.split(str(emulator.port), 1)[1],
            body=handle,
            headers={"Content-Length": str(size), "Content-Range": f"bytes 0-{size - 1}/{size}"},
        )
        meta = json.loads(conn.getresponse().read())
    upload = time.perf_counter() - start
    start = time.perf_counter()
    conn.request("GET", f"/drive/v3/files/{meta['id']}?alt=media")
    body = conn.getresponse().read()
    download = time.perf_counter() - start
    assert len(body) == size
    return upload, download


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--chunk-mib", type=int, default=8)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "member.bin"
        data.write_bytes(os.urandom(args.mb * 1024 * 1024))
        size = data.stat().st_size
        for faults in (0, 3):
            emulator = DriveEmulator(str(work / f"drive{faults}"))
            try:
                folder = emulator.make_folder()
                spec = GdriveStoreSpec(
                    enabled=True,
                    folder_id=folder,
                    credentials_file="x",
                    api_url=emulator.url,
                    chunk_size=args.chunk_mib * 1024 * 1024,
                )
                store = GdriveStore(spec, credentials(work / "c.json", emulator))
                store.list()  # token, folder check: not part of the transfer
                if faults:
                    emulator.inject("upload-chunk", "drop", times=faults)
                before = emulator.state.bytes_received
                start = time.perf_counter()
                store.upload("member.bin", str(data))
                upload = time.perf_counter() - start
                sent = emulator.state.bytes_received - before
                if faults:
                    emulator.inject("download", "drop", times=faults)
                start = time.perf_counter()
                store.download("member.bin", str(work / "back.bin"))
                download = time.perf_counter() - start
                assert (work / "back.bin").read_bytes() == data.read_bytes()
                plain_up, plain_down = plain_put_get(emulator, data) if not faults else (None, None)
            finally:
                emulator.stop()
            rows.append(
                {
                    "faults": faults,
                    "upload_mb_s": round(size / upload / 1e6, 1),
                    "download_mb_s": round(size / download / 1e6, 1),
                    "bytes_sent_per_byte_stored": round(sent / size, 3),
                    "plain_put_mb_s": round(size / plain_up / 1e6, 1) if plain_up else None,
                    "plain_get_mb_s": round(size / plain_down / 1e6, 1) if plain_down else None,
                }
            )
    print_table(
        f"Drive store vs plain HTTP on loopback, {args.mb} MiB file, {args.chunk_mib} MiB chunks",
        [
            "dropped connections",
            "upload MB/s",
            "download MB/s",
            "bytes sent / stored",
            "plain PUT MB/s",
            "plain GET MB/s",
        ],
        [
            [
                str(r["faults"]),
                str(r["upload_mb_s"]),
                str(r["download_mb_s"]),
                str(r["bytes_sent_per_byte_stored"]),
                str(r["plain_put_mb_s"] or "-"),
                str(r["plain_get_mb_s"] or "-"),
            ]
            for r in rows
        ],
    )
    print(f"results: {write_results('gdrive', rows, mb=args.mb, chunk_mib=args.chunk_mib)}")


if __name__ == "__main__":
    main()
