"""Exceptions raised by chatterbox_t3 (all before anything reaches vLLM)."""

from __future__ import annotations


class T3InputError(ValueError):
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
        super().__init__(
            f"text contains characters the tokenizer cannot represent: {shown} in {preview!r}; "
            "remove or transliterate them (or build EnglishTokenizer(unknown='unk') to map them to "
            "[UNK] like the reference does)"
        )


class InvalidSamplingParameterError(T3InputError):
    """A sampling parameter outside its accepted range."""


class InvalidVoiceError(T3InputError):
    """A voice (speaker embedding / prompt tokens) with the wrong shape, type or values."""


class MissingConditioningError(T3InputError):
    """A request without a voice to condition on."""


class CheckpointError(ValueError):
    """A checkpoint file is missing or does not have the expected tensor layout."""


class MissingCheckpointFileError(CheckpointError, FileNotFoundError):
    """A file the checkpoint directory must contain is absent."""


class MissingTensorError(CheckpointError):
    """A tensor the model needs is not in the checkpoint file."""


class UnexpectedTensorError(CheckpointError):
    """The checkpoint file holds a tensor the model does not know."""


class TensorShapeError(CheckpointError):
    """A tensor has a different shape than the model expects."""
