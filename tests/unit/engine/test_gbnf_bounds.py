"""Integer bounds in JSON-schema grammars: the digit-range construction accepts exactly the integers in range
(checked exhaustively around each bound through the same construction rendered as a regex), and llama.cpp's
grammar parser accepts what the converter writes."""

from __future__ import annotations

import json
import re

import pytest

from llmaas.engine.backends.gbnf import INT_LIMIT, int_range, integer_bounds, json_gbnf


def regex(alternatives: list[list[str]]) -> str:
    """The language of `int_range`'s alternatives as a Python regex (digit classes "a-b", literals otherwise)."""
    def atom(a: str) -> str:
        return f"[{a}]" if len(a) == 3 and a[1] == "-" else re.escape(a)

    return "(?:" + "|".join("".join(atom(a) for a in seq) for seq in alternatives) + ")"


@pytest.mark.parametrize(("lo", "hi"), [(0, 0), (7, 7), (0, 9), (1, 9), (10, 99), (3, 1000), (13, 2049),
                                        (-120, 345), (-5, -1), (-1000, -999), (99, 101), (0, 100_000),
                                        (1, INT_LIMIT), (-INT_LIMIT, 42), (987, 1234)])
def test_exactly_the_integers_in_range(lo, hi):
    pattern = re.compile(regex(int_range(lo, hi)))
    probes = set(range(lo - 60, lo + 60)) | set(range(hi - 60, hi + 60)) | {0, 1, -1, 10, 100, 1000, -10}
    for n in probes:
        assert bool(pattern.fullmatch(str(n))) == (lo <= n <= hi), (lo, hi, n)
    for bad in ("007", "-0", "00", "01", "+5", "1.0", ""):  # never JSON's spelling of an integer
        assert not pattern.fullmatch(bad), (lo, hi, bad)


@pytest.mark.parametrize(("schema", "bounds"), [
    ({"minimum": 1}, (1, INT_LIMIT)), ({"maximum": 10}, (-INT_LIMIT, 10)),
    ({"minimum": 1.5, "maximum": 9.5}, (2, 9)), ({"exclusiveMinimum": 0, "exclusiveMaximum": 5}, (1, 4)),
    ({"minimum": 0, "exclusiveMinimum": True, "maximum": 3, "exclusiveMaximum": True}, (1, 2)),
])
def test_bounds_of_a_schema(schema, bounds):
    assert integer_bounds({"type": "integer", **schema}) == bounds


def test_unsatisfiable_bounds_are_refused():
    with pytest.raises(ValueError, match="no integer"):
        integer_bounds({"type": "integer", "minimum": 5, "maximum": 4})


def test_llama_cpp_parses_the_grammar_of_a_bounded_integer_property():
    from llama_cpp import llama_grammar

    schema = {"type": "object", "properties": {"minutes": {"type": "integer", "minimum": 1, "maximum": 1440},
                                               "offset": {"type": "integer", "minimum": -12, "maximum": 14}},
              "required": ["minutes", "offset"]}
    grammar = json_gbnf(schema)
    assert '[1-9] [0-9] [0-9]' in grammar and '"-"' in grammar
    llama_grammar.LlamaGrammar.from_string(grammar, verbose=False)  # raises if llama.cpp cannot parse it
    assert json.loads(json.dumps(schema)) == schema  # the caller's schema is not changed
