"""The intent journal of a multi-step operation (the mode switch).

Design decisions:
- Written atomically before the first step and after every step: a crash at any instant leaves the
  previous or the next version, never a torn file. ``apply`` after a crash finds it and resumes; a
  completed step is never redone blindly (its ``check()`` runs first, and its evidence is kept).
- It records what the operation was asked to do (the payload, frozen at the start) rather than
  re-reading state.yaml: a state.yaml edited mid-operation is obeyed only once the operation reaches
  a safe point (done or rolled back).
- ``past_point_of_no_return`` flips once verification passed, in the same atomic write that records
  the ``verify`` step as done (a crash can never leave one without the other); from then on the
  operation only goes forward. Finished journals move to ``journal-history/`` for ``status`` and post-mortems.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from typing import Any

from reconciler.system import fs


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Journal:
    def __init__(self, path: str, document: dict[str, Any]) -> None:
        self.path = path
        self.doc = document

    @classmethod
    def path_in(cls, state_dir: str) -> str:
        return os.path.join(state_dir, "journal.json")

    @classmethod
    def create(
        cls,
        state_dir: str,
        kind: str,
        from_mode: str,
        to_mode: str,
        spec_hash: str,
        steps: list[str],
        payload: dict[str, Any],
    ) -> Journal:
        operation_id = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"
        journal = cls(
            cls.path_in(state_dir),
            {
                "id": operation_id,
                "kind": kind,
                "from": from_mode,
                "to": to_mode,
                "spec_hash": spec_hash,
                "status": "running",
                "started": _now(),
                "past_point_of_no_return": False,
                "payload": payload,
                "steps": [{"name": name, "status": "pending", "evidence": None} for name in steps],
            },
        )
        journal.save()
        return journal

    @classmethod
    def load(cls, state_dir: str) -> Journal | None:
        from reconciler.observe.local import read_journal  # the one reader, which refuses a foreign file

        document = read_journal(state_dir)
        if document is None or document.get("status") != "running":
            return None
        return cls(cls.path_in(state_dir), document)

    @property
    def id(self) -> str:
        return str(self.doc["id"])

    @property
    def past_point_of_no_return(self) -> bool:
        return bool(self.doc["past_point_of_no_return"])

    def save(self) -> None:
        fs.atomic_write_json(self.path, self.doc)

    def step(self, name: str) -> dict[str, Any]:
        return next(step for step in self.doc["steps"] if step["name"] == name)

    def evidence(self, name: str) -> Any:
        return self.step(name)["evidence"]

    def pending(self) -> list[str]:
        return [step["name"] for step in self.doc["steps"] if step["status"] != "done"]

    def start(self, name: str) -> None:
        step = self.step(name)
        step["status"] = "running"
        step["started"] = _now()
        self.save()

    def done(self, name: str, evidence: Any, **fields: Any) -> None:
        """Record a finished step, and ``fields`` (e.g. the point of no return) in the same write."""
        step = self.step(name)
        step.update(status="done", evidence=evidence, finished=_now())
        self.doc.update(fields)
        self.save()

    def redo(self, names: list[str], **fields: Any) -> None:
        """Steps to run again (their results were lost), and ``fields``, in one write."""
        for name in names:
            self.step(name).update(status="pending", evidence=None)
        self.doc.update(fields)
        self.save()

    def set(self, **fields: Any) -> None:
        self.doc.update(fields)
        self.save()

    def finish(self, status: str, **fields: Any) -> None:
        self.doc.update(status=status, finished=_now(), **fields)
        history = os.path.join(os.path.dirname(self.path), "journal-history")
        os.makedirs(history, exist_ok=True)
        fs.atomic_write_json(os.path.join(history, f"{self.id}.json"), self.doc)
        os.unlink(self.path)
        fs.fsync_dir(os.path.dirname(self.path))
