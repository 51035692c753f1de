"""Chatterbox S3Gen: S3 speech tokens -> 24 kHz audio (flow matching + HiFT), batched, with
pluggable vocoders and ONNX export. No vLLM dependency.

    from chatterbox_s3gen import S3Gen
    s3gen = S3Gen.from_checkpoint("path/to/checkpoint_dir", device="cuda")
    voice = s3gen.embed_ref(wav, sample_rate)
    wavs = s3gen.synthesize([tokens_a, tokens_b], [voice, voice], seeds=[0, 1])

Every error it raises on purpose is an :class:`S3GenError` (:mod:`chatterbox_s3gen.errors`): bad
arguments :class:`S3GenInputError`, broken files :class:`CheckpointError`, unsupported sizes
:class:`ConfigurationError`.
"""

from chatterbox_s3gen.config import S3GenConfig
from chatterbox_s3gen.constants import (
    S3_TOKENIZER_SAMPLE_RATE,
    S3GEN_SAMPLE_RATE,
    SPEECH_VOCAB_SIZE,
)
from chatterbox_s3gen.errors import (
    CheckpointError,
    ConfigurationError,
    S3GenError,
    S3GenInputError,
    S3GenInputTypeError,
)
from chatterbox_s3gen.model import S3Gen
from chatterbox_s3gen.random_checkpoint import write_random_s3gen_checkpoint
from chatterbox_s3gen.reference import S3GenReference
from chatterbox_s3gen.streaming import S3GenStream, StreamingConfig, synthesize_windows
from chatterbox_s3gen.vocoders import (
    Vocoder,
    VocoderContext,
    available_vocoders,
    get_vocoder,
    register_vocoder,
)

__version__ = "0.1.0"

__all__ = [
    "S3GEN_SAMPLE_RATE",
    "S3_TOKENIZER_SAMPLE_RATE",
    "SPEECH_VOCAB_SIZE",
    "CheckpointError",
    "ConfigurationError",
    "S3Gen",
    "S3GenConfig",
    "S3GenError",
    "S3GenInputError",
    "S3GenInputTypeError",
    "S3GenReference",
    "S3GenStream",
    "StreamingConfig",
    "Vocoder",
    "VocoderContext",
    "available_vocoders",
    "get_vocoder",
    "register_vocoder",
    "synthesize_windows",
    "write_random_s3gen_checkpoint",
]
