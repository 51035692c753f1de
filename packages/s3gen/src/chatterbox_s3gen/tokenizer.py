"""The S3 speech tokenizer: 16 kHz audio -> 25 Hz speech-token ids.

The network is ``s3tokenizer``'s ``S3TokenizerV2`` (a Whisper-style encoder with FSMN attention
and an FSQ head); this module adds the log-mel front end whose two buffers (``_mel_filters``,
``window``) are part of the checkpoint layout."""

from __future__ import annotations

import torch
from s3tokenizer.model_v2 import ModelConfig, S3TokenizerV2

from chatterbox_s3gen.audio import slaney_mel_filterbank
from chatterbox_s3gen.config import S3GenConfig
from chatterbox_s3gen.constants import (
    S3_TOKENIZER_SAMPLE_RATE,
    TOKENIZER_HOP,
    TOKENIZER_MEL_FRAMES_PER_TOKEN,
    TOKENIZER_N_FFT,
    TOKENIZER_N_MELS,
)

# The rotary table of S3TokenizerV2 covers 2048 positions (after the two stride-2 convs).
MAX_TOKENIZER_POSITIONS = 2048
# torch.stft's reflect padding needs more samples than half the FFT size.
MIN_TOKENIZER_SAMPLES = TOKENIZER_N_FFT // 2 + 1


def num_tokens_for_frames(mel_frames: int) -> int:
    """Tokens S3TokenizerV2 emits for ``mel_frames`` log-mel frames (two stride-2 convs)."""
    after_conv1 = (mel_frames - 1) // 2 + 1
    return (after_conv1 - 1) // 2 + 1


class S3SpeechTokenizer(S3TokenizerV2):
    """``S3TokenizerV2`` plus the chatterbox log-mel front end (Hann 400 / hop 160 STFT, 128-bin
    Slaney mel, log10 with an 8-decade floor)."""

    # The released checkpoint may lack these two buffers; they are derived, so the loader fills them.
    derived_buffers = ("_mel_filters", "window")

    def __init__(self, config: S3GenConfig) -> None:
        super().__init__(
            "speech_tokenizer_v2_25hz",
            ModelConfig(
                n_mels=TOKENIZER_N_MELS,
                n_audio_state=config.tokenizer_state,
                n_audio_head=config.tokenizer_heads,
                n_audio_layer=config.tokenizer_layers,
            ),
        )
        self._mel_filters: torch.Tensor
        self.window: torch.Tensor
        filters = slaney_mel_filterbank(S3_TOKENIZER_SAMPLE_RATE, TOKENIZER_N_FFT, TOKENIZER_N_MELS)
        self.register_buffer("_mel_filters", torch.from_numpy(filters))
        self.register_buffer("window", torch.hann_window(TOKENIZER_N_FFT))

    def reset_derived_buffers(self) -> None:
        """Recompute ``_mel_filters`` and ``window`` (used when a checkpoint does not carry them)."""
        filters = slaney_mel_filterbank(S3_TOKENIZER_SAMPLE_RATE, TOKENIZER_N_FFT, TOKENIZER_N_MELS)
        self._mel_filters.copy_(torch.from_numpy(filters))
        self.window.copy_(torch.hann_window(TOKENIZER_N_FFT))

    def log_mel_spectrogram(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav``: ``[samples]`` at 16 kHz -> ``[128, frames]`` with ``frames = samples // 160``."""
        stft = torch.stft(
            wav.to(self._mel_filters.device, torch.float32),
            TOKENIZER_N_FFT,
            TOKENIZER_HOP,
            window=self.window,
            return_complex=True,
        )
        power = stft[..., :-1].abs() ** 2
        mel = self._mel_filters @ power
        log_mel = torch.clamp(mel, min=1e-10).log10()
        log_mel = torch.maximum(log_mel, log_mel.max() - 8.0)
        return (log_mel + 4.0) / 4.0

    @torch.inference_mode()
    def tokenize(self, wav: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
        """Speech tokens (int64 ``[T]``) of one mono 16 kHz waveform; ``max_len`` keeps only the
        first ``max_len`` tokens' worth of audio (4 mel frames per token)."""
        mel = self.log_mel_spectrogram(wav)
        if max_len is not None:
            mel = mel[:, : max_len * TOKENIZER_MEL_FRAMES_PER_TOKEN]
        mel_len = torch.tensor([mel.shape[1]], dtype=torch.int32, device=mel.device)
        hidden, _ = self.encoder(mel.unsqueeze(0), mel_len)
        return self._fsq_codes(hidden[0])

    def _fsq_codes(self, hidden: torch.Tensor) -> torch.Tensor:
        """``FSQCodebook.encode`` of s3tokenizer 0.1.7, same arithmetic, without its einops call
        (whose first use imports torch._dynamo: seconds of start-up for one reshape)."""
        codebook = self.quantizer._codebook
        h = codebook.project_down(hidden).float()
        h = (h.tanh() * 0.9990000128746033).round() + 1
        powers = torch.pow(
            codebook.level, torch.arange(2**codebook.level, device=h.device, dtype=h.dtype)
        )
        return torch.sum(h * powers.unsqueeze(0), dim=-1).to(torch.int64)

    def max_samples(self) -> int:
        """Longest 16 kHz input the rotary table covers."""
        return MAX_TOKENIZER_POSITIONS * TOKENIZER_MEL_FRAMES_PER_TOKEN * TOKENIZER_HOP


__all__ = ["MIN_TOKENIZER_SAMPLES", "S3SpeechTokenizer", "num_tokens_for_frames"]
