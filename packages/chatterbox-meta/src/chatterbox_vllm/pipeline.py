"""T3 -> S3Gen pipelining: S3Gen synthesises finished chunks while T3 is still decoding others.

All chunks of a call go to T3 at once, so vLLM decodes them as one continuous batch. T3 runs on a
private asyncio event loop in a background thread (vLLM's ``AsyncLLM`` is bound to one loop); each
chunk's stream ends with its final tokens, which are queued. The calling thread takes finished
chunks off the queue, batches whatever has arrived (up to ``s3gen_batch_size``) and hands it to
``S3Gen.synthesize`` - so S3Gen's work overlaps T3's decoding of the chunks still running.
"""

from __future__ import annotations

import asyncio
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
from chatterbox_vllm.planner import PlanItem
from chatterbox_vllm.results import PipelineTimings

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
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


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
"""How often a waiting pipeline checks that the T3 engine is still alive."""


_T3_FINISHED = object()


def run_pipeline(
    jobs: Sequence[ChunkJob],
    *,
    stream_tokens: Callable[[Any, Callable[[int], Any] | None], Any],
    loop: EventLoopThread,
    synthesize: Callable[[list[list[int]], list[Any], list[int | None]], list[torch.Tensor]],
    s3gen_batch_size: int,
    engine_failure: Callable[[], str | None] = lambda: None,
    progress: bool = True,
) -> PipelineTimings:
    """Runs every job through T3 (all at once) and S3Gen (in batches as they finish); fills
    ``job.tokens`` and ``job.waveform``. Returns timings.

    ``stream_tokens(t3_request, on_tokens)`` is an async iterator whose last item is the final
    output, calling ``on_tokens(n)`` as ids arrive (``None`` without progress);
    ``synthesize(token_lists, references, seeds)`` returns one 1-D waveform per item.
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
    start = time.perf_counter()

    async def decode(job_index: int) -> None:
        final = None
        async for output in stream_tokens(jobs[job_index].t3_request, on_tokens):
            final = output
        if final is None:
            raise RuntimeError(f"T3 returned no output for chunk {job_index}")
        finished.put((job_index, final))

    t3_future = loop.submit(decode_all_or_none(decode(i) for i in range(len(jobs))))
    t3_future.add_done_callback(lambda _: finished.put(_T3_FINISHED))
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
                t3_end = time.perf_counter()
                error = t3_future.exception()
                if error is not None:
                    raise error
                continue
            batch = [item]
            while len(batch) < s3gen_batch_size:
                try:
                    extra = finished.get_nowait()
                except queue.Empty:
                    break
                if extra is _T3_FINISHED:
                    t3_end = time.perf_counter()
                    finished.put(extra)  # handle (and raise its error) after this batch
                    break
                batch.append(extra)
            for job_index, output in batch:
                job = jobs[job_index]
                ids = [int(t) for t in output.token_ids]
                kept = tuple(t for t in ids if 0 <= t < SPEECH_VOCAB_SIZE)
                if len(kept) != len(ids):
                    logger.debug(
                        "chunk %d: dropped %d non-speech token ids", job_index, len(ids) - len(kept)
                    )
                job.tokens = SpeechTokens(kept, output.finish_reason)
                timings.speech_tokens += len(kept)
            _synthesize_batch([jobs[i] for i, _ in batch], synthesize, timings)
            remaining -= len(batch)
            bar.update(len(batch))
    except BaseException:
        t3_future.cancel()  # cancels the decoding tasks on the loop, which abort their requests
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
    timings.overlap = sum(
        max(0.0, min(stop, t3_end) - max(begin, start)) for begin, stop in timings.s3gen_intervals
    )
    return timings


def _synthesize_batch(
    batch: list[ChunkJob],
    synthesize: Callable[[list[list[int]], list[Any], list[int | None]], list[torch.Tensor]],
    timings: PipelineTimings,
) -> None:
    with_tokens = [job for job in batch if job.tokens]
    for job in batch:
        if not job.tokens:
            logger.warning(
                "chunk %r produced no speech tokens; it will be silent", job.item.text[:40]
            )
            job.waveform = torch.zeros(0)
    if not with_tokens:
        return
    begin = time.perf_counter()
    waveforms = synthesize(
        [list(job.tokens.token_ids) for job in with_tokens if job.tokens],
        [job.reference for job in with_tokens],
        [job.seed for job in with_tokens],
    )
    stop = time.perf_counter()
    timings.s3gen += stop - begin
    timings.s3gen_batches += 1
    timings.s3gen_intervals.append((begin, stop))
    for job, waveform in zip(with_tokens, waveforms):
        job.waveform = waveform.detach().to("cpu", torch.float32).reshape(-1)
