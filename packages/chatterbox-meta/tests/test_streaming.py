"""Streaming through the real engine (CPU test support): the same plan, the same T3 tokens and the
same total length as ``generate``; chunks in order; early close and concurrent streams work."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import torch

from chatterbox_vllm import ChatterboxTTS

TEXT = "First sentence is here. A second one follows it! And a third, to make three chunks."


def _joined(chunks) -> torch.Tensor:
    return torch.cat([chunk.waveform for chunk in chunks])


def test_stream_matches_generate_in_length_and_order(tts: ChatterboxTTS) -> None:
    reference = tts.generate(TEXT, seed=11, progress=False)
    assert len(reference.chunks) >= 2  # the test needs a join between text chunks
    chunks = list(tts.stream(TEXT, seed=11))
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[-1].final and not any(c.final for c in chunks[:-1])
    assert [c.text_chunk for c in chunks] == sorted(c.text_chunk for c in chunks)
    streamed = _joined(chunks)
    # Same tokens (same seed, same plan) -> the same number of samples after the same joins.
    assert streamed.numel() == reference.waveform.numel()
    assert chunks[0].sample_rate == 24_000 and streamed.dtype == torch.float32
    # No clicks: no sample-to-sample jump at a chunk boundary beyond the signal's own largest.
    steps = streamed.diff().abs()
    boundaries = torch.tensor([c.waveform.numel() for c in chunks]).cumsum(0)[:-1]
    boundaries = boundaries[(boundaries > 0) & (boundaries < streamed.numel())]
    if boundaries.numel():
        assert steps[boundaries - 1].max() <= steps.max()


def test_closing_a_stream_early_stops_it_and_the_engine_keeps_working(tts: ChatterboxTTS) -> None:
    iterator = tts.stream(TEXT * 3, seed=1)
    first = next(iterator)
    assert first.waveform.numel() > 0
    iterator.close()  # stops T3 (vLLM abort) and the S3Gen streams
    assert tts.generate("Still fine.", max_new_tokens=8, progress=False).duration_s > 0
    assert tts.scheduler.stats.open_streams == 0


def test_concurrent_async_streams_all_complete(tts: ChatterboxTTS) -> None:
    async def one(seed: int) -> int:
        total = 0
        async for chunk in tts.astream(
            "Many voices at once, please.", seed=seed, max_new_tokens=30
        ):
            total += chunk.waveform.numel()
        return total

    async def main() -> list[int]:
        return await asyncio.gather(*(one(seed) for seed in range(6)))

    stats = tts.scheduler.stats
    batches, windows = stats.batches, stats.windows
    totals = asyncio.run(main())
    assert all(total > 0 for total in totals)
    # Windows of different streams shared S3Gen batches: more windows than batches ran.
    assert stats.windows - windows > stats.batches - batches


def test_bad_stream_input_fails_before_anything_starts(tts: ChatterboxTTS) -> None:
    from chatterbox_vllm.errors import InvalidParameterError, InvalidTextError

    with pytest.raises(InvalidTextError):
        tts.stream("   ")
    with pytest.raises(InvalidParameterError, match="cfg_weight"):
        tts.stream("Hello.", cfg_weight=9)
    # A chunk T3's text front end refuses (one word longer than a prompt holds) is the same
    # InvalidTextError as from generate, on every streaming entry point, not an internal
    # per-chunk error type.
    word = "a" * 3000
    with pytest.raises(InvalidTextError, match="nowhere to be split"):
        tts.stream("Fine. " + word)
    with pytest.raises(InvalidTextError, match="nowhere to be split"):
        list(tts.stream_text(["Fine. ", word], max_new_tokens=4))
    # Window sizes of the wrong type: the product's error naming the argument, at the call (a
    # text stream's S3Gen lane opens only after its first sentence).
    wrong = "streaming must be a chatterbox_s3gen.StreamingConfig .* got dict"
    with pytest.raises(InvalidParameterError, match=wrong):
        tts.stream("Hello.", streaming={"chunk_tokens": 50})  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match=wrong):
        tts.stream_text(["Hello."], streaming={"chunk_tokens": 50})  # type: ignore[arg-type]
    assert tts.scheduler.stats.open_streams == 0


def test_stream_text_speaks_deltas_like_stream_speaks_the_whole_text(tts: ChatterboxTTS) -> None:
    # Two sentences that the whole-text planner splits in two as well (max_chunk_chars 60).
    text = "The first sentence is said right here. Then a second one follows it!"
    controls = {"seed": 5, "max_new_tokens": 8}
    whole = _joined(tts.stream(text, **controls))
    deltas = [text[i : i + 4] for i in range(0, len(text), 4)]  # cut inside words
    chunks = list(tts.stream_text(iter(deltas), **controls))
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[-1].final and [c.text_chunk for c in chunks][-1] == 1
    pieces = _joined(chunks)
    assert pieces.numel() == whole.numel()
    # S3Gen may batch the two lanes' windows differently: equal to float32 rounding.
    assert torch.allclose(pieces, whole, atol=1e-4)
    assert tts.scheduler.stats.open_streams == 0


def test_astream_text_reads_an_async_iterable_while_it_speaks(tts: ChatterboxTTS) -> None:
    async def llm() -> AsyncIterator[str]:
        for word in "Hello there, how are you? I am fine.".split(" "):
            yield word + " "
            await asyncio.sleep(0.02)

    async def main() -> list:
        return [chunk async for chunk in tts.astream_text(llm(), seed=2, max_new_tokens=6)]

    chunks = asyncio.run(main())
    assert sum(chunk.waveform.numel() for chunk in chunks) > 0 and chunks[-1].final
    # "Hello there," is too short to say alone: two sentences, two text chunks.
    assert {chunk.text_chunk for chunk in chunks} == {0, 1}


def test_stream_text_errors_are_specific_and_stop_the_work(tts: ChatterboxTTS) -> None:
    from chatterbox_vllm.errors import InvalidParameterError, InvalidTextError

    with pytest.raises(InvalidParameterError, match="for a whole text use stream"):
        tts.stream_text("Hello.")
    with pytest.raises(InvalidParameterError, match="cfg_weight"):
        tts.stream_text(["Hello."], cfg_weight=9)
    with pytest.raises(InvalidTextError, match="unpaired surrogate"):
        list(tts.stream_text(["Fine. ", "Broken \udc00 text. "], max_new_tokens=4))
    assert tts.scheduler.stats.open_streams == 0
