"""Keyset pagination for every list route, and OpenAI's list envelope.

A page is read in a fixed order of key columns (e.g. (created_at, id)), starting after the row a cursor
names, one row more than asked for: that extra row says `has_more`. Integer cursor strings are parsed
in `cursors.py`; `cursor_row` finds the row an id cursor names, if the caller may see it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from llmaas.core.errors import InvalidRequestError

if TYPE_CHECKING:  # imported by the CLI too, which loads SQLAlchemy only when a command needs it
    from sqlalchemy import ColumnElement, Select
    from sqlalchemy.orm import Session

T = TypeVar("T")
SCAN_CHUNK = 500  # rows read per query while filtering in Python (e.g. on a JSON metadata column)


def page(items: list[dict], more: bool) -> dict:
    """OpenAI's list envelope around the items of one page (each with an "id")."""
    return {"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None, "has_more": more}


def split(rows: Sequence[T], limit: int) -> tuple[list[T], bool]:
    """(the first `limit` rows, whether there were more)."""
    return list(rows[:limit]), len(rows) > limit


def past(key: Sequence[Any], values: Sequence[Any], order: str = "asc") -> ColumnElement[bool]:
    """The rows after the one whose `key` columns hold `values`, in the `order` of those columns."""
    col, value = key[0], values[0]
    beyond = col < value if order == "desc" else col > value
    if len(key) == 1:
        return beyond
    return beyond | ((col == value) & past(key[1:], values[1:], order))


def ordered(stmt: Select, key: Sequence[Any], order: str = "asc") -> Select:
    return stmt.order_by(*(k.desc() for k in key) if order == "desc" else key)


def scan(s: Session, stmt: Select, key: Sequence[Any], *, order: str = "asc",
         keep: Callable[[Any], bool] | None = None, limit: int | None = None) -> Iterator[Any]:
    """The rows of `stmt` in key order that pass `keep`, read in chunks by keyset (so a filter never loads
    a whole history at once). Stops after `limit` matches."""
    found, last = 0, None
    while True:
        q = stmt if last is None else stmt.where(past(key, [getattr(last, k.key) for k in key], order))
        rows = list(s.scalars(ordered(q, key, order).limit(SCAN_CHUNK)))
        for row in rows:
            if keep is None or keep(row):
                yield row
                found += 1
                if limit is not None and found >= limit:
                    return
        if len(rows) < SCAN_CHUNK:
            return
        last = rows[-1]


def cursor_row(s: Session, entity: type, after: str | None, key: Sequence[Any], *,
               visible: Callable[[Any], bool], error: str) -> tuple | None:
    """The `key` values of the row whose id is `after`, to page after it (None without a cursor); a row the
    caller may not see is a 400 naming `after` (`error`), exactly like one that does not exist."""
    if not after:
        return None
    row = s.get(entity, after)
    if row is None or not visible(row):
        raise InvalidRequestError(error, param="after")
    return tuple(getattr(row, k.key) for k in key)


def keyset_page(s: Session, stmt: Select, key: Sequence[Any], *, after: Sequence[Any] | None = None,
                limit: int, order: str = "asc", keep: Callable[[Any], bool] | None = None) -> tuple[list, bool]:
    """One page of `stmt` in `key` order, after the row whose key values are `after` (None: from the
    start); `keep` filters in Python. Returns (rows, has_more)."""
    if after is not None:
        stmt = stmt.where(past(key, after, order))
    if keep is not None:
        return split(list(scan(s, stmt, key, order=order, keep=keep, limit=limit + 1)), limit)
    return split(list(s.scalars(ordered(stmt, key, order).limit(limit + 1))), limit)
