"""Random-weight checkpoints in the real layout, for tests, benchmarks and trying the pipeline.

:func:`make_random_checkpoint` composes the component writers (``chatterbox_t3`` writes
``ve.safetensors``, ``t3_cfg.safetensors``, ``tokenizer.json``; ``chatterbox_s3gen`` writes
``s3gen.safetensors``, or the multilingual and Turbo releases' files; the ``tiny`` size adds each
component's small JSON config) and then makes ``conds.pt`` the way the real one was made: a voice
is prepared (the model's own recipe) from a synthetic 3 s recording (6 s for Turbo) with
the freshly written random models (:func:`chatterbox_vllm.voices.build_voice`) and saved in the
reference's ``Conditionals.save`` layout.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Literal

import torch

from chatterbox_vllm.audio import S3GEN_SAMPLE_RATE
from chatterbox_vllm.errors import CheckpointError, InvalidParameterError
from chatterbox_vllm.models import MODEL_FILES, ModelKind, check_model_kind
from chatterbox_vllm.voices import VOICE_RECIPES, build_voice

logger = logging.getLogger(__name__)

CheckpointSize = Literal["tiny", "full"]
SYNTHETIC_VOICE_SECONDS = 3.0
S3GEN_FORMATS: dict[ModelKind, str] = {
    "english": "safetensors",
    "multilingual": "pt",
    "turbo": "meanflow",
}
"""The S3Gen file each model's release holds (``write_random_s3gen_checkpoint``'s ``file_format``):
``s3gen.safetensors``, ``s3gen.pt``, Turbo's ``s3gen_meanflow.safetensors``."""


def synthetic_voice(seconds: float = SYNTHETIC_VOICE_SECONDS, seed: int = 0) -> torch.Tensor:
    """A deterministic 24 kHz voice-like test signal: a 220 Hz harmonic stack with a slow pitch
    wobble and syllable-rate amplitude modulation, plus a little noise."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(round(seconds * S3GEN_SAMPLE_RATE), dtype=torch.float64) / S3GEN_SAMPLE_RATE
    pitch = 220.0 * (1.0 + 0.03 * torch.sin(2 * math.pi * 0.7 * t))
    phase = 2 * math.pi * torch.cumsum(pitch, 0) / S3GEN_SAMPLE_RATE
    voiced = sum(0.3 / k * torch.sin(k * phase) for k in range(1, 6))
    syllables = 0.55 + 0.45 * torch.sin(2 * math.pi * 4.0 * t).clamp(min=0)
    noise = 0.01 * torch.randn(t.shape, generator=generator, dtype=torch.float64)
    return (voiced * syllables + noise).to(torch.float32)


def make_random_checkpoint(
    directory: str | os.PathLike,
    size: CheckpointSize = "tiny",
    seed: int = 0,
    model: ModelKind = "english",
    *,
    force: bool = False,
) -> Path:
    """Writes a complete random-weight checkpoint of ``model`` (its Hub files,
    :data:`~chatterbox_vllm.models.MODEL_FILES`, plus the tiny configs).

    ``full`` has the real names, shapes and dtypes (~3.4 GB); ``tiny`` the same names with small
    dimensions. Equal ``seed`` gives identical files. A directory holding the *other* model's
    files is refused (the writers replace them: one model per directory) unless ``force``.
    """
    from chatterbox_s3gen import S3Gen, write_random_s3gen_checkpoint
    from chatterbox_t3 import VoiceEncoder, write_random_t3_checkpoint

    if size not in ("tiny", "full"):
        raise InvalidParameterError(f"size must be 'tiny' or 'full', got {size!r}")
    model = check_model_kind(model)
    if not os.fspath(directory).strip():  # Path("") would be the current directory
        raise InvalidParameterError(
            f"directory must name a directory, got {os.fspath(directory)!r}"
        )
    path = Path(directory)
    if not force:
        _refuse_other_model(path, model)
    path.mkdir(parents=True, exist_ok=True)
    logger.info("writing a %s random %s checkpoint (seed %d) to %s", size, model, seed, path)
    if model == "english":
        write_random_t3_checkpoint(path, size=size, seed=seed)
    else:
        write_random_t3_checkpoint(path, size=size, seed=seed, model=model)
    write_random_s3gen_checkpoint(path, size=size, seed=seed, file_format=S3GEN_FORMATS[model])

    voice_encoder = VoiceEncoder.from_checkpoint_dir(path)
    s3gen = S3Gen.from_checkpoint(path, device="cpu", dtype=torch.float32)
    # Long enough for every model's voice preparation (Turbo needs more than 5 s).
    seconds = max(SYNTHETIC_VOICE_SECONDS, VOICE_RECIPES[model].longer_than_seconds + 1.0)
    voice = build_voice(synthetic_voice(seconds, seed=seed), voice_encoder, s3gen, model=model)
    voice.save(path / "conds.pt")
    missing = [name for name in MODEL_FILES[model] if not (path / name).is_file()]
    if missing:
        raise RuntimeError(f"component writers did not produce {missing} in {path}")
    return path


def _refuse_other_model(path: Path, model: ModelKind) -> None:
    """Writing ``model`` replaces the other model's files in ``path`` (one model per directory):
    a directory that holds them is refused, naming them, rather than emptied without a word."""
    if not path.is_dir():
        return
    ours = set(MODEL_FILES[model])
    theirs = [
        name
        for other, files in MODEL_FILES.items()
        if other != model
        for name in files
        if name not in ours and (path / name).is_file()
    ]
    if theirs:
        raise CheckpointError(
            f"{path} holds another model's checkpoint files ({', '.join(theirs)}); writing a "
            f"{model} checkpoint there would replace them. Give a new or empty directory, or "
            "force it (make_random_checkpoint(..., force=True), the CLI's --force)"
        )
