"""Wire schemas of stored chat completions, feedback on them, and their export to a file."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llmaas.protocol.common import Metadata, UnixTime


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in a filter must not silently widen an export


class MetadataUpdate(BaseModel):
    metadata: Metadata = None


class FeedbackCreate(_Strict):
    completion_id: str = Field(min_length=1, max_length=64)
    rating: Literal[1, -1]
    correction: str | None = Field(default=None, min_length=1, max_length=100_000)
    comment: str | None = Field(default=None, max_length=2000)


class StoredCompletionsSource(_Strict):
    type: Literal["stored_completions"]
    model: str | None = None
    created_after: UnixTime | None = Field(default=None, description="Unix seconds, inclusive")
    created_before: UnixTime | None = Field(default=None, description="Unix seconds, exclusive")
    min_rating: int | None = Field(default=None, ge=-1, le=1)
    include_corrected: bool = True
    metadata: Metadata = None


class FileFromSource(_Strict):
    """POST /v1/files with a JSON body: a file the platform writes from the caller's own data."""

    purpose: Literal["fine-tune"]
    source: StoredCompletionsSource
    filename: str = Field(default="stored_completions.jsonl", min_length=1, max_length=255)
