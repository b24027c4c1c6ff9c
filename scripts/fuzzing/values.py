"""Hostile values per JSON type (raw JSON bytes, so invalid escapes and NaN/Infinity tokens reach the server),
query and path-segment values (already URL-encoded), and the helpers that pick the values for a field and
put one into a baseline body."""

from __future__ import annotations

import json
from typing import Any


def nest_list(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def nest_obj(depth: int) -> bytes:
    return b'{"a":' * depth + b"{}" + b"}" * depth


BIG_STR = b'"' + b"A" * 100_000 + b'"'
V_STRINGS = [
    ("empty", b'""'), ("lone_high_surrogate", b'"\\ud800"'), ("lone_low_surrogate", b'"\\udfff"'),
    ("reversed_surrogates", b'"x\\udfff\\ud800"'), ("nul", b'"\\u0000"'), ("nul_inside", b'"a\\u0000b"'),
    ("str_100KB", BIG_STR),
    ("rtl_emoji", json.dumps("\u202egnp.exe 😀👨‍👩‍👧 مرحبا \u200b", ensure_ascii=False).encode()),
    ("fmt_class", b'"{0.__class__}"'), ("fmt_printf", b'"%s%n%x%d"'), ("jinja", b'"{{ 7*7 }}{% raw %}"'),
    ("path_traversal", b'"../../etc/passwd"'), ("sql", b'"\'; DROP TABLE tenants;--"'),
    ("control_chars", b'"\\u0001\\u001b[31m\\r\\n\\t"'), ("raw_invalid_utf8", b'"\xff\xfe\xed\xa0\x80"'),
    ("invalid_escape", b'"\\x41"'),
]
V_INTS = [
    ("-1", b"-1"), ("0", b"0"), ("2**31", b"2147483648"), ("2**63", b"9223372036854775808"),
    ("-2**63-1", b"-9223372036854775809"), ("10**30", b"1" + b"0" * 30), ("1e308", b"1e308"),
    ("1e400", b"1e400"), ("5000_digits", b"9" * 5000), ("NaN", b"NaN"), ("float_1.5", b"1.5"),
    ("-0", b"-0"), ("int_as_string", b'"1"'),
]
V_FLOATS = [
    ("-1e308", b"-1e308"), ("1e-320", b"1e-320"), ("Infinity", b"Infinity"), ("-Infinity", b"-Infinity"),
    ("NaN", b"NaN"), ("1e400", b"1e400"), ("-0.0", b"-0.0"), ("float_as_string", b'"0.5"'),
    ("2**63", b"9223372036854775808"),
]
V_BOOLS = [("0", b"0"), ("1", b"1"), ("bool_as_string", b'"true"'), ("2", b"2")]
V_LISTS = [
    ("empty_list", b"[]"), ("list_of_null", b"[null]"), ("nested_list_1000", nest_list(1000)),
    ("list_10000_str", b"[" + b",".join([b'"x"'] * 10_000) + b"]"),
    ("list_10000_int", b"[" + b",".join([b"1"] * 10_000) + b"]"),
]
V_OBJECTS = [
    ("empty_object", b"{}"), ("nested_object_1000", nest_obj(1000)),
    ("object_10000_keys", b"{" + b",".join(b'"k%d":"v"' % i for i in range(10_000)) + b"}"),
    ("proto_key", b'{"__proto__":{"x":1},"constructor":"x"}'), ("object_nul_key", b'{"\\u0000":"x","\\ud800":"y"}'),
]
V_ANY = [("null", b"null"), ("wrong_string", b'"x"'), ("wrong_int", b"1"), ("wrong_bool", b"true"),
         ("wrong_list", b"[]"), ("wrong_object", b"{}")]

BY_TYPE = {"string": V_STRINGS, "integer": V_INTS, "number": V_FLOATS, "boolean": V_BOOLS, "array": V_LISTS,
           "object": V_OBJECTS, "null": []}

Q_VALUES = [  # query values, already URL-encoded (sent as is)
    ("empty", ""), ("%ff", "%ff"), ("%00", "%00"), ("lone_surrogate_utf8", "%ed%a0%80"), ("overlong_slash", "%c0%af"),
    ("-1", "-1"), ("0", "0"), ("2**31", "2147483648"), ("2**63", "9223372036854775808"),
    ("-2**63-1", "-9223372036854775809"), ("10**30", "1" + "0" * 30), ("5000_digits", "9" * 5000),
    ("1e308", "1e308"), ("NaN", "NaN"), ("Infinity", "Infinity"), ("true", "true"), ("null", "null"),
    ("json_object", "%7B%22a%22%3A1%7D"), ("path_traversal", "..%2F..%2Fetc%2Fpasswd"),
    ("sql", "%27%3B%20DROP%20TABLE%20x%3B--"), ("fmt", "%25s%25n%7B0.__class__%7D"), ("str_8KB", "A" * 8000),
    ("emoji_rtl", "%F0%9F%98%80%E2%80%AE"), ("iso_date_garbage", "2024-13-45T99:99:99"),
    ("date_year_0", "0000-01-01"), ("date_year_99999", "99999-01-01"), ("unix_1e20", "100000000000000000000"),
]
P_VALUES = [  # path segment values, already URL-encoded
    ("%ff", "%ff"), ("%00", "%00"), ("lone_surrogate_utf8", "%ed%a0%80"), ("dotdot", "%2e%2e"),
    ("encoded_traversal", "..%2f..%2fetc%2fpasswd"), ("str_10KB", "A" * 10_000), ("-1", "-1"),
    ("5000_digits", "9" * 5000), ("2**63", "9223372036854775808"), ("null", "null"), ("space", "%20"),
    ("emoji", "%F0%9F%98%80"), ("sql", "%27%3B%20DROP%20TABLE%20x%3B--"), ("fmt", "%25s%25n%7B0.__class__%7D"),
    ("nul_suffix", "ft-%00x"), ("crlf", "x%0d%0aX-Injected:%201"),
]


def values_for(types: set[str]) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    seen: set[bytes] = set()
    for t in sorted(types) + ["*"]:
        for label, raw in BY_TYPE.get(t, V_ANY if t == "*" else []):
            if raw not in seen:
                seen.add(raw)
                out.append((label, raw))
    return out


def json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def spec_types(schema: dict, comps: dict, depth: int = 0) -> set[str]:
    if depth > 8 or not isinstance(schema, dict):
        return set()
    if "$ref" in schema:
        return spec_types(comps.get(schema["$ref"].rsplit("/", 1)[-1], {}), comps, depth + 1)
    out: set[str] = set()
    for k in ("anyOf", "oneOf", "allOf"):
        for s in schema.get(k, []):
            out |= spec_types(s, comps, depth + 1)
    t = schema.get("type")
    out |= set(t) if isinstance(t, list) else ({t} if t else set())
    if "properties" in schema and not t:
        out.add("object")
    return out


def leaf_paths(v: Any, prefix: tuple = ()) -> list[tuple[tuple, Any]]:
    """Every node below the root (objects' values and the first element of lists), depth-first."""
    out: list[tuple[tuple, Any]] = []
    if isinstance(v, dict):
        for k, x in v.items():
            out.append(((*prefix, k), x))
            out += leaf_paths(x, (*prefix, k))
    elif isinstance(v, list) and v:
        out.append(((*prefix, 0), v[0]))
        out += leaf_paths(v[0], (*prefix, 0))
    return out


SENTINEL = "\x01FUZZ\x01"


def substitute(baseline: Any, path: tuple, raw: bytes) -> bytes:
    doc = json.loads(json.dumps(baseline))
    node = doc
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = SENTINEL
    text = json.dumps(doc).encode()
    return text.replace(json.dumps(SENTINEL).encode(), raw, 1)
