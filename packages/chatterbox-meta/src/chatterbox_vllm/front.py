"""What every executor shares: the ``generate`` front, planning, error naming and joining.

:class:`SpeechFront` turns a call into a :class:`~chatterbox_vllm.planner.Plan`, asks its
executor for the voices and for each plan item's audio, and joins each text's chunks into one
:class:`~chatterbox_vllm.results.GenerationResult`. The executors (:class:`ChatterboxTTS` on one
GPU, ``ReplicatedChatterboxTTS`` on Ray) implement only :meth:`SpeechFront._resolve_voices` and
:meth:`SpeechFront._execute`, so the local and Ray paths cannot drift apart.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Generic, TypeVar, overload

import torch
from typing_extensions import Unpack

from chatterbox_vllm.audio import (
    S3GEN_SAMPLE_RATE,
    crossfade_overlaps,
    equal_power_crossfade_join,
)
from chatterbox_vllm.config import EngineConfig
from chatterbox_vllm.controls import ControlKwargs, GenerationParams
from chatterbox_vllm.errors import (
    ChatterboxError,
    ChunkInputError,
    GenerationInterrupted,
    InvalidParameterError,
)
from chatterbox_vllm.interfaces import SPEECH_TOKEN_RATE_HZ
from chatterbox_vllm.models import ModelKind
from chatterbox_vllm.planner import Plan, plan_requests
from chatterbox_vllm.results import (
    ChunkAudio,
    GenerationResult,
    GenerationStats,
    TTSRequest,
    VoiceLike,
    WordTiming,
)
from chatterbox_vllm.speed import change_speed
from chatterbox_vllm.watermark import Watermarker, apply_watermark

logger = logging.getLogger(__name__)

ResolvedVoice = TypeVar("ResolvedVoice")


class SpeechFront(abc.ABC, Generic[ResolvedVoice]):
    """The public call surface (``generate``, ``generate_requests``) over one executor."""

    sample_rate = S3GEN_SAMPLE_RATE

    def __init__(
        self, config: EngineConfig, watermarker: Watermarker | None, model: ModelKind = "english"
    ) -> None:
        self.config = config
        self.model: ModelKind = model
        """The model the checkpoint holds (``english`` or ``multilingual``): it decides the
        defaults of unset controls and which ``language`` values are accepted."""
        self._watermarker = watermarker
        self._call_lock = threading.Lock()
        self._closed = False
        self.last_stats = GenerationStats()

    # ------------------------------------------------------------------ executor hooks

    @abc.abstractmethod
    def _resolve_voices(self, requests: Sequence[TTSRequest]) -> list[ResolvedVoice]:
        """One executor-specific voice handle per request (prepared, cached)."""

    @abc.abstractmethod
    def _execute(
        self, plan: Plan, voices: list[ResolvedVoice], stats: GenerationStats, progress: bool
    ) -> dict[int, ChunkAudio]:
        """Audio of every plan item by ``order``; fills executor-specific ``stats``. An input
        error about one item is raised as :class:`ChunkInputError` (its ``order`` set)."""

    def _check_open(self) -> None:
        if self._closed:
            raise ChatterboxError(f"this {type(self).__name__} has been closed; load a new one")

    # ------------------------------------------------------------------ calls

    @overload
    def generate(
        self,
        text: str,
        voice: VoiceLike = ...,
        *,
        progress: bool = ...,
        **controls: Unpack[ControlKwargs],
    ) -> GenerationResult: ...

    @overload
    def generate(
        self,
        text: list[str],
        voice: VoiceLike | list[VoiceLike] = ...,
        *,
        progress: bool = ...,
        **controls: Unpack[ControlKwargs],
    ) -> list[GenerationResult]: ...

    def generate(
        self,
        text: str | list[str],
        voice: VoiceLike | list[VoiceLike] = None,
        *,
        progress: bool = False,
        **controls: Unpack[ControlKwargs],
    ) -> GenerationResult | list[GenerationResult]:
        """Speaks ``text`` (a string, or a list of strings decoded together as one batch).

        ``voice``: ``None`` for the built-in voice, an audio path, a saved voice (``.pt``),
        ``(waveform, sample_rate)`` or a prepared :class:`~chatterbox_vllm.voices.Voice`; with a
        list of texts, a list gives each text its own voice. A control left ``None`` takes its
        default from :data:`chatterbox_vllm.controls.CONTROLS` (ranges and meanings are there),
        or from :data:`~chatterbox_vllm.controls.MODEL_DEFAULTS` for the loaded :attr:`model`.
        ``language`` (multilingual model: one of 23 ids; English model: ``en`` or unset).
        Long texts are split into chunks and joined with an equal-power crossfade. Returns one
        :class:`GenerationResult` per text.
        """
        params = self.params(**controls)
        if isinstance(text, str):
            if isinstance(voice, list):
                raise InvalidParameterError(
                    "a list of voices needs a list of texts (one voice per text)"
                )
            return self.generate_requests([TTSRequest(text, voice, params)], progress=progress)[0]
        if not isinstance(text, list) or not text:
            raise InvalidParameterError(
                f"text must be a str or a non-empty list of str, got {type(text).__name__}"
                + (" (empty list)" if isinstance(text, list) else "")
            )
        if isinstance(voice, list):
            if len(voice) != len(text):
                raise InvalidParameterError(
                    f"got {len(text)} texts but {len(voice)} voices; pass one voice per text "
                    "or a single voice for all"
                )
            voices: list[VoiceLike] = list(voice)
        else:
            voices = [voice] * len(text)
        requests = [TTSRequest(t, v, params) for t, v in zip(text, voices)]
        return self.generate_requests(requests, progress=progress)

    def params(self, **controls: Unpack[ControlKwargs]) -> GenerationParams:
        """:class:`GenerationParams` for this engine's :attr:`model`: the given controls, the
        model's defaults for the rest (what ``generate``/``stream`` build from their keyword
        arguments; use it for :class:`TTSRequest` params too)."""
        return GenerationParams.from_controls(dict(controls), model=self.model)

    def generate_requests(
        self, requests: Sequence[TTSRequest], *, progress: bool = False
    ) -> list[GenerationResult]:
        """Speaks several requests, each with its own text, voice and controls, as one batch.
        Each request's params are taken as given: build them with :meth:`params` to get the
        loaded model's defaults for the controls you leave unset."""
        self._check_open()
        if isinstance(requests, str | TTSRequest) or not isinstance(requests, Sequence):
            raise InvalidParameterError(
                f"requests must be a list of TTSRequest, got {type(requests).__name__}"
            )
        if not requests:
            raise InvalidParameterError("requests is empty")
        for index, request in enumerate(requests):
            if not isinstance(request, TTSRequest):
                raise InvalidParameterError(
                    f"requests[{index}] is a {type(request).__name__}; requests must hold "
                    "TTSRequest(text, voice, params) objects (for plain texts use "
                    "generate([...]))"
                )
        with self._call_lock:
            return self._generate(list(requests), progress)

    def _generate(self, requests: list[TTSRequest], progress: bool) -> list[GenerationResult]:
        start = time.perf_counter()
        plan = plan_requests(
            [request.text for request in requests],
            [request.params for request in requests],
            self.config,
            self.model,
        )
        voice_start = time.perf_counter()
        voices = self._resolve_voices(requests)
        stats = GenerationStats(chunks=len(plan.items))
        stats.voice_seconds = time.perf_counter() - voice_start
        logger.info("generating %d text(s) as %d chunk(s)", len(requests), len(plan.items))
        try:
            audio = self._execute(plan, voices, stats, progress)
        except ChunkInputError as error:
            raise self._name_request(plan, error) from None
        except GenerationInterrupted as interrupted:
            partial = self._partial(plan, requests, interrupted.finished)
            missing = [
                tuple(i.text for i in plan.items_of(n) if i.order not in interrupted.finished)
                for n in range(len(requests))
            ]
            raise GenerationInterrupted(partial, missing) from None

        results = []
        for request_index, request in enumerate(requests):
            outputs = [audio[item.order] for item in plan.items_of(request_index)]
            result = self._result(plan, request_index, request, outputs)
            stats.audio_seconds += result.duration_s
            stats.speech_tokens += sum(len(output.tokens) for output in outputs)
            results.append(result)
        stats.wall_seconds = time.perf_counter() - start
        self.last_stats = stats
        return results

    def _result(
        self,
        plan: Plan,
        request_index: int,
        request: TTSRequest,
        outputs: list[ChunkAudio],
        chunks: tuple[str, ...] | None = None,
    ) -> GenerationResult:
        """One text's result from its chunks' audio (``chunks``: their texts, when only some of
        the text's chunks are there: an interrupted call's)."""
        waveforms = [output.waveform for output in outputs]
        return GenerationResult(
            waveform=self._join_chunks(waveforms, request.params.speed),
            sample_rate=self.sample_rate,
            text=request.text,
            chunks=plan.chunks_of(request_index) if chunks is None else chunks,
            speech_tokens=tuple(output.tokens for output in outputs),
            chunk_samples=tuple(w.numel() for w in waveforms),
            watermarked=self._watermarker is not None,
            words=tuple(
                word.at_speed(request.params.speed) for word in self._word_timings(outputs)
            ),
        )

    def _partial(
        self, plan: Plan, requests: list[TTSRequest], finished: dict[int, ChunkAudio]
    ) -> list[GenerationResult | None]:
        """For each text of an interrupted call, the result of its finished chunks in text order
        (S3Gen takes the longest chunks first, so they need not be the first ones; ``chunks``
        says which texts are there), or ``None`` where none was finished."""
        partial: list[GenerationResult | None] = []
        for request_index, request in enumerate(requests):
            done = [item for item in plan.items_of(request_index) if item.order in finished]
            partial.append(
                self._result(
                    plan,
                    request_index,
                    request,
                    [finished[item.order] for item in done],
                    tuple(item.text for item in done),
                )
                if done
                else None
            )
        return partial

    def _word_timings(self, outputs: list[ChunkAudio]) -> tuple[WordTiming, ...]:
        """The chunks' word frames placed in the joined audio (each chunk starts where the
        crossfade join puts it)."""
        crossfade = round(self.config.crossfade_seconds * self.sample_rate)
        lengths = [output.waveform.numel() for output in outputs]
        overlaps = crossfade_overlaps(lengths, crossfade)
        words: list[WordTiming] = []
        start = 0
        for index, output in enumerate(outputs):
            last = index == len(outputs) - 1
            words.extend(
                chunk_word_timings(output.tokens, index, start, lengths[index], crossfade, last)
            )
            if index < len(overlaps):
                start += lengths[index] - overlaps[index]
        return tuple(words)

    @staticmethod
    def _name_request(plan: Plan, error: ChunkInputError) -> ChatterboxError:
        """The user-facing error: the cause, prefixed with ``text N:`` when the call has several
        texts (the same words on the local and the Ray path)."""
        cause = error.cause
        if error.order is None or len(plan.texts) == 1:
            return cause
        request_index = plan.items[error.order].request_index
        return type(cause)(f"text {request_index}: {cause}")

    def _join_chunks(self, waveforms: list[torch.Tensor], speed: float = 1.0) -> torch.Tensor:
        """Crossfades one text's chunk audio together, brings it to ``speed`` (1.0: untouched)
        and watermarks the result (the watermark goes on the audio as it is heard)."""
        crossfade = round(self.config.crossfade_seconds * self.sample_rate)
        joined = equal_power_crossfade_join(waveforms, crossfade)
        if speed != 1.0 and joined.numel():
            joined = torch.from_numpy(change_speed(joined.numpy(), self.sample_rate, speed))
        if self._watermarker is not None and joined.numel():
            joined = apply_watermark(self._watermarker, joined, self.sample_rate)
        return joined

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @abc.abstractmethod
    def close(self) -> None:
        """Stops the engine(s) (idempotent)."""


def chunk_word_timings(
    tokens: object,
    text_chunk: int,
    start_sample: int,
    num_samples: int,
    crossfade_samples: int,
    last: bool,
) -> list[WordTiming]:
    """One chunk's words (T3's ``words``: frames of its speech tokens) in seconds of the joined
    audio, the chunk starting at ``start_sample`` and lasting ``num_samples``. Times are clamped
    to the chunk and, unless it is the ``last``, to before the end the join crossfades with the
    next chunk (``min(crossfade, length / 2)``, the most the join overlaps): so the next chunk's
    words never start before this chunk's end, and no word ends after the audio (S3Gen renders
    960 samples per token, less a trimmed half token)."""
    rate = S3GEN_SAMPLE_RATE
    end_sample = start_sample + num_samples
    if not last:
        end_sample -= min(crossfade_samples, num_samples // 2)

    def seconds(frame_seconds: float) -> float:
        return min(start_sample + round(frame_seconds * rate), end_sample) / rate

    return [
        WordTiming(
            word.text,
            seconds(word.start / SPEECH_TOKEN_RATE_HZ),
            seconds(word.end / SPEECH_TOKEN_RATE_HZ),
            text_chunk,
        )
        for word in getattr(tokens, "words", ())
    ]
