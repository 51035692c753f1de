"""Chatterbox T3 (text + voice -> S3 speech tokens) on vLLM 0.9.2, with classifier-free guidance.

Public API::

    from chatterbox_t3 import T3Engine, T3Request, T3SamplingParams, T3Voice

    engine = T3Engine.from_checkpoint("/path/to/chatterbox")
    voice = engine.voice_from_audio(wav_16k, prompt_tokens)  # prompt tokens from S3Gen's tokenizer
    [out] = engine.generate_speech_tokens([T3Request("Hello there.", voice, T3SamplingParams())])
    out.token_ids  # S3 codes for the decoder

Every error it raises on purpose is a :class:`T3Error` (:mod:`chatterbox_t3.errors`): per-request
:class:`T3InputError`, :class:`CheckpointError`, :class:`ConfigurationError`.

Importing this package does not import vLLM; :mod:`chatterbox_t3.engine` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AsyncT3Engine",
    "CheckpointError",
    "ConditioningEncoder",
    "ConfigurationError",
    "EnglishTokenizer",
    "MalformedTextError",
    "T3Config",
    "T3Engine",
    "T3Error",
    "T3InputError",
    "T3Output",
    "T3Request",
    "T3SamplingParams",
    "T3Voice",
    "TurboT3Config",
    "TurboTokenizer",
    "UnsupportedCharactersError",
    "VoiceEncoder",
    "load_t3_config",
    "normalize_text",
    "write_random_t3_checkpoint",
]

_LOCATIONS = {
    "AsyncT3Engine": "chatterbox_t3.engine",
    "T3Engine": "chatterbox_t3.engine",
    "T3Output": "chatterbox_t3.engine",
    "T3Request": "chatterbox_t3.engine",
    "T3SamplingParams": "chatterbox_t3.sampling",
    "ConditioningEncoder": "chatterbox_t3.conditioning",
    "T3Voice": "chatterbox_t3.conditioning",
    "EnglishTokenizer": "chatterbox_t3.text",
    "normalize_text": "chatterbox_t3.text",
    "T3Config": "chatterbox_t3.config",
    "TurboT3Config": "chatterbox_t3.config",
    "load_t3_config": "chatterbox_t3.config",
    "TurboTokenizer": "chatterbox_t3.turbo_text",
    "VoiceEncoder": "chatterbox_t3.voice_encoder",
    "write_random_t3_checkpoint": "chatterbox_t3.checkpoint",
    # The error root and the families callers sort by (all of them: chatterbox_t3.errors).
    "T3Error": "chatterbox_t3.errors",
    "T3InputError": "chatterbox_t3.errors",
    "CheckpointError": "chatterbox_t3.errors",
    "ConfigurationError": "chatterbox_t3.errors",
    "MalformedTextError": "chatterbox_t3.errors",
    "UnsupportedCharactersError": "chatterbox_t3.errors",
}

if TYPE_CHECKING:
    from chatterbox_t3.checkpoint import write_random_t3_checkpoint
    from chatterbox_t3.conditioning import ConditioningEncoder, T3Voice
    from chatterbox_t3.config import T3Config, TurboT3Config, load_t3_config
    from chatterbox_t3.engine import AsyncT3Engine, T3Engine, T3Output, T3Request
    from chatterbox_t3.errors import (
        CheckpointError,
        ConfigurationError,
        MalformedTextError,
        T3Error,
        T3InputError,
        UnsupportedCharactersError,
    )
    from chatterbox_t3.sampling import T3SamplingParams
    from chatterbox_t3.text import EnglishTokenizer, normalize_text
    from chatterbox_t3.turbo_text import TurboTokenizer
    from chatterbox_t3.voice_encoder import VoiceEncoder


def __getattr__(name: str) -> Any:
    if name in _LOCATIONS:
        import importlib

        return getattr(importlib.import_module(_LOCATIONS[name]), name)
    raise AttributeError(f"module 'chatterbox_t3' has no attribute {name!r}")
