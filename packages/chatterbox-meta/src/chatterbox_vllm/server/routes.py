"""The FastAPI app: OpenAI's ``/v1/audio/speech`` (+ SSE), voices, health, models, metrics.

Errors are OpenAI-shaped (``{"error": {"message", "type", "param", "code"}}``) with the status a
client can act on: 400 bad request (the field is named), 401 API key, 404 unknown voice to delete,
413 input or upload too large, 429 too many concurrent streams, 503 engine dead. A failure in one
request never stops the server; a client that disconnects mid-stream has its T3 requests aborted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import io
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatterbox_vllm.controls import CONTROLS, GenerationParams
from chatterbox_vllm.encoding import RESPONSE_FORMATS, StreamEncoder, available_formats
from chatterbox_vllm.errors import (
    AudioError,
    ChatterboxError,
    EngineDeadError,
    InvalidTextError,
)
from chatterbox_vllm.languages import SUPPORTED_LANGUAGES
from chatterbox_vllm.server.metrics import Metrics
from chatterbox_vllm.server.middleware import (
    AbortFailedStreams,
    CountRequests,
    LimitRequestBodies,
    StreamAborted,
    error_body,
)
from chatterbox_vllm.server.schema import SpeechRequest, controls_of
from chatterbox_vllm.server.settings import ServerSettings
from chatterbox_vllm.server.voices import UnknownVoiceError, VoiceStore
from chatterbox_vllm.streaming import aiterate_stream

if TYPE_CHECKING:
    from chatterbox_vllm.tts import ChatterboxTTS

logger = logging.getLogger(__name__)

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
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def _param_of(error: ChatterboxError) -> str | None:
    """The request field a product error is about (its message starts with a control name)."""
    if isinstance(error, InvalidTextError):
        return "input"
    if isinstance(error, AudioError):
        return "voice"
    first = str(error).split(" ", 1)[0].rstrip(":")
    return first if first in CONTROLS else None


class _Slots:
    """At most ``limit`` speech requests at once; beyond that, 429 (never a queue that hangs)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def acquire(self) -> None:
        if self.used >= self.limit:
            raise APIError(
                429,
                f"too many concurrent speech requests ({self.limit} running); retry later or "
                "raise --max-concurrent-streams",
                kind="rate_limit_error",
            )
        self.used += 1

    def release(self) -> None:
        self.used -= 1


def create_app(tts: ChatterboxTTS, settings: ServerSettings | None = None) -> FastAPI:
    """The server's app over one loaded :class:`~chatterbox_vllm.ChatterboxTTS`."""
    settings = settings or ServerSettings()
    app = FastAPI(title="chatterbox-vllm", summary="Chatterbox TTS on vLLM, OpenAI-compatible")
    voices = VoiceStore(tts, settings.voices_dir)
    metrics = Metrics()
    slots = _Slots(settings.max_concurrent_streams)
    formats = available_formats()
    app.state.tts, app.state.voices, app.state.metrics = tts, voices, metrics
    tts.on_stream_done = metrics.observe_stream

    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError) -> JSONResponse:
        return JSONResponse(
            error_body(error.message, param=error.param, kind=error.kind), error.status
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        param = None
        for item in error.errors():
            if item.get("type") == "json_invalid":
                problems.append(f"the body is not valid JSON ({item.get('ctx', {}).get('error')})")
                continue
            where = [str(part) for part in item.get("loc", ()) if part not in ("body",)]
            param = param or (where[0] if where else None)
            problems.append(f"{'.'.join(where) or 'body'}: {_validation_message(item)}")
        return JSONResponse(error_body("; ".join(problems), param=param), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # Unknown paths, wrong methods and bodies FastAPI cannot parse: the same error shape.
        message = _http_error_message(request, error)
        return JSONResponse(error_body(message), error.status_code, headers=error.headers)

    @app.exception_handler(ChatterboxError)
    async def _product_error(request: Request, error: ChatterboxError) -> JSONResponse:
        if isinstance(error, EngineDeadError):
            return JSONResponse(error_body(str(error), kind="server_error"), 503)
        return JSONResponse(error_body(str(error), param=_param_of(error)), 400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("request %s %s failed", request.method, request.url.path)
        return JSONResponse(
            error_body(f"internal error: {type(error).__name__}: {error}", kind="server_error"), 500
        )

    # Added innermost first: limits, then counting, then (outermost) aborting failed streams.
    app.add_middleware(LimitRequestBodies, limit_for=functools.partial(_body_limit, settings))
    app.add_middleware(CountRequests, counter=metrics.requests)
    app.add_middleware(AbortFailedStreams)

    async def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(
                401,
                "missing API key: send 'Authorization: Bearer <key>'",
                kind="authentication_error",
            )
        if token.strip() != settings.api_key:
            raise APIError(401, "wrong API key", kind="authentication_error")

    # ------------------------------------------------------------------ speech

    @app.post("/v1/audio/speech", dependencies=[Depends(authorize)])
    async def speech(body: SpeechRequest) -> Response:  # type: ignore[valid-type]
        request: Any = body
        accepted_models = (settings.model_name, *OPENAI_MODEL_ALIASES)
        if request.model not in accepted_models:
            raise APIError(
                400,
                f"unknown model {request.model!r}; use one of {', '.join(accepted_models)}",
                param="model",
            )
        if len(request.input) > settings.max_input_chars:
            raise APIError(
                413,
                f"input has {len(request.input):,} characters; at most {settings.max_input_chars:,} "
                "are accepted (split the text, or raise --max-input-chars)",
                param="input",
            )
        if request.response_format not in formats:
            raise APIError(
                400,
                f"response_format {request.response_format!r} is not available; use one of {', '.join(formats)}",
                param="response_format",
            )
        if request.speed != 1.0:
            raise APIError(
                400,
                f"speed {request.speed} is not supported: Chatterbox speaks at its own pace (use 1.0)",
                param="speed",
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
        if request.timestamps and tts.model != "multilingual":
            raise APIError(
                400,
                "timestamps are available on the multilingual model only (word timings come "
                "from its alignment analyzer; this server runs the English model, which has none)",
                param="timestamps",
            )
        params = GenerationParams.from_controls(controls_of(request), model=tts.model)
        slots.acquire()
        started = time.perf_counter()
        try:
            session = await asyncio.to_thread(tts.open_stream, request.input, voice, params=params)
        except BaseException:
            slots.release()
            raise
        metrics.running_streams.inc()
        sse = request.stream_format == "sse"
        encoder = StreamEncoder(request.response_format, tts.sample_rate)
        words: list[Any] = []  # word timings as they arrive (timestamps=true)

        async def audio_bytes() -> AsyncGenerator[bytes, None]:
            """The encoded audio as it is ready; raises if the stream fails."""
            first = True
            try:
                async with contextlib.aclosing(aiterate_stream(session)) as chunks:
                    async for chunk in chunks:
                        words.extend(chunk.words)
                        data = encoder.encode(chunk.waveform)
                        if chunk.final:
                            data += encoder.finish()
                        metrics.audio_seconds.inc(chunk.duration_s)
                        if not data:
                            continue
                        if first:
                            metrics.first_audio.observe(time.perf_counter() - started)
                            first = False
                        yield data
            finally:
                session.close()  # a disconnected client: T3 requests aborted, S3Gen streams dropped
                metrics.speech_tokens.inc(session.speech_tokens)
                metrics.running_streams.dec()
                slots.release()

        if sse:
            return StreamingResponse(
                _sse_events(
                    audio_bytes(),
                    session,
                    len(request.input),
                    words if request.timestamps else None,
                ),
                media_type="text/event-stream",
            )
        media_type = RESPONSE_FORMATS[request.response_format].media_type
        if request.timestamps:
            # The audio and its word timings in one JSON body (sent once complete).
            async with contextlib.aclosing(audio_bytes()) as pieces:
                audio = b"".join([piece async for piece in pieces])
            return JSONResponse(
                {
                    "audio": base64.b64encode(audio).decode(),
                    "response_format": request.response_format,
                    "timestamps": [word.as_dict() for word in words],
                }
            )
        if not encoder.format.streamable:
            # Sent once complete (FLAC's header holds the length): a failure is still a 5xx.
            async with contextlib.aclosing(audio_bytes()) as pieces:
                body = b"".join([piece async for piece in pieces])
            return Response(body, media_type=media_type)
        return StreamingResponse(_abort_on_failure(audio_bytes()), media_type=media_type)

    # ------------------------------------------------------------------ voices

    @app.post("/v1/voices", dependencies=[Depends(authorize)], status_code=201)
    async def upload_voice(name: str = Form(...), file: UploadFile = File(...)) -> dict[str, Any]:
        voices.check_name(name)
        data = await file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise APIError(
                413,
                f"upload is larger than {settings.max_upload_bytes:,} bytes (raise --max-upload-bytes)",
                param="file",
            )
        voice = await asyncio.to_thread(_prepare_upload, tts, data, file.filename or "upload")
        replaced = await asyncio.to_thread(voices.add, name, voice)
        return {"object": "voice", "name": name, "replaced": replaced}

    @app.get("/v1/voices", dependencies=[Depends(authorize)])
    async def list_voices() -> dict[str, Any]:
        return {"object": "list", "data": [{"object": "voice", "name": n} for n in voices.names()]}

    @app.delete("/v1/voices/{name}", dependencies=[Depends(authorize)])
    async def delete_voice(name: str) -> dict[str, Any]:
        try:
            voices.delete(name)
        except UnknownVoiceError as error:
            raise APIError(404, str(error), param="name") from None
        return {"object": "voice", "name": name, "deleted": True}

    # ------------------------------------------------------------------ service

    @app.get("/health")
    async def health() -> JSONResponse:
        failure = tts._t3_failure()
        if failure is not None:
            return JSONResponse({"status": "dead", "reason": failure}, 503)
        return JSONResponse({"status": "ok", "model": tts.model, "running_streams": slots.used})

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": settings.model_name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "resemble-ai",
                    # Which Chatterbox model the checkpoint holds, and what it speaks.
                    "chatterbox_model": tts.model,
                    "languages": list(SUPPORTED_LANGUAGES)
                    if tts.model == "multilingual"
                    else ["en"],
                }
            ],
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        metrics.refresh(tts)
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


MULTIPART_OVERHEAD_BYTES = 64 * 1024
"""Room for a multipart upload's boundaries, part headers and the ``name`` field."""
JSON_BYTES_PER_CHARACTER = 12
"""The most a JSON string spends on one character (a surrogate pair escaped as two ``\\uXXXX``)."""
JSON_OVERHEAD_BYTES = 16 * 1024
"""Room for the other fields of a speech request."""


def _body_limit(settings: ServerSettings, path: str) -> tuple[int, str]:
    """The largest body a route reads, and why (for the 413 message)."""
    if path.rstrip("/") == "/v1/voices":
        return (
            settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES,
            f"a voice upload may have (--max-upload-bytes {settings.max_upload_bytes:,} plus "
            "the multipart framing)",
        )
    return (
        settings.max_input_chars * JSON_BYTES_PER_CHARACTER + JSON_OVERHEAD_BYTES,
        f"a request may have (--max-input-chars {settings.max_input_chars:,} characters of "
        "input plus the other fields)",
    )


def _validation_message(item: dict[str, Any]) -> str:
    """pydantic's message for one invalid field, with FastAPI's internals put in user terms."""
    message = str(item.get("msg"))
    if "UploadFile" in message:
        return "expected an audio file (a multipart part with a filename), got a plain form field"
    return message


def _http_error_message(request: Request, error: StarletteHTTPException) -> str:
    """What went wrong, for the errors Starlette and FastAPI raise themselves."""
    cause = error.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return "the request body is not UTF-8 text; send UTF-8 encoded JSON"
    if isinstance(cause, RecursionError):
        return "the request body is nested too deeply to parse; send a flat JSON object"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return f"the request body has a number that is too long to parse ({cause})"
    if cause is not None and type(cause).__name__ == "MultiPartException":
        return f"the multipart body cannot be read: {cause}"
    if error.status_code == 404:
        return f"no route {request.url.path}; see /docs for the API"
    if error.status_code == 405:
        allowed = (error.headers or {}).get("Allow", "")
        return f"{request.method} is not allowed on {request.url.path}" + (
            f"; use {allowed}" if allowed else ""
        )
    return str(error.detail)


async def _abort_on_failure(pieces: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    """A streamed body whose failure after the headers aborts the connection (no terminating
    chunk): a client must never take a cut-off stream for a complete one."""
    try:
        async with contextlib.aclosing(pieces):
            async for piece in pieces:
                yield piece
    except Exception as error:
        raise StreamAborted(f"speech stream failed: {_describe_failure(error)}") from None


async def _sse_events(
    pieces: AsyncGenerator[bytes, None],
    session: Any,
    input_chars: int,
    words: list[Any] | None = None,
) -> AsyncIterator[bytes]:
    """``speech.audio.delta`` events, then ``speech.audio.done`` with usage; a failure after
    the headers ends the stream with an ``error`` event of type ``server_error`` (the input
    was checked before the headers, so what fails now is the server). ``words``: filled with
    word timings as audio is produced; each is sent as a ``speech.word`` event after the audio
    it arrived with."""

    def word_events() -> Iterator[bytes]:
        while words:
            yield _sse({"type": "speech.word", **words.pop(0).as_dict()})

    try:
        async with contextlib.aclosing(pieces):
            async for piece in pieces:
                event = {"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode()}
                yield _sse(event)
                for word_event in word_events():
                    yield word_event
        for word_event in word_events():
            yield word_event
    except Exception as error:
        message = _describe_failure(error)
        logger.error("speech stream (SSE) failed: %s", message)
        yield _sse({"type": "error", **error_body(message, kind="server_error")})
        return
    usage = {"input_tokens": input_chars, "output_tokens": session.speech_tokens}
    usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
    yield _sse({"type": "speech.audio.done", "usage": usage})


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


def _describe_failure(error: Exception) -> str:
    if isinstance(error, ChatterboxError):
        return str(error)
    logger.exception("unexpected failure in a speech stream")
    return f"internal error: {type(error).__name__}: {error}"


def _prepare_upload(tts: ChatterboxTTS, data: bytes, filename: str) -> Any:
    """Decodes an uploaded recording (any format libsndfile reads) and prepares the voice."""
    import soundfile

    from chatterbox_vllm.errors import CorruptAudioError

    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as error:  # libsndfile's errors for unreadable bytes
        # libsndfile names its input (here the repr of an in-memory buffer): keep its reason only.
        reason = str(error).split(": ", 1)[-1] if "<_io." in str(error) else str(error)
        raise CorruptAudioError(
            f"could not decode the uploaded file {filename!r} as audio ({reason}); upload WAV, "
            "FLAC, OGG or MP3"
        ) from None
    return tts.prepare_voice((samples.T.copy(), int(rate)))


__all__ = ["create_app"]
