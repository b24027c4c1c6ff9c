"""Wire format of /v1/batches: the create body, and the lines of a batch input file, each checked with the
request model the live endpoint uses (so a line is refused for exactly what the API would refuse)."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, ValidationError

from llmaas.control.jobs.batches import LineRecord
from llmaas.protocol.common import Metadata
from llmaas.protocol.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

# The request model of each endpoint a batch may target (control.jobs.batches.ENDPOINTS).
REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
}
MAX_CUSTOM_ID = 512


class BatchCreate(BaseModel):
    """POST /v1/batches. endpoint and completion_window are checked by the service, which names the field."""

    model_config = ConfigDict(extra="ignore")  # the SDK may send fields we do not use (output_expires_after)
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: Metadata = None


def _error(n: int, message: str, param: str | None, custom_id: str | None = None) -> LineRecord:
    return LineRecord(n, custom_id, None, {"code": "invalid_request", "message": f"line {n}: {message}",
                                           "param": param, "line": n})


def _pydantic_param(e: ValidationError) -> tuple[str, str]:
    first = e.errors()[0]
    parts = [str(p) for p in first.get("loc", ()) if not any(c in str(p) for c in "[]")]
    return ".".join(["body", *parts]), first.get("msg", "invalid value")


def parse_line(n: int, raw: bytes, endpoint: str, seen: set[str]) -> LineRecord:
    """Line `n` (1-based) of an input file: {custom_id, method, url, body}, body checked with the endpoint's
    request model. A bad line is a LineRecord with an error naming the field; `seen` collects custom_ids."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return _error(n, "not valid JSON", None)
    if not isinstance(obj, dict):
        return _error(n, "must be a JSON object with custom_id, method, url and body", None)
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        return _error(n, f"'custom_id' must be a non-empty string of up to {MAX_CUSTOM_ID} characters",
                      "custom_id", custom_id if isinstance(custom_id, str) else None)
    if custom_id in seen:
        return _error(n, f"duplicate custom_id '{custom_id}'", "custom_id", custom_id)
    seen.add(custom_id)
    if obj.get("method") != "POST":
        return _error(n, "'method' must be 'POST'", "method", custom_id)
    if obj.get("url") != endpoint:
        return _error(n, f"'url' must be the batch's endpoint '{endpoint}'; got {json.dumps(obj.get('url'))}",
                      "url", custom_id)
    body = obj.get("body")
    if not isinstance(body, dict):
        return _error(n, "'body' must be a JSON object", "body", custom_id)
    try:
        req = REQUEST_MODELS[endpoint].model_validate(body)
    except ValidationError as e:
        param, msg = _pydantic_param(e)
        return _error(n, f"invalid value for '{param}': {msg}", param, custom_id)
    if getattr(req, "stream", False):
        return _error(n, "'body.stream' is not supported in a batch", "body.stream", custom_id)
    return LineRecord(n, custom_id, body)


# As OpenAI's Batch API: a batch holds at most this many requests, so validating one is bounded in memory and time.
MAX_BATCH_LINES = 50_000


def count_lines(data: bytes) -> int:
    """Non-blank lines of an input file, counted without parsing them."""
    return sum(1 for raw in data.split(b"\n") if raw.strip())


def parse_lines(data: bytes, endpoint: str) -> list[LineRecord]:
    """Every non-blank line of an input file, valid or not (blank lines are skipped but keep their number)."""
    seen: set[str] = set()
    return [parse_line(n, raw, endpoint, seen) for n, raw in enumerate(data.split(b"\n"), 1) if raw.strip()]


def request_of(endpoint: str, body: dict) -> BaseModel:
    """The live endpoint's request model of a stored (already validated) line body."""
    return REQUEST_MODELS[endpoint].model_validate(body)
