"""``generate``'s executor: T3 decodes every chunk of a call at once, the engine's one S3Gen
scheduler (:mod:`chatterbox_vllm.scheduler`, shared with streams) synthesises each chunk as one
whole window once its tokens are final.

T3 runs on a private asyncio event loop in a background thread (vLLM's ``AsyncLLM`` is bound to
one loop); each chunk's stream ends with its final tokens, which go to the chunk's scheduler
lane. The calling thread waits for the waveforms (and checks that the engine is alive).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from chatterbox_vllm.errors import EngineDeadError
from chatterbox_vllm.interfaces import SPEECH_VOCAB_SIZE, SpeechTokens
from chatterbox_vllm.planner import PlanItem, expected_speech_seconds
from chatterbox_vllm.results import PipelineTimings
from chatterbox_vllm.scheduler import S3GenScheduler

logger = logging.getLogger(__name__)

T = TypeVar("T")


class EventLoopThread:
    """A private asyncio loop in a daemon thread; coroutines are submitted from any thread."""

    def __init__(self, name: str = "chatterbox-t3-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Any:
        """Schedules ``coroutine``; returns a ``concurrent.futures.Future``."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.submit(coroutine).result()

    def stop(self) -> None:
        """Cancels what still runs on the loop (and waits for it to unwind), then stops it: a task
        left pending would be destroyed later by the garbage collector, at any moment."""
        if self.loop.is_closed():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_cancel_other_tasks(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


async def _cancel_other_tasks() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=5)


async def decode_all_or_none(coroutines: Iterable[Coroutine[Any, Any, Any]]) -> None:
    """Runs every chunk's T3 decoding at once; on the first error, or when cancelled, stops the
    others (vLLM aborts a request when its stream is closed, freeing its KV blocks)."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class ChunkJob:
    """One plan item as it moves through the pipeline."""

    item: PlanItem
    t3_request: Any
    """What ``stream_tokens`` takes (a ``chatterbox_t3.T3Request`` for T3)."""
    reference: Any
    """What ``synthesize`` takes as the voice (an ``S3GenReference`` for S3Gen)."""
    tokens: SpeechTokens | None = None
    waveform: torch.Tensor | None = None

    @property
    def seed(self) -> int | None:
        return self.item.seed


ENGINE_POLL_SECONDS = 1.0
"""How often a waiting call checks that the T3 engine is still alive."""


_T3_FINISHED = object()


def run_pipeline(
    jobs: Sequence[ChunkJob],
    *,
    stream_tokens: Callable[[Any, Callable[[int], Any] | None], Any],
    loop: EventLoopThread,
    scheduler: S3GenScheduler,
    engine_failure: Callable[[], str | None] = lambda: None,
    progress: bool = True,
) -> PipelineTimings:
    """``generate``'s executor: every job through T3 (all at once) and the engine's S3Gen
    scheduler (one whole-chunk lane each, the same scheduler streams use); fills ``job.tokens``
    and ``job.waveform``. Returns timings.

    ``stream_tokens(t3_request, on_tokens)`` is an async iterator whose last item is the final
    output, calling ``on_tokens(n)`` as ids arrive (``None`` without progress).
    ``engine_failure()`` says why the T3 engine died (``None`` while alive): it is polled while
    waiting, so a killed engine ends the call with :class:`EngineDeadError` instead of a hang.
    """
    finished: queue.Queue[Any] = queue.Queue()
    # Progress on stderr: T3 in speech tokens (against each chunk's cap: chunks that stop early
    # finish below it), S3Gen in chunks.
    token_bar = tqdm(
        total=sum(job.item.max_tokens for job in jobs),
        desc="T3 speech tokens",
        unit="tok",
        disable=not progress,
        leave=False,
    )
    bar = tqdm(
        total=len(jobs), desc="S3Gen chunks", unit="chunk", disable=not progress, leave=False
    )
    on_tokens = token_bar.update if progress else None
    timings = PipelineTimings()
    intervals_before = len(scheduler.stats.whole_intervals)
    start = time.perf_counter()

    def on_audio(
        index: int, pieces: list[torch.Tensor], done: bool, error: BaseException | None
    ) -> None:
        finished.put((index, pieces, error))

    lanes = [
        scheduler.open_whole(
            job.reference, seed=job.seed, deliver=functools.partial(on_audio, index)
        )
        for index, job in enumerate(jobs)
    ]

    async def decode(index: int) -> None:
        final = None
        async for output in stream_tokens(jobs[index].t3_request, on_tokens):
            final = output
        if final is None:
            raise RuntimeError(f"T3 returned no output for chunk {index}")
        ids = [int(t) for t in final.token_ids]
        kept = tuple(t for t in ids if 0 <= t < SPEECH_VOCAB_SIZE)
        if len(kept) != len(ids):
            logger.debug("chunk %d: dropped %d non-speech token ids", index, len(ids) - len(kept))
        # T3 returns only valid ids, so its word frames index ``kept`` as they are.
        words = tuple(getattr(final, "words", ()))
        jobs[index].tokens = SpeechTokens(kept, final.finish_reason, words)
        scheduler.add_tokens(lanes[index], list(kept))
        scheduler.end(lanes[index])

    # Longest expected speech first: vLLM admits requests in arrival order, and a long chunk
    # that arrives last keeps a nearly empty batch decoding after the rest have finished
    # (simulated for benchmark-text-1's 172 chunks on 128 sequences: 611 decode steps instead
    # of 777 in text order).
    longest_first = sorted(
        range(len(jobs)),
        key=lambda i: (-jobs[i].item.max_tokens, -expected_speech_seconds(jobs[i].item.text)),
    )
    t3_future = loop.submit(decode_all_or_none(decode(i) for i in longest_first))
    t3_done_at: list[float] = []  # when T3's last chunk finished (on the loop thread)

    def on_t3_done(_: Any) -> None:
        t3_done_at.append(time.perf_counter())
        finished.put(_T3_FINISHED)

    t3_future.add_done_callback(on_t3_done)
    t3_end: float | None = None
    remaining = len(jobs)
    try:
        while remaining:
            try:
                item = finished.get(timeout=ENGINE_POLL_SECONDS)
            except queue.Empty:
                failure = engine_failure()
                if failure is not None:
                    raise EngineDeadError(
                        f"the T3 engine died during generation ({failure}); {remaining} of "
                        f"{len(jobs)} chunk(s) were not finished. This object cannot speak any "
                        "more: load a new one"
                    ) from None
                continue
            if item is _T3_FINISHED:
                t3_end = t3_done_at[0]
                error = t3_future.exception()
                if error is not None:
                    raise error
                continue
            index, pieces, error = item
            if error is not None:
                raise error
            jobs[index].waveform = (
                torch.cat([p.reshape(-1) for p in pieces]) if pieces else torch.zeros(0)
            )
            remaining -= 1
            bar.update(1)
    except BaseException:
        t3_future.cancel()  # cancels the decoding tasks on the loop, which abort their requests
        for lane in lanes:
            scheduler.cancel(lane)
        raise
    finally:
        bar.close()
        token_bar.close()
    if t3_end is None:
        t3_future.result()
        t3_end = time.perf_counter()
    end = time.perf_counter()
    timings.t3 = t3_end - start
    timings.total = end - start
    timings.speech_tokens = sum(len(job.tokens) for job in jobs if job.tokens is not None)
    timings.s3gen_intervals = list(scheduler.stats.whole_intervals[intervals_before:])
    timings.s3gen = sum(stop - begin for begin, stop in timings.s3gen_intervals)
    timings.s3gen_batches = len(timings.s3gen_intervals)
    timings.overlap = sum(
        max(0.0, min(stop, t3_end) - max(begin, start)) for begin, stop in timings.s3gen_intervals
    )
    return timings
