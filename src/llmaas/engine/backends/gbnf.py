"""JSON grammars in llama.cpp's GBNF, from llama-cpp-python's converter (pure Python, no model needed).
Here because llama_cpp is imported inside engine.backends only; engine.grammar is the entry point."""

from __future__ import annotations

import json


def json_gbnf(schema: dict | None) -> str:
    """Any JSON object when `schema` is None, else JSON that validates against `schema`. The converter
    raises bare exceptions on schemas it cannot express; the caller turns them into a 400."""
    from llama_cpp import llama_grammar

    if schema is None:
        return llama_grammar.JSON_GBNF
    return llama_grammar.json_schema_to_gbnf(json.dumps(schema))
