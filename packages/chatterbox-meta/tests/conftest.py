"""Fixtures of the chatterbox-vllm tests. Checkpoints, voice recordings, the Hub cache layout and
engine settings come from the shared test-support plugin (``vllm_cpu_test_support.fixtures``:
``chatterbox_checkpoint``, ``voice_files``, ``hub_cache``, ``chatterbox_engine_options``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(chatterbox_checkpoint: Path) -> Path:
    """This folder's tiny checkpoint: the whole product's (both components and ``conds.pt``)."""
    return chatterbox_checkpoint


@pytest.fixture(scope="session")
def tts(tiny_checkpoint: Path, chatterbox_engine_options: dict[str, Any]):
    """One ChatterboxTTS (real vLLM engine on the CPU test support) shared by the session."""
    from chatterbox_vllm import ChatterboxTTS

    engine = ChatterboxTTS.from_local(
        tiny_checkpoint, watermark=False, device="cpu", **chatterbox_engine_options
    )
    yield engine
    engine.close()
