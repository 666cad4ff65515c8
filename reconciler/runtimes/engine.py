"""The Docker Engine, seen from the reconciler: a tiny read-only reader, and what engine errors mean.

Design decisions:
- Observation (``plan``, ``status``, every daemon pass) only *reads* the engine: one ``GET
  /containers/json`` and an inspect per service container. Those are plain HTTP GETs on a unix socket,
  so ``EngineReader`` speaks them itself (``_Connection``: no ``http.client``, whose ``ssl`` and
  ``email`` imports cost more than the requests) on one kept-alive connection. docker-py (which
  pulls in requests and urllib3, ~45 ms of imports on this machine, plus an API-version round trip and
  a ping per client) is imported only when something is *changed* (runtimes/docker.py). The paths
  carry no API version, so the engine answers in its newest one, which is what docker-py negotiates
  too: both read the same documents (a test compares them).
- ``tcp://`` engines without TLS are read the same way; anything else (``ssh://``, TLS settings in
  ``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH``) goes through docker-py, which knows how to reach them.
- Every failure of the engine, whichever client met it, becomes one of the project's errors here
  (``translate``), so no docker-py or requests exception crosses the runtime boundary: a daemon
  pass reports it and retries (transient) or stalls with what to do (permanent), and the CLI exits 1
  with the cause, never "internal error". The message names the cause: the socket missing (install
  or start dockerd, or set DOCKER_HOST), the engine not answering, permission denied on the socket,
  an image missing (pull or build it), a container name held by another container, a port taken.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import socket
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from reconciler.errors import PermanentError, ReconcilerError, TransientError

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_URL = "unix:///var/run/docker.sock"
_TIMEOUT = 60.0
# The largest answer read: a listing of thousands of containers is a few MiB. A larger length (a broken
# proxy, a hostile engine) is refused before anything is allocated for it, never a MemoryError.
MAX_ANSWER_BYTES = 256 * 1024 * 1024


def engine_url() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_URL


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


class EngineHTTPError(Exception):
    """The engine answered a request with an HTTP error (its ``message`` is the engine's explanation)."""

    def __init__(self, status: int, message: str, what: str) -> None:
        self.status = status
        self.message = message
        self.what = what
        super().__init__(f"{what}: {status} {message}")


class _Connection:
    """HTTP/1.1 GETs on one kept-alive stream socket: the request line, Content-Length or chunked bodies.

    Hand-written rather than ``http.client``, which imports ``ssl`` and the ``email`` parser (~25 ms,
    a tenth of ``plan``'s budget) for what is, on a local socket, a few lines of protocol.
    """

    def __init__(self, address: str | tuple[str, int], timeout: float) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(address)
        except OSError:
            self.sock.close()
            raise
        self.file = self.sock.makefile("rb")

    def get(self, target: str) -> tuple[int, bytes]:
        self.sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: docker\r\nAccept: application/json\r\n\r\n".encode()
        )
        status_line = self.file.readline(65537)
        if not status_line:
            raise ConnectionResetError("the engine closed the connection")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise ProtocolError(f"not an HTTP answer: {status_line[:80]!r}")
        headers: dict[str, str] = {}
        while True:
            line = self.file.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            total = 0
            while True:
                size = int(self.file.readline(65537).split(b";")[0].strip() or b"0", 16)
                total += size
                if not 0 <= size <= total <= MAX_ANSWER_BYTES:
                    raise ProtocolError(f"a chunked answer of more than {MAX_ANSWER_BYTES} bytes")
                if size == 0:
                    while self.file.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self._exactly(size))
                self.file.readline(65537)  # the CRLF after each chunk
            body = b"".join(chunks)
        else:
            length = int(headers.get("content-length", "0"))
            if not 0 <= length <= MAX_ANSWER_BYTES:
                raise ProtocolError(f"an answer of {length} bytes (at most {MAX_ANSWER_BYTES} are read)")
            body = self._exactly(length)
        if headers.get("connection", "").lower() == "close":
            self.close()
        return int(parts[1]), body

    def _exactly(self, size: int) -> bytes:
        data = self.file.read(size)
        if len(data) != size:
            raise ConnectionResetError("the engine closed the connection in the middle of an answer")
        return data

    @property
    def closed(self) -> bool:
        return self.sock.fileno() < 0

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class ProtocolError(ConnectionError):
    """The engine's answer is not HTTP as expected."""


def unreachable(url: str, exc: BaseException) -> ReconcilerError:
    """Why the engine at ``url`` could not be reached, and what to do."""
    path = url[len("unix://") :] if url.startswith("unix://") else None
    if (
        path is not None
        and isinstance(exc, FileNotFoundError | ConnectionRefusedError)
        and not os.path.exists(path)
    ):
        return PermanentError(
            f"the Docker engine socket {path} does not exist: is Docker installed and dockerd running? "
            "(start it, or set DOCKER_HOST to the engine's address). Nothing was changed"
        )
    if isinstance(exc, PermissionError):
        return PermanentError(
            f"permission denied on the Docker engine socket {path or url}: run the reconciler as root or as "
            "a member of the docker group. Nothing was changed"
        )
    return TransientError(
        f"the Docker engine at {url} does not answer ({_short(exc)}): is dockerd running? Nothing was changed"
    )


class EngineReader:
    """Read-only GETs against the engine; the JSON answer, or a ``ReconcilerError`` naming the cause."""

    def __init__(self, url: str | None = None, timeout: float = _TIMEOUT) -> None:
        self.url = url or engine_url()
        self.timeout = timeout
        self._conn: _Connection | None = None
        self.requests = 0  # counted for the benchmark and the tests

    @staticmethod
    def supports(url: str) -> bool:
        tls = os.environ.get("DOCKER_TLS_VERIFY") or os.environ.get("DOCKER_CERT_PATH")
        return url.startswith("unix://") or (url.startswith("tcp://") and not tls)

    def _connection(self) -> _Connection:
        if self._conn is None or self._conn.closed:
            if self.url.startswith("unix://"):
                self._conn = _Connection(self.url[len("unix://") :], self.timeout)
            else:
                host, _, port = self.url[len("tcp://") :].rstrip("/").rpartition(":")
                self._conn = _Connection((host or "localhost", int(port or 2375)), self.timeout)
        return self._conn

    def get(self, path: str, query: dict[str, str] | None = None) -> Any:
        target = path + (f"?{urlencode(query)}" if query else "")
        for attempt in (1, 2):
            fresh = self._conn is None or self._conn.closed
            try:
                status, body = self._connection().get(target)
            except (ConnectionResetError, BrokenPipeError) as exc:
                self.close()  # a kept-alive connection the engine closed meanwhile: one fresh attempt
                if fresh or attempt == 2:
                    raise unreachable(self.url, exc) from None
                continue
            except (OSError, ValueError) as exc:
                self.close()
                raise unreachable(self.url, exc) from None
            self.requests += 1
            if status >= 400:
                try:
                    message = str(json.loads(body).get("message", ""))
                except (ValueError, AttributeError):
                    message = body.decode(errors="replace")[:300]
                raise translate(EngineHTTPError(status, message, f"GET {path}"))
            try:
                return json.loads(body)
            except ValueError:
                raise TransientError(
                    f"the Docker engine at {self.url} sent an unreadable answer to GET {path}"
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def containers(self) -> list[dict[str, Any]]:
        """Every container (running or not), as ``docker ps -a`` lists them."""
        listing = self.get("/containers/json", {"all": "1"})
        if not isinstance(listing, list) or not all(isinstance(item, dict) for item in listing):
            raise self._unexpected("/containers/json", "a list of containers", listing)
        return listing

    def inspect(self, container: str) -> dict[str, Any]:
        path = f"/containers/{quote(container, safe='')}/json"
        document = self.get(path)
        if not isinstance(document, dict):
            raise self._unexpected(path, "a container document", document)
        return document

    def _unexpected(self, path: str, wanted: str, got: Any) -> ReconcilerError:
        """An answer that is JSON but not the document asked for (a proxy's page, a broken engine)."""
        return TransientError(
            f"the Docker engine at {self.url} answered GET {path} with a JSON {type(got).__name__}, not "
            f"{wanted}: is DOCKER_HOST the engine itself?"
        )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class DockerPyReader:
    """The same reads through docker-py, for engines ``EngineReader`` does not speak to (ssh, TLS)."""

    def __init__(self, client: Any) -> None:
        self.api = client.api
        self.requests = 0

    def containers(self) -> list[dict[str, Any]]:
        with engine_errors("listing containers"):
            self.requests += 1
            return list(self.api.containers(all=True))

    def inspect(self, container: str) -> dict[str, Any]:
        with engine_errors(f"inspecting container {container}"):
            self.requests += 1
            return dict(self.api.inspect_container(container))


# -- what engine errors mean ------------------------------------------------------------------------

_CONFLICT_ID = re.compile(r'in use by container "?([0-9a-f]{12})')
_PORT = re.compile(r"(?:port|address)[^0-9]*(\d{2,5})[^\n]*(?:already (?:in use|allocated))", re.IGNORECASE)


def translate(exc: BaseException, what: str = "") -> ReconcilerError:
    """The project's error for an exception met while talking to the engine (any client)."""
    if isinstance(exc, ReconcilerError):
        return exc
    doing = f" while {what}" if what else ""
    url = engine_url()
    status, message = _status_and_message(exc)
    if status is None:
        cause = _connection_cause(exc)
        if cause is not None:
            return unreachable(url, cause)
        if _is_timeout(exc):
            return TransientError(
                f"the Docker engine at {url} did not answer in time{doing} ({_short(exc)}); it is retried"
            )
        return TransientError(f"the Docker engine at {url} failed{doing}: {_short(exc)}")
    lower = message.lower()
    if status == 404 and ("no such image" in lower or "pull access denied" in lower or "manifest" in lower):
        image = _quoted(message) or "the image"
        return PermanentError(
            f"image {image} is not present on this Docker engine{doing}: pull or build it first "
            "(`docker pull`, or scripts/docker-images for the test images). Nothing was changed"
        )
    if status == 404:
        return TransientError(
            f"the Docker engine no longer knows {_quoted(message) or 'the object'}{doing} ({message}): it was "
            "removed meanwhile; the stack is observed again and converged on the next attempt"
        )
    if status == 409 and "already in use" in lower:
        holder = _CONFLICT_ID.search(message)
        return PermanentError(
            f"the container name {_quoted(message) or ''} is already taken by another container"
            f"{f' ({holder.group(1)})' if holder else ''}{doing}: the reconciler does not remove containers it "
            "did not create. Remove or rename that container (`docker rm`/`docker rename`), or give the "
            "service another container name (services.<name>.container)"
        )
    port = _PORT.search(message)
    if port or "address already in use" in lower or "port is already allocated" in lower:
        number = f" {port.group(1)}" if port else ""
        return TransientError(
            f"port{number} is taken by another process{doing} ({message}): stop it or choose another port in "
            "state.yaml"
        )
    if status == 409:
        return TransientError(f"the Docker engine refused{doing}: {message} (a conflicting change; retried)")
    if status >= 500:
        return TransientError(f"the Docker engine failed{doing}: {message}")
    return PermanentError(f"the Docker engine refused{doing}: {message}")


def _status_and_message(exc: BaseException) -> tuple[int | None, str]:
    if isinstance(exc, EngineHTTPError):
        return exc.status, exc.message
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is None:
        return None, ""
    explanation = getattr(exc, "explanation", None)
    return int(status), str(explanation or getattr(response, "reason", "") or exc)


def _connection_cause(exc: BaseException) -> BaseException | None:
    """The OS-level connection error under a requests/urllib3/docker-py wrapper, if that is what it is."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError | FileNotFoundError | PermissionError):
            return current
        for arg in getattr(current, "args", ()):
            if isinstance(arg, BaseException):
                found = _connection_cause(arg)
                if found is not None:
                    return found
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            found = _connection_cause(reason)
            if found is not None:
                return found
        current = current.__cause__ or current.__context__
    names = {type(exc).__name__ for exc in _chain(exc)}
    if names & {"ConnectionError", "NewConnectionError", "ProtocolError"} and not _is_timeout(exc):
        return ConnectionRefusedError(_short(exc))
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_timeout(exc: BaseException) -> bool:
    return any(
        isinstance(e, TimeoutError) or "Timeout" in type(e).__name__ or "timed out" in str(e)
        for e in _chain(exc)
    )


def _quoted(message: str) -> str:
    found = re.search(r'"([^"]+)"', message) or re.search(r"(?:image|container)[: ]+(\S+)", message)
    return found.group(1).lstrip("/") if found else ""


@contextlib.contextmanager
def engine_errors(what: str) -> Iterator[None]:
    """Run a block that talks to the engine; any engine failure leaves it as a ``ReconcilerError``."""
    try:
        yield
    except ReconcilerError:
        raise
    except Exception as exc:
        if not _from_engine(exc):
            raise
        raise translate(exc, what) from None


def _from_engine(exc: BaseException) -> bool:
    """docker-py, requests and urllib3 errors, socket errors and our own: what the engine can cause."""
    module = type(exc).__module__ or ""
    return isinstance(exc, EngineHTTPError | ConnectionError | TimeoutError) or module.split(".")[0] in (
        "docker",
        "requests",
        "urllib3",
    )


def engine_call(what: str) -> Callable[[F], F]:
    """``engine_errors`` around a whole method of the runtime (the boundary the engine layer ends at)."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with engine_errors(what):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
