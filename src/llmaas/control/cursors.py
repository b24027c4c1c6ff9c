"""Integer pagination cursors (`ftevent-123`, `eval-...#42`) parsed once, with their bounds.

`int()` alone accepts any length (and `+`, `_`, spaces): thirty digits then overflow SQLite's 64-bit
INTEGER (OverflowError, a 500), and past 2**31 - 1 PostgreSQL refuses the bound int4 parameter (a 500
too). The ids are 32-bit integer columns, so a larger number cannot name a row: a malformed cursor, 400."""

from __future__ import annotations

import re

from llmaas.core.errors import InvalidRequestError

_DIGITS = re.compile(r"[0-9]{1,10}")
INT32_MAX = 2**31 - 1


def int_cursor(value: str, *, prefix: str = "", param: str = "after", what: str = "an event id") -> int:
    """The integer in `prefix<digits>`; 400 naming `param` for anything else."""
    digits = value.removeprefix(prefix) if prefix else value
    if not _DIGITS.fullmatch(digits) or int(digits) > INT32_MAX:
        raise InvalidRequestError(f"'{param}' must be {what}.", param=param)
    return int(digits)
