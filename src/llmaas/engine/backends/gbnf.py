"""JSON grammars in llama.cpp's GBNF, from llama-cpp-python's converter (pure Python, no model needed), plus what
that converter leaves out: the bounds of integers (`minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`),
so that a generated integer is one the schema accepts. Here because llama_cpp is imported inside engine.backends
only; engine.grammar is the entry point."""

from __future__ import annotations

import functools
import json
import math

_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
# The widest integer the grammar spells out: 16 digits (JSON numbers beyond 2^53 are not exact in most parsers).
INT_LIMIT = 10**16 - 1


def json_gbnf(schema: dict | None) -> str:
    """Any JSON object when `schema` is None, else JSON that validates against `schema`. The converter
    raises bare exceptions on schemas it cannot express; the caller turns them into a 400."""
    from llama_cpp import llama_grammar

    if schema is None:
        return llama_grammar.JSON_GBNF
    converter = _converter_class()(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    resolved = converter.resolve_refs(json.loads(json.dumps(schema)), "stdin")
    converter.visit(resolved, "")
    return converter.format_grammar()


@functools.cache
def _converter_class() -> type:
    """llama-cpp-python's converter, with bounded integers spelled out (built once, on first use)."""
    from llama_cpp import llama_grammar

    class Converter(llama_grammar.SchemaConverter):
        def visit(self, schema, name):
            if isinstance(schema, dict) and schema.get("type") == "integer" and any(k in schema for k in _BOUNDS):
                rule = name + "-" if name in llama_grammar.RESERVED_NAMES else name or "root"
                lo, hi = integer_bounds(schema)
                return self._add_rule(rule, f"{gbnf(int_range(lo, hi))} space")
            return super().visit(schema, name)

    return Converter


def integer_bounds(schema: dict) -> tuple[int, int]:
    """The inclusive [lo, hi] an integer schema allows (draft 4's boolean exclusive flags included)."""
    lo, hi = -INT_LIMIT, INT_LIMIT
    lo_ex, hi_ex = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if "minimum" in schema:
        m = schema["minimum"]
        lo = max(lo, math.floor(m) + 1 if lo_ex is True else math.ceil(m))
    if "maximum" in schema:
        m = schema["maximum"]
        hi = min(hi, math.ceil(m) - 1 if hi_ex is True else math.floor(m))
    if isinstance(lo_ex, int | float) and not isinstance(lo_ex, bool):
        lo = max(lo, math.floor(lo_ex) + 1)
    if isinstance(hi_ex, int | float) and not isinstance(hi_ex, bool):
        hi = min(hi, math.ceil(hi_ex) - 1)
    if lo > hi:
        raise ValueError(f"no integer satisfies the bounds of {json.dumps(schema)}")
    return lo, hi


# A range is spelled as alternatives, each a sequence of atoms: a digit string (literal) or a digit class "a-b".
Seq = list[str]


def int_range(lo: int, hi: int) -> list[Seq]:
    """The decimal integers from lo to hi (no leading zeros, no "-0") as alternatives of digit sequences."""
    out: list[Seq] = []
    if hi >= 0:
        out += _non_negative(max(lo, 0), hi)
    if lo < 0:
        out += [["-", *seq] for seq in _non_negative(max(1, -hi), -lo)]
    return out


def _non_negative(lo: int, hi: int) -> list[Seq]:
    out: list[Seq] = []
    for n in range(len(str(lo)), len(str(hi)) + 1):  # one run of equal-length numbers per digit count
        a, b = max(lo, 10 ** (n - 1) if n > 1 else 0), min(hi, 10**n - 1)
        if a <= b:
            out += _same_length(str(a), str(b))
    return out


def _same_length(a: str, b: str) -> list[Seq]:
    """Digit strings of len(a) == len(b) from a to b: split at the first digit where they differ."""
    if a == b:
        return [[a]]
    if a[0] == b[0]:
        return [[a[0], *seq] for seq in _same_length(a[1:], b[1:])]
    rest = len(a) - 1
    out: list[Seq] = []
    first, last = int(a[0]), int(b[0])
    if rest and a[1:] != "0" * rest:  # a's first digit with a's tail up to 99..9
        out += [[a[0], *seq] for seq in _same_length(a[1:], "9" * rest)]
        first += 1
    if rest and b[1:] != "9" * rest:  # b's first digit with 00..0 up to b's tail
        out += [[b[0], *seq] for seq in _same_length("0" * rest, b[1:])]
        last -= 1
    if first <= last:  # the first digits in between, with any tail
        out.append([f"{first}-{last}", *["0-9"] * rest])
    return out


def _atom_gbnf(atom: str) -> str:
    return f"[{atom}]" if len(atom) == 3 and atom[1] == "-" else f'"{atom}"'  # a class "a-b", else a literal


def gbnf(alternatives: list[Seq]) -> str:
    return "(" + " | ".join(" ".join(_atom_gbnf(a) for a in seq) for seq in alternatives) + ")"
