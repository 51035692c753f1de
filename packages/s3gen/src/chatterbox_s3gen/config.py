"""Hyper-parameters of S3Gen. The defaults are the released model; :meth:`S3GenConfig.tiny` keeps
every tensor name but shrinks the sizes so the whole pipeline runs in seconds on a CPU."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatterbox_s3gen.constants import MEL_HOP
from chatterbox_s3gen.errors import ConfigurationError


def _tuple3(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


@dataclass(frozen=True)
class S3GenConfig:
    """Sizes of every S3Gen sub-module. Field names are stable: they are the keys of
    ``s3gen_config.json`` (written next to tiny checkpoints; absent means the real model)."""

    # S3 speech tokenizer (s3tokenizer's S3TokenizerV2). Head size must stay 64 (its RoPE table).
    tokenizer_state: int = 1280
    tokenizer_heads: int = 20
    tokenizer_layers: int = 6
    # CAMPPlus speaker encoder.
    speaker_head_channels: int = 32
    speaker_growth_rate: int = 32
    speaker_bn_size: int = 4
    speaker_init_channels: int = 128
    speaker_block_layers: tuple[int, ...] = (12, 24, 16)
    # Flow: token embedding + upsampling conformer encoder.
    encoder_dim: int = 512
    encoder_heads: int = 8
    encoder_ffn_dim: int = 2048
    encoder_layers: int = 6
    encoder_up_layers: int = 4
    pre_lookahead_len: int = 3
    # Flow: the CFM vector-field estimator (a 1-D U-Net with transformer blocks).
    estimator_channels: int = 256
    estimator_heads: int = 8
    estimator_head_dim: int = 64
    estimator_transformer_blocks: int = 4
    estimator_mid_blocks: int = 12
    # Flow: conditional flow matching sampler.
    cfg_rate: float = 0.7
    flow_noise_frames: int = 15_000
    # The decoder of Chatterbox Turbo (``s3gen_meanflow.safetensors``, chatterbox-tts 0.1.7's
    # ``S3Gen(meanflow=True)``): distilled from the guided decoder, so one estimator row per item
    # (no classifier-free guidance pair), a linear time schedule (2 steps by default) and a time
    # embedding that mixes each step's start time with its end time (``time_embed_mixer``).
    # Set from the weight file's name by the loader, not by ``s3gen_config.json``.
    meanflow: bool = False
    # HiFT vocoder (neural source filter + iSTFT).
    hift_base_channels: int = 512
    hift_nb_harmonics: int = 8
    hift_upsample_rates: tuple[int, ...] = (8, 5, 3)
    hift_upsample_kernel_sizes: tuple[int, ...] = (16, 11, 7)
    hift_resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    hift_resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    hift_source_resblock_kernel_sizes: tuple[int, ...] = (7, 7, 11)
    hift_source_resblock_dilations: tuple[tuple[int, ...], ...] = (
        (1, 3, 5),
        (1, 3, 5),
        (1, 3, 5),
    )
    hift_istft_n_fft: int = 16
    hift_istft_hop: int = 4
    hift_f0_channels: int = 512
    hift_nsf_alpha: float = 0.1
    hift_nsf_sigma: float = 0.003
    hift_voiced_threshold: float = 10.0
    hift_lrelu_slope: float = 0.1
    hift_audio_limit: float = 0.99
    # Not a hyper-parameter: marks configs that are not the released model (for logs/errors).
    name: str = field(default="full", compare=False)

    def __post_init__(self) -> None:
        if self.tokenizer_state % self.tokenizer_heads or (
            self.tokenizer_state // self.tokenizer_heads != 64
        ):
            raise ConfigurationError(
                "tokenizer_state / tokenizer_heads must be 64 (S3TokenizerV2's rotary table); got "
                f"{self.tokenizer_state} / {self.tokenizer_heads}"
            )
        if self.encoder_dim % self.encoder_heads:
            raise ConfigurationError(
                f"encoder_dim ({self.encoder_dim}) must be divisible by encoder_heads "
                f"({self.encoder_heads})"
            )
        hop = math.prod(self.hift_upsample_rates) * self.hift_istft_hop
        if hop != MEL_HOP:
            raise ConfigurationError(
                f"prod(hift_upsample_rates) * hift_istft_hop must be {MEL_HOP} samples per mel "
                f"frame; got {hop}"
            )
        n_levels = len(self.hift_upsample_rates)
        for name in ("hift_upsample_kernel_sizes", "hift_source_resblock_kernel_sizes"):
            if len(getattr(self, name)) != n_levels:
                raise ConfigurationError(
                    f"{name} needs one entry per upsampling level ({n_levels})"
                )
        if len(self.hift_resblock_kernel_sizes) != len(self.hift_resblock_dilations):
            raise ConfigurationError(
                "hift_resblock_kernel_sizes and hift_resblock_dilations differ in length"
            )
        if self.hift_base_channels % (2**n_levels):
            raise ConfigurationError(f"hift_base_channels must be divisible by {2**n_levels}")
        if len(self.speaker_block_layers) != 3:
            raise ConfigurationError(
                "speaker_block_layers needs three entries (CAMPPlus has three blocks)"
            )

    @classmethod
    def tiny(cls) -> S3GenConfig:
        """Same module tree and tensor names as the real model, small sizes (tests, CI, benches)."""
        return cls(
            tokenizer_state=128,
            tokenizer_heads=2,
            tokenizer_layers=1,
            speaker_head_channels=8,
            speaker_growth_rate=8,
            speaker_bn_size=2,
            speaker_init_channels=32,
            speaker_block_layers=(2, 2, 2),
            encoder_dim=64,
            encoder_heads=2,
            encoder_ffn_dim=128,
            encoder_layers=2,
            encoder_up_layers=1,
            estimator_channels=32,
            estimator_heads=2,
            estimator_head_dim=16,
            estimator_transformer_blocks=1,
            estimator_mid_blocks=2,
            hift_base_channels=32,
            hift_f0_channels=16,
            name="tiny",
        )

    @property
    def flow_steps(self) -> int:
        """Default Euler steps: 2 for the meanflow decoder, 10 for the standard one (the
        reference's defaults)."""
        return 2 if self.meanflow else 10

    @property
    def guided(self) -> bool:
        """Whether the flow runs the classifier-free guidance pair (the standard decoder)."""
        return not self.meanflow

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> S3GenConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown S3GenConfig fields {unknown}; known fields: {sorted(known)}"
            )
        values = dict(data)
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            if f.name in ("hift_resblock_dilations", "hift_source_resblock_dilations"):
                values[f.name] = tuple(_tuple3(v) for v in values[f.name])
            elif isinstance(f.default, tuple):
                values[f.name] = _tuple3(values[f.name])
        return cls(**values)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> S3GenConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigurationError(f"{path} must hold a JSON object of S3GenConfig fields")
        return cls.from_dict(data)
