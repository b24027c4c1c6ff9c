"""GBNF grammars that constrain sampling to JSON (response_format)."""

from __future__ import annotations

from llmaas.core.errors import InvalidRequestError


def json_grammar(schema: dict | None) -> str:
    """Any JSON object when `schema` is None, else JSON that validates against `schema`."""
    from llmaas.engine.backends.gbnf import json_gbnf

    if schema is None:
        return json_gbnf(None)
    try:
        return json_gbnf(schema)
    except Exception as e:  # the converter raises bare exceptions on schemas it cannot express
        raise InvalidRequestError(
            f"response_format.json_schema.schema cannot be turned into a grammar: {e}",
            param="response_format.json_schema.schema",
        ) from e
