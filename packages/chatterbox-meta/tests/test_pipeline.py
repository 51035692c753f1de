"""``generate``'s executor (T3, then the engine's S3Gen scheduler), with stand-in stages whose
timing we control."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import torch

from chatterbox_vllm.controls import GenerationParams
from chatterbox_vllm.pipeline import ChunkJob, EventLoopThread, run_pipeline
from chatterbox_vllm.planner import PlanItem
from chatterbox_vllm.scheduler import S3GenScheduler


@dataclass(frozen=True)
class Output:
    token_ids: tuple[int, ...]
    finish_reason: str


class StaggeredT3:
    """Chunk i finishes after (i + 1) * step seconds, streaming cumulative outputs."""

    def __init__(self, step: float = 0.05, fail_on: int | None = None) -> None:
        self.step = step
        self.fail_on = fail_on
        self.finished_at: dict[int, float] = {}
        self.cancelled: set[int] = set()

    async def stream(self, request: int, on_tokens=None) -> AsyncIterator[Output]:
        tokens: list[int] = []
        try:
            for _ in range(request + 1):
                await asyncio.sleep(self.step)
                if request == self.fail_on:
                    raise RuntimeError(f"T3 failed on chunk {request}")
                tokens.append(100 + request)
                yield Output(tuple(tokens), "length")
            tokens.append(7000)  # a non-speech id: must be dropped before S3Gen
            self.finished_at[request] = time.perf_counter()
            yield Output(tuple(tokens), "stop")
        except asyncio.CancelledError:
            self.cancelled.add(request)
            raise


class RecordingS3Gen:
    """A SpeechDecoder whose waveform says which reference it was paired with."""

    sample_rate = 24_000

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[float, list[list[int]], list[int | None]]] = []
        self.fail = fail

    def synthesize(
        self, tokens: list[list[int]], references: list, *, n_timesteps: int, seeds: list
    ) -> list:
        self.calls.append((time.perf_counter(), tokens, seeds))
        if self.fail:
            raise RuntimeError("S3Gen failed")
        time.sleep(0.01)
        return [torch.full((480 * len(t),), float(r)) for t, r in zip(tokens, references)]


def _jobs(n: int) -> list[ChunkJob]:
    items = [
        PlanItem(i, 0, i, f"chunk {i}", GenerationParams(), max_tokens=10, seed=10 + i)
        for i in range(n)
    ]
    return [ChunkJob(item, t3_request=item.order, reference=item.order) for item in items]


@pytest.fixture(scope="module")
def loop() -> EventLoopThread:
    thread = EventLoopThread()
    yield thread
    thread.stop()


def _scheduler(s3gen: RecordingS3Gen, max_batch: int, overlap: bool = False) -> S3GenScheduler:
    return S3GenScheduler(s3gen, max_batch=max_batch, overlap_generate=overlap)


def test_overlap_schedule_starts_s3gen_while_t3_is_still_decoding(loop: EventLoopThread) -> None:
    t3, s3gen = StaggeredT3(), RecordingS3Gen()
    jobs = _jobs(6)
    scheduler = _scheduler(s3gen, max_batch=2, overlap=True)
    timings = run_pipeline(
        jobs, stream_tokens=t3.stream, loop=loop, scheduler=scheduler, progress=False
    )
    scheduler.close()
    first_synthesis = s3gen.calls[0][0]
    assert first_synthesis < max(t3.finished_at.values())
    assert timings.overlap > 0 and timings.s3gen_batches == len(s3gen.calls)
    assert all(len(tokens) <= 2 for _, tokens, _ in s3gen.calls)
    for job in jobs:
        index = job.item.chunk_index
        assert job.tokens is not None
        assert job.tokens.token_ids == (100 + index,) * (index + 1)
        assert job.tokens.finish_reason == "stop"
        assert job.waveform is not None
        assert job.waveform.shape == (480 * (index + 1),)
        assert torch.all(job.waveform == index)  # paired with its own reference
    seeds = sorted(seed for _, _, call_seeds in s3gen.calls for seed in call_seeds)
    assert seeds == [10 + i for i in range(6)]
    assert timings.speech_tokens == sum(range(1, 7))


def test_default_schedule_runs_s3gen_after_t3_in_full_batches(loop: EventLoopThread) -> None:
    """T3 (vLLM's process) and S3Gen (this one) time-slice one GPU: by default a call's chunks
    reach S3Gen once T3 has decoded all of them, longest first, in batches of max_batch."""
    t3, s3gen = StaggeredT3(), RecordingS3Gen()
    jobs = _jobs(6)
    scheduler = _scheduler(s3gen, max_batch=4)
    timings = run_pipeline(
        jobs, stream_tokens=t3.stream, loop=loop, scheduler=scheduler, progress=False
    )
    assert timings.s3gen_batches == 2
    scheduler.close()
    assert s3gen.calls[0][0] >= max(t3.finished_at.values())
    assert [len(tokens) for _, tokens, _ in s3gen.calls] == [4, 2]
    assert [len(t) for t in s3gen.calls[0][1]] == [6, 5, 4, 3]  # longest first
    for job in jobs:
        index = job.item.chunk_index
        assert job.waveform is not None and torch.all(job.waveform == index)


def test_t3_gets_the_longest_chunks_first(loop: EventLoopThread) -> None:
    """vLLM admits requests in arrival order: a long chunk sent last would decode alone at the
    end. By token cap, then by expected speech; equal ones in text order."""
    texts = [
        "Short one.",
        "A much longer chunk of text than the others.",
        "Mid-length text.",
        "Tiny.",
    ]
    caps = [10, 10, 10, 40]
    items = [
        PlanItem(i, 0, i, text, GenerationParams(), max_tokens=cap, seed=i)
        for i, (text, cap) in enumerate(zip(texts, caps))
    ]
    jobs = [ChunkJob(item, t3_request=item.order, reference=item.order) for item in items]
    started: list[int] = []

    async def stream(request: int, on_tokens=None) -> AsyncIterator[Output]:
        started.append(request)
        await asyncio.sleep(0)
        yield Output((100,), "stop")

    scheduler = _scheduler(RecordingS3Gen(), max_batch=4)
    run_pipeline(jobs, stream_tokens=stream, loop=loop, scheduler=scheduler, progress=False)
    scheduler.close()
    assert started == [3, 1, 2, 0]
    assert [job.tokens.token_ids for job in jobs if job.tokens] == [(100,)] * 4


def test_t3_error_propagates_and_the_loop_keeps_working(loop: EventLoopThread) -> None:
    t3 = StaggeredT3(fail_on=1)
    scheduler = _scheduler(RecordingS3Gen(), max_batch=4)
    with pytest.raises(RuntimeError, match="T3 failed on chunk 1"):
        run_pipeline(
            _jobs(4),
            stream_tokens=t3.stream,
            loop=loop,
            scheduler=scheduler,
            progress=False,
        )
    time.sleep(0.3)
    assert t3.cancelled  # the other chunks' decoding was stopped
    assert scheduler.stats.open_streams == 0  # and their S3Gen lanes closed
    jobs = _jobs(2)
    run_pipeline(
        jobs, stream_tokens=StaggeredT3().stream, loop=loop, scheduler=scheduler, progress=False
    )
    scheduler.close()
    assert all(job.waveform is not None for job in jobs)


def test_s3gen_error_cancels_t3(loop: EventLoopThread) -> None:
    t3 = StaggeredT3(step=0.05)
    scheduler = _scheduler(RecordingS3Gen(fail=True), max_batch=1, overlap=True)
    with pytest.raises(RuntimeError, match="S3Gen failed"):
        run_pipeline(
            _jobs(6), stream_tokens=t3.stream, loop=loop, scheduler=scheduler, progress=False
        )
    scheduler.close()
    time.sleep(0.3)
    assert t3.cancelled and len(t3.finished_at) < 6


def test_a_dead_engine_ends_the_call_instead_of_hanging(loop: EventLoopThread) -> None:
    """vLLM 0.9.2 waits forever for outputs of a vanished engine-core process; the pipeline polls
    the engine's health while it waits and turns a death into EngineDeadError."""
    import asyncio

    from chatterbox_vllm.errors import EngineDeadError

    async def never_finishes(request: int, on_tokens=None) -> AsyncIterator[Output]:
        await asyncio.sleep(3600)
        yield Output((), "stop")

    deaths = iter([None, "EngineCore_0 was killed by signal 9"])
    start = time.perf_counter()
    with pytest.raises(EngineDeadError, match="killed by signal 9.*load a new one"):
        run_pipeline(
            _jobs(2),
            stream_tokens=never_finishes,
            loop=loop,
            scheduler=_scheduler(RecordingS3Gen(), max_batch=2),
            engine_failure=lambda: next(deaths, "EngineCore_0 was killed by signal 9"),
            progress=False,
        )
    assert time.perf_counter() - start < 10
