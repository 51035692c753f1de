"""The S3Gen scheduler: ONE per engine, for ``generate``, ``stream``, the server and Ray replicas.

Every text chunk in flight is a *lane*. A streamed lane (``stream``/the server) is a
``chatterbox_s3gen.S3GenStream`` that turns growing token lists into audio windows; a whole lane
(``generate``) is one final window: the chunk's tokens synthesised at once by the decoder's
``synthesize`` (the :class:`~chatterbox_vllm.interfaces.SpeechDecoder` seam, so a vocoder
plug-in is used and float32 results equal the reference's synthesis exactly).

A thread runs rounds in the order listeners need them:

1. streamed windows before whole ones (a listener waits, a file does not);
2. streamed windows by deadline (:mod:`chatterbox_vllm.deadlines`): a playing stream's window is
   due when its buffered audio runs out (:class:`Listener` keeps each stream's playback clock), a
   new stream's first window at its arrival plus a first-audio target. Each round is sized so
   that its expected duration (an EWMA of measured round times per batch shape) finishes before
   the earliest deadlines; new streams' first windows join only while the playing streams keep
   their slack, and a ready window never waits for a batch to fill. Every window's timeline
   (due, tokens complete, taken, audio out) is logged at debug and reported to
   ``on_window`` (the server's deadline-miss metrics);
3. whole windows, the longest ``max_batch`` per round (the decoder splits a round where padding
   would grow: ``S3Gen.synthesize`` on a GPU); by default only once T3 has
   decoded every whole lane's tokens (``overlap_generate=False``). T3 runs in vLLM's engine-core
   process and S3Gen in this one: two CUDA contexts on one GPU time-slice rather than overlap,
   so interleaving them slows both (measured: T3 -41 % while S3Gen works beside it).

The same measured costs (and T3's measured token rate) give :attr:`S3GenScheduler.capacity`:
how many real-time streams the engine holds (the server's admission uses it).
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch

from chatterbox_vllm.deadlines import (
    FIRST_AUDIO_TARGET_S,
    CapacityModel,
    DeadlinePolicy,
    ReadyWindow,
    RoundCosts,
    typical_stream_windows,
    window_deadline,
)
from chatterbox_vllm.interfaces import SpeechDecoder

if TYPE_CHECKING:
    from chatterbox_s3gen import S3Gen
    from chatterbox_s3gen.streaming import S3GenStream, StreamingConfig

logger = logging.getLogger(__name__)

Deliver = Callable[[list[torch.Tensor], bool, BaseException | None], None]
"""``deliver(audio_pieces, done, error)``, called on the scheduler thread for every lane."""


@dataclass
class Listener:
    """The playback clock of one stream (all of its text chunks): a player that starts at the
    first audio, plays in real time and, when it runs dry, waits for the next audio (a stall)
    runs dry at :meth:`deadline`."""

    opened_at: float = field(default_factory=time.perf_counter)
    first_audio_at: float | None = None
    delivered: dict[int, float] = field(default_factory=dict)
    """Seconds of audio delivered per text chunk (plan item ``order``)."""
    min_buffer_s: float = math.inf
    """The least audio that was buffered when new audio arrived (negative: the player stalled)."""
    stalled_s: float = 0.0
    """Seconds the player waited in all (its clock resumes at each new audio)."""
    open_lanes: int = 0
    """Text chunks of this stream the scheduler still holds (the stream is done at 0)."""
    first_audio_target_s: float = FIRST_AUDIO_TARGET_S

    @property
    def playing(self) -> bool:
        return self.first_audio_at is not None

    def deadline(self, order: int) -> float:
        """When the player needs more audio of chunk ``order``: the audio delivered up to and
        including that chunk has played (from the first audio, shifted by the stalls); before
        any audio, the stream's start plus the first-audio target."""
        return window_deadline(
            opened_at=self.opened_at,
            first_audio_at=self.first_audio_at,
            stalled_s=self.stalled_s,
            audio_before_s=sum(seconds for k, seconds in self.delivered.items() if k <= order),
            first_audio_target_s=self.first_audio_target_s,
        )

    def buffered_s(self, now: float) -> float:
        """Audio the player holds now (0 before the first audio and while it is stalled)."""
        if self.first_audio_at is None:
            return 0.0
        return max(0.0, self.first_audio_at + self.stalled_s + sum(self.delivered.values()) - now)

    def on_audio(self, order: int, seconds: float, now: float) -> None:
        if self.first_audio_at is None:
            self.first_audio_at = now
        else:
            buffered = self.first_audio_at + self.stalled_s + sum(self.delivered.values()) - now
            self.min_buffer_s = min(self.min_buffer_s, buffered)
            if buffered < 0:
                self.stalled_s -= buffered
        self.delivered[order] = self.delivered.get(order, 0.0) + seconds


@dataclass(frozen=True)
class WindowTimeline:
    """One streamed window's life (``time.perf_counter`` seconds)."""

    lane_id: int
    index: int
    first: bool
    """The stream's first audio (its deadline is the first-audio target)."""
    due: float
    tokens_at: float
    """When its tokens were complete (the scheduler saw the window ready)."""
    taken_at: float
    audio_at: float

    @property
    def lateness_s(self) -> float:
        return self.audio_at - self.due

    @property
    def missed(self) -> bool:
        return self.audio_at > self.due

    @property
    def cause(self) -> str:
        """What made a missed window late: ``t3`` (its tokens came after it was due) or
        ``s3gen`` (they were there in time)."""
        return "t3" if self.tokens_at > self.due else "s3gen"


@dataclass
class SchedulerStats:
    """What the scheduler has done since it started (read by benchmarks and the server)."""

    batches: int = 0
    windows: int = 0
    busy_seconds: float = 0.0
    whole_intervals: list[tuple[float, float]] = field(default_factory=list, repr=False)
    """(start, end) of every whole-chunk batch (``generate``'s S3Gen time)."""
    open_streams: int = 0
    """Lanes (text chunks of any call) open now."""
    deadline_misses: dict[tuple[str, str], int] = field(default_factory=dict)
    """Streamed windows whose audio came after they were due, by (``first``/``next``, cause)."""

    @property
    def whole_batches(self) -> int:
        return len(self.whole_intervals)


_lane_ids = itertools.count()


def lane_seed(seed: int | None) -> int:
    """A lane's vocoder noise seed: the plan item's, or for an unseeded item one drawn from
    torch's global RNG, as S3Gen does."""
    return int(torch.randint(0, 2**62, ()).item()) if seed is None else seed


@dataclass
class _Lane:
    lane_id: int
    deliver: Deliver
    order: int = 0
    stream: S3GenStream | None = None
    """Streamed lanes: the window state machine."""
    listener: Listener | None = None
    reference: Any = None
    """Whole lanes: the voice, seed and tokens for one ``synthesize`` item."""
    seed: int = 0
    tokens: list[int] = field(default_factory=list)
    window: Any = None
    """Streamed lanes: the next window, taken from the stream and waiting for its round."""
    window_ready_at: float = 0.0
    last_width: int = 0
    """Flow tokens of the lane's last window (the width its next one is costed at)."""
    ended: bool = False
    inbox: list[tuple[str, Any]] = field(default_factory=list)
    maybe_ready: bool = False
    """Something changed since the lane last had nothing to run (tokens, end, a result)."""

    @property
    def whole(self) -> bool:
        return self.stream is None


class S3GenScheduler:
    """A thread that runs S3Gen for every open lane of one engine (see the module docstring).

    Other threads talk to it through :meth:`open_stream`, :meth:`open_whole`,
    :meth:`add_tokens`, :meth:`end` and :meth:`cancel` (thread-safe; lanes are touched only by
    the scheduler thread)."""

    def __init__(
        self,
        decoder: SpeechDecoder[Any],
        *,
        max_batch: int = 32,
        n_timesteps: int | None = None,
        overlap_generate: bool = False,
        on_stream_done: Callable[[Listener], None] | None = None,
        on_window: Callable[[WindowTimeline], None] | None = None,
        trailing_tokens: Sequence[int] = (),
        own_cuda_stream: bool = False,
    ) -> None:
        self.decoder = decoder
        self.own_cuda_stream = own_cuda_stream
        """Run S3Gen on a CUDA stream of its own (when the decoder is on a CUDA device): with T3's
        engine core in this process (``t3_process="in-process"``) its kernels can then run
        beside T3's instead of queueing behind them on the default stream."""
        self.trailing_tokens = list(trailing_tokens)
        """Tokens every lane gets after its last (the model's, see
        :data:`~chatterbox_vllm.models.TRAILING_SPEECH_TOKENS`), on generate's and streams' path
        alike."""
        self.max_batch = max(1, max_batch)
        self.n_timesteps = n_timesteps
        self.overlap_generate = overlap_generate
        self.on_stream_done = on_stream_done
        self.on_window = on_window
        self.stats = SchedulerStats()
        self.costs = RoundCosts()
        """Measured seconds of a streamed round per batch shape (the policy's and the capacity's)."""
        self.policy = DeadlinePolicy(self.costs, self.max_batch)
        self.capacity = CapacityModel(self.costs, self.max_batch, windows=_typical_windows())
        """How many real-time streams this engine holds (``capacity.streams()``)."""
        self._t3_sample = _T3Sample(time.perf_counter())
        self._lanes: dict[int, _Lane] = {}
        self._lock = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name="chatterbox-s3gen-scheduler", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------------ opening lanes

    def open_stream(
        self,
        reference: Any,
        *,
        seed: int | None,
        config: StreamingConfig | None,
        listener: Listener,
        order: int,
        deliver: Deliver,
    ) -> int:
        """A streamed text chunk (audio window by window); returns its lane id. ``seed``: see
        :func:`lane_seed`."""
        from chatterbox_s3gen.streaming import S3GenStream

        stream = S3GenStream(
            self._s3gen(),
            reference,
            seed=lane_seed(seed),
            n_timesteps=self.n_timesteps,
            config=config,
        )
        lane = _Lane(next(_lane_ids), deliver, order, stream=stream, listener=listener)
        return self._add(lane)

    def open_whole(self, reference: Any, *, seed: int | None, deliver: Deliver) -> int:
        """A text chunk synthesised at once when its tokens are complete; returns its lane id.
        ``seed``: see :func:`lane_seed`."""
        lane = _Lane(next(_lane_ids), deliver, reference=reference, seed=lane_seed(seed))
        return self._add(lane)

    def _s3gen(self) -> S3Gen:
        from chatterbox_s3gen import S3Gen

        if not isinstance(self.decoder, S3Gen):
            raise TypeError(
                f"streaming needs chatterbox_s3gen.S3Gen as the decoder, got "
                f"{type(self.decoder).__name__}"
            )
        return self.decoder

    def _add(self, lane: _Lane) -> int:
        with self._lock:
            if self._closed:
                raise RuntimeError("the S3Gen scheduler is closed")
            self._lanes[lane.lane_id] = lane
            if lane.listener is not None:
                lane.listener.open_lanes += 1
            self.stats.open_streams = len(self._lanes)
        return lane.lane_id

    # ------------------------------------------------------------------ feeding lanes

    def add_tokens(self, lane_id: int, tokens: list[int]) -> None:
        self._post(lane_id, ("tokens", tokens))

    def end(self, lane_id: int) -> None:
        """No more tokens for this lane (but :attr:`trailing_tokens`): its final window may run."""
        if self.trailing_tokens:
            self._post(lane_id, ("tokens", list(self.trailing_tokens)))
        self._post(lane_id, ("end", None))

    def cancel(self, lane_id: int) -> None:
        """Drops a lane (its consumer went away); nothing more is delivered."""
        with self._lock:
            lane = self._lanes.pop(lane_id, None)
            if lane is not None:
                self._forget(lane)
            self._lock.notify()

    def _post(self, lane_id: int, message: tuple[str, Any]) -> None:
        with self._lock:
            lane = self._lanes.get(lane_id)
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
        stream = self._own_stream()
        if stream is None:
            self._loop(None)
            return
        with torch.cuda.stream(stream):
            self._loop(stream)

    def _own_stream(self) -> torch.cuda.Stream | None:
        device = getattr(self.decoder, "device", None)
        on_cuda = isinstance(device, torch.device) and device.type == "cuda"
        return torch.cuda.Stream(device) if self.own_cuda_stream and on_cuda else None

    def _loop(self, stream: torch.cuda.Stream | None) -> None:
        while True:
            with self._lock:
                while not self._closed and not self._has_work():
                    self._lock.wait(timeout=1.0)
                if self._closed:
                    return
                lanes = list(self._lanes.values())
                messages = {lane.lane_id: lane.inbox for lane in lanes}
                for lane in lanes:
                    lane.inbox = []
            for lane in lanes:
                try:
                    self._t3_sample.tokens += self._apply(lane, messages[lane.lane_id])
                except Exception as error:  # one lane's bad input must not stop the others
                    self._fail(lane, error)
            live = [lane for lane in lanes if lane.lane_id in self._lanes]
            decoding = sum(
                1 for lane in live if lane.stream is not None and not lane.stream.finished
            )
            self._t3_sample.advance(time.perf_counter(), decoding, self.capacity)
            if stream is not None:
                # Inputs made on other threads' (default) stream, e.g. a voice's reference
                # tensors, must be complete before this round reads them. The round ends with
                # its audio copied to the host (a sync of this stream), so nothing it used is
                # freed while a kernel still reads it.
                stream.wait_stream(torch.cuda.default_stream(stream.device))
            if not self._run_streamed(live):
                self._run_whole(live)

    def _has_work(self) -> bool:
        return any(
            lane.inbox or lane.maybe_ready or lane.window is not None
            for lane in self._lanes.values()
        )

    @staticmethod
    def _apply(lane: _Lane, messages: list[tuple[str, Any]]) -> int:
        """Applies a lane's messages; returns the streamed tokens it received (T3's rate)."""
        streamed = 0
        for kind, payload in messages:
            lane.maybe_ready = True
            if kind == "tokens":
                if lane.stream is not None:
                    lane.stream.add_tokens(payload)
                    streamed += len(payload)
                else:
                    lane.tokens.extend(payload)
            elif lane.stream is not None:
                lane.stream.end_of_tokens()
            else:
                lane.ended = True
        return streamed

    # -- streamed windows

    def _run_streamed(self, lanes: list[_Lane]) -> bool:
        """Runs one round of the streamed windows the deadline policy picks; False if no
        window was ready."""
        now = time.perf_counter()
        ready: dict[int, _Lane] = {}
        requests = []
        upcoming = []
        for lane in lanes:
            if lane.whole or lane.lane_id not in self._lanes:
                continue
            if lane.maybe_ready:
                try:
                    self._take_window(lane, now)
                except Exception as error:
                    self._fail(lane, error)
                    continue
            if lane.window is not None:
                ready[lane.lane_id] = lane
                requests.append(self._ready_window(lane))
            elif lane.listener is not None and lane.listener.playing and lane.last_width:
                # Its tokens are still coming: this round must leave it time for its own.
                deadline = lane.listener.deadline(lane.order)
                upcoming.append(ReadyWindow(lane.lane_id, deadline, True, lane.last_width))
        if not requests:
            return False
        chosen = self.policy.choose(requests, now, upcoming)
        owners = [ready[cast(int, request.key)] for request in chosen]
        windows = [lane.window for lane in owners]
        from chatterbox_s3gen.streaming import synthesize_windows

        s3gen = self._s3gen()
        one_offs = _one_off_work(s3gen)
        begin = time.perf_counter()
        try:
            results = synthesize_windows(s3gen, windows)
        except Exception as error:
            logger.exception("S3Gen failed on a batch of %d window(s)", len(windows))
            for lane in owners:
                lane.window = None
                self._fail(lane, error)
            return True
        now = time.perf_counter()
        self._count(begin, now, len(windows))
        # A round that paid one-off work (a shape's first kernels, a graph capture) took far
        # longer than its shape will: as a sample it would make the policy shun that shape (and
        # the capacity model undercount) until many later rounds outweighed it.
        typical = _one_off_work(s3gen) == one_offs
        if typical:
            self.costs.observe(len(windows), max(request.tokens for request in chosen), now - begin)
        else:
            logger.debug(
                "S3Gen round of %d windows paid one-off work: not a cost sample", len(windows)
            )
        audio = 0.0
        for lane, request, result in zip(owners, chosen, results):
            taken = lane.window
            lane.window = None
            try:
                assert lane.stream is not None and lane.listener is not None
                first = not lane.listener.playing
                chunks = lane.stream.accept(result)
                done = lane.stream.done
                lane.maybe_ready = not done
                if done:
                    self._drop(lane)
                if chunks or done:
                    audio += self._deliver(lane, chunks, done, now)
                self._timeline(
                    WindowTimeline(
                        lane.lane_id,
                        taken.index,
                        first,
                        request.deadline,
                        lane.window_ready_at,
                        begin,
                        now,
                    )
                )
            except Exception as error:
                self._fail(lane, error)
        if typical:
            self.capacity.observe_s3gen(audio, now - begin)
        return True

    def _ready_window(self, lane: _Lane) -> ReadyWindow:
        listener = lane.listener
        assert listener is not None and lane.window is not None
        window = lane.window
        prompt = window.prompt_tokens
        width = (window.reference.num_prompt_tokens if prompt is None else prompt) + int(
            window.tokens.numel()
        )
        lane.last_width = width
        return ReadyWindow(lane.lane_id, listener.deadline(lane.order), listener.playing, width)

    def _timeline(self, timeline: WindowTimeline) -> None:
        logger.debug(
            "window %d.%d%s, relative to when it was due: tokens complete %+.3f s, taken by "
            "S3Gen %+.3f s, audio out %+.3f s",
            timeline.lane_id,
            timeline.index,
            " (first)" if timeline.first else "",
            timeline.tokens_at - timeline.due,
            timeline.taken_at - timeline.due,
            timeline.audio_at - timeline.due,
        )
        if timeline.missed:
            key = ("first" if timeline.first else "next", timeline.cause)
            self.stats.deadline_misses[key] = self.stats.deadline_misses.get(key, 0) + 1
        if self.on_window is not None:
            try:
                self.on_window(timeline)
            except Exception:  # a metrics hook must never stop synthesis
                logger.exception("on_window hook failed")

    def _take_window(self, lane: _Lane, now: float) -> None:
        """Takes the lane's next window (held until a round runs it) with every token there is
        (up to the largest window), or grows the window it holds with the tokens that came
        since; a finished stream with nothing left for the flow delivers its held-back tail
        instead."""
        stream = lane.stream
        assert stream is not None
        if stream.pending is not None:
            # Still waiting for a round: it takes the tokens that came meanwhile (a round's
            # cost is mostly fixed, so a bigger window is more audio for about the same time).
            grown = stream.grow_pending()
            if grown is not None:
                lane.window = grown
            lane.maybe_ready = False
            return
        window = stream.next_window(grow=True)
        if window is not None:
            lane.window = window
            lane.window_ready_at = now
            return
        lane.maybe_ready = False
        if stream.finished and not stream.done:
            chunks = stream.flush()
            self._drop(lane)
            self._deliver(lane, chunks, True, time.perf_counter())

    def buffered_audio(self, now: float | None = None) -> list[float]:
        """Seconds of audio each open stream's player holds now (the server's gauge)."""
        now = time.perf_counter() if now is None else now
        with self._lock:
            listeners = {id(lane.listener): lane.listener for lane in self._lanes.values()}
        return [listener.buffered_s(now) for listener in listeners.values() if listener is not None]

    # -- whole windows

    def _run_whole(self, lanes: list[_Lane]) -> None:
        whole = [lane for lane in lanes if lane.whole]
        ready = [lane for lane in whole if lane.ended]
        for lane in ready:
            lane.maybe_ready = False
        if not ready:
            return
        if not self.overlap_generate and any(not lane.ended for lane in whole):
            return  # T3 is still decoding this call's chunks: wait for all (module docstring)
        empty = [lane for lane in ready if not lane.tokens]
        for lane in empty:
            logger.warning("a text chunk produced no speech tokens; it will be silent")
            self._drop(lane)
            self._deliver(lane, [torch.zeros(0)], True, time.perf_counter())
        batch = self._whole_batch([lane for lane in ready if lane.tokens])
        if not batch:
            return
        for lane in ready:
            if lane not in batch and lane.tokens:
                lane.maybe_ready = True  # the next round takes it
        begin = time.perf_counter()
        try:
            waveforms = self.decoder.synthesize(
                [lane.tokens for lane in batch],
                [lane.reference for lane in batch],
                n_timesteps=self.n_timesteps,
                seeds=[lane.seed for lane in batch],
            )
        except Exception as error:
            logger.exception("S3Gen failed on a batch of %d chunk(s)", len(batch))
            for lane in batch:
                self._fail(lane, error)
            return
        now = time.perf_counter()
        self._count(begin, now, len(batch))
        self.stats.whole_intervals.append((begin, now))
        for lane, waveform in zip(batch, waveforms):
            self._drop(lane)
            wave = waveform.detach().to("cpu", torch.float32).reshape(-1)
            self._deliver(lane, [wave], True, now)

    def _whole_batch(self, ready: Sequence[_Lane]) -> list[_Lane]:
        """The longest ready chunks, at most ``max_batch`` (the rest wait for the next round)."""
        return sorted(ready, key=lambda lane: len(lane.tokens), reverse=True)[: self.max_batch]

    # -- bookkeeping

    def _count(self, begin: float, end: float, windows: int) -> None:
        self.stats.busy_seconds += end - begin
        self.stats.batches += 1
        self.stats.windows += windows

    def _deliver(self, lane: _Lane, chunks: list[torch.Tensor], done: bool, now: float) -> float:
        """Hands audio to the lane's consumer; returns its seconds."""
        seconds = sum(c.numel() for c in chunks) / self.decoder.sample_rate
        if lane.listener is not None and seconds > 0:
            lane.listener.on_audio(lane.order, seconds, now)
        lane.deliver(chunks, done, None)
        return seconds

    def _drop(self, lane: _Lane) -> None:
        with self._lock:
            if self._lanes.pop(lane.lane_id, None) is not None:
                self._forget(lane)

    def _forget(self, lane: _Lane) -> None:
        """Bookkeeping of a lane that left (caller holds the lock)."""
        self.stats.open_streams = len(self._lanes)
        if lane.listener is None:
            return
        lane.listener.open_lanes -= 1
        if lane.listener.open_lanes > 0:
            return
        if self.on_stream_done is not None and lane.listener.playing:
            try:
                self.on_stream_done(lane.listener)
            except Exception:  # a metrics hook must never stop synthesis
                logger.exception("on_stream_done hook failed")

    def _fail(self, lane: _Lane, error: BaseException) -> None:
        self._drop(lane)
        lane.deliver([], True, error)


def _one_off_work(s3gen: S3Gen) -> int:
    """How much work S3Gen has done that a shape pays once (graph captures and eager shapes
    first met, after start-up): a round that moved it is no sample of what rounds cost."""
    stats = s3gen.graph_stats()
    return int(stats.get("captures_after_seal", 0)) + int(stats.get("cold_shapes_after_seal", 0))


def _typical_windows() -> list[tuple[int, float]]:
    """The windows of a typical stream at the default :class:`StreamingConfig` (capacity)."""
    from chatterbox_s3gen.streaming import StreamingConfig

    config = StreamingConfig()
    return typical_stream_windows(
        first_tokens=config.first_chunk_tokens,
        largest_tokens=config.chunk_tokens,
        lookahead=config.lookahead_tokens,
        left_context=config.left_context_tokens or 0,
        prompt_tokens=config.prompt_tokens or 250,
    )


T3_SAMPLE_SECONDS = 1.0
"""T3's token rate is measured over intervals of at least this long."""


@dataclass
class _T3Sample:
    """Streamed tokens T3 delivered over an interval, and how many requests were decoding
    (time-weighted): the capacity model's T3 rate."""

    started: float
    last: float = 0.0
    tokens: int = 0
    request_seconds: float = 0.0
    decoding: int = 0

    def advance(self, now: float, decoding: int, capacity: CapacityModel) -> None:
        self.request_seconds += self.decoding * max(0.0, now - (self.last or self.started))
        self.last, self.decoding = now, decoding
        elapsed = now - self.started
        if elapsed < T3_SAMPLE_SECONDS:
            return
        if self.request_seconds > 0 and self.tokens > 0:
            capacity.observe_t3(self.tokens, elapsed, self.request_seconds / elapsed)
        self.started, self.tokens, self.request_seconds = now, 0, 0.0
