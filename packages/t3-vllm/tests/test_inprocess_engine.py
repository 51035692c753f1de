"""AsyncT3Engine with vLLM's engine core in this process (``in_process=True``): the same tokens as
the engine process gives, aborts that free the engine, per-request errors, a clear dead engine."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatterbox_t3 import AsyncT3Engine, T3Output, T3Request, T3SamplingParams
from chatterbox_t3.errors import EmptyTextError
from chatterbox_t3.startup import STARTUP_STAGES

GREEDY = T3SamplingParams(temperature=0.0, max_new_tokens=20)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def engine(
    tiny_checkpoint: Path, tiny_engine_kwargs, loop: asyncio.AbstractEventLoop
) -> Iterator[AsyncT3Engine]:
    async def start() -> AsyncT3Engine:
        return AsyncT3Engine.from_checkpoint(tiny_checkpoint, in_process=True, **tiny_engine_kwargs)

    engine = loop.run_until_complete(start())
    yield engine
    engine.shutdown()


async def final(engine: AsyncT3Engine, request: T3Request) -> T3Output:
    last = None
    async for item in engine.stream_speech_tokens(request):
        last = item
    assert last is not None and last.finished
    return last


def test_concurrent_streams_equal_the_engine_process(loop, engine, tiny_engine, make_voice) -> None:
    requests = [
        T3Request(text, make_voice(i), GREEDY)
        for i, text in enumerate(["One voice here.", "Another voice there.", "A third."])
    ]

    async def run_all() -> list[T3Output]:
        return await asyncio.gather(*(final(engine, r) for r in requests))

    finals = loop.run_until_complete(run_all())
    expected = tiny_engine.generate_speech_tokens(requests)
    assert [f.raw_token_ids for f in finals] == [e.raw_token_ids for e in expected]
    assert engine.num_unfinished_requests() == 0


def test_a_stream_closed_early_is_aborted(loop, engine, make_voice) -> None:
    long = T3SamplingParams(temperature=0.0, max_new_tokens=200)

    async def take_two_then_leave() -> int:
        stream = engine.stream_speech_tokens(T3Request("Leave early.", make_voice(1), long))
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 2:
                break
        await stream.aclose()
        for _ in range(100):  # the abort is applied between two engine steps
            if engine.num_unfinished_requests() == 0:
                break
            await asyncio.sleep(0.05)
        return engine.num_unfinished_requests()

    assert loop.run_until_complete(take_two_then_leave()) == 0
    request = T3Request("Still serving.", make_voice(0), GREEDY)
    assert len(loop.run_until_complete(final(engine, request)).raw_token_ids) == 20


def test_bad_request_is_that_request_s_error(loop, engine, make_voice) -> None:
    with pytest.raises(EmptyTextError):
        loop.run_until_complete(final(engine, T3Request(" ", make_voice(0), GREEDY)))
    assert engine.engine_failure() is None


def test_start_up_timeline_and_shutdown(tiny_checkpoint, tiny_engine_kwargs, make_voice) -> None:
    """A second engine of its own: the timeline has the stages of the worker in this process; after
    shutdown the engine reports why it cannot serve and a request fails with that reason."""
    from vllm.v1.engine.exceptions import EngineDeadError

    loop = asyncio.new_event_loop()
    try:

        async def start() -> AsyncT3Engine:
            return AsyncT3Engine.from_checkpoint(
                tiny_checkpoint, in_process=True, **tiny_engine_kwargs
            )

        engine = loop.run_until_complete(start())
        timeline = loop.run_until_complete(engine.startup_timeline())
        # No engine process: vLLM's configuration and client are built with its executor.
        assert list(timeline) == ["frontend", "executor", *STARTUP_STAGES, "ready"]
        assert all(seconds >= 0 for seconds in timeline.values())
        engine.shutdown()
        assert engine.engine_failure() == "the T3 engine was shut down"
        with pytest.raises(EngineDeadError, match="shut down"):
            loop.run_until_complete(final(engine, T3Request("Hi.", make_voice(0), GREEDY)))
    finally:
        loop.close()
