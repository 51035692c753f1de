"""Checkpoint I/O: strict loading of ``s3gen.safetensors`` (the English release: 2490 tensors,
see ``tests/data/s3gen.json``) or ``s3gen.pt`` (the multilingual release: a ``torch.save`` state
dict of the same 2490 tensors, read with ``torch.load(weights_only=True)``), and a writer of random
checkpoints in either layout.

A checkpoint is a directory holding ``s3gen.safetensors`` or ``s3gen.pt`` (the first found in
:data:`~chatterbox_s3gen.constants.CHECKPOINT_FILENAMES` order) and, for non-released sizes,
``s3gen_config.json`` (absent means :class:`S3GenConfig` defaults, i.e. the real model). A path
to the weight file itself works too (the config is looked up next to it). Every problem
is a :class:`~chatterbox_s3gen.errors.CheckpointError` naming the file: missing, not a directory,
truncated or corrupt (say so and suggest re-downloading instead of a safetensors traceback), or a
layout mismatch. The random-weight writer is :mod:`chatterbox_s3gen.random_checkpoint` (it builds
an :class:`~chatterbox_s3gen.model.S3Gen`, which loads through this module)."""

from __future__ import annotations

import dataclasses
import logging
import pickle
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from chatterbox_s3gen.config import S3GenConfig
from chatterbox_s3gen.constants import (
    CHECKPOINT_FILENAME,
    CHECKPOINT_FILENAMES,
    CONFIG_FILENAME,
    MEANFLOW_CHECKPOINT_FILENAME,
    TORCH_CHECKPOINT_FILENAME,
)
from chatterbox_s3gen.errors import (
    CheckpointError,
    CorruptCheckpointFileError,
    MissingCheckpointFileError,
    NotADirectoryCheckpointError,
)
from chatterbox_s3gen.hift import HiFTGenerator

__all__ = [
    "CheckpointError",
    "check_state_dict",
    "load_checkpoint_file",
    "load_hift",
    "load_into",
    "resolve_checkpoint",
]

logger = logging.getLogger(__name__)

# Derived buffers a checkpoint may omit (the reference declares them ``ignore_state_dict_missing``).
OPTIONAL_KEYS = frozenset({"tokenizer._mel_filters", "tokenizer.window"})
_LEGACY_WEIGHT_NORM = re.compile(r"^(.*)\.weight_(g|v)$")
_MAX_LISTED = 12


WEIGHT_SUFFIXES = (".safetensors", ".pt")
_EXPECTED = (
    f"a directory with {CHECKPOINT_FILENAME}, {TORCH_CHECKPOINT_FILENAME} or "
    f"{MEANFLOW_CHECKPOINT_FILENAME}, or the weight file itself"
)


def resolve_checkpoint(path: str | Path) -> tuple[Path, S3GenConfig]:
    """``(weight file, config)`` for a checkpoint directory or weight file. A directory holding
    several weight files uses the first of :data:`CHECKPOINT_FILENAMES`. The file's name decides
    the decoder, as the reference's loaders do: ``s3gen_meanflow.safetensors`` is Turbo's meanflow
    decoder (``config.meanflow``), any other name the standard one."""
    weights, config = _resolve(path)
    return weights, dataclasses.replace(
        config, meanflow=weights.name == MEANFLOW_CHECKPOINT_FILENAME
    )


def _resolve(path: str | Path) -> tuple[Path, S3GenConfig]:
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in CHECKPOINT_FILENAMES if (path / name).is_file()]
        weights = found[0] if found else path / CHECKPOINT_FILENAME
        if len(found) > 1:
            logger.info("%s holds %s; loading %s", path, [f.name for f in found], weights.name)
        config_file = path / CONFIG_FILENAME
    elif path.is_file() and path.suffix not in WEIGHT_SUFFIXES:
        # A model directory given as some other file: say what it is, not "no checkpoint".
        raise NotADirectoryCheckpointError(
            f"S3Gen checkpoint path {path} is not a directory (expected {_EXPECTED})"
        )
    else:
        weights = path
        config_file = path.parent / CONFIG_FILENAME
    if not weights.is_file():
        where = f"in {path}" if path.is_dir() else f"at {weights}"
        raise MissingCheckpointFileError(f"no S3Gen checkpoint {where} (expected {_EXPECTED})")
    if not config_file.is_file():
        return weights, S3GenConfig()
    try:
        return weights, S3GenConfig.load(config_file)
    except ValueError as error:
        raise CheckpointError(f"{config_file}: {error}") from error


def _corrupt(weights: Path, error: BaseException) -> CorruptCheckpointFileError:
    detail = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    return CorruptCheckpointFileError(
        f"{weights} is incomplete or corrupt ({detail}); delete it and download the checkpoint "
        "again"
    )


def _load_torch_state_dict(weights: Path) -> dict[str, torch.Tensor]:
    """A ``torch.save`` state dict, read with ``weights_only=True`` (no code in the file runs)."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except PermissionError as error:
        raise CheckpointError(f"{weights} cannot be read: {error}") from error
    except pickle.UnpicklingError as error:
        # Not a torch.save file of plain tensors: an HTML error page, a pickle of other objects.
        raise CorruptCheckpointFileError(
            f"{weights} is incomplete or corrupt, or not a torch state dict of tensors "
            f"(torch.load(weights_only=True) refused it: {str(error).splitlines()[0][:160]}); "
            "delete it and download the checkpoint again"
        ) from error
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        # A truncated zip archive (an interrupted download) or an empty file.
        raise _corrupt(weights, error) from error
    if not isinstance(state, dict):
        raise CorruptCheckpointFileError(
            f"{weights} holds a {type(state).__name__}, not a state dict (a mapping of tensor "
            "names to tensors); delete it and download the checkpoint again"
        )
    not_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    not_named = [k for k in state if not isinstance(k, str)]
    if not_tensors or not_named:
        raise CheckpointError(
            f"{weights} is not a state dict of named tensors: "
            + (f"entries that are not tensors: {_listing(not_tensors)}" if not_tensors else "")
            + ("; " if not_tensors and not_named else "")
            + (f"{len(not_named)} key(s) that are not strings" if not_named else "")
        )
    return state


def load_checkpoint_file(weights: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a ``.safetensors`` file or a ``.pt`` state dict, on CPU. A file that cannot
    be parsed (cut short by an interrupted download, or not such a file at all) raises
    :class:`~chatterbox_s3gen.errors.CorruptCheckpointFileError` naming it."""
    weights = Path(weights)
    if weights.suffix == ".pt":
        return _load_torch_state_dict(weights)
    try:
        return load_file(str(weights))
    except SafetensorError as error:
        raise _corrupt(weights, error) from error


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
    weights, config = resolve_checkpoint(checkpoint)
    hift = HiFTGenerator(config)
    state = check_state_dict(hift, load_checkpoint_file(weights), str(weights), prefix="mel2wav.")
    hift.load_state_dict(state, strict=True)
    hift.fold_weight_norm()
    return hift.to(device).eval()
