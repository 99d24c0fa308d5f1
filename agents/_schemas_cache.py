"""Compiled JSON Schema validators, built once per schema: building one costs more than using
it, and every paid call validates an input or an output."""

from __future__ import annotations

import functools
import json
from typing import Any

from jsonschema.validators import validator_for


@functools.lru_cache(maxsize=1024)
def _compiled(schema_json: str) -> Any:
    schema = json.loads(schema_json)
    return validator_for(schema)(schema)


def validator(schema: dict[str, Any]) -> Any:
    """The validator of `schema` (cached by its canonical JSON text)."""
    return _compiled(json.dumps(schema, sort_keys=True))
