"""Synthetic test signals: voice-like recordings, tones, chirps and speech-token ids.

Random weights make any audio acceptable to the models, but tests need recordings that behave like
speech where it matters (a pitch, harmonics, syllable-rate loudness changes that survive silence
trimming, a little noise so nothing is perfectly periodic) and that are identical on every run
(all randomness is seeded). One generator per kind, shared by every test folder.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

SPEECH_TOKEN_VOCAB = 6561
"""S3 speech codes are ``[0, 6561)`` (start/stop and other control ids lie above)."""


def voice_signal(seconds: float, rate: int, pitch: float, seed: int) -> np.ndarray:
    """A voice-like mono recording (numpy float32): a 5-harmonic stack whose fundamental
    ``pitch`` Hz wobbles by 4 % at 0.5 Hz, a 3.5 Hz syllable envelope and seeded noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = pitch * (1 + 0.04 * np.sin(2 * np.pi * 0.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(0.25 / k * np.sin(k * phase) for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.clip(np.sin(2 * np.pi * 3.5 * t), 0, None)
    return (voiced * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def tone(
    seconds: float,
    sample_rate: int = 24_000,
    freqs: tuple[float, ...] = (220.0, 440.0),
    noise: float = 0.01,
    seed: int = 0,
) -> torch.Tensor:
    """A float32 tensor: sines at ``freqs`` (amplitude 0.3 / rank) plus seeded Gaussian noise."""
    t = torch.arange(int(round(seconds * sample_rate)), dtype=torch.float64) / sample_rate
    wav = sum(0.3 / (i + 1) * torch.sin(2 * math.pi * f * t) for i, f in enumerate(freqs))
    wav = wav + noise * torch.randn(
        t.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    return wav.float()


def chirp(seconds: float, sample_rate: int = 16_000, seed: int = 2) -> torch.Tensor:
    """A float32 tensor: a rising chirp (120 Hz + 600 Hz/s) plus seeded noise, a reference
    clearly different from :func:`tone`."""
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float64) / sample_rate
    wav = 0.4 * torch.sin(2 * math.pi * (120 * t + 300 * t**2))
    noise = 0.02 * torch.randn(
        t.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    return (wav + noise).float()


def random_speech_tokens(count: int, seed: int) -> list[int]:
    """``count`` seeded speech-token ids in ``[0, 6561)``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, SPEECH_TOKEN_VOCAB, (count,), generator=generator).tolist()


def write_voice_files(directory: Path) -> dict[str, Path]:
    """Two reference recordings written with soundfile, as a user's files would be:
    ``low``: 3 s at 24 kHz, 120 Hz, wav; ``high``: 4 s at 16 kHz, 230 Hz, flac."""
    import soundfile

    directory.mkdir(parents=True, exist_ok=True)
    low = directory / "low.wav"
    soundfile.write(low, voice_signal(3.0, 24_000, 120.0, seed=1), 24_000)
    high = directory / "high.flac"
    soundfile.write(high, voice_signal(4.0, 16_000, 230.0, seed=2), 16_000)
    return {"low": low, "high": high}


def write_voice_wav(path: Path, rate: int = 22_050, seconds: float = 4.0) -> Path:
    """One voice recording at a rate the models do not use (22.05 kHz: resampled on load)."""
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, voice_signal(seconds, rate, 140.0, seed=9), rate)
    return path
