"""Pydantic models of OpenAI requests (what the official SDK sends) and their engine parameters.

Responses are built as plain dicts in the serving modules: cheaper on the hot path and easy to
check against the SDK, which parses them into its own types.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmaas.core.errors import InvalidRequestError
from llmaas.engine.grammar import json_grammar
from llmaas.engine.types import SamplingParams

# Bounds on what one request may ask of the server (documented in the README, "Request limits"): beyond
# them a request is refused up front instead of costing memory or time before the context check.
MAX_MESSAGES = 2048
MAX_INPUTS = 2048  # prompts of a completion, inputs of an embedding
MAX_TOKEN_IDS = 262_144  # token ids given directly, in all
MAX_STOP_CHARS = 256
MAX_LOGIT_BIAS = 1024


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Req):
    include_usage: bool = False


class TextPart(_Req):
    type: Literal["text"]
    text: str


MAX_TOOLS = 128
FunctionName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class FunctionDef(_Req):
    name: FunctionName
    description: str | None = Field(default=None, max_length=8192)
    parameters: dict[str, Any] | None = None  # a JSON schema; None: no arguments
    strict: bool | None = None


class ToolDef(_Req):
    type: Literal["function"]
    function: FunctionDef


class FunctionCallIn(_Req):
    name: FunctionName
    arguments: str = Field(max_length=1 << 20)  # JSON, as the model produced it


class ToolCallIn(_Req):
    id: str = Field(max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ToolChoiceFunction(_Req):
    name: FunctionName


class NamedToolChoice(_Req):
    type: Literal["function"]
    function: ToolChoiceFunction


class ChatMessageIn(_Req):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = Field(default=None, max_length=MAX_TOOLS)  # an assistant's calls
    tool_call_id: str | None = Field(default=None, max_length=256)  # a tool message: the call it answers

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class JsonSchemaFormat(_Req):
    name: str = "response"
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Req):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


def check_metadata(v: dict[str, str] | None) -> dict[str, str] | None:
    """OpenAI's limits on `metadata`: at most 16 pairs, keys up to 64 characters, values up to 512."""
    if v is not None and (len(v) > 16 or any(len(k) > 64 or len(x) > 512 for k, x in v.items())):
        raise ValueError("at most 16 key-value pairs, keys of at most 64 characters, values of at most 512")
    return v


def _check_inputs(v: Any) -> Any:
    """Bounds on a prompt / input given as a list: how many items, how many token ids in all."""
    if isinstance(v, list):
        if len(v) > MAX_INPUTS and not all(isinstance(x, int) for x in v):
            raise ValueError(f"at most {MAX_INPUTS} items per request")
        n = sum(len(x) if isinstance(x, list) else 1 for x in v if not isinstance(x, str))
        if n > MAX_TOKEN_IDS:
            raise ValueError(f"at most {MAX_TOKEN_IDS} token ids per request")
    return v


class _SamplingFields(_Req):
    """Fields shared by chat and text completions (OpenAI's, then vLLM-style extensions)."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # OpenAI's: any signed 64-bit integer
    user: str | None = None
    # Extensions (as in vLLM / llama.cpp servers)
    top_k: int = Field(default=0, ge=0)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, ge=0.01, le=2.0)
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if any(len(x) > MAX_STOP_CHARS for x in stops):
            raise ValueError(f"a stop sequence may be at most {MAX_STOP_CHARS} characters")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _bias_size(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None and len(v) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} tokens may be biased")
        return v

    def stop_list(self) -> list[str]:
        return list(self.stop or [])

    def sampling(
        self, max_tokens: int, logprobs: int | None, grammar: str | None, token_id: Any
    ) -> SamplingParams:
        bias: dict[int, float] = {}
        for key, val in (self.logit_bias or {}).items():
            tid = token_id(key)
            if tid is None:
                raise InvalidRequestError(f"logit_bias key {key!r} is not a valid token id", param="logit_bias")
            bias[tid] = val
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            seed=self.seed,
            stop=self.stop_list(),
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            logit_bias=bias,
            logprobs=logprobs,
            grammar=grammar,
            ignore_eos=self.ignore_eos,
        )


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    store: bool = False  # keep the completion (GET /v1/chat/completions), for review, feedback and export
    metadata: dict[str, str] | None = None
    tools: list[ToolDef] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        return check_metadata(v)

    def check_tools(self) -> None:
        """What the schema alone cannot say about tools; each a 400 naming the field."""
        names = [t.function.name for t in self.tools or ()]
        if len(set(names)) != len(names):
            raise InvalidRequestError("tools must have distinct function names", param="tools")
        choice = self.tool_choice
        if choice is not None and choice != "none" and not names:
            raise InvalidRequestError("tool_choice needs tools", param="tool_choice")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise InvalidRequestError(f"tool_choice names '{choice.function.name}', which is not in tools",
                                      param="tool_choice.function.name")
        for i, m in enumerate(self.messages):
            if m.role == "tool" and not m.tool_call_id:
                raise InvalidRequestError("a tool message needs tool_call_id", param=f"messages[{i}].tool_call_id")
            if m.tool_calls and m.role != "assistant":
                raise InvalidRequestError("only assistant messages carry tool_calls", param=f"messages[{i}].tool_calls")

    def stored_request(self) -> dict:
        """What a stored completion keeps of its request: the messages as sent, the model and the sampling
        parameters that were set (not the transport: stream, store, metadata)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True,
                               exclude={"stream", "stream_options", "store", "metadata"})

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprobs_k(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequestError("top_logprobs requires logprobs=true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None

    def grammar(self) -> str | None:
        rf = self.response_format
        if rf is None or rf.type == "text":
            return None
        if rf.type == "json_object":
            return json_grammar(None)
        if rf.json_schema is None or rf.json_schema.schema_ is None:
            raise InvalidRequestError(
                "response_format of type json_schema needs json_schema.schema",
                param="response_format.json_schema",
            )
        return json_grammar(rf.json_schema.schema_)


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_size(cls, v: Any) -> Any:
        return _check_inputs(v)

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class EmbeddingRequest(_Req):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"

    @field_validator("input")
    @classmethod
    def _input_size(cls, v: Any) -> Any:
        return _check_inputs(v)
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
