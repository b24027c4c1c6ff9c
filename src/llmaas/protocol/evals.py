"""Wire schema of POST /v1/evals (our own API, in OpenAI's object conventions).

An eval run measures one or more models on a file uploaded with purpose `evals`, under a task:
`classification` (pick the most likely label by log-likelihood), `generation` (generate, compare with a
reference) or `loss` (cross-entropy of assistant tokens)."""

from __future__ import annotations

import string
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmaas.core.errors import InvalidRequestError
from llmaas.protocol.common import INT32_MAX, Metadata


def check_prompt_template(template: str) -> str:
    """Only `{field}` placeholders (and `{{`/`}}` escapes). str.format would also run format specs
    (`{text:>200000000}` builds a 200 MB string), conversions (`{text!r}`) and attribute or index access
    (`{text.__class__}`, a way into Python objects): none of them is refused at run time, so they are
    refused here: a ValueError, so the 400 names where the template sits (`task.prompt_template`)."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"not a valid template: {e}") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not name or name.isdigit() or any(c in name for c in ".[]") or spec or conversion:
            raise ValueError(
                "only plain {field} placeholders are allowed (no positional fields, attribute or index access, "
                f"conversions or format specs); found {{{name}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}}")
    return template


class _Task(BaseModel):
    model_config = ConfigDict(extra="forbid")
    system: str | None = Field(default=None, max_length=20_000)  # a system message put before every row


class ClassificationTask(_Task):
    """Rows `{"text": ..., "label": ...}` (field names configurable), or chat rows whose last assistant
    message is the label. The prediction is the label with the highest log-likelihood as the answer."""

    type: Literal["classification"]
    labels: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(default=None, min_length=2,
                                                                                      max_length=64)
    # The user message; `{text}` and any other field of the row are substituted.
    prompt_template: str = Field(default="{text}", min_length=1, max_length=20_000)
    text_field: str = "text"
    label_field: str = "label"
    # "sum": total log-likelihood of the label's tokens (labels of different lengths compete fairly only if the
    # model ends them with its end-of-turn token, which is scored too); "mean": per token.
    normalization: Literal["sum", "mean"] = "sum"

    @field_validator("prompt_template")
    @classmethod
    def _plain_placeholders(cls, v: str) -> str:
        return check_prompt_template(v)

    @field_validator("labels")
    @classmethod
    def _distinct(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("labels must be distinct")
        return v


class GenerationTask(_Task):
    """Chat rows whose last assistant message is the reference answer, or `{"input": str | messages,
    "ideal": str}`. Greedy generation, then exact match, token F1, ROUGE-L, BLEU and the reference's loss."""

    type: Literal["generation"]
    max_tokens: int = Field(default=256, ge=1, le=4096)


class LossTask(_Task):
    """Chat rows: mean cross-entropy and perplexity of every assistant message's tokens."""

    type: Literal["loss"]


Task = Annotated[ClassificationTask | GenerationTask | LossTask, Field(discriminator="type")]


class EvalCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | list[str]
    file_id: str
    task: Task
    name: str | None = Field(default=None, max_length=200)
    max_rows: int | None = Field(default=None, ge=1, le=INT32_MAX)  # evaluate the file's first N rows
    metadata: Metadata = None

    def models(self) -> list[str]:
        models = [self.model] if isinstance(self.model, str) else list(self.model)
        if not models or len(models) > 16 or len(set(models)) != len(models):
            raise InvalidRequestError("'model' must name 1 to 16 distinct models.", param="model")
        return models


class FineTuneEval(BaseModel):
    """Extension of POST /v1/fine_tuning/jobs: an eval to run on the result and on each checkpoint."""

    model_config = ConfigDict(extra="forbid")
    file_id: str
    task: Task
    max_rows: int | None = Field(default=None, ge=1, le=INT32_MAX)
