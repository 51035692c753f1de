"""Fixtures of the Ray replica tests: a tiny random checkpoint and voice recordings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random checkpoint in the real layout, written by the product's composer."""
    from chatterbox_vllm.checkpoint import make_random_checkpoint

    return make_random_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"), "tiny", seed=0)


def voice_signal(seconds: float, rate: int, pitch: float, seed: int) -> np.ndarray:
    """A voice-like recording: harmonics with a pitch wobble, a syllable-rate envelope, noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = pitch * (1 + 0.04 * np.sin(2 * np.pi * 0.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(0.25 / k * np.sin(k * phase) for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.clip(np.sin(2 * np.pi * 3.5 * t), 0, None)
    return (voiced * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="session")
def voice_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two reference recordings: a 24 kHz wav and a 16 kHz flac."""
    import soundfile

    directory = tmp_path_factory.mktemp("voices")
    low = directory / "low.wav"
    soundfile.write(low, voice_signal(3.0, 24_000, 120.0, seed=1), 24_000)
    high = directory / "high.flac"
    soundfile.write(high, voice_signal(4.0, 16_000, 230.0, seed=2), 16_000)
    return {"low": low, "high": high}
