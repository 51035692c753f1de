"""Tiny random checkpoints for tests, each written by its own component's writer.

Every function imports its component only when called, so this module (and the pytest plugin
that uses it) loads in an environment that holds one component alone (``nox -s s3gen`` has no
vLLM and no chatterbox_t3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_SEED = 0
"""Seed of the session-wide tiny checkpoints (tests that need other weights write their own)."""


def write_t3_checkpoint(directory: Path, seed: int = TINY_SEED) -> Path:
    """T3's files only (``t3_cfg.safetensors``, ``ve.safetensors``, ``tokenizer.json``,
    ``t3_config.json``) by :func:`chatterbox_t3.write_random_t3_checkpoint`."""
    from chatterbox_t3.checkpoint import write_random_t3_checkpoint

    return write_random_t3_checkpoint(directory, "tiny", seed=seed)


def write_s3gen_checkpoint(directory: Path, seed: int = TINY_SEED) -> Path:
    """S3Gen's files only (``s3gen.safetensors``, ``s3gen_config.json``); returns the directory."""
    from chatterbox_s3gen import write_random_s3gen_checkpoint

    write_random_s3gen_checkpoint(directory, size="tiny", seed=seed)
    return directory


def write_chatterbox_checkpoint(directory: Path, seed: int = TINY_SEED) -> Path:
    """The whole product checkpoint (both components plus ``conds.pt``), by the product's own
    composer (``chatterbox-vllm make-random-checkpoint``)."""
    from chatterbox_vllm.checkpoint import make_random_checkpoint

    return make_random_checkpoint(directory, "tiny", seed=seed)


def random_t3_voice(seed: int, num_prompt_tokens: int = 150) -> Any:
    """A :class:`chatterbox_t3.T3Voice` with a unit-norm random speaker embedding and random S3
    prompt tokens (no audio involved)."""
    import torch

    from chatterbox_t3 import T3Voice

    generator = torch.Generator().manual_seed(seed)
    embedding = torch.nn.functional.normalize(torch.randn(256, generator=generator), dim=0)
    tokens = torch.randint(0, 6561, (num_prompt_tokens,), generator=generator)
    return T3Voice(embedding, tokens)
