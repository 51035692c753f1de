"""Streaming speech: audio chunks while T3 is still decoding, for the API and the server.

A stream is a plan (:mod:`chatterbox_vllm.planner`, the same as ``generate``'s) whose items all
go to T3 at once; each item's tokens feed a ``chatterbox_s3gen.S3GenStream``. One
:class:`S3GenBatcher` thread per engine advances *every* open stream of every request: whatever
windows are ready are synthesised together as one padded batch (``synthesize_windows``), so many
concurrent streams share S3Gen's batches. Audio is delivered in text order; consecutive text
chunks are joined with the same equal-power crossfade as ``generate`` (the last
``crossfade_seconds`` of a chunk are held back until the next chunk's first audio arrives).

How streamed audio differs from ``generate``'s (measured in the s3gen README): each window sees
only the tokens decoded so far plus a 3-token look-ahead, so samples differ slightly from the
non-streamed synthesis of the same tokens; lengths are identical.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from chatterbox_vllm.audio import S3GEN_SAMPLE_RATE
from chatterbox_vllm.errors import EngineDeadError
from chatterbox_vllm.pipeline import decode_all_or_none

if TYPE_CHECKING:
    from chatterbox_s3gen import S3Gen, S3GenReference
    from chatterbox_s3gen.streaming import S3GenStream, StreamingConfig

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


@dataclass
class BatcherStats:
    """What the S3Gen batcher has done since it started (read by the server's metrics)."""

    batches: int = 0
    windows: int = 0
    busy_seconds: float = 0.0
    open_streams: int = 0


@dataclass
class _Lane:
    """One S3GenStream and where its audio goes."""

    stream: S3GenStream
    deliver: Callable[[list[torch.Tensor], bool, BaseException | None], None]
    inbox: list[Any] = field(default_factory=list)
    maybe_ready: bool = False
    """Something changed since ``next_window`` last returned None (tokens, end, a result)."""


class S3GenBatcher:
    """A thread that advances every open :class:`S3GenStream`, merging the ready windows of all
    streams (any requests, any voices) into padded batches of at most ``max_batch`` windows.

    Other threads talk to it through :meth:`open`, :meth:`add_tokens`, :meth:`end` and
    :meth:`cancel` (thread-safe; the streams themselves are touched only by this thread).
    ``deliver(chunks, done, error)`` is called on this thread for every stream."""

    def __init__(self, s3gen: S3Gen, *, max_batch: int = 32) -> None:
        self.s3gen = s3gen
        self.max_batch = max_batch
        self.stats = BatcherStats()
        self._lanes: dict[int, _Lane] = {}
        self._lock = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name="chatterbox-s3gen-batcher", daemon=True
        )
        self._thread.start()

    def open(
        self,
        reference: S3GenReference,
        *,
        seed: int,
        n_timesteps: int,
        config: StreamingConfig | None,
        deliver: Callable[[list[torch.Tensor], bool, BaseException | None], None],
    ) -> int:
        """Starts a stream; returns its id for :meth:`add_tokens` / :meth:`end` / :meth:`cancel`."""
        from chatterbox_s3gen.streaming import S3GenStream

        stream = S3GenStream(
            self.s3gen, reference, seed=seed, n_timesteps=n_timesteps, config=config
        )
        with self._lock:
            if self._closed:
                raise RuntimeError("the S3Gen batcher is closed")
            self._lanes[stream.stream_id] = _Lane(stream, deliver)
            self.stats.open_streams = len(self._lanes)
        return stream.stream_id

    def add_tokens(self, stream_id: int, tokens: list[int]) -> None:
        self._post(stream_id, ("tokens", tokens))

    def end(self, stream_id: int) -> None:
        """No more tokens for this stream: its final window may run."""
        self._post(stream_id, ("end", None))

    def cancel(self, stream_id: int) -> None:
        """Drops a stream (its consumer went away); nothing more is delivered."""
        with self._lock:
            if self._lanes.pop(stream_id, None) is not None:
                self.stats.open_streams = len(self._lanes)
            self._lock.notify()

    def _post(self, stream_id: int, message: tuple[str, Any]) -> None:
        with self._lock:
            lane = self._lanes.get(stream_id)
            if lane is not None:
                lane.inbox.append(message)
                self._lock.notify()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        from chatterbox_s3gen.streaming import synthesize_windows

        while True:
            with self._lock:
                while not self._closed and not self._has_work():
                    self._lock.wait(timeout=1.0)
                if self._closed:
                    return
                lanes = list(self._lanes.values())
                messages = {id(lane): lane.inbox for lane in lanes}
                for lane in lanes:
                    lane.inbox = []
            windows: list[Any] = []
            owners: list[_Lane] = []
            for lane in lanes:
                try:
                    for kind, payload in messages[id(lane)]:
                        lane.maybe_ready = True
                        if kind == "tokens":
                            lane.stream.add_tokens(payload)
                        else:
                            lane.stream.end_of_tokens()
                    if lane.maybe_ready and len(windows) < self.max_batch:
                        self._take_window(lane, windows, owners)
                except Exception as error:  # one stream's bad input must not stop the others
                    self._fail(lane, error)
            if not windows:
                continue
            begin = time.perf_counter()
            try:
                results = synthesize_windows(self.s3gen, windows)
            except Exception as error:
                logger.exception("S3Gen failed on a batch of %d window(s)", len(windows))
                for lane in owners:
                    self._fail(lane, error)
                continue
            self.stats.busy_seconds += time.perf_counter() - begin
            self.stats.batches += 1
            self.stats.windows += len(windows)
            for lane, result in zip(owners, results):
                try:
                    chunks = lane.stream.accept(result)
                    done = lane.stream.done
                    lane.maybe_ready = not done
                    if done:
                        self._drop(lane)
                    if chunks or done:
                        lane.deliver(chunks, done, None)
                except Exception as error:
                    self._fail(lane, error)

    def _has_work(self) -> bool:
        return any(lane.inbox or lane.maybe_ready for lane in self._lanes.values())

    def _take_window(self, lane: _Lane, windows: list[Any], owners: list[_Lane]) -> None:
        """Adds the lane's next window to the batch; a finished stream with nothing left for the
        flow returns its held-back tail instead."""
        stream = lane.stream
        if stream.pending is not None:
            return
        window = stream.next_window()
        if window is not None:
            windows.append(window)
            owners.append(lane)
            return
        lane.maybe_ready = False
        if stream.finished and not stream.done:
            chunks = stream.flush()
            self._drop(lane)
            lane.deliver(chunks, True, None)

    def _drop(self, lane: _Lane) -> None:
        with self._lock:
            self._lanes.pop(lane.stream.stream_id, None)
            self.stats.open_streams = len(self._lanes)

    def _fail(self, lane: _Lane, error: BaseException) -> None:
        self._drop(lane)
        lane.deliver([], True, error)


def _equal_power(samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fade-out, fade-in) weights of ``generate``'s equal-power crossfade."""
    phase = (torch.arange(samples, dtype=torch.float64) + 0.5) / samples * (math.pi / 2)
    return torch.cos(phase).float(), torch.sin(phase).float()


class ChunkJoiner:
    """Joins the audio of consecutive text chunks as ``generate`` does, while it streams: the end
    of a text chunk (``min(crossfade, length / 2)`` samples) is held back and blended with the
    next chunk's first samples by the same equal-power crossfade. Until a chunk is known to be
    complete its last ``crossfade`` samples are held, since they may turn out to be its end."""

    def __init__(self, crossfade_samples: int) -> None:
        self.crossfade = crossfade_samples
        self._tail = torch.zeros(0)  # the previous text chunk's end, to blend in
        self._pending = torch.zeros(0)  # this text chunk's audio not emitted yet
        self._length = 0  # samples of this text chunk so far

    def add(self, waveform: torch.Tensor, *, chunk_done: bool) -> torch.Tensor:
        """Audio of the current text chunk in; the audio that can be emitted now out."""
        self._pending = torch.cat([self._pending, waveform.reshape(-1).float()])
        self._length += waveform.numel()
        out: list[torch.Tensor] = []
        if self._tail.numel():
            if self._pending.numel() < self._tail.numel() and not chunk_done:
                return torch.zeros(0)  # wait for enough of this chunk to blend with
            overlap = min(self._tail.numel(), self._pending.numel())
            fade_out, fade_in = _equal_power(overlap) if overlap else (torch.zeros(0),) * 2
            out.append(self._tail[: self._tail.numel() - overlap])
            out.append(
                self._tail[self._tail.numel() - overlap :] * fade_out
                + self._pending[:overlap] * fade_in
            )
            self._pending = self._pending[overlap:]
            self._tail = torch.zeros(0)
        if chunk_done:
            keep = min(self.crossfade, self._length // 2, self._pending.numel())
            self._tail = self._pending[self._pending.numel() - keep :].clone()
            out.append(self._pending[: self._pending.numel() - keep])
            self._pending = torch.zeros(0)
            self._length = 0
        else:
            hold = min(self.crossfade, self._pending.numel())
            out.append(self._pending[: self._pending.numel() - hold])
            self._pending = self._pending[self._pending.numel() - hold :].clone()
        return torch.cat(out) if out else torch.zeros(0)

    def finish(self) -> torch.Tensor:
        """The held-back end of the last text chunk (nothing follows it to blend with)."""
        rest = torch.cat([self._tail, self._pending])
        self._tail, self._pending, self._length = torch.zeros(0), torch.zeros(0), 0
        return rest


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
    """One text chunk of a stream: its T3 request and its S3Gen stream."""

    order: int
    t3_request: Any
    stream_id: int


class StreamSession:
    """One ``stream`` call in flight: T3 decodes every text chunk at once on the engine's loop,
    the batcher turns tokens into audio, and the consumer reads :class:`AudioChunk` in order.

    ``t3_stream(request)`` is an async iterator of cumulative token outputs (last = final);
    ``engine_failure()`` says why the engine died, ``None`` while it is alive."""

    def __init__(
        self,
        items: list[StreamItem],
        *,
        t3_stream: Callable[[Any], Any],
        loop: Any,
        batcher: S3GenBatcher,
        events: StreamEvents,
        crossfade_samples: int,
        engine_failure: Callable[[], str | None],
    ) -> None:
        self.items = items
        self._t3_stream = t3_stream
        self._loop = loop
        self._batcher = batcher
        self.events = events
        self._joiner = ChunkJoiner(crossfade_samples)
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
                    self._batcher.add_tokens(item.stream_id, ids[sent:])
                    self.speech_tokens += len(ids) - sent
                    sent = len(ids)
            self._batcher.end(item.stream_id)
        except BaseException as error:
            self._batcher.cancel(item.stream_id)
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
                out.append(self._chunk(emitted, final=False))
            if done and not buffer:
                self._current += 1
        tail = self._joiner.finish()
        out.append(self._chunk(tail, final=True))
        self._finished = True
        return out

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
        """Files one batcher/T3 event; returns the chunks that can be emitted now."""
        order, pieces, done, error = event
        if error is not None:
            raise error
        self._buffers[order].append((pieces, done))
        return self._next_ready()

    def check_engine(self) -> None:
        failure = self._engine_failure()
        if failure is not None:
            raise EngineDeadError(
                f"the T3 engine died while streaming ({failure}); load a new engine"
            )

    @property
    def finished(self) -> bool:
        return self._finished

    def close(self) -> None:
        """Stops T3 (vLLM aborts the requests, freeing their KV blocks) and the S3Gen streams."""
        if self._future is not None and not self._future.done():
            self._future.cancel()
        for item in self.items:
            self._batcher.cancel(item.stream_id)


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
            for chunk in session.take(event):
                yield chunk
    finally:
        session.close()
