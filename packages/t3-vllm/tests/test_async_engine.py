"""AsyncT3Engine: streaming cumulative outputs on vLLM V1's AsyncLLM."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatterbox_t3 import AsyncT3Engine, T3Output, T3Request, T3SamplingParams
from chatterbox_t3.errors import EmptyTextError

GREEDY = T3SamplingParams(temperature=0.0, max_new_tokens=20)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    # One loop for the module: AsyncLLM binds its output handler to the loop it first runs on.
    loop = asyncio.new_event_loop()
    yield loop
    # Let the tasks the engine cancelled on shutdown finish cancelling before closing.
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()


@pytest.fixture(scope="module")
def async_engine(
    tiny_checkpoint: Path, tiny_engine_kwargs, loop: asyncio.AbstractEventLoop
) -> Iterator[AsyncT3Engine]:
    async def start() -> AsyncT3Engine:
        return AsyncT3Engine.from_checkpoint(tiny_checkpoint, **tiny_engine_kwargs)

    engine = loop.run_until_complete(start())
    yield engine
    engine.shutdown()


def collect(loop, engine: AsyncT3Engine, request: T3Request) -> list[T3Output]:
    async def run() -> list[T3Output]:
        return [item async for item in engine.stream_speech_tokens(request)]

    return loop.run_until_complete(run())


def test_stream_is_cumulative_and_ends_final(loop, async_engine, tiny_engine, make_voice) -> None:
    request = T3Request("Streaming works.", make_voice(0), GREEDY)
    items = collect(loop, async_engine, request)
    assert len(items) > 1
    assert [item.finished for item in items] == [False] * (len(items) - 1) + [True]
    assert all(item.finish_reason == "" for item in items[:-1])
    assert items[-1].finish_reason in ("stop", "length")
    for earlier, later in itertools.pairwise(items):
        assert later.raw_token_ids[: len(earlier.raw_token_ids)] == earlier.raw_token_ids
        assert len(later.raw_token_ids) > len(earlier.raw_token_ids)
    # The same tokens as the synchronous engine.
    [sync] = tiny_engine.generate_speech_tokens([request])
    assert items[-1].raw_token_ids == sync.raw_token_ids
    assert items[-1].token_ids == sync.token_ids


def test_concurrent_streams_do_not_mix(loop, async_engine, tiny_engine, make_voice) -> None:
    requests = [
        T3Request(text, make_voice(i), GREEDY)
        for i, text in enumerate(["One voice here.", "Another voice there.", "A third."])
    ]

    async def run_all() -> list[T3Output]:
        async def last(request: T3Request) -> T3Output:
            final = None
            async for item in async_engine.stream_speech_tokens(request):
                final = item
            assert final is not None
            return final

        return await asyncio.gather(*(last(r) for r in requests))

    finals = loop.run_until_complete(run_all())
    expected = tiny_engine.generate_speech_tokens(requests)
    assert [f.raw_token_ids for f in finals] == [e.raw_token_ids for e in expected]


def test_bad_request_raises_before_streaming_and_engine_keeps_serving(
    loop, async_engine, make_voice
) -> None:
    with pytest.raises(EmptyTextError):
        collect(loop, async_engine, T3Request(" ", make_voice(0), GREEDY))
    assert collect(loop, async_engine, T3Request("Still here.", make_voice(0), GREEDY))[-1].finished
