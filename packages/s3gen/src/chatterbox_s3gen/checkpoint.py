"""Checkpoint I/O: strict loading of ``s3gen.safetensors`` (the released layout: 2490 tensors,
see ``tests/data/s3gen.json``) and a writer of random checkpoints in the same layout.

A checkpoint is a directory holding ``s3gen.safetensors`` and, for non-released sizes,
``s3gen_config.json`` (absent means :class:`S3GenConfig` defaults, i.e. the real model). A path
to the ``.safetensors`` file itself works too (the config is looked up next to it)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from chatterbox_s3gen.config import S3GenConfig
from chatterbox_s3gen.constants import CHECKPOINT_FILENAME, CONFIG_FILENAME

if TYPE_CHECKING:
    from chatterbox_s3gen.hift import HiFTGenerator

logger = logging.getLogger(__name__)

# Derived buffers a checkpoint may omit (the reference declares them ``ignore_state_dict_missing``).
OPTIONAL_KEYS = frozenset({"tokenizer._mel_filters", "tokenizer.window"})
_LEGACY_WEIGHT_NORM = re.compile(r"^(.*)\.weight_(g|v)$")
_MAX_LISTED = 12


class CheckpointError(ValueError):
    """The checkpoint does not match the model layout (names the offending tensors)."""


def resolve_checkpoint(path: str | Path) -> tuple[Path, S3GenConfig]:
    """``(safetensors file, config)`` for a checkpoint directory or file."""
    path = Path(path)
    if path.is_dir():
        weights = path / CHECKPOINT_FILENAME
        config_file = path / CONFIG_FILENAME
    else:
        weights = path
        config_file = path.parent / CONFIG_FILENAME
    if not weights.is_file():
        raise FileNotFoundError(
            f"no S3Gen checkpoint at {weights} (expected a directory with {CHECKPOINT_FILENAME} "
            "or the .safetensors file itself)"
        )
    config = S3GenConfig.load(config_file) if config_file.is_file() else S3GenConfig()
    return weights, config


def _legacy_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename old-style ``weight_g``/``weight_v`` weight-norm tensors to the parametrization names."""
    renamed = {}
    for name, tensor in state.items():
        match = _LEGACY_WEIGHT_NORM.match(name)
        if match:
            slot = "original0" if match.group(2) == "g" else "original1"
            name = f"{match.group(1)}.parametrizations.weight.{slot}"
        renamed[name] = tensor
    return renamed


def _listing(names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:_MAX_LISTED])
    more = f" (+{len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
    return f"{shown}{more}"


def check_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint", prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Validate ``state`` against ``model.state_dict()`` (names, shapes, dtype kinds) and return
    it with legacy weight-norm names converted. ``prefix`` restricts the check to keys under it
    (for loading a sub-module from a full checkpoint). Raises :class:`CheckpointError`."""
    expected = model.state_dict()
    state = _legacy_names(state)
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    optional = {k[len(prefix) :] for k in OPTIONAL_KEYS if k.startswith(prefix)}
    missing = set(expected) - set(state) - optional
    unexpected = set(state) - set(expected)
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} missing tensor(s): {_listing(prefix + k for k in missing)}"
        )
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected tensor(s): {_listing(prefix + k for k in unexpected)}"
        )
    wrong_shape = []
    for name in sorted(set(expected) & set(state)):
        want, got = expected[name], state[name]
        if tuple(want.shape) != tuple(got.shape):
            wrong_shape.append(
                f"{prefix}{name} has shape {list(got.shape)}, expected {list(want.shape)}"
            )
        elif want.is_floating_point() != got.is_floating_point():
            wrong_shape.append(f"{prefix}{name} has dtype {got.dtype}, expected {want.dtype}")
    if wrong_shape:
        problems.append(
            f"{len(wrong_shape)} mismatched tensor(s): " + "; ".join(wrong_shape[:_MAX_LISTED])
        )
    if problems:
        raise CheckpointError(f"{source} does not match the S3Gen layout: " + " | ".join(problems))
    return state


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strictly load ``state`` (see :func:`check_state_dict`) into ``model``."""
    state = check_state_dict(model, state, source)
    absent = OPTIONAL_KEYS - set(state)
    if absent:
        logger.info("%s lacks %s; using the computed values", source, sorted(absent))
    expected = model.state_dict()
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    leftover = set(result.missing_keys) - OPTIONAL_KEYS
    if (
        leftover or result.unexpected_keys
    ):  # check_state_dict guarantees neither; keep the invariant loud
        raise CheckpointError(
            f"{source}: could not load {sorted(leftover)} / {sorted(result.unexpected_keys)}"
        )


def load_hift(checkpoint: str | Path, device: torch.device | str = "cpu") -> HiFTGenerator:
    """Only the HiFT vocoder (``mel2wav.*``) of a checkpoint, weight norm folded, eval mode."""
    from chatterbox_s3gen.hift import HiFTGenerator

    weights, config = resolve_checkpoint(checkpoint)
    hift = HiFTGenerator(config)
    state = check_state_dict(hift, load_file(str(weights)), str(weights), prefix="mel2wav.")
    hift.load_state_dict(state, strict=True)
    hift.fold_weight_norm()
    return hift.to(device).eval()


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


def write_random_s3gen_checkpoint(directory: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight ``s3gen.safetensors`` in the released layout and return its path.

    ``size="full"`` writes every one of the real model's 2490 tensors with their real names,
    shapes and dtypes (~1.06 GB float32); ``"tiny"`` writes the same names at small sizes plus
    ``s3gen_config.json``. Weights are PyTorch's default initialisation (deterministic in
    ``seed``) with sane normalisation statistics; the tokenizer's mel filterbank and window are
    the true derived values."""
    from chatterbox_s3gen.model import S3Gen

    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    config = S3GenConfig.tiny() if size == "tiny" else S3GenConfig()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = S3Gen(config)
    _sanitize_random_state(model, torch.Generator().manual_seed(seed + 1))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = directory / CHECKPOINT_FILENAME
    save_file(
        state, str(path), metadata={"format": "pt", "chatterbox_s3gen": f"random-{size}-seed{seed}"}
    )
    config_path = directory / CONFIG_FILENAME
    if size == "tiny":
        config.save(config_path)
    elif config_path.exists():
        config_path.unlink()  # a stale tiny config would make the loader build the wrong sizes
    logger.info("wrote random %s S3Gen checkpoint (%d tensors) to %s", size, len(state), path)
    return path
