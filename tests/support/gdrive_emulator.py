"""A local emulator of the Google Drive v3 HTTP API, for testing the real google-api-python-client.

It serves, on 127.0.0.1, what the Drive store uses: files.list (with the ``q`` expressions the store
sends and nextPageToken paging), files.create (metadata-only, multipart and resumable uploads with
308 "Resume Incomplete" and status queries), files.get (metadata, and ``alt=media`` with Range),
files.update, files.delete, about.get, and an OAuth token endpoint. File contents are kept on disk.

Faults are injected on demand (``emulator.inject(...)``): an HTTP status with an optional
Retry-After (429, 500, 503, 403 quota exceeded, 401), a connection dropped in the middle of an upload
chunk or of a download, and slow responses. The emulator counts the bytes it received, so tests can
assert that a resumed upload did not start over.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

FOLDER = "application/vnd.google-apps.folder"
GRANULARITY = 256 * 1024  # Drive commits resumable uploads in multiples of 256 KiB


@dataclass
class Fault:
    operation: str  # "list" | "create" | "upload-chunk" | "download" | "about" | "delete" | "get" | "any"
    kind: str  # "status" | "drop" | "slow"
    status: int = 500
    reason: str = "backendError"
    retry_after: int | None = None
    times: int = 1
    delay: float = 0.0


@dataclass
class Session:
    metadata: dict[str, Any]
    total: int | None
    path: str
    received: int = 0


@dataclass
class State:
    root: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    quota_limit: int = 15 * 1024**3
    bytes_received: int = 0
    # every file content stored, in order (name, parents, size): what was uploaded where, including
    # versions deleted since (a bench counts the uplink of one folder with it)
    uploads: list[tuple[str, list[str], int]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def blob(self, file_id: str) -> str:
        return os.path.join(self.root, file_id)

    def usage(self) -> int:
        return sum(int(f.get("size", 0)) for f in self.files.values())


def _created_now() -> str:
    """RFC 3339 with milliseconds, as Drive reports createdTime (two uploads a second apart order)."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


def _match_q(query: str, meta: dict[str, Any]) -> bool:
    for raw in re.split(r"\s+and\s+", query.strip()):
        clause = raw.strip()
        if m := re.fullmatch(r"'([^']+)' in parents", clause):
            if m.group(1) not in meta.get("parents", []):
                return False
        elif m := re.fullmatch(r"name\s*=\s*'((?:[^'\\]|\\.)*)'", clause):
            if meta["name"] != m.group(1).replace("\\'", "'"):
                return False
        elif m := re.fullmatch(r"mimeType\s*(=|!=)\s*'([^']+)'", clause):
            if (meta.get("mimeType") == m.group(2)) != (m.group(1) == "="):
                return False
        elif m := re.fullmatch(r"trashed\s*=\s*(true|false)", clause):
            if bool(meta.get("trashed")) != (m.group(1) == "true"):
                return False
        elif clause:
            raise ValueError(f"unsupported q clause: {clause}")
    return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    # -- plumbing -------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.server.state

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if body is not None and not isinstance(body, bytes):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, reason: str, message: str, retry_after: int | None = None) -> None:
        body = {
            "error": {"code": status, "message": message, "errors": [{"reason": reason, "message": message}]}
        }
        self._send(status, body, {"Retry-After": str(retry_after)} if retry_after is not None else None)

    def _fault(self, operation: str) -> Fault | None:
        with self.state.lock:
            for fault in self.state.faults:
                if fault.operation in (operation, "any") and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    def _apply_status_fault(self, operation: str) -> bool:
        fault = self._fault(operation)
        if fault is None:
            return False
        if fault.kind == "slow":
            time.sleep(fault.delay)
            return False
        if fault.kind == "status":
            self._discard_body()
            self._error(
                fault.status, fault.reason, f"injected {fault.status} {fault.reason}", fault.retry_after
            )
            return True
        if fault.kind == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
            return True
        return False

    def _discard_body(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        self.state.bytes_received += len(data)
        return data

    def _route(self) -> tuple[str, dict[str, list[str]]]:
        url = urlparse(self.path)
        self.state.requests.append(f"{self.command} {url.path}")
        return url.path, parse_qs(url.query)

    # -- verbs ----------------------------------------------------------------------------

    def do_POST(self) -> None:
        path, query = self._route()
        if path == "/token":
            fault = self._fault("token")
            if fault is not None:
                self._discard_body()
                self._send(fault.status, {"error": fault.reason, "error_description": "injected"})
                return
            form = parse_qs(self._body().decode())
            if form.get("grant_type") == ["authorization_code"]:
                if form.get("code") != ["emulated-auth-code"] or not form.get("code_verifier"):
                    self._send(400, {"error": "invalid_grant"})
                    return
                self._send(
                    200, {"access_token": "emulated", "refresh_token": "emulated-refresh", "expires_in": 3600}
                )
                return
            self._send(
                200,
                {"access_token": "emulated-" + uuid.uuid4().hex, "expires_in": 3600, "token_type": "Bearer"},
            )
            return
        if path == "/upload/drive/v3/files" and query.get("uploadType") == ["resumable"]:
            if self._apply_status_fault("create"):
                return
            metadata = json.loads(self._body() or b"{}")
            total = self.headers.get("X-Upload-Content-Length")
            if total and self.state.usage() + int(total) > self.state.quota_limit:
                self._error(403, "storageQuotaExceeded", "The user's Drive storage quota has been exceeded.")
                return
            if any(parent not in self.state.files for parent in metadata.get("parents", [])):
                self._error(404, "notFound", f"File not found: {metadata.get('parents')}.")
                return
            session_id = uuid.uuid4().hex
            blob = os.path.join(self.state.root, f"upload-{session_id}")
            open(blob, "wb").close()
            self.state.sessions[session_id] = Session(metadata, int(total) if total else None, blob)
            location = f"http://{self.headers['Host']}/upload/drive/v3/files?uploadType=resumable&upload_id={session_id}"
            self._send(200, None, {"Location": location})
            return
        if path == "/upload/drive/v3/files" and query.get("uploadType") == ["multipart"]:
            if self._apply_status_fault("create"):
                return
            body = self._body()
            boundary = self.headers.get_content_type() and self.headers.get_param("boundary")
            parts = body.split(b"--" + str(boundary).encode())
            meta_part, media_part = parts[1], parts[2]
            metadata = json.loads(meta_part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0])
            content = media_part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
            self._send(200, self._store(metadata, content))
            return
        if path == "/drive/v3/files":
            if self._apply_status_fault("create"):
                return
            metadata = json.loads(self._body() or b"{}")
            if any(parent not in self.state.files for parent in metadata.get("parents", [])):
                self._error(404, "notFound", f"File not found: {metadata.get('parents')}.")
                return
            self._send(200, self._store(metadata, None))
            return
        self._error(404, "notFound", f"no route {path}")

    def do_PUT(self) -> None:
        _, query = self._route()
        session_id = (query.get("upload_id") or [""])[0]
        session = self.state.sessions.get(session_id)
        if session is None:
            self._discard_body()
            self._error(404, "notFound", "upload session not found")
            return
        content_range = self.headers.get("Content-Range", "")
        length = int(self.headers.get("Content-Length") or 0)
        if content_range.startswith("bytes */"):  # status query
            self._discard_body()
            self._session_status(session)
            return
        fault = self._fault("upload-chunk")
        if fault is not None and fault.kind == "status":
            self._discard_body()
            self._error(
                fault.status, fault.reason, f"injected {fault.status} {fault.reason}", fault.retry_after
            )
            return
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", content_range)
        if not m:
            self._discard_body()
            self._error(400, "badRequest", f"bad Content-Range {content_range!r}")
            return
        start = int(m.group(1))
        if m.group(3) != "*":
            session.total = int(m.group(3))
        if fault is not None and fault.kind == "drop":
            # read half of the chunk, commit what a real server would (whole 256 KiB units), hang up
            half = self.rfile.read(max(1, length // 2))
            self.state.bytes_received += len(half)
            if start == session.received:
                keep = (len(half) // GRANULARITY) * GRANULARITY
                with open(session.path, "ab") as handle:
                    handle.write(half[:keep])
                session.received += keep
            self.close_connection = True
            self.connection.shutdown(2)
            return
        data = self._body()
        if start > session.received:  # a gap: the client must ask where to resume
            self._session_status(session)
            return
        # Like Drive, accept a chunk that overlaps what is already committed and drop the duplicate bytes.
        fresh = data[session.received - start :]
        with open(session.path, "ab") as handle:
            handle.write(fresh)
        session.received += len(fresh)
        if session.total is not None and session.received >= session.total:
            with open(session.path, "rb") as handle:
                content = handle.read()
            os.unlink(session.path)
            del self.state.sessions[session_id]
            self._send(200, self._store(session.metadata, content))
            return
        self._session_status(session)

    def _session_status(self, session: Session) -> None:
        headers = {"Range": f"bytes=0-{session.received - 1}"} if session.received else {}
        self._send(308, None, headers)

    def do_GET(self) -> None:
        path, query = self._route()
        if path == "/drive/v3/about":
            if self._apply_status_fault("about"):
                return
            self._send(
                200,
                {
                    "storageQuota": {"limit": str(self.state.quota_limit), "usage": str(self.state.usage())},
                    "user": {"emailAddress": "backup@example.test"},
                },
            )
            return
        if path == "/drive/v3/files":
            if self._apply_status_fault("list"):
                return
            q = (query.get("q") or [""])[0]
            size = int((query.get("pageSize") or ["100"])[0])
            offset = int((query.get("pageToken") or ["0"])[0])
            try:
                matches = sorted(
                    (m for m in self.state.files.values() if _match_q(q, m)),
                    key=lambda m: (m["name"], m["id"]),
                )
                if (query.get("orderBy") or [""])[0] == "createdTime":  # what the WAL area asks for
                    matches.sort(key=lambda m: str(m.get("createdTime", "")))
            except ValueError as exc:
                self._error(400, "invalid", str(exc))
                return
            page = matches[offset : offset + size]
            body: dict[str, Any] = {"files": [self._public(m) for m in page]}
            if offset + size < len(matches):
                body["nextPageToken"] = str(offset + size)
            self._send(200, body)
            return
        if m := re.fullmatch(r"/drive/v3/files/([^/]+)", path):
            meta = self.state.files.get(m.group(1))
            if meta is None or meta.get("trashed"):
                self._error(404, "notFound", f"File not found: {m.group(1)}.")
                return
            if query.get("alt") == ["media"]:
                self._media(meta)
                return
            if self._apply_status_fault("get"):
                return
            self._send(200, self._public(meta))
            return
        self._error(404, "notFound", f"no route {path}")

    def _media(self, meta: dict[str, Any]) -> None:
        with open(self.state.blob(meta["id"]), "rb") as handle:
            content = handle.read()
        start, end = 0, len(content) - 1
        status = 200
        if rng := self.headers.get("Range"):
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
            if m:
                start = int(m.group(1))
                end = min(int(m.group(2)) if m.group(2) else end, len(content) - 1)
                status = 206
        chunk = content[start : end + 1]
        fault = self._fault("download")
        if fault is not None and fault.kind == "status":
            self._error(fault.status, fault.reason, "injected", fault.retry_after)
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(chunk)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(content)}")
        self.end_headers()
        if fault is not None and fault.kind == "drop":
            self.wfile.write(chunk[: len(chunk) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(chunk)

    def do_DELETE(self) -> None:
        path, _ = self._route()
        if self._apply_status_fault("delete"):
            return
        m = re.fullmatch(r"/drive/v3/files/([^/]+)", path)
        if not m or m.group(1) not in self.state.files:
            self._error(404, "notFound", "File not found.")
            return
        self.state.files.pop(m.group(1))
        if os.path.exists(self.state.blob(m.group(1))):
            os.unlink(self.state.blob(m.group(1)))
        self._send(204)

    def do_PATCH(self) -> None:
        path, query = self._route()
        m = re.fullmatch(r"/drive/v3/files/([^/]+)", path)
        if not m or m.group(1) not in self.state.files:
            self._discard_body()
            self._error(404, "notFound", "File not found.")
            return
        meta = self.state.files[m.group(1)]
        meta.update(
            {
                k: v
                for k, v in json.loads(self._body() or b"{}").items()
                if k in ("name", "trashed", "description")
            }
        )
        for parent in (query.get("addParents") or [""])[0].split(","):
            if parent:
                meta.setdefault("parents", []).append(parent)
        for parent in (query.get("removeParents") or [""])[0].split(","):
            if parent in meta.get("parents", []):
                meta["parents"].remove(parent)
        self._send(200, self._public(meta))

    # -- storage --------------------------------------------------------------------------

    def _store(self, metadata: dict[str, Any], content: bytes | None) -> dict[str, Any]:
        file_id = uuid.uuid4().hex[:20]
        meta = {
            "id": file_id,
            "name": metadata.get("name", "untitled"),
            "mimeType": metadata.get("mimeType", "application/octet-stream"),
            "parents": list(metadata.get("parents", [])),
            "createdTime": _created_now(),
        }
        if content is not None:
            with open(self.state.blob(file_id), "wb") as handle:
                handle.write(content)
            meta.update(size=str(len(content)), md5Checksum=hashlib.md5(content).hexdigest())
            self.state.uploads.append((str(meta["name"]), list(meta["parents"]), len(content)))
        self.state.files[file_id] = meta
        return self._public(meta)

    @staticmethod
    def _public(meta: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in meta.items() if k != "trashed"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: State


class DriveEmulator:
    """Start with ``DriveEmulator(directory)``; ``url`` is its root; ``stop()`` shuts it down."""

    def __init__(self, directory: str, port: int = 0) -> None:
        os.makedirs(directory, exist_ok=True)
        self.state = State(directory)
        self.server = _Server(("127.0.0.1", port), _Handler)
        self.server.state = self.state
        self._port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def start_again(self) -> None:
        """After ``stop()``: serve the same files on the same port again (an outage that ends)."""
        self.server = _Server(("127.0.0.1", self.port), _Handler)
        self.server.state = self.state
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def make_folder(self, name: str = "backups", parent: str | None = None) -> str:
        meta = {"name": name, "mimeType": FOLDER, "parents": [parent] if parent else []}
        file_id = uuid.uuid4().hex[:20]
        self.state.files[file_id] = {"id": file_id, **meta}
        return file_id

    def inject(self, operation: str, kind: str = "status", **kwargs: Any) -> Fault:
        fault = Fault(operation, kind, **kwargs)
        self.state.faults.append(fault)
        return fault

    def names_in(self, folder: str) -> list[str]:
        return sorted(m["name"] for m in self.state.files.values() if folder in m.get("parents", []))

    def content(self, folder: str, name: str) -> bytes:
        meta = next(
            m for m in self.state.files.values() if folder in m.get("parents", []) and m["name"] == name
        )
        with open(self.state.blob(meta["id"]), "rb") as handle:
            return handle.read()
