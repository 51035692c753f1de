"""ReplicatedChatterboxTTS on a local CPU-only Ray cluster with two replicas (real vLLM engines on
the CPU test support, real S3Gen, tiny random checkpoint).

What a user relies on: the same audio as one ChatterboxTTS for the same seeds (so chunks are split,
seeded, ordered and joined the same way), voices prepared once and shipped to the replicas, input
errors raised as ChatterboxTTS raises them, and a replica killed mid-call costing neither a chunk
nor a duplicate (a replacement takes its place).

The reference results come from one local ChatterboxTTS, computed first and closed before the Ray
cluster starts (at most two engines run at a time on the 2-core CI machine).
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from chatterbox_vllm import (
    AudioTooShortError,
    ChatterboxTTS,
    GenerationParams,
    InvalidParameterError,
    InvalidTextError,
    ReplicatedChatterboxTTS,
    TTSRequest,
)
from chatterbox_vllm.distributed.bench import kill_when_busy
from vllm_cpu_test_support.settings import CHATTERBOX_ENGINE as TEST_ENGINE

CAP = 25.0  # speech tokens per expected second of speech: keeps random-weight chunks short
SEED = 7
LONG_TEXT = (
    "The lighthouse keeper climbed the stairs at dusk. He trimmed the wick and wound the clock. "
    "Ships passed far out, their lamps small and steady. By midnight the fog rolled in from the "
    "sea. He rang the bell every minute until the dawn came grey and cold."
)
SHORT_TEXT = "Good morning to you."
KILL_TEXT = " ".join(
    f"Sentence number {word} of the story goes on a little longer."
    for word in (
        "one two three four five six seven eight nine ten eleven twelve thirteen fourteen".split()
    )
)
REQUESTS = [
    TTSRequest(
        "First request, greedy and short.", None, GenerationParams(seed=1, max_new_tokens=30)
    ),
    TTSRequest(
        "Second request, no guidance and more emotion.",
        None,
        GenerationParams(
            seed=2,
            max_new_tokens=200,
            cfg_weight=0.0,
            exaggeration=1.2,
            max_tokens_per_expected_second=CAP,
        ),
    ),
    TTSRequest(
        "Third request.", None, GenerationParams(seed=3, temperature=0.5, max_new_tokens=20)
    ),
]


def assert_same_result(got: Any, want: Any) -> None:
    """Every field of two GenerationResults is equal: texts, chunks, speech tokens, finish reasons
    and lengths exactly; the audio to float32 rounding (S3Gen may batch a chunk with different
    neighbours, which changes the last bit of a few samples, never a token)."""
    assert type(got) is type(want)
    for field in dataclasses.fields(want):
        a, b = getattr(got, field.name), getattr(want, field.name)
        if isinstance(b, torch.Tensor):
            assert a.dtype == b.dtype and a.shape == b.shape, field.name
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=field.name)
        else:
            assert a == b, field.name


@pytest.fixture(scope="module")
def references(tiny_checkpoint: Path, voice_files: dict[str, Path]) -> dict[str, Any]:
    """What one local ChatterboxTTS says for every call the tests make."""
    with ChatterboxTTS.from_local(tiny_checkpoint, watermark=False, **TEST_ENGINE) as tts:
        controls = {"seed": SEED, "max_tokens_per_expected_second": CAP, "progress": False}
        return {
            "batch": tts.generate(
                [LONG_TEXT, SHORT_TEXT], voice=[None, voice_files["low"]], **controls
            ),
            "requests": tts.generate_requests(REQUESTS, progress=False),
            "high_voice": tts.prepare_voice(voice_files["high"]),
            "kill": tts.generate(KILL_TEXT, voice=voice_files["high"], **controls),
        }


@pytest.fixture(scope="module")
def replicated(tiny_checkpoint: Path, references: dict[str, Any]):
    """Two CPU replicas on a private local Ray cluster (``address="local"``)."""
    tts = ReplicatedChatterboxTTS.from_local(
        tiny_checkpoint,
        replicas=2,
        address="local",
        watermark=False,
        ray_init_kwargs={"num_cpus": 3, "include_dashboard": False},
        max_chunks_per_call=2,
        **TEST_ENGINE,
    )
    yield tts
    tts.close()


def voice_stats(tts: ReplicatedChatterboxTTS) -> tuple[int, int]:
    """(voices computed from audio, voices fetched from the object store) over all replicas."""
    import ray

    stats = ray.get([handle.actor.voice_stats.remote() for handle in tts.replicas])
    return sum(s["prepared"] for s in stats), sum(s["fetched"] for s in stats)


def test_replicas_run_on_cpu_when_the_cluster_has_no_gpu(replicated) -> None:
    assert len(replicated.replicas) == 2
    for handle in replicated.replicas:
        assert handle.info.gpu_ids == () and handle.info.device == "cpu"
        assert handle.info.has_default_voice
    assert {status.state for status in replicated.replica_status()} == {"ready"}


def test_same_audio_as_one_chatterbox_tts_for_the_same_seed(replicated, references, voice_files):
    results = replicated.generate(
        [LONG_TEXT, SHORT_TEXT],
        voice=[None, voice_files["low"]],
        seed=SEED,
        max_tokens_per_expected_second=CAP,
        progress=False,
    )
    assert len(results[0].chunks) >= 4  # a long text really was split
    for got, want in zip(results, references["batch"], strict=True):
        assert_same_result(got, want)
    report = replicated.last_stats.dispatch
    # Both replicas worked, on similar token loads, and nothing was redone.
    assert set(report.chunks_per_replica) == {handle.name for handle in replicated.replicas}
    tokens = sorted(report.tokens_per_replica.values())
    assert tokens[0] >= 0.4 * tokens[1]
    assert report.retried_chunks == 0 and report.duplicates_discarded == 0
    assert replicated.last_stats.chunks == sum(len(r.chunks) for r in results)


def test_requests_with_their_own_controls_come_back_in_order(replicated, references):
    results = replicated.generate_requests(REQUESTS, progress=False)
    assert [r.text for r in results] == [request.text for request in REQUESTS]
    for got, want in zip(results, references["requests"], strict=True):
        assert_same_result(got, want)


def test_voice_is_prepared_once_and_shipped_through_the_object_store(
    replicated, references, voice_files
):
    prepared_before, fetched_before = voice_stats(replicated)
    texts = ["One chunk for each replica.", "And one for the other one."]
    replicated.generate(
        texts, voice=voice_files["high"], seed=1, max_tokens_per_expected_second=CAP, progress=False
    )
    assert set(replicated.last_stats.dispatch.chunks_per_replica) == {
        handle.name for handle in replicated.replicas
    }
    prepared, fetched = voice_stats(replicated)
    assert prepared - prepared_before == 1  # computed on one replica only
    assert fetched - fetched_before == 2  # each replica fetched the prepared voice once

    replicated.generate(
        texts, voice=voice_files["high"], seed=2, max_tokens_per_expected_second=CAP, progress=False
    )
    assert voice_stats(replicated) == (prepared, fetched)  # cached everywhere now

    voice = replicated.prepare_voice(voice_files["high"])
    want = references["high_voice"]
    assert voice.content_hash == want.content_hash
    assert torch.equal(voice.t3.speaker_embedding, want.t3.speaker_embedding)
    assert torch.equal(voice.s3gen.prompt_mel, want.s3gen.prompt_mel)


def test_bad_input_gets_the_same_errors_and_the_replicas_keep_working(replicated):
    with pytest.raises(InvalidTextError, match="empty"):
        replicated.generate("   ", progress=False)
    with pytest.raises(InvalidParameterError, match="temperature"):
        replicated.generate("Hello.", temperature=6.0, progress=False)
    with pytest.raises(InvalidParameterError, match="2 texts but 1 voices"):
        replicated.generate(["a b", "c d"], voice=[None], progress=False)
    with pytest.raises(AudioTooShortError):
        replicated.generate(
            "Hello.", voice=(np.ones(2400, dtype=np.float32) * 0.1, 24_000), progress=False
        )
    # Raised by T3's text front end inside a replica, re-raised here as the same error type.
    with pytest.raises(InvalidTextError, match="^text contains characters"):
        replicated.generate("Hello 漢字 there.", progress=False)
    # With several texts, the error names the user's text (not the replica's chunk batch).
    with pytest.raises(InvalidTextError, match="^text 2: text contains characters"):
        replicated.generate(["Fine.", "Also fine, twice over.", "Bad 漢 text."], progress=False)
    with pytest.raises(InvalidParameterError, match="unknown engine option"):
        ReplicatedChatterboxTTS.from_local("/nonexistent", replicas=1, max_num_seq=3)
    result = replicated.generate(
        SHORT_TEXT, seed=3, max_tokens_per_expected_second=CAP, progress=False
    )
    assert result.waveform.numel() > 0


def test_replica_killed_mid_call_loses_and_duplicates_no_chunk(replicated, references, voice_files):
    """Runs last in this module: it replaces a replica."""
    victim = replicated.replicas[0].name
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_when_busy, args=(replicated, victim, stop, killed))
    killer.start()
    try:
        result = replicated.generate(
            KILL_TEXT,
            voice=voice_files["high"],
            seed=SEED,
            max_tokens_per_expected_second=CAP,
            progress=False,
        )
    finally:
        stop.set()
        killer.join()
    assert killed == [victim]
    # Same audio as the undisturbed single engine: every chunk exactly once, in order.
    assert_same_result(result, references["kill"])
    report = replicated.last_stats.dispatch
    assert report.failed_replicas == [victim]
    assert report.retried_chunks >= 1
    assert report.duplicates_discarded == 0
    assert sum(report.chunks_per_replica.values()) == report.chunks == len(result.chunks)
    assert len(report.started_replicas) == 1

    # The replacement loads in the background and then takes work like any replica.
    replicated.wait_for_replicas()
    names = {handle.name for handle in replicated.replicas}
    assert victim not in names and report.started_replicas[0] in names and len(names) == 2
    replicated.generate(
        ["Work for the first.", "Work for the second."],
        seed=4,
        max_tokens_per_expected_second=CAP,
        progress=False,
    )
    assert set(replicated.last_stats.dispatch.chunks_per_replica) == names
