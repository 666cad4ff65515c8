"""The store interface: where backup files live (a directory, Google Drive, ...).

Design decisions:
- Streams, never whole files in memory: ``put`` reads from a binary stream, ``open`` returns one.
- ``put`` is atomic from a reader's point of view: a file either appears complete under its final
  name or not at all. Sets build on that: the manifest is put last, so a listing shows a set as
  complete only when every member is already in place.
- ``put`` returns the size and sha256 of what it stored, computed on the way through, so the
  manifest records what actually reached the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Protocol

from reconciler.plan.backupsets import StoredFile


@dataclass(frozen=True)
class PutResult:
    size: int
    sha256: str


class Store(Protocol):
    name: str

    def list(self) -> list[StoredFile]: ...

    def put(self, name: str, source: BinaryIO) -> PutResult: ...

    def open(self, name: str) -> BinaryIO: ...

    def delete(self, name: str) -> None: ...

    def describe(self) -> str: ...
