"""Voice-reference loading/validation, resampling, crossfade joining, saving."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from chatterbox_vllm.audio import (
    DEFAULT_CROSSFADE_SECONDS,
    S3GEN_SAMPLE_RATE,
    crossfade_overlaps,
    equal_power_crossfade_join,
    load_voice_audio,
    save_audio,
    to_tokenizer_rate,
)
from chatterbox_vllm.errors import (
    AudioError,
    AudioFileNotFoundError,
    AudioTooShortError,
    ChatterboxError,
    CorruptAudioError,
    InvalidAudioError,
    SilentAudioError,
    UnsupportedAudioFormatError,
)


def _sine(freq: float, seconds: float, rate: int, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(wave: torch.Tensor, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    return float(np.argmax(spectrum) * rate / wave.numel())


def test_wav_at_24k_loads_unchanged(tmp_path: Path) -> None:
    wave = _sine(220, 2.0, S3GEN_SAMPLE_RATE)
    soundfile.write(tmp_path / "v.wav", wave, S3GEN_SAMPLE_RATE, subtype="FLOAT")
    loaded = load_voice_audio(tmp_path / "v.wav")
    assert loaded.dtype == torch.float32 and loaded.shape == (wave.size,)
    torch.testing.assert_close(loaded, torch.from_numpy(wave))


def test_48k_stereo_is_downmixed_and_resampled_to_24k(tmp_path: Path) -> None:
    left = _sine(440, 1.5, 48_000, 0.4)
    right = _sine(440, 1.5, 48_000, 0.2)
    soundfile.write(tmp_path / "s.flac", np.stack([left, right], axis=1), 48_000)
    loaded = load_voice_audio(tmp_path / "s.flac")
    assert loaded.shape == (math.ceil(left.size / 2),)
    assert _peak_hz(loaded, S3GEN_SAMPLE_RATE) == pytest.approx(440, abs=1)
    # Mono mix of 0.4 and 0.2 amplitude sines: amplitude 0.3 (FLAC is 16-bit).
    assert float(loaded[1000:-1000].abs().max()) == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    # librosa 0.11.0's load(sr=24000) of n samples at 44.1 kHz: ceil(n * (24000 / 44100)), the
    # ratio rounded first, so 7 s and 16.5 s give one (zero) sample more than n * 24000 / 44100.
    [(7.0, 168_001), (16.5, 396_001), (6.5, 156_000)],
)
def test_resampled_length_is_the_reference_loaders(seconds: float, expected: int) -> None:
    loaded = load_voice_audio((_sine(200, seconds, 44_100), 44_100))
    assert loaded.shape == (expected,)


def test_waveform_tuple_input_channels_first() -> None:
    stereo = torch.from_numpy(np.stack([_sine(300, 1.2, 16_000)] * 2))
    loaded = load_voice_audio((stereo, 16_000))
    assert loaded.shape == (math.ceil(stereo.shape[1] * 1.5),)
    assert _peak_hz(loaded, S3GEN_SAMPLE_RATE) == pytest.approx(300, abs=1)
    with pytest.raises(InvalidAudioError, match=r"looks like \[samples, channels\]"):
        load_voice_audio((stereo.T.contiguous(), 16_000))
    with pytest.raises(InvalidAudioError, match="sample_rate must be an int"):
        load_voice_audio((stereo, 16_000.0))  # type: ignore[arg-type]
    for no_channels in (stereo[:0], stereo[:0].numpy()):  # shape (0, samples)
        with pytest.raises(InvalidAudioError, match=r"\(0, 19200\) has no channels"):
            load_voice_audio((no_channels, 16_000))


def test_integer_waveforms_are_pcm_by_their_full_scale() -> None:
    # What scipy.io.wavfile.read and soundfile.read(dtype="int16") return for a WAV.
    sine = _sine(300, 1.2, 16_000, amplitude=0.5)
    expected = load_voice_audio((sine, 16_000))
    for pcm in (
        np.round(sine * 32767).astype(np.int16),
        torch.from_numpy(np.round(sine * 32767).astype(np.int16)),
        np.round(sine.astype(np.float64) * 2147483647).astype(np.int32),
    ):
        loaded = load_voice_audio((pcm, 16_000))
        assert loaded.dtype == torch.float32 and loaded.shape == expected.shape
        torch.testing.assert_close(loaded, expected, atol=1e-4, rtol=0)
    # scipy.io.wavfile.read returns (rate, data): the order is named, not "sample_rate must be
    # an int, got ndarray".
    swapped = (16_000, np.round(sine * 32767).astype(np.int16))
    with pytest.raises(InvalidAudioError, match=r"is \(sample_rate, waveform\), the order scipy"):
        load_voice_audio(swapped)  # type: ignore[arg-type]
    for other in (np.int64, np.uint8, np.int8):
        with pytest.raises(InvalidAudioError, match=r"taken as 16- or 32-bit PCM \(int16, int32\)"):
            load_voice_audio((np.round(sine * 100).astype(other), 16_000))


def test_16k_copy_keeps_the_signal() -> None:
    wave = torch.from_numpy(_sine(500, 2.0, S3GEN_SAMPLE_RATE))
    copy = to_tokenizer_rate(wave)
    assert copy.shape == (math.ceil(wave.numel() * 2 / 3),)
    assert _peak_hz(copy, 16_000) == pytest.approx(500, abs=1)


def test_unsupported_format_names_what_is_supported(tmp_path: Path) -> None:
    (tmp_path / "voice.txt").write_text("not audio")
    with pytest.raises(UnsupportedAudioFormatError, match=r"'\.txt'.*supported: .*\.wav"):
        load_voice_audio(tmp_path / "voice.txt")


def test_corrupt_file_is_reported_as_corrupt(tmp_path: Path) -> None:
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" * 20)
    with pytest.raises(CorruptAudioError, match=r"could not decode .*broken\.wav as WAV"):
        load_voice_audio(tmp_path / "broken.wav")


def test_missing_or_empty_path_is_an_audio_error() -> None:
    # The package's root (and still FileNotFoundError, which generic handlers catch).
    for path in ("/nonexistent/voice.wav", Path("/nonexistent/voice.wav")):
        with pytest.raises(AudioFileNotFoundError, match="voice audio file not found") as caught:
            load_voice_audio(path)
        assert isinstance(caught.value, AudioError) and isinstance(caught.value, ChatterboxError)
        assert isinstance(caught.value, FileNotFoundError)
    # An empty path (an unset setting) is not the working directory.
    with pytest.raises(InvalidAudioError, match="voice audio path is empty"):
        load_voice_audio("")


def test_too_short_silent_and_nan_audio_are_rejected(tmp_path: Path) -> None:
    soundfile.write(tmp_path / "short.wav", _sine(200, 0.2, 24_000), 24_000)
    with pytest.raises(AudioTooShortError, match=r"0\.20 s long; at least 1\.0 s"):
        load_voice_audio(tmp_path / "short.wav")
    soundfile.write(tmp_path / "silent.wav", np.zeros(48_000, np.float32), 24_000)
    with pytest.raises(SilentAudioError, match="silent"):
        load_voice_audio(tmp_path / "silent.wav")
    wave = _sine(200, 2.0, 24_000)
    wave[100] = np.nan
    with pytest.raises(InvalidAudioError, match="NaN"):
        load_voice_audio((wave, 24_000))


def test_crossfade_lengths_add_up_and_gains_are_equal_power() -> None:
    fade = int(DEFAULT_CROSSFADE_SECONDS * S3GEN_SAMPLE_RATE)
    assert fade == 1200
    ones = [torch.ones(10_000), torch.ones(7_000), torch.ones(9_000)]
    joined = equal_power_crossfade_join(ones, fade)
    assert joined.numel() == 26_000 - 2 * fade
    # Fading out a constant into silence and silence into a constant traces cos and sin gains.
    out_gain = equal_power_crossfade_join([torch.ones(5000), torch.zeros(5000)], fade)
    in_gain = equal_power_crossfade_join([torch.zeros(5000), torch.ones(5000)], fade)
    region = slice(5000 - fade, 5000)
    torch.testing.assert_close(
        out_gain[region] ** 2 + in_gain[region] ** 2, torch.ones(fade), atol=1e-6, rtol=0
    )
    assert torch.all(out_gain[region][1:] <= out_gain[region][:-1])  # monotone fade-out
    # Outside the overlap the chunks are copied untouched.
    a, b = torch.randn(4000), torch.randn(4000)
    ab = equal_power_crossfade_join([a, b], fade)
    torch.testing.assert_close(ab[: 4000 - fade], a[: 4000 - fade])
    torch.testing.assert_close(ab[4000:], b[fade:])


def test_crossfade_shrinks_for_short_chunks() -> None:
    assert crossfade_overlaps([10_000, 1000, 10_000], 1200) == [500, 500]
    joined = equal_power_crossfade_join(
        [torch.ones(10_000), torch.ones(1000), torch.ones(10_000)], 1200
    )
    assert joined.numel() == 21_000 - 1000
    assert equal_power_crossfade_join([torch.ones(5)], 1200).numel() == 5


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".mp3"])
def test_save_audio_round_trip(tmp_path: Path, suffix: str) -> None:
    wave = torch.from_numpy(_sine(440, 1.0, 24_000))
    path = save_audio(tmp_path / f"out{suffix}", wave, 24_000)
    info = soundfile.info(str(path))
    assert info.samplerate == 24_000 and info.channels == 1
    if suffix != ".mp3":  # MP3 frames pad the length
        assert info.frames == wave.numel()
    with pytest.raises(UnsupportedAudioFormatError, match=r"cannot write '\.xyz'"):
        save_audio(tmp_path / "out.xyz", wave, 24_000)
