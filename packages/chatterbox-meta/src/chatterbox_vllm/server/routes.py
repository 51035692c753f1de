"""The FastAPI app: OpenAI's ``/v1/audio/speech`` (+ SSE), voices, health, models, metrics.

Errors are OpenAI-shaped (``{"error": {"message", "type", "param", "code"}}``) with the status a
client can act on: 400 bad request (the field is named), 401 API key, 404 unknown voice to delete,
405 wrong method (``Allow`` lists the path's), 413 input or upload too large, 415 a compressed
body, 429 over capacity (``--over-capacity reject``, or a full queue; with ``Retry-After``), 503
engine dead, or no slot within ``--max-queue-wait`` (with ``Retry-After``). Every response carries
``X-Request-ID``; HEAD is answered as GET without the body. Admission:
:mod:`chatterbox_vllm.server.admission`. A failure in one
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
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from chatterbox_vllm.encoding import RESPONSE_FORMATS, StreamEncoder, available_formats
from chatterbox_vllm.errors import (
    AudioError,
    ChatterboxError,
    EngineDeadError,
    InvalidParameterError,
    OutputPathError,
)
from chatterbox_vllm.languages import SUPPORTED_LANGUAGES
from chatterbox_vllm.server.admission import Admission, AdmissionError, Ticket
from chatterbox_vllm.server.checks import (
    APIError,
    check_api_key,
    check_speech_options,
    param_of,
    refused,
    validation_problem,
)
from chatterbox_vllm.server.metrics import Metrics
from chatterbox_vllm.server.middleware import (
    AbortFailedStreams,
    AnswerHead,
    CountRequests,
    LimitRequestBodies,
    RequestIds,
    StreamAborted,
    error_body,
)
from chatterbox_vllm.server.playground import add_playground
from chatterbox_vllm.server.schema import SpeechRequest
from chatterbox_vllm.server.settings import ServerSettings
from chatterbox_vllm.server.voices import UnknownVoiceError, VoiceStore
from chatterbox_vllm.streaming import aiterate_stream

if TYPE_CHECKING:
    from chatterbox_vllm.controls import GenerationParams
    from chatterbox_vllm.tts import ChatterboxTTS

logger = logging.getLogger(__name__)

QUEUED_SECONDS_HEADER = "X-Chatterbox-Queued-Seconds"
"""On a response whose request waited in the admission queue: how long it waited."""
DISCONNECT_POLL_SECONDS = 0.5
"""How often a queued request, or one whose body is sent once complete, checks that its client
is still there."""


def create_app(tts: ChatterboxTTS, settings: ServerSettings | None = None) -> FastAPI:
    """The server's app over one loaded :class:`~chatterbox_vllm.ChatterboxTTS`."""
    settings = settings or ServerSettings()
    app = FastAPI(title="chatterbox-vllm", summary="Chatterbox TTS on vLLM, OpenAI-compatible")
    voices = VoiceStore(tts, settings.voices_dir)
    metrics = Metrics()
    admission = Admission(
        hard_cap=settings.max_concurrent_streams,
        capacity=(lambda: tts.scheduler.capacity.streams())
        if settings.capacity == "measured"
        else (lambda: None),
        over_capacity=settings.over_capacity,
        max_queue_wait_s=settings.max_queue_wait,
        max_queued=settings.max_queued_streams,
    )
    formats = available_formats()
    app.state.tts, app.state.voices, app.state.metrics = tts, voices, metrics
    app.state.admission = admission  # WebSocket sessions take their slots here too
    tts.on_stream_done = metrics.observe_stream
    tts.on_window = metrics.observe_window

    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError) -> JSONResponse:
        return JSONResponse(
            error_body(error.message, param=error.param, kind=error.kind),
            error.status,
            headers=error.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = validation_problem(error.errors())
        if _body_is_not_an_object(error.errors()):
            # e.g. curl -d without -H 'Content-Type: application/json' (a form body)
            content_type = request.headers.get("content-type") or "none"
            message = (
                "the body must be a JSON object of the request's fields (model, input, voice, "
                "...) sent with 'Content-Type: application/json'"
                + ("" if "json" in content_type else f"; this one's Content-Type is {content_type}")
            )
        return JSONResponse(error_body(message, param=param), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # Unknown paths, wrong methods and bodies FastAPI cannot parse: the same error shape.
        headers = error.headers
        if error.status_code == 405:
            # Starlette's Allow names the methods of the first route of the path only (POST for
            # /v1/voices, which GET lists too): every route's, and HEAD where GET is.
            headers = {**(headers or {}), "Allow": ", ".join(_methods_of_path(app, request))}
        message = _http_error_message(request, error, headers)
        return JSONResponse(error_body(message), error.status_code, headers=headers)

    @app.exception_handler(ChatterboxError)
    async def _product_error(request: Request, error: ChatterboxError) -> JSONResponse:
        if isinstance(error, EngineDeadError):
            return JSONResponse(error_body(str(error), kind="server_error"), 503)
        return JSONResponse(error_body(str(error), param=param_of(error)), 400)

    @app.exception_handler(ClientGone)
    async def _client_gone(request: Request, error: ClientGone) -> Response:
        # Nobody reads it: nginx's 499 "client closed request", for the request counter.
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception(
            "request %s %s (%s) failed",
            request.method,
            request.url.path,
            getattr(request.state, "request_id", "no id"),
        )
        return JSONResponse(
            error_body(f"internal error: {type(error).__name__}: {error}", kind="server_error"), 500
        )

    # Added innermost first: limits, then counting, then (outermost) aborting failed streams.
    app.add_middleware(LimitRequestBodies, limit_for=functools.partial(_body_limit, settings))
    app.add_middleware(CountRequests, counter=metrics.requests)
    app.add_middleware(AbortFailedStreams)
    app.add_middleware(AnswerHead)
    app.add_middleware(RequestIds)  # outermost: every answer carries its id, middleware's too

    async def authorize(request: Request) -> None:
        check_api_key(settings, request.headers.get("authorization", ""))

    # ------------------------------------------------------------------ speech

    async def admitted(http_request: Request) -> Ticket | None:
        """A slot from admission, waiting in its queue if need be; None if the client went
        away meanwhile (its place is freed)."""
        waiting = asyncio.ensure_future(admission.acquire())
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_SECONDS)
                if done:
                    return waiting.result()
                if await http_request.is_disconnected():
                    break
        except AdmissionError as error:
            raise refused(error) from None
        finally:
            waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError, AdmissionError):
            if await waiting is not None:  # admitted just as the client left
                admission.release()
        return None

    async def open_speech(
        request: Any, voice: Any, params: GenerationParams, started: float
    ) -> _Speech:
        """Starts an admitted request's stream (see :class:`_Speech`)."""
        admitted_at = time.perf_counter()
        try:
            session = await asyncio.to_thread(tts.open_stream, request.input, voice, params=params)
        except BaseException:
            admission.release()
            raise
        metrics.running_streams.inc()
        encoder = StreamEncoder(request.response_format, tts.sample_rate)
        words: list[Any] = []  # word timings as they arrive (multilingual model)
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            session.close()  # a disconnected client: T3 requests aborted, S3Gen streams dropped
            encoder.close()
            metrics.speech_tokens.inc(session.speech_tokens)
            metrics.running_streams.dec()
            admission.release(time.perf_counter() - admitted_at)

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
                release()

        return _Speech(session, encoder, audio_bytes(), release, words)

    async def queued_sse(
        request: Any, voice: Any, params: GenerationParams, started: float
    ) -> AsyncIterator[bytes]:
        """An SSE request that waits for admission after its headers: ``speech.queued`` (its
        place in the queue) first, then the usual events, or an ``error`` event if it is
        refused (over capacity, or no slot within --max-queue-wait)."""
        positions: list[int] = []
        waiting = asyncio.ensure_future(admission.acquire(on_queued=positions.append))
        owned = False
        try:
            await asyncio.sleep(0)  # it joins the queue (or is admitted) now
            if positions:
                yield _sse(
                    {
                        "type": "speech.queued",
                        "position": positions[0],
                        "max_wait_s": settings.max_queue_wait,
                    }
                )
            await waiting
            owned = True
            try:
                speech = await open_speech(request, voice, params, started)
            except ChatterboxError as error:
                if isinstance(error, EngineDeadError):
                    body = error_body(str(error), kind="server_error")
                else:
                    body = error_body(str(error), param=param_of(error))
                yield _sse({"type": "error", **body})
                return
            try:
                async for event in _sse_events(
                    speech.pieces,
                    speech.session,
                    len(request.input),
                    speech.words if request.timestamps else None,
                ):
                    yield event
            finally:
                speech.release()
        except AdmissionError as error:
            kind = "rate_limit_error" if error.status == 429 else "server_error"
            yield _sse({"type": "error", **error_body(str(error), kind=kind)})
        finally:
            if not waiting.done():
                waiting.cancel()  # the client went away while queued: its place is freed
            elif not owned and not waiting.cancelled() and waiting.exception() is None:
                admission.release()

    @app.post("/v1/audio/speech", dependencies=[Depends(authorize)])
    async def speech(body: SpeechRequest, http_request: Request) -> Response:  # type: ignore[valid-type]
        request: Any = body
        if len(request.input) > settings.max_input_chars:
            raise APIError(
                413,
                f"input has {len(request.input):,} characters; at most {settings.max_input_chars:,} "
                "are accepted (split the text, or raise --max-input-chars)",
                param="input",
            )
        voice, params = check_speech_options(request, settings, formats, voices, tts.model)
        if request.timestamps and tts.model != "multilingual":
            raise APIError(
                400,
                "timestamps are available on the multilingual model only (word timings come "
                f"from its alignment analyzer; this server runs the {tts.model} model, which has "
                "none)",
                param="timestamps",
            )
        started = time.perf_counter()
        sse = request.stream_format == "sse"
        if sse and admission.would_queue():
            # Headers now, a speech.queued event, then the audio once admitted.
            return StreamingResponse(
                queued_sse(request, voice, params, started), media_type="text/event-stream"
            )
        ticket = await admitted(http_request)
        if ticket is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)  # it left while queued
        speech = await open_speech(request, voice, params, started)
        queued = {QUEUED_SECONDS_HEADER: f"{ticket.queued_s:.3f}"} if ticket.position else None
        if sse:
            return _ReleasingStream(
                _sse_events(
                    speech.pieces,
                    speech.session,
                    len(request.input),
                    speech.words if request.timestamps else None,
                ),
                release=speech.release,
                media_type="text/event-stream",
                headers=queued,
            )
        media_type = RESPONSE_FORMATS[request.response_format].media_type
        if request.timestamps or not speech.encoder.format.streamable:
            # Sent once complete (FLAC's header holds the length; timings wrap the audio in
            # JSON): a failure is still a 5xx. Nothing is sent while it is made, so the client's
            # going away is watched here.
            try:
                body = await _unless_disconnected(_join(speech.pieces), http_request)
            finally:
                speech.release()
            if request.timestamps:
                return JSONResponse(
                    {
                        "audio": base64.b64encode(body).decode(),
                        "response_format": request.response_format,
                        "timestamps": [word.as_dict() for word in speech.words],
                    },
                    headers=queued,
                )
            return Response(body, media_type=media_type, headers=queued)
        return _ReleasingStream(
            _abort_on_failure(speech.pieces),
            release=speech.release,
            media_type=media_type,
            headers=queued,
        )

    # ------------------------------------------------------------------ voices

    @app.post("/v1/voices", dependencies=[Depends(authorize)], status_code=201)
    async def upload_voice(name: str = Form(...), file: UploadFile = File(...)) -> dict[str, Any]:
        try:
            voices.check_name(name)
        except InvalidParameterError as error:
            raise APIError(400, str(error), param="name") from None
        data = await file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise APIError(
                413,
                f"upload is larger than {settings.max_upload_bytes:,} bytes (raise --max-upload-bytes)",
                param="file",
            )
        seconds = await asyncio.to_thread(_recording_seconds, data)
        if seconds is not None and seconds > settings.max_upload_seconds:
            # Refused from its header: decoded, it could take more memory than the server has.
            raise APIError(
                413,
                f"the uploaded recording is {seconds:,.1f} s long; at most "
                f"{settings.max_upload_seconds:,g} s are accepted (5-10 s of speech make the best "
                "voice; raise --max-upload-seconds)",
                param="file",
            )
        try:
            voice = await asyncio.to_thread(_prepare_upload, tts, data, file.filename or "upload")
        except AudioError as error:  # the recording: the multipart part is 'file'
            raise APIError(400, str(error), param="file") from None
        try:
            replaced = await asyncio.to_thread(voices.add, name, voice)
        except OutputPathError as error:
            # The server's voices directory, not the request, is at fault.
            logger.error("could not store voice %r: %s", name, error)
            raise APIError(
                500,
                f"the voice was prepared but the server could not store it, so it was not "
                f"added ({error})",
                kind="server_error",
            ) from None
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
        except InvalidParameterError as error:  # the default voice
            raise APIError(400, str(error), param="name") from None
        except OutputPathError as error:  # the server's voices directory, not the request
            logger.error("could not delete voice %r: %s", name, error)
            raise APIError(500, str(error), kind="server_error") from None
        return {"object": "voice", "name": name, "deleted": True}

    # ------------------------------------------------------------------ service

    @app.get("/health")
    async def health() -> JSONResponse:
        failure = tts._t3_failure()
        if failure is not None:
            return JSONResponse({"status": "dead", "reason": failure}, 503)
        admission.poll()
        return JSONResponse(
            {
                "status": "ok",
                "model": tts.model,
                "running_streams": admission.running,
                "queued_streams": admission.queued,
                "at_capacity": admission.at_capacity,
            }
        )

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
        admission.poll()
        metrics.refresh_admission(admission)
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    if settings.playground:
        add_playground(app, settings, tts.model)
    from chatterbox_vllm.server.realtime import add_speech_stream_route

    add_speech_stream_route(
        app, tts=tts, settings=settings, voices=voices, metrics=metrics, admission=admission
    )
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


def _body_is_not_an_object(errors: Any) -> bool:
    """pydantic's errors say the whole body is not an object (a JSON array, a form, text)."""
    return any(
        tuple(item.get("loc", ())) == ("body",) and item.get("type") == "model_attributes_type"
        for item in errors
    )


def _methods_of_path(app: FastAPI, request: Request) -> list[str]:
    """The methods some route of the app takes at the request's path (HEAD with GET: see
    :class:`~chatterbox_vllm.server.middleware.AnswerHead`)."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def _http_error_message(
    request: Request, error: StarletteHTTPException, headers: Mapping[str, str] | None
) -> str:
    """What went wrong, for the errors Starlette and FastAPI raise themselves."""
    cause = error.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return "the request body is not UTF-8 text; send UTF-8 encoded JSON"
    if isinstance(cause, RecursionError):
        return "the request body is nested too deeply to parse; send a flat JSON object"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        # Python's message goes on about sys.set_int_max_str_digits: only its first part is ours.
        return (
            "the request body has a number that is too long to parse (more than "
            f"{sys.get_int_max_str_digits():,} digits); send numbers of ordinary size"
        )
    if cause is not None and type(cause).__name__ == "MultiPartException":
        return f"the multipart body cannot be read: {cause}"
    if error.status_code == 404:
        return f"no route {request.url.path}; see /docs for the API"
    if error.status_code == 405:
        allowed = [m for m in (headers or {}).get("Allow", "").split(", ") if m != "HEAD"]
        return f"{request.method} is not allowed on {request.url.path}" + (
            f"; use {' or '.join(allowed)}" if allowed and allowed[0] else ""
        )
    return str(error.detail)


@dataclass
class _Speech:
    """An admitted request's running speech: its session, encoder, encoded audio (``pieces``),
    the word timings that have arrived with it, and ``release``, which ends its work once however
    it ends (the audio's end calls it; so must a response that never started reading the audio:
    a client gone before the first byte)."""

    session: Any
    encoder: StreamEncoder
    pieces: AsyncGenerator[bytes, None]
    release: Callable[[], None]
    words: list[Any]


class _ReleasingStream(StreamingResponse):
    """A streamed speech body whose request's work is released however the response ends
    (Starlette never iterates the body of a client that left before it started)."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        release: Any,
        media_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


class ClientGone(Exception):
    """The client closed the connection while its complete (non-streamed) body was made."""


CLIENT_CLOSED_REQUEST = 499


async def _join(pieces: AsyncGenerator[bytes, None]) -> bytes:
    async with contextlib.aclosing(pieces):
        return b"".join([piece async for piece in pieces])


async def _unless_disconnected(work: Any, connection: Request) -> bytes:
    """Awaits ``work`` (the whole body); a client that disconnects meanwhile cancels it (its T3
    requests are aborted and S3Gen lanes dropped) and raises :class:`ClientGone`."""
    task: asyncio.Task[bytes] = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_SECONDS)
            if done:
                return task.result()
            if await connection.is_disconnected():
                logger.info("the client went away before its audio was complete; stopped it")
                raise ClientGone
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


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


def _recording_seconds(data: bytes) -> float | None:
    """An uploaded recording's length from its header (nothing is decoded); None when libsndfile
    cannot read it (decoding it then says why)."""
    import soundfile

    try:
        info = soundfile.info(io.BytesIO(data))
    except Exception:  # libsndfile's errors for unreadable bytes
        return None
    return info.frames / info.samplerate if info.samplerate > 0 else None


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
