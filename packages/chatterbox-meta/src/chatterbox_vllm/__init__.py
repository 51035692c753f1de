"""Chatterbox TTS on vLLM 0.9.2.

from chatterbox_vllm import ChatterboxTTS

with ChatterboxTTS.from_pretrained() as tts:
    tts.generate("Hello there.", voice="me.wav").save("hello.wav")
"""

from chatterbox_vllm.audio import DEFAULT_CROSSFADE_SECONDS, load_voice_audio, save_audio
from chatterbox_vllm.checkpoint import make_random_checkpoint
from chatterbox_vllm.conds import VoiceConditionals
from chatterbox_vllm.config import EngineConfig
from chatterbox_vllm.controls import CONTROLS, GenerationParams
from chatterbox_vllm.distributed.replicated import ReplicatedChatterboxTTS
from chatterbox_vllm.errors import (
    AudioError,
    AudioFileNotFoundError,
    AudioTooShortError,
    ChatterboxError,
    CheckpointError,
    CorruptAudioError,
    EngineDeadError,
    EngineStartError,
    GenerationInterrupted,
    InvalidAudioError,
    InvalidParameterError,
    InvalidTextError,
    OutputPathError,
    SilentAudioError,
    UnsupportedAudioFormatError,
)
from chatterbox_vllm.hub import DEFAULT_REPO_ID, DEFAULT_REVISION, download_checkpoint
from chatterbox_vllm.interfaces import (
    SPEECH_TOKEN_RATE_HZ,
    SPEECH_VOCAB_SIZE,
    SpeechDecoder,
    SpeechTokenGenerator,
    SpeechTokens,
    SpeechTokenSequence,
    StreamingSpeechTokenGenerator,
)
from chatterbox_vllm.results import GenerationResult, TTSRequest
from chatterbox_vllm.text import MAX_TEXT_CHARS, split_text
from chatterbox_vllm.tts import ChatterboxTTS
from chatterbox_vllm.voices import Voice

__version__ = "0.1.0"

__all__ = [
    "CONTROLS",
    "DEFAULT_CROSSFADE_SECONDS",
    "DEFAULT_REPO_ID",
    "DEFAULT_REVISION",
    "MAX_TEXT_CHARS",
    "SPEECH_TOKEN_RATE_HZ",
    "SPEECH_VOCAB_SIZE",
    "AudioError",
    "AudioFileNotFoundError",
    "AudioTooShortError",
    "ChatterboxError",
    "ChatterboxTTS",
    "CheckpointError",
    "CorruptAudioError",
    "EngineConfig",
    "EngineDeadError",
    "EngineStartError",
    "GenerationInterrupted",
    "GenerationParams",
    "GenerationResult",
    "InvalidAudioError",
    "InvalidParameterError",
    "InvalidTextError",
    "OutputPathError",
    "ReplicatedChatterboxTTS",
    "SilentAudioError",
    "SpeechDecoder",
    "SpeechTokenGenerator",
    "SpeechTokenSequence",
    "SpeechTokens",
    "StreamingSpeechTokenGenerator",
    "TTSRequest",
    "UnsupportedAudioFormatError",
    "Voice",
    "VoiceConditionals",
    "__version__",
    "download_checkpoint",
    "load_voice_audio",
    "make_random_checkpoint",
    "save_audio",
    "split_text",
]
