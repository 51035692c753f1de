"""The speaker embedding T3 is conditioned on: a 3-layer LSTM over 40-bin mel partials.

Port of chatterbox-tts 0.1.2 ``VoiceEncoder.embeds_from_wavs`` for 16 kHz audio. The signal
processing reproduces the librosa calls the reference makes (``effects.trim(top_db=20)``, centred
reflect-padded STFT with a periodic Hann window, Slaney mel filters, power 2, no log) in numpy, so the
package needs no librosa; ``tests/parity`` checks the result against the reference.
"""

from __future__ import annotations

import logging
import math
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import as_strided
from torch import nn

from chatterbox_t3.checkpoint import load_voice_encoder_state_dict
from chatterbox_t3.config import VE_FILE as VE_FILE  # re-exported (tests, parity)
from chatterbox_t3.config import VoiceEncoderConfig, checkpoint_files
from chatterbox_t3.errors import T3InputError

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ signal processing
def _hz_to_mel(frequencies: np.ndarray) -> np.ndarray:
    """Slaney mel scale (librosa ``hz_to_mel(htk=False)``)."""
    f_sp = 200.0 / 3
    mels = frequencies / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    log_t = frequencies >= min_log_hz
    mels[log_t] = min_log_mel + np.log(frequencies[log_t] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    log_t = mels >= min_log_mel
    freqs[log_t] = min_log_hz * np.exp(logstep * (mels[log_t] - min_log_mel))
    return freqs


@cache
def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float
) -> np.ndarray:
    """Slaney-normalised triangular filters, float32 ``[n_mels, n_fft // 2 + 1]`` (librosa's)."""
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    min_mel = _hz_to_mel(np.array([fmin], dtype=np.float64))[0]
    max_mel = _hz_to_mel(np.array([fmax], dtype=np.float64))[0]
    mel_f = _mel_to_hz(np.linspace(min_mel, max_mel, n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, np.newaxis]
    weights.setflags(write=False)
    return weights


@cache
def _periodic_hann(length: int) -> np.ndarray:
    # scipy.signal.get_window("hann", length, fftbins=True): a symmetric window of length+1
    # built as 0.5 * cos(0 * x) + 0.5 * cos(x) over linspace(-pi, pi), last sample dropped.
    angles = np.linspace(-np.pi, np.pi, length + 1)
    symmetric = np.zeros(length + 1)
    symmetric += 0.5 * np.cos(0 * angles)
    symmetric += 0.5 * np.cos(angles)
    window = symmetric[:length]
    window.setflags(write=False)
    return window


def _frame(signal: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """``[frame_length, n_frames]`` strided view (librosa ``util.frame`` on a 1-D signal)."""
    n_frames = 1 + (signal.shape[-1] - frame_length) // hop_length
    stride = signal.strides[-1]
    return as_strided(
        signal,
        shape=(frame_length, n_frames),
        strides=(stride, stride * hop_length),
        writeable=False,
    )


def mel_spectrogram(wav: np.ndarray, config: VoiceEncoderConfig) -> np.ndarray:
    """Power-2 mel spectrogram ``[frames, num_mels]`` (float32), ``1 + len // hop`` frames."""
    padded = np.pad(wav, (config.n_fft // 2, config.n_fft // 2), mode="reflect")
    frames = _frame(padded, config.n_fft, config.hop_size)
    window = _periodic_hann(config.win_size)
    if config.win_size < config.n_fft:
        offset = (config.n_fft - config.win_size) // 2
        window = np.pad(window, (offset, config.n_fft - config.win_size - offset))
    # float64 window x float32 frames -> float64 FFT, stored as complex64 like librosa.
    spectrum = np.fft.rfft(window[:, None] * frames, axis=0).astype(np.complex64)
    magnitudes = np.abs(spectrum)
    magnitudes **= 2.0
    basis = mel_filterbank(
        config.sample_rate, config.n_fft, config.num_mels, config.fmin, config.fmax
    )
    mel = np.dot(basis, magnitudes)
    return mel.T


def trim_silence(wav: np.ndarray, config: VoiceEncoderConfig) -> np.ndarray:
    """Drop leading/trailing audio more than ``trim_top_db`` below the loudest frame's RMS."""
    frame_length, hop = config.trim_frame_length, config.trim_hop_length
    padded = np.pad(wav, (frame_length // 2, frame_length // 2), mode="constant")
    frames = _frame(padded, frame_length, hop)
    with np.errstate(over="ignore"):
        power = np.mean(np.square(frames, dtype=np.float32), axis=0)
    if not np.isfinite(power).all():
        # Samples beyond ~1e19 overflow float32 squares to inf (inf - inf = NaN dB, so every
        # frame looked silent); float64 holds any float32 sample's square.
        power = np.mean(np.square(frames, dtype=np.float64), axis=0)
    rms = np.sqrt(power)
    # librosa amplitude_to_db(rms, ref=np.max): power_to_db(rms**2, ref=max**2, amin=1e-10)
    ref_power = np.max(rms) ** 2
    db = 10.0 * np.log10(np.maximum(1e-10, np.square(rms))) - 10.0 * np.log10(
        np.maximum(1e-10, ref_power)
    )
    loud = np.flatnonzero(db > -config.trim_top_db)
    if loud.size == 0:
        return wav[:0]
    start = int(loud[0] * hop)
    end = min(wav.shape[-1], int((loud[-1] + 1) * hop))
    return wav[start:end]


def partial_windows(n_frames: int, config: VoiceEncoderConfig) -> tuple[int, int]:
    """(number of partials, mel frames they cover) for an utterance of ``n_frames`` frames."""
    step, size = config.frame_step, config.partial_frames
    n_wins, remainder = divmod(max(n_frames - size + step, 0), step)
    if n_wins == 0 or (remainder + (size - step)) / size >= config.min_coverage:
        n_wins += 1
    return n_wins, size + step * (n_wins - 1)


# --------------------------------------------------------------------------------------- network
class VoiceEncoder(nn.Module):
    """LSTM speaker encoder; tensor names match ``ve.safetensors``."""

    def __init__(self, config: VoiceEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or VoiceEncoderConfig()
        c = self.config
        self.lstm = nn.LSTM(
            c.num_mels, c.hidden_size, num_layers=c.num_lstm_layers, batch_first=True
        )
        self.proj = nn.Linear(c.hidden_size, c.speaker_embed_size)
        # Trained similarity scale/offset: stored in the checkpoint, unused at inference.
        self.similarity_weight = nn.Parameter(torch.tensor([10.0]))
        self.similarity_bias = nn.Parameter(torch.tensor([-5.0]))

    @classmethod
    def from_checkpoint_dir(
        cls, directory: str | Path, *, device: str | torch.device = "cpu"
    ) -> VoiceEncoder:
        encoder = cls()
        files = checkpoint_files(directory)
        encoder.load_state_dict(
            load_voice_encoder_state_dict(Path(directory) / files.voice_encoder)
        )
        return encoder.to(device).eval()

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings ``[B, 256]`` of mel partials ``[B, partial_frames, num_mels]``."""
        _, (hidden, _) = self.lstm(mels)
        raw = F.relu(self.proj(hidden[-1]))
        return raw / torch.linalg.norm(raw, dim=1, keepdim=True)

    @torch.inference_mode()
    def embed(self, wav: np.ndarray | torch.Tensor, sample_rate: int = 16000) -> torch.Tensor:
        """Speaker embedding ``[256]`` (float32, CPU) of one mono 16 kHz waveform.

        Same as the reference's ``embeds_from_wavs([wav], 16000)`` followed by the mean over the
        (single) utterance that ``prepare_conditionals`` takes.
        """
        c = self.config
        if sample_rate != c.sample_rate:
            raise T3InputError(
                f"VoiceEncoder.embed needs {c.sample_rate} Hz audio, got sample_rate={sample_rate}; "
                "resample first"
            )
        if isinstance(wav, torch.Tensor):
            wav = wav.detach().to("cpu", torch.float32).numpy()
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim == 2 and 1 in wav.shape:
            wav = wav.reshape(-1)
        if wav.ndim != 1:
            raise T3InputError(f"expected a mono waveform [samples], got shape {list(wav.shape)}")
        if not np.isfinite(wav).all():
            raise T3InputError("the waveform contains NaN or infinite samples")
        trimmed = trim_silence(wav, c)
        if trimmed.shape[0] <= c.n_fft // 2:
            raise T3InputError(
                f"the voice sample has {trimmed.shape[0]} samples of sound after trimming silence "
                f"({wav.shape[0]} before); need more than {c.n_fft // 2}"
            )
        mel = mel_spectrogram(trimmed, c)
        n_partials, covered = partial_windows(mel.shape[0], c)
        if covered > mel.shape[0]:
            mel = np.concatenate([mel, np.zeros((covered - mel.shape[0], c.num_mels))])
        mel_t = torch.from_numpy(np.ascontiguousarray(mel[:covered], dtype=np.float32))
        step, size = c.frame_step, c.partial_frames
        device = self.proj.weight.device
        partials = torch.stack([mel_t[i * step : i * step + size] for i in range(n_partials)])
        n_chunks = math.ceil(n_partials / c.batch_size)
        embeds = torch.cat([self(batch.to(device)) for batch in partials.chunk(n_chunks)]).cpu()
        mean = embeds.mean(dim=0)
        return mean / torch.linalg.norm(mean)
