"""The checks a speech request and a WebSocket speech session share: the API key, how to speak
(model, format, instructions, voice, controls), admission's refusals, and the errors they answer,
so both routes refuse the same input with the same words."""

from __future__ import annotations

import re
from typing import Any

from chatterbox_vllm.controls import CONTROLS, GenerationParams
from chatterbox_vllm.errors import AudioError, ChatterboxError, ChunkInputError, InvalidTextError
from chatterbox_vllm.server.admission import AdmissionError
from chatterbox_vllm.server.schema import controls_of
from chatterbox_vllm.server.settings import ServerSettings
from chatterbox_vllm.server.voices import UnknownVoiceError, VoiceStore

OPENAI_MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
"""Model ids OpenAI clients send by default; accepted as names of this model."""


class APIError(Exception):
    """An error answered as OpenAI-style JSON with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind
        self.headers = headers


def refused(error: AdmissionError) -> APIError:
    """A stream admission turned away: 429 (over capacity) or 503 (waited too long)."""
    return APIError(
        error.status,
        str(error),
        kind="rate_limit_error" if error.status == 429 else "server_error",
        headers={"Retry-After": str(error.retry_after_s)},
    )


def param_of(error: ChatterboxError) -> str | None:
    """The request field a product error is about (its message starts with a control name)."""
    if isinstance(error, ChunkInputError):  # a chunk of the input the engine cannot take
        return param_of(error.cause)
    if isinstance(error, InvalidTextError):
        return "input"
    if isinstance(error, AudioError):
        return "voice"
    first = re.split(r"[ :=]", str(error), maxsplit=1)[0]
    return first if first in CONTROLS else None


def check_api_key(
    settings: ServerSettings, authorization: str, query_key: str | None = None
) -> None:
    """The API key of a request: ``Authorization: Bearer KEY`` (or, where a browser cannot set
    headers, the WebSocket's ``api_key`` query parameter); 401 when missing or wrong."""
    if settings.api_key is None:
        return
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token:
        key = token.strip()
    elif query_key:
        key = query_key.strip()
    else:
        raise APIError(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            kind="authentication_error",
        )
    if key != settings.api_key:
        raise APIError(401, "wrong API key", kind="authentication_error")


def check_speech_options(
    request: Any,
    settings: ServerSettings,
    formats: tuple[str, ...] | list[str],
    voices: VoiceStore,
    model: Any,
) -> tuple[Any, GenerationParams]:
    """The checks of how to speak, shared by ``/v1/audio/speech`` and the WebSocket session
    (model, format, instructions, voice, controls): the voice and params, or the
    :class:`APIError` naming the field."""
    accepted_models = (settings.model_name, *OPENAI_MODEL_ALIASES)
    if request.model not in accepted_models:
        raise APIError(
            400,
            f"unknown model {request.model!r}; use one of {', '.join(accepted_models)}",
            param="model",
        )
    if request.response_format not in formats:
        raise APIError(
            400,
            f"response_format {request.response_format!r} is not available; use one of {', '.join(formats)}",
            param="response_format",
        )
    if request.instructions:
        raise APIError(
            400,
            "instructions are not supported by Chatterbox (use exaggeration / cfg_weight)",
            param="instructions",
        )
    try:
        voice = voices.get(request.voice)
    except UnknownVoiceError as error:
        raise APIError(400, str(error), param="voice") from None
    return voice, GenerationParams.from_controls(controls_of(request), model=model)


def validation_problem(errors: Any) -> tuple[str, str | None]:
    """pydantic's errors of a request body as one message, and the first field named."""
    problems = []
    param = None
    for item in errors:
        if item.get("type") == "json_invalid":
            problems.append(f"the body is not valid JSON ({item.get('ctx', {}).get('error')})")
            continue
        where = [str(part) for part in item.get("loc", ()) if part not in ("body",)]
        param = param or (where[0] if where else None)
        problems.append(f"{'.'.join(where) or 'body'}: {_validation_message(item)}")
    return "; ".join(problems), param


def _validation_message(item: dict[str, Any]) -> str:
    """pydantic's message for one invalid field, with FastAPI's internals put in user terms."""
    message = str(item.get("msg"))
    if "UploadFile" in message:
        return "expected an audio file (a multipart part with a filename), got a plain form field"
    return message
