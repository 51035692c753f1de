"""``WS /v1/audio/speech/stream``: speech for text that is still being written (an LLM's tokens).

JSON text frames, named as OpenAI's realtime API and the speech WebSockets of vLLM-Omni, Mistral
and Together name them (the README has the whole protocol and an example client):

- client: ``session.update`` ``{"session": {...}}`` (the fields of ``/v1/audio/speech`` but
  ``input``: model, voice, response_format ``pcm`` or ``wav``, every control, checked by the same
  code with the same errors), ``input_text_buffer.append`` ``{"delta"}``,
  ``input_text_buffer.commit`` (the end of a turn: speak what is buffered),
  ``input_text_buffer.clear`` (barge-in: stop the turn now), ``session.close``;
- server: ``session.created`` / ``session.updated`` (the session's settings),
  ``speech.audio.delta`` (base64 audio in order, with the text it speaks), ``speech.audio.done``
  per turn (its ``status`` and usage), ``input_text_buffer.committed`` / ``.cleared``, and
  ``error`` events shaped like the HTTP errors (``{"type": "error", "error": {"message", "type",
  "param", "code"}}``).

A turn is the text from its first delta to its commit. Its sentences are planned as they end
(:class:`~chatterbox_vllm.planner.IncrementalPlanner`) and spoken by one
:class:`~chatterbox_vllm.streaming.TextStream` (one voice, one seed sequence, crossfaded joins);
turns are spoken one after the other. A session holds one of the server's stream slots (its
admission, shared with ``/v1/audio/speech``: queued or refused the same way) from its start to
its end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, WebSocket
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect

from chatterbox_vllm.encoding import StreamEncoder
from chatterbox_vllm.errors import ChatterboxError, ChunkInputError, EngineDeadError
from chatterbox_vllm.planner import IncrementalPlanner, resolve_params
from chatterbox_vllm.server.admission import Admission, AdmissionError
from chatterbox_vllm.server.checks import (
    APIError,
    check_api_key,
    check_speech_options,
    param_of,
    refused,
    validation_problem,
)
from chatterbox_vllm.server.middleware import error_body
from chatterbox_vllm.server.schema import SpeechSession
from chatterbox_vllm.streaming import TextStream, aiterate_stream

if TYPE_CHECKING:
    from chatterbox_vllm.controls import GenerationParams
    from chatterbox_vllm.server.metrics import Metrics
    from chatterbox_vllm.server.settings import ServerSettings
    from chatterbox_vllm.server.voices import VoiceStore
    from chatterbox_vllm.tts import ChatterboxTTS

logger = logging.getLogger(__name__)

STREAM_PATH = "/v1/audio/speech/stream"
STREAM_FORMATS = ("pcm", "wav")
"""Audio formats of ``speech.audio.delta``: 16-bit PCM, or WAV (the turn's first delta starts
with the header, so a turn's deltas joined are one WAV file, as ``/v1/audio/speech`` sends it)."""
CLIENT_EVENTS = (
    "session.update",
    "input_text_buffer.append",
    "input_text_buffer.commit",
    "input_text_buffer.clear",
    "session.close",
)
CLOSE_POLICY = 1008
"""WebSocket close code for a session the server ends: a missing key, a limit."""
CLOSE_TRY_AGAIN = 1013
CLOSE_SERVER_ERROR = 1011
QUEUED_MESSAGE_CHARS = 1_000_000
"""The most a client may send (characters of its messages) while its session waits in the
admission queue; its messages are kept for the session, so they are bounded."""


class SessionEnded(Exception):
    """The session is over (the client left, or the server closed it)."""


@dataclass
class _Turn:
    """One turn: the text from its first delta to its commit, spoken by one text stream."""

    turn_id: str
    stream: TextStream
    committed: bool = False
    audio_seconds: float = 0.0
    status: str = "completed"


def add_speech_stream_route(
    app: FastAPI,
    *,
    tts: ChatterboxTTS,
    settings: ServerSettings,
    voices: VoiceStore,
    metrics: Metrics,
    admission: Admission,
) -> None:
    """Adds ``WS /v1/audio/speech/stream`` to ``app``. A session holds one of ``admission``'s
    stream slots for its whole life (waiting in its queue, or refused, like an HTTP request)."""

    @app.websocket(STREAM_PATH)
    async def speech_stream(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            check_api_key(
                settings,
                websocket.headers.get("authorization", ""),
                websocket.query_params.get("api_key"),
            )
        except APIError as error:
            await _refuse(websocket, error, CLOSE_POLICY)
            return
        failure = tts._t3_failure()
        if failure is not None:  # as /v1/audio/speech answers 503: no session.created
            dead = EngineDeadError.for_reason(failure)
            await _refuse(
                websocket, APIError(503, str(dead), kind="server_error"), CLOSE_SERVER_ERROR
            )
            return
        early: list[Mapping[str, Any]] = []  # what the client sent while it waited
        try:
            if not await _admitted_while_listening(websocket, admission, early):
                return  # the client left while queued: its place is freed
        except AdmissionError as error:
            await _refuse(websocket, refused(error), CLOSE_TRY_AGAIN)
            return
        except APIError as error:
            await _refuse(websocket, error, CLOSE_POLICY)
            return
        admitted_at = time.perf_counter()
        metrics.running_streams.inc()
        session = SpeechStreamSession(websocket, tts, settings, voices, metrics, early)
        try:
            await session.run()
        except Exception as error:  # never an HTTP error response on a WebSocket
            logger.exception("speech stream session failed")
            with contextlib.suppress(Exception):
                event = _error_event(
                    f"internal error: {type(error).__name__}: {error}", kind="server_error"
                )
                await websocket.send_text(json.dumps(event))
                await websocket.close(CLOSE_SERVER_ERROR)
        finally:
            await session.stop()
            metrics.running_streams.dec()
            admission.release(time.perf_counter() - admitted_at)


async def _admitted_while_listening(
    websocket: WebSocket, admission: Admission, early: list[Mapping[str, Any]]
) -> bool:
    """Waits for a stream slot while reading the client's messages: they are kept in ``early``
    for the session (a client may start sending before it is admitted), and a client that
    disconnects while queued leaves the queue at once (False), as an HTTP request does. Raises
    :class:`AdmissionError` (refused, or no slot within --max-queue-wait), or :class:`APIError`
    when the client sends more than :data:`QUEUED_MESSAGE_CHARS` while it waits."""
    waiting: asyncio.Future[Any] = asyncio.ensure_future(admission.acquire())
    reading: asyncio.Future[Any] | None = None
    admitted = False
    try:
        while not waiting.done():
            reading = reading or asyncio.ensure_future(websocket.receive())
            await asyncio.wait({waiting, reading}, return_when=asyncio.FIRST_COMPLETED)
            if reading.done():
                message = reading.result()
                reading = None
                if message["type"] == "websocket.disconnect":
                    return False
                early.append(message)
                if sum(len(m.get("text") or m.get("bytes") or "") for m in early) > (
                    QUEUED_MESSAGE_CHARS
                ):
                    raise APIError(
                        400,
                        f"more than {QUEUED_MESSAGE_CHARS:,} characters were sent while the "
                        "session waited for a slot; wait for session.created before sending "
                        "text",
                    )
        waiting.result()  # refused or timed out: AdmissionError
        admitted = True
        return True
    finally:
        if reading is not None:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading
        if not waiting.done():
            waiting.cancel()  # leaves the queue
            with contextlib.suppress(asyncio.CancelledError, AdmissionError):
                await waiting
        elif not admitted and not waiting.cancelled() and waiting.exception() is None:
            admission.release()  # admitted just as the client left (or overflowed)


async def _refuse(websocket: WebSocket, error: APIError, code: int) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_text(json.dumps(_error_event(error.message, error.param, error.kind)))
        await websocket.close(code, error.message[:120])


def _error_event(
    message: str,
    param: str | None = None,
    kind: str = "invalid_request_error",
    code: str | None = None,
    turn_id: str | None = None,
) -> dict[str, Any]:
    body = error_body(message, param=param, kind=kind)
    body["error"]["code"] = code
    # A turn's error names the turn, as its speech.audio.done does.
    return {"type": "error", **({"turn_id": turn_id} if turn_id else {}), **body}


class SpeechStreamSession:
    """One WebSocket session: reads client events, plans turns, speaks them in order."""

    def __init__(
        self,
        websocket: WebSocket,
        tts: ChatterboxTTS,
        settings: ServerSettings,
        voices: VoiceStore,
        metrics: Metrics,
        early: list[Mapping[str, Any]] | None = None,
    ) -> None:
        self.websocket = websocket
        self._early = list(early or ())  # messages received while the session was queued
        self.tts = tts
        self.settings = settings
        self.voices = voices
        self.metrics = metrics
        self.options: Any = SpeechSession(model=settings.model_name)
        self._given: dict[str, Any] = {}  # the fields the client set, for partial updates
        self.voice, self.params = self._check(self.options)
        self._send_lock = asyncio.Lock()
        self._turn_ids = itertools.count()
        self._turn: _Turn | None = None  # the turn taking text (not committed yet)
        # A turn whose text failed before its commit: the client's commit of it ends it quietly.
        self._failed_turn: _Turn | None = None
        self._turns: list[_Turn] = []  # committed or open turns not spoken to the end, in order
        self._queue: asyncio.Queue[_Turn | None] = asyncio.Queue()
        self._speaker: asyncio.Task[None] | None = None
        self._closing = False

    # ------------------------------------------------------------------ the session

    async def run(self) -> None:
        started = last_message = time.monotonic()
        last_delta = started
        self._speaker = asyncio.ensure_future(self._speak_turns(self._queue))
        await self._send({"type": "session.created", "session": self._describe()})
        try:
            while True:
                now = time.monotonic()
                deadlines = {"session": started + self.settings.stream_max_session_seconds}
                if not self._turns:
                    deadlines["idle"] = last_message + self.settings.stream_max_idle_seconds
                turn = self._turn
                if turn is not None and turn.stream.planner.pending.strip():
                    deadlines["commit"] = last_delta + self.settings.stream_commit_after_seconds
                reason = min(deadlines, key=deadlines.__getitem__)
                try:
                    message = (
                        self._early.pop(0)
                        if self._early
                        else await asyncio.wait_for(
                            self.websocket.receive(), max(0.0, deadlines[reason] - now)
                        )
                    )
                except asyncio.TimeoutError:
                    if reason == "commit":
                        await self._commit()  # the text stopped coming: speak what is buffered
                        continue
                    await self._expire(reason)
                    return
                if message["type"] == "websocket.disconnect":
                    return
                last_message = time.monotonic()
                event = await self._parse(message)
                if event is None:
                    continue
                if event["type"] == "input_text_buffer.append":
                    last_delta = last_message
                if await self._handle(event):
                    return
        except SessionEnded:
            return

    async def _handle(self, event: dict[str, Any]) -> bool:
        """Acts on one client event; True when the session is over."""
        kind = event["type"]
        if kind == "session.update":
            await self._update(event)
        elif kind == "input_text_buffer.append":
            await self._append(event)
        elif kind == "input_text_buffer.commit":
            if self._turn is None and self._failed_turn is not None:
                # The text this commit ends was refused: its error and speech.audio.done
                # (status failed) are sent; there is nothing left to commit.
                self._failed_turn = None
            elif self._turn is None:
                await self._error(
                    "the input text buffer is empty: append text before committing",
                    code="input_text_buffer_empty",
                )
            else:
                await self._commit()
        elif kind == "input_text_buffer.clear":
            await self._clear()
        else:  # session.close: speak what was sent, then end
            if self._turn is not None:
                await self._commit()
            self._closing = True
            await self._queue.put(None)
            if self._speaker is not None:
                await self._speaker
            with contextlib.suppress(Exception):
                await self.websocket.close(1000)
            return True
        return False

    async def _parse(self, message: Mapping[str, Any]) -> dict[str, Any] | None:
        text = message.get("text")
        if text is None:
            await self._error("send JSON text frames, not binary ones", code="invalid_event")
            return None
        try:
            event = json.loads(text)
        except ValueError as error:
            await self._error(f"the message is not valid JSON ({error})", code="invalid_event")
            return None
        except RecursionError:  # json's parser recurses once per nesting level
            await self._error(
                "the message is nested too deeply to parse; send a flat JSON object",
                code="invalid_event",
            )
            return None
        if not isinstance(event, dict) or event.get("type") not in CLIENT_EVENTS:
            kind = event.get("type") if isinstance(event, dict) else None
            await self._error(
                f"unknown event type {kind!r}; send one of {', '.join(CLIENT_EVENTS)}",
                param="type",
                code="invalid_event",
            )
            return None
        return event

    # ------------------------------------------------------------------ client events

    async def _update(self, event: dict[str, Any]) -> None:
        given = event.get("session", {})
        if not isinstance(given, dict):
            await self._error("session must be an object of settings", param="session")
            return
        if self._turn is not None:
            await self._error(
                "the current turn has text: commit or clear it before session.update",
                param="session",
                code="turn_in_progress",
            )
            return
        merged = {"model": self.settings.model_name, **self._given, **given}
        try:
            options = SpeechSession(**merged)
        except ValidationError as error:
            message, param = validation_problem(error.errors())
            await self._error(message, param=param)
            return
        try:
            self.voice, self.params = self._check(options)
        except APIError as error:
            await self._error(error.message, param=error.param, kind=error.kind)
            return
        except ChatterboxError as error:
            await self._error(str(error), param=param_of(error))
            return
        self.options, self._given = options, merged
        await self._send({"type": "session.updated", "session": self._describe()})

    def _check(self, options: Any) -> tuple[Any, GenerationParams]:
        """The same checks as ``/v1/audio/speech`` (and the engine's: ``max_new_tokens``)."""
        voice, params = check_speech_options(
            options, self.settings, STREAM_FORMATS, self.voices, self.tts.model
        )
        resolve_params(params, self.tts.config, self.tts.model)
        return voice, params

    async def _append(self, event: dict[str, Any]) -> None:
        delta = event.get("delta")
        if not isinstance(delta, str):
            await self._error(
                f"input_text_buffer.append needs 'delta', a string of text; got {type(delta).__name__}",
                param="delta",
            )
            return
        turn = self._turn
        pending = (
            turn.stream.planner.pending_after(delta)
            if turn is not None
            else IncrementalPlanner(self.params, self.tts.config, self.tts.model).pending_after(
                delta
            )
        )
        limit = self.settings.stream_max_buffer_chars
        if pending > limit:
            await self._error(
                f"the input text buffer would hold {pending:,} characters with no "
                f"sentence end; at most {limit:,} are kept (end a sentence, commit, or raise "
                "--stream-max-buffer-chars); this delta was not added",
                param="delta",
                code="buffer_limit",
            )
            return
        if not delta:
            return
        if turn is None:
            try:
                stream = await asyncio.to_thread(
                    self.tts.open_text_stream, self.voice, params=self.params
                )
            except ChatterboxError as error:
                await self._product_error(error)
                return
            turn = _Turn(f"turn_{next(self._turn_ids)}", stream)
            self._turn, self._failed_turn = turn, None
            self._turns.append(turn)
            await self._queue.put(turn)
        try:
            await asyncio.to_thread(turn.stream.append, delta)
        except ChatterboxError as error:
            await self._fail_turn(turn, error)

    async def _commit(self) -> None:
        turn = self._turn
        assert turn is not None
        self._turn = None
        turn.committed = True
        try:
            await asyncio.to_thread(turn.stream.commit)
        except ChatterboxError as error:
            await self._fail_turn(turn, error)
            return
        await self._send({"type": "input_text_buffer.committed", "turn_id": turn.turn_id})

    async def _fail_turn(self, turn: _Turn, error: ChatterboxError) -> None:
        """Text the planner or T3 rejected: the turn ends with the error (its speaker sends it
        and ``speech.audio.done`` with status ``failed``); the next delta starts a new turn."""
        if self._turn is turn:
            self._turn, self._failed_turn = None, turn
        turn.stream.session.fail(error)

    async def _clear(self) -> None:
        """Barge-in: every turn stops now (T3 requests aborted, S3Gen lanes dropped); each one
        that had started ends with ``speech.audio.done`` status ``interrupted``."""
        self._turn = self._failed_turn = None
        speaker, self._speaker = self._speaker, None
        if speaker is not None:
            speaker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await speaker
        turns, self._turns = self._turns, []
        for turn in turns:
            turn.stream.close()
        for turn in turns:
            turn.status = "interrupted"
            await self._send_done(turn)
        self._queue = asyncio.Queue()
        self._speaker = asyncio.ensure_future(self._speak_turns(self._queue))
        await self._send({"type": "input_text_buffer.cleared"})

    async def _expire(self, reason: str) -> None:
        if reason == "session":
            message = (
                f"the session reached its longest length, {self.settings.stream_max_session_seconds:g} s "
                "(--stream-max-session-seconds); open a new one"
            )
            code = "session_expired"
        else:
            message = (
                f"no message for {self.settings.stream_max_idle_seconds:g} s "
                "(--stream-max-idle-seconds): the session is closed"
            )
            code = "session_idle"
        await self._error(message, code=code)
        await self.stop()
        with contextlib.suppress(Exception):
            await self.websocket.close(CLOSE_POLICY, code)

    # ------------------------------------------------------------------ speaking

    async def _speak_turns(self, queue: asyncio.Queue[_Turn | None]) -> None:
        while (turn := await queue.get()) is not None:
            await self._speak(turn)

    async def _speak(self, turn: _Turn) -> None:
        encoder = StreamEncoder(self.options.response_format, self.tts.sample_rate)
        planner = turn.stream.planner
        try:
            async with contextlib.aclosing(aiterate_stream(turn.stream.session)) as chunks:
                async for chunk in chunks:
                    data = encoder.encode(chunk.waveform)
                    if chunk.final:
                        data += encoder.finish()
                    turn.audio_seconds += chunk.duration_s
                    self.metrics.audio_seconds.inc(chunk.duration_s)
                    if not data:
                        continue
                    event: dict[str, Any] = {
                        "type": "speech.audio.delta",
                        "turn_id": turn.turn_id,
                        "audio": base64.b64encode(data).decode(),
                    }
                    if planner.items:
                        index = min(chunk.text_chunk, len(planner.items) - 1)
                        span = planner.spans[index]
                        event.update(
                            text=planner.items[index].text,
                            text_start=span.start,
                            text_end=span.end,
                        )
                    await self._send(event)
        except ChatterboxError as error:
            turn.status = "failed"
            await self._product_error(error, turn_id=turn.turn_id)
            if isinstance(error, EngineDeadError):
                with contextlib.suppress(Exception):
                    await self.websocket.close(CLOSE_SERVER_ERROR, "the engine died")
        except Exception as error:
            logger.exception("speech stream turn %s failed", turn.turn_id)
            turn.status = "failed"
            await self._error(
                f"internal error: {type(error).__name__}: {error}",
                kind="server_error",
                turn_id=turn.turn_id,
            )
        finally:
            self.metrics.speech_tokens.inc(turn.stream.session.speech_tokens)
            turn.stream.close()
        if turn in self._turns:
            self._turns.remove(turn)
            # Shielded: a barge-in (clear) that cancels this speaker while the event is being
            # sent no longer finds the turn in _turns, so the event must still go out, or the
            # client would wait for the end of a turn that had ended.
            await asyncio.shield(self._send_done(turn))

    async def _send_done(self, turn: _Turn) -> None:
        usage = {
            "characters": len(turn.stream.planner.text),
            "audio_seconds": round(turn.audio_seconds, 4),
            "speech_tokens": turn.stream.session.speech_tokens,
        }
        await self._send(
            {
                "type": "speech.audio.done",
                "turn_id": turn.turn_id,
                "status": turn.status,
                "usage": usage,
            }
        )

    async def stop(self) -> None:
        """Stops everything at once (the socket closed): T3 aborted, S3Gen lanes dropped."""
        speaker, self._speaker = self._speaker, None
        if speaker is not None and not speaker.done():
            speaker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await speaker
        turns, self._turns = self._turns, []
        self._turn = None
        for turn in turns:
            turn.stream.close()

    # ------------------------------------------------------------------ sending

    def _describe(self) -> dict[str, Any]:
        return {key: value for key, value in self.options.model_dump().items() if value is not None}

    async def _product_error(self, error: ChatterboxError, turn_id: str | None = None) -> None:
        if isinstance(error, EngineDeadError):
            await self._error(str(error), kind="server_error", turn_id=turn_id)
            return
        if isinstance(error, ChunkInputError):
            error = error.cause
        param = param_of(error)
        await self._error(str(error), param="delta" if param == "input" else param, turn_id=turn_id)

    async def _error(
        self,
        message: str,
        *,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
        turn_id: str | None = None,
    ) -> None:
        await self._send(_error_event(message, param, kind, code, turn_id))

    async def _send(self, event: dict[str, Any]) -> None:
        async with self._send_lock:
            try:
                await self.websocket.send_text(json.dumps(event))
            except (WebSocketDisconnect, RuntimeError, OSError) as error:
                raise SessionEnded from error
