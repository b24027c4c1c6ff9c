"""Domain errors. Each carries its HTTP status and OpenAI error type/code; the API maps them once."""

from __future__ import annotations


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
        return {
            "error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}
        }


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


class OverloadedError(LlmaasError):
    status_code = 503
    error_type = "server_error"
    code = "server_overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class EngineError(LlmaasError):
    status_code = 500
    error_type = "server_error"
    code = "engine_error"
