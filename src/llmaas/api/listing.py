"""What list routes share: OpenAI's list envelope and the SDK's `metadata[key]=value` query filter."""

from __future__ import annotations

from fastapi import Request


def page(items: list[dict], more: bool) -> dict:
    return {"object": "list", "data": items, "has_more": more,
            "first_id": items[0]["id"] if items else None, "last_id": items[-1]["id"] if items else None}


def metadata_query(request: Request) -> dict[str, str]:
    """The SDK sends a metadata filter as `metadata[key]=value` query parameters."""
    return {k[9:-1]: v for k, v in request.query_params.items() if k.startswith("metadata[") and k.endswith("]")}
