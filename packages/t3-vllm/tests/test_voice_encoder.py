"""Voice encoder: signal processing rules and the speaker embedding's properties.

Exact agreement with the reference (librosa + its LSTM) is checked in tests/parity."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from chatterbox_t3.errors import T3InputError
from chatterbox_t3.voice_encoder import (
    VoiceEncoder,
    VoiceEncoderConfig,
    mel_filterbank,
    mel_spectrogram,
    partial_windows,
    trim_silence,
)

SR = 16000
CONFIG = VoiceEncoderConfig()


def tone(seconds: float, frequency: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    return (amplitude * np.sin(2 * math.pi * frequency * t)).astype(np.float32)


def test_frame_step_is_the_reference_rate() -> None:
    assert CONFIG.frame_step == 77  # round((16000 / 1.3) / 160)


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        (10, (1, 160)),  # shorter than one partial: one zero-padded partial
        (160, (1, 160)),  # (0 + 83) / 160 < 0.8: no second partial
        (237, (2, 237)),  # divmod(154, 77) = (2, 0): exactly two
        (300, (3, 314)),  # divmod(217, 77) = (2, 63); (63 + 83) / 160 >= 0.8: a third, padded
        (250, (2, 237)),  # divmod(167, 77) = (2, 13); (13 + 83) / 160 < 0.8: the tail is dropped
    ],
)
def test_partial_windows(frames: int, expected: tuple[int, int]) -> None:
    assert partial_windows(frames, CONFIG) == expected


def test_mel_has_one_frame_per_hop_and_peaks_at_the_tone() -> None:
    wav = tone(1.0, 1000.0)
    mel = mel_spectrogram(wav, CONFIG)
    assert mel.shape == (1 + len(wav) // 160, 40) and mel.dtype == np.float32
    basis = mel_filterbank(SR, 400, 40, 0.0, 8000.0)
    assert basis.shape == (40, 201) and (basis >= 0).all()
    # The loudest band is the filter with the largest weight at the 1 kHz FFT bin (bin 25).
    assert int(np.argmax(mel[50])) == int(np.argmax(basis[:, 25]))


def test_trim_keeps_the_loud_part() -> None:
    silence = np.zeros(SR, dtype=np.float32)
    wav = np.concatenate([silence, tone(1.0, 440.0), silence])
    trimmed = trim_silence(wav, CONFIG)
    # All of the tone survives, with at most one analysis frame (2048 samples) of silence kept
    # on either side.
    assert np.count_nonzero(trimmed) == np.count_nonzero(wav)
    assert SR <= len(trimmed) <= SR + 2 * 2048
    assert np.shares_memory(trimmed, wav)  # a slice, like librosa.effects.trim


@pytest.fixture(scope="module")
def encoder(tiny_checkpoint: Path) -> VoiceEncoder:
    return VoiceEncoder.from_checkpoint_dir(tiny_checkpoint)


def test_embedding_is_a_unit_vector_and_deterministic(encoder: VoiceEncoder) -> None:
    wav = tone(2.0, 220.0) + tone(2.0, 660.0, 0.2)
    first = encoder.embed(wav)
    assert first.shape == (256,) and first.dtype == torch.float32
    assert torch.linalg.norm(first).item() == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(first, encoder.embed(torch.from_numpy(wav)))
    assert not torch.allclose(first, encoder.embed(tone(2.0, 1500.0)))


def test_bad_audio_is_rejected(encoder: VoiceEncoder) -> None:
    with pytest.raises(T3InputError, match="16000 Hz"):
        encoder.embed(tone(1.0, 220.0), sample_rate=24000)
    with pytest.raises(T3InputError, match="NaN"):
        encoder.embed(np.full(SR, np.nan, dtype=np.float32))
    with pytest.raises(T3InputError, match="after trimming silence"):
        encoder.embed(np.zeros(100, dtype=np.float32))
    with pytest.raises(T3InputError, match="mono"):
        encoder.embed(np.zeros((2, SR), dtype=np.float32))


def test_extremely_loud_audio_is_not_trimmed_to_nothing() -> None:
    """Samples past ~1e19 overflowed float32 squares (inf - inf = NaN dB): every frame looked
    silent and the error said the voice had 0 samples of sound."""
    t = np.arange(32_000) / 16_000
    wav = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    for scale in (1.0, 1e20, 1e37):
        assert trim_silence(wav * np.float32(scale), CONFIG).shape == wav.shape
