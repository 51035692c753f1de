"""``ChatterboxTTS``: text (any length) + voice -> 24 kHz speech, T3 on vLLM and S3Gen pipelined."""

from __future__ import annotations

import abc
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import torch

from chatterbox_vllm.audio import (
    DEFAULT_CROSSFADE_SECONDS,
    S3GEN_SAMPLE_RATE,
    AudioInput,
    equal_power_crossfade_join,
    save_audio,
)
from chatterbox_vllm.conds import VoiceConditionals
from chatterbox_vllm.errors import ChatterboxError, InvalidParameterError, InvalidTextError
from chatterbox_vllm.hub import (
    DEFAULT_REPO_ID,
    DEFAULT_REVISION,
    check_checkpoint_dir,
    download_checkpoint,
)
from chatterbox_vllm.params import GenerationParams
from chatterbox_vllm.pipeline import ChunkJob, EventLoopThread, PipelineTimings, run_pipeline
from chatterbox_vllm.text import (
    SPEECH_CHARS_PER_SECOND,
    chunk_chars_for_token_budget,
    split_text,
    validate_text,
)
from chatterbox_vllm.voices import Voice, VoiceCache
from chatterbox_vllm.watermark import Watermarker, apply_watermark, resolve_watermarker

if TYPE_CHECKING:
    from chatterbox_s3gen import S3Gen
    from chatterbox_t3 import AsyncT3Engine, VoiceEncoder

logger = logging.getLogger(__name__)

VoiceLike = Voice | AudioInput | None
"""``None`` (the checkpoint's built-in voice), a prepared :class:`Voice`, an audio file path, or
``(waveform, sample_rate)``."""

CONDITIONING_POSITIONS = 34
"""T3's prefill starts with 34 conditioning positions (speaker, 32 perceiver outputs, emotion)."""


@dataclass(frozen=True)
class EngineConfig:
    """Engine knobs. ``None`` means "derive it" (the derived value is logged at load time).

    * ``device``: ``"cuda"`` when available, else ``"cpu"`` (S3Gen and the voice encoder; T3 runs
      wherever vLLM's platform runs).
    * ``dtype``: T3 weights/activations in vLLM (``"auto"``: bfloat16 on CUDA, float32 on CPU).
    * ``s3gen_dtype``: S3Gen's dtype (``"float32"`` by default: the reference's numerics).
    * ``gpu_memory_utilization``: share of GPU memory vLLM may take for T3 weights + KV cache; the
      rest is left to S3Gen (0.4 leaves room for S3Gen batches of 8 on a 24 GB GPU).
    * ``max_num_seqs``: most chunks T3 decodes at once (vLLM batch size).
    * ``max_model_len``: T3 positions per chunk; default 34 conditioning + chunk text + 4 special
      positions + ``max_new_tokens``, rounded up to a multiple of 16.
    * ``max_new_tokens``: default speech-token budget per chunk (1000 = 40 s, the reference's).
    * ``max_chunk_chars``: long-text chunk size; default from ``max_new_tokens`` (300 for 1000).
    * ``vocoder``: S3Gen vocoder backend name (``chatterbox_s3gen.available_vocoders()``).
    * ``cfm_steps``: S3Gen flow-matching Euler steps (10 in the reference).
    * ``s3gen_batch_size``: most finished chunks S3Gen synthesises in one batch.
    * ``crossfade_seconds``: equal-power crossfade between chunks (50 ms).
    * ``voice_cache_size``: prepared voices kept in memory.
    * ``enforce_eager`` / ``num_gpu_blocks_override``: passed to vLLM (eager mode and a fixed
      KV-cache size are what the CPU test support needs).
    """

    device: str | None = None
    dtype: str = "auto"
    s3gen_dtype: str = "float32"
    gpu_memory_utilization: float = 0.4
    max_num_seqs: int = 32
    max_model_len: int | None = None
    max_new_tokens: int = 1000
    max_chunk_chars: int | None = None
    vocoder: str = "hift-torch"
    cfm_steps: int = 10
    s3gen_batch_size: int = 8
    crossfade_seconds: float = DEFAULT_CROSSFADE_SECONDS
    voice_cache_size: int = 32
    enforce_eager: bool = False
    num_gpu_blocks_override: int | None = None
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for ``AsyncT3Engine.from_checkpoint`` (forwarded to vLLM)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise InvalidParameterError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        for name in ("max_num_seqs", "max_new_tokens", "cfm_steps", "s3gen_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidParameterError(f"{name} must be a positive int, got {value!r}")
        if self.max_model_len is not None and self.max_model_len < 64:
            raise InvalidParameterError(f"max_model_len must be >= 64, got {self.max_model_len}")
        if not 0.0 <= self.crossfade_seconds <= 1.0:
            raise InvalidParameterError(
                f"crossfade_seconds must be in [0, 1], got {self.crossfade_seconds}"
            )
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise InvalidParameterError(
                f"dtype must be auto, float32, float16 or bfloat16, got {self.dtype!r}"
            )
        if self.s3gen_dtype not in ("float32", "float16", "bfloat16"):
            raise InvalidParameterError(
                f"s3gen_dtype must be float32, float16 or bfloat16, got {self.s3gen_dtype!r}"
            )

    @property
    def chunk_chars(self) -> int:
        return self.max_chunk_chars or chunk_chars_for_token_budget(self.max_new_tokens)

    @property
    def model_len(self) -> int:
        if self.max_model_len is not None:
            return self.max_model_len
        needed = CONDITIONING_POSITIONS + self.chunk_chars + 4 + self.max_new_tokens
        return -(-needed // 16) * 16


@dataclass(frozen=True)
class GenerationResult:
    """Speech for one text: ``waveform`` is mono float32 ``[samples]`` at ``sample_rate``."""

    waveform: torch.Tensor
    sample_rate: int
    text: str
    chunks: tuple[str, ...]
    speech_tokens: tuple[int, ...]
    """Speech tokens T3 produced per chunk."""
    finish_reasons: tuple[str, ...]
    """Per chunk: ``"stop"`` (T3 ended the utterance) or ``"length"`` (token cap reached)."""
    chunk_samples: tuple[int, ...]
    """Samples of each chunk's audio before joining (the joined ``waveform`` is their sum minus
    one crossfade per join)."""
    watermarked: bool

    @property
    def duration_s(self) -> float:
        return self.waveform.numel() / self.sample_rate

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the audio; the format follows the suffix (.wav, .flac, .ogg, .mp3)."""
        return save_audio(path, self.waveform, self.sample_rate)


@dataclass(frozen=True)
class TTSRequest:
    """One text with its own voice and controls, for :meth:`ChatterboxTTS.generate_requests`."""

    text: str
    voice: VoiceLike = None
    params: GenerationParams = field(default_factory=GenerationParams)


@dataclass
class GenerationStats:
    """What the last call did (read by ``bench``)."""

    chunks: int = 0
    timings: PipelineTimings = field(default_factory=PipelineTimings)
    audio_seconds: float = 0.0
    voice_seconds: float = 0.0


class SpeechFront(abc.ABC):
    """What :class:`ChatterboxTTS` and ``ReplicatedChatterboxTTS`` share: the ``generate``
    signature, the checks made before any engine work, and how chunk audio becomes one result.
    Subclasses provide ``config``, ``sample_rate``, ``_watermarker`` and ``generate_requests``."""

    config: EngineConfig
    sample_rate: int
    _watermarker: Watermarker | None

    @abc.abstractmethod
    def generate_requests(
        self, requests: Sequence[TTSRequest], *, progress: bool = True
    ) -> list[GenerationResult]:
        """Speaks several requests, each with its own text, voice and controls."""

    @overload
    def generate(
        self,
        text: str,
        voice: VoiceLike = ...,
        *,
        exaggeration: float = ...,
        cfg_weight: float = ...,
        temperature: float = ...,
        top_p: float = ...,
        min_p: float = ...,
        repetition_penalty: float = ...,
        seed: int | None = ...,
        max_new_tokens: int | None = ...,
        max_tokens_per_expected_second: float | None = ...,
        progress: bool = ...,
    ) -> GenerationResult: ...

    @overload
    def generate(
        self,
        text: list[str],
        voice: VoiceLike | list[VoiceLike] = ...,
        *,
        exaggeration: float = ...,
        cfg_weight: float = ...,
        temperature: float = ...,
        top_p: float = ...,
        min_p: float = ...,
        repetition_penalty: float = ...,
        seed: int | None = ...,
        max_new_tokens: int | None = ...,
        max_tokens_per_expected_second: float | None = ...,
        progress: bool = ...,
    ) -> list[GenerationResult]: ...

    def generate(
        self,
        text: str | list[str],
        voice: VoiceLike | list[VoiceLike] = None,
        *,
        exaggeration: float = 0.5,
        cfg_weight: float = 0.5,
        temperature: float = 0.8,
        top_p: float = 1.0,
        min_p: float = 0.05,
        repetition_penalty: float = 1.2,
        seed: int | None = None,
        max_new_tokens: int | None = None,
        max_tokens_per_expected_second: float | None = None,
        progress: bool = True,
    ) -> GenerationResult | list[GenerationResult]:
        """Speaks ``text`` (a string, or a list of strings decoded together as one batch).

        ``voice``: ``None`` for the built-in voice, an audio path, ``(waveform, sample_rate)`` or
        a prepared :class:`Voice`; with a list of texts, a list gives each text its own voice.
        Controls default to chatterbox-tts 0.1.2's; see :class:`GenerationParams` for ranges.
        Long texts are split into chunks (see :mod:`chatterbox_vllm.text`) and joined with an
        equal-power crossfade. Returns one :class:`GenerationResult` per text.
        """
        params = GenerationParams(
            exaggeration=exaggeration,
            cfg_weight=cfg_weight,
            temperature=temperature,
            top_p=top_p,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
            max_new_tokens=self.config.max_new_tokens if max_new_tokens is None else max_new_tokens,
            max_tokens_per_expected_second=max_tokens_per_expected_second,
        )
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

    def _validate_requests(self, requests: list[TTSRequest]) -> None:
        """Validates texts and controls before the engine sees anything (same messages for every
        front end)."""
        for index, request in enumerate(requests):
            try:
                validate_text(request.text)
            except ChatterboxError as error:
                raise type(error)(
                    f"text {index}: {error}" if len(requests) > 1 else str(error)
                ) from None
            if not isinstance(request.params, GenerationParams):
                raise InvalidParameterError(
                    f"request {index}: params must be GenerationParams, got "
                    f"{type(request.params).__name__}"
                )
            budget = self.config.model_len - CONDITIONING_POSITIONS - 4 - self.config.chunk_chars
            if request.params.max_new_tokens > budget:
                raise InvalidParameterError(
                    f"max_new_tokens={request.params.max_new_tokens} does not fit the engine "
                    f"(max_model_len={self.config.model_len} leaves {budget} speech positions); "
                    "load with a larger max_new_tokens/max_model_len"
                )

    def _join_chunks(self, waveforms: list[torch.Tensor]) -> torch.Tensor:
        """Crossfades one text's chunk audio together and watermarks the result."""
        crossfade = round(self.config.crossfade_seconds * self.sample_rate)
        joined = equal_power_crossfade_join(waveforms, crossfade)
        if self._watermarker is not None and joined.numel():
            joined = apply_watermark(self._watermarker, joined, self.sample_rate)
        return joined


class ChatterboxTTS(SpeechFront):
    """Chatterbox text-to-speech on vLLM.

    Build with :meth:`from_pretrained` (Hub) or :meth:`from_local` (a checkpoint directory), call
    :meth:`generate`, and :meth:`close` (or use ``with``) to stop the vLLM engine. One object can
    serve many calls; errors in one call (bad text, bad audio, out-of-range controls) leave it
    usable. Calls are serialised (one at a time); inside a call all chunks of all texts are
    decoded as one vLLM batch.
    """

    sample_rate = S3GEN_SAMPLE_RATE

    def __init__(
        self,
        *,
        t3: AsyncT3Engine,
        s3gen: S3Gen,
        voice_encoder: VoiceEncoder,
        config: EngineConfig,
        default_voice: Voice | None = None,
        watermarker: Watermarker | None = None,
        loop: EventLoopThread | None = None,
    ) -> None:
        self.config = config
        self._t3 = t3
        self._s3gen = s3gen
        self._voice_encoder = voice_encoder
        self.default_voice = default_voice
        self._watermarker = watermarker
        self._loop = loop or EventLoopThread()
        self._voices = VoiceCache(config.voice_cache_size)
        self._call_lock = threading.Lock()
        self._closed = False
        self.last_stats = GenerationStats()

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        repo_id: str = DEFAULT_REPO_ID,
        revision: str | None = DEFAULT_REVISION,
        *,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool | None = None,
        config: EngineConfig | None = None,
        watermark: bool | None | Watermarker = None,
        **config_overrides: Any,
    ) -> ChatterboxTTS:
        """Downloads (or reuses from the Hugging Face cache) the five checkpoint files of
        ``repo_id`` at the pinned ``revision``, then loads them like :meth:`from_local`.
        ``HF_HUB_OFFLINE=1`` uses the cache only."""
        directory = download_checkpoint(
            repo_id, revision, cache_dir=cache_dir, token=token, local_files_only=local_files_only
        )
        return cls.from_local(directory, config=config, watermark=watermark, **config_overrides)

    @classmethod
    def from_local(
        cls,
        directory: str | os.PathLike,
        *,
        config: EngineConfig | None = None,
        watermark: bool | None | Watermarker = None,
        **config_overrides: Any,
    ) -> ChatterboxTTS:
        """Loads a checkpoint directory (``ve.safetensors``, ``t3_cfg.safetensors``,
        ``s3gen.safetensors``, ``tokenizer.json`` and optionally ``conds.pt``, the default voice).

        Engine knobs come from ``config`` or keyword overrides of :class:`EngineConfig` fields,
        e.g. ``from_local(d, gpu_memory_utilization=0.5, vocoder="hift-onnx")``.
        """
        path = check_checkpoint_dir(directory)
        from chatterbox_s3gen import S3Gen
        from chatterbox_t3 import AsyncT3Engine

        config = replace(config or EngineConfig(), **config_overrides)
        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = config.dtype
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        logger.info(
            "loading %s: device=%s T3 dtype=%s S3Gen dtype=%s vocoder=%s cfm_steps=%d "
            "max_num_seqs=%d max_model_len=%d%s max_new_tokens=%d chunk_chars=%d%s "
            "gpu_memory_utilization=%.2f",
            path,
            device,
            dtype,
            config.s3gen_dtype,
            config.vocoder,
            config.cfm_steps,
            config.max_num_seqs,
            config.model_len,
            "" if config.max_model_len else " (derived)",
            config.max_new_tokens,
            config.chunk_chars,
            "" if config.max_chunk_chars else " (derived)",
            config.gpu_memory_utilization,
        )
        watermarker = resolve_watermarker(watermark)
        loop = EventLoopThread()
        try:
            s3gen = S3Gen.from_checkpoint(
                path,
                device=device,
                dtype=getattr(torch, config.s3gen_dtype),
                vocoder=config.vocoder,
            )
            engine_kwargs = dict(
                dtype=dtype,
                max_num_seqs=config.max_num_seqs,
                max_model_len=config.model_len,
                gpu_memory_utilization=config.gpu_memory_utilization,
                enforce_eager=config.enforce_eager,
                num_gpu_blocks_override=config.num_gpu_blocks_override,
                conditioning_device=device,
                **config.engine_kwargs,
            )

            async def start_engine() -> AsyncT3Engine:
                # Built on the loop that will drive it: vLLM binds its output handler there.
                return AsyncT3Engine.from_checkpoint(path, **engine_kwargs)

            # vLLM falls back to its V0 engine when an engine is built outside the main thread
            # unless V1 is requested explicitly; T3 needs V1 (and our loop thread is not main).
            if "VLLM_USE_V1" not in os.environ:
                logger.info("setting VLLM_USE_V1=1 (the engine is built on a background thread)")
                os.environ["VLLM_USE_V1"] = "1"

            t3 = loop.run(start_engine())
        except BaseException:
            loop.stop()
            raise
        default_voice = None
        if (path / "conds.pt").is_file():
            default_voice = Voice.from_conditionals(VoiceConditionals.load(path / "conds.pt"))
        else:
            logger.info("%s has no conds.pt: every request must name a voice", path)
        return cls(
            t3=t3,
            s3gen=s3gen,
            voice_encoder=t3.voice_encoder,
            config=config,
            default_voice=default_voice,
            watermarker=watermarker,
            loop=loop,
        )

    def close(self) -> None:
        """Stops the vLLM engine and the event loop thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        shutdown = getattr(self._t3, "shutdown", None)
        try:
            if callable(shutdown):
                shutdown()
        finally:
            self._loop.stop()
            # Drop the engine now: vLLM's finaliser would otherwise run again at interpreter
            # exit, when the modules it needs are already torn down.
            self._t3 = None  # type: ignore[assignment]

    def __enter__(self) -> ChatterboxTTS:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ voices

    def prepare_voice(self, audio: AudioInput) -> Voice:
        """Prepares (or fetches from the cache) a voice from reference audio: a file path or
        ``(waveform, sample_rate)``. Any sample rate and channel count is accepted (averaged to
        mono, resampled); at least 1 s is needed and 5-10 s of clean speech works best.
        Raises a specific :class:`~chatterbox_vllm.errors.AudioError` for unusable audio."""
        return self._voices.get_or_prepare(audio, self._voice_encoder, self._s3gen)

    @property
    def voice_cache(self) -> VoiceCache:
        return self._voices

    def _resolve_voice(self, voice: VoiceLike) -> Voice:
        if voice is None:
            if self.default_voice is None:
                raise ChatterboxError(
                    "no voice given and the checkpoint has no conds.pt default voice; "
                    "pass voice=<audio path | (waveform, sample_rate) | Voice>"
                )
            return self.default_voice
        if isinstance(voice, Voice):
            return voice
        return self.prepare_voice(voice)

    # ------------------------------------------------------------------ generation

    def generate_requests(
        self, requests: Sequence[TTSRequest], *, progress: bool = True
    ) -> list[GenerationResult]:
        """Speaks several requests, each with its own text, voice and controls, as one batch."""
        if self._closed:
            raise ChatterboxError("this ChatterboxTTS has been closed; load a new one")
        if not requests:
            raise InvalidParameterError("requests is empty")
        with self._call_lock:
            return self._generate(list(requests), progress)

    def _generate(self, requests: list[TTSRequest], progress: bool) -> list[GenerationResult]:
        from chatterbox_t3 import T3Request, T3SamplingParams

        self._validate_requests(requests)
        voice_start = time.perf_counter()
        voices = [self._resolve_voice(request.voice) for request in requests]
        voice_seconds = time.perf_counter() - voice_start

        jobs: list[ChunkJob] = []
        chunk_texts: list[list[str]] = []
        for request_index, (request, voice) in enumerate(zip(requests, voices)):
            params = request.params
            # A smaller token budget than the engine's also means smaller chunks.
            chunk_chars = min(
                self.config.chunk_chars, chunk_chars_for_token_budget(params.max_new_tokens)
            )
            chunks = split_text(request.text, chunk_chars)
            chunk_texts.append(chunks)
            for chunk_index, chunk in enumerate(chunks):
                max_tokens = params.max_new_tokens
                if params.max_tokens_per_expected_second is not None:
                    expected_seconds = len(chunk) / SPEECH_CHARS_PER_SECOND
                    cap = max(1, round(expected_seconds * params.max_tokens_per_expected_second))
                    max_tokens = min(max_tokens, cap)
                seed = params.chunk_seed(chunk_index)
                sampling = T3SamplingParams(
                    temperature=params.temperature,
                    top_p=params.top_p,
                    min_p=params.min_p,
                    repetition_penalty=params.repetition_penalty,
                    cfg_weight=params.cfg_weight,
                    exaggeration=params.exaggeration,
                    max_new_tokens=max_tokens,
                    seed=seed,
                )
                jobs.append(
                    ChunkJob(
                        request_index=request_index,
                        chunk_index=chunk_index,
                        text=chunk,
                        t3_request=T3Request(text=chunk, voice=voice.t3, params=sampling),
                        reference=voice.s3gen,
                        seed=seed,
                    )
                )
        self._check_chunk_texts(jobs, len(requests))
        logger.info("generating %d text(s) as %d chunk(s)", len(requests), len(jobs))

        timings = run_pipeline(
            jobs,
            stream_tokens=self._t3.stream_speech_tokens,
            loop=self._loop,
            synthesize=self._synthesize,
            s3gen_batch_size=self.config.s3gen_batch_size,
            progress=progress,
        )

        results = []
        audio_seconds = 0.0
        for request_index, request in enumerate(requests):
            request_jobs = [job for job in jobs if job.request_index == request_index]
            waveforms = [job.waveform for job in request_jobs if job.waveform is not None]
            joined = self._join_chunks(waveforms)
            audio_seconds += joined.numel() / self.sample_rate
            results.append(
                GenerationResult(
                    waveform=joined,
                    sample_rate=self.sample_rate,
                    text=request.text,
                    chunks=tuple(chunk_texts[request_index]),
                    speech_tokens=tuple(len(job.token_ids) for job in request_jobs),
                    finish_reasons=tuple(job.finish_reason for job in request_jobs),
                    chunk_samples=tuple(w.numel() for w in waveforms),
                    watermarked=self._watermarker is not None,
                )
            )
        self.last_stats = GenerationStats(
            chunks=len(jobs),
            timings=timings,
            audio_seconds=audio_seconds,
            voice_seconds=voice_seconds,
        )
        return results

    def _check_chunk_texts(self, jobs: list[ChunkJob], num_requests: int) -> None:
        """Runs T3's text front end on every chunk before anything is queued, so a chunk it
        rejects (e.g. characters without a token) fails the call before any decoding starts."""
        frontend = getattr(self._t3, "frontend", None)
        check = getattr(frontend, "text_token_ids", None)
        if check is None:
            return
        for job in jobs:
            try:
                check(job.text)
            except ValueError as error:
                where = f"text {job.request_index}: " if num_requests > 1 else ""
                raise InvalidTextError(f"{where}{error}") from error

    def _synthesize(
        self, token_lists: list[list[int]], references: list[Any], seeds: list[int | None]
    ) -> list[torch.Tensor]:
        # Unseeded requests draw their vocoder noise seed from torch's global RNG, as S3Gen does.
        filled = [
            int(torch.randint(0, 2**62, ()).item()) if seed is None else seed for seed in seeds
        ]
        return self._s3gen.synthesize(
            token_lists, references, n_timesteps=self.config.cfm_steps, seeds=filled
        )
