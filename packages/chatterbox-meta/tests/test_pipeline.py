"""The T3 -> S3Gen pipeline's orchestration, with stand-in stages whose timing we control."""

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
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[float, list[list[int]], list[int | None]]] = []
        self.fail = fail

    def synthesize(self, tokens: list[list[int]], references: list, seeds: list) -> list:
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


def test_s3gen_starts_while_t3_is_still_decoding(loop: EventLoopThread) -> None:
    t3, s3gen = StaggeredT3(), RecordingS3Gen()
    jobs = _jobs(6)
    timings = run_pipeline(
        jobs,
        stream_tokens=t3.stream,
        loop=loop,
        synthesize=s3gen.synthesize,
        s3gen_batch_size=2,
        progress=False,
    )
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


def test_t3_error_propagates_and_the_loop_keeps_working(loop: EventLoopThread) -> None:
    t3 = StaggeredT3(fail_on=1)
    with pytest.raises(RuntimeError, match="T3 failed on chunk 1"):
        run_pipeline(
            _jobs(4),
            stream_tokens=t3.stream,
            loop=loop,
            synthesize=RecordingS3Gen().synthesize,
            s3gen_batch_size=4,
            progress=False,
        )
    time.sleep(0.3)
    assert t3.cancelled  # the other chunks' decoding was stopped
    jobs = _jobs(2)
    run_pipeline(
        jobs,
        stream_tokens=StaggeredT3().stream,
        loop=loop,
        synthesize=RecordingS3Gen().synthesize,
        s3gen_batch_size=4,
        progress=False,
    )
    assert all(job.waveform is not None for job in jobs)


def test_s3gen_error_cancels_t3(loop: EventLoopThread) -> None:
    t3 = StaggeredT3(step=0.05)
    with pytest.raises(RuntimeError, match="S3Gen failed"):
        run_pipeline(
            _jobs(6),
            stream_tokens=t3.stream,
            loop=loop,
            synthesize=RecordingS3Gen(fail=True).synthesize,
            s3gen_batch_size=1,
            progress=False,
        )
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
            synthesize=RecordingS3Gen().synthesize,
            s3gen_batch_size=2,
            engine_failure=lambda: next(deaths, "EngineCore_0 was killed by signal 9"),
            progress=False,
        )
    assert time.perf_counter() - start < 10
