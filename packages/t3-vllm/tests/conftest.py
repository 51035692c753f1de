"""Fixtures of the chatterbox-t3-vllm tests (CPU; vLLM through vllm-cpu-test-support).

The checkpoint, random voices and engine settings come from the shared test-support plugin
(``vllm_cpu_test_support.fixtures``: ``t3_checkpoint``, ``make_t3_voice``, ``t3_engine_options``);
the names below are what this folder's tests call them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vllm_cpu_test_support.settings import T3_ENGINE, use_cpu_env

# Before any engine (or torch thread pool) starts.
use_cpu_env()


@pytest.fixture(scope="session")
def tiny_checkpoint(t3_checkpoint: Path) -> Path:
    """This folder's tiny checkpoint: T3's files only."""
    return t3_checkpoint


@pytest.fixture(scope="session")
def make_voice(make_t3_voice: Callable[..., Any]) -> Callable[..., Any]:
    """``make_voice(seed, num_prompt_tokens=150)`` -> a random T3Voice."""
    return make_t3_voice


@pytest.fixture(scope="session")
def tiny_engine_kwargs(t3_engine_options: dict[str, Any]) -> dict[str, Any]:
    return t3_engine_options


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint: Path) -> Iterator[Any]:
    """The tiny model on vLLM with prefix caching and a roomy KV cache (shared: ~15 s to start)."""
    from chatterbox_t3 import T3Engine

    engine = T3Engine.from_checkpoint(tiny_checkpoint, **T3_ENGINE)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def triton_attention() -> Iterator[None]:
    """GPU graph tests: vLLM 0.9.2 serves float32 with FlexAttention, which cannot be captured
    whole; Triton attention can (and is what the device harness runs anyway)."""
    previous = os.environ.get("VLLM_ATTENTION_BACKEND")
    os.environ.setdefault("VLLM_ATTENTION_BACKEND", "TRITON_ATTN_VLLM_V1")
    yield
    if previous is None:
        os.environ.pop("VLLM_ATTENTION_BACKEND", None)
