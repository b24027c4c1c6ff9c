"""Domain errors. Each carries its HTTP status and OpenAI error type/code; the API maps them once."""

from __future__ import annotations


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error envelope: the body of every error response, and of an SSE stream's error frame."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class LlmaasError(Exception):
    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def to_dict(self) -> dict:
        return error_body(self.message, self.error_type, self.param, self.code)

    def __reduce__(self) -> tuple:
        # Pickled whole (param, code, headers): an error raised in an engine replica reaches the API process
        # as the same 4xx/503, whatever arguments the subclass's __init__ takes.
        return _restore, (type(self), self.args, self.__dict__)


def _restore(cls: type[LlmaasError], args: tuple, state: dict) -> LlmaasError:
    e = cls.__new__(cls)
    Exception.__init__(e, *args)
    e.__dict__.update(state)
    return e


class InvalidRequestError(LlmaasError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"


class ModelNotFoundError(LlmaasError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it. "
            "List the available models with GET /v1/models.",
            param="model",
        )


class RetryLaterError(LlmaasError):
    """Refused for now, not for what the request says: a 503 (or 507) with the `Retry-After` the client waits."""

    status_code = 503
    error_type = "server_error"
    retry_after_s = 1

    def __init__(self, message: str, code: str | None = None, *, retry_after_s: int | None = None,
                 param: str | None = None) -> None:
        wait = self.retry_after_s if retry_after_s is None else retry_after_s
        super().__init__(message, param=param, code=code, headers={"Retry-After": str(wait)})


class ModelNotReadyError(RetryLaterError):
    """The model is in the catalog and being loaded (or unloaded): retry shortly."""

    code = "model_not_ready"
    retry_after_s = 5

    def __init__(self, model: str, state: str, retry_after_s: int | None = None) -> None:
        super().__init__(f"The model '{model}' is {state}; retry in a few seconds.", param="model",
                         retry_after_s=retry_after_s)


ENDPOINTS = {"chat": "chat completions (/v1/chat/completions)", "completions": "completions (/v1/completions)",
             "embeddings": "embeddings (/v1/embeddings)", "fine_tuning": "fine-tuning (/v1/fine_tuning/jobs)"}


class ModelCapabilityError(InvalidRequestError):
    """The model exists but cannot serve this kind of request (an embedding model asked to chat)."""

    code = "model_not_supported"

    def __init__(self, model: str, capability: str, capabilities: tuple[str, ...] | list[str]) -> None:
        supported = ", ".join(ENDPOINTS.get(c, c) for c in capabilities) or "nothing"
        super().__init__(f"the model '{model}' only supports {supported}, not {ENDPOINTS.get(capability, capability)}",
                         param="model")


class InsufficientMemoryError(LlmaasError):
    """Loading the model would exceed the memory the machine has left."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "insufficient_memory"


class OverloadedError(RetryLaterError):
    code = "server_overloaded"


class EngineUnavailableError(RetryLaterError):
    """The model's engine is not running (it stopped, or is being restarted): retry, or alert an operator."""

    code = "engine_unavailable"
    retry_after_s = 2


class DependencyUnavailableError(RetryLaterError):
    """A service the request needs (the database, Redis) does not answer: nothing was half-done; retry."""

    retry_after_s = 5


class InsufficientStorageError(RetryLaterError):
    """The disk is full: what the request was writing was removed, nothing is half-stored."""

    status_code = 507
    code = "insufficient_storage"
    retry_after_s = 60


class EngineError(LlmaasError):
    status_code = 500
    error_type = "server_error"
    code = "engine_error"


class AuthenticationError(LlmaasError):
    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDeniedError(LlmaasError):
    status_code = 403
    error_type = "invalid_request_error"
    code = "permission_denied"


class NotFoundError(LlmaasError):
    """A resource that does not exist *or belongs to another tenant*: the two are indistinguishable."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ConflictError(LlmaasError):
    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"


class RateLimitError(LlmaasError):
    status_code = 429
    error_type = "requests"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: float, *, headers: dict[str, str] | None = None,
                 code: str | None = None, error_type: str | None = None) -> None:
        h = {"Retry-After": str(max(1, int(retry_after_s + 0.999))), **(headers or {})}
        super().__init__(message, code=code, headers=h)
        if error_type:
            self.error_type = error_type


class QuotaExceededError(RateLimitError):
    error_type = "insufficient_quota"
    code = "insufficient_quota"


class AdapterNotFoundError(ModelNotFoundError):
    """A request names a LoRA adapter the engine does not know: to the client, a model that does not exist."""

    def __init__(self, adapter: str) -> None:
        LlmaasError.__init__(
            self,
            f"The model '{adapter}' does not exist or you do not have access to it (no such LoRA adapter is "
            "registered with its base model).",
            param="model",
        )
