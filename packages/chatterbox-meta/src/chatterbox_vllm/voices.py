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

Chatterbox Turbo (chatterbox-tts 0.1.7's ``ChatterboxTurboTTS.prepare_conditionals``) differs:
the reference must be longer than 5 s, it is loudness-normalised to -27 LUFS (ITU-R BS.1770
integrated loudness, measured by ``pyloudnorm``) before both resamplings, and T3's voice prompt
is the first 15 s (at most 375 tokens). :data:`VOICE_RECIPES` holds each model's numbers.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from cachetools import LRUCache

from chatterbox_vllm.audio import (
    MIN_VOICE_SECONDS,
    S3_TOKENIZER_SAMPLE_RATE,
    S3GEN_SAMPLE_RATE,
    AudioInput,
    load_voice_audio,
    to_tokenizer_rate,
)
from chatterbox_vllm.conds import VoiceConditionals
from chatterbox_vllm.errors import AudioTooShortError

if TYPE_CHECKING:
    from chatterbox_s3gen import S3Gen, S3GenReference
    from chatterbox_t3 import T3Voice, VoiceEncoder
    from chatterbox_vllm.models import ModelKind

logger = logging.getLogger(__name__)

T3_PROMPT_SECONDS = 6
"""T3's voice prompt comes from the first 6 s (``ENC_COND_LEN``)."""
S3GEN_REFERENCE_SECONDS = 10
"""S3Gen's reference is the first 10 s (``DEC_COND_LEN``)."""


@dataclass(frozen=True)
class VoiceRecipe:
    """How one model prepares a voice from its reference recording (the reference's
    ``prepare_conditionals`` numbers)."""

    t3_prompt_seconds: int
    """T3's voice prompt: S3 tokens of the first this many seconds (``ENC_COND_LEN``)..."""
    t3_prompt_tokens: int
    """...at most this many (``speech_cond_prompt_len``)."""
    s3gen_reference_seconds: int = S3GEN_REFERENCE_SECONDS
    """S3Gen's reference: the first this many seconds (``DEC_COND_LEN``)."""
    longer_than_seconds: float = 0.0
    """The recording must be longer than this (Turbo: 5 s; an error otherwise)."""
    loudness_lufs: float | None = None
    """Integrated loudness the recording is scaled to before anything else (Turbo: -27 LUFS)."""


VOICE_RECIPES: dict[ModelKind, VoiceRecipe] = {
    "english": VoiceRecipe(T3_PROMPT_SECONDS, 150),
    "multilingual": VoiceRecipe(T3_PROMPT_SECONDS, 150),
    "turbo": VoiceRecipe(15, 375, longer_than_seconds=5.0, loudness_lufs=-27.0),
}
"""Each model's voice preparation (chatterbox-tts 0.1.2 ``ChatterboxTTS``, 0.1.7
``ChatterboxMultilingualTTS`` and ``ChatterboxTurboTTS``)."""


def normalize_loudness(wav_24k: torch.Tensor, target_lufs: float) -> torch.Tensor:
    """``wav_24k`` scaled to ``target_lufs`` integrated loudness (ITU-R BS.1770-4, pyloudnorm's
    meter). Audio whose loudness cannot be measured to a finite gain (digital silence) is
    returned unchanged, as the reference does.

    In float32 as the reference: its voice is librosa's float32 array, which pyloudnorm filters in
    place in that dtype (a float64 copy measures a loudness about 1e-7 dB apart), and its gain
    multiplies it as a float32 (numpy < 2, which it pins, keeps ``float32 * float64 scalar`` in
    float32). The result is the reference's, sample for sample."""
    import pyloudnorm

    meter = pyloudnorm.Meter(S3GEN_SAMPLE_RATE)
    samples = wav_24k.detach().to("cpu", torch.float32).numpy()
    with np.errstate(divide="ignore"):  # silence measures -inf LUFS; handled below
        loudness = float(meter.integrated_loudness(samples))
    gain = 10.0 ** ((target_lufs - loudness) / 20.0)
    if not (math.isfinite(gain) and gain > 0.0):
        logger.warning("voice loudness is not measurable (%s LUFS); not normalised", loudness)
        return wav_24k
    return wav_24k.to(torch.float32) * torch.tensor(gain, dtype=torch.float32)


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


def check_voice_length(wav_24k: torch.Tensor, model: ModelKind) -> None:
    """:class:`AudioTooShortError` if ``model`` needs a longer reference (Turbo: more than 5 s)."""
    least = VOICE_RECIPES[model].longer_than_seconds
    seconds = wav_24k.numel() / S3GEN_SAMPLE_RATE
    if least and seconds <= least:
        raise AudioTooShortError(
            f"voice audio is {seconds:.2f} s long; the {model} model needs a reference longer "
            f"than {least:g} s (as chatterbox-tts's prepare_conditionals)"
        )


def load_voice_audio_for(audio: AudioInput, model: ModelKind) -> torch.Tensor:
    """:func:`~chatterbox_vllm.audio.load_voice_audio` with ``model``'s length rule: a model that
    needs more than the general minimum (Turbo: longer than 5 s) says so for every shorter
    reference, instead of the general "at least 1 s" for the shortest ones."""
    longer_than = VOICE_RECIPES[model].longer_than_seconds
    wav_24k = load_voice_audio(
        audio, min_seconds=0.0 if longer_than >= MIN_VOICE_SECONDS else MIN_VOICE_SECONDS
    )
    check_voice_length(wav_24k, model)
    return wav_24k


def build_voice(
    wav_24k: torch.Tensor,
    voice_encoder: VoiceEncoder,
    s3gen: S3Gen,
    content_hash: str | None = None,
    model: ModelKind = "english",
) -> Voice:
    """Prepares a voice from validated mono 24 kHz audio for ``model`` (see the module docs and
    :data:`VOICE_RECIPES`). ``content_hash`` defaults to that of the audio as given."""
    from chatterbox_t3 import T3Voice

    recipe = VOICE_RECIPES[model]
    check_voice_length(wav_24k, model)
    content_hash = content_hash or audio_content_hash(wav_24k)
    if recipe.loudness_lufs is not None:
        wav_24k = normalize_loudness(wav_24k, recipe.loudness_lufs)
    wav_16k = to_tokenizer_rate(wav_24k)
    prompt_tokens = s3gen.tokenize(
        wav_16k[: recipe.t3_prompt_seconds * S3_TOKENIZER_SAMPLE_RATE],
        max_len=recipe.t3_prompt_tokens,
    )
    speaker_embedding = voice_encoder.embed(wav_16k)
    reference = s3gen.embed_ref(
        wav_24k[: recipe.s3gen_reference_seconds * S3GEN_SAMPLE_RATE], S3GEN_SAMPLE_RATE
    )
    return Voice(
        t3=T3Voice(
            speaker_embedding=speaker_embedding.detach().to("cpu", torch.float32).reshape(-1),
            prompt_tokens=prompt_tokens.detach().to("cpu", torch.int64).reshape(-1),
        ),
        s3gen=reference,
        content_hash=content_hash,
    )


class VoiceCache:
    """Prepared voices by audio content hash (least recently used evicted beyond ``capacity``;
    0 disables caching), prepared for ``model``. Thread-safe."""

    def __init__(self, capacity: int = 32, model: ModelKind = "english") -> None:
        if capacity < 0:
            raise ValueError(f"voice cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.model = model
        self._voices: LRUCache[str, Voice] = LRUCache(maxsize=max(1, capacity))
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_or_prepare(self, audio: AudioInput, voice_encoder: VoiceEncoder, s3gen: S3Gen) -> Voice:
        wav_24k = load_voice_audio_for(audio, self.model)  # before the cache: an error each time
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
        voice = build_voice(wav_24k, voice_encoder, s3gen, content_hash=key, model=self.model)
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
