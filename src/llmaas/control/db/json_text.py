"""JSON (de)serialization for the SQLAlchemy engines: never write, and never hand back, a lone surrogate.

A string with a lone UTF-16 surrogate (`"\\ud800"` in a request) is stored as a JSON escape; read back into
Python it cannot be encoded as UTF-8, so every response that contains it is a 500 (a tenant's whole list
route, for good). The API refuses such strings at the edge (api/input_guard.py), and both directions here
replace a lone surrogate with U+FFFD, so that rows stored before the edge check still read and nothing like
them is written. Migration 0005 repairs the stored text itself.
"""

from __future__ import annotations

import json
import re
from typing import Any

# An escaped backslash (kept as is, so that `\\ud800` - text, not an escape - is left alone), a valid
# surrogate pair (kept), or a lone surrogate escape (replaced). Scanning left to right keeps them apart.
_ESCAPE = re.compile(r"\\\\|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _fix(m: re.Match[str]) -> str:
    t = m.group()
    return t if len(t) in (2, 12) else "\\ufffd"


def repair_json_text(text: str) -> str:
    """JSON text with every lone-surrogate escape (and raw lone surrogate) replaced by U+FFFD."""
    if "\\u" in text and re.search(r"\\u[dD][89a-fA-F]", text):
        text = _ESCAPE.sub(_fix, text)
    if _SURROGATE.search(text):
        text = _SURROGATE.sub("\ufffd", text)
    return text


def dumps(value: Any) -> str:
    # ensure_ascii (json's default) turns a lone surrogate into an escape the regex above finds; valid
    # non-ASCII text costs nothing extra unless it is escaped as a pair, which is kept.
    return repair_json_text(json.dumps(value))


def loads(text: str | bytes) -> Any:
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", "replace")
    return json.loads(repair_json_text(text))
