"""The SDK's `metadata[key]=value` query filter of list routes (their envelope is `control.paging.page`)."""

from __future__ import annotations

import json

from fastapi import Request

from llmaas.core.errors import InvalidRequestError
from llmaas.protocol.common import check_metadata


def metadata_query(request: Request) -> dict[str, str] | None:
    """The metadata filter of a list route: the SDK sends `metadata[key]=value` query parameters; a JSON
    object in `metadata` ({"k": "v"}) is read too. Anything else in `metadata` (null, a list, non-string
    values) is a 400 naming it, not a TypeError deeper down; the filter obeys metadata's own limits."""
    meta = {k[9:-1]: v for k, v in request.query_params.items() if k.startswith("metadata[") and k.endswith("]")}
    raw = request.query_params.get("metadata")
    if raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
            raise InvalidRequestError("'metadata' must be a JSON object of string values, e.g. {\"k\": \"v\"}, "
                                      "or given as metadata[k]=v.", param="metadata")
        meta.update(parsed)
    try:
        return check_metadata(meta) or None
    except ValueError as e:
        raise InvalidRequestError(f"Invalid 'metadata' filter: {e}.", param="metadata") from None
