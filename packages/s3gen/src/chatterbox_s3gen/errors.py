"""Exceptions raised by chatterbox_s3gen, all under one root, :class:`S3GenError`.

Three families: :class:`S3GenInputError` (a token sequence, reference, waveform, seed or option the
caller passed; nothing about the model changes and the same ``S3Gen`` keeps working),
:class:`CheckpointError` (the files S3Gen loads from) and :class:`ConfigurationError` (an
:class:`~chatterbox_s3gen.config.S3GenConfig` or writer setting). All keep :class:`ValueError` as a
second base (type-shaped input errors also :class:`TypeError`, missing keys :class:`KeyError`,
missing files :class:`FileNotFoundError`), so code written against the built-ins keeps catching
them.
"""

from __future__ import annotations


class S3GenError(Exception):
    """Root of every error chatterbox_s3gen raises on purpose."""


class S3GenInputError(S3GenError, ValueError):
    """An argument S3Gen cannot accept: empty or out-of-vocabulary tokens, a reference or
    waveform of the wrong shape/rate/values, mismatched seeds or batch options."""


class S3GenInputTypeError(S3GenInputError, TypeError):
    """An argument of the wrong type (e.g. a string where speech-token ids are expected)."""


class S3GenInputKeyError(S3GenInputError, KeyError):
    """A mapping argument lacks an entry S3Gen needs (e.g. a ``conds.pt`` dict without
    ``prompt_feat``)."""


class ConfigurationError(S3GenError, ValueError):
    """Model sizes or tool settings S3Gen does not support (an invalid ``S3GenConfig``; read from
    a checkpoint's ``s3gen_config.json`` it is reported as a :class:`CheckpointError`)."""


class CheckpointError(S3GenError, ValueError):
    """A checkpoint file is missing, unreadable or does not match the S3Gen layout (the message
    names the file and the offending tensors)."""


class MissingCheckpointFileError(CheckpointError, FileNotFoundError):
    """No checkpoint (or exported ONNX vocoder) at the given path."""


class NotADirectoryCheckpointError(CheckpointError, NotADirectoryError):
    """The checkpoint path is a file that is neither a directory nor a ``.safetensors`` file."""


class CorruptCheckpointFileError(CheckpointError):
    """A checkpoint file exists but cannot be read: truncated (an interrupted download) or not a
    safetensors file at all."""
