"""Exceptions raised by chatterbox_t3, all under one root, :class:`T3Error`.

Three families: :class:`T3InputError` (a request, text, voice or sampling setting; raised before
anything reaches vLLM, so the engine keeps serving), :class:`CheckpointError` (the files T3 loads)
and :class:`ConfigurationError` (engine/model settings). Each keeps :class:`ValueError` as a second
base (missing files also :class:`FileNotFoundError`), so handlers of the built-ins keep working.
"""

from __future__ import annotations

from collections.abc import Iterable


class T3Error(Exception):
    """Root of every error chatterbox_t3 raises on purpose."""


class T3InputError(T3Error, ValueError):
    """A request, voice or sampling setting that T3 cannot accept."""


class EmptyTextError(T3InputError):
    """The text is empty or only whitespace."""


class TextTooLongError(T3InputError):
    """The text needs more tokens than the model's text positions or length allow."""


class UnsupportedCharactersError(T3InputError):
    """The text holds characters the English tokenizer has no token for."""

    def __init__(self, characters: list[str], text: str) -> None:
        self.characters = characters
        shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in characters)
        preview = text if len(text) <= 80 else text[:77] + "..."
        self.found = f"{shown} in {preview!r}"
        """The characters and where (the start of the text), for callers that word the advice."""
        super().__init__(
            f"text contains characters the tokenizer cannot represent: {self.found}; "
            "remove or transliterate them (or build the tokenizer with unknown='unk' to map them "
            "to [UNK] like the reference does)"
        )


class UnsupportedLanguageError(T3InputError):
    """A language id the loaded checkpoint cannot speak (not one of Chatterbox Multilingual's 23, or
    any language but English on the English checkpoint)."""

    def __init__(self, language: object, supported: Iterable[str], detail: str = "") -> None:
        self.language = language
        self.supported = tuple(supported)
        message = f"unsupported language {language!r}; supported: {', '.join(self.supported)}"
        super().__init__(f"{message}; {detail}" if detail else message)


class MissingLanguageDependencyError(T3InputError):
    """A language whose text front end needs an optional package (or that package's data) that is
    not available. Raised instead of silently skipping the step, which the reference does with a
    warning and which lowers the speech quality of that language."""

    def __init__(
        self, language: str, package: str, remedy: str, *, problem: str | None = None
    ) -> None:
        self.language = language
        self.package = package
        problem = problem or f"needs the package {package!r}, which is not installed"
        super().__init__(f"language {language!r} {problem}: {remedy}")


class MalformedTextError(T3InputError):
    """The text is not valid Unicode: it holds a lone surrogate (half of a UTF-16 pair, e.g. from
    a badly decoded file), which no tokenizer or encoder can represent."""

    def __init__(self, position: int, character: str) -> None:
        self.position = position
        self.code_point = ord(character)
        super().__init__(
            f"text is not valid Unicode: lone surrogate U+{self.code_point:04X} at position "
            f"{position} (half of a UTF-16 pair; decode the source text correctly or remove it)"
        )


class InvalidSamplingParameterError(T3InputError):
    """A sampling parameter outside its accepted range."""


class InvalidVoiceError(T3InputError):
    """A voice (speaker embedding / prompt tokens) with the wrong shape, type or values."""


class MissingConditioningError(T3InputError):
    """A request without a voice to condition on."""


class ConfigurationError(T3Error, ValueError):
    """A model or engine setting T3 does not support (not a per-request input)."""


class CheckpointError(T3Error, ValueError):
    """A checkpoint file is missing, unreadable or does not have the expected tensor layout."""


class MissingCheckpointFileError(CheckpointError, FileNotFoundError):
    """A file the checkpoint directory must contain is absent."""


class NotADirectoryCheckpointError(CheckpointError, NotADirectoryError):
    """The checkpoint directory given is a file."""


class CorruptCheckpointFileError(CheckpointError):
    """A checkpoint file exists but cannot be read: truncated (an interrupted download) or not a
    safetensors file at all."""


class MissingTensorError(CheckpointError):
    """A tensor the model needs is not in the checkpoint file."""


class UnexpectedTensorError(CheckpointError):
    """The checkpoint file holds a tensor the model does not know."""


class TensorShapeError(CheckpointError):
    """A tensor has a different shape than the model expects."""
