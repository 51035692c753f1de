"""Streaming speech: audio chunks while T3 is still decoding, for the API and the server.

A stream is a plan (:mod:`chatterbox_vllm.planner`, the same as ``generate``'s) whose items all
go to T3 at once; each item's tokens feed a streamed lane of the engine's one
:class:`~chatterbox_vllm.scheduler.S3GenScheduler`, which runs the windows of every open stream
(and ``generate``'s chunks) in the order listeners need them. Audio is delivered in text order;
consecutive text chunks are joined by the same :class:`~chatterbox_vllm.audio.ChunkJoiner` as
``generate`` (the last ``crossfade_seconds`` of a chunk are held back until the next chunk's
first audio arrives).

How streamed audio differs from ``generate``'s (measured in the s3gen README): each window sees
only the tokens decoded so far plus a 3-token look-ahead, so samples differ slightly from the
non-streamed synthesis of the same tokens; lengths are identical.
"""

from __future__ import annotations

import asyncio
import logging
import queue
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from chatterbox_vllm.audio import S3GEN_SAMPLE_RATE, ChunkJoiner
from chatterbox_vllm.errors import EngineDeadError
from chatterbox_vllm.pipeline import decode_all_or_none
from chatterbox_vllm.scheduler import S3GenScheduler
from chatterbox_vllm.speed import SpeedStretcher

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioChunk:
    """A piece of streamed speech: mono float32 ``waveform`` at ``sample_rate``."""

    waveform: torch.Tensor
    sample_rate: int
    index: int
    """Position of this chunk in the stream (0, 1, ...)."""
    text_chunk: int
    """Which chunk of the text (plan item) the audio belongs to."""
    final: bool
    """True for the stream's last chunk."""

    @property
    def duration_s(self) -> float:
        return self.waveform.numel() / self.sample_rate


class StreamEvents:
    """A thread-safe mailbox of one stream's events, readable from a thread or an event loop."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[int, list[torch.Tensor], bool, BaseException | None]] = (
            queue.Queue()
        )
        self._waker: Callable[[], object] | None = None

    def bind(self, waker: Callable[[], object]) -> None:
        """Called (from any thread) after each event, e.g. to wake an asyncio consumer."""
        self._waker = waker

    def put(
        self, item: int, chunks: list[torch.Tensor], done: bool, error: BaseException | None
    ) -> None:
        self._queue.put((item, chunks, done, error))
        if self._waker is not None:
            self._waker()

    def get(self, timeout: float) -> tuple[int, list[torch.Tensor], bool, BaseException | None]:
        return self._queue.get(timeout=timeout)

    def get_nowait(self) -> tuple[int, list[torch.Tensor], bool, BaseException | None]:
        return self._queue.get_nowait()


STREAM_POLL_SECONDS = 1.0
"""How often a waiting stream checks that the T3 engine is alive."""


@dataclass
class StreamItem:
    """One text chunk of a stream: its T3 request and its scheduler lane."""

    order: int
    t3_request: Any
    lane_id: int


class StreamSession:
    """One ``stream`` call in flight: T3 decodes every text chunk at once on the engine's loop,
    the scheduler turns tokens into audio, and the consumer reads :class:`AudioChunk` in order.

    ``t3_stream(request)`` is an async iterator of cumulative token outputs (last = final);
    ``engine_failure()`` says why the engine died, ``None`` while it is alive."""

    def __init__(
        self,
        items: list[StreamItem],
        *,
        t3_stream: Callable[[Any], Any],
        loop: Any,
        scheduler: S3GenScheduler,
        events: StreamEvents,
        crossfade_samples: int,
        engine_failure: Callable[[], str | None],
        speed: float = 1.0,
    ) -> None:
        self.items = items
        self._t3_stream = t3_stream
        self._loop = loop
        self._scheduler = scheduler
        self.events = events
        self._joiner = ChunkJoiner(crossfade_samples)
        self._stretcher = None if speed == 1.0 else SpeedStretcher(speed, S3GEN_SAMPLE_RATE)
        self._engine_failure = engine_failure
        self._buffers: dict[int, list[tuple[list[torch.Tensor], bool]]] = {
            i.order: [] for i in items
        }
        self._current = 0
        self._emitted = 0
        self._finished = False
        self._future: Any = None
        self.speech_tokens = 0

    def start(self) -> None:
        self._future = self._loop.submit(self._decode_all())

    async def _decode_all(self) -> None:
        await decode_all_or_none(self._decode(item) for item in self.items)

    async def _decode(self, item: StreamItem) -> None:
        sent = 0
        try:
            async for output in self._t3_stream(item.t3_request):
                ids = [int(t) for t in output.token_ids]
                if len(ids) > sent:
                    self._scheduler.add_tokens(item.lane_id, ids[sent:])
                    self.speech_tokens += len(ids) - sent
                    sent = len(ids)
            self._scheduler.end(item.lane_id)
        except BaseException as error:
            self._scheduler.cancel(item.lane_id)
            if not isinstance(error, GeneratorExit | KeyboardInterrupt | asyncio.CancelledError):
                self.events.put(item.order, [], True, error)
            raise

    def _next_ready(self) -> list[AudioChunk]:
        """Audio of the current text chunk that is ready, moving on to the next chunk when done."""
        out: list[AudioChunk] = []
        if self._finished:
            return out
        while self._current < len(self.items):
            buffer = self._buffers[self._current]
            if not buffer:
                return out
            pieces, done = buffer.pop(0)
            audio = torch.cat([p.reshape(-1) for p in pieces]) if pieces else torch.zeros(0)
            emitted = self._joiner.add(audio, chunk_done=done and not buffer)
            if emitted.numel():
                emitted = self._at_speed(emitted, final=False)
            if emitted.numel():
                out.append(self._chunk(emitted, final=False))
            if done and not buffer:
                self._current += 1
        tail = self._at_speed(self._joiner.finish(), final=True)
        out.append(self._chunk(tail, final=True))
        self._finished = True
        return out

    def _at_speed(self, waveform: torch.Tensor, *, final: bool) -> torch.Tensor:
        if self._stretcher is None:
            return waveform
        # Stateful across chunks (no click at the joins): it may hold audio back until the next
        # chunk, and gives everything it holds with the final one.
        return torch.from_numpy(self._stretcher.process(waveform.numpy(), final=final))

    def _chunk(self, waveform: torch.Tensor, *, final: bool) -> AudioChunk:
        chunk = AudioChunk(
            waveform=waveform,
            sample_rate=S3GEN_SAMPLE_RATE,
            index=self._emitted,
            text_chunk=min(self._current, len(self.items) - 1),
            final=final,
        )
        self._emitted += 1
        return chunk

    def take(
        self, event: tuple[int, list[torch.Tensor], bool, BaseException | None]
    ) -> list[AudioChunk]:
        """Files one scheduler/T3 event; returns the chunks that can be emitted now."""
        order, pieces, done, error = event
        if error is not None:
            raise error
        self._buffers[order].append((pieces, done))
        return self._next_ready()

    def check_engine(self) -> None:
        failure = self._engine_failure()
        if failure is not None:
            raise EngineDeadError(
                f"the T3 engine died while streaming ({failure}); it cannot speak any more: load a "
                "new ChatterboxTTS (a server: restart it)"
            )

    @property
    def stretches(self) -> bool:
        """Whether this stream's audio is time-stretched (``speed`` other than 1.0)."""
        return self._stretcher is not None

    @property
    def finished(self) -> bool:
        return self._finished

    def close(self) -> None:
        """Stops T3 (vLLM aborts the requests, freeing their KV blocks) and the S3Gen streams."""
        if self._future is not None and not self._future.done():
            self._future.cancel()
        for item in self.items:
            self._scheduler.cancel(item.lane_id)


def iterate_stream(session: StreamSession) -> Iterator[AudioChunk]:
    """Reads a session's chunks in order on the calling thread; closing the iterator (or an
    error) stops the session."""
    try:
        while not session.finished:
            try:
                event = session.events.get(timeout=STREAM_POLL_SECONDS)
            except queue.Empty:
                session.check_engine()
                continue
            yield from session.take(event)
    finally:
        session.close()


async def aiterate_stream(session: StreamSession) -> AsyncGenerator[AudioChunk, None]:
    """:func:`iterate_stream` for an event loop: events wake the loop, which is never blocked."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    session.events.bind(lambda: loop.call_soon_threadsafe(wake.set))
    try:
        while not session.finished:
            try:
                event = session.events.get_nowait()
            except queue.Empty:
                wake.clear()
                try:
                    event = session.events.get_nowait()  # arrived between get and clear
                except queue.Empty:
                    try:
                        await asyncio.wait_for(wake.wait(), STREAM_POLL_SECONDS)
                    except asyncio.TimeoutError:
                        session.check_engine()
                    continue
            if session.stretches:
                # Time-stretching (speed != 1) takes CPU milliseconds: off the event loop.
                chunks = await asyncio.to_thread(session.take, event)
            else:
                chunks = session.take(event)
            for chunk in chunks:
                yield chunk
    finally:
        session.close()
