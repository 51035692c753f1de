"""Random-weight S3Gen checkpoints in the released layout, for tests and benchmarks.

Separate from :mod:`chatterbox_s3gen.checkpoint` because it builds a whole
:class:`~chatterbox_s3gen.model.S3Gen` (whose loader is that module): keeping the writer there
made ``checkpoint`` and ``model`` import each other."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from chatterbox_s3gen.config import S3GenConfig
from chatterbox_s3gen.constants import (
    CHECKPOINT_FILENAME,
    CONFIG_FILENAME,
    MEANFLOW_CHECKPOINT_FILENAME,
    TORCH_CHECKPOINT_FILENAME,
)
from chatterbox_s3gen.errors import ConfigurationError
from chatterbox_s3gen.model import S3Gen

logger = logging.getLogger(__name__)


@torch.no_grad()
def _sanitize_random_state(model: nn.Module, generator: torch.Generator) -> None:
    """Turn default initialisation into a plausible trained state: BatchNorm running statistics
    near N(0, 1) inputs (and a positive tracked-batch count), LayerNorm/BN affine near identity."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            assert module.running_var is not None and module.num_batches_tracked is not None
            module.running_mean.copy_(
                0.1 * torch.randn(module.running_mean.shape, generator=generator)
            )
            module.running_var.copy_(
                torch.empty(module.running_var.shape).uniform_(0.5, 1.5, generator=generator)
            )
            module.num_batches_tracked.fill_(1000)
        if (
            isinstance(module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm)
            and module.weight is not None
        ):
            module.weight.copy_(1.0 + 0.05 * torch.randn(module.weight.shape, generator=generator))
            module.bias.copy_(0.05 * torch.randn(module.bias.shape, generator=generator))


WEIGHT_FILES = {
    "safetensors": CHECKPOINT_FILENAME,
    "pt": TORCH_CHECKPOINT_FILENAME,
    "meanflow": MEANFLOW_CHECKPOINT_FILENAME,
}
"""``file_format`` of :func:`write_random_s3gen_checkpoint` -> the file it writes."""


def write_random_s3gen_checkpoint(
    directory: str | Path, size: str = "tiny", seed: int = 0, file_format: str = "safetensors"
) -> Path:
    """Write a random-weight ``s3gen.safetensors`` in the released layout and return its path.

    ``file_format="pt"`` writes the same tensors as ``s3gen.pt`` with ``torch.save`` instead (the
    multilingual release's file); ``file_format="meanflow"`` writes Chatterbox Turbo's
    ``s3gen_meanflow.safetensors`` (the meanflow decoder: the same tensors plus the estimator's
    ``time_embed_mixer.weight``). The other formats' files, if the directory has any, are removed
    so the loader cannot pick a stale one. Equal seeds give equal tensors in the ``safetensors``
    and ``pt`` formats.

    ``size="full"`` writes every one of the real model's 2490 tensors with their real names,
    shapes and dtypes (~1.06 GB float32); ``"tiny"`` writes the same names at small sizes plus
    ``s3gen_config.json``. Weights are PyTorch's default initialisation (deterministic in
    ``seed``) with sane normalisation statistics; the tokenizer's mel filterbank and window are
    the true derived values."""
    if size not in ("tiny", "full"):
        raise ConfigurationError(f"size must be 'tiny' or 'full', got {size!r}")
    if file_format not in WEIGHT_FILES:
        raise ConfigurationError(
            f"file_format must be 'safetensors' ({CHECKPOINT_FILENAME}), 'pt' "
            f"({TORCH_CHECKPOINT_FILENAME}) or 'meanflow' ({MEANFLOW_CHECKPOINT_FILENAME}), "
            f"got {file_format!r}"
        )
    config = S3GenConfig.tiny() if size == "tiny" else S3GenConfig()
    config = dataclasses.replace(config, meanflow=file_format == "meanflow")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = S3Gen(config)
    _sanitize_random_state(model, torch.Generator().manual_seed(seed + 1))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = directory / WEIGHT_FILES[file_format]
    if file_format == "pt":
        torch.save(state, path)
    else:
        save_file(
            state,
            str(path),
            metadata={"format": "pt", "chatterbox_s3gen": f"random-{size}-seed{seed}"},
        )
    for other in WEIGHT_FILES.values():
        if other != path.name and (directory / other).exists():
            (directory / other).unlink()
    config_path = directory / CONFIG_FILENAME
    if size == "tiny":
        config.save(config_path)
    elif config_path.exists():
        config_path.unlink()  # a stale tiny config would make the loader build the wrong sizes
    logger.info("wrote random %s S3Gen checkpoint (%d tensors) to %s", size, len(state), path)
    return path
