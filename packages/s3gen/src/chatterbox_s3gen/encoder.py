"""The flow's text(token)-side encoder: an ESPnet/WeNet conformer (relative-position self-attention,
no conv module) over 25 Hz token embeddings, a causal 2x upsampler, and a second conformer stack
at 50 Hz. Batched inputs are right-padded; every op either masks padded keys or is causal, and the
one look-ahead conv sees zeros past each item's end, so a padded item computes exactly what it
computes alone."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from chatterbox_s3gen.config import S3GenConfig
from chatterbox_s3gen.masks import length_mask


class RelativePositionTable(nn.Module):
    """ESPnet's sinusoidal table for relative offsets ``L-1 .. -(L-1)`` (index 0 = offset L-1)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self._cache: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    def forward(self, length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (length, device, dtype)
        table = self._cache.get(key)
        if table is None:
            div_term = torch.exp(
                torch.arange(0, self.dim, 2, dtype=torch.float32) * -(math.log(10000.0) / self.dim)
            )
            positions = torch.arange(0, length, dtype=torch.float32).unsqueeze(1)
            angles = positions * div_term  # offsets 0..L-1; negative offsets are exact sign flips
            positive = torch.zeros(length, self.dim)
            positive[:, 0::2] = torch.sin(angles)
            positive[:, 1::2] = torch.cos(angles)
            negative = torch.zeros(length, self.dim)
            negative[:, 0::2] = torch.sin(-angles)
            negative[:, 1::2] = torch.cos(-angles)
            table = torch.cat([positive.flip(0), negative[1:]], dim=0).unsqueeze(0)
            table = table.to(device=device, dtype=dtype)
            if len(self._cache) > 16:
                self._cache.clear()
            self._cache[key] = table
        return table

    def tables(self) -> list[torch.Tensor]:
        """The tables cached now (a captured graph that read them keeps them alive)."""
        return list(self._cache.values())


class LinearEmbed(nn.Module):
    """Linear + LayerNorm input layer, then ``x * sqrt(dim)`` (ESPnet rel-pos scaling)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim, eps=1e-5), nn.Dropout(0.0))
        self.scale = math.sqrt(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x) * self.scale


class RelPositionSelfAttention(nn.Module):
    """Transformer-XL style attention: ``(q+u)k^T + shift((q+v)p^T)``, scaled by ``1/sqrt(d_k)``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.empty(heads, self.head_dim))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    @staticmethod
    def _relative_shift(scores: torch.Tensor) -> torch.Tensor:
        """``[.., T, 2T-1]`` scores over offsets -> ``[.., T, T]`` with entry (i, j) at offset i - j."""
        b, h, t, n = scores.shape
        padded = F.pad(scores, (1, 0)).view(b, h, n + 1, t)
        return padded[:, :, 1:].reshape(b, h, t, n)[..., : n // 2 + 1]

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor, pos_table: torch.Tensor
    ) -> torch.Tensor:
        """``x``: ``[B, T, D]``; ``key_mask``: ``[B, T]`` bool; ``pos_table``: ``[1, 2T-1, D]``."""
        b, t, _ = x.shape
        q = self.linear_q(x).view(b, t, self.heads, self.head_dim)
        k = self.linear_k(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = self.linear_v(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        p = self.linear_pos(pos_table).view(1, -1, self.heads, self.head_dim).transpose(1, 2)
        q_u = (q + self.pos_bias_u).transpose(1, 2)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        content = torch.matmul(q_u, k.transpose(-2, -1))
        position = self._relative_shift(torch.matmul(q_v, p.transpose(-2, -1)))
        scores = (content + position) / math.sqrt(self.head_dim)
        masked = ~key_mask[:, None, None, :]
        scores = scores.masked_fill(masked, float("-inf"))
        attn = torch.softmax(scores, dim=-1).masked_fill(masked, 0.0)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, self.heads * self.head_dim)
        return self.linear_out(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerLayer(nn.Module):
    """Pre-norm self-attention + feed-forward (the conformer's conv module is off in S3Gen)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.self_attn = RelPositionSelfAttention(dim, heads)
        self.feed_forward = FeedForward(dim, ffn_dim)
        self.norm_ff = nn.LayerNorm(dim, eps=1e-12)
        self.norm_mha = nn.LayerNorm(dim, eps=1e-12)

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor, pos_table: torch.Tensor
    ) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), key_mask, pos_table)
        return x + self.feed_forward(self.norm_ff(x))


class PreLookaheadLayer(nn.Module):
    """Each token sees the next ``lookahead`` tokens (zeros past the end), then a causal conv."""

    def __init__(self, channels: int, lookahead: int) -> None:
        super().__init__()
        self.lookahead = lookahead
        self.conv1 = nn.Conv1d(channels, channels, lookahead + 1)
        self.conv2 = nn.Conv1d(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.pad(x.transpose(1, 2), (0, self.lookahead))
        out = F.leaky_relu(self.conv1(out))
        out = self.conv2(F.pad(out, (2, 0)))
        return out.transpose(1, 2) + x


class CausalUpsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a causal conv (kernel 5, left pad 4)."""

    def __init__(self, channels: int, stride: int = 2) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(channels, channels, stride * 2 + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.interpolate(x, scale_factor=float(self.stride), mode="nearest")
        return self.conv(F.pad(out, (self.stride * 2, 0)))


class UpsampleConformerEncoder(nn.Module):
    def __init__(self, config: S3GenConfig) -> None:
        super().__init__()
        dim = config.encoder_dim

        def stack(n: int) -> nn.ModuleList:
            return nn.ModuleList(
                ConformerLayer(dim, config.encoder_heads, config.encoder_ffn_dim) for _ in range(n)
            )

        self.embed = LinearEmbed(dim)
        self.pre_lookahead_layer = PreLookaheadLayer(dim, config.pre_lookahead_len)
        self.encoders = stack(config.encoder_layers)
        self.up_layer = CausalUpsample(dim)
        self.up_embed = LinearEmbed(dim)
        self.up_encoders = stack(config.encoder_up_layers)
        self.after_norm = nn.LayerNorm(dim, eps=1e-5)
        self.positions = RelativePositionTable(dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: ``[B, T, D]`` token embeddings (zero past each length) -> ``[B, 2T, D]``."""
        mask = length_mask(lengths, x.shape[1])
        x = self.embed(x)
        # The look-ahead conv must see zeros past the end of every item, as it does unbatched.
        x = self.pre_lookahead_layer(x * mask.unsqueeze(-1).to(x.dtype))
        pos = self.positions(x.shape[1], x.device, x.dtype)
        for layer in self.encoders:
            x = layer(x, mask, pos)

        x = self.up_layer(x.transpose(1, 2)).transpose(1, 2)
        lengths = lengths * self.up_layer.stride
        mask = length_mask(lengths, x.shape[1])
        x = self.up_embed(x)
        pos = self.positions(x.shape[1], x.device, x.dtype)
        for layer in self.up_encoders:
            x = layer(x, mask, pos)
        return self.after_norm(x), lengths
