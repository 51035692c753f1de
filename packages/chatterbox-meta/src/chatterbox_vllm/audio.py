"""Audio in and out: loading and validating voice references, resampling, joining chunks, saving.

Resampling follows the reference (``librosa.load(sr=24000)`` then ``librosa.resample`` to 16 kHz):
channels are averaged to mono, then soxr's high-quality band-limited resampler is applied and the
result is cut/zero-padded to librosa's ``ceil(n * (target / source))`` samples. Using the same resampler matters:
T3's voice prompt tokens come from the 16 kHz copy, and a different resampler changes them.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile
import soxr
import torch

from chatterbox_vllm.errors import (
    AudioFileNotFoundError,
    AudioTooShortError,
    CorruptAudioError,
    InvalidAudioError,
    InvalidParameterError,
    SilentAudioError,
    UnsupportedAudioFormatError,
)
from chatterbox_vllm.paths import check_not_directory, open_for_writing

logger = logging.getLogger(__name__)

S3GEN_SAMPLE_RATE = 24_000
"""Rate of synthesised audio and of the S3Gen voice reference."""
S3_TOKENIZER_SAMPLE_RATE = 16_000
"""Rate of the copy used for T3's prompt tokens and the voice-encoder embedding."""
MIN_VOICE_SECONDS = 1.0
"""Shortest voice reference accepted. 5-10 s of clean speech gives the best clone."""
SILENCE_PEAK = 1e-4
"""A reference whose absolute peak is below this (-80 dBFS) counts as silent."""
MAX_PEAK = 100.0
"""A reference peaking above this is not audio in [-1, 1] float scale (a mis-scaled array, such as
int16 values passed as floats): its spectra overflow float32 in the voice encoder and S3Gen."""
DEFAULT_CROSSFADE_SECONDS = 0.05
"""Equal-power crossfade between consecutive chunks of one long text: 50 ms (1200 samples at 24 kHz).
Each S3Gen chunk starts with 20 ms of silence and a 20 ms fade-in, so the overlap only blends the
previous chunk's trailing room tone into that onset; it never eats into a word."""

AudioInput = str | os.PathLike | tuple[torch.Tensor | np.ndarray, int]
"""A path to an audio file, or ``(waveform, sample_rate)`` with waveform ``[samples]`` or
``[channels, samples]`` (torchaudio's layout): float samples in [-1, 1], or int16 / int32 PCM."""

# libsndfile major formats by file suffix, so an unsupported file is named as such instead of
# surfacing as a decoder error. (libsndfile also sniffs content; the suffix only picks the message.)
_SUFFIX_FORMATS = {
    ".wav": "WAV",
    ".wave": "WAV",
    ".flac": "FLAC",
    ".ogg": "OGG",
    ".oga": "OGG",
    ".opus": "OGG",
    ".mp3": "MP3",
    ".aiff": "AIFF",
    ".aif": "AIFF",
    ".au": "AU",
    ".caf": "CAF",
    ".w64": "W64",
    ".rf64": "RF64",
}


def supported_audio_suffixes() -> list[str]:
    """File suffixes whose format the installed libsndfile can decode."""
    available = set(soundfile.available_formats())
    return sorted(s for s, fmt in _SUFFIX_FORMATS.items() if fmt in available)


def _read_audio_file(path: Path) -> tuple[np.ndarray, int]:
    """Decodes a file to ``[channels, samples]`` float32."""
    if not path.exists():
        raise AudioFileNotFoundError(f"voice audio file not found: {path}")
    if path.is_dir():
        raise UnsupportedAudioFormatError(f"voice audio path is a directory, not a file: {path}")
    suffix = path.suffix.lower()
    supported = supported_audio_suffixes()
    if suffix not in supported:
        raise UnsupportedAudioFormatError(
            f"unsupported audio file format {suffix or '(no suffix)'!r} for {path}; "
            f"supported: {', '.join(supported)}"
        )
    try:
        data, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, EOFError) as error:
        raise CorruptAudioError(
            f"could not decode {path} as {_SUFFIX_FORMATS[suffix]} audio ({error}); "
            "the file is damaged or not really in that format"
        ) from error
    return np.ascontiguousarray(data.T), int(sample_rate)


PCM_FULL_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0}
"""Integer samples taken as PCM, by their full scale (what libsndfile reads a 16- or 32-bit WAV
as, and what ``scipy.io.wavfile.read`` and ``soundfile.read(..., dtype="int16")`` return)."""


def _as_channels_first(waveform: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(waveform, torch.Tensor):
        if waveform.is_complex():  # casting would silently drop the imaginary part
            raise InvalidAudioError(
                f"waveform must be real-valued samples, got complex dtype {waveform.dtype}"
            )
        if waveform.is_floating_point():  # NumPy has no bfloat16
            waveform = waveform.to(torch.float32)
        waveform = waveform.detach().cpu().numpy()
    if isinstance(waveform, np.ndarray):
        if np.issubdtype(waveform.dtype, np.complexfloating):
            raise InvalidAudioError(
                f"waveform must be real-valued samples, got complex dtype {waveform.dtype}"
            )
        if not np.issubdtype(waveform.dtype, np.number):
            raise InvalidAudioError(f"waveform must be numeric, got dtype {waveform.dtype}")
        if np.issubdtype(waveform.dtype, np.integer):
            scale = PCM_FULL_SCALE.get(waveform.dtype)
            if scale is None:
                raise InvalidAudioError(
                    f"waveform has integer dtype {waveform.dtype}; integer samples are taken as "
                    "16- or 32-bit PCM (int16, int32): convert it to one of those, or to float "
                    "samples in [-1, 1]"
                )
            array = (waveform.astype(np.float32) / np.float32(scale)).astype(np.float32)
        else:
            array = waveform.astype(np.float32, copy=False)
    else:
        raise InvalidAudioError(
            f"waveform must be a torch.Tensor or numpy.ndarray, got {type(waveform).__name__}"
        )
    if array.ndim == 1:
        return array[None, :]
    if array.ndim == 2:
        if array.shape[0] == 0:  # averaging no channels would be NaN, or no samples at all
            raise InvalidAudioError(
                f"waveform of shape {tuple(array.shape)} has no channels; pass [samples] or "
                "[channels, samples] with at least one channel"
            )
        if array.shape[0] > 16 and array.shape[1] <= 16:
            raise InvalidAudioError(
                f"waveform of shape {tuple(array.shape)} looks like [samples, channels]; "
                "pass [samples] or [channels, samples] (e.g. waveform.T)"
            )
        return array
    raise InvalidAudioError(
        f"waveform must be [samples] or [channels, samples], got shape {tuple(array.shape)}"
    )


def resample(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Resamples 1-D float32 audio with soxr HQ, length ``ceil(n * (target / source))`` as librosa
    computes it: the rate ratio is rounded to a float first, so where ``n * target / source`` is a
    whole number the product can land just above it and the result has one more (zero) sample,
    e.g. 7 s at 44.1 kHz gives 168,001 samples at 24 kHz, as the reference's ``librosa.load``."""
    if source_rate == target_rate:
        return audio
    resampled = soxr.resample(audio, source_rate, target_rate, quality="soxr_hq")
    length = math.ceil(audio.shape[-1] * (float(target_rate) / source_rate))
    if resampled.shape[-1] >= length:
        resampled = resampled[:length]
    else:
        resampled = np.pad(resampled, (0, length - resampled.shape[-1]))
    return np.asarray(resampled, dtype=audio.dtype)


def load_voice_audio(audio: AudioInput, *, min_seconds: float = MIN_VOICE_SECONDS) -> torch.Tensor:
    """Loads and validates a voice reference; returns mono float32 ``[samples]`` at 24 kHz.

    Multi-channel audio is averaged to mono and any sample rate is resampled (e.g. 48 kHz stereo is
    fine). Raises a specific :class:`~chatterbox_vllm.errors.AudioError` for an unsupported or
    corrupt file, NaN/inf samples, audio shorter than ``min_seconds``, or silence.
    """
    if isinstance(audio, str | os.PathLike):
        source = str(audio)
        if not os.fspath(audio):  # Path("") is the working directory
            raise InvalidAudioError(
                "voice audio path is empty; give a recording's file path (or no voice for the "
                "built-in one)"
            )
        channels, sample_rate = _read_audio_file(Path(audio))
    elif isinstance(audio, tuple) and len(audio) == 2:
        waveform, sample_rate = audio
        source = "waveform"
        if isinstance(waveform, int | np.integer) and isinstance(
            sample_rate, np.ndarray | torch.Tensor
        ):
            raise InvalidAudioError(
                "voice audio is (sample_rate, waveform), the order scipy.io.wavfile.read returns; "
                "pass (waveform, sample_rate)"
            )
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer):
            raise InvalidAudioError(
                f"sample_rate must be an int (Hz), got {type(sample_rate).__name__}"
            )
        sample_rate = int(sample_rate)
        if not 1000 <= sample_rate <= 384_000:
            raise InvalidAudioError(f"sample_rate must be in [1000, 384000] Hz, got {sample_rate}")
        channels = _as_channels_first(waveform)
    else:
        raise InvalidAudioError(
            "voice audio must be a file path or a (waveform, sample_rate) tuple, "
            f"got {type(audio).__name__}"
        )

    if channels.shape[-1] == 0:
        raise AudioTooShortError(f"voice audio {source} is empty (0 samples)")
    if not np.isfinite(channels).all():
        raise InvalidAudioError(f"voice audio {source} contains NaN or infinite samples")
    duration = channels.shape[-1] / sample_rate
    if duration < min_seconds:
        raise AudioTooShortError(
            f"voice audio {source} is {duration:.2f} s long; at least {min_seconds:.1f} s is "
            "needed (5-10 s of clean speech works best)"
        )
    peak = float(np.abs(channels).max())
    if peak > MAX_PEAK:
        raise InvalidAudioError(
            f"voice audio {source} peaks at {peak:.3g}; samples are expected in [-1, 1] (float "
            "audio) - scale it down (e.g. divide by its peak)"
        )
    if peak < SILENCE_PEAK:
        raise SilentAudioError(
            f"voice audio {source} is silent (peak below {SILENCE_PEAK:g}); "
            "record or choose audio with speech in it"
        )
    if channels.shape[0] > 1:
        logger.info("voice audio %s: averaging %d channels to mono", source, channels.shape[0])
    mono = channels.mean(axis=0, dtype=np.float32) if channels.shape[0] > 1 else channels[0]
    if sample_rate != S3GEN_SAMPLE_RATE:
        logger.info(
            "voice audio %s: resampling %d Hz -> %d Hz", source, sample_rate, S3GEN_SAMPLE_RATE
        )
    return torch.from_numpy(np.ascontiguousarray(resample(mono, sample_rate, S3GEN_SAMPLE_RATE)))


def to_tokenizer_rate(wav_24k: torch.Tensor) -> torch.Tensor:
    """The 16 kHz copy of a 24 kHz reference, resampled as the reference does (soxr HQ)."""
    array = wav_24k.detach().to("cpu", torch.float32).numpy()
    return torch.from_numpy(
        np.ascontiguousarray(resample(array, S3GEN_SAMPLE_RATE, S3_TOKENIZER_SAMPLE_RATE))
    )


def _equal_power(samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fade-out, fade-in) weights of ``generate``'s equal-power crossfade."""
    phase = (torch.arange(samples, dtype=torch.float64) + 0.5) / samples * (math.pi / 2)
    return torch.cos(phase).float(), torch.sin(phase).float()


class ChunkJoiner:
    """Joins the audio of consecutive text chunks as ``generate`` does, while it streams: the end
    of a text chunk (``min(crossfade, length / 2)`` samples) is held back and blended with the
    next chunk's first samples by the same equal-power crossfade. Until a chunk is known to be
    complete its last ``crossfade`` samples are held, since they may turn out to be its end."""

    def __init__(self, crossfade_samples: int) -> None:
        self.crossfade = crossfade_samples
        self._tail = torch.zeros(0)  # the previous text chunk's end, to blend in
        self._pending = torch.zeros(0)  # this text chunk's audio not emitted yet
        self._length = 0  # samples of this text chunk so far

    def add(self, waveform: torch.Tensor, *, chunk_done: bool) -> torch.Tensor:
        """Audio of the current text chunk in; the audio that can be emitted now out."""
        self._pending = torch.cat([self._pending, waveform.reshape(-1).float()])
        self._length += waveform.numel()
        out: list[torch.Tensor] = []
        if self._tail.numel():
            if self._pending.numel() < self._tail.numel() and not chunk_done:
                return torch.zeros(0)  # wait for enough of this chunk to blend with
            whole = chunk_done and self._length == self._pending.numel()
            # A chunk known whole shares at most half of itself (as with its other neighbour).
            limit = self._pending.numel() // 2 if whole else self._pending.numel()
            overlap = min(self._tail.numel(), limit)
            fade_out, fade_in = _equal_power(overlap) if overlap else (torch.zeros(0),) * 2
            out.append(self._tail[: self._tail.numel() - overlap])
            out.append(
                self._tail[self._tail.numel() - overlap :] * fade_out
                + self._pending[:overlap] * fade_in
            )
            self._pending = self._pending[overlap:]
            self._tail = torch.zeros(0)
        if chunk_done:
            keep = min(self.crossfade, self._length // 2, self._pending.numel())
            self._tail = self._pending[self._pending.numel() - keep :].clone()
            out.append(self._pending[: self._pending.numel() - keep])
            self._pending = torch.zeros(0)
            self._length = 0
        else:
            hold = min(self.crossfade, self._pending.numel())
            out.append(self._pending[: self._pending.numel() - hold])
            self._pending = self._pending[self._pending.numel() - hold :].clone()
        return torch.cat(out) if out else torch.zeros(0)

    def finish(self) -> torch.Tensor:
        """The held-back end of the last text chunk (nothing follows it to blend with)."""
        rest = torch.cat([self._tail, self._pending])
        self._tail, self._pending, self._length = torch.zeros(0), torch.zeros(0), 0
        return rest


def equal_power_crossfade_join(
    waveforms: Sequence[torch.Tensor], crossfade_samples: int
) -> torch.Tensor:
    """Concatenates 1-D waveforms, overlapping each neighbouring pair by ``crossfade_samples``:
    :class:`ChunkJoiner` fed whole chunks (the one joiner of ``generate`` and ``stream``).

    The outgoing chunk fades with ``cos``, the incoming with ``sin`` (equal power: the two gains'
    squares sum to one, so uncorrelated signals keep their loudness through the join). The overlap
    shrinks to half the shorter neighbour when a chunk is shorter than two crossfades. Output length
    is ``sum(len) - sum(overlaps)``; see :func:`crossfade_overlaps`.
    """
    if crossfade_samples < 0:
        raise ValueError(f"crossfade_samples must be >= 0, got {crossfade_samples}")
    if not waveforms:
        return torch.zeros(0)
    for index, waveform in enumerate(waveforms):
        if waveform.dim() != 1:
            raise ValueError(f"waveform {index} must be 1-D, got shape {tuple(waveform.shape)}")
    dtype = waveforms[0].dtype
    joiner = ChunkJoiner(crossfade_samples)
    pieces = [joiner.add(waveform.to("cpu", dtype), chunk_done=True) for waveform in waveforms]
    pieces.append(joiner.finish())
    return torch.cat(pieces).to(dtype)


def crossfade_overlaps(lengths: Sequence[int], crossfade_samples: int) -> list[int]:
    """Samples shared by each neighbouring pair when joining chunks of these lengths."""
    return [
        min(crossfade_samples, left // 2, right // 2) for left, right in itertools.pairwise(lengths)
    ]


# What each output suffix is written as: (libsndfile major format, subtype). Only these are
# offered for writing; every one is written and read back in the tests.
_OUTPUT_FORMATS: dict[str, tuple[str, str]] = {
    ".wav": ("WAV", "PCM_16"),
    ".wave": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".oga": ("OGG", "VORBIS"),
    ".opus": ("OGG", "OPUS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
    ".aiff": ("AIFF", "PCM_16"),
    ".aif": ("AIFF", "PCM_16"),
}


def supported_output_suffixes() -> list[str]:
    """Output suffixes the installed libsndfile can encode (format and codec both present)."""
    formats = set(soundfile.available_formats())
    supported = []
    for suffix, (major, subtype) in _OUTPUT_FORMATS.items():
        if major in formats and subtype in soundfile.available_subtypes(major):
            supported.append(suffix)
    return sorted(supported)


def output_format(path: str | os.PathLike) -> tuple[str, str]:
    """``(format, subtype)`` for writing ``path`` (``"-"``: WAV); raises
    :class:`UnsupportedAudioFormatError` naming the accepted suffixes."""
    if os.fspath(path) == "-":
        return _OUTPUT_FORMATS[".wav"]
    suffix = Path(path).suffix.lower()
    supported = supported_output_suffixes()
    if suffix not in supported:
        raise UnsupportedAudioFormatError(
            f"cannot write {suffix or '(no suffix)'!r} audio ({path}); choose one of "
            f"{', '.join(supported)}"
        )
    return _OUTPUT_FORMATS[suffix]


def encode_audio(
    destination: str | os.PathLike | BinaryIO,
    waveform: torch.Tensor,
    sample_rate: int,
    format_and_subtype: tuple[str, str],
) -> None:
    """Encodes mono float audio (clipped to [-1, 1]) with libsndfile into a path or binary file."""
    major, subtype = format_and_subtype
    data = np.clip(waveform.detach().to("cpu", torch.float32).reshape(-1).numpy(), -1.0, 1.0)
    target = destination if hasattr(destination, "write") else os.fspath(destination)  # type: ignore[arg-type]
    soundfile.write(target, data, sample_rate, format=major, subtype=subtype)


def save_audio(path: str | os.PathLike, waveform: torch.Tensor, sample_rate: int) -> Path:
    """Writes mono audio; the format follows the suffix (:func:`supported_output_suffixes`:
    16-bit PCM for .wav/.flac/.aiff, Vorbis for .ogg/.oga, Opus for .opus, MP3 for .mp3)."""
    if not isinstance(path, str | os.PathLike):
        raise InvalidParameterError(
            f"path must be a file path (str or os.PathLike, e.g. 'speech.wav'), got "
            f"{type(path).__name__} {path!r}"
        )
    path = Path(path)
    check_not_directory(path, "audio file", "speech.wav")
    fmt = output_format(path)
    # Opened here, not by libsndfile: its errors say only "System error." and it cuts a path at
    # a NUL byte; an unwritable path is named with the reason.
    with open_for_writing(path, "audio file", f"speech{path.suffix}") as file:
        encode_audio(file, waveform, sample_rate, fmt)
    return path
