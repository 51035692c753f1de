"""``speed``: faster or slower speech at the same pitch, whole or streamed piece by piece.

The test signal is generated here: a voiced sound (a 140 Hz harmonic series with a formant-like
spectral tilt and a slow amplitude contour), two bursts with a pause between them, so that where
things happen in time (the second burst's onset) and the pitch can be measured on the output."""

from __future__ import annotations

import numpy as np
import pytest

from chatterbox_vllm.controls import CONTROLS, GenerationParams
from chatterbox_vllm.errors import InvalidParameterError
from chatterbox_vllm.speed import SpeedStretcher, change_speed

RATE = 24_000
F0 = 140.0
BURST_SECONDS = 1.2
PAUSE_SECONDS = 0.5


def voiced(seconds: float, f0: float = F0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * RATE)) / RATE
    jitter = 1 + 0.01 * np.sin(2 * np.pi * 4.0 * t)  # a little natural pitch movement
    phase = 2 * np.pi * f0 * np.cumsum(jitter) / RATE
    signal = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k**1.2 for k in range(1, 25))
    contour = 0.6 + 0.4 * np.sin(2 * np.pi * 1.3 * t) ** 2
    fade = np.minimum(1, np.minimum(t, t[::-1]) / 0.02)
    return (0.2 * signal * contour * fade).astype(np.float32)


def two_bursts() -> np.ndarray:
    pause = np.zeros(round(PAUSE_SECONDS * RATE), np.float32)
    return np.concatenate([voiced(BURST_SECONDS), pause, voiced(BURST_SECONDS, seed=1)])


def envelope(audio: np.ndarray) -> np.ndarray:
    """RMS in 10 ms frames."""
    frame = RATE // 100
    usable = audio[: audio.size // frame * frame].reshape(-1, frame)
    return np.sqrt((usable**2).mean(axis=1))


def second_onset_seconds(audio: np.ndarray) -> float:
    """Where the second burst starts: the first loud frame after the pause."""
    loud = envelope(audio) > 0.1 * envelope(audio).max()
    frames = np.flatnonzero(loud)
    gap = np.flatnonzero(np.diff(frames) > 10)[0]  # the pause: > 100 ms without a loud frame
    return frames[gap + 1] / 100


def pitch_hz(audio: np.ndarray) -> float:
    """Median F0 of the loud 40 ms frames, by autocorrelation (60-400 Hz)."""
    frame, estimates = round(0.04 * RATE), []
    level = np.abs(audio).max()
    for start in range(0, audio.size - frame, frame // 2):
        piece = audio[start : start + frame].astype(np.float64)
        if np.abs(piece).max() < 0.3 * level:
            continue
        piece = piece - piece.mean()
        correlation = np.correlate(piece, piece, "full")[frame - 1 :]
        low, high = RATE // 400, RATE // 60
        lag = low + int(np.argmax(correlation[low:high]))
        estimates.append(RATE / lag)
    return float(np.median(estimates))


def semitones(a: float, b: float) -> float:
    return float(12 * abs(np.log2(a / b)))


def streamed(audio: np.ndarray, speed: float, sizes: list[int]) -> tuple[np.ndarray, list[int]]:
    """``audio`` through one SpeedStretcher in pieces of the given sizes (cycled); returns the
    output and where in it the returned pieces meet."""
    stretcher = SpeedStretcher(speed, RATE)
    pieces, start, index = [], 0, 0
    while start < audio.size:
        size = sizes[index % len(sizes)]
        final = start + size >= audio.size
        pieces.append(stretcher.process(audio[start : start + size], final=final))
        start, index = start + size, index + 1
    joins = list(np.cumsum([p.size for p in pieces if p.size])[:-1])
    return np.concatenate(pieces), joins


@pytest.mark.parametrize("speed", [0.25, 0.5, 2.0, 4.0])
def test_duration_scales_by_one_over_speed(speed: float) -> None:
    audio = two_bursts()
    out = change_speed(audio, RATE, speed)
    assert abs(out.size / (audio.size / speed) - 1) < 0.02
    # Not only the length: the content moves in time (the second burst starts 1/speed later).
    original = second_onset_seconds(audio)
    assert abs(second_onset_seconds(out) / (original / speed) - 1) < 0.02


@pytest.mark.parametrize("speed", [0.5, 2.0])
def test_pitch_stays_within_a_semitone(speed: float) -> None:
    audio = voiced(2.0)
    assert semitones(pitch_hz(audio), F0) < 0.2  # the measurement itself is sound
    assert semitones(pitch_hz(change_speed(audio, RATE, speed)), F0) < 1.0
    out, _ = streamed(audio, speed, [RATE // 2])
    assert semitones(pitch_hz(out), F0) < 1.0


def test_speed_one_is_the_audio_itself() -> None:
    audio = voiced(1.0)
    assert change_speed(audio, RATE, 1.0) is audio
    stretcher = SpeedStretcher(1.0, RATE)
    pieces = [audio[:1000], audio[1000:5001], audio[5001:]]
    outputs = [stretcher.process(p, final=i == 2) for i, p in enumerate(pieces)]
    assert all(np.array_equal(a, b) for a, b in zip(outputs, pieces, strict=True))
    assert GenerationParams().speed == 1.0 == CONTROLS["speed"].default


def largest_jump_near(audio: np.ndarray, joins: list[int], radius: int) -> float:
    steps = np.abs(np.diff(audio))
    return max(steps[max(0, j - radius) : j + radius].max() for j in joins)


@pytest.mark.parametrize("speed", [0.5, 2.0])
def test_streamed_pieces_join_without_discontinuities(speed: float) -> None:
    audio = voiced(4.0)
    whole = change_speed(audio, RATE, speed)
    # Uneven pieces, like S3Gen's windows (and an odd one); the output meets at many joins.
    out, joins = streamed(audio, speed, [10_560, 12_000, 7_201, 24_000])
    assert out.size == whole.size  # the same duration as stretching the whole at once
    assert len(joins) >= 5
    steps = np.abs(np.diff(out))
    natural = np.percentile(steps, 99.9)  # the signal's own largest sample-to-sample steps
    assert largest_jump_near(out, joins, 24) <= 1.25 * natural
    # Level is kept across each join (no dip or bump from the crossfade): 20 ms RMS around each
    # join within 3 dB of the output's median level over the 200 ms around it.
    level = envelope(out)
    for join in joins:
        frame = join // (RATE // 100)
        around = envelope(out[max(0, join - 240) : join + 240]).mean()
        typical = np.median(level[max(0, frame - 10) : frame + 10])
        assert 20 * abs(np.log10(around / typical)) < 3.0, (join, around, typical)
    # The check above does catch clicks: stretching each piece on its own leaves them.
    naive = [change_speed(audio[s : s + 12_000], RATE, speed) for s in range(0, audio.size, 12_000)]
    naive_joins = list(np.cumsum([p.size for p in naive])[:-1])
    naive_out = np.concatenate(naive)
    assert largest_jump_near(naive_out, naive_joins, 24) > 1.25 * np.percentile(
        np.abs(np.diff(naive_out)), 99.9
    )


@pytest.mark.parametrize("value", [0.2, 4.5, 0.0, float("nan")])
def test_speed_outside_openais_range_is_refused(value: float) -> None:
    with pytest.raises(InvalidParameterError, match=r"speed must be in \[0.25, 4\]"):
        GenerationParams(speed=value)


def test_speed_without_its_library_is_a_clear_error_before_any_work(monkeypatch) -> None:
    """pedalboard (GPL-3.0) is the opt-in ``speed`` extra: without it a speed other than 1.0 is
    refused when the parameters are made (naming the extra), and 1.0 needs nothing."""
    import importlib.util

    from chatterbox_vllm import GenerationParams, InvalidParameterError

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "pedalboard" else real_find_spec(name, *args),
    )
    with pytest.raises(InvalidParameterError, match=r"chatterbox-vllm\[speed\]"):
        GenerationParams(speed=2.0)
    assert GenerationParams(speed=1.0).speed == 1.0
