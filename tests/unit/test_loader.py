"""The state-file loader: every problem at once, with positions; secrets refused; schema in sync."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from reconciler.errors import InvalidInput, SpecInvalid
from reconciler.spec.edit import add_recipient
from reconciler.spec.loader import parse_state
from reconciler.spec.model import StateSpec
from reconciler.spec.schema import options_markdown, schema_text

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """\
version: 1
stack: demo
mode: ram
services:
  postgres:
    database: app
    user: app
    disk_dir: ./data/pg
"""


def problems(text: str) -> list[str]:
    with pytest.raises(SpecInvalid) as info:
        parse_state(text, "state.yaml")
    return [str(p) for p in info.value.problems]


def test_example_state_file_is_valid() -> None:
    spec = parse_state((ROOT / "state.yaml").read_text(), "state.yaml", str(ROOT))
    assert spec.runtime == "local"
    assert spec.mode == "ram"
    assert spec.disk_dir("postgres") == str(ROOT / "data/postgres")


def test_relative_paths_resolve_against_the_state_file_directory() -> None:
    spec = parse_state(MINIMAL, "state.yaml", "/srv/app")
    assert spec.disk_dir("postgres") == "/srv/app/data/pg"
    assert spec.ram_dir("postgres") == "/dev/shm/reconciler/demo/postgres"
    assert spec.state_path == "/srv/app/.reconciler"


def test_every_problem_is_reported_at_once_with_line_and_column() -> None:
    text = (
        MINIMAL.replace("mode: ram", "mode: rma").replace(
            "    disk_dir: ./data/pg", "    disk_dir: ./data/pg\n    prot: 5432\n    port: many"
        )
        + "ram:\n  tmpfs_sise: 4GiB\n"
    )
    found = problems(text)
    assert found == [
        "state.yaml:3:7: mode: must be one of 'ram' or 'disk' (got 'rma')",
        "state.yaml:9:5: services.postgres.prot: unknown key 'prot' (did you mean 'port'?)",
        "state.yaml:10:11: services.postgres.port: Input should be a valid integer (got 'many')",
        "state.yaml:12:3: ram.tmpfs_sise: unknown key 'tmpfs_sise' (did you mean 'tmpfs_size'?)",
    ]


def test_bad_indentation_is_a_syntax_error_with_position() -> None:
    found = problems("version: 1\nstack: demo\n  mode: ram\n")
    assert len(found) == 1
    assert found[0].startswith("state.yaml:3:7: (syntax): YAML syntax error")


def test_duplicate_keys_are_rejected() -> None:
    found = problems(MINIMAL + "mode: disk\n")
    assert "duplicate" in found[0].lower()


def test_missing_required_key_points_at_the_parent() -> None:
    found = problems(MINIMAL.replace("    user: app\n", ""))
    assert found == ["state.yaml:5:3: services.postgres.user: required key is missing"]


@pytest.mark.parametrize(
    ("snippet", "where"),
    [
        ("    password: hunter2-secret\n", "services.postgres.password"),
        ("    api_token: abc\n", "services.postgres.api_token"),
        ("    identity: AGE-SECRET-KEY-1QQQ\n", "services.postgres.identity"),
    ],
)
def test_inline_secrets_are_rejected_without_echoing_them(snippet: str, where: str) -> None:
    found = problems(MINIMAL + snippet)
    assert len(found) == 1
    assert where in found[0]
    assert "_env" in found[0] and "_file" in found[0]
    assert "hunter2" not in found[0] and "AGE-SECRET" not in found[0] and "abc" not in found[0]


def test_secret_values_under_innocent_keys_are_rejected() -> None:
    found = problems(MINIMAL + "backup:\n  encryption:\n    recipients: ['AGE-SECRET-KEY-1ABCDEF']\n")
    assert "looks like a secret key" in found[0]
    assert "ABCDEF" not in "".join(found)


def test_values_parse_into_typed_quantities() -> None:
    spec = parse_state(
        MINIMAL + "ram: {tmpfs_size: 4GiB, min_headroom: 512MiB}\nbackup: {cadence: 90m, encryption: none}\n"
    )
    assert spec.ram.tmpfs_size.bytes == 4 * 1024**3
    assert spec.ram.min_headroom == 512 * 1024**2
    assert spec.backup.cadence.total_seconds() == 5400
    assert spec.backup.encryption.method == "none"


def test_empty_or_scalar_documents() -> None:
    assert problems("") == ["state.yaml:1:1: (top level): the file is empty"]
    assert "mapping" in problems("- a\n- b\n")[0]


def _models(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    if model in seen:
        return
    seen.add(model)
    for field in model.model_fields.values():
        for arg in (*getattr(field.annotation, "__args__", ()), field.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                _models(arg, seen)


def test_every_option_has_a_description_and_an_example() -> None:
    seen: set[type[BaseModel]] = set()
    _models(StateSpec, seen)
    assert len(seen) >= 10
    for model in seen:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            assert field.examples, f"{model.__name__}.{name} has no example"


def test_exported_schema_is_up_to_date() -> None:
    committed = (ROOT / "schemas/state.schema.json").read_text()
    assert committed == schema_text(), "schemas/state.schema.json is stale: run `reconciler schema`"
    document: dict[str, Any] = json.loads(committed)
    assert document["additionalProperties"] is False
    assert "description" in document["properties"]["mode"]


def test_options_reference_is_up_to_date() -> None:
    committed = (ROOT / "docs/OPTIONS.md").read_text()
    assert committed == options_markdown(), "docs/OPTIONS.md is stale: run `reconciler schema --docs`"
    assert "| `ram.tmpfs_size` |" in committed


RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"


def _changed_lines(before: str, after: str) -> list[str]:
    import difflib

    return [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


def test_the_example_names_its_schema_for_editors() -> None:
    first = (ROOT / "state.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=schemas/state.schema.json"
    assert (ROOT / "schemas/state.schema.json").is_file()


def test_add_recipient_changes_one_line_of_the_example_and_keeps_comments() -> None:
    example = (ROOT / "state.yaml").read_text()
    edited = add_recipient(example, RECIPIENT)
    changed = _changed_lines(example, edited)
    assert len(changed) == 2, changed
    assert changed[1].startswith(f"+    recipients: [{RECIPIENT}]        # `reconciler keygen")
    assert edited.startswith("# yaml-language-server: $schema=schemas/state.schema.json\n")
    assert parse_state(edited).backup.encryption.recipients == [RECIPIENT]
    assert add_recipient(edited, RECIPIENT) == edited  # already there: unchanged


def test_add_recipient_keeps_a_four_space_block_layout() -> None:
    text = MINIMAL.replace("  ", "    ") + (
        "backup:\n    encryption:\n        recipients:\n            -   age1first  # the laptop\n"
        "        identity_file: /k\n"
    )
    edited = add_recipient(text, RECIPIENT)
    assert _changed_lines(text, edited) == [f"+            -   {RECIPIENT}"]


def test_add_recipient_creates_the_list_under_an_existing_encryption() -> None:
    text = MINIMAL + "backup:\n  encryption:\n    identity_file: /k  # secret\n"
    edited = add_recipient(text, RECIPIENT)
    assert _changed_lines(text, edited) == [f"+    recipients: [{RECIPIENT}]"]
    assert parse_state(edited).backup.encryption.recipients == [RECIPIENT]


def test_add_recipient_without_a_backup_section_round_trips() -> None:
    edited = add_recipient("# top comment\n" + MINIMAL, RECIPIENT)
    assert edited.startswith("# top comment\n")
    assert parse_state(edited).backup.encryption.recipients == [RECIPIENT]


def test_add_recipient_refuses_unencrypted_backups() -> None:
    with pytest.raises(InvalidInput, match="'none'"):
        add_recipient(MINIMAL + "backup: {encryption: none}\n", RECIPIENT)
