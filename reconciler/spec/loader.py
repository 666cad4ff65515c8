"""Turn the bytes of state.yaml into a validated ``StateSpec``, or into *every* problem at once.

Design decisions:
- Each error points at ``file:line:column`` and names the key path (``services.postgres.port``). A
  syntax error (bad indentation) stops parsing, so it is the one case reported alone.
- Input it does not understand must never crash, hang or run anything (issue 13). So the loader does
  not use a YAML constructor at all: it reads ruamel.yaml's *event stream* (its scanner and parser are
  iterative, not recursive) and builds plain dicts, lists and scalars itself, under bounds checked as
  it goes: at most ``MAX_STATE_BYTES`` of input (checked before parsing: ruamel parses ~0.5 MB/s, so
  64 KiB stays well under a second), at most ``MAX_DEPTH`` levels of nesting, and at most
  ``MAX_VALUES`` values *after* alias expansion, so a "billion laughs" document is refused after ten
  thousand values instead of growing to gigabytes. Scalars follow the YAML 1.2 core schema (null,
  bool, int, float, str); any other tag (``!!binary``, ``!!set``, ``!!python/...``, a local ``!tag``)
  is refused, keys must be plain text, duplicate keys and merge keys (``<<``) are refused, each with
  its position.
- Inline secrets are caught *before* pydantic runs, on the raw tree: a key such as ``password`` is a
  mistake wherever it appears, and the message says how to reference the secret instead. The secret's
  value is never echoed back, not even partially.
- This module is pure: the caller reads the file and passes its bytes (``parse_state_bytes``) or text
  (``parse_state``) and name, so the loader is fuzzed with hypothesis (any bytes → a valid spec or
  ``SpecInvalid``, nothing else) and never touches the disk.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    DocumentStartEvent,
    Event,
    MappingStartEvent,
    ScalarEvent,
    SequenceStartEvent,
)
from ruamel.yaml.reader import ReaderError

from reconciler.errors import SpecInvalid, SpecProblem
from reconciler.spec.model import StateSpec

Path = tuple[str | int, ...]

MAX_STATE_BYTES = 64 * 1024
"""A state file is a few KiB; 64 KiB leaves room for comments and still parses in well under a second."""
MAX_DEPTH = 32
"""Nesting levels (mappings and lists); a state file needs five."""
MAX_VALUES = 10_000
"""Values in the document once aliases are expanded (each use of an alias counts its whole subtree)."""

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


_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(_TAG + name for name in ("str", "int", "float", "bool", "null"))
_NULL = frozenset({"", "~", "null", "Null", "NULL"})
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"^[-+]?[0-9]+$|^0o[0-7]+$|^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_SPECIAL_FLOATS = {
    **{
        f"{sign}.{inf}": float(f"{sign or '+'}inf")
        for sign in ("", "+", "-")
        for inf in ("inf", "Inf", "INF")
    },
    **{f".{nan}": float("nan") for nan in ("nan", "NaN", "NAN")},
}
_MAX_NUMBER_CHARS = 64


class _Refused(Exception):
    """A construct the loader does not accept, at a position."""

    def __init__(self, event: Event, path: Path, message: str) -> None:
        super().__init__(message)
        mark = event.start_mark
        self.line: int = mark.line + 1 if mark else 1
        self.column: int = mark.column + 1 if mark else 1
        self.path = path
        self.message = message


def _scalar(event: ScalarEvent, path: Path) -> Any:
    """A YAML 1.2 core-schema scalar: None, bool, int, float or str; other tags are refused."""
    tag, text = event.tag, event.value
    if tag not in (None, "!") and tag not in _SCALAR_TAGS:
        raise _Refused(
            event,
            path,
            f"the YAML tag {tag.replace(_TAG, '!!')[:40]} is not supported; state.yaml holds only text, "
            "numbers, true/false, null, lists and mappings",
        )
    if tag == _TAG + "str" or tag == "!" or (tag is None and event.style is not None):
        return text
    value = _plain_scalar(event, path, text)
    wanted = {_TAG + "int": int, _TAG + "float": float, _TAG + "bool": bool, _TAG + "null": type(None)}
    if tag is not None and type(value) is not wanted[tag]:
        raise _Refused(event, path, f"{text[:40]!r} is not a valid {tag.replace(_TAG, '!!')}")
    return value


def _plain_scalar(event: ScalarEvent, path: Path, text: str) -> Any:
    if text in _NULL:
        return None
    if text in _BOOL:
        return _BOOL[text]
    if text in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[text]
    is_int, is_float = bool(_INT.match(text)), bool(_FLOAT.match(text))
    if (is_int or is_float) and len(text) > _MAX_NUMBER_CHARS:
        raise _Refused(event, path, f"a number of {len(text)} characters is too long")
    if is_int:
        if text.startswith(("0o", "0x")):
            return int(text[2:], 8 if text[1] == "o" else 16)
        return int(text)
    if is_float:
        return float(text)
    return text


@dataclass
class _Frame:
    """A mapping or list being built."""

    container: dict[str, Any] | list[Any]
    path: Path
    anchor: str | None
    size: int = 1
    key: str | None = None
    first_seen: dict[str, int] = field(default_factory=dict)

    def child_path(self) -> Path:
        if isinstance(self.container, dict):
            assert self.key is not None
            return (*self.path, self.key)
        return (*self.path, len(self.container))


class _Builder:
    """Events → plain values, with positions, under the nesting and expansion bounds."""

    def __init__(self) -> None:
        self.positions = _Positions({}, {})
        self.stack: list[_Frame] = []
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.open_anchors: set[str] = set()
        self.total = 0
        self.documents = 0
        self.root: Any = None

    def feed(self, event: Event) -> None:
        if isinstance(event, DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                raise _Refused(event, (), "state.yaml holds one YAML document; remove the second '---'")
            return
        if isinstance(event, CollectionEndEvent):
            frame = self.stack.pop()
            if frame.anchor is not None:
                self.open_anchors.discard(frame.anchor)
                self.anchors[frame.anchor] = (frame.container, frame.size)
            self._attach(frame.container, frame.size)
            return
        if not isinstance(event, ScalarEvent | AliasEvent | MappingStartEvent | SequenceStartEvent):
            return  # stream and document boundaries
        parent = self.stack[-1] if self.stack else None
        if parent is not None and isinstance(parent.container, dict) and parent.key is None:
            self._key(parent, event)
            return
        path = parent.child_path() if parent else ()
        mark = event.start_mark
        self.positions.values[path] = (mark.line + 1, mark.column + 1)
        if isinstance(event, AliasEvent):
            if event.anchor in self.open_anchors:
                raise _Refused(event, path, f"alias *{event.anchor} refers to a node that contains it")
            if event.anchor not in self.anchors:
                raise _Refused(event, path, f"alias *{event.anchor} has no anchor &{event.anchor} before it")
            value, size = self.anchors[event.anchor]
            self._count(event, path, size)
            self._attach(value, size)
        elif isinstance(event, ScalarEvent):
            self._count(event, path, 1)
            value = _scalar(event, path)
            if event.anchor is not None:
                self.anchors[event.anchor] = (value, 1)
            self._attach(value, 1)
        else:
            expected = _TAG + ("map" if isinstance(event, MappingStartEvent) else "seq")
            if event.tag not in (None, "!", expected):
                raise _Refused(
                    event,
                    path,
                    f"the YAML tag {str(event.tag).replace(_TAG, '!!')[:40]} is not supported; state.yaml "
                    "holds only text, numbers, true/false, null, lists and mappings",
                )
            if len(self.stack) >= MAX_DEPTH:
                raise _Refused(event, path, f"nested deeper than {MAX_DEPTH} levels")
            self._count(event, path, 1)
            container: dict[str, Any] | list[Any] = {} if isinstance(event, MappingStartEvent) else []
            if event.anchor is not None:
                self.open_anchors.add(event.anchor)
            self.stack.append(_Frame(container, path, event.anchor))

    def _key(self, frame: _Frame, event: Event) -> None:
        if not isinstance(event, ScalarEvent) or event.tag not in (None, "!", _TAG + "str"):
            raise _Refused(
                event, frame.path, "a key must be plain text (not a list, a mapping, an alias or a tag)"
            )
        key = event.value
        mark = event.start_mark
        if event.style is None and key == "<<":
            raise _Refused(event, frame.path, "merge keys (<<) are not supported; write the keys out")
        if key in frame.first_seen:
            raise _Refused(
                event,
                (*frame.path, key),
                f"duplicate key '{key[:40]}' (first on line {frame.first_seen[key]}); keep one",
            )
        self._count(event, frame.path, 1)
        frame.first_seen[key] = mark.line + 1
        frame.key = key
        self.positions.keys[(*frame.path, key)] = (mark.line + 1, mark.column + 1)

    def _count(self, event: Event, path: Path, size: int) -> None:
        self.total += size
        if self.total > MAX_VALUES:
            raise _Refused(
                event,
                path,
                f"the document expands to more than {MAX_VALUES} values (each use of an alias counts "
                "everything under its anchor); a state file needs a few dozen",
            )

    def _attach(self, value: Any, size: int) -> None:
        if not self.stack:
            self.root = value
            return
        parent = self.stack[-1]
        parent.size += size
        if isinstance(parent.container, dict):
            assert parent.key is not None
            parent.container[parent.key] = value
            parent.key = None
        else:
            parent.container.append(value)


def _load_tree(text: str, source: str) -> tuple[Any, _Positions]:
    builder = _Builder()
    try:
        for event in YAML(typ="safe", pure=True).parse(text):
            builder.feed(event)
    except _Refused as refused:
        raise SpecInvalid(
            [SpecProblem(source, refused.line, refused.column, _dotted(refused.path), refused.message)]
        ) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = " ".join(filter(None, [exc.problem, exc.context])) or "invalid YAML"
        raise SpecInvalid(
            [SpecProblem(source, line, col, "(syntax)", f"YAML syntax error: {problem}")]
        ) from None
    except ReaderError as exc:
        before = text[: exc.position]
        line, col = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        raise SpecInvalid(
            [
                SpecProblem(
                    source, line, col, "(syntax)", f"character {exc.character!r} is not allowed in YAML"
                )
            ]
        ) from None
    except YAMLError as exc:
        raise SpecInvalid([SpecProblem(source, 1, 1, "(syntax)", f"YAML error: {exc}")]) from None
    except (ValueError, OverflowError):  # ruamel's scanner: chr() of an escape beyond U+10FFFF
        line, col, problem = _bad_escape(text)
        raise SpecInvalid([SpecProblem(source, line, col, "(syntax)", problem)]) from None
    return builder.root, builder.positions


_LONG_ESCAPE = re.compile(r"\\U([0-9A-Fa-f]{8})")


def _bad_escape(text: str) -> tuple[int, int, str]:
    """Where the first ``\\U`` escape beyond U+10FFFF is (ruamel lets it out as a ValueError/OverflowError)."""
    for match in _LONG_ESCAPE.finditer(text):
        if int(match.group(1), 16) > 0x10FFFF:
            before = text[: match.start()]
            line, col = before.count("\n") + 1, match.start() - (before.rfind("\n") + 1) + 1
            return line, col, f"the escape {match.group(0)} names no Unicode character (at most \\U0010FFFF)"
    return 1, 1, "YAML syntax error: an invalid value in the text"


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
        return f"must be one of {expected} (got {_short(error['input'])})"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        return f"{_short(error['input'])} does not match the required pattern {error['ctx']['pattern']}"
    return (
        f"{error['msg']} (got {_short(error['input'])})"
        if "input" in error and not isinstance(error["input"], dict | list)
        else str(error["msg"])
    )


def _short(value: Any) -> str:
    """A user's value for an error message, cut short (a 60 KB string must not become the message)."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:50]}...({len(text)} characters)"


def parse_state_bytes(data: bytes, source: str = "state.yaml", base_dir: str = "/") -> StateSpec:
    """Validate the bytes of a state file: bounded in size, UTF-8 (a BOM is allowed), then ``parse_state``."""
    _check_size(len(data), source)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecInvalid(
            [SpecProblem(source, line, column, "(file)", f"not UTF-8 text (byte 0x{data[exc.start]:02x})")]
        ) from None
    return parse_state(text, source, base_dir)


def _check_size(size: int, source: str) -> None:
    if size > MAX_STATE_BYTES:
        raise SpecInvalid(
            [
                SpecProblem(
                    source,
                    1,
                    1,
                    "(file)",
                    f"the file is larger than {MAX_STATE_BYTES // 1024} KiB; a state file needs a few KiB. "
                    "Is this the right file?",
                )
            ]
        )


def parse_state(text: str, source: str = "state.yaml", base_dir: str = "/") -> StateSpec:
    """Validate the text of a state file. Raises ``SpecInvalid`` listing every problem found."""
    _check_size(len(text), source)
    _check_size(len(text.encode("utf-8", "surrogatepass")), source)
    data, positions = _load_tree(text, source)
    if data is None:
        raise SpecInvalid([SpecProblem(source, 1, 1, "(top level)", "the file is empty")])
    if not isinstance(data, dict):
        raise SpecInvalid([SpecProblem(source, 1, 1, "(top level)", "expected a mapping of keys to values")])

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
        for key_path, message in spec.consistency_problems(base_dir):
            line, col = positions.at(key_path)
            problems.append(SpecProblem(source, line, col, _dotted(key_path), message))
        if not problems:
            return spec.with_base_dir(base_dir)
    problems.sort(key=lambda p: (p.line, p.column))
    raise SpecInvalid(problems)
