"""Errors raised for bad input. Each says which argument was wrong and what is accepted.

All derive from :class:`ChatterboxError`; the input errors also derive from :class:`ValueError`
(and the missing-file one from :class:`FileNotFoundError`) so generic handlers keep working.
Raising one never leaves a :class:`~chatterbox_vllm.ChatterboxTTS` in a broken state: inputs are
validated before any engine work starts.
"""

from __future__ import annotations


class ChatterboxError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidTextError(ChatterboxError, ValueError):
    """The text to speak is empty, has nothing speakable, or is too long."""


class InvalidParameterError(ChatterboxError, ValueError):
    """A generation control (temperature, cfg_weight, ...) is outside its accepted range."""


class AudioError(ChatterboxError, ValueError):
    """A voice reference could not be used."""


class UnsupportedAudioFormatError(AudioError):
    """The file is not in a format the audio decoder reads."""


class CorruptAudioError(AudioError):
    """The file claims a supported format but cannot be decoded."""


class AudioTooShortError(AudioError):
    """Too little audio to take a voice from."""


class SilentAudioError(AudioError):
    """The audio is (digitally) silent."""


class InvalidAudioError(AudioError):
    """NaN/inf samples, wrong shape or dtype, bad sample rate."""


class CheckpointError(ChatterboxError, FileNotFoundError):
    """A checkpoint directory lacks a file, or a file has the wrong structure."""
