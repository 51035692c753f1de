"""Errors raised for bad input. Each says which argument was wrong and what is accepted.

All derive from :class:`ChatterboxError`; the input errors also derive from :class:`ValueError`
(and the missing-file ones from :class:`FileNotFoundError`) so generic handlers keep working.
Raising one never leaves a :class:`~chatterbox_vllm.ChatterboxTTS` in a broken state: inputs are
validated before any engine work starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


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


class AudioFileNotFoundError(AudioError, FileNotFoundError):
    """The voice recording's path does not exist (also a :class:`FileNotFoundError`)."""


class CheckpointError(ChatterboxError, FileNotFoundError):
    """A checkpoint directory lacks a file, or a file has the wrong structure."""


class OutputPathError(ChatterboxError, OSError):
    """An output file cannot be written at that path (the message names the path and why)."""


class EngineDeadError(ChatterboxError, RuntimeError):
    """The T3 engine process is gone (killed, crashed, out of memory): this object cannot speak
    any more; load a new one."""

    @classmethod
    def for_reason(cls, reason: str) -> EngineDeadError:
        """The error a call gets once the engine is known dead (``reason``: why), worded for a
        Python caller and for a server's client alike."""
        return cls(
            f"the T3 engine is dead ({reason}); close this ChatterboxTTS and load a new one (a "
            "server: restart it)"
        )


class GenerationInterrupted(KeyboardInterrupt):
    """Ctrl-C (``KeyboardInterrupt``) during ``generate``: the call stops as any interrupt stops
    it, and keeps what it had finished. ``partial``: one entry per text of the call, a
    :class:`~chatterbox_vllm.results.GenerationResult` of its chunks whose audio was complete,
    in text order and joined as the whole text's are (its ``chunks`` are their texts: S3Gen
    takes the longest chunks first, so some before them may be missing), or ``None`` where
    none was.
    An interrupt, not a :class:`ChatterboxError`: ``except Exception`` does not swallow it."""

    def __init__(
        self,
        partial: Sequence[Any] = (),
        missing: Sequence[Sequence[str]] = (),
        finished: Mapping[int, Any] | None = None,
    ):
        super().__init__()
        self.partial = tuple(partial)
        self.missing = tuple(tuple(texts) for texts in missing)
        """Per text, the texts of its chunks that were not finished, in order."""
        self.finished = dict(finished or {})
        """The executor's finished chunk audio by plan order (the front turns it into
        ``partial``)."""


class ChunkInputError(ChatterboxError):
    """An executor rejected one plan item's input (e.g. a character T3's tokenizer cannot
    encode). ``cause`` is the error to show; ``order`` the item's position in the call's plan
    (``None`` if unknown), so the front names the user's text the same way on every path."""

    def __init__(self, order: int | None, cause: ChatterboxError) -> None:
        super().__init__(order, cause)
        self.order = order
        self.cause = cause

    def __str__(self) -> str:
        return f"chunk {self.order}: {self.cause}"


SettingTypes = Mapping[str, tuple[str, tuple[type, ...], bool]]
"""A config class's expected types: name -> (what it must be, the types that are, whether None
is accepted)."""


def check_setting_types(settings: object, expected: SettingTypes) -> None:
    """Raises :class:`InvalidParameterError` naming the first setting of ``settings`` whose value
    is not of its type (``bool`` counts as a number only where it is listed), before its range is
    compared: a string from a settings file is not Python's TypeError from ``<``."""
    for name, (what, types, optional) in expected.items():
        value = getattr(settings, name)
        if value is None and optional:
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise InvalidParameterError(
                f"{name} must be {what}, got {type(value).__name__} {value!r}"
            )


def naming_the_flag(
    error: InvalidParameterError, flags: Mapping[str, str]
) -> InvalidParameterError:
    """``error`` (whose message starts with the name of the setting it is about, as the
    config classes word theirs) with the command-line flag that set it in front, so that a
    command's error names what the user typed: ``--port: port must be in [1, 65535], got 0``.
    ``flags``: setting name -> flag, for the settings the command line gave."""
    message = str(error)
    name = message.split(" ", 1)[0]
    flag = flags.get(name)
    if flag is None or flag in message:
        return error
    return InvalidParameterError(f"{flag}: {message}")


def from_component_error(error: BaseException) -> ChatterboxError | None:
    """The product error for an error a component raised on purpose (``None`` for anything
    else): the one boundary where component errors become :class:`ChatterboxError` subclasses."""
    from chatterbox_s3gen import errors as s3gen
    from chatterbox_t3 import errors as t3

    if isinstance(error, ChatterboxError):
        return error
    message = str(error)
    if isinstance(error, t3.CheckpointError | s3gen.CheckpointError):
        return CheckpointError(message)
    if isinstance(error, t3.InvalidSamplingParameterError):
        return InvalidParameterError(message)
    # The multilingual text front end's language errors (an id it does not know, or whose
    # optional dependency is missing) are about the ``language`` control, not the text.
    language_errors = tuple(
        kind
        for name in ("UnsupportedLanguageError", "MissingLanguageDependencyError")
        if isinstance(kind := getattr(t3, name, None), type)
    )
    if language_errors and isinstance(error, language_errors):
        return InvalidParameterError(
            message if message.startswith("language") else f"language: {message}"
        )
    if isinstance(
        error, t3.InvalidVoiceError | t3.MissingConditioningError | s3gen.S3GenInputError
    ):
        return InvalidAudioError(message)
    if isinstance(error, t3.UnsupportedCharactersError):
        from chatterbox_t3.multilingual_text import SUPPORTED_LANGUAGES
        from chatterbox_vllm.scripts import languages_writing

        # T3's own advice (building its tokenizer differently) is not something a caller of
        # the product can do; speaking them in their language may be.
        languages = " or ".join(
            f"language={code!r} ({SUPPORTED_LANGUAGES[code]})"
            for code in languages_writing(error.characters)
        )
        return InvalidTextError(
            f"text contains characters the tokenizer cannot represent: {error.found}; remove or "
            "transliterate them"
            + (f", or speak them with the multilingual model and {languages}" if languages else "")
        )
    if isinstance(error, t3.T3InputError):
        return InvalidTextError(message)
    return None


VLLM_PROFILING_ASSERTION = "Error in memory profiling"
"""Start of the AssertionError vLLM 0.9.2 raises when the GPU's free memory grew while it
profiled its own use (``vllm/utils.py``, ``memory_profiling``)."""


VLLM_ENGINE_PROCESS_FAILED = "Engine core initialization failed"
"""Start of the RuntimeError vLLM 0.9.2 raises in the caller when its engine-core process fails
to start (the cause is raised and logged in that process)."""
PROFILING_ADVICE = (
    "which happens when another process on this GPU (another model or job) releases memory "
    "during the start-up. Load again, and do not start or stop other GPU work while the engine "
    "starts"
)


class EngineStartError(ChatterboxError, RuntimeError):
    """The T3 engine could not start for a reason outside the checkpoint and the settings (the
    message says what happened and what to do)."""


def from_engine_start_error(error: BaseException) -> ChatterboxError | None:
    """The product error for a failure of vLLM's start-up that a user can act on (``None`` for
    anything else)."""
    if isinstance(error, AssertionError) and str(error).startswith(VLLM_PROFILING_ASSERTION):
        return EngineStartError(
            "the T3 engine could not measure its GPU memory: vLLM saw free GPU memory grow "
            f"while it profiled its own use, {PROFILING_ADVICE} (vLLM said: {error})"
        )
    if isinstance(error, RuntimeError) and str(error).startswith(VLLM_ENGINE_PROCESS_FAILED):
        # The engine-core process raised (and logged) the cause; only its exit reaches here.
        return EngineStartError(
            f"the T3 engine process failed while starting; its own error is logged above ({error})."
            f" If that error is vLLM's '{VLLM_PROFILING_ASSERTION}': {PROFILING_ADVICE}"
        )
    return None
