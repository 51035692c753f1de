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

A stream of text that is still being written (:class:`TextStream`: ``stream_text`` and the
WebSocket route) is the same session opened with no items: the
:class:`~chatterbox_vllm.planner.IncrementalPlanner` hands it each sentence as its end is known
(:meth:`StreamSession.add`), and the session ends once it is sealed and every item is spoken.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from chatterbox_vllm.audio import S3GEN_SAMPLE_RATE, ChunkJoiner, crossfade_overlaps
from chatterbox_vllm.errors import EngineDeadError
from chatterbox_vllm.front import chunk_word_timings
from chatterbox_vllm.pipeline import decode_all_or_none
from chatterbox_vllm.planner import IncrementalPlanner, PlanItem
from chatterbox_vllm.results import WordTiming
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
    words: tuple[WordTiming, ...] = ()
    """Words whose timings became known with this chunk (multilingual model): each text
    chunk's words arrive once its audio is complete, times in seconds of the whole stream."""

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


NO_ITEM = -1
"""The item of an event that carries no audio: it only wakes the consumer (sealed, failed)."""

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
    ``engine_failure()`` says why the engine died, ``None`` while it is alive. A session opened
    with ``open_item`` (plan item -> its T3 request and scheduler lane) and ``sealed=False``
    takes more items with :meth:`add` while it runs, and ends after :meth:`seal`."""

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
        open_item: Callable[[PlanItem], StreamItem] | None = None,
        sealed: bool = True,
    ) -> None:
        self.items = items
        self._t3_stream = t3_stream
        self._loop = loop
        self._scheduler = scheduler
        self.events = events
        self._joiner = ChunkJoiner(crossfade_samples)
        self._speed = speed
        self._stretcher = None if speed == 1.0 else SpeedStretcher(speed, S3GEN_SAMPLE_RATE)
        self._crossfade = crossfade_samples
        self._words: dict[int, Any] = {}  # order -> T3's final output (its words' frames)
        self._lengths: list[int] = []  # samples of each finished text chunk
        self._chunk_samples = 0  # of the current text chunk so far
        self._chunk_start = 0  # where the current text chunk starts in the stream
        self._samples_out = 0
        self._pending_words: list[WordTiming] = []
        self._engine_failure = engine_failure
        self._buffers: dict[int, list[tuple[list[torch.Tensor], bool]]] = {
            i.order: [] for i in items
        }
        self._current = 0
        self._emitted = 0
        self._finished = False
        self._future: Any = None
        self._added: list[Any] = []  # the T3 futures of items added after the start
        self._open_item = open_item
        self._sealed = sealed
        self._closed = False
        self._lock = threading.Lock()  # items are added on one thread, audio taken on another
        self.speech_tokens = 0

    def start(self) -> None:
        # The items of now: those added later (``add``) are started by ``add`` itself.
        self._future = self._loop.submit(self._decode_all(list(self.items)))

    def add(self, plan_items: list[PlanItem]) -> None:
        """More text chunks, in order after those the session has: T3 starts on them at once
        and their audio follows the earlier chunks', crossfaded."""
        if self._open_item is None or self._sealed:
            raise RuntimeError("this stream takes no more text (it is sealed)")
        for plan_item in plan_items:
            with self._lock:
                if self._closed:
                    return
                if plan_item.order != len(self.items):
                    raise RuntimeError(f"item {plan_item.order} added out of order")
                self._buffers[plan_item.order] = []
                try:
                    item = self._open_item(plan_item)
                except BaseException:
                    del self._buffers[plan_item.order]
                    raise
                self.items.append(item)
                self._added.append(self._loop.submit(self._decode(item)))

    def seal(self) -> None:
        """No more items: the session ends once those it has are spoken."""
        self._sealed = True
        self.events.put(NO_ITEM, [], False, None)

    def fail(self, error: BaseException) -> None:
        """Ends the session with ``error`` (raised to the consumer), e.g. text the planner
        rejected while the audio of earlier text was playing."""
        self.events.put(NO_ITEM, [], True, error)

    async def _decode_all(self, items: list[StreamItem]) -> None:
        await decode_all_or_none(self._decode(item) for item in items)

    async def _decode(self, item: StreamItem) -> None:
        sent = 0
        try:
            async for output in self._t3_stream(item.t3_request):
                ids = [int(t) for t in output.token_ids]
                if len(ids) > sent:
                    self._scheduler.add_tokens(item.lane_id, ids[sent:])
                    self.speech_tokens += len(ids) - sent
                    sent = len(ids)
                if output.finished:
                    self._words[item.order] = output  # before the lane ends: read at its end
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
            self._chunk_samples += audio.numel()
            if done and not buffer:
                self._finish_text_chunk()
            if emitted.numel():
                emitted = self._at_speed(emitted, final=False)
            if emitted.numel():
                out.append(self._chunk(emitted, final=False))
            if done and not buffer:
                self._current += 1
        if not self._sealed:
            return out  # more text may come: the last chunk's end stays held for the crossfade
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

    def _finish_text_chunk(self) -> None:
        """The current text chunk's audio is complete: place it in the stream (the joiner's
        overlap with the previous chunk) and queue its words for the next audio chunk."""
        if self._lengths:
            previous = self._lengths[-1]
            [overlap] = crossfade_overlaps([previous, self._chunk_samples], self._crossfade)
            self._chunk_start += previous - overlap
        self._lengths.append(self._chunk_samples)
        output = self._words.pop(self._current, None)
        if output is not None:
            self._pending_words.extend(
                chunk_word_timings(
                    output,
                    self._current,
                    self._chunk_start,
                    self._chunk_samples,
                    self._crossfade,
                    last=self._current == len(self.items) - 1,
                )
            )
        self._chunk_samples = 0

    def _chunk(self, waveform: torch.Tensor, *, final: bool) -> AudioChunk:
        self._samples_out += waveform.numel()
        words: tuple[WordTiming, ...] = ()
        # The last text chunk's words wait for the final chunk, which knows the stream's length.
        if final or self._current < len(self.items) - 1:
            words = tuple(word.at_speed(self._speed) for word in self._pending_words)
            self._pending_words = []
        if final:  # no word ends after the stream's last sample
            end = self._samples_out / S3GEN_SAMPLE_RATE
            words = tuple(
                replace(w, start_time=min(w.start_time, end), end_time=min(w.end_time, end))
                for w in words
            )
        chunk = AudioChunk(
            waveform=waveform,
            sample_rate=S3GEN_SAMPLE_RATE,
            index=self._emitted,
            text_chunk=max(0, min(self._current, len(self.items) - 1)),
            final=final,
            words=words,
        )
        self._emitted += 1
        return chunk

    def take(
        self, event: tuple[int, list[torch.Tensor], bool, BaseException | None]
    ) -> list[AudioChunk]:
        """Files one scheduler/T3 event; returns the chunks that can be emitted now."""
        order, pieces, done, error = event
        if error is not None:
            if isinstance(error, EngineDeadError):
                self.check_engine()  # the engine's state names the cause (e.g. a close())
            raise error
        with self._lock:
            if order != NO_ITEM:
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
        with self._lock:
            self._closed = True
            items = list(self.items)
        for future in [self._future, *self._added]:
            if future is not None and not future.done():
                future.cancel()
        for item in items:
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


class TextStream:
    """Speech of a text that is still being written: an
    :class:`~chatterbox_vllm.planner.IncrementalPlanner` feeding an open :class:`StreamSession`
    (one voice, one seed sequence; the session's chunks are joined by the crossfade).
    :meth:`append` deltas, then :meth:`commit`; read the audio with :func:`iterate_stream` /
    :func:`aiterate_stream` on :attr:`session` meanwhile (from another thread or task)."""

    def __init__(self, planner: IncrementalPlanner, session: StreamSession) -> None:
        self.planner = planner
        self.session = session

    def append(self, delta: str) -> list[PlanItem]:
        """A piece of text; returns the items it completed (already on their way to T3)."""
        items = self.planner.append(delta)
        self.session.add(items)
        return items

    def commit(self) -> list[PlanItem]:
        """The end of the text: what is buffered is spoken, and the stream ends after it."""
        items = self.planner.commit()
        self.session.add(items)
        self.session.seal()
        return items

    def close(self) -> None:
        """Stops everything at once (T3 requests aborted, S3Gen lanes dropped)."""
        self.session.close()


def iterate_text_stream(stream: TextStream, deltas: Iterable[str]) -> Iterator[AudioChunk]:
    """``stream_text``: reads ``deltas`` on the calling thread, and between two deltas yields
    the audio that is ready (without waiting); after the last delta, the rest as it comes."""
    session = stream.session
    try:
        for delta in deltas:
            stream.append(delta)
            while True:
                try:
                    event = session.events.get_nowait()
                except queue.Empty:
                    break
                yield from session.take(event)
        stream.commit()
        yield from iterate_stream(session)
    finally:
        session.close()


async def aiterate_text_stream(
    stream: TextStream, deltas: AsyncIterable[str] | Iterable[str]
) -> AsyncGenerator[AudioChunk, None]:
    """``astream_text``: a task reads ``deltas`` (an async or a plain iterable) while audio is
    yielded as it is ready; a delta the planner rejects ends the stream with its error."""

    async def feed() -> None:
        try:
            if isinstance(deltas, AsyncIterable):
                async for delta in deltas:
                    await asyncio.to_thread(stream.append, delta)
            else:
                for delta in deltas:
                    await asyncio.to_thread(stream.append, delta)
            await asyncio.to_thread(stream.commit)
        except Exception as error:
            stream.session.fail(error)

    feeder = asyncio.ensure_future(feed())
    try:
        async for chunk in aiterate_stream(stream.session):
            yield chunk
    finally:
        feeder.cancel()
        stream.session.close()
