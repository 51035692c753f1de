"""Voice conditioning: :class:`T3Voice` -> the 34 vectors that precede the text in T3's prompt.

The conditioning is computed once per (voice, exaggeration) outside vLLM, cached by content hash,
and handed to vLLM as a precomputed multimodal embedding (see :mod:`chatterbox_t3.vllm_model`).
Rows, in order (reference ``T3CondEnc.forward``):

1. ``spkr_enc(speaker_embedding)``                                     (1 row)
2. ``perceiver(speech_emb(prompt) + speech_pos_emb[0..P-1])``           (32 rows)
3. ``emotion_adv_fc(exaggeration)``                                     (1 row)

None of them gets a position embedding later: they enter the backbone as they are.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from cachetools import LRUCache
from torch import nn

from chatterbox_t3.config import AnyT3Config, T3Config
from chatterbox_t3.errors import ConfigurationError, InvalidVoiceError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class T3Voice:
    """What T3 needs to know about a voice.

    ``speaker_embedding``: ``[256]`` float (the :class:`~chatterbox_t3.voice_encoder.VoiceEncoder`
    embedding of the reference audio); ``prompt_tokens``: ``[P]`` S3 speech tokens of the first
    seconds of the reference audio, ``1 <= P <= 150`` (S3Gen's tokenizer produces them). Tensors
    are copied to contiguous CPU float32 / int64; a leading batch axis of 1 is accepted.
    """

    speaker_embedding: torch.Tensor
    prompt_tokens: torch.Tensor
    _content_hash: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        embedding = self.speaker_embedding
        tokens = self.prompt_tokens
        if not isinstance(embedding, torch.Tensor) or not isinstance(tokens, torch.Tensor):
            raise InvalidVoiceError(
                "T3Voice needs torch tensors: speaker_embedding [256] float and prompt_tokens [P] "
                f"integer, got {type(embedding).__name__} and {type(tokens).__name__}"
            )
        if embedding.dim() == 2 and embedding.shape[0] == 1:
            embedding = embedding[0]
        if tokens.dim() == 2 and tokens.shape[0] == 1:
            tokens = tokens[0]
        if embedding.dim() != 1 or not embedding.is_floating_point():
            raise InvalidVoiceError(
                "speaker_embedding must be a 1-D float tensor, got "
                f"shape {list(self.speaker_embedding.shape)} dtype {self.speaker_embedding.dtype}"
            )
        if not torch.isfinite(embedding).all():
            raise InvalidVoiceError("speaker_embedding contains NaN or infinite values")
        if tokens.dim() != 1 or tokens.is_floating_point() or tokens.dtype == torch.bool:
            raise InvalidVoiceError(
                "prompt_tokens must be a 1-D integer tensor, got "
                f"shape {list(self.prompt_tokens.shape)} dtype {self.prompt_tokens.dtype}"
            )
        if tokens.numel() == 0:
            raise InvalidVoiceError("prompt_tokens is empty; a voice needs at least one S3 token")
        embedding = embedding.detach().to("cpu", torch.float32).contiguous()
        tokens = tokens.detach().to("cpu", torch.int64).contiguous()
        digest = hashlib.sha256()
        digest.update(embedding.numpy().tobytes())
        digest.update(b"|")
        digest.update(tokens.numpy().tobytes())
        object.__setattr__(self, "speaker_embedding", embedding)
        object.__setattr__(self, "prompt_tokens", tokens)
        object.__setattr__(self, "_content_hash", digest.hexdigest())

    @property
    def content_hash(self) -> str:
        """sha256 of the embedding and prompt tokens: equal voices share cached conditioning."""
        return self._content_hash

    def validate_for(self, config: AnyT3Config) -> None:
        """Check sizes and id ranges against a model configuration."""
        if self.speaker_embedding.numel() != config.speaker_embed_size:
            raise InvalidVoiceError(
                f"speaker_embedding has {self.speaker_embedding.numel()} values, the model expects "
                f"{config.speaker_embed_size}"
            )
        num_tokens = self.prompt_tokens.numel()
        if num_tokens > config.speech_cond_prompt_len:
            raise InvalidVoiceError(
                f"prompt_tokens has {num_tokens} tokens, at most {config.speech_cond_prompt_len} "
                f"are allowed (the reference takes {config.speech_cond_prompt_len / 25:g} s of "
                "audio at 25 tokens/s)"
            )
        low, high = int(self.prompt_tokens.min()), int(self.prompt_tokens.max())
        if low < 0 or high >= config.num_valid_speech_tokens:
            raise InvalidVoiceError(
                f"prompt_tokens must be S3 codes in [0, {config.num_valid_speech_tokens}), "
                f"got values in [{low}, {high}]"
            )


class PerceiverAttention(nn.Module):
    """Pre-norm multi-head attention with a residual (reference ``AttentionBlock2``).

    One LayerNorm is shared by the query and key/value inputs; there is no MLP.
    """

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.proj_out = nn.Linear(channels, channels)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, channels = x.shape
        return x.view(batch, length, self.num_heads, channels // self.num_heads).transpose(1, 2)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q_in, kv_in = self.norm(queries), self.norm(context)
        q = self._heads(self.to_q(q_in))
        k = self._heads(self.to_k(kv_in))
        v = self._heads(self.to_v(kv_in))
        attended = F.scaled_dot_product_attention(q, k, v)
        batch, _, length, _ = attended.shape
        attended = attended.transpose(1, 2).reshape(batch, length, -1)
        return queries + self.proj_out(attended)


class Perceiver(nn.Module):
    """Resamples the prompt to ``perceiver_queries`` vectors: cross-attention from learned
    queries, then self-attention, both through the same :class:`PerceiverAttention` weights."""

    def __init__(self, config: T3Config) -> None:
        super().__init__()
        self.pre_attention_query = nn.Parameter(
            torch.empty(1, config.perceiver_queries, config.hidden_size)
        )
        bound = math.sqrt(3.0) * math.sqrt(2.0 / (2 * config.perceiver_queries))
        nn.init.uniform_(self.pre_attention_query, -bound, bound)
        self.attn = PerceiverAttention(config.hidden_size, config.perceiver_heads)

    def forward(self, prompt: torch.Tensor) -> torch.Tensor:
        queries = self.pre_attention_query.expand(prompt.shape[0], -1, -1)
        resampled = self.attn(queries, prompt)
        return self.attn(resampled, resampled)


class ConditioningProjections(nn.Module):
    """The checkpoint's ``cond_enc``: speaker projection, emotion projection, perceiver."""

    def __init__(self, config: T3Config) -> None:
        super().__init__()
        self.spkr_enc = nn.Linear(config.speaker_embed_size, config.hidden_size)
        self.emotion_adv_fc = nn.Linear(1, config.hidden_size, bias=False)
        self.perceiver = Perceiver(config)


class PositionTable(nn.Module):
    """A learned position table named like the checkpoint's (``<name>.emb.weight``)."""

    def __init__(self, rows: int, width: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(rows, width)


class ConditioningEncoder(nn.Module):
    """``cond_enc`` of the checkpoint plus the two speech tables the prompt embedding needs.

    Parameter names are the checkpoint's (``cond_enc.*``, ``speech_emb.weight``,
    ``speech_pos_emb.emb.weight``), so ``load_state_dict`` takes a filtered T3 state dict.
    """

    def __init__(self, config: T3Config) -> None:
        super().__init__()
        self.config = config
        self.cond_enc = ConditioningProjections(config)
        self.speech_emb = nn.Embedding(config.speech_tokens_dict_size, config.hidden_size)
        self.speech_pos_emb = PositionTable(config.speech_position_rows, config.hidden_size)

    PARAMETER_PREFIXES = ("cond_enc.", "speech_emb.", "speech_pos_emb.")
    """Checkpoint tensors this module owns."""

    @classmethod
    def from_checkpoint_dir(
        cls,
        directory: str | Path,
        config: T3Config | None = None,
        *,
        device: str | torch.device = "cpu",
    ) -> ConditioningEncoder:
        from chatterbox_t3.checkpoint import checkpoint_files, load_t3_state_dict

        config = config or T3Config.from_checkpoint_dir(directory)
        encoder = cls(config)
        state = load_t3_state_dict(
            Path(directory) / checkpoint_files(directory).t3,
            config,
            only_prefixes=cls.PARAMETER_PREFIXES,
        )
        encoder.load_state_dict(state)
        return encoder.to(device).eval()

    @torch.inference_mode()
    def forward(self, voice: T3Voice, exaggeration: float) -> torch.Tensor:
        """Conditioning rows ``[conditioning_len, hidden]`` (float32, on this module's device)."""
        device = self.speech_emb.weight.device
        speaker = voice.speaker_embedding.to(device).view(1, -1)
        tokens = voice.prompt_tokens.to(device).view(1, -1)
        positions = torch.arange(tokens.shape[1], device=device)
        prompt = self.speech_emb(tokens) + self.speech_pos_emb.emb(positions)
        speaker_row = self.cond_enc.spkr_enc(speaker)[:, None]
        prompt_rows = self.cond_enc.perceiver(prompt)
        emotion = torch.full((1, 1, 1), float(exaggeration), device=device)
        emotion_row = self.cond_enc.emotion_adv_fc(emotion)
        return torch.cat([speaker_row, prompt_rows, emotion_row], dim=1)[0]


class ConditioningCache:
    """Thread-safe LRU (``cachetools.LRUCache``) of conditioning tensors keyed by (voice content
    hash, exaggeration); ``max_entries=0`` computes every time and keeps nothing."""

    def __init__(
        self, encoder: Callable[[T3Voice, float], torch.Tensor], max_entries: int = 256
    ) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 0:
            raise ConfigurationError(f"max_entries must be an int >= 0, got {max_entries!r}")
        self.encoder = encoder
        self.max_entries = max_entries
        # LRUCache(maxsize=0) refuses every insertion, so "no cache" is simply no LRUCache.
        self._entries: LRUCache[tuple[str, float], torch.Tensor] | None = (
            LRUCache(maxsize=max_entries) if max_entries else None
        )
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, voice: T3Voice, exaggeration: float) -> torch.Tensor:
        """Conditioning rows on the CPU (float32); computed on a miss."""
        key = (voice.content_hash, float(exaggeration))
        with self._lock:
            # LRUCache.get marks the entry most recently used.
            cached = self._entries.get(key) if self._entries is not None else None
            if cached is not None:
                self.hits += 1
                return cached
        # Computed outside the lock so other voices are not held up behind this one.
        rows = self.encoder(voice, exaggeration).to("cpu", torch.float32).contiguous()
        with self._lock:
            self.misses += 1
            if self._entries is not None:
                self._entries[key] = rows
        return rows

    def __len__(self) -> int:
        return len(self._entries) if self._entries is not None else 0
