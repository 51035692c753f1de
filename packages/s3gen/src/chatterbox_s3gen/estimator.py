"""The CFM vector-field estimator (CosyVoice2's causal ``ConditionalDecoder``): a one-level 1-D
U-Net of causal conv ResNet blocks and transformer blocks, conditioned on the flow time step.

Convs are causal (left padding only) and inputs are multiplied by the length mask before every
conv, and attention masks padded keys, so right-padded batch rows equal their unbatched runs."""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from chatterbox_s3gen.config import S3GenConfig
from chatterbox_s3gen.constants import MEL_CHANNELS
from chatterbox_s3gen.errors import S3GenInputError


class CausalConv1d(nn.Conv1d):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size)
        self.left_pad = kernel_size - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left_pad, 0)))


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of ``[B, C, T]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class CausalBlock1D(nn.Module):
    def __init__(self, dim: int, dim_out: int) -> None:
        super().__init__()
        # Indices 1 and 3 were transposes in the reference; keep the numbering of the weights.
        self.block = nn.Sequential(
            CausalConv1d(dim, dim_out, 3),
            nn.Identity(),
            ChannelLayerNorm(dim_out),
            nn.Identity(),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.block(x * mask) * mask


class CausalResnetBlock1D(nn.Module):
    def __init__(self, dim: int, dim_out: int, time_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_dim, dim_out))
        self.block1 = CausalBlock1D(dim, dim_out)
        self.block2 = CausalBlock1D(dim_out, dim_out)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x, mask) + self.mlp(time_emb).unsqueeze(-1)
        h = self.block2(h, mask)
        return h + self.res_conv(x * mask)


class SelfAttention(nn.Module):
    """diffusers ``Attention`` as used here: bias-free q/k/v, output projection with bias."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.head_dim = head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, T, C]``; ``attend``: ``[B, 1, 1, T]`` bool (True = valid key)."""
        b, t, _ = x.shape
        q = self.to_q(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.to_k(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = self.to_v(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
        return self.to_out[0](out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class GELUProjection(nn.Module):
    def __init__(self, dim: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.ModuleList(
            [GELUProjection(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class TransformerBlock(nn.Module):
    """diffusers ``BasicTransformerBlock`` with self-attention only (norm1/attn1, norm3/ff)."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = SelfAttention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), attend)
        return x + self.ff(self.norm3(x))


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, time_dim: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.linear_1 = nn.Linear(in_channels, time_dim)
        self.linear_2 = nn.Linear(time_dim, time_dim)

    def sinusoid(self, t: torch.Tensor, scale: float = 1000.0) -> torch.Tensor:
        half = self.in_channels // 2
        freqs = torch.exp(
            torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1))
        )
        angles = scale * t.unsqueeze(1) * freqs.unsqueeze(0)
        return torch.cat((angles.sin(), angles.cos()), dim=-1).to(t.dtype)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(self.sinusoid(t))))


class UNetLevel(nn.ModuleList):
    """``[resnet, transformer stack(, causal conv)]``: a list so weight names keep the reference's
    indices (``down_blocks.0.0`` resnet, ``down_blocks.0.1.N`` transformers, ``down_blocks.0.2`` conv)."""

    def run(
        self, h: torch.Tensor, mask: torch.Tensor, time_emb: torch.Tensor, attend: torch.Tensor
    ) -> torch.Tensor:
        h = self[0](h, mask, time_emb).transpose(1, 2)
        for transformer in cast(nn.ModuleList, self[1]):
            h = transformer(h, attend)
        return h.transpose(1, 2)

    def conv(self, h: torch.Tensor) -> torch.Tensor:
        return self[2](h)


def _transformer_stack(config: S3GenConfig) -> nn.ModuleList:
    return nn.ModuleList(
        TransformerBlock(
            config.estimator_channels, config.estimator_heads, config.estimator_head_dim
        )
        for _ in range(config.estimator_transformer_blocks)
    )


class ConditionalDecoder(nn.Module):
    """``forward(x, mask, mu, t, spks, cond[, end])`` -> velocity ``[B, 80, T]``.

    The meanflow decoder (``config.meanflow``) also takes the step's end time ``end``: both times
    go through the same sinusoid + MLP and a bias-free linear ``time_embed_mixer`` maps the two
    embeddings, concatenated, to the one that conditions every block."""

    def __init__(self, config: S3GenConfig) -> None:
        super().__init__()
        in_channels = 4 * MEL_CHANNELS  # x, mu, speaker, prompt condition
        channels = config.estimator_channels
        time_dim = 4 * channels
        self.time_mlp = TimestepEmbedding(in_channels, time_dim)
        self.down_blocks = nn.ModuleList(
            [
                UNetLevel(
                    [
                        CausalResnetBlock1D(in_channels, channels, time_dim),
                        _transformer_stack(config),
                        CausalConv1d(channels, channels, 3),
                    ]
                )
            ]
        )
        self.mid_blocks = nn.ModuleList(
            UNetLevel(
                [CausalResnetBlock1D(channels, channels, time_dim), _transformer_stack(config)]
            )
            for _ in range(config.estimator_mid_blocks)
        )
        self.up_blocks = nn.ModuleList(
            [
                UNetLevel(
                    [
                        CausalResnetBlock1D(2 * channels, channels, time_dim),
                        _transformer_stack(config),
                        CausalConv1d(channels, channels, 3),
                    ]
                )
            ]
        )
        self.final_block = CausalBlock1D(channels, channels)
        self.final_proj = nn.Conv1d(channels, MEL_CHANNELS, 1)
        self.time_embed_mixer = (
            nn.Linear(2 * time_dim, time_dim, bias=False) if config.meanflow else None
        )

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        end: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x, mu, cond``: ``[B, 80, T]``; ``mask``: ``[B, 1, T]`` (1 = valid); ``t``: ``[B]``;
        ``spks``: ``[B, 80]``; ``end`` (``[B]``, the meanflow decoder only, which requires it):
        the time the step ends at."""
        time_emb = self.time_mlp(t)
        if self.time_embed_mixer is not None:
            if end is None:
                raise S3GenInputError("the meanflow estimator needs the step's end time `end`")
            time_emb = self.time_embed_mixer(torch.cat([time_emb, self.time_mlp(end)], dim=1))
        h = torch.cat([x, mu, spks.unsqueeze(-1).expand(-1, -1, x.shape[-1]), cond], dim=1)
        attend = (mask > 0).unsqueeze(1)  # [B, 1, 1, T]

        down = cast(UNetLevel, self.down_blocks[0])
        up = cast(UNetLevel, self.up_blocks[0])
        h = down.run(h, mask, time_emb, attend)
        skip = h
        h = down.conv(h * mask)
        for mid in self.mid_blocks:
            h = cast(UNetLevel, mid).run(h, mask, time_emb, attend)
        h = up.run(torch.cat([h, skip], dim=1), mask, time_emb, attend)
        h = up.conv(h * mask)
        h = self.final_block(h, mask)
        return self.final_proj(h * mask) * mask
