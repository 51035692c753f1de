"""Voices: everything T3 and S3Gen need to speak like a reference recording.

A voice is prepared once from reference audio and reused (cached by content hash). Preparation
follows chatterbox-tts 0.1.2's ``prepare_conditionals`` (reference-facts §7.13), including its two
resampling paths, because both change the result:

* the reference is loaded at 24 kHz (mono, soxr HQ) - see :func:`~chatterbox_vllm.audio.load_voice_audio`;
* a 16 kHz copy is made from that 24 kHz signal with soxr HQ;
* T3's voice prompt = S3 tokens of the first 6 s of the 16 kHz copy (at most 150 tokens);
* T3's speaker embedding = voice encoder over the FULL 16 kHz copy;
* S3Gen's reference (prompt tokens, prompt mel, x-vector) = ``S3Gen.embed_ref`` of the first 10 s
  of the 24 kHz signal (S3Gen resamples it to 16 kHz itself, with torchaudio, as the reference).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from cachetools import LRUCache

from chatterbox_vllm.audio import (
    S3_TOKENIZER_SAMPLE_RATE,
    S3GEN_SAMPLE_RATE,
    AudioInput,
    load_voice_audio,
    to_tokenizer_rate,
)
from chatterbox_vllm.conds import MAX_T3_PROMPT_TOKENS, VoiceConditionals

if TYPE_CHECKING:
    from chatterbox_s3gen import S3Gen, S3GenReference
    from chatterbox_t3 import T3Voice, VoiceEncoder

logger = logging.getLogger(__name__)

T3_PROMPT_SECONDS = 6
"""T3's voice prompt comes from the first 6 s (``ENC_COND_LEN``)."""
S3GEN_REFERENCE_SECONDS = 10
"""S3Gen's reference is the first 10 s (``DEC_COND_LEN``)."""


@dataclass(frozen=True)
class Voice:
    """A prepared voice: T3's conditioning and S3Gen's reference, plus the audio's content hash."""

    t3: T3Voice
    s3gen: S3GenReference
    content_hash: str

    def to_conditionals(self, exaggeration: float = 0.5) -> VoiceConditionals:
        """This voice in ``conds.pt`` form (see :meth:`save`)."""
        gen = self.s3gen.to_conds_dict()
        return VoiceConditionals(
            speaker_embedding=self.t3.speaker_embedding.detach().to("cpu", torch.float32),
            t3_prompt_tokens=self.t3.prompt_tokens.detach().to("cpu", torch.int64),
            s3gen_prompt_tokens=gen["prompt_token"][0].detach().to("cpu", torch.int64),
            s3gen_prompt_mel=gen["prompt_feat"][0].detach().to("cpu", torch.float32),
            s3gen_speaker_embedding=gen["embedding"][0].detach().to("cpu", torch.float32),
            exaggeration=exaggeration,
        )

    def save(self, path: Any) -> Any:
        """Writes the voice as a reference-compatible ``conds.pt`` (read back by :meth:`load`,
        or passed as ``voice="my-voice.pt"``)."""
        return self.to_conditionals().save(path)

    @classmethod
    def load(cls, path: Any) -> Voice:
        """A voice saved by :meth:`save` (or any reference ``conds.pt``), loaded with
        ``torch.load(weights_only=True)`` and checked tensor by tensor."""
        return cls.from_conditionals(VoiceConditionals.load(path))

    @classmethod
    def from_conditionals(cls, conds: VoiceConditionals) -> Voice:
        from chatterbox_s3gen import S3GenReference
        from chatterbox_t3 import T3Voice

        gen = conds.to_dict()["gen"]
        digest = hashlib.sha256()
        for tensor in (conds.speaker_embedding, conds.t3_prompt_tokens, conds.s3gen_prompt_mel):
            digest.update(tensor.contiguous().numpy().tobytes())
        return cls(
            t3=T3Voice(
                speaker_embedding=conds.speaker_embedding, prompt_tokens=conds.t3_prompt_tokens
            ),
            s3gen=S3GenReference.from_conds_dict(gen),
            content_hash="conds:" + digest.hexdigest(),
        )


def audio_content_hash(wav_24k: torch.Tensor) -> str:
    """sha256 of the decoded 24 kHz samples: the same audio hits the cache whatever its file."""
    return hashlib.sha256(wav_24k.contiguous().numpy().tobytes()).hexdigest()


def build_voice(
    wav_24k: torch.Tensor,
    voice_encoder: VoiceEncoder,
    s3gen: S3Gen,
    content_hash: str | None = None,
) -> Voice:
    """Prepares a voice from validated mono 24 kHz audio (see the module docs for the recipe)."""
    from chatterbox_t3 import T3Voice

    wav_16k = to_tokenizer_rate(wav_24k)
    prompt_tokens = s3gen.tokenize(
        wav_16k[: T3_PROMPT_SECONDS * S3_TOKENIZER_SAMPLE_RATE], max_len=MAX_T3_PROMPT_TOKENS
    )
    speaker_embedding = voice_encoder.embed(wav_16k)
    reference = s3gen.embed_ref(
        wav_24k[: S3GEN_REFERENCE_SECONDS * S3GEN_SAMPLE_RATE], S3GEN_SAMPLE_RATE
    )
    return Voice(
        t3=T3Voice(
            speaker_embedding=speaker_embedding.detach().to("cpu", torch.float32).reshape(-1),
            prompt_tokens=prompt_tokens.detach().to("cpu", torch.int64).reshape(-1),
        ),
        s3gen=reference,
        content_hash=content_hash or audio_content_hash(wav_24k),
    )


class VoiceCache:
    """Prepared voices by audio content hash (least recently used evicted beyond ``capacity``;
    0 disables caching). Thread-safe."""

    def __init__(self, capacity: int = 32) -> None:
        if capacity < 0:
            raise ValueError(f"voice cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._voices: LRUCache[str, Voice] = LRUCache(maxsize=max(1, capacity))
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_or_prepare(self, audio: AudioInput, voice_encoder: VoiceEncoder, s3gen: S3Gen) -> Voice:
        wav_24k = load_voice_audio(audio)
        key = audio_content_hash(wav_24k)
        with self._lock:
            voice = self._voices.get(key)
            if voice is not None:
                self.hits += 1
                logger.debug("voice cache hit %s", key[:12])
                return voice
            self.misses += 1
        logger.info(
            "preparing voice %s (%.2f s of audio)", key[:12], wav_24k.numel() / S3GEN_SAMPLE_RATE
        )
        voice = build_voice(wav_24k, voice_encoder, s3gen, content_hash=key)
        if self.capacity:
            with self._lock:
                self._voices[key] = voice
        return voice

    def __len__(self) -> int:
        return len(self._voices)

    def clear(self) -> None:
        """Forgets every voice and resets the hit/miss counters."""
        with self._lock:
            self._voices.clear()
            self.hits = 0
            self.misses = 0
