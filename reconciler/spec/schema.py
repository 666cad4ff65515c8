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
