"""Shared fixtures: one tiny random checkpoint (same tensor names as the real model, small sizes)
and a model loaded from it; synthetic voices made of tones/chirps with seeded noise."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from chatterbox_s3gen import S3Gen, S3GenReference, write_random_s3gen_checkpoint

Tone = Callable[..., torch.Tensor]


def _tone(
    seconds: float,
    sample_rate: int = 24_000,
    freqs: tuple[float, ...] = (220.0, 440.0),
    noise: float = 0.01,
    seed: int = 0,
) -> torch.Tensor:
    t = torch.arange(int(round(seconds * sample_rate)), dtype=torch.float64) / sample_rate
    wav = sum(0.3 / (i + 1) * torch.sin(2 * math.pi * f * t) for i, f in enumerate(freqs))
    wav = wav + noise * torch.randn(
        t.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    return wav.float()


@pytest.fixture(scope="session")
def tone() -> Tone:
    """``tone(seconds, sample_rate=24000, freqs=(220, 440), noise=0.01, seed=0)`` -> float32 wav."""
    return _tone


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("s3gen-tiny")
    write_random_s3gen_checkpoint(directory, size="tiny", seed=0)
    return directory


@pytest.fixture(scope="session")
def s3gen(tiny_checkpoint: Path) -> S3Gen:
    """Shared tiny model: tests must not change its vocoder or noise (load their own for that)."""
    return S3Gen.from_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="session")
def voice_a(s3gen: S3Gen) -> S3GenReference:
    return s3gen.embed_ref(_tone(1.2, 24_000, (220.0, 440.0), seed=1), 24_000)


@pytest.fixture(scope="session")
def voice_b(s3gen: S3Gen) -> S3GenReference:
    t = torch.arange(int(0.9 * 16_000), dtype=torch.float64) / 16_000
    chirp = 0.4 * torch.sin(2 * math.pi * (120 * t + 300 * t**2))
    noise = 0.02 * torch.randn(
        t.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    return s3gen.embed_ref((chirp + noise).float(), 16_000)


def random_tokens(count: int, seed: int) -> list[int]:
    return torch.randint(0, 6561, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture(scope="session")
def tokens() -> Callable[[int, int], list[int]]:
    """``tokens(count, seed)`` -> random speech-token ids."""
    return random_tokens
