"""Shared fixtures of the chatterbox-t3-vllm tests (CPU; vLLM through vllm-cpu-test-support)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

# vLLM on a 2-core CPU box: one OpenMP thread per process, a small KV-cache reservation.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).parent / "data"

# Tiny engines: small KV cache and lengths keep a vLLM engine at well under a GB.
TINY_ENGINE = {
    "dtype": "float32",
    "enforce_eager": True,
    "max_model_len": 320,
    "max_num_seqs": 8,
    "num_gpu_blocks_override": 96,
    "max_num_batched_tokens": 512,
    "seed": 0,
}


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Derived vLLM model directories go to a temporary cache, never to ~/.cache."""
    path = tmp_path_factory.mktemp("chatterbox-vllm-cache")
    previous = os.environ.get("CHATTERBOX_VLLM_CACHE")
    os.environ["CHATTERBOX_VLLM_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("CHATTERBOX_VLLM_CACHE", None)
    else:
        os.environ["CHATTERBOX_VLLM_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from chatterbox_t3.checkpoint import write_random_t3_checkpoint

    return write_random_t3_checkpoint(tmp_path_factory.mktemp("t3-tiny"), "tiny", seed=0)


def random_voice(seed: int, num_prompt_tokens: int = 150) -> Any:
    """A voice with a unit-norm random speaker embedding and random S3 prompt tokens."""
    from chatterbox_t3 import T3Voice

    generator = torch.Generator().manual_seed(seed)
    embedding = torch.nn.functional.normalize(torch.randn(256, generator=generator), dim=0)
    tokens = torch.randint(0, 6561, (num_prompt_tokens,), generator=generator)
    return T3Voice(embedding, tokens)


@pytest.fixture(scope="session")
def make_voice() -> Callable[..., object]:
    return random_voice


@pytest.fixture(scope="session")
def tiny_engine_kwargs() -> dict[str, object]:
    return dict(TINY_ENGINE)


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint: Path) -> Iterator[Any]:
    """The tiny model on vLLM with prefix caching and a roomy KV cache (shared: ~15 s to start)."""
    from chatterbox_t3 import T3Engine

    engine = T3Engine.from_checkpoint(tiny_checkpoint, **TINY_ENGINE)
    yield engine
    engine.shutdown()
