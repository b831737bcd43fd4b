"""Typed errors of the engine. Each says what was wrong and never takes other requests down."""
from __future__ import annotations


class WardError(Exception):
    """Base of every error the worker raises on purpose."""

    code = "internal_error"


class InvalidRequestError(WardError, ValueError):
    """A request or parameter the engine cannot serve as asked."""

    code = "invalid_request"


class PromptTooLongError(InvalidRequestError):
    """The prompt (plus what must be generated) does not fit the model's context."""

    code = "context_length_exceeded"


class TokenIdsOutOfRangeError(InvalidRequestError):
    """A prompt or embedding input holds token ids beyond the model's vocabulary."""

    code = "token_ids_out_of_range"


class RequestTooLargeError(InvalidRequestError):
    """The request could never fit in the KV cache pool, even alone."""

    code = "request_too_large"


class ModelLoadError(WardError):
    """A model directory is missing, incomplete or of an unsupported family."""

    code = "model_load_error"


class ModelConfigMismatch(ModelLoadError, ValueError):
    """The engine's configuration asks more of the model than it has (a longer context, say)."""

    code = "model_config_mismatch"


class BackendUnusable(ModelLoadError, ValueError):
    """An explicitly chosen optional attention backend is missing or failed its start-up self-check."""

    code = "attention_backend_unusable"


class EngineDeadError(WardError):
    """The engine loop failed; no further requests can be served by this process."""

    code = "engine_dead"
