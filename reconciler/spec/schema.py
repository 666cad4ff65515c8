"""JSON Schema export of the state model, for editors and for ``schemas/state.schema.json``."""

from __future__ import annotations

import json

from reconciler.spec.model import StateSpec

SCHEMA_ID = "https://github.com/reconciler/reconciler/schemas/state.schema.json"


def schema_document() -> dict[str, object]:
    document = StateSpec.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **document}


def schema_text() -> str:
    return json.dumps(schema_document(), indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def options_markdown() -> str:
    """docs/OPTIONS.md: every option with its type, default, description and example."""
    import json as _json

    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    lines = [
        "# state.yaml options",
        "",
        "Generated from the pydantic model (`reconciler/spec/model.py`) by `reconciler schema --docs`;",
        "a test fails when this file is stale. The JSON Schema is in `schemas/state.schema.json`.",
        "",
        "| option | default | description | example |",
        "| --- | --- | --- | --- |",
    ]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            path = f"{prefix}{name}"
            nested = [
                arg
                for arg in (*getattr(field.annotation, "__args__", ()), field.annotation)
                if isinstance(arg, type) and issubclass(arg, BaseModel)
            ]
            if field.default is PydanticUndefined and field.default_factory is None:
                default = "*required*"
            elif nested:
                default = ""
            else:
                value = field.get_default(call_default_factory=True)
                default = f"`{_json.dumps(value, default=str)}`"
            example = _json.dumps((field.examples or [None])[0], default=str)
            description = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{path}` | {default} | {description} | `{example}` |")
            if nested:
                walk(nested[0], f"{path}.")

    walk(StateSpec, "")
    return "\n".join(lines) + "\n"
