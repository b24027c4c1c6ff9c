"""What the OpenAPI spec says about responses beyond the success body: the error statuses each kind of route
returns (all in OpenAI's error envelope), the links between operations (a file's id feeds a fine-tuning job, an
eval or a batch; a job's id its cancel), and the bodies FastAPI cannot see (the streamed /v1/files upload).

Routers pass these as `responses=` / `openapi_extra=`, so the spec documents every status a route answers and
clients (and schemathesis) can check each response against it. Validation errors are answered 400, not FastAPI's
422 (api/errors.py)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from llmaas.control.data.files import PURPOSES
from llmaas.protocol.stored_completions import FileFromSource


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong, for a person to read.")
    type: str = Field(description="invalid_request_error, server_error, requests, insufficient_quota, ...")
    param: str | None = Field(description="The request field at fault (`messages[0].content`, `metadata.k`), or "
                                          "null when no one field is.")
    code: str | None = Field(description="A stable machine-readable code (invalid_value, not_found, ...), or null.")


class ErrorResponse(BaseModel):
    """OpenAI's error envelope: the body of every 4xx and 5xx answer of the API."""

    error: ErrorDetail


_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
_RATE_LIMIT_HEADERS = {f"x-ratelimit-{w}-{k}": {"description": f"OpenAI's rate-limit header ({w}, {k}).",
                                                "schema": {"type": "string"}}
                       for w in ("limit", "remaining", "reset") for k in ("requests", "tokens")}
_DESCRIPTIONS = {
    400: "Invalid request: a parameter or body field is invalid (`param` names it), the body is not valid JSON, "
         "or the feature needs the control plane and this server runs with auth disabled.",
    401: "Missing, invalid, revoked or expired API key.",
    403: "The key's role (or its tenant's state) does not allow this action.",
    404: "No such object, or it belongs to another tenant (indistinguishable on purpose); or no such model.",
    409: "Conflicts with the current state (a name already taken, a model already registered, not enough memory "
         "to load a model, a setting this deployment mode cannot change).",
    413: "The request body is larger than LLMAAS_MAX_REQUEST_BYTES (uploads: LLMAAS_MAX_FILE_BYTES).",
    429: "A rate limit, budget or quota is exhausted, or too many bad keys came from this client.",
    503: "Temporarily unable: the server is draining to stop, is overloaded, the model is loading or its engine "
         "is restarting, or the database or Redis does not answer (nothing was changed).",
    507: "The server's disk is full: nothing was stored.",
}


def errors(*statuses: int, rate_limit_headers: bool = False) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these error statuses, each in the OpenAI envelope (429 and 503 with Retry-After)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorResponse, "description": _DESCRIPTIONS[status]}
        if status in (429, 503, 507):
            entry["headers"] = {**_RETRY_AFTER, **(_RATE_LIMIT_HEADERS if rate_limit_headers and status == 429
                                                   else {})}
        out[status] = entry
    return out


# Every route behind an API key: a bad query string or field (400), the key (401, 403), the bad-key limiter (429),
# a draining server (503).
LISTING = errors(400, 401, 403, 429, 503)
# ... plus 404 for an object id in the path.
READING = errors(400, 401, 403, 404, 429, 503)
# ... plus a JSON body (413) and state that may conflict (409).
WRITING = errors(400, 401, 403, 404, 409, 413, 429, 503)
# An upload: WRITING, plus a disk that fills meanwhile (507).
UPLOADING = errors(400, 401, 403, 404, 409, 413, 429, 503, 507)
# Inference: an unknown model (404), a body too large (413), limits (429 with x-ratelimit-*), admission (503).
GENERATING = errors(400, 401, 403, 404, 413, 429, 503, rate_limit_headers=True)

# Inference answers JSON, or with `stream: true` server-sent events (`data: {chunk}` frames, then `data: [DONE]`).
STREAMED = {200: {"description": "The result, or with `stream: true` an event stream of chunks.",
                  "content": {"text/event-stream": {"schema": {"type": "string"}}}}}
FILE_CONTENT = {200: {"description": "The file's bytes as uploaded (JSONL; CSV for a fine-tune's metrics file).",
                      "content": {"application/jsonl": {"schema": {"type": "string"}},
                                  "text/csv": {"schema": {"type": "string"}}}}}


def _op(method: str, path: str) -> str:
    """A JSON pointer to the operation, for a link's operationRef (stable, unlike generated operationIds)."""
    return f"#/paths/{path.replace('~', '~0').replace('/', '~1')}/{method}"


def _links(source: str, param: str, targets: list[tuple[str, str]], body: dict[str, list[str]]) -> dict:
    """A 200 response's `links`: the created object's `id` into the `param` of each (method, path) in `targets`,
    and into the named body fields of each (method, path) key of `body`."""
    links: dict[str, dict] = {}
    for method, path in targets:
        links[f"{method}{path.replace('/', '_').replace('{', '').replace('}', '')}"] = {
            "operationRef": _op(method, path), "parameters": {f"path.{param}": "$response.body#/id"},
            "description": f"The {source}'s id as `{param}`."}
    for key, fields in body.items():
        method, path = key.split(" ", 1)
        links[f"{method}{path.replace('/', '_')}"] = {
            "operationRef": _op(method, path), "requestBody": {f: "$response.body#/id" for f in fields},
            "description": f"The {source}'s id as `{'`, `'.join(fields)}`."}
    return {200: {"description": "Successful Response", "links": links}}


FILE_LINKS = _links("file", "file_id", [("get", "/v1/files/{file_id}"), ("get", "/v1/files/{file_id}/content"),
                                        ("delete", "/v1/files/{file_id}")],
                    {"post /v1/fine_tuning/jobs": ["training_file"], "post /v1/evals": ["file_id"],
                     "post /v1/batches": ["input_file_id"]})
JOB_LINKS = _links("job", "fine_tuning_job_id", [("get", "/v1/fine_tuning/jobs/{fine_tuning_job_id}"),
                                                 ("post", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel"),
                                                 ("get", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events"),
                                                 ("get", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints")],
                   {})
EVAL_LINKS = _links("eval", "eval_id", [("get", "/v1/evals/{eval_id}"), ("post", "/v1/evals/{eval_id}/cancel"),
                                        ("get", "/v1/evals/{eval_id}/items"), ("get", "/v1/evals/{eval_id}/events")],
                    {})
BATCH_LINKS = _links("batch", "batch_id", [("get", "/v1/batches/{batch_id}"),
                                           ("post", "/v1/batches/{batch_id}/cancel")], {})


def _inline_defs(schema: dict) -> dict:
    """A pydantic JSON schema with its `$defs` substituted in place: the spec has no component for them."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk({**defs[ref.removeprefix("#/$defs/")], **{k: v for k, v in node.items() if k != "$ref"}})
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


# POST /v1/files reads its body itself (streamed multipart, or a JSON export of stored completions), so FastAPI
# sees no body parameter: the spec gets it from here.
UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["file", "purpose"],
        "properties": {"file": {"type": "string", "format": "binary",
                                "description": "JSONL: chat examples (fine-tune), rows (evals) or requests (batch)."},
                       "purpose": {"type": "string", "enum": list(PURPOSES)}}}},
    "application/json": {"schema": _inline_defs(FileFromSource.model_json_schema())},
}}}

# The probes answer their own small JSON (not the envelope), 503 when the server should not get traffic.
_PROBE_MODELS = {"type": "object", "additionalProperties": {"type": "boolean"},
                 "description": "Each model's engine: healthy or not."}
HEALTH = {200: {"description": "Alive.", "content": {"application/json": {"schema": {
              "type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}}}},
          503: {"description": "A model's engine stopped and did not come back: restart the server.",
                "content": {"application/json": {"schema": {
                    "type": "object", "required": ["status", "stopped"],
                    "properties": {"status": {"const": "unhealthy"},
                                   "stopped": {"type": "array", "items": {"type": "string"}}}}}}}}
READY = {200: {"description": "Every model is loaded.", "content": {"application/json": {"schema": {
             "type": "object", "required": ["status", "models"],
             "properties": {"status": {"const": "ready"}, "models": _PROBE_MODELS}}}}},
         503: {"description": "Not ready: a model is still loading, or the server is draining to stop.",
               "content": {"application/json": {"schema": {
                   "type": "object", "required": ["status", "models"],
                   "properties": {"status": {"enum": ["not_ready", "draining"]}, "models": _PROBE_MODELS}}}}}}
# With LLMAAS_METRICS_KEY set, /metrics needs that key or an admin key (api/metrics_auth.py). The route's
# media type is text/plain, so its JSON 401 names its schema itself (a `model` would be documented as text).
METRICS = {200: {"description": "Prometheus text exposition.",
                 "content": {"text/plain": {"schema": {"type": "string"}}}},
           401: {"description": _DESCRIPTIONS[401],
                 "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}}


def without_422(app: FastAPI) -> None:
    """FastAPI documents a 422 for every route that takes input; this app answers validation errors 400, so the
    spec drops it (a client or a fuzzer checking statuses against the spec would be misled)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            for item in generate().get("paths", {}).values():
                for op in item.values():
                    if isinstance(op, dict):
                        op.get("responses", {}).pop("422", None)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
