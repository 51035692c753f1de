"""Batched synthesis: shapes, per-item equality with unbatched runs, seeds, noise, dtypes."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from chatterbox_s3gen import S3GEN_SAMPLE_RATE, S3Gen, S3GenReference

HOP = 480


def test_output_length_and_fade_in(s3gen: S3Gen, voice_a: S3GenReference, tokens) -> None:
    assert s3gen.sample_rate == S3GEN_SAMPLE_RATE == 24_000
    ids = tokens(13, 1)
    (wav,) = s3gen.synthesize([ids], [voice_a], seeds=[0])
    assert wav.dim() == 1 and wav.dtype == torch.float32 and wav.device.type == "cpu"
    # 2 mel frames per token, 480 samples per frame (voice_a's prompt mel has 2T frames).
    assert voice_a.num_prompt_frames == 2 * voice_a.num_prompt_tokens
    assert wav.numel() == 13 * 2 * HOP
    assert bool(torch.isfinite(wav).all()) and float(wav.abs().max()) <= 0.99
    assert bool((wav[:480] == 0).all())  # the reference silences the first 20 ms
    assert float(wav[480:960].abs().max()) > 0


def test_batched_items_equal_their_unbatched_runs(s3gen, voice_a, voice_b, tokens) -> None:
    """Mixed lengths and voices in one padded batch give each item its own unbatched result."""
    sequences = [tokens(n, n) for n in (5, 31, 17, 1, 24)]
    voices = [voice_a, voice_b, voice_b, voice_a, voice_a]
    seeds = [11, 12, 13, 14, 15]
    batched_mels = s3gen.synthesize_mels(sequences, voices)
    batched = s3gen.synthesize(sequences, voices, seeds=seeds)
    for ids, voice, seed, mel, wav in zip(sequences, voices, seeds, batched_mels, batched):
        (alone_mel,) = s3gen.synthesize_mels([ids], [voice])
        (alone,) = s3gen.synthesize([ids], [voice], seeds=[seed])
        assert mel.shape == alone_mel.shape and wav.shape == alone.shape
        torch.testing.assert_close(mel, alone_mel, rtol=0, atol=2e-5)
        torch.testing.assert_close(wav, alone, rtol=0, atol=2e-5)


def test_batch_size_only_changes_scheduling(s3gen, voice_a, voice_b, tokens) -> None:
    sequences = [tokens(n, 100 + n) for n in (9, 3, 14)]
    voices = [voice_b, voice_a, voice_b]
    all_at_once = s3gen.synthesize(sequences, voices, seeds=[1, 2, 3])
    in_pairs = s3gen.synthesize(sequences, voices, seeds=[1, 2, 3], batch_size=2)
    for a, b in zip(all_at_once, in_pairs):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-5)


def test_seeds_control_only_the_vocoder_noise(s3gen, voice_a, tokens) -> None:
    ids = tokens(12, 3)
    a, b, c = s3gen.synthesize([ids, ids, ids], [voice_a] * 3, seeds=[5, 5, 6])
    torch.testing.assert_close(a, b, rtol=0, atol=2e-5)  # rows of one batch: float rounding only
    assert float((a - c).abs().max()) > 1e-3
    torch.manual_seed(123)
    d = s3gen.synthesize([ids], [voice_a])[0]
    torch.manual_seed(123)
    e = s3gen.synthesize([ids], [voice_a])[0]
    assert torch.equal(d, e)  # unseeded calls draw their seeds from torch's global RNG


def test_synthesize_is_synthesize_mels_then_vocode(s3gen, voice_a, voice_b, tokens) -> None:
    sequences, voices = [tokens(7, 7), tokens(4, 4)], [voice_a, voice_b]
    direct = s3gen.synthesize(sequences, voices, seeds=[1, 2])
    staged = s3gen.vocode(s3gen.synthesize_mels(sequences, voices), seeds=[1, 2])
    for a, b in zip(direct, staged):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_flow_noise_is_fixed_per_model_and_settable(tiny_checkpoint: Path, voice_a, tokens) -> None:
    first = S3Gen.from_checkpoint(tiny_checkpoint)
    second = S3Gen.from_checkpoint(tiny_checkpoint)
    other = S3Gen.from_checkpoint(tiny_checkpoint, noise_seed=torch.Generator().manual_seed(1))
    assert first.flow_noise.shape == (1, 80, 15_000)
    expected = torch.randn((1, 80, 15_000), generator=torch.Generator().manual_seed(0))
    assert torch.equal(first.flow_noise, expected)  # documented default: noise_seed 0
    ids = tokens(6, 6)
    mel_1 = first.synthesize_mels([ids], [voice_a])[0]
    assert torch.equal(mel_1, second.synthesize_mels([ids], [voice_a])[0])
    assert not torch.equal(mel_1, other.synthesize_mels([ids], [voice_a])[0])
    other.flow_noise = first.flow_noise
    assert torch.equal(mel_1, other.synthesize_mels([ids], [voice_a])[0])
    with pytest.raises(ValueError, match=r"\[1, 80, frames\]"):
        other.flow_noise = torch.zeros(80, 10)


def test_n_timesteps_changes_the_trajectory(s3gen, voice_a, tokens) -> None:
    ids = tokens(8, 8)
    ten = s3gen.synthesize_mels([ids], [voice_a])[0]
    assert torch.equal(ten, s3gen.synthesize_mels([ids], [voice_a], n_timesteps=10)[0])
    four = s3gen.synthesize_mels([ids], [voice_a], n_timesteps=4)[0]
    assert four.shape == ten.shape and not torch.allclose(four, ten)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_flow_stays_close_to_float32(
    tiny_checkpoint: Path, s3gen, voice_a, tokens, dtype
) -> None:
    model = S3Gen.from_checkpoint(tiny_checkpoint, dtype=dtype)
    assert model.dtype == dtype
    ids = tokens(10, 10)
    reference = s3gen.synthesize_mels([ids], [voice_a])[0]
    mel = model.synthesize_mels([ids], [voice_a])[0]
    assert mel.dtype == torch.float32 and bool(torch.isfinite(mel).all())
    # Random tiny weights; the README reports the measured full-size errors.
    relative = float((mel - reference).abs().max() / reference.abs().max())
    assert relative < 0.1


def test_odd_prompt_frames_shorten_the_output_by_one_frame(s3gen, tone, tokens) -> None:
    """A 24 kHz prompt with an odd mel frame count keeps it (as the reference does)."""
    voice = s3gen.embed_ref(tone(1.02, 24_000, seed=4), 24_000)
    assert voice.num_prompt_frames == 2 * voice.num_prompt_tokens + 1
    (mel,) = s3gen.synthesize_mels([tokens(9, 9)], [voice])
    assert mel.shape == (80, 17)
    (wav,) = s3gen.synthesize([tokens(9, 9)], [voice], seeds=[0])
    assert wav.numel() == 17 * HOP


def test_s3gen_matches_the_speech_decoder_protocol(s3gen) -> None:
    """The structural contract of chatterbox_vllm.interfaces.SpeechDecoder (checked by mypy too)."""
    assert isinstance(s3gen.sample_rate, int)
    parameters = inspect.signature(s3gen.synthesize).parameters
    assert list(parameters)[:2] == ["token_sequences", "references"]
    assert all(p.default is not inspect.Parameter.empty for p in list(parameters.values())[2:])


def test_references_work_on_any_device_and_roundtrip_conds(s3gen, voice_a, tokens) -> None:
    conds = voice_a.to_conds_dict()
    assert conds["prompt_token"].shape == (1, voice_a.num_prompt_tokens)
    assert conds["prompt_token"].dtype == torch.int64
    assert conds["prompt_token_len"].tolist() == [voice_a.num_prompt_tokens]
    assert conds["prompt_feat"].shape == (1, voice_a.num_prompt_frames, 80)
    assert conds["prompt_feat_len"] is None
    assert conds["embedding"].shape == (1, 192) and conds["embedding"].dtype == torch.float32
    again = S3GenReference.from_conds_dict(conds).to("cpu")
    ids = tokens(5, 5)
    assert torch.equal(
        s3gen.synthesize_mels([ids], [again])[0], s3gen.synthesize_mels([ids], [voice_a])[0]
    )
