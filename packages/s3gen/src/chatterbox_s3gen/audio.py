"""Signal-processing front ends shared by the tokenizer, the speaker encoder and the flow prompt:
a librosa-equivalent Slaney mel filterbank, S3Gen's 24 kHz log-mel, cached resamplers and the
validation every waveform input goes through."""

from __future__ import annotations

import logging
import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from chatterbox_s3gen.constants import MEL_CHANNELS, MEL_FMAX, MEL_HOP, MEL_N_FFT, S3GEN_SAMPLE_RATE
from chatterbox_s3gen.errors import S3GenInputError, S3GenInputTypeError

logger = logging.getLogger(__name__)

MAX_CHANNELS = 8
"""Multi-channel input is accepted as ``(channels, samples)`` with at most this many channels."""
SILENCE_PEAK = 1e-4
"""A reference whose peak magnitude is below this (-80 dBFS) is rejected as silent."""


# --------------------------------------------------------------------------------------------
# Mel filterbank (librosa.filters.mel with htk=False, norm="slaney"), float64 like librosa.
# --------------------------------------------------------------------------------------------
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    mel = hz / _F_SP
    log_region = hz >= _MIN_LOG_HZ
    mel[log_region] = _MIN_LOG_MEL + np.log(hz[log_region] / _MIN_LOG_HZ) / _LOGSTEP
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    hz = _F_SP * mel
    log_region = mel >= _MIN_LOG_MEL
    hz[log_region] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel[log_region] - _MIN_LOG_MEL))
    return hz


def slaney_mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """``[n_mels, 1 + n_fft // 2]`` float32 weights equal to ``librosa.filters.mel`` (Slaney mel
    scale and area normalisation), computed the same way so the float32 result matches it."""
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    fft_freqs = np.arange(1 + n_fft // 2, dtype=np.float64) * (1.0 / (n_fft * (1.0 / sample_rate)))
    mel_edges = np.linspace(
        _hz_to_mel(np.array([float(fmin)]))[0], _hz_to_mel(np.array([fmax]))[0], n_mels + 2
    )
    hz_edges = _mel_to_hz(mel_edges)
    widths = np.diff(hz_edges)
    ramps = hz_edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    # librosa stores the triangles as float32 first and then scales them in float64: keep both roundings.
    weights = np.maximum(0.0, np.minimum(lower, upper)).astype(np.float32)
    area_norm = 2.0 / (hz_edges[2 : n_mels + 2] - hz_edges[:n_mels])
    return (weights.astype(np.float64) * area_norm[:, None]).astype(np.float32)


def periodic_hann_window(length: int) -> torch.Tensor:
    """Periodic Hann window in float32, rounded from float64 (as scipy's ``get_window`` is)."""
    return torch.hann_window(length, periodic=True, dtype=torch.float64).to(torch.float32)


# --------------------------------------------------------------------------------------------
# S3Gen's 24 kHz log-mel (Matcha-TTS / CosyVoice front end)
# --------------------------------------------------------------------------------------------
class S3GenMelSpectrogram(nn.Module):
    """80-bin log-magnitude mel at 50 frames/s: n_fft 1920, hop 480, fmax 8 kHz, no centring but a
    reflect pad of (n_fft - hop) / 2 on each side, so ``frames = samples // 480``."""

    def __init__(self) -> None:
        super().__init__()
        self.mel_basis: torch.Tensor
        self.window: torch.Tensor
        basis = slaney_mel_filterbank(S3GEN_SAMPLE_RATE, MEL_N_FFT, MEL_CHANNELS, 0.0, MEL_FMAX)
        self.register_buffer("mel_basis", torch.from_numpy(basis), persistent=False)
        self.register_buffer("window", torch.hann_window(MEL_N_FFT), persistent=False)

    @staticmethod
    def num_frames(num_samples: int) -> int:
        pad = (MEL_N_FFT - MEL_HOP) // 2
        return (num_samples + 2 * pad - MEL_N_FFT) // MEL_HOP + 1

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav``: ``[batch, samples]`` at 24 kHz -> ``[batch, 80, frames]``."""
        pad = (MEL_N_FFT - MEL_HOP) // 2
        wav = F.pad(wav.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        spec = torch.stft(
            wav,
            MEL_N_FFT,
            hop_length=MEL_HOP,
            win_length=MEL_N_FFT,
            window=self.window,
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        spec = torch.view_as_real(spec)
        magnitude = torch.sqrt(spec.pow(2).sum(-1) + 1e-9)
        mel = torch.matmul(self.mel_basis, magnitude)
        return torch.log(torch.clamp(mel, min=1e-5))


# --------------------------------------------------------------------------------------------
# Resampling and input validation
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _resampler(
    source_rate: int, target_rate: int, device: torch.device
) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(source_rate, target_rate).to(device)


def resample(wav: torch.Tensor, source_rate: int, target_rate: int) -> torch.Tensor:
    """torchaudio's default (windowed-sinc) resampler, cached per rate pair and device."""
    if source_rate == target_rate:
        return wav
    return _resampler(source_rate, target_rate, wav.device)(wav)


MIN_SAMPLE_RATE = 1000
"""The lowest sample rate taken (the product's too): anything below is a rate in kHz."""


def check_sample_rate(sample_rate: object, argument: str = "sample_rate") -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer):
        raise S3GenInputTypeError(
            f"{argument} must be an int (Hz), got {type(sample_rate).__name__} {sample_rate!r}"
        )
    if sample_rate <= 0:
        raise S3GenInputError(f"{argument} must be a positive number of Hz, got {sample_rate}")
    if sample_rate < MIN_SAMPLE_RATE:
        # A rate in kHz (24 for 24 kHz) made the audio 1000x too long: "the tokenizer handles
        # at most 82 s" for a 5 s recording.
        raise S3GenInputError(
            f"{argument} is {sample_rate} Hz, below any audio rate ({MIN_SAMPLE_RATE} Hz at "
            f"least); give it in Hz ({sample_rate * 1000} for {sample_rate} kHz)"
        )
    return int(sample_rate)


def as_mono_waveform(wav: object, argument: str = "wav") -> torch.Tensor:
    """Validate a waveform and return it as a 1-D float32 tensor on its original device.

    Accepted: a tensor or numpy array of shape ``(samples,)``, ``(1, samples)`` or
    ``(channels, samples)`` (channels-first as ``torchaudio.load`` returns; up to
    :data:`MAX_CHANNELS` channels, averaged to mono). NaN/Inf samples, empty and silent input
    raise ``ValueError``."""
    if isinstance(wav, np.ndarray):
        wav = torch.from_numpy(np.ascontiguousarray(wav))
    if not isinstance(wav, torch.Tensor):
        raise S3GenInputTypeError(
            f"{argument} must be a torch.Tensor or numpy array, got {type(wav).__name__}"
        )
    if not (wav.is_floating_point() or wav.dtype in (torch.int16, torch.int32)):
        raise S3GenInputTypeError(
            f"{argument} must hold float samples in [-1, 1], got dtype {wav.dtype}"
        )
    if wav.dtype == torch.int16:
        wav = wav.float() / 32768.0
    elif wav.dtype == torch.int32:
        wav = wav.float() / 2147483648.0
    if wav.dim() == 2:
        channels = wav.shape[0]
        if channels == 0:  # their mean would be NaN samples
            raise S3GenInputError(
                f"{argument} has shape {tuple(wav.shape)}: no channels; pass (samples,) or "
                "(channels, samples) with at least one channel"
            )
        if channels > MAX_CHANNELS:
            raise S3GenInputError(
                f"{argument} has shape {tuple(wav.shape)}; 2-D audio must be (channels, samples) "
                f"with at most {MAX_CHANNELS} channels (as torchaudio.load returns). Transpose "
                "(samples, channels) arrays such as soundfile's first."
            )
        if channels > 1:
            logger.info("%s: averaging %d channels to mono", argument, channels)
        wav = wav.float().mean(dim=0)
    elif wav.dim() != 1:
        raise S3GenInputError(
            f"{argument} must be 1-D (samples,) or 2-D (channels, samples), got shape {tuple(wav.shape)}"
        )
    wav = wav.to(torch.float32)
    if wav.numel() == 0:
        raise S3GenInputError(f"{argument} is empty (0 samples)")
    finite = torch.isfinite(wav)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise S3GenInputError(f"{argument} contains {bad} NaN/Inf samples; clean the audio first")
    peak = float(wav.abs().max())
    if peak < SILENCE_PEAK:
        raise S3GenInputError(
            f"{argument} is silent (peak amplitude {peak:.2e} < {SILENCE_PEAK:g}); a voice reference "
            "needs audible speech"
        )
    return wav
