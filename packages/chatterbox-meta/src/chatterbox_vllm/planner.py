"""The chunk planner: texts + controls -> a :class:`Plan` that either executor runs.

A plan is built once per call, before any engine work, by :func:`plan_requests`: each text is
validated and split into chunks (:func:`~chatterbox_vllm.text.split_text`, sized by the engine's
``chunk_chars``, never by a caller's lower ``max_new_tokens``: a sentence that fits the model is
never cut because of a smaller budget), and each chunk becomes a :class:`PlanItem` with its own
seed (``seed + chunk index``) and speech-token cap (:func:`token_cap`). The local executor
(:class:`~chatterbox_vllm.tts.ChatterboxTTS`) and the Ray executor
(:class:`~chatterbox_vllm.distributed.replicated.ReplicatedChatterboxTTS`) receive the same items;
replicas run items as they are, never re-splitting text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chatterbox_vllm.config import EngineConfig
from chatterbox_vllm.controls import GenerationParams
from chatterbox_vllm.errors import ChatterboxError, InvalidParameterError
from chatterbox_vllm.interfaces import SPEECH_TOKEN_RATE_HZ
from chatterbox_vllm.models import ModelKind
from chatterbox_vllm.text import (
    SPEECH_CHARS_PER_SECOND,
    speech_length,
    split_text,
    validate_text,
)

if TYPE_CHECKING:
    from chatterbox_t3.sampling import T3SamplingParams


def expected_speech_seconds(text: str) -> float:
    """Seconds of speech ``text`` is expected to take at a typical speaking rate (CJK characters
    count as several, see :func:`~chatterbox_vllm.text.speech_length`)."""
    return speech_length(text) / SPEECH_CHARS_PER_SECOND


def token_cap(text: str, max_new_tokens: int, max_tokens_per_expected_second: float | None) -> int:
    """The speech-token cap of one chunk: ``max_new_tokens``, lowered to
    ``max_tokens_per_expected_second`` times the chunk's expected seconds when that is set."""
    if max_tokens_per_expected_second is None:
        return max_new_tokens
    cap = max(1, round(expected_speech_seconds(text) * max_tokens_per_expected_second))
    return min(max_new_tokens, cap)


@dataclass(frozen=True)
class PlanItem:
    """One chunk of one request, ready for T3 and S3Gen."""

    order: int
    """Position in the call (request by request, chunk by chunk)."""
    request_index: int
    chunk_index: int
    text: str
    params: GenerationParams
    """The request's controls (``max_new_tokens`` resolved)."""
    max_tokens: int
    """This chunk's speech-token cap (:func:`token_cap`)."""
    seed: int | None
    """This chunk's seed (T3 sampling and S3Gen noise)."""

    @property
    def estimated_tokens(self) -> int:
        """Speech tokens this chunk is expected to need (its expected duration at 25 tokens/s,
        within its cap); the Ray placement balances replicas by it."""
        expected = round(expected_speech_seconds(self.text) * SPEECH_TOKEN_RATE_HZ)
        return max(1, min(self.max_tokens, expected))

    def t3_sampling(self) -> T3SamplingParams:
        """T3's sampling parameters for this chunk."""
        return self.params.t3_sampling(max_tokens=self.max_tokens, seed=self.seed)


@dataclass(frozen=True)
class Plan:
    """Every chunk of one call, in order, plus how each request's chunks are joined."""

    texts: tuple[str, ...]
    items: tuple[PlanItem, ...]
    crossfade_seconds: float

    def items_of(self, request_index: int) -> list[PlanItem]:
        return [item for item in self.items if item.request_index == request_index]

    def chunks_of(self, request_index: int) -> tuple[str, ...]:
        return tuple(item.text for item in self.items_of(request_index))


def plan_requests(
    texts: Sequence[str],
    params: Sequence[GenerationParams],
    config: EngineConfig,
    model: ModelKind = "english",
) -> Plan:
    """Validates every text and control against the engine (and ``model``: a ``language`` it
    does not speak is an error) and splits texts into items.

    Raises the :class:`~chatterbox_vllm.errors.ChatterboxError` a front end shows, prefixed with
    ``text N:`` when the call has several texts.
    """
    items: list[PlanItem] = []
    for request_index, (text, request_params) in enumerate(zip(texts, params, strict=True)):
        where = f"text {request_index}: " if len(texts) > 1 else ""
        try:
            validate_text(text)
        except ChatterboxError as error:
            raise type(error)(f"{where}{error}") from None
        if not isinstance(request_params, GenerationParams):
            raise InvalidParameterError(
                f"{where}params must be GenerationParams, got {type(request_params).__name__}"
            )
        try:
            request_params.check_model(model)
        except ChatterboxError as error:
            raise type(error)(f"{where}{error}") from None
        max_new_tokens = request_params.max_new_tokens or config.max_new_tokens
        if max_new_tokens > config.speech_positions:
            raise InvalidParameterError(
                f"{where}max_new_tokens={max_new_tokens} does not fit the engine "
                f"(max_model_len={config.model_len} leaves {config.speech_positions} speech "
                "positions); load with a larger max_new_tokens/max_model_len"
            )
        resolved = request_params.with_controls(max_new_tokens=max_new_tokens)
        # Accent folding is for the English tokenizer; the multilingual one speaks the accents.
        chunks = split_text(text, config.chunk_chars, fold=model == "english")
        for chunk_index, chunk in enumerate(chunks):
            items.append(
                PlanItem(
                    order=len(items),
                    request_index=request_index,
                    chunk_index=chunk_index,
                    text=chunk,
                    params=resolved,
                    max_tokens=token_cap(
                        chunk, max_new_tokens, resolved.max_tokens_per_expected_second
                    ),
                    seed=resolved.chunk_seed(chunk_index),
                )
            )
    return Plan(texts=tuple(texts), items=tuple(items), crossfade_seconds=config.crossfade_seconds)
