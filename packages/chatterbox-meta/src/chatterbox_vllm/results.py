"""What a call returns: requests in, :class:`GenerationResult` out, per-chunk audio in between."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from chatterbox_vllm.audio import AudioInput, save_audio
from chatterbox_vllm.controls import GenerationParams
from chatterbox_vllm.interfaces import SpeechTokens
from chatterbox_vllm.voices import Voice

VoiceLike = Voice | AudioInput | None
"""``None`` (the checkpoint's built-in voice), a prepared :class:`Voice`, an audio file path, a
voice saved with :meth:`Voice.save` (``.pt``), or ``(waveform, sample_rate)``."""


@dataclass(frozen=True)
class TTSRequest:
    """One text with its own voice and controls, for ``generate_requests``."""

    text: str
    voice: VoiceLike = None
    params: GenerationParams = field(default_factory=GenerationParams)


@dataclass(frozen=True)
class ChunkAudio:
    """An executor's output for one plan item: its speech tokens and its audio (mono float32 CPU
    waveform at 24 kHz; empty when T3 produced no speech token)."""

    order: int
    tokens: SpeechTokens
    waveform: torch.Tensor


@dataclass(frozen=True)
class WordTiming:
    """When one word of the text is spoken, in seconds of the joined audio (multilingual model:
    from its alignment analyzer, see ``chatterbox_t3.word_alignment``). ``text_chunk``: the chunk
    of the text it belongs to."""

    word: str
    start_time: float
    end_time: float
    text_chunk: int

    def as_dict(self) -> dict[str, object]:
        """The server's JSON form (Kokoro-FastAPI's word timestamp fields)."""
        return {"word": self.word, "start_time": self.start_time, "end_time": self.end_time}

    def at_speed(self, speed: float) -> WordTiming:
        """The same word in audio played at ``speed`` (the ``speed`` control's time stretch)."""
        if speed == 1.0:
            return self
        return replace(self, start_time=self.start_time / speed, end_time=self.end_time / speed)


@dataclass(frozen=True)
class GenerationResult:
    """Speech for one text: ``waveform`` is mono float32 ``[samples]`` at ``sample_rate``."""

    waveform: torch.Tensor
    sample_rate: int
    text: str
    chunks: tuple[str, ...]
    speech_tokens: tuple[SpeechTokens, ...]
    """The speech tokens T3 produced for each chunk (with why each chunk ended)."""
    chunk_samples: tuple[int, ...]
    """Samples of each chunk's audio before joining (the joined ``waveform`` is their sum minus
    one crossfade per join, divided by ``speed`` when that is not 1)."""
    watermarked: bool
    words: tuple[WordTiming, ...] = ()
    """Every word of every chunk with its start and end in ``waveform`` (monotonic, inside the
    audio); multilingual model only (empty for the English one, which has no aligner)."""

    @property
    def finish_reasons(self) -> tuple[str, ...]:
        """Per chunk: ``"stop"`` (T3 ended the utterance) or ``"length"`` (token cap reached)."""
        return tuple(tokens.finish_reason for tokens in self.speech_tokens)

    @property
    def num_speech_tokens(self) -> int:
        return sum(len(tokens) for tokens in self.speech_tokens)

    @property
    def duration_s(self) -> float:
        return self.waveform.numel() / self.sample_rate

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the audio; the format follows the suffix (see ``supported_audio_suffixes``)."""
        return save_audio(path, self.waveform, self.sample_rate)


@dataclass
class PipelineTimings:
    """Wall-clock seconds of one pipelined call (``overlap``: S3Gen busy while T3 decoded)."""

    t3: float = 0.0
    s3gen: float = 0.0
    overlap: float = 0.0
    total: float = 0.0
    speech_tokens: int = 0
    s3gen_batches: int = 0
    s3gen_intervals: list[tuple[float, float]] = field(default_factory=list, repr=False)


@dataclass
class GenerationStats:
    """What the last call did (read by ``bench``). ``timings`` is the local pipeline's; on Ray
    replicas ``dispatch`` says where the chunks ran."""

    chunks: int = 0
    audio_seconds: float = 0.0
    voice_seconds: float = 0.0
    wall_seconds: float = 0.0
    speech_tokens: int = 0
    timings: PipelineTimings = field(default_factory=PipelineTimings)
    dispatch: object | None = None
