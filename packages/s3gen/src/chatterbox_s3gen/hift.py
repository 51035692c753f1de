"""HiFT vocoder (CosyVoice's HiFTNet: neural source filter + iSTFTNet), 80-bin mel -> 24 kHz.

A conv F0 predictor drives a harmonic sine source (random initial phases and additive noise, the
only stochastic part); the generator upsamples the mel 120x with transposed convs, fuses the
source's STFT at every level, and predicts a 9-bin magnitude/phase spectrogram that an inverse
STFT (n_fft 16, hop 4) turns into samples.

Batching: :meth:`HiFTGenerator.forward` takes right-padded mels plus per-item lengths. After every
conv the padded region is zeroed, the source STFT reflects at each item's own end, and the inverse
STFT normalises by each item's own window envelope, so an item's samples equal its unbatched run.
STFT and inverse STFT are written as convolutions with fixed DFT bases (identical maths to
``torch.stft``/``torch.istft`` up to float rounding) so the whole generator exports to ONNX. The
random inputs (``phases``, ``noise``) are arguments; :func:`draw_source_noise` draws them exactly
as the reference does after ``torch.manual_seed(seed)``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from chatterbox_s3gen.audio import periodic_hann_window
from chatterbox_s3gen.config import S3GenConfig
from chatterbox_s3gen.constants import MEL_CHANNELS, MEL_HOP, S3GEN_SAMPLE_RATE
from chatterbox_s3gen.masks import length_mask


def _same_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class Snake(nn.Module):
    """``x + sin^2(alpha x) / alpha`` with a learned per-channel ``alpha``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.unsqueeze(0).unsqueeze(-1)
        return x + (1.0 / (alpha + 1e-9)) * torch.pow(torch.sin(x * alpha), 2)


class ResBlock(nn.Module):
    """HiFi-GAN residual block with Snake activations; ``mask`` zeroes the padded region after
    every conv so zero padding is what each conv sees past an item's end."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(
                nn.Conv1d(
                    channels,
                    channels,
                    kernel_size,
                    dilation=d,
                    padding=_same_padding(kernel_size, d),
                )
            )
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            weight_norm(
                nn.Conv1d(channels, channels, kernel_size, padding=_same_padding(kernel_size))
            )
            for _ in dilations
        )
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for conv1, conv2, act1, act2 in zip(
            self.convs1, self.convs2, self.activations1, self.activations2
        ):
            xt = conv1(act1(x)) * mask
            xt = conv2(act2(xt)) * mask
            x = xt + x
        return x


class ConvRNNF0Predictor(nn.Module):
    """Five k=3 convs with ELU, then a linear head; |output| is F0 in Hz per mel frame."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            layers.append(
                weight_norm(nn.Conv1d(MEL_CHANNELS if i == 0 else channels, channels, 3, padding=1))
            )
            layers.append(nn.ELU())
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, 1)

    def forward(self, mel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``mel``: ``[B, 80, T]`` (zero past each length), ``mask``: ``[B, 1, T]`` -> ``[B, T]``."""
        x = mel
        for layer in self.condnet:
            x = layer(x)
            if isinstance(layer, nn.Conv1d):
                x = x * mask
        return torch.abs(self.classifier(x.transpose(1, 2)).squeeze(-1))


class SourceModuleHnNSF(nn.Module):
    """Harmonic-plus-noise excitation from F0 (sine generator + a linear merge of the harmonics)."""

    def __init__(self, config: S3GenConfig) -> None:
        super().__init__()
        self.num_harmonics = config.hift_nb_harmonics + 1
        self.sine_amp = config.hift_nsf_alpha
        self.noise_std = config.hift_nsf_sigma
        self.voiced_threshold = config.hift_voiced_threshold
        self.l_linear = nn.Linear(self.num_harmonics, 1)

    def forward(self, f0: torch.Tensor, phases: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``f0``: ``[B, 1, N]`` Hz per sample; ``phases``: ``[B, H, 1]``; ``noise``: ``[B, H, N]``
        standard normal. Returns the excitation ``[B, 1, N]`` (float32)."""
        f0 = f0.float()
        harmonics = torch.arange(1, self.num_harmonics + 1, device=f0.device, dtype=torch.float32)
        cycles = f0 * harmonics.view(1, -1, 1) / S3GEN_SAMPLE_RATE
        theta = 2 * math.pi * (torch.cumsum(cycles, dim=-1) % 1)
        sines = self.sine_amp * torch.sin(theta + phases)
        voiced = (f0 > self.voiced_threshold).to(torch.float32)
        noise_amp = voiced * self.noise_std + (1 - voiced) * self.sine_amp / 3
        sines = sines * voiced + noise_amp * noise
        merged = torch.tanh(
            F.linear(
                sines.transpose(1, 2), self.l_linear.weight.float(), self.l_linear.bias.float()
            )
        )
        return merged.transpose(1, 2)


@lru_cache(maxsize=8)
def _dft_kernels(
    n_fft: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float32 analysis ``[2K, 1, n_fft]`` (windowed cos / -sin rows, ``K = n_fft/2 + 1``),
    synthesis ``[2K, 1, n_fft]`` (windowed one-sided inverse DFT: real rows, then imaginary rows)
    and squared-window ``[1, 1, n_fft]`` kernels. Not buffers: they must stay float32 when the
    generator's weights are cast to a lower precision."""
    window = periodic_hann_window(n_fft).double()
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    angle = 2 * math.pi * k[:, None] * n[None, :] / n_fft
    analysis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window
    weight = torch.full((n_fft // 2 + 1, 1), 2.0, dtype=torch.float64)
    weight[0] = weight[-1] = 1.0  # DC and Nyquist appear once in the Hermitian spectrum
    imag = -torch.sin(angle) * weight
    imag[0] = imag[-1] = 0.0  # irfft ignores their imaginary parts
    synthesis = torch.cat([torch.cos(angle) * weight, imag]) * window / n_fft
    return (
        analysis.float().unsqueeze(1).to(device),
        synthesis.float().unsqueeze(1).to(device),
        window.pow(2).float().view(1, 1, -1).to(device),
    )


class HiFTGenerator(nn.Module):
    def __init__(self, config: S3GenConfig) -> None:
        super().__init__()
        self.n_fft = config.hift_istft_n_fft
        self.hop = config.hift_istft_hop
        self.upsample_rates = tuple(config.hift_upsample_rates)
        self.lrelu_slope = config.hift_lrelu_slope
        self.audio_limit = config.hift_audio_limit
        self.num_kernels = len(config.hift_resblock_kernel_sizes)
        base = config.hift_base_channels
        spec_channels = self.n_fft + 2

        self.m_source = SourceModuleHnNSF(config)
        self.conv_pre = weight_norm(nn.Conv1d(MEL_CHANNELS, base, 7, padding=3))
        self.ups = nn.ModuleList(
            weight_norm(
                nn.ConvTranspose1d(base // 2**i, base // 2 ** (i + 1), k, u, padding=(k - u) // 2)
            )
            for i, (u, k) in enumerate(zip(self.upsample_rates, config.hift_upsample_kernel_sizes))
        )
        # Source STFT frames are downsampled to each level's rate: cumulative rates of the later levels.
        down_rates = [
            math.prod(self.upsample_rates[i + 1 :]) for i in range(len(self.upsample_rates))
        ]
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (rate, k, d) in enumerate(
            zip(
                down_rates,
                config.hift_source_resblock_kernel_sizes,
                config.hift_source_resblock_dilations,
            )
        ):
            channels = base // 2 ** (i + 1)
            if rate == 1:
                self.source_downs.append(nn.Conv1d(spec_channels, channels, 1))
            else:
                self.source_downs.append(
                    nn.Conv1d(spec_channels, channels, rate * 2, rate, padding=rate // 2)
                )
            self.source_resblocks.append(ResBlock(channels, k, d))
        self.resblocks = nn.ModuleList(
            ResBlock(base // 2 ** (i + 1), k, d)
            for i in range(len(self.ups))
            for k, d in zip(config.hift_resblock_kernel_sizes, config.hift_resblock_dilations)
        )
        self.conv_post = weight_norm(
            nn.Conv1d(base // 2 ** len(self.ups), spec_channels, 7, padding=3)
        )
        self.f0_predictor = ConvRNNF0Predictor(config.hift_f0_channels)

    @property
    def num_harmonics(self) -> int:
        return self.m_source.num_harmonics

    def fold_weight_norm(self) -> None:
        """Replace every weight-norm parametrization by its current weight (inference speed, ONNX)."""
        for module in self.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)

    # -- spectral helpers ------------------------------------------------------------------
    def _stft(self, signal: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Centred STFT of ``[B, N]`` signals with reflect padding at each item's own end
        (what ``torch.stft(center=True)`` does to the item alone). Returns ``[B, n_fft+2, F]``
        (real bins then imaginary bins), zero past each item's ``length // hop + 1`` frames."""
        pad = self.n_fft // 2
        n = signal.shape[1]
        positions = torch.arange(n + 2 * pad, device=signal.device) - pad
        index = positions.abs().unsqueeze(0).expand(signal.shape[0], -1)
        last = (lengths - 1).unsqueeze(1)
        index = torch.where(index > last, 2 * last - index, index)
        index = torch.clamp(index, min=0).clamp(max=n - 1)
        padded = torch.gather(signal, 1, index)
        analysis, _, _ = _dft_kernels(self.n_fft, signal.device)
        spec = F.conv1d(padded.unsqueeze(1), analysis, stride=self.hop)
        frame_mask = length_mask(lengths // self.hop + 1, spec.shape[2]).unsqueeze(1)
        return spec * frame_mask

    def _istft(
        self, magnitude: torch.Tensor, phase: torch.Tensor, frame_lengths: torch.Tensor
    ) -> torch.Tensor:
        """Inverse of :meth:`_stft` (``torch.istft(center=True)`` per item): ``[B, K, F]`` -> ``[B, hop*(F-1)]``."""
        frame_mask = length_mask(frame_lengths, magnitude.shape[2]).unsqueeze(1).to(magnitude.dtype)
        magnitude = torch.clamp(magnitude, max=1e2)
        spec = (
            torch.cat([magnitude * torch.cos(phase), magnitude * torch.sin(phase)], dim=1)
            * frame_mask
        )
        _, synthesis, window_sq = _dft_kernels(self.n_fft, magnitude.device)
        frames = F.conv_transpose1d(spec, synthesis, stride=self.hop)
        envelope = F.conv_transpose1d(frame_mask, window_sq, stride=self.hop)
        pad = self.n_fft // 2
        frames = frames[:, 0, pad:-pad]
        envelope = envelope[:, 0, pad:-pad]
        return frames / torch.where(envelope > 1e-11, envelope, torch.ones_like(envelope))

    # -- network -----------------------------------------------------------------------------
    def _masked(
        self, mel: torch.Tensor, mel_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mel in the conv dtype, zero past each item, and that mask ``[B, 1, T]``."""
        conv_dtype = self.conv_pre.weight.dtype
        mask = length_mask(mel_lengths, mel.shape[2]).unsqueeze(1).to(conv_dtype)
        return mel.to(conv_dtype) * mask, mask

    def predict_f0(self, mel: torch.Tensor, mel_lengths: torch.Tensor) -> torch.Tensor:
        """The F0 ``[B, T]`` (Hz per frame) :meth:`forward` computes for the same inputs."""
        return self.f0_predictor(*self._masked(mel, mel_lengths))

    def forward(
        self,
        mel: torch.Tensor,
        mel_lengths: torch.Tensor,
        phases: torch.Tensor,
        noise: torch.Tensor,
        f0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``mel``: ``[B, 80, T]`` right-padded; ``mel_lengths``: ``[B]``; ``phases``: ``[B, H, 1]``;
        ``noise``: ``[B, H, 480*T]``. Returns ``[B, 480*T]`` float32 samples, zero past each item.
        ``f0``: ``[B, T]``, :meth:`predict_f0` of the same mel (a caller that needed it first
        passes it instead of having it computed twice)."""
        conv_dtype = self.conv_pre.weight.dtype
        mel, mask = self._masked(mel, mel_lengths)
        if f0 is None:
            f0 = self.f0_predictor(mel, mask)  # [B, T]
        f0_samples = f0.unsqueeze(-1).expand(-1, -1, MEL_HOP).reshape(f0.shape[0], 1, -1)
        sample_lengths = mel_lengths * MEL_HOP
        sample_mask = length_mask(sample_lengths, f0_samples.shape[2]).unsqueeze(1)
        source = self.m_source(f0_samples, phases, noise) * sample_mask
        source_spec = self._stft(source[:, 0], sample_lengths).to(conv_dtype)

        x = self.conv_pre(mel) * mask
        lengths = mel_lengths
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, self.lrelu_slope))
            lengths = lengths * self.upsample_rates[i]
            if i == len(self.ups) - 1:
                x = F.pad(x, (1, 0), mode="reflect")
                lengths = lengths + 1
            level_mask = length_mask(lengths, x.shape[2]).unsqueeze(1).to(conv_dtype)
            x = x * level_mask
            si = self.source_downs[i](source_spec) * level_mask
            x = x + self.source_resblocks[i](si, level_mask)
            acc = self.resblocks[i * self.num_kernels](x, level_mask)
            for j in range(1, self.num_kernels):
                acc = acc + self.resblocks[i * self.num_kernels + j](x, level_mask)
            x = acc / self.num_kernels

        x = self.conv_post(F.leaky_relu(x)).float()
        bins = self.n_fft // 2 + 1
        wav = self._istft(torch.exp(x[:, :bins]), torch.sin(x[:, bins:]), lengths)
        wav = torch.clamp(wav, -self.audio_limit, self.audio_limit)
        return wav * length_mask(sample_lengths, wav.shape[1]).to(wav.dtype)


def draw_source_noise(
    num_samples: Sequence[int],
    seeds: Sequence[int],
    num_harmonics: int,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs of :meth:`HiFTGenerator.forward` for items of ``num_samples[i]`` samples.

    Item ``i`` gets exactly the numbers the reference vocoder draws after
    ``torch.manual_seed(seeds[i])``: harmonic phases ``U(-pi, pi)`` from the CPU generator (the
    fundamental's phase is 0), then the additive noise ``N(0, 1)`` — from the same CPU generator
    on CPU, from a CUDA generator with the same seed on CUDA (as torch.manual_seed seeds both).
    Returns ``phases [B, H, 1]`` and ``noise [B, H, max(num_samples)]`` (zero-padded)."""
    device = torch.device(device)
    batch = len(num_samples)
    low = torch.tensor(-math.pi, dtype=torch.float32)
    span = torch.tensor(math.pi, dtype=torch.float32) - low
    phases = torch.zeros(batch, num_harmonics, 1)
    noise = torch.zeros(batch, num_harmonics, max(num_samples, default=0), device=device)
    for i, (n, seed) in enumerate(zip(num_samples, seeds)):
        cpu = torch.Generator().manual_seed(int(seed))
        phases[i] = low + torch.rand((1, num_harmonics, 1), generator=cpu)[0] * span
        if device.type == "cpu":
            noise[i, :, :n] = torch.randn((1, num_harmonics, n), generator=cpu)[0]
        else:
            on_device = torch.Generator(device=device).manual_seed(int(seed))
            noise[i, :, :n] = torch.randn(
                (1, num_harmonics, n), generator=on_device, device=device
            )[0]
    phases[:, 0] = 0.0
    return phases.to(device), noise
