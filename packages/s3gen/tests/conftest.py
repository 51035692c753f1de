"""Fixtures of the chatterbox-s3gen tests: one tiny random checkpoint (same tensor names as the
real model, small sizes), a model loaded from it, and two references made of synthetic signals.

The checkpoint and the signal generators come from the shared test-support plugin
(``vllm_cpu_test_support.fixtures``: ``s3gen_checkpoint``, ``tone``, ``speech_tokens``; it needs
neither vLLM nor chatterbox_t3, so `nox -s s3gen` installs it alone with --no-deps)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from chatterbox_s3gen import S3Gen, S3GenReference
from vllm_cpu_test_support.signals import chirp, tone


@pytest.fixture(scope="session")
def tiny_checkpoint(s3gen_checkpoint: Path) -> Path:
    """This folder's tiny checkpoint: S3Gen's files only."""
    return s3gen_checkpoint


@pytest.fixture(scope="session")
def s3gen(tiny_checkpoint: Path) -> S3Gen:
    """Shared tiny model: tests must not change its vocoder or noise (load their own for that)."""
    return S3Gen.from_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="session")
def voice_a(s3gen: S3Gen) -> S3GenReference:
    return s3gen.embed_ref(tone(1.2, 24_000, (220.0, 440.0), seed=1), 24_000)


@pytest.fixture(scope="session")
def voice_b(s3gen: S3Gen) -> S3GenReference:
    return s3gen.embed_ref(chirp(0.9, 16_000, seed=2), 16_000)


@pytest.fixture(scope="session")
def tokens(speech_tokens: Callable[[int, int], list[int]]) -> Callable[[int, int], list[int]]:
    """``tokens(count, seed)`` -> random speech-token ids."""
    return speech_tokens
