"""A hostile or broken Engine API answer ends observation with a project error naming the engine.

The engine here is a real HTTP server on a real unix socket (a proxy in front of dockerd, or dockerd
itself misbehaving), answering the reader's GETs with canned documents: a JSON object where the
container listing belongs, a list where an inspect document belongs, a Content-Length no memory holds.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.errors import ReconcilerError
from reconciler.runtimes.engine import EngineReader
from tests.conftest import Stack
from tests.integration.test_docker_runtime import docker_document


class CannedEngine:
    """Answers every GET whose target starts with a key of ``answers`` with that raw HTTP answer."""

    def __init__(self, path: Path, answers: dict[str, bytes]) -> None:
        self.answers = answers
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen()
        self.url = f"unix://{path}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client, client.makefile("rb") as requests:
            while True:
                line = requests.readline()
                if not line:
                    return
                while requests.readline() not in (b"\r\n", b""):
                    pass
                target = line.split()[1].decode()
                answer = next((a for p, a in self.answers.items() if target.startswith(p)), None)
                client.sendall(answer or b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    def close(self) -> None:
        self.server.close()


def ok(body: bytes, headers: str = "") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + headers.encode()
        + (f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    )


LISTING = b'[{"Id": "abc", "Names": ["/x-postgres"], "Labels": {}}]'


@pytest.fixture
def canned(tmp_path: Path) -> Iterator[list[CannedEngine]]:
    engines: list[CannedEngine] = []
    yield engines
    for engine in engines:
        engine.close()


@pytest.mark.parametrize(
    "answers",
    [
        {"/containers/json": ok(b'{"message": "page not found"}')},  # an object, not the listing
        {"/containers/json": ok(b"[1, 2]")},  # a list of something else
        {"/containers/json": ok(LISTING), "/containers/abc/json": ok(b'["not", "a", "document"]')},
        {"/containers/json": b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n[]"},
        {
            "/containers/json": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"ffffffffffff\r\n[]\r\n0\r\n\r\n"
        },
    ],
    ids=["object-listing", "listing-of-numbers", "list-inspect", "huge-length", "huge-chunk"],
)
def test_a_malformed_answer_is_a_project_error_naming_the_engine(
    tmp_path: Path, canned: list[CannedEngine], answers: dict[str, bytes]
) -> None:
    engine = CannedEngine(tmp_path / "engine.sock", answers)
    canned.append(engine)
    reader = EngineReader(engine.url, timeout=10)
    with pytest.raises(ReconcilerError) as raised:
        reader.inspect(str(reader.containers()[0]["Id"]))
    assert engine.url in str(raised.value)


def test_plan_against_an_engine_that_answers_nonsense_exits_1_with_the_cause(
    stack: Stack, tmp_path: Path, canned: list[CannedEngine]
) -> None:
    engine = CannedEngine(tmp_path / "engine.sock", {"/containers/json": ok(b'{"message": "hello"}')})
    canned.append(engine)
    stack.write(docker_document(stack))
    result = stack.cli("plan", check=None, env={"DOCKER_HOST": engine.url})
    assert result.returncode == 1, result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert engine.url in result.stderr, result.stderr
