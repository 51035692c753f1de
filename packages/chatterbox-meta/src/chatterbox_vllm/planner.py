"""The chunk planner: texts + controls -> a :class:`Plan` that either executor runs.

A plan is built once per call, before any engine work, by :func:`plan_requests`: each text is
validated and split into chunks (:func:`~chatterbox_vllm.text.split_text`, sized by the engine's
``chunk_chars``, never by a caller's lower ``max_new_tokens``: a sentence that fits the model is
never cut because of a smaller budget), and each chunk becomes a :class:`PlanItem` with its own
seed (``seed + chunk index``) and speech-token cap (:func:`token_cap`). The local executor
(:class:`~chatterbox_vllm.tts.ChatterboxTTS`) and the Ray executor
(:class:`~chatterbox_vllm.distributed.replicated.ReplicatedChatterboxTTS`) receive the same items;
replicas run items as they are, never re-splitting text.

Text that arrives in pieces (an LLM's tokens, ``stream_text`` and the WebSocket route) is planned
by :class:`IncrementalPlanner`, the same planner in an incremental mode: a sentence becomes items
as soon as its end is known, with the seed sequence and token caps of :func:`plan_requests`.
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
    clause_ends,
    is_speakable,
    sentence_ends,
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


def resolve_params(
    params: GenerationParams, config: EngineConfig, model: ModelKind = "english", where: str = ""
) -> GenerationParams:
    """``params`` checked against the engine and ``model``, with ``max_new_tokens`` resolved
    (``where`` prefixes the error, e.g. ``text 2:``)."""
    if not isinstance(params, GenerationParams):
        raise InvalidParameterError(
            f"{where}params must be GenerationParams, got {type(params).__name__}"
        )
    try:
        params.check_model(model)
    except ChatterboxError as error:
        raise type(error)(f"{where}{error}") from None
    max_new_tokens = params.max_new_tokens or config.max_new_tokens
    if max_new_tokens > config.speech_positions:
        raise InvalidParameterError(
            f"{where}max_new_tokens={max_new_tokens} does not fit the engine "
            f"(max_model_len={config.model_len} leaves {config.speech_positions} speech "
            "positions); load with a larger max_new_tokens/max_model_len"
        )
    return params.with_controls(max_new_tokens=max_new_tokens)


def _item(
    order: int, request_index: int, chunk_index: int, chunk: str, params: GenerationParams
) -> PlanItem:
    """Chunk ``chunk_index`` of a request: its seed in the request's sequence, its token cap."""
    assert params.max_new_tokens is not None  # resolved
    return PlanItem(
        order=order,
        request_index=request_index,
        chunk_index=chunk_index,
        text=chunk,
        params=params,
        max_tokens=token_cap(chunk, params.max_new_tokens, params.max_tokens_per_expected_second),
        seed=params.chunk_seed(chunk_index),
    )


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
        resolved = resolve_params(request_params, config, model, where)
        # Accent folding is for the English tokenizer; the multilingual one speaks the accents.
        chunks = split_text(text, config.chunk_chars, fold=model == "english")
        for chunk_index, chunk in enumerate(chunks):
            items.append(_item(len(items), request_index, chunk_index, chunk, resolved))
    return Plan(texts=tuple(texts), items=tuple(items), crossfade_seconds=config.crossfade_seconds)


FIRST_CLAUSE_MIN_CHARS = 20
"""A turn's first clause goes to T3 on its own (its audio starts sooner) when it has at least this
many characters; a shorter one ("Well,") said alone would get a sentence's closing melody."""


@dataclass(frozen=True)
class TextSpan:
    """Where an item's text lies in the text received so far: ``text[start:end]`` (characters)."""

    start: int
    end: int


class IncrementalPlanner:
    """The planner for one text that arrives in pieces: :meth:`append` each delta, then
    :meth:`commit` the rest. Items come out as soon as their end is known:

    - each sentence once its end is known (its punctuation and the whitespace after it; CJK
      sentence marks at once), split further by :func:`~chatterbox_vllm.text.split_text` when
      longer than ``chunk_chars``, as :func:`plan_requests` splits it;
    - before the first item, a clause of at least :data:`FIRST_CLAUSE_MIN_CHARS` characters,
      so the first audio need not wait for the first sentence's end;
    - text longer than ``chunk_chars`` with no sentence end yet, cut at its last clause mark (or
      space) that fits.

    Items are numbered 0, 1, ... with the request's seed sequence (``seed + index``) and token
    caps, exactly as :func:`plan_requests` numbers the chunks of the whole text: where both split
    the text the same way, the items are equal. Deltas may split words, and UTF-16 surrogate
    pairs (a JSON ``\\ud83d`` / ``\\ude00`` sent in two messages) are joined again."""

    def __init__(
        self, params: GenerationParams, config: EngineConfig, model: ModelKind = "english"
    ) -> None:
        self.params = resolve_params(params, config, model)
        self._config = config
        self._model = model
        self._text = ""
        self._planned = 0  # characters of ``_text`` already planned (or dropped as silent)
        self.items: list[PlanItem] = []
        self.spans: list[TextSpan] = []
        """Per item (by ``order``): the part of :attr:`text` it was planned from."""

    @property
    def text(self) -> str:
        """Every delta so far, joined."""
        return self._text

    @property
    def pending(self) -> str:
        """The text received but not planned yet (no end known)."""
        return self._text[self._planned :]

    def append(self, delta: str) -> list[PlanItem]:
        """Adds a piece of text; returns the items whose end it made known."""
        self._text = self._joined(delta)
        return self._plan(final=False)

    def pending_after(self, delta: str) -> int:
        """How many characters would stay pending (no end known) after :meth:`append` of
        ``delta``: what a limit on buffered text checks before taking a delta."""
        text, start = self._joined(delta), self._planned
        first = not self.items
        while (end := self._next_end(text, start, first, final=False)) is not None:
            start, first = end, False
        return len(text) - start

    def commit(self) -> list[PlanItem]:
        """The end of the text: returns the items of everything not planned yet."""
        return self._plan(final=True)

    def _joined(self, delta: str) -> str:
        if not isinstance(delta, str):
            raise InvalidParameterError(f"a text delta must be a str, got {type(delta).__name__}")
        # A surrogate pair cut between two deltas: the halves become one character again.
        boundary = (self._text[-1:] + delta).encode("utf-16-le", "surrogatepass")
        return self._text[:-1] + boundary.decode("utf-16-le", "surrogatepass")

    def _plan(self, *, final: bool) -> list[PlanItem]:
        new: list[PlanItem] = []
        while (end := self._next_end(self._text, self._planned, not self.items, final)) is not None:
            new.extend(self._plan_segment(self._planned, end))
            self._planned = end
        return new

    def _next_end(self, text: str, start: int, first: bool, final: bool) -> int | None:
        """Where the segment of ``text`` that starts at ``start`` ends, if that is known."""
        pending = text[start:]
        if not pending.strip():
            return None
        ends = sentence_ends(pending)
        if ends:
            return start + ends[0]
        if first:
            for end in clause_ends(pending):
                if len(pending[:end].strip()) >= FIRST_CLAUSE_MIN_CHARS:
                    return start + end
        limit = self._config.chunk_chars
        if speech_length(pending) > limit:
            fits = [end for end in clause_ends(pending) if speech_length(pending[:end]) <= limit]
            spaces = [
                index
                for index, char in enumerate(pending)
                if char.isspace() and pending[:index].strip()
            ]
            if fits:
                return start + fits[-1]
            within = [index for index in spaces if speech_length(pending[:index]) <= limit]
            if within or spaces:
                # One word longer than a chunk (a URL) goes whole, as split_text keeps it.
                return start + (within[-1] if within else spaces[0])
        return len(text) if final else None

    def _plan_segment(self, start: int, end: int) -> list[PlanItem]:
        segment = self._text[start:end].strip()
        if not is_speakable(segment):
            return []  # a stray "..." or dash says nothing (split_text drops such pieces too)
        validate_text(segment)
        items = []
        for chunk in split_text(segment, self._config.chunk_chars, fold=self._model == "english"):
            index = len(self.items)
            item = _item(index, 0, index, chunk, self.params)
            self.items.append(item)
            self.spans.append(TextSpan(start, end))
            items.append(item)
        return items
