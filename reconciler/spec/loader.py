"""Turn the text of state.yaml into a validated ``StateSpec``, or into *every* problem at once.

Design decisions:
- ruamel.yaml's round-trip loader keeps the line and column of every key and value, so each error
  points at ``file:line:column`` and names the key path (``services.postgres.port``). A syntax error
  (bad indentation) stops parsing, so it is the one case reported alone.
- Inline secrets are caught *before* pydantic runs, on the raw tree: a key such as ``password`` is a
  mistake wherever it appears, and the message says how to reference the secret instead. The secret's
  value is never echoed back, not even partially.
- This module is pure: the caller reads the file and passes its text and name, so the loader can be
  tested with hypothesis on generated documents and never touches the disk.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from reconciler.errors import SpecInvalid, SpecProblem
from reconciler.spec.model import StateSpec

Path = tuple[str | int, ...]

# Keys that name a secret; their `_env` / `_file` variants are the sanctioned references.
_SECRET_KEY = re.compile(
    r"^(.*_)?(password|passwd|secret|token|api_key|apikey|private_key|credentials|passphrase|"
    r"client_secret|refresh_token|identity|key)$",
    re.IGNORECASE,
)
_SECRET_REFERENCE_SUFFIXES = ("_env", "_file", "_id", "_ids")
# Values that are secrets whatever key they sit under.
_SECRET_VALUE_MARKERS = ("AGE-SECRET-KEY-", "-----BEGIN", '"private_key"', "refresh_token")


@dataclass(frozen=True)
class _Positions:
    """Line/column (1-based) of each key and each value, by key path."""

    keys: dict[Path, tuple[int, int]]
    values: dict[Path, tuple[int, int]]

    def at(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        table = self.keys if key else self.values
        probe = path
        while probe:
            if probe in table:
                return table[probe]
            if probe in self.keys:
                return self.keys[probe]
            probe = probe[:-1]
        return (1, 1)


def _plain(node: Any, path: Path, positions: _Positions) -> Any:
    """ruamel's tree → plain dicts/lists, recording where every key and value stands."""
    if isinstance(node, CommentedMap):
        result: dict[str, Any] = {}
        for key in node:
            child = (*path, str(key))
            key_line, key_col = node.lc.key(key)
            value_line, value_col = node.lc.value(key)
            positions.keys[child] = (key_line + 1, key_col + 1)
            positions.values[child] = (value_line + 1, value_col + 1)
            result[str(key)] = _plain(node[key], child, positions)
        return result
    if isinstance(node, CommentedSeq):
        items = []
        for index, item in enumerate(node):
            child = (*path, index)
            line, col = node.lc.item(index)
            positions.values[child] = (line + 1, col + 1)
            items.append(_plain(item, child, positions))
        return items
    if isinstance(node, str):
        return str(node)
    return node


def _dotted(path: Sequence[str | int]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "(top level)"


def _find_inline_secrets(node: Any, path: Path) -> Iterator[tuple[Path, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            child = (*path, key)
            lowered = key.lower()
            if _SECRET_KEY.match(key) and not lowered.endswith(_SECRET_REFERENCE_SUFFIXES):
                yield child, _secret_reference_hint(key)
            else:
                yield from _find_inline_secrets(value, child)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _find_inline_secrets(item, (*path, index))
    elif isinstance(node, str) and any(marker in node for marker in _SECRET_VALUE_MARKERS):
        yield (
            path,
            (
                "this value looks like a secret key; secrets never go in state.yaml. "
                "Put it in a file outside the repository (mode 0600) and reference the file "
                "(e.g. backup.encryption.identity_file)"
            ),
        )


def _secret_reference_hint(key: str) -> str:
    return (
        f"inline secret '{key}' is not allowed in state.yaml (it would end up in git). "
        f"Reference it instead: '{key}_env: VARIABLE_NAME' (read from the environment) or "
        f"'{key}_file: /path/outside/the/repo' (mode 0600)"
    )


def _model_at(path: Path) -> type[BaseModel] | None:
    """The pydantic model class that validates the mapping at ``path`` (for "did you mean")."""
    model: type[BaseModel] = StateSpec
    for part in path:
        if isinstance(part, int):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        candidates = [
            arg
            for arg in (*getattr(field.annotation, "__args__", ()), field.annotation)
            if isinstance(arg, type) and issubclass(arg, BaseModel)
        ]
        if not candidates:
            return None
        model = candidates[0]
    return model


def _friendly(error: Any, path: Path) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(path[-1])
        model = _model_at(path[:-1])
        known = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = (
            f" (did you mean '{close[0]}'?)"
            if close
            else (f"; known keys: {', '.join(known)}" if known else "")
        )
        return f"unknown key '{key}'{hint}"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"must be one of {expected} (got {error['input']!r})"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        return f"{error['input']!r} does not match the required pattern {error['ctx']['pattern']}"
    return (
        f"{error['msg']} (got {error['input']!r})"
        if "input" in error and not isinstance(error["input"], dict | list)
        else str(error["msg"])
    )


def parse_state(text: str, source: str = "state.yaml", base_dir: str = "/") -> StateSpec:
    """Validate the text of a state file. Raises ``SpecInvalid`` listing every problem found."""
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        tree = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = " ".join(filter(None, [exc.problem, exc.context])) or "invalid YAML"
        raise SpecInvalid(
            [SpecProblem(source, line, col, "(syntax)", f"YAML syntax error: {problem}")]
        ) from None
    except YAMLError as exc:
        raise SpecInvalid([SpecProblem(source, 1, 1, "(syntax)", f"YAML error: {exc}")]) from None

    if tree is None:
        raise SpecInvalid([SpecProblem(source, 1, 1, "(top level)", "the file is empty")])
    if not isinstance(tree, CommentedMap):
        raise SpecInvalid([SpecProblem(source, 1, 1, "(top level)", "expected a mapping of keys to values")])

    positions = _Positions({}, {})
    data = _plain(tree, (), positions)
    problems: list[SpecProblem] = []

    secret_paths: set[Path] = set()
    for path, message in _find_inline_secrets(data, ()):
        secret_paths.add(path)
        line, col = positions.at(path, key=True)
        problems.append(SpecProblem(source, line, col, _dotted(path), message))

    try:
        spec = StateSpec.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            path = tuple(error["loc"])
            if any(path[: len(secret)] == secret for secret in secret_paths):
                continue  # already reported as an inline secret, without echoing its value
            is_key = error["type"] in ("extra_forbidden", "missing")
            line, col = positions.at(path, key=is_key)
            problems.append(SpecProblem(source, line, col, _dotted(path), _friendly(error, path)))
    else:
        if not problems:
            return spec.with_base_dir(base_dir)
    problems.sort(key=lambda p: (p.line, p.column))
    raise SpecInvalid(problems)
