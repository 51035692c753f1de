"""The typed seam between the components.

``chatterbox-t3-vllm`` produces speech tokens, ``chatterbox-s3gen`` turns them into audio. Neither
imports this package: they satisfy these protocols structurally, and ``nox -s typecheck`` proves it
(see :mod:`chatterbox_vllm._conformance`). Anything else that matches a protocol can replace a
component, e.g. another speech-token model. The vocoder plug-in point is S3Gen's own
``chatterbox_s3gen.vocoders.Vocoder`` protocol (one definition, next to the registry).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch

SPEECH_VOCAB_SIZE = 6561
"""S3 speech-token ids live in ``[0, SPEECH_VOCAB_SIZE)`` (3^8 FSQ codes)."""
SPEECH_TOKEN_RATE_HZ = 25
"""S3 tokens per second of speech."""
MEL_FRAMES_PER_TOKEN = 2
"""S3Gen's 80-bin mel runs at 50 frames/s, two frames per speech token."""

FINISH_REASONS = ("stop", "length")

RequestT_contra = TypeVar("RequestT_contra", contravariant=True)
ReferenceT_contra = TypeVar("ReferenceT_contra", contravariant=True)


@runtime_checkable
class SpeechTokenSequence(Protocol):
    """Speech tokens of one utterance, as any generator returns them."""

    @property
    def token_ids(self) -> Sequence[int]:
        """Ids in ``[0, SPEECH_VOCAB_SIZE)``; start/stop and other control ids already removed."""
        ...

    @property
    def finish_reason(self) -> str:
        """``"stop"``: the model ended the utterance; ``"length"``: the token budget ran out."""
        ...


class WordFrames(Protocol):
    """One word of the text and the speech frames ``[start, end)`` it was spoken in (frame ``k``
    is token ``k`` of the utterance; ``chatterbox_t3.word_alignment.WordFrames`` is one)."""

    @property
    def text(self) -> str: ...

    @property
    def start(self) -> int: ...

    @property
    def end(self) -> int: ...


@dataclass(frozen=True)
class SpeechTokens:
    """Validated speech tokens of one utterance at :data:`SPEECH_TOKEN_RATE_HZ`."""

    token_ids: tuple[int, ...]
    finish_reason: str = "stop"
    words: tuple[WordFrames, ...] = ()
    """The text's words and their frames, when the generator aligns them (multilingual T3)."""

    def __post_init__(self) -> None:
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(
                f"finish_reason must be one of {FINISH_REASONS}, got {self.finish_reason!r}"
            )
        bad = [t for t in self.token_ids if not 0 <= t < SPEECH_VOCAB_SIZE]
        if bad:
            raise ValueError(
                f"speech token ids must lie in [0, {SPEECH_VOCAB_SIZE}); got {len(bad)} outside, "
                f"e.g. {bad[:5]}"
            )

    @classmethod
    def from_sequence(cls, tokens: SpeechTokenSequence) -> SpeechTokens:
        return cls(tuple(int(t) for t in tokens.token_ids), tokens.finish_reason)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def duration_s(self) -> float:
        """Seconds of speech these tokens decode to."""
        return len(self.token_ids) / SPEECH_TOKEN_RATE_HZ

    @property
    def num_mel_frames(self) -> int:
        return len(self.token_ids) * MEL_FRAMES_PER_TOKEN


class SpeechTokenGenerator(Protocol[RequestT_contra]):
    """Turns text + voice requests into speech tokens (T3 on vLLM is one)."""

    def generate_speech_tokens(
        self, requests: Sequence[RequestT_contra]
    ) -> Sequence[SpeechTokenSequence]:
        """One result per request, in request order."""
        ...


class StreamingSpeechTokenGenerator(Protocol[RequestT_contra]):
    """What the local executor needs from T3: text checking and token streams."""

    def check_text(
        self, text: str, language: str | None = None, voice: Any | None = None
    ) -> Sequence[int]:
        """The model's text ids for ``text`` (in ``language``, where the model has several);
        raises a ``ValueError`` subclass naming what is wrong for text the model cannot speak
        (checked before anything is queued). With ``voice`` (the model's conditioning of the
        request), the whole prompt is checked too, where its length depends on the voice."""
        ...

    def stream_speech_tokens(
        self,
        request: RequestT_contra,
        *,
        final_only: bool = False,
        on_tokens: Callable[[int], None] | None = None,
    ) -> AsyncIterator[SpeechTokenSequence]:
        """Yields the tokens generated so far (cumulative), the last item being final; only the
        final item with ``final_only``; ``on_tokens(n)`` is told of new ids as they arrive."""
        ...

    def engine_failure(self) -> str | None:
        """Why the generator can no longer serve (its engine died), ``None`` while it can."""
        ...


class SpeechDecoder(Protocol[ReferenceT_contra]):
    """Turns speech tokens + a voice reference into waveforms (S3Gen is one)."""

    @property
    def sample_rate(self) -> int: ...

    def synthesize(
        self,
        token_sequences: Sequence[Sequence[int]],
        references: Sequence[ReferenceT_contra],
        *,
        n_timesteps: int | None = ...,
        seeds: Sequence[int] | None = ...,
    ) -> list[torch.Tensor]:
        """One mono float waveform per token sequence; references pair up by index;
        ``n_timesteps`` flow-matching steps (``None``: the decoder's own default); ``seeds`` fix
        each item's noise."""
        ...
