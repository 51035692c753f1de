"""CAMPPlus speaker encoder (3D-Speaker / FunASR): 16 kHz audio -> 192-d x-vector.

Input features are 80-bin Kaldi filterbanks with the per-utterance mean removed. Module and
attribute names follow the checkpoint layout (``head``, ``xvector.tdnn``, ``xvector.block1`` ...)."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi
from torch import nn

from chatterbox_s3gen.config import S3GenConfig
from chatterbox_s3gen.constants import (
    S3_TOKENIZER_SAMPLE_RATE,
    SPEAKER_EMBEDDING_DIM,
    SPEAKER_FBANK_BINS,
)

# Kaldi frames are 25 ms long; the encoder's statistics pooling needs at least two frames after
# the stride-2 TDNN, i.e. three fbank frames.
MIN_SPEAKER_SAMPLES = 400 + 2 * 160


def kaldi_fbank(wav: torch.Tensor) -> torch.Tensor:
    """``wav``: ``[samples]`` at 16 kHz -> ``[frames, 80]`` log filterbank minus its time mean."""
    feats = kaldi.fbank(
        wav.unsqueeze(0), num_mel_bins=SPEAKER_FBANK_BINS, sample_frequency=S3_TOKENIZER_SAMPLE_RATE
    )
    return feats - feats.mean(dim=0, keepdim=True)


def _bn_relu(channels: int, affine: bool = True, relu: bool = True) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        batchnorm=nn.BatchNorm1d(channels, affine=affine)
    )
    if relu:
        layers["relu"] = nn.ReLU()
    return nn.Sequential(layers)


class BasicResBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=(stride, 1), bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class FrequencyConvHead(nn.Module):
    """2-D conv front end over (frequency, time); frequency is downsampled 8x."""

    def __init__(self, channels: int, feat_dim: int = SPEAKER_FBANK_BINS) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.layer1 = nn.Sequential(
            BasicResBlock(channels, channels, 2), BasicResBlock(channels, channels, 1)
        )
        self.layer2 = nn.Sequential(
            BasicResBlock(channels, channels, 2), BasicResBlock(channels, channels, 1)
        )
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.out_channels = channels * (feat_dim // 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        out = self.layer2(self.layer1(out))
        out = F.relu(self.bn2(self.conv2(out)))
        return out.reshape(out.shape[0], out.shape[1] * out.shape[2], out.shape[3])


class TDNNLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2,
            bias=False,
        )
        self.nonlinear = _bn_relu(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


class ContextAwareMask(nn.Module):
    """Local conv gated by a sigmoid of global + 100-frame segment context."""

    segment_len = 100

    def __init__(
        self, bn_channels: int, out_channels: int, kernel_size: int, dilation: int
    ) -> None:
        super().__init__()
        padding = (kernel_size - 1) // 2 * dilation
        self.linear_local = nn.Conv1d(
            bn_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        )
        self.linear1 = nn.Conv1d(bn_channels, bn_channels // 2, 1)
        self.linear2 = nn.Conv1d(bn_channels // 2, out_channels, 1)

    def _segment_pool(self, x: torch.Tensor) -> torch.Tensor:
        seg = F.avg_pool1d(x, kernel_size=self.segment_len, stride=self.segment_len, ceil_mode=True)
        seg = seg.unsqueeze(-1).expand(*seg.shape, self.segment_len).reshape(*seg.shape[:-1], -1)
        return seg[..., : x.shape[-1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.linear_local(x)
        context = x.mean(-1, keepdim=True) + self._segment_pool(x)
        gate = torch.sigmoid(self.linear2(F.relu(self.linear1(context))))
        return local * gate


class DenseTDNNLayer(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, bn_channels: int, dilation: int
    ) -> None:
        super().__init__()
        self.nonlinear1 = _bn_relu(in_channels)
        self.linear1 = nn.Conv1d(in_channels, bn_channels, 1, bias=False)
        self.nonlinear2 = _bn_relu(bn_channels)
        self.cam_layer = ContextAwareMask(bn_channels, out_channels, 3, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class DenseTDNNBlock(nn.Module):
    """Densely connected layers; children are named ``tdnnd1``, ``tdnnd2``, ..."""

    def __init__(
        self, num_layers: int, in_channels: int, growth: int, bn_channels: int, dilation: int
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = DenseTDNNLayer(in_channels + i * growth, growth, bn_channels, dilation)
            self.add_module(f"tdnnd{i + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = torch.cat([x, layer(x)], dim=1)
        return x


class TransitLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.nonlinear = _bn_relu(in_channels)
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class StatsPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=-1), x.std(dim=-1, unbiased=True)], dim=-1)


class DenseLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.nonlinear = _bn_relu(out_channels, affine=False, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1))


class CAMPPlus(nn.Module):
    def __init__(self, config: S3GenConfig) -> None:
        super().__init__()
        self.head = FrequencyConvHead(config.speaker_head_channels)
        channels = self.head.out_channels
        growth = config.speaker_growth_rate
        xvector: OrderedDict[str, nn.Module] = OrderedDict(
            tdnn=TDNNLayer(channels, config.speaker_init_channels, 5, stride=2)
        )
        channels = config.speaker_init_channels
        for i, (num_layers, dilation) in enumerate(zip(config.speaker_block_layers, (1, 2, 2))):
            xvector[f"block{i + 1}"] = DenseTDNNBlock(
                num_layers, channels, growth, config.speaker_bn_size * growth, dilation
            )
            channels += num_layers * growth
            xvector[f"transit{i + 1}"] = TransitLayer(channels, channels // 2)
            channels //= 2
        xvector["out_nonlinear"] = _bn_relu(channels)
        xvector["stats"] = StatsPool()
        xvector["dense"] = DenseLayer(channels * 2, SPEAKER_EMBEDDING_DIM)
        self.xvector = nn.Sequential(xvector)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """``feats``: ``[batch, frames, 80]`` -> ``[batch, 192]``."""
        return self.xvector(self.head(feats.permute(0, 2, 1)))

    @torch.inference_mode()
    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        """x-vector (``[192]``) of one mono 16 kHz waveform."""
        feats = kaldi_fbank(wav.float())
        return self.forward(feats.unsqueeze(0).to(next(self.parameters()).dtype))[0].float()
