"""The Google Drive store, on the official client library (Drive v3) and google-auth.

Design decisions:
- The service is built from the static discovery document bundled with google-api-python-client,
  with ``rootUrl`` replaced when ``api_url`` is set: the library derives media-upload URLs from
  ``rootUrl``, so this is the one way to point *all* of its requests at a local emulator in tests.
- Uploads are resumable and chunked (``chunk_size``). After a dropped connection the library asks
  the server how much it committed (``Content-Range: bytes */N``) and resumes from there; we only
  decide whether and when to try again. After the last chunk, Drive's md5Checksum and size must equal
  the local file's, or the remote file is deleted and the upload fails.
- Retries (tenacity): exponential backoff with jitter on 429, 5xx, rate-limit 403s, timeouts and
  connection resets, honouring Retry-After. Permanent errors stop at once with what to do: a rejected
  credential (401), missing write access (403), a full Drive (storageQuotaExceeded), a missing folder.
- Credential file contents never appear in messages: only its path does. A credentials file other
  users can read is refused (``chmod 600``), and ``api_url`` (the emulator in tests) must be a
  loopback address: whoever can commit to state.yaml must not be able to send the refresh token and
  the backups elsewhere.
"""

from __future__ import annotations

import builtins
import hashlib
import http.client
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, BinaryIO, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_after_delay

from reconciler.errors import PermanentError, TransientError
from reconciler.plan.backupsets import StoredFile
from reconciler.spec.model import GdriveStoreSpec, is_loopback_url

log = logging.getLogger(__name__)

SCOPES = ["https://www.googleapis.com/auth/drive"]
FOLDER_MIME = "application/vnd.google-apps.folder"
T = TypeVar("T")
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_RATE_LIMIT_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "backendError"}


class FolderMissing(PermanentError):
    """A folder below folder_id does not exist, and this store only reads (``create_folders=False``)."""


def _http_error_details(exc: Exception) -> tuple[int, str]:
    from googleapiclient.errors import HttpError

    if not isinstance(exc, HttpError):
        return 0, ""
    reason = ""
    try:
        body = json.loads(exc.content.decode() if isinstance(exc.content, bytes) else exc.content)
        reason = body["error"]["errors"][0].get("reason", "")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        pass
    return int(exc.resp.status), reason


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TransientError):
        return True
    if isinstance(
        exc, ConnectionError | TimeoutError | socket.timeout | http.client.HTTPException | BrokenPipeError
    ):
        return True
    if type(exc).__module__.startswith("httplib2"):
        return True
    if isinstance(exc, Exception):
        status, reason = _http_error_details(exc)
        return status in _TRANSIENT_STATUS or (status == 403 and reason in _RATE_LIMIT_REASONS)
    return False


def _retry_after(exc: BaseException | None) -> float | None:
    resp = getattr(exc, "resp", None)
    value = resp.get("retry-after") if resp is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class _Backoff:
    """Honour Retry-After when the server sends one, else exponential backoff with full jitter."""

    def __init__(self, base: float = 0.5, cap: float = 30.0) -> None:
        self.base = base
        self.cap = cap

    def __call__(self, state: RetryCallState) -> float:
        import random

        exc = state.outcome.exception() if state.outcome else None
        hinted = _retry_after(exc)
        if hinted is not None:
            return min(hinted, 300.0)
        return random.uniform(0, min(self.cap, self.base * 2 ** (state.attempt_number - 1)))


class _Throttle:
    """A reader that delivers at most ``rate`` bytes per second (token bucket)."""

    def __init__(self, raw: BinaryIO, rate: int | None) -> None:
        self.raw = raw
        self.rate = rate
        self.started = time.monotonic()
        self.sent = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if self.rate:
            self.sent += len(data)
            ahead = self.sent / self.rate - (time.monotonic() - self.started)
            if ahead > 0:
                time.sleep(ahead)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()


def file_md5(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class GdriveStore:
    name = "gdrive"

    def __init__(
        self,
        spec: GdriveStoreSpec,
        credentials_file: str,
        attempts: int = 8,
        deadline: float = 600,
        create_folders: bool = True,
    ) -> None:
        self.spec = spec
        self.create_folders = create_folders  # False: a reader, which must not race a writer creating them
        self.credentials_file = credentials_file
        self.attempts = attempts
        self.deadline = deadline
        self._service: Any = None
        self._folder: str | None = None
        self._ids: dict[str, str] = {}
        self._md5s: dict[str, str | None] = {}

    def describe(self) -> str:
        return f"Google Drive folder {self.spec.folder_id}{'/' + self.spec.sub_path if self.spec.sub_path else ''}"

    # -- plumbing -------------------------------------------------------------------------

    def _api_url(self) -> str | None:
        """``api_url`` (loopback only, checked again here: the spec may not come from the loader)."""
        url = self.spec.api_url
        if url is not None and not is_loopback_url(url):
            raise PermanentError(
                f"backup.stores.gdrive.api_url {url} is not a loopback address; refusing to send the Drive "
                "credentials or any backup there. Remove api_url to use Google Drive"
            )
        return url

    def _credentials(self) -> Any:
        credentials = self._load_credentials()
        api_url = self._api_url()
        if api_url and hasattr(credentials, "with_token_uri"):
            # google-auth sends authorized-user refresh tokens only to Google's own token endpoint
            # (a credentials file cannot redirect them); an emulator in tests is the one exception.
            credentials = credentials.with_token_uri(f"{api_url.rstrip('/')}/token")
        return credentials

    def _load_credentials(self) -> Any:
        path = self.credentials_file
        try:
            with open(path, encoding="utf-8") as handle:
                mode = os.fstat(handle.fileno()).st_mode
                if mode & 0o077:
                    raise PermanentError(
                        f"Drive credentials file {path} is accessible to other users (mode {mode & 0o777:04o}); "
                        f"run `chmod 600 {path}`"
                    )
                info = json.load(handle)
        except FileNotFoundError:
            raise PermanentError(
                f"Drive credentials file {path} does not exist; create it with `reconciler gdrive login` "
                "(personal account) or download a service-account key (Shared Drive)"
            ) from None
        except (OSError, ValueError):
            raise PermanentError(f"Drive credentials file {path} is not readable JSON") from None
        kind = info.get("type") if isinstance(info, dict) else None
        try:
            if kind == "authorized_user":
                from google.oauth2.credentials import Credentials

                return Credentials.from_authorized_user_info(info, SCOPES)  # type: ignore[no-untyped-call]
            if kind == "service_account":
                from google.oauth2 import service_account

                return service_account.Credentials.from_service_account_info(info, scopes=SCOPES)  # type: ignore[no-untyped-call]
        except (ValueError, KeyError):
            raise PermanentError(f"Drive credentials file {path} is incomplete or malformed") from None
        raise PermanentError(
            f"Drive credentials file {path} is neither an authorized-user file nor a service-account key"
        )

    def _build(self) -> Any:
        if self._service is None:
            import google_auth_httplib2
            import googleapiclient
            import httplib2
            from googleapiclient.discovery import build_from_document

            document_path = os.path.join(
                os.path.dirname(googleapiclient.__file__), "discovery_cache", "documents", "drive.v3.json"
            )
            with open(document_path, encoding="utf-8") as handle:
                document = json.load(handle)
            api_url = self._api_url()
            if api_url:
                document["rootUrl"] = api_url
                document["baseUrl"] = api_url + document["servicePath"]
            transport = httplib2.Http(timeout=60)
            # Drive answers resumable-upload chunks with 308 "Resume Incomplete", which is not a redirect
            # (googleapiclient's own build_http() does the same).
            transport.redirect_codes = transport.redirect_codes - {308}
            authorized = google_auth_httplib2.AuthorizedHttp(self._credentials(), http=transport)
            self._service = build_from_document(document, http=authorized)
        return self._service

    def _call(self, what: str, attempt: Callable[[], T]) -> T:
        """One API call with retries on transient failures; permanent ones become actionable errors."""
        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            wait=_Backoff(),
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.deadline),
            reraise=True,
            before_sleep=lambda s: log.warning(
                "Drive %s failed (%s), retry %d",
                what,
                type(s.outcome.exception()).__name__ if s.outcome else "?",
                s.attempt_number,
            ),
        )
        try:
            return retrying(attempt)
        except PermanentError:
            raise
        except Exception as exc:
            raise self._explain(what, exc) from None

    def _explain(self, what: str, exc: Exception) -> Exception:
        status, reason = _http_error_details(exc)
        where = self.describe()
        if type(exc).__name__ == "RefreshError":  # google.auth: the token endpoint refused the credentials
            return PermanentError(
                f"Google refused the credentials in {self.credentials_file} (revoked or expired): Drive rejected "
                "the credentials. Renew them with `reconciler gdrive login` or a new service-account key"
            )
        if is_transient(exc):
            return TransientError(
                f"Drive {what} kept failing ({status or type(exc).__name__} {reason}); try again later"
            )
        if status == 401:
            return PermanentError(
                f"Drive rejected the credentials in {self.credentials_file} (401); renew them with `reconciler gdrive login`"
            )
        if status == 403 and reason == "storageQuotaExceeded":
            return PermanentError(
                f"Google Drive is full (storageQuotaExceeded) during {what}; free space on Drive or buy more"
            )
        if status == 403:
            return PermanentError(
                f"Drive refused {what} ({reason or 'forbidden'}): the credentials cannot write to {where}. "
                "Share the folder with the service account, or use an authorized-user file"
            )
        if status == 404:
            return PermanentError(f"{where} does not exist or is not shared with these credentials (404)")
        if isinstance(exc, TypeError | ValueError | AttributeError | KeyError):
            return exc  # a bug of ours, not Drive's: keep it visible
        if isinstance(exc, OSError) and exc.strerror and not status:
            # this host failed (a full disk while writing a download), not Drive: say so, with errno's text
            where_local = f" ({exc.filename})" if exc.filename else ""
            return PermanentError(f"Drive {what} failed on this host: {exc.strerror}{where_local}")
        return PermanentError(f"Drive {what} failed: {status or type(exc).__name__} {reason}".strip())

    def _common(self) -> dict[str, Any]:
        return {"supportsAllDrives": True}

    def _list_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"supportsAllDrives": True, "includeItemsFromAllDrives": True}
        if self.spec.drive_id:
            kwargs.update(corpora="drive", driveId=self.spec.drive_id)
        return kwargs

    def _find(self, parent: str, name: str, folder: bool) -> str | None:
        escaped = name.replace("\\", "\\\\").replace("'", "\\'")
        q = f"'{parent}' in parents and name = '{escaped}' and trashed = false"
        q += f" and mimeType {'=' if folder else '!='} '{FOLDER_MIME}'"
        service = self._build()
        found = self._call(
            "lookup",
            lambda: (
                service.files().list(q=q, fields="files(id)", pageSize=10, **self._list_kwargs()).execute()
            ),
        )
        files = found.get("files", [])
        return str(files[0]["id"]) if files else None

    def folder(self) -> str:
        """The folder holding the sets: folder_id, then sub_path created below it if missing."""
        if self._folder is None:
            service = self._build()
            current = str(self.spec.folder_id)
            self._call(
                "folder check",
                lambda: service.files().get(fileId=current, fields="id", **self._common()).execute(),
            )
            for part in filter(None, (self.spec.sub_path or "").split("/")):
                existing = self._find(current, part, folder=True)
                if existing is None and not self.create_folders:
                    raise FolderMissing(f"{self.describe()} does not exist (no folder {part})")
                if existing is None:
                    body = {"name": part, "mimeType": FOLDER_MIME, "parents": [current]}

                    def create(body: dict[str, Any] = body) -> Any:
                        return service.files().create(body=body, fields="id", **self._common()).execute()

                    created = self._call("folder create", create)
                    existing = str(created["id"])
                current = existing
            self._folder = current
        return self._folder

    # -- the store interface ----------------------------------------------------------------

    def list(self) -> list[StoredFile]:
        service = self._build()
        folder = self.folder()
        files: list[StoredFile] = []
        self._ids = {}
        token: str | None = None
        while True:

            def page_of(token: str | None = token) -> Any:
                return (
                    service.files()
                    .list(
                        q=f"'{folder}' in parents and trashed = false and mimeType != '{FOLDER_MIME}'",
                        fields="nextPageToken, files(id, name, size, md5Checksum)",
                        pageSize=1000,
                        pageToken=token,
                        **self._list_kwargs(),
                    )
                    .execute()
                )

            page = self._call("list", page_of)
            for item in page.get("files", []):
                files.append(StoredFile(item["name"], int(item.get("size", 0))))
                self._ids[item["name"]] = item["id"]
                self._md5s[item["name"]] = item.get("md5Checksum")
            token = page.get("nextPageToken")
            if not token:
                return files

    def remote_md5(self, name: str) -> str | None:
        return self._md5s.get(name)

    def _children(self, clause: str | None, folder: bool) -> builtins.list[dict[str, Any]]:
        """Files (or folders) directly in the store's folder, optionally narrowed by a ``q`` clause."""
        service = self._build()
        q = f"'{self.folder()}' in parents and trashed = false"
        q += f" and mimeType {'=' if folder else '!='} '{FOLDER_MIME}'"
        if clause:
            q += f" and {clause}"
        found = self._call(
            "lookup",
            lambda: (
                service.files()
                .list(
                    q=q, fields="files(id, name)", orderBy="createdTime", pageSize=1000, **self._list_kwargs()
                )
                .execute()
            ),
        )
        return builtins.list(found.get("files", []))

    def ids_named(self, name: str) -> builtins.list[str]:
        """Every file called ``name`` in the folder, oldest first: Drive allows several with one name."""
        escaped = name.replace("\\", "\\\\").replace("'", "\\'")
        return [str(f["id"]) for f in self._children(f"name = '{escaped}'", folder=False)]

    def subfolders(self) -> builtins.list[str]:
        """Names of the folders directly in the store's folder (the WAL area's clusters)."""
        return sorted(str(f["name"]) for f in self._children(None, folder=True))

    def delete_id(self, file_id: str) -> None:
        service = self._build()
        self._call("delete", lambda: service.files().delete(fileId=file_id, **self._common()).execute())
        self._ids = {k: v for k, v in self._ids.items() if v != file_id}

    def free_bytes(self) -> int | None:
        service = self._build()
        about = self._call("quota check", lambda: service.about().get(fields="storageQuota").execute())
        quota = about.get("storageQuota", {})
        if "limit" not in quota:
            return None  # unlimited (some Workspace plans)
        return int(quota["limit"]) - int(quota.get("usage", 0))

    def upload(
        self, name: str, path: str, progress: Callable[[int, int], None] | None = None
    ) -> dict[str, Any]:
        """Resumable upload of a local file; checks md5 and size afterwards."""
        from googleapiclient.http import MediaIoBaseUpload

        service = self._build()
        folder = self.folder()
        size = os.path.getsize(path)
        md5 = file_md5(path)

        class ChunkBytesUpload(MediaIoBaseUpload):  # type: ignore[misc]
            """Each chunk goes out as bytes read for it, not as a slice of the stream.

            httplib2 re-sends a request whose connection dropped before the response ("regardless of
            RETRIES" for a stale connection); a stream slice would already be consumed and the retry would
            promise more bytes than it sends. Bytes re-send identically; memory stays one chunk.
            """

            def has_stream(self) -> bool:
                return False

        with open(path, "rb") as handle:
            media = ChunkBytesUpload(
                _Throttle(handle, self.spec.bandwidth_limit),
                mimetype="application/octet-stream",
                chunksize=self.spec.chunk_size,
                resumable=True,
            )
            request = service.files().create(
                body={"name": name, "parents": [folder]},
                media_body=media,
                fields="id, size, md5Checksum",
                **self._common(),
            )
            response: dict[str, Any] | None = None
            while response is None:
                status, response = self._call("upload of " + name, lambda: request.next_chunk(num_retries=0))
                if status is not None and progress:
                    progress(status.resumable_progress, size)
        if int(response.get("size", -1)) != size or response.get("md5Checksum") != md5:
            self._call(
                "delete", lambda: service.files().delete(fileId=response["id"], **self._common()).execute()
            )
            raise TransientError(
                f"Drive stored {name} with size {response.get('size')} and md5 {response.get('md5Checksum')}, "
                f"the local file has {size} and {md5}; the upload was discarded"
            )
        self._ids[name] = str(response["id"])
        return response

    def download(self, name: str, target: str, file_id: str | None = None) -> None:
        """Download to ``target`` atomically (temporary name, fsync, rename); ``file_id`` picks one of
        several files called ``name``."""
        from googleapiclient.http import MediaIoBaseDownload

        service = self._build()
        if file_id is None and name not in self._ids:
            self.list()
        if file_id is None and name not in self._ids:
            raise PermanentError(f"{name} is not in {self.describe()}")
        # A hidden ``.partial-`` name: never listed as a set member, removed by the store's clean-up,
        # and 0600 from the first byte like every file the local store writes.
        tmp = os.path.join(os.path.dirname(target), f".partial-{os.path.basename(target)}.downloading")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            request = service.files().get_media(fileId=file_id or self._ids[name], **self._common())
            downloader = MediaIoBaseDownload(handle, request, chunksize=self.spec.chunk_size)
            done = False
            while not done:
                _, done = self._call("download of " + name, lambda: downloader.next_chunk(num_retries=0))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)

    def delete(self, name: str) -> None:
        service = self._build()
        if name not in self._ids:
            self.list()
        file_id = self._ids.pop(name, None)
        if file_id is not None:
            self._call("delete", lambda: service.files().delete(fileId=file_id, **self._common()).execute())
