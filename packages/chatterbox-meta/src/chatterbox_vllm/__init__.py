"""Chatterbox TTS on vLLM 0.9.2."""

from chatterbox_vllm.interfaces import (
    SPEECH_TOKEN_RATE_HZ,
    SPEECH_VOCAB_SIZE,
    SpeechDecoder,
    SpeechTokenGenerator,
    SpeechTokens,
    SpeechTokenSequence,
    StreamingSpeechTokenGenerator,
    Vocoder,
)

__version__ = "0.1.0"

__all__ = [
    "SPEECH_TOKEN_RATE_HZ",
    "SPEECH_VOCAB_SIZE",
    "SpeechDecoder",
    "SpeechTokenGenerator",
    "SpeechTokenSequence",
    "SpeechTokens",
    "StreamingSpeechTokenGenerator",
    "Vocoder",
    "__version__",
]
