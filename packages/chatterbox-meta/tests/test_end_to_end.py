"""ChatterboxTTS end to end on CPU: tiny random checkpoint, the real vLLM engine (CPU test support),
real S3Gen. Random weights say nothing about speech quality, so these tests check what a user can
rely on: shapes, rates, lengths, chunking, pairing of voices with texts, reproducibility, caching,
and that every bad input gets its own error while the object keeps working."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from chatterbox_vllm import (
    AudioTooShortError,
    ChatterboxTTS,
    CheckpointError,
    CorruptAudioError,
    GenerationParams,
    InvalidParameterError,
    InvalidTextError,
    SilentAudioError,
    TTSRequest,
    UnsupportedAudioFormatError,
    Voice,
    VoiceConditionals,
)
from chatterbox_vllm.audio import crossfade_overlaps
from chatterbox_vllm.hub import CHECKPOINT_FILES
from chatterbox_vllm.tts import describe_load_timings

SAMPLES_PER_TOKEN = 960  # 2 mel frames per token, 480 samples per frame at 24 kHz
CAP = 25.0  # speech tokens per expected second of speech, keeps random-weight chunks short


def chunk_lengths_match_tokens(result) -> bool:
    """Each chunk's audio is 960 samples per speech token (one mel frame less when the voice's
    prompt mel has an odd frame count)."""
    return all(
        samples in (SAMPLES_PER_TOKEN * tokens, SAMPLES_PER_TOKEN * tokens - 480)
        for samples, tokens in zip(result.chunk_samples, map(len, result.speech_tokens))
    )


def test_several_texts_and_two_voices_in_one_call(tts: ChatterboxTTS, voice_files) -> None:
    texts = ["Hello there, friend.", "A second, different sentence.", "Third one."]
    voices = [voice_files["low"], voice_files["high"], voice_files["low"]]
    results = tts.generate(
        texts, voice=voices, seed=11, max_tokens_per_expected_second=CAP, progress=False
    )
    assert [r.text for r in results] == texts
    assert tts.last_stats.chunks == 3  # one vLLM batch of three requests
    for result in results:
        assert result.sample_rate == 24_000
        assert result.waveform.dtype == torch.float32 and result.waveform.dim() == 1
        assert result.waveform.numel() > 0 and torch.isfinite(result.waveform).all()
        assert result.chunks == (result.text,)
        assert chunk_lengths_match_tokens(result)
        assert result.waveform.numel() == result.chunk_samples[0]
        assert result.watermarked is False
    # Each token budget follows its own text: 25 tokens per expected second (characters / 15).
    for result in results:
        assert result.num_speech_tokens <= round(len(result.text) / 15 * CAP)

    # Same seed and voice -> the same audio; the voice pairing follows the list.
    again = tts.generate(
        texts[0],
        voice=voice_files["low"],
        seed=11,
        max_tokens_per_expected_second=CAP,
        progress=False,
    )
    torch.testing.assert_close(again.waveform, results[0].waveform)
    other_voice = tts.generate(
        texts[0],
        voice=voice_files["high"],
        seed=11,
        max_tokens_per_expected_second=CAP,
        progress=False,
    )
    assert not torch.equal(other_voice.waveform[:4000], results[0].waveform[:4000])


def test_per_request_controls_in_one_batch(tts: ChatterboxTTS) -> None:
    requests = [
        TTSRequest("Greedy and short.", None, GenerationParams(max_new_tokens=8, seed=1)),
        TTSRequest(
            "No guidance here.",
            None,
            GenerationParams(cfg_weight=0.0, exaggeration=1.5, max_new_tokens=12, seed=2),
        ),
    ]
    first, second = tts.generate_requests(requests, progress=False)
    assert first.num_speech_tokens <= 8 and second.num_speech_tokens <= 12
    assert first.finish_reasons in (("length",), ("stop",))
    assert chunk_lengths_match_tokens(first) and chunk_lengths_match_tokens(second)


def test_speed_stretches_generate_and_stream_alike(tts: ChatterboxTTS) -> None:
    text = "Faster, please."
    normal = tts.generate(text, seed=4, max_new_tokens=12)
    assert tts.generate(text, seed=4, max_new_tokens=12, speed=1.0).waveform.equal(normal.waveform)
    fast = tts.generate(text, seed=4, max_new_tokens=12, speed=2.0)
    assert fast.speech_tokens == normal.speech_tokens  # the same speech, played faster
    assert fast.waveform.numel() == round(normal.waveform.numel() / 2)
    streamed = [c.waveform for c in tts.stream(text, seed=4, max_new_tokens=12, speed=2.0)]
    assert sum(w.numel() for w in streamed) == fast.waveform.numel()


def test_long_text_is_chunked_at_sentences_and_joined_with_crossfade(tts: ChatterboxTTS) -> None:
    sentences = [
        "The first sentence is short.",
        "Then comes a second one, a little longer than that.",
        "A third follows.",
        "And the fourth sentence closes this small paragraph.",
    ]
    text = " ".join(sentences)
    result = tts.generate(text, seed=5, max_tokens_per_expected_second=CAP)
    assert len(result.chunks) >= 3
    assert all(len(chunk) <= 60 for chunk in result.chunks)
    assert " ".join(result.chunks).split() == text.split()
    for chunk in result.chunks:  # whole sentences per chunk (each fits the 60-char budget)
        assert chunk.endswith("."), chunk
    assert chunk_lengths_match_tokens(result)
    overlaps = crossfade_overlaps(list(result.chunk_samples), 1200)
    assert result.waveform.numel() == sum(result.chunk_samples) - sum(overlaps)
    assert all(overlap == 1200 for overlap in overlaps)
    timings = tts.last_stats.timings
    assert timings.s3gen_batches >= 1 and timings.speech_tokens == result.num_speech_tokens


def test_voices_are_cached_by_content(tts: ChatterboxTTS, voice_files, tmp_path: Path) -> None:
    tts.voice_cache.clear()
    first = tts.prepare_voice(voice_files["high"])
    assert tts.prepare_voice(voice_files["high"]) is first
    copy = tmp_path / "same-audio-other-name.flac"
    shutil.copyfile(voice_files["high"], copy)
    assert tts.prepare_voice(copy) is first
    assert tts.voice_cache.hits == 2 and len(tts.voice_cache) == 1
    second = tts.prepare_voice(voice_files["low"])
    assert second is not first and len(tts.voice_cache) == 2
    # The T3 prompt comes from the first 6 s at 16 kHz (4 s here: 100 tokens at 25 Hz), the
    # S3Gen prompt from up to 10 s.
    assert first.t3.prompt_tokens.numel() == 100
    assert first.s3gen.prompt_tokens.numel() == 100
    assert torch.linalg.norm(first.t3.speaker_embedding) == pytest.approx(1.0, abs=1e-5)


def test_prepared_voice_round_trips_through_conds_file(
    tts: ChatterboxTTS, voice_files, tmp_path: Path
) -> None:
    voice = tts.prepare_voice(voice_files["low"])
    voice.save(tmp_path / "voice.pt")
    loaded = Voice.from_conditionals(VoiceConditionals.load(tmp_path / "voice.pt"))
    torch.testing.assert_close(loaded.t3.prompt_tokens, voice.t3.prompt_tokens)
    torch.testing.assert_close(loaded.s3gen.prompt_mel, voice.s3gen.prompt_mel)
    a = tts.generate("Same voice.", voice=voice, seed=3, max_new_tokens=10, progress=False)
    b = tts.generate("Same voice.", voice=loaded, seed=3, max_new_tokens=10, progress=False)
    torch.testing.assert_close(a.waveform, b.waveform)


def test_default_voice_comes_from_conds(tts: ChatterboxTTS, tiny_checkpoint: Path) -> None:
    conds = VoiceConditionals.load(tiny_checkpoint / "conds.pt")
    assert tts.default_voice is not None
    torch.testing.assert_close(tts.default_voice.t3.prompt_tokens, conds.t3_prompt_tokens)
    result = tts.generate("Default voice.", max_new_tokens=10, progress=False)
    assert result.waveform.numel() > 0


def test_48k_stereo_voice_is_downmixed_and_resampled(tts: ChatterboxTTS, tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    t = np.arange(3 * 48_000) / 48_000
    left = 0.3 * np.sin(2 * np.pi * 150 * t) + 0.01 * rng.standard_normal(t.size)
    right = 0.2 * np.sin(2 * np.pi * 300 * t) + 0.01 * rng.standard_normal(t.size)
    path = _write(tmp_path / "stereo48k.wav", np.stack([left, right], 1).astype(np.float32), 48_000)
    voice = tts.prepare_voice(path)
    assert voice.t3.prompt_tokens.numel() == 75  # 3 s at 25 tokens/s
    assert voice.s3gen.prompt_mel.shape[0] in (150, 151)  # 3 s at 50 frames/s
    result = tts.generate("Stereo voice.", voice=voice, seed=2, max_new_tokens=8, progress=False)
    assert result.sample_rate == 24_000 and result.waveform.numel() > 0


def _write(path: Path, data: np.ndarray, rate: int) -> Path:
    soundfile.write(path, data, rate)
    return path


@pytest.fixture
def bad_voices(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "broken.wav").write_bytes(
        b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(rng.integers(0, 255, 64, dtype=np.uint8))
    )
    return {
        "unsupported": tmp_path / "notes.txt",
        "corrupt": tmp_path / "broken.wav",
        "short": _write(
            tmp_path / "short.wav", 0.3 * rng.standard_normal(4800).astype(np.float32), 24_000
        ),
        "silent": _write(tmp_path / "silent.wav", np.zeros(48_000, np.float32), 24_000),
    }


@pytest.mark.parametrize(
    ("case", "error", "message"),
    [
        ("empty text", InvalidTextError, "empty"),
        ("whitespace", InvalidTextError, "empty"),
        ("punctuation only", InvalidTextError, "no letters or digits"),
        ("100k+1 characters", InvalidTextError, "100,001 characters; at most 100,000"),
        # ... with the advice a caller can follow (not T3's: build its tokenizer differently)
        (
            "untokenizable characters",
            InvalidTextError,
            "cannot represent: .*; remove or transliterate them$",
        ),
        ("unsupported audio", UnsupportedAudioFormatError, "unsupported audio file format '.txt'"),
        ("corrupt audio", CorruptAudioError, "could not decode"),
        ("0.2 s audio", AudioTooShortError, r"0\.20 s long"),
        ("silent audio", SilentAudioError, "silent"),
        ("temperature 6", InvalidParameterError, "temperature must be in"),
        ("top_p 2", InvalidParameterError, "top_p must be in"),
        ("cfg_weight -1", InvalidParameterError, "cfg_weight must be in"),
        ("exaggeration 5", InvalidParameterError, "exaggeration must be in"),
        ("max_new_tokens too big", InvalidParameterError, "does not fit the engine"),
        ("voices/texts mismatch", InvalidParameterError, "2 texts but 1 voices"),
    ],
)
def test_bad_input_gets_a_specific_error_and_the_engine_keeps_working(
    tts: ChatterboxTTS, bad_voices: dict[str, Path], case: str, error: type, message: str
) -> None:
    calls = {
        "empty text": lambda: tts.generate(""),
        "whitespace": lambda: tts.generate("  \n "),
        "punctuation only": lambda: tts.generate("?! ... --"),
        "100k+1 characters": lambda: tts.generate("word " * 20_000 + "x"),
        "untokenizable characters": lambda: tts.generate("Snowman \u2603 here."),
        "unsupported audio": lambda: tts.generate("Hi.", voice=bad_voices["unsupported"]),
        "corrupt audio": lambda: tts.generate("Hi.", voice=bad_voices["corrupt"]),
        "0.2 s audio": lambda: tts.generate("Hi.", voice=bad_voices["short"]),
        "silent audio": lambda: tts.generate("Hi.", voice=bad_voices["silent"]),
        "temperature 6": lambda: tts.generate("Hi.", temperature=6.0),
        "top_p 2": lambda: tts.generate("Hi.", top_p=2.0),
        "cfg_weight -1": lambda: tts.generate("Hi.", cfg_weight=-1.0),
        "exaggeration 5": lambda: tts.generate("Hi.", exaggeration=5.0),
        "max_new_tokens too big": lambda: tts.generate("Hi.", max_new_tokens=4000),
        "voices/texts mismatch": lambda: tts.generate(["a.", "b."], voice=[None]),
    }
    with pytest.raises(error, match=message):
        calls[case]()
    result = tts.generate("Still working.", seed=1, max_new_tokens=6, progress=False)
    assert 0 < result.waveform.numel() <= 6 * SAMPLES_PER_TOKEN


def test_missing_checkpoint_file_is_named(tiny_checkpoint: Path, tmp_path: Path) -> None:
    for name in CHECKPOINT_FILES:
        if name != "t3_cfg.safetensors":
            shutil.copyfile(tiny_checkpoint / name, tmp_path / name)
    with pytest.raises(CheckpointError, match=r"missing t3_cfg\.safetensors: T3 weights"):
        ChatterboxTTS.from_local(tmp_path)


def test_start_up_timeline_splits_the_engine_start_into_its_stages(tts: ChatterboxTTS) -> None:
    """The engine's start, split into what this process did (front end, vLLM's configuration
    and client), what its engine process did (imports, executor, the stages vLLM's worker timed
    there) and the wait until it was ready: each a time >= 0, in the order they ran, adding up
    with the rest to the engine's start. Every load stage is in the logged line."""
    timings = tts.load_timings
    stages = [stage for stage in timings if stage.startswith("t3_engine.")]
    assert stages == [
        "t3_engine.frontend",
        "t3_engine.vllm_config",
        "t3_engine.vllm_client",
        "t3_engine.process_imports",
        "t3_engine.executor",
        "t3_engine.device",
        "t3_engine.weights",
        "t3_engine.compile",
        "t3_engine.kv_profile",
        "t3_engine.kv_cache",
        "t3_engine.graph_capture",
        "t3_engine.ready",
        "t3_engine.other",
    ]
    assert [stage for stage in timings if "." not in stage] == [
        "imports",
        "config",
        "s3gen_weights",
        "t3_engine",
        "s3gen_graphs",
        "voices",
    ]
    assert all(seconds >= 0 for seconds in timings.values())
    assert timings["t3_engine.weights"] > 0 and timings["t3_engine.graph_capture"] > 0
    # The engine process is spawned: it imports torch and vLLM again (the largest stage on CPU).
    assert timings["t3_engine.process_imports"] > 0 and timings["t3_engine.frontend"] > 0
    assert sum(timings[stage] for stage in stages) == pytest.approx(timings["t3_engine"], rel=1e-6)
    # "other" is what no stage explains: here, little (gaps between the worker's stages).
    assert timings["t3_engine.other"] < 0.5 * timings["t3_engine"]
    line = describe_load_timings(timings)
    assert line.startswith("imports ") and "vLLM client " in line and "process imports " in line


def test_t3_in_this_process_speaks_as_the_engine_process_does(
    tts: ChatterboxTTS, tiny_checkpoint: Path, chatterbox_engine_options
) -> None:
    """``t3_process="in-process"`` (vLLM's engine core on a thread of this process) gives the same
    audio for the same text, voice and seed; a stream abandoned early frees its T3 request."""
    text, options = "The same words twice.", dict(seed=7, max_new_tokens=30, temperature=0.8)
    expected = tts.generate(text, **options).waveform
    with ChatterboxTTS.from_local(
        tiny_checkpoint, t3_process="in-process", **chatterbox_engine_options
    ) as local:
        assert local.config.t3_process == "in-process"
        assert torch.equal(local.generate(text, **options).waveform, expected)
        stream = local.stream("A stream that nobody finishes listening to.", max_new_tokens=150)
        next(iter(stream))
        stream.close()
        for _ in range(100):  # the abort reaches the engine thread between two steps
            if local._t3.num_unfinished_requests() == 0:
                break
            time.sleep(0.05)
        assert local._t3.num_unfinished_requests() == 0
        assert local.generate("Still serving.", max_new_tokens=20).finish_reasons == ("length",)


def test_an_interrupted_generate_keeps_the_chunks_it_finished(
    tts: ChatterboxTTS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during a long generate stops it (a KeyboardInterrupt) and hands back the audio of
    the chunks that were finished, with the texts of those that were not; it threw them all
    away. Here S3Gen delivers the first chunk, the others never come, and Ctrl-C arrives while
    generate waits for them."""
    import _thread
    import threading

    from chatterbox_vllm import GenerationInterrupted

    text = (
        "The first sentence is long enough for its own chunk. "
        "The second sentence also gets a chunk of its own. "
        "And the third one closes this little text."
    )
    controls = {"seed": 5, "max_new_tokens": 12}
    whole = tts.generate(text, **controls)
    assert len(whole.chunks) == 3
    scheduler = tts.scheduler
    real_open = scheduler.open_whole
    opened: list[int] = []

    def open_whole(reference, *, seed, deliver):  # type: ignore[no-untyped-def]
        opened.append(1)
        if len(opened) > 1:
            return real_open(reference, seed=seed, deliver=lambda *_: None)  # never arrives

        def deliver_then_interrupt(pieces, done, error) -> None:  # type: ignore[no-untyped-def]
            deliver(pieces, done, error)
            if done:  # Ctrl-C half a second later, while generate waits for the rest
                threading.Timer(0.5, _thread.interrupt_main).start()

        return real_open(reference, seed=seed, deliver=deliver_then_interrupt)

    monkeypatch.setattr(scheduler, "open_whole", open_whole)
    with pytest.raises(GenerationInterrupted) as caught:
        tts.generate(text, **controls)
    monkeypatch.undo()
    (partial,) = caught.value.partial
    assert partial is not None and partial.chunks == whole.chunks[:1]
    assert caught.value.missing == (whole.chunks[1:],)
    assert partial.speech_tokens == whole.speech_tokens[:1]  # the same seed: the same chunk
    assert partial.chunk_samples == whole.chunk_samples[:1] == (partial.waveform.numel(),)
    assert tts.generate("Still working.", max_new_tokens=5).duration_s > 0
