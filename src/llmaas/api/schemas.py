"""What the OpenAPI spec says about the success bodies: a JSON schema per object the /v1 routes answer, in
OpenAI's shapes (and our extensions), so that clients and the fuzzer (scripts/fuzz.py checks every response
against the spec) can tell a 200 that lost a field or names the wrong `object` from a good one.

Routers pass them as `responses=merge(READING, ok(FILE))`: documentation only. `response_model=` would
filter and validate every answer at run time. Each schema requires the fields its builder always sends
(nullable where the builder may send null) and leaves other properties open, so extensions stay valid.
The builders are named beside each schema; keep the two in step."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
OBJ: Schema = {"type": "object"}


def null(schema: Schema) -> Schema:
    """`schema`, or null."""
    kind = schema.get("type")
    if isinstance(kind, str) and len(schema) == 1:
        return {"type": [kind, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def obj(kind: str | None, props: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    """An object whose `props` are all required (`object` equal to `kind`, when given) and whose `optional`
    ones are documented but not always sent; any other property is allowed."""
    required = {"object": {"const": kind}, **props} if kind else props
    return {"type": "object", "required": list(required), "properties": {**required, **(optional or {})}}


def page(item: Schema, ids: Schema = STR) -> Schema:
    """OpenAI's list page, as control/paging.py's `page()` builds it (`ids`: the type of the items' ids)."""
    return obj("list", {"data": array(item), "first_id": null(ids), "last_id": null(ids), "has_more": BOOL})


def plain_list(item: Schema, **more: Schema) -> Schema:
    """A list without paging: `object` "list" and `data`, plus the `more` fields."""
    return obj("list", {"data": array(item), **more})


def deleted(kind: str) -> Schema:
    return obj(kind, {"id": STR, "deleted": {"const": True}})


def ok(schema: Schema) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry of a 200 answering `schema` as JSON (its description stays FastAPI's, or the one
    a part merged with it gives, e.g. openapi.STREAMED's)."""
    return {200: {"content": {"application/json": {"schema": schema}}}}


def merge(*parts: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries merged deeply, so that a 200 keeps its links (openapi.FILE_LINKS...) and its event
    stream (openapi.STREAMED) beside the JSON schema `ok()` adds: a plain `{**a, **b}` would drop one."""

    def into(dst: dict, src: dict) -> dict:
        for k, v in src.items():
            dst[k] = into(dict(dst[k]), v) if isinstance(v, dict) and isinstance(dst.get(k), dict) else v
        return dst

    out: dict[int | str, dict[str, Any]] = {}
    for part in parts:
        into(out, part)
    return out


# --- models (routers/models.py _model_obj, _tenant_model_obj) ---

_STATUS: Schema = {"enum": ["loading", "ready", "failed", "unloading", "unloaded"]}  # serving/catalog.py ModelState
MODEL = obj("model", {"id": STR, "created": INT, "owned_by": STR, "context_length": null(INT), "status": _STATUS,
                      "capabilities": array(STR)},
            {"description": STR, "parent": STR, "lineage": OBJ})
MODEL_LIST = plain_list(MODEL)

# --- files (control/data/files.py file_dict) ---

FILE = obj("file", {"id": STR, "bytes": INT, "created_at": INT, "filename": STR, "purpose": STR, "status": STR,
                    "status_details": null(STR), "expires_at": null(INT)})
FILE_LIST = page(FILE)
FILE_DELETED = deleted("file")  # OpenAI names a deleted file's object "file" too

# --- fine-tuning (control/jobs/fine_tuning.py job_dict, event_dict, checkpoint_dict) ---

_ERROR = null(obj(None, {"message": STR}, {"code": null(STR), "param": null(STR)}))
_HYPERPARAMETERS = {"type": "object", "properties": {k: {"anyOf": [{"const": "auto"}, NUM]}
                                                     for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}}
JOB = obj("fine_tuning.job", {
    "id": STR, "model": STR, "created_at": INT, "finished_at": null(INT), "fine_tuned_model": null(STR),
    "organization_id": STR, "result_files": array(STR), "status": STR, "validation_file": null(STR),
    "training_file": STR, "hyperparameters": _HYPERPARAMETERS, "trained_tokens": null(INT), "error": _ERROR,
    "user_provided_suffix": null(STR), "seed": INT, "estimated_finish": null(INT), "integrations": array(OBJ),
    "metadata": null(OBJ), "method": obj(None, {"type": STR}), "lora": OBJ, "eval": null(OBJ),
    "eval_id": null(STR)})
JOB_LIST = page(JOB)
JOB_EVENT = obj("fine_tuning.job.event", {"id": STR, "created_at": INT, "level": STR, "message": STR, "type": STR,
                                          "data": null(OBJ)})
JOB_EVENT_LIST = page(JOB_EVENT)
JOB_CHECKPOINT = obj("fine_tuning.job.checkpoint", {
    "id": STR, "created_at": INT, "fine_tuned_model_checkpoint": STR, "fine_tuning_job_id": STR,
    "step_number": INT, "metrics": OBJ})
JOB_CHECKPOINT_LIST = page(JOB_CHECKPOINT)

# --- evals (control/jobs/evals.py eval_dict, item_dict, compare) ---

EVAL = obj("eval", {
    "id": STR, "name": null(STR), "created_at": INT, "started_at": null(INT), "finished_at": null(INT),
    "status": STR, "model": array(STR), "file_id": STR, "task": obj(None, {"type": STR}), "max_rows": null(INT),
    "metadata": null(OBJ), "fine_tuning_job_id": null(STR),
    "progress": obj(None, {"rows_total": null(INT), "rows_done": INT, "model": null(STR)}),
    "results": {"type": "object", "additionalProperties": OBJ}, "error": _ERROR})
EVAL_LIST = page(EVAL)
EVAL_ITEM = obj("eval.item", {"id": STR, "index": INT, "model": STR})
EVAL_ITEM_LIST = page(EVAL_ITEM)
EVAL_COMPARISON = obj("eval.comparison", {"columns": array(STR), "rows": array(obj(None, {
    "eval_id": STR, "name": null(STR), "model": STR, "task": STR, "file_id": STR, "status": STR, "metrics": OBJ}))})

# --- batches (control/jobs/batches.py batch_dict) ---

_AT = {k: null(INT) for k in ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
                              "cancelling_at", "cancelled_at")}
BATCH = obj("batch", {
    "id": STR, "endpoint": STR, "input_file_id": STR, "completion_window": STR, "status": STR,
    "errors": null(plain_list(OBJ)), "output_file_id": null(STR), "error_file_id": null(STR), "created_at": INT,
    "expires_at": INT, **_AT, "request_counts": obj(None, {"total": INT, "completed": INT, "failed": INT}),
    "metadata": null(OBJ)})
BATCH_LIST = page(BATCH)

# --- inference (serving/chat.py ChatChoices, serving/completions.py TextChoices, serving/embeddings.py) ---

_HEAD = {"id": STR, "created": INT, "model": STR, "system_fingerprint": null(STR)}
_TOOL_CALL = obj(None, {"id": STR, "type": {"const": "function"},
                        "function": obj(None, {"name": STR, "arguments": STR})})
_MESSAGE = obj(None, {"role": {"const": "assistant"}, "content": null(STR)},
               {"refusal": null(STR), "tool_calls": array(_TOOL_CALL)})
CHAT_USAGE = obj(None, {"prompt_tokens": INT, "completion_tokens": INT, "total_tokens": INT},
                 {"prompt_tokens_details": obj(None, {"cached_tokens": INT})})
CHAT_COMPLETION = obj("chat.completion", {
    **_HEAD, "choices": array(obj(None, {"index": INT, "message": _MESSAGE, "logprobs": null(OBJ),
                                         "finish_reason": STR})),
    "usage": CHAT_USAGE})
TEXT_COMPLETION = obj("text_completion", {
    **_HEAD, "choices": array(obj(None, {"index": INT, "text": STR, "logprobs": null(OBJ), "finish_reason": STR})),
    "usage": obj(None, {"prompt_tokens": INT, "completion_tokens": INT, "total_tokens": INT})})
EMBEDDING_LIST = plain_list(
    obj("embedding", {"index": INT, "embedding": {"anyOf": [array(NUM), STR]}}),
    model=STR, usage=obj(None, {"prompt_tokens": INT, "total_tokens": INT}))

# --- stored chat completions and feedback (control/data/stored_completions.py) ---

STORED_COMPLETION = {**CHAT_COMPLETION, "required": [*CHAT_COMPLETION["required"], "metadata"],
                     "properties": {**CHAT_COMPLETION["properties"], "metadata": OBJ}}
STORED_COMPLETION_LIST = page(STORED_COMPLETION)
STORED_COMPLETION_DELETED = deleted("chat.completion.deleted")
STORED_MESSAGE_LIST = page(obj(None, {"id": STR, "role": STR, "content": null(STR), "name": null(STR),
                                      "content_parts": null(array(OBJ))}))
FEEDBACK = obj("feedback", {"id": STR, "completion_id": STR, "rating": {"enum": [1, -1]},
                            "correction": null(STR), "comment": null(STR), "created_at": INT})
FEEDBACK_LIST = page(FEEDBACK)

# --- the Responses API (control/data/responses.py response_object, protocol/responses.py items) ---

ITEM = obj(None, {"id": STR, "type": {"enum": ["message", "function_call", "function_call_output"]}},
           {"status": STR, "role": STR, "content": array(OBJ), "call_id": STR, "name": STR, "arguments": STR,
            "output": STR})
RESPONSE = obj("response", {
    "id": STR, "created_at": INT, "status": STR, "model": STR, "output": array(ITEM),
    "usage": null(obj(None, {"input_tokens": INT, "output_tokens": INT, "total_tokens": INT},
                      {"input_tokens_details": OBJ, "output_tokens_details": OBJ})),
    "error": null(obj(None, {"code": STR, "message": STR})), "incomplete_details": null(OBJ),
    "previous_response_id": null(STR), "metadata": OBJ,
    # the request parameters it echoes (serving/responses.py echo)
    "instructions": null(STR), "tools": array(OBJ), "tool_choice": {"anyOf": [STR, OBJ]},
    "parallel_tool_calls": BOOL, "text": obj(None, {"format": obj(None, {"type": STR})}), "temperature": NUM,
    "top_p": NUM, "max_output_tokens": null(INT), "truncation": STR, "store": BOOL, "user": null(STR)})
RESPONSE_DELETED = deleted("response.deleted")
ITEM_LIST = page(ITEM)

# --- usage (control/billing/usage.py summarize) ---

_USD = STR  # money is an exact decimal string ("0.0015"), never a float
_TOTALS = {"requests": INT, "prompt_tokens": INT, "completion_tokens": INT, "cached_tokens": INT,
           "total_tokens": INT, "cost_usd": _USD}
USAGE_REPORT = obj("usage.report", {
    "tenant_id": null(STR), "start_date": null(STR), "end_date": null(STR), "group_by": array(STR),
    "data": array(obj(None, _TOTALS, {g: null(STR) for g in ("model", "key", "day", "tenant", "endpoint",
                                                             "status")})),
    "totals": obj(None, _TOTALS)})

# --- /v1/admin: tenants and keys (control/auth/tenants.py, keys.py, control/limits/view.py limits_dict,
# control/billing/budgets.py status), audit (control/auth/audit.py to_dict) ---

LIMITS = obj(None, {"rpm": null(INT), "tpm": null(INT), "max_parallel": null(INT), "budget_usd": null(_USD),
                    "budget_period": STR, "budget_alert_fraction": NUM})
BUDGET = obj(None, {"period_start": STR, "budget_usd": null(_USD), "spent_usd": _USD, "reserved_usd": _USD,
                    "granted_usd": _USD, "alert_fraction": NUM, "alerted": BOOL})
TENANT = obj("tenant", {"id": STR, "name": STR, "created_at": INT, "disabled": BOOL, "metadata": OBJ,
                        "limits": LIMITS, "store_retention_days": null(INT), "budget": BUDGET})
TENANT_LIST = page(TENANT)
TENANT_DELETED = deleted("tenant.deleted")
_KEY = {"id": STR, "tenant_id": STR, "name": STR, "prefix": STR, "role": {"enum": ["admin", "owner", "member",
                                                                                  "reader"]},
        "models": null(array(STR)), "status": {"enum": ["active", "revoked", "expired"]}, "created_at": INT,
        "expires_at": null(INT), "revoked_at": null(INT), "last_used_at": null(INT), "rotated_from": null(STR),
        "limits": LIMITS}
KEY = obj("api_key", _KEY, {"budget": BUDGET})
KEY_WITH_SECRET = obj("api_key", {**_KEY, "key": STR})  # created or rotated: the only time the secret is shown
KEY_WITH_BUDGET = obj("api_key", {**_KEY, "budget": BUDGET})
KEY_LIST = page(KEY)
AUDIT_ENTRY = obj("audit_log.entry", {
    "id": INT, "at": INT, "action": STR,
    "actor": obj(None, {"key_id": null(STR), "tenant_id": null(STR), "name": STR, "ip": null(STR)}),
    "target": obj(None, {"type": STR, "id": STR, "tenant_id": null(STR)}),
    "request_id": null(STR), "before": null(OBJ), "after": null(OBJ)})
AUDIT_LIST = page(AUDIT_ENTRY, ids=INT)

# --- /v1/admin/models (routers/admin_models.py _model_out; control/model_catalog.py Entry.to_dict,
# serving/catalog.py ModelState.to_dict, control/billing/catalog.py price_dict) ---

_PRICE_FIELDS = ("input_usd_per_mtok", "output_usd_per_mtok", "training_usd_per_mtok")
CATALOG_MODEL = obj("model", {
    "id": STR, "created": INT, "description": STR, "context_length": null(INT), "max_seqs": null(INT),
    "capabilities": array(STR), "tenants": null(array(STR)), "load_at_start": BOOL, "status": _STATUS,
    "error": null(STR), **{k: null(_USD) for k in _PRICE_FIELDS}, "batch_discount": null(NUM)},
    {"package": STR, "gguf_path": STR, "loaded": obj(None, {"context_length": INT, "max_seqs": INT})})
CATALOG_MODEL_LIST = page(CATALOG_MODEL)
MODEL_PRICE = obj("model.price", {"id": STR, **{k: _USD for k in _PRICE_FIELDS}, "batch_discount": NUM,
                                  "updated_at": INT})
# GET /v1/admin/models/{id}: the catalog entry, or only a price for a model that is not in the catalog
CATALOG_MODEL_OR_PRICE = {"anyOf": [CATALOG_MODEL, MODEL_PRICE]}
MODEL_DELETED = deleted("model.deleted")

# --- /v1/admin/deployments (serving/deployments.py LocalDeployments, cluster/control.py: Ray mode adds
# `application`) ---

_REPLICA = obj(None, {"id": STR, "state": STR, "running": INT, "waiting": INT, "adapters": array(STR)})
DEPLOYMENT = obj("deployment", {
    "id": STR, "mode": {"enum": ["process", "ray"]}, "status": _STATUS, "error": null(STR), "config": OBJ,
    "target_replicas": null(INT), "replicas": array(_REPLICA)},
    {"application": STR})
DEPLOYMENT_LIST = plain_list(DEPLOYMENT, mode={"enum": ["process", "ray"]},
                             ingress=array(obj(None, {"id": STR, "state": STR})))
DEPLOYMENT_DELETED = deleted("deployment.deleted")
