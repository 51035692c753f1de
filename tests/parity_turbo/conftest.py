"""Fixtures shared by the Chatterbox Turbo parity tests (reference chatterbox-tts 0.1.7).

``turbo_tiny_dir``: a tiny random Turbo checkpoint (2-layer 256-wide GPT-2, a generated GPT-2 BPE
tokenizer with the paralinguistic tags) in the real file layout; ``reference_turbo_tokenizer``:
the tokenizer as the reference loads it (``AutoTokenizer`` on the directory, pad = eos).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REFERENCE_VERSION = "0.1.7"
TURBO_SEED = 2323


def _reference_installed() -> bool:
    try:
        return version("chatterbox-tts") == REFERENCE_VERSION
    except PackageNotFoundError:
        return False


if not _reference_installed():
    pytest.skip(
        f"the reference chatterbox-tts {REFERENCE_VERSION} is not installed (nox -s parity_turbo)",
        allow_module_level=True,
    )


@pytest.fixture(scope="session")
def turbo_tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from chatterbox_t3.checkpoint import write_random_t3_checkpoint

    return write_random_t3_checkpoint(
        tmp_path_factory.mktemp("t3-turbo-tiny"), "tiny", seed=TURBO_SEED, model="turbo"
    )


@pytest.fixture(scope="session")
def reference_turbo_tokenizer(turbo_tiny_dir: Path) -> Any:
    from transformers import AutoTokenizer

    # chatterbox-tts 0.1.7 ChatterboxTurboTTS.from_local's loading, line for line.
    tokenizer = AutoTokenizer.from_pretrained(turbo_tiny_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.fixture(scope="session")
def turbo_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private derived-model cache (``CHATTERBOX_VLLM_CACHE``) for the session's engines."""
    path = tmp_path_factory.mktemp("vllm-model-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHATTERBOX_VLLM_CACHE", str(path))
        yield path
