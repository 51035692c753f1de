"""Voice conditioning for S3Gen: what :meth:`chatterbox_s3gen.S3Gen.embed_ref` extracts from a
reference recording, in the layout of the ``"gen"`` entry of chatterbox's ``conds.pt``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from chatterbox_s3gen.constants import (
    MEL_CHANNELS,
    SPEAKER_EMBEDDING_DIM,
    SPEECH_VOCAB_SIZE,
    TOKEN_MEL_RATIO,
)
from chatterbox_s3gen.errors import S3GenInputError, S3GenInputKeyError, S3GenInputTypeError


@dataclass(frozen=True)
class S3GenReference:
    """A speaker prompt.

    * ``prompt_tokens``: int64 ``[T]`` S3 tokens of the reference audio (T >= 1);
    * ``prompt_mel``: float32 ``[F, 80]`` 24 kHz log-mel of the same audio, ``F = 2T`` — or
      ``2T + 1`` when the audio's mel has an odd frame count, which the reference implementation
      keeps (the generated mel is then one frame shorter than ``2 x tokens``);
    * ``speaker_embedding``: float32 ``[192]`` CAMPPlus x-vector.
    """

    prompt_tokens: torch.Tensor
    prompt_mel: torch.Tensor
    speaker_embedding: torch.Tensor

    def __post_init__(self) -> None:
        tokens, mel, emb = self.prompt_tokens, self.prompt_mel, self.speaker_embedding
        for name, value in (
            ("prompt_tokens", tokens),
            ("prompt_mel", mel),
            ("speaker_embedding", emb),
        ):
            if not isinstance(value, torch.Tensor):
                raise S3GenInputTypeError(
                    f"S3GenReference.{name} must be a torch.Tensor, got {type(value).__name__}"
                )
        if tokens.dim() != 1 or tokens.dtype != torch.int64 or tokens.numel() == 0:
            raise S3GenInputError(
                f"prompt_tokens must be a non-empty 1-D int64 tensor, got shape {tuple(tokens.shape)} "
                f"dtype {tokens.dtype}"
            )
        if bool(((tokens < 0) | (tokens >= SPEECH_VOCAB_SIZE)).any()):
            raise S3GenInputError(f"prompt_tokens must lie in [0, {SPEECH_VOCAB_SIZE})")
        num_tokens = tokens.numel()
        if mel.dim() != 2 or mel.shape[1] != MEL_CHANNELS or not mel.is_floating_point():
            raise S3GenInputError(
                f"prompt_mel must be a float [frames, {MEL_CHANNELS}] tensor, got {tuple(mel.shape)}"
            )
        if mel.shape[0] not in (TOKEN_MEL_RATIO * num_tokens, TOKEN_MEL_RATIO * num_tokens + 1):
            raise S3GenInputError(
                f"prompt_mel has {mel.shape[0]} frames but {num_tokens} prompt tokens need "
                f"{TOKEN_MEL_RATIO * num_tokens} (or one more)"
            )
        if emb.shape != (SPEAKER_EMBEDDING_DIM,) or not emb.is_floating_point():
            raise S3GenInputError(
                f"speaker_embedding must be a float [{SPEAKER_EMBEDDING_DIM}] tensor, got {tuple(emb.shape)}"
            )
        if not (bool(torch.isfinite(mel).all()) and bool(torch.isfinite(emb).all())):
            raise S3GenInputError("prompt_mel and speaker_embedding must be finite (no NaN/Inf)")

    @property
    def num_prompt_tokens(self) -> int:
        return int(self.prompt_tokens.numel())

    @property
    def num_prompt_frames(self) -> int:
        return int(self.prompt_mel.shape[0])

    @property
    def device(self) -> torch.device:
        return self.prompt_mel.device

    def to(self, device: torch.device | str) -> S3GenReference:
        return S3GenReference(
            self.prompt_tokens.to(device),
            self.prompt_mel.to(device),
            self.speaker_embedding.to(device),
        )

    def to_conds_dict(self) -> dict[str, Any]:
        """The ``"gen"`` dict of chatterbox's ``conds.pt`` (``S3Gen.embed_ref``'s return value)."""
        return {
            "prompt_token": self.prompt_tokens.unsqueeze(0).to(torch.int64),
            "prompt_token_len": torch.tensor([self.num_prompt_tokens], dtype=torch.int64),
            "prompt_feat": self.prompt_mel.unsqueeze(0).to(torch.float32),
            "prompt_feat_len": None,
            "embedding": self.speaker_embedding.unsqueeze(0).to(torch.float32),
        }

    @classmethod
    def from_conds_dict(cls, conds: dict[str, Any]) -> S3GenReference:
        """Inverse of :meth:`to_conds_dict`; accepts the dict saved in chatterbox's ``conds.pt``."""
        missing = [k for k in ("prompt_token", "prompt_feat", "embedding") if conds.get(k) is None]
        if missing:
            raise S3GenInputKeyError(
                f"conds dict lacks {missing}; expected the 'gen' entry of conds.pt"
            )
        tokens = torch.as_tensor(conds["prompt_token"])
        mel = torch.as_tensor(conds["prompt_feat"])
        emb = torch.as_tensor(conds["embedding"])
        if tokens.dim() != 2 or tokens.shape[0] != 1 or mel.dim() != 3 or mel.shape[0] != 1:
            raise S3GenInputError(
                f"expected prompt_token (1, T) and prompt_feat (1, F, 80), got {tuple(tokens.shape)} "
                f"and {tuple(mel.shape)}"
            )
        if emb.dim() == 2 and emb.shape[0] == 1:
            emb = emb[0]
        token_len = conds.get("prompt_token_len")
        if (
            token_len is not None
            and int(torch.as_tensor(token_len).reshape(-1)[0]) != tokens.shape[1]
        ):
            raise S3GenInputError(
                f"prompt_token_len {int(torch.as_tensor(token_len).reshape(-1)[0])} does not match "
                f"prompt_token length {tokens.shape[1]}"
            )
        return cls(tokens[0].to(torch.int64), mel[0].to(torch.float32), emb.to(torch.float32))
