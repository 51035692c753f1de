"""``conds.pt``: the reference's saved voice conditionals (the checkpoint's built-in voice).

Layout (``torch.save`` of plain dicts and tensors, readable with ``torch.load(weights_only=True)``)::

    {"t3":  {"speaker_emb": f32 [1, 256] (L2-normalised voice-encoder embedding),
             "clap_emb": None,
             "cond_prompt_speech_tokens": int64 [1, T<=150] (S3 tokens of <= 6 s at 16 kHz),
             "cond_prompt_speech_emb": None,
             "emotion_adv": f32 [1, 1, 1] (exaggeration, 0.5)},
     "gen": {"prompt_token": int64 [1, T'], "prompt_token_len": int64 [1] (= T'),
             "prompt_feat": f32 [1, ~2T', 80] (24 kHz log-mel of <= 10 s), "prompt_feat_len": None,
             "embedding": f32 [1, 192] (CAMPPlus x-vector)}}
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chatterbox_vllm.errors import CheckpointError
from chatterbox_vllm.paths import open_for_writing

SPEAKER_EMBED_SIZE = 256
XVECTOR_SIZE = 192
MEL_BINS = 80
MAX_T3_PROMPT_TOKENS = 375
"""The longest T3 voice prompt of any model: Turbo's 15 s (the English and multilingual models'
voices hold at most 150 tokens, from 6 s)."""


@dataclass(frozen=True)
class VoiceConditionals:
    """The tensors of one voice, without batch dimensions, as stored in ``conds.pt``."""

    speaker_embedding: torch.Tensor
    """float32 ``[256]``, the voice encoder's L2-normalised embedding (T3's speaker input)."""
    t3_prompt_tokens: torch.Tensor
    """int64 ``[T <= 375]``, S3 tokens of the first 6 s (at most 150; Turbo: 15 s, at most 375)
    (T3's voice prompt)."""
    s3gen_prompt_tokens: torch.Tensor
    """int64 ``[T']``, S3 tokens of the first 10 s (prepended to S3Gen's input)."""
    s3gen_prompt_mel: torch.Tensor
    """float32 ``[frames, 80]``, log-mel of the same 10 s (S3Gen's prompt features)."""
    s3gen_speaker_embedding: torch.Tensor
    """float32 ``[192]``, CAMPPlus x-vector (S3Gen's speaker input)."""
    exaggeration: float = 0.5

    def __post_init__(self) -> None:
        _check(self.speaker_embedding, "speaker_embedding", (SPEAKER_EMBED_SIZE,), torch.float32)
        _check(self.t3_prompt_tokens, "t3_prompt_tokens", (None,), torch.int64)
        if self.t3_prompt_tokens.numel() > MAX_T3_PROMPT_TOKENS:
            raise ValueError(
                f"t3_prompt_tokens has {self.t3_prompt_tokens.numel()} tokens; "
                f"T3 takes at most {MAX_T3_PROMPT_TOKENS}"
            )
        _check(self.s3gen_prompt_tokens, "s3gen_prompt_tokens", (None,), torch.int64)
        _check(self.s3gen_prompt_mel, "s3gen_prompt_mel", (None, MEL_BINS), torch.float32)
        _check(
            self.s3gen_speaker_embedding, "s3gen_speaker_embedding", (XVECTOR_SIZE,), torch.float32
        )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The reference's ``Conditionals.save`` structure (batch dimension 1 added back)."""
        tokens = self.s3gen_prompt_tokens.reshape(1, -1).to(torch.int64)
        return {
            "t3": {
                "speaker_emb": self.speaker_embedding.reshape(1, -1).float(),
                "clap_emb": None,
                "cond_prompt_speech_tokens": self.t3_prompt_tokens.reshape(1, -1).to(torch.int64),
                "cond_prompt_speech_emb": None,
                "emotion_adv": torch.full((1, 1, 1), float(self.exaggeration)),
            },
            "gen": {
                "prompt_token": tokens,
                "prompt_token_len": torch.tensor([tokens.shape[1]], dtype=torch.int64),
                "prompt_feat": self.s3gen_prompt_mel.unsqueeze(0).float(),
                "prompt_feat_len": None,
                "embedding": self.s3gen_speaker_embedding.reshape(1, -1).float(),
            },
        }

    @classmethod
    def from_dict(cls, conds: object, *, source: str = "conds") -> VoiceConditionals:
        """Reads the reference structure, naming the first key that is missing or malformed."""
        if not isinstance(conds, dict) or not {"t3", "gen"} <= set(conds):
            raise CheckpointError(
                f"{source}: expected a dict with keys 't3' and 'gen' (the reference's "
                f"Conditionals.save layout), got {_describe(conds)}"
            )
        t3, gen = conds["t3"], conds["gen"]
        fields = {
            "t3.speaker_emb": (t3, "speaker_emb", (1, SPEAKER_EMBED_SIZE), torch.float32),
            "t3.cond_prompt_speech_tokens": (
                t3,
                "cond_prompt_speech_tokens",
                (1, None),
                torch.int64,
            ),
            "gen.prompt_token": (gen, "prompt_token", (1, None), torch.int64),
            "gen.prompt_feat": (gen, "prompt_feat", (1, None, MEL_BINS), torch.float32),
            "gen.embedding": (gen, "embedding", (1, XVECTOR_SIZE), torch.float32),
        }
        values: dict[str, torch.Tensor] = {}
        for name, (group, key, shape, dtype) in fields.items():
            if not isinstance(group, dict) or key not in group:
                raise CheckpointError(f"{source}: missing {name} (expected {dtype} {shape})")
            try:
                _check(group[key], name, shape, dtype, cast_floats=True)
            except ValueError as error:
                raise CheckpointError(f"{source}: {error}") from error
            values[name] = group[key]
        exaggeration = 0.5
        emotion = t3.get("emotion_adv")
        if isinstance(emotion, torch.Tensor) and emotion.numel() == 1:
            exaggeration = float(emotion.reshape(()))
        return cls(
            speaker_embedding=values["t3.speaker_emb"][0].float(),
            t3_prompt_tokens=values["t3.cond_prompt_speech_tokens"][0].to(torch.int64),
            s3gen_prompt_tokens=values["gen.prompt_token"][0].to(torch.int64),
            s3gen_prompt_mel=values["gen.prompt_feat"][0].float(),
            s3gen_speaker_embedding=values["gen.embedding"][0].float(),
            exaggeration=exaggeration,
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Writes ``conds.pt``; an unwritable path raises :class:`OutputPathError` saying why
        (``torch.save`` itself says only "File X cannot be opened")."""
        path = Path(path)
        with open_for_writing(path, "voice file", "voice.pt") as file:
            torch.save(self.to_dict(), file)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> VoiceConditionals:
        path = Path(path)
        if path.is_dir():
            raise CheckpointError(
                f"voice file {path} is a directory; give a .pt voice file (saved with Voice.save, "
                "or a checkpoint's conds.pt)"
            )
        if not path.is_file():
            raise CheckpointError(f"voice conditionals file not found: {path}")
        from chatterbox_t3.checkpoint import torch_load_reason

        try:
            conds = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for bad pickles
            # torch's own message advises loading with weights_only=False (running the file's
            # code) and filing an issue with torch: only its reason is shown.
            raise CheckpointError(
                f"{path} is not a readable conds.pt voice file: torch cannot read it "
                f"({torch_load_reason(error)}); it is damaged, or not a voice saved with "
                "Voice.save (a checkpoint's conds.pt has the same layout)"
            ) from None
        return cls.from_dict(conds, source=str(path))


def _check(
    value: object,
    name: str,
    shape: tuple[int | None, ...],
    dtype: torch.dtype,
    *,
    cast_floats: bool = False,
) -> None:
    expected = f"{dtype} tensor of shape {tuple('T' if s is None else s for s in shape)}"
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a {expected}, got {_describe(value)}")
    if value.dim() != len(shape) or any(
        want is not None and got != want for got, want in zip(value.shape, shape)
    ):
        raise ValueError(f"{name} must be a {expected}, got shape {tuple(value.shape)}")
    floating_ok = cast_floats and dtype.is_floating_point and value.dtype.is_floating_point
    integer_ok = cast_floats and not dtype.is_floating_point and not value.dtype.is_floating_point
    if value.dtype != dtype and not (floating_ok or integer_ok):
        raise ValueError(f"{name} must be a {expected}, got dtype {value.dtype}")


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor {tuple(value.shape)} {value.dtype}"
    if isinstance(value, dict):
        return f"dict with keys {sorted(map(str, value))}"
    return type(value).__name__
