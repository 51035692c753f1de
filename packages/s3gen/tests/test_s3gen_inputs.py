"""Reference conditioning, tokenization and every kind of bad input: a specific error, or a
documented behaviour, and no corrupted state afterwards."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from chatterbox_s3gen import SPEECH_VOCAB_SIZE, S3Gen, S3GenReference
from chatterbox_s3gen.errors import S3GenInputError


def test_embed_ref_layout(s3gen: S3Gen, voice_a: S3GenReference) -> None:
    assert voice_a.prompt_tokens.dtype == torch.int64 and voice_a.prompt_tokens.dim() == 1
    assert voice_a.num_prompt_tokens == 30  # 1.2 s at 25 tokens/s
    assert voice_a.prompt_mel.shape == (60, 80) and voice_a.prompt_mel.dtype == torch.float32
    assert voice_a.speaker_embedding.shape == (192,)
    assert bool(((voice_a.prompt_tokens >= 0) & (voice_a.prompt_tokens < SPEECH_VOCAB_SIZE)).all())


@pytest.mark.parametrize("sample_rate", [8_000, 16_000, 22_050, 44_100, 48_000])
def test_any_sample_rate_is_resampled(s3gen: S3Gen, tone, sample_rate: int) -> None:
    voice = s3gen.embed_ref(tone(1.0, sample_rate), sample_rate)
    assert voice.num_prompt_tokens == 25 and voice.num_prompt_frames == 50
    native = s3gen.embed_ref(tone(1.0, 24_000), 24_000)
    # Same sound, so (up to the band limit of 8 kHz audio) a similar prompt mel.
    low_band = slice(0, 40)
    diff = (voice.prompt_mel[:, low_band] - native.prompt_mel[:, low_band]).abs().median()
    assert float(diff) < 0.5


def test_stereo_is_averaged_to_mono(s3gen: S3Gen, tone) -> None:
    left, right = tone(0.8, seed=1), tone(0.8, freqs=(330.0,), seed=2)
    stereo = s3gen.embed_ref(torch.stack([left, right]), 24_000)
    mono = s3gen.embed_ref((left + right) / 2, 24_000)
    assert torch.equal(stereo.prompt_tokens, mono.prompt_tokens)
    torch.testing.assert_close(stereo.prompt_mel, mono.prompt_mel)
    torch.testing.assert_close(stereo.speaker_embedding, mono.speaker_embedding)


def test_channels_last_audio_is_rejected(s3gen: S3Gen, tone) -> None:
    wav = torch.stack([tone(0.5), tone(0.5)], dim=1)  # (samples, channels), as soundfile returns
    with pytest.raises(ValueError, match=r"\(channels, samples\)"):
        s3gen.embed_ref(wav, 24_000)
    with pytest.raises(ValueError, match="1-D"):
        s3gen.embed_ref(wav.reshape(1, 1, -1), 24_000)


def test_numpy_and_int16_audio(s3gen: S3Gen, tone) -> None:
    wav = tone(0.6)
    from_numpy = s3gen.embed_ref(wav.numpy(), 24_000)
    assert torch.equal(from_numpy.prompt_tokens, s3gen.embed_ref(wav, 24_000).prompt_tokens)
    pcm = (wav * 32767).round().to(torch.int16)
    from_pcm = s3gen.embed_ref(pcm, 24_000)
    torch.testing.assert_close(
        from_pcm.prompt_mel, s3gen.embed_ref(pcm.float() / 32768, 24_000).prompt_mel
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda w: torch.full_like(w, float("nan")), "NaN/Inf"),
        (lambda w: torch.cat([w, torch.tensor([float("inf")])]), "NaN/Inf"),
        (lambda w: torch.zeros_like(w), "silent"),
        (lambda w: 1e-6 * w, "silent"),
        (lambda w: w[:0], "empty"),
        (lambda w: w[None, :][:0], r"\(0, \d+\): no channels"),
        (lambda w: w[:720], "ms long"),  # 30 ms
    ],
)
def test_unusable_reference_audio_raises(s3gen: S3Gen, tone, make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        s3gen.embed_ref(make(tone(0.5)), 24_000)


def test_shortest_accepted_reference(s3gen: S3Gen, tone) -> None:
    voice = s3gen.embed_ref(tone(0.05), 24_000)
    assert voice.num_prompt_tokens >= 1
    assert bool(torch.isfinite(voice.speaker_embedding).all())


def test_bad_sample_rates_raise(s3gen: S3Gen, tone) -> None:
    with pytest.raises(TypeError, match="sample_rate must be an int"):
        s3gen.embed_ref(tone(0.5), 24_000.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        s3gen.embed_ref(tone(0.5), 0)
    # kHz for Hz: it was 'the tokenizer handles at most 82 s' for half a second of audio.
    with pytest.raises(S3GenInputError, match=r"sample_rate is 24 Hz, .*give it in Hz \(24000"):
        s3gen.embed_ref(tone(0.5), 24)
    with pytest.raises(TypeError, match="torch.Tensor or numpy array"):
        s3gen.embed_ref([0.1, 0.2], 24_000)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float samples"):
        s3gen.embed_ref(torch.ones(24_000, dtype=torch.bool), 24_000)


def test_long_reference_is_used_whole_with_a_warning(s3gen: S3Gen, tone, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="chatterbox_s3gen.model"):
        voice = s3gen.embed_ref(tone(10.5, 16_000), 16_000)
    assert voice.num_prompt_tokens == 262  # 10.48 s of mel frames (525 // 2)
    assert "10.5 s long" in caplog.text


def test_tokenize(s3gen: S3Gen, tone) -> None:
    wav = tone(2.0, 16_000)
    ids = s3gen.tokenize(wav)
    assert ids.shape == (50,) and ids.dtype == torch.int64
    # max_len cuts the mel (4 frames per token) before the encoder, as the reference does; the
    # encoder attends globally, so these are not simply ids[:20] (parity: tests/parity).
    assert s3gen.tokenize(wav, max_len=20).shape == (20,)
    assert s3gen.tokenize(wav, max_len=150).numel() == 50
    with pytest.raises(ValueError, match="max_len"):
        s3gen.tokenize(wav, max_len=0)
    with pytest.raises(ValueError, match="at least 201"):
        s3gen.tokenize(wav[:150])
    with pytest.raises(ValueError, match="NaN"):
        s3gen.tokenize(torch.full((1600,), float("nan")))


# -- synthesize ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sequences", "error", "message"),
    [
        ([[1, 2], []], ValueError, r"token_sequences\[1\] is empty"),
        (
            [[1, 6561, 7000]],
            ValueError,
            r"token_sequences\[0\] has 2 id\(s\) outside \[0, 6561\), e\.g\. \[6561, 7000\]",
        ),
        ([[5, -1]], ValueError, r"outside \[0, 6561\)"),
        ([[1.5, 2.0]], TypeError, "must contain ints"),
        (["abc"], TypeError, "sequence of ints"),
        ([torch.zeros(2, 3, dtype=torch.int64)], ValueError, "1-D integer tensor"),
    ],
)
def test_bad_token_sequences(s3gen, voice_a, sequences, error, message) -> None:
    with pytest.raises(error, match=message):
        s3gen.synthesize(sequences, [voice_a] * len(sequences))


def test_tokens_may_be_tensors_or_numpy(s3gen, voice_a) -> None:
    as_list = s3gen.synthesize_mels([[3, 4, 5]], [voice_a])[0]
    assert torch.equal(as_list, s3gen.synthesize_mels([torch.tensor([3, 4, 5])], [voice_a])[0])
    assert torch.equal(as_list, s3gen.synthesize_mels([np.array([3, 4, 5])], [voice_a])[0])


def test_bad_batches(s3gen, voice_a, voice_b) -> None:
    with pytest.raises(ValueError, match="got 2 token sequences but 1 references"):
        s3gen.synthesize([[1, 2], [3]], [voice_a])
    with pytest.raises(TypeError, match="references must be a sequence"):
        s3gen.synthesize([[1, 2]], voice_a)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"references\[1\] must be an S3GenReference"):
        s3gen.synthesize([[1], [2]], [voice_a, voice_b.to_conds_dict()])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"seeds must hold one int per utterance \(2\)"):
        s3gen.synthesize([[1], [2]], [voice_a, voice_b], seeds=[1])
    with pytest.raises(TypeError, match="seeds must be ints"):
        s3gen.synthesize([[1], [2]], [voice_a, voice_b], seeds=[1, 2.5])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="n_timesteps"):
        s3gen.synthesize([[1]], [voice_a], n_timesteps=0)
    with pytest.raises(ValueError, match="batch_size"):
        s3gen.synthesize([[1]], [voice_a], batch_size=0)
    with pytest.raises(TypeError, match="sequence of token sequences"):
        s3gen.synthesize(torch.tensor([[1, 2]]), [voice_a])  # type: ignore[arg-type]
    assert s3gen.synthesize([], []) == []


def test_too_long_for_the_noise_and_no_corruption_after_errors(
    tiny_checkpoint: Path, voice_a, tokens
) -> None:
    model = S3Gen.from_checkpoint(tiny_checkpoint)
    before = model.synthesize([tokens(10, 1)], [voice_a], seeds=[0])[0]
    model.flow_noise = model.flow_noise[:, :, :100]
    frames = 2 * (voice_a.num_prompt_tokens + 30)
    with pytest.raises(ValueError, match=rf"item 0: prompt \+ tokens make {frames} mel frames"):
        model.synthesize([tokens(30, 2)], [voice_a])
    for bad in ([[]], [[99999]]):
        with pytest.raises(ValueError):
            model.synthesize(bad, [voice_a])
    assert torch.equal(model.synthesize([tokens(10, 1)], [voice_a], seeds=[0])[0], before)


def test_reference_validation(voice_a) -> None:
    with pytest.raises(ValueError, match="non-empty 1-D int64"):
        S3GenReference(voice_a.prompt_tokens.int(), voice_a.prompt_mel, voice_a.speaker_embedding)
    with pytest.raises(ValueError, match="prompt_mel has 59 frames but 30 prompt tokens need 60"):
        S3GenReference(voice_a.prompt_tokens, voice_a.prompt_mel[:59], voice_a.speaker_embedding)
    with pytest.raises(ValueError, match=r"speaker_embedding must be a float \[192\]"):
        S3GenReference(voice_a.prompt_tokens, voice_a.prompt_mel, voice_a.speaker_embedding[:10])
    with pytest.raises(ValueError, match="finite"):
        S3GenReference(
            voice_a.prompt_tokens, voice_a.prompt_mel * float("nan"), voice_a.speaker_embedding
        )
    with pytest.raises(KeyError, match="prompt_feat"):
        S3GenReference.from_conds_dict({"prompt_token": voice_a.prompt_tokens[None]})
    conds = voice_a.to_conds_dict()
    conds["prompt_token_len"] = torch.tensor([3])
    with pytest.raises(ValueError, match="prompt_token_len 3"):
        S3GenReference.from_conds_dict(conds)


def test_vocode_input_checks(s3gen) -> None:
    with pytest.raises(TypeError, match="non-empty sequence"):
        s3gen.vocode(torch.zeros(1, 80, 5))
    with pytest.raises(ValueError, match=r"mels\[0\] must be a \[80, frames\]"):
        s3gen.vocode([torch.zeros(40, 5)])
