"""Engine API: text + voice -> S3 speech tokens on vLLM (sync :class:`T3Engine`, async
:class:`AsyncT3Engine`).

Both validate every request completely (text, voice, sampling settings, lengths) and compute its
conditioning *before* anything is submitted to vLLM, so a bad request raises a specific
:class:`~chatterbox_t3.errors.T3InputError` and leaves the engine serving.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM

from chatterbox_t3.alignment import NUM_PROMPT_BOS
from chatterbox_t3.conditioning import ConditioningCache, ConditioningEncoder, T3Voice
from chatterbox_t3.config import AnyT3Config, TurboT3Config, checkpoint_files, load_t3_config
from chatterbox_t3.cuda_graphs import CudaGraphMode, CudaGraphPlan, check_mode, plan_cuda_graphs
from chatterbox_t3.errors import (
    EmptyTextError,
    InvalidSamplingParameterError,
    InvalidVoiceError,
    MissingConditioningError,
    T3InputError,
    TextTooLongError,
)
from chatterbox_t3.model_dir import prepare_vllm_model_dir
from chatterbox_t3.multilingual_text import MissingDependencyPolicy, MultilingualTokenizer
from chatterbox_t3.sampling import T3SamplingParams, valid_speech_indices
from chatterbox_t3.startup import engine_start_timeline
from chatterbox_t3.text import EnglishTokenizer, TextEncoder
from chatterbox_t3.turbo_text import TurboTokenizer
from chatterbox_t3.vllm_model import CONDITIONING_MODALITY
from chatterbox_t3.voice_encoder import VoiceEncoder
from chatterbox_t3.word_alignment import TextWord, WordFrames, align_words, text_words

logger = logging.getLogger(__name__)

GPU_WORKER = "chatterbox_t3.worker.T3GPUWorker"
CPU_WORKER = "chatterbox_t3.worker.T3CPUWorker"
"""vLLM's ``worker_cls`` for T3, by name: vLLM imports the worker in its engine process, so the
caller never imports :mod:`chatterbox_t3.worker` (vLLM's model runners: seconds of start-up)."""


@dataclass(frozen=True)
class T3Request:
    """One utterance to generate: raw text (normalised here), a voice, sampling settings."""

    text: str
    voice: T3Voice | None
    params: T3SamplingParams = field(default_factory=T3SamplingParams)
    text_token_ids: tuple[int, ...] | None = None
    """``text``'s T3 text ids when already computed (:meth:`T3Frontend.text_token_ids`), so a
    caller that checked the text first does not normalise and tokenise it twice."""
    language: str | None = None
    """Language id (``"fr"``, ``"zh"``, ...; see ``multilingual_text.SUPPORTED_LANGUAGES``) for a
    multilingual checkpoint; None is English. An English checkpoint accepts only None / "en"."""
    word_timings: bool = False
    """Return the aligned text position of every speech token and the words' frames
    (:attr:`T3Output.text_positions`, :attr:`T3Output.words`). Multilingual checkpoints only:
    the English model has no alignment analyzer (see the package README)."""


@dataclass(frozen=True)
class T3Output:
    """Speech tokens of one request (satisfies ``chatterbox_vllm.interfaces.SpeechTokenSequence``).

    ``token_ids``: valid S3 codes (< 6561) after the reference's clean-up; ``raw_token_ids``: what
    the model sampled, including the stop token. ``finish_reason`` is ``"stop"`` (stop token) or
    ``"length"`` (``max_new_tokens`` or the model length ran out) once ``finished``; streamed
    intermediate items have ``finished=False`` and ``finish_reason=""``.
    """

    token_ids: tuple[int, ...]
    finish_reason: str
    raw_token_ids: tuple[int, ...] = ()
    num_prompt_tokens: int = 0
    finished: bool = True
    text_positions: tuple[int, ...] = ()
    """With ``word_timings``: the aligned text position (index into ``[start, text..., stop]``)
    of each of ``token_ids``."""
    words: tuple[WordFrames, ...] = ()
    """With ``word_timings``, on the final output: every word of the text and the frames of
    ``token_ids`` it was spoken in (:mod:`chatterbox_t3.word_alignment`)."""


@dataclass(frozen=True)
class _PreparedRequest:
    prompt: dict[str, Any]
    sampling_params: Any
    num_prompt_tokens: int
    words: tuple[TextWord, ...] | None = None
    """The text's words when the request asked for word timings."""


class T3Frontend:
    """Everything around vLLM shared by the sync and async engines: text front end, conditioning,
    validation, prompt layout and output conversion."""

    def __init__(
        self,
        checkpoint_dir: str | Path,
        config: AnyT3Config,
        *,
        max_model_len: int,
        conditioning_device: str | torch.device = "cpu",
        conditioning_cache_size: int = 256,
        missing_dependency: MissingDependencyPolicy = "error",
    ) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.config = config
        self.max_model_len = max_model_len
        files = checkpoint_files(self.checkpoint_dir)
        tokenizer_path = self.checkpoint_dir / files.tokenizer
        self.tokenizer: TextEncoder | TurboTokenizer
        encoder: torch.nn.Module
        if isinstance(config, TurboT3Config):
            from chatterbox_t3.turbo_model import TurboConditioningEncoder

            self.tokenizer = TurboTokenizer(
                self.checkpoint_dir, text_vocab_size=config.text_tokens_dict_size
            )
            encoder = TurboConditioningEncoder.from_checkpoint_dir(
                self.checkpoint_dir, config, device=conditioning_device
            )
        elif config.is_multilingual:
            assert files.cangjie is not None
            self.tokenizer = MultilingualTokenizer(
                tokenizer_path,
                self.checkpoint_dir / files.cangjie,
                text_vocab_size=config.text_tokens_dict_size,
                missing_dependency=missing_dependency,
            )
        else:
            self.tokenizer = EnglishTokenizer(
                tokenizer_path, text_vocab_size=config.text_tokens_dict_size
            )
        if not isinstance(config, TurboT3Config):
            encoder = ConditioningEncoder.from_checkpoint_dir(
                self.checkpoint_dir, config, device=conditioning_device
            )
        self.conditioning = ConditioningCache(encoder, max_entries=conditioning_cache_size)
        self._conditioning_device = conditioning_device
        self._voice_encoder: VoiceEncoder | None = None

    @property
    def voice_encoder(self) -> VoiceEncoder:
        """The checkpoint's voice encoder (loaded on first use)."""
        if self._voice_encoder is None:
            self._voice_encoder = VoiceEncoder.from_checkpoint_dir(
                self.checkpoint_dir, device=self._conditioning_device
            )
        return self._voice_encoder

    def voice_from_audio(
        self, wav_16k: np.ndarray | torch.Tensor, prompt_tokens: torch.Tensor
    ) -> T3Voice:
        """A voice from 16 kHz reference audio and its S3 prompt tokens (from S3Gen's tokenizer)."""
        return T3Voice(self.voice_encoder.embed(wav_16k), prompt_tokens)

    def limit_to_kv_cache(self, cache_config: Any) -> None:
        """Never admit a request longer than the whole KV cache.

        vLLM checks ``max_model_len`` against the KV cache it sizes itself, but not against
        ``num_gpu_blocks_override``; a request that cannot fit would be preempted forever.
        """
        blocks = cache_config.num_gpu_blocks_override
        if blocks is not None and cache_config.block_size:
            # vLLM V1 keeps one block aside as its null block.
            capacity = (blocks - 1) * cache_config.block_size
            if capacity < self.max_model_len:
                logger.info(
                    "limiting T3 requests to %d positions (num_gpu_blocks_override=%d)",
                    capacity,
                    blocks,
                )
                self.max_model_len = capacity

    def text_token_ids(self, text: str, language: str | None = None) -> list[int]:
        """Normalised, tokenised text framed by the start/stop text tokens (T3 text ids; Turbo
        has no start/stop text tokens)."""
        if not isinstance(text, str):
            raise T3InputError(f"text must be a str, got {type(text).__name__}")
        if not text.strip():
            raise EmptyTextError("text is empty; give T3 something to say")
        ids = self.tokenizer.encode_text(text, language)
        if isinstance(self.config, TurboT3Config):
            # No start/stop text tokens; the prompt's whole length is checked with its voice
            # (whose prompt length varies) in prepare().
            self.config.check_text_fits(len(ids))
            return ids
        framed = [self.config.start_text_token, *ids, self.config.stop_text_token]
        self.check_text_fits(len(framed))
        return framed

    @property
    def text_capacity(self) -> int:
        """Text ids (framed) a prompt of this engine holds (:meth:`T3Config.text_capacity` of the
        engine's real ``max_model_len``, after :meth:`limit_to_kv_cache`; Turbo: its text
        positions, the rest depending on the voice's prompt length)."""
        if isinstance(self.config, TurboT3Config):
            return self.config.max_text_tokens
        return self.config.text_capacity(self.max_model_len)

    def check_text_fits(self, num_text_ids: int) -> None:
        """:meth:`T3Config.check_text_fits` for this engine's real ``max_model_len`` (Turbo's
        prompts are checked whole in prepare(), with their voice)."""
        if not isinstance(self.config, TurboT3Config):
            self.config.check_text_fits(num_text_ids, self.max_model_len)

    def prompt_room(self, num_text_ids: int, voice: T3Voice, num_bos: int) -> int:
        """Positions left to generate after the prompt of ``num_text_ids`` text ids with
        ``voice``'s conditioning and ``num_bos`` start-of-speech tokens; raises
        :class:`~chatterbox_t3.errors.TextTooLongError` when not even one is left. Only Turbo's
        prompts can run out (its conditioning has a row per voice prompt token, so its length
        depends on the voice); the other models' :meth:`text_capacity` leaves room."""
        if isinstance(self.config, TurboT3Config):
            # Turbo's conditioning placeholder expands to 1 + P rows (P voice prompt tokens).
            prompt_tokens = voice.prompt_tokens.numel()
            self.config.check_text_fits(num_text_ids, self.max_model_len, prompt_tokens)
            conditioning_len = 1 + prompt_tokens
        else:
            conditioning_len = self.config.conditioning_len
        num_prompt_tokens = conditioning_len + num_text_ids + num_bos
        room = self.max_model_len - num_prompt_tokens
        if room < 1:
            raise TextTooLongError(
                f"the prompt needs {num_prompt_tokens} positions ({num_text_ids} text tokens "
                "after normalisation, conditioning and start-of-speech) plus one to generate, "
                f"but at most {self.max_model_len} fit (max_model_len, or the KV cache when "
                "num_gpu_blocks_override is set); split the text into shorter pieces (one word "
                "this long has nowhere to be split) or allow longer sequences"
            )
        return room

    def prepare(self, request: T3Request) -> _PreparedRequest:
        if not isinstance(request, T3Request):
            raise T3InputError(f"expected a T3Request, got {type(request).__name__}")
        params = request.params
        if not isinstance(params, T3SamplingParams):
            raise InvalidSamplingParameterError(
                f"params must be T3SamplingParams, got {type(params).__name__}"
            )
        params.check_against(self.config)
        if request.voice is None:
            raise MissingConditioningError(
                "request has no voice; build a T3Voice (speaker embedding + prompt tokens) first"
            )
        if not isinstance(request.voice, T3Voice):
            raise InvalidVoiceError(f"voice must be a T3Voice, got {type(request.voice).__name__}")
        request.voice.validate_for(self.config)
        config = self.config
        text_ids = (
            list(request.text_token_ids)
            if request.text_token_ids is not None
            else self.text_token_ids(request.text, request.language)
        )
        # English reference: a second BOS only with CFG; the multilingual one always runs both
        # rows, so its prompt always has two (also with cfg_weight=0, whose logits are the
        # conditional row's). Turbo: one row, one BOS.
        turbo = isinstance(config, TurboT3Config)
        num_bos = NUM_PROMPT_BOS if not turbo and (params.uses_cfg or config.is_multilingual) else 1
        prompt_ids = (
            [config.conditioning_placeholder_id]
            + [t + config.text_id_offset for t in text_ids]
            + [config.start_speech_token] * num_bos
        )
        self.check_text_fits(len(text_ids))
        room = self.prompt_room(len(text_ids), request.voice, num_bos)
        num_prompt_tokens = self.max_model_len - room
        words = self.text_words(request, text_ids) if request.word_timings else None
        # Turbo has no emotion input: one cache entry per voice whatever exaggeration says.
        conditioning = self.conditioning.get(request.voice, 0.0 if turbo else params.exaggeration)
        prompt = {
            "prompt_token_ids": prompt_ids,
            "multi_modal_data": {CONDITIONING_MODALITY: [conditioning]},
            # Requests with one and two BOS must never share cached blocks: a generated 6561
            # after one BOS looks like the second prompt BOS but sits at another speech position.
            "cache_salt": "t3-turbo" if turbo else f"t3-bos{num_bos}",
        }
        sampling_params = params.to_vllm(config, min(params.max_new_tokens, room))
        if words is not None:
            # The aligned positions ride in the sampled token's logprob record
            # (chatterbox_t3.worker.AlignedPositionSampler).
            sampling_params.logprobs = 0
        return _PreparedRequest(
            prompt=prompt,
            sampling_params=sampling_params,
            num_prompt_tokens=num_prompt_tokens,
            words=words,
        )

    def text_words(self, request: T3Request, text_ids: list[int]) -> tuple[TextWord, ...]:
        """The words of ``text_ids`` (framed) for word timings; raises for the English model."""
        tokenizer = self.tokenizer
        if not self.config.is_multilingual or isinstance(tokenizer, TurboTokenizer):
            raise T3InputError(
                "word_timings needs the multilingual model's alignment analyzer; this "
                "checkpoint's model has none (chatterbox-tts runs it for the multilingual model "
                "only), so it cannot give word timings"
            )
        return text_words(
            text_ids,
            space_id=tokenizer.space_id,
            decode=tokenizer.decode,
            leading_tags=1,  # the language token the multilingual front end puts first
            spellings=request.text.split(),
        )

    def to_output(
        self,
        request_output: Any,
        prepared: _PreparedRequest,
        raw: tuple[int, ...] | None = None,
        positions: tuple[int, ...] | None = None,
    ) -> T3Output:
        """``raw`` / ``positions``: every id sampled so far and its aligned text position when
        ``request_output`` carries only the newest (vLLM's DELTA output kind)."""
        completion = request_output.outputs[0]
        if raw is None:
            raw = tuple(int(t) for t in completion.token_ids)
        finished = bool(request_output.finished)
        reason = completion.finish_reason or ""
        if finished and reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM finished a T3 request with finish_reason={reason!r}")
        kept = valid_speech_indices(raw, self.config)
        text_positions: tuple[int, ...] = ()
        words: tuple[WordFrames, ...] = ()
        if prepared.words is not None:
            if positions is None:
                positions = sampled_positions(completion.logprobs)
            text_positions = tuple(positions[i] for i in kept)
            if finished:
                words = align_words(prepared.words, text_positions)
        return T3Output(
            token_ids=tuple(raw[i] for i in kept),
            finish_reason=reason if finished else "",
            raw_token_ids=raw,
            num_prompt_tokens=prepared.num_prompt_tokens,
            finished=finished,
            text_positions=text_positions,
            words=words,
        )


def sampled_positions(logprobs: Any) -> tuple[int, ...]:
    """The aligned text positions in a completion's logprob records (one dict per sampled token,
    holding the sampled token's record; its ``rank`` is the position, see
    :class:`chatterbox_t3.worker.AlignedPositionSampler`)."""
    return tuple(int(next(iter(record.values())).rank) for record in logprobs or ())


def _engine_arguments(
    model_dir: Path,
    config: AnyT3Config,
    *,
    dtype: str,
    max_num_seqs: int,
    max_model_len: int,
    gpu_memory_utilization: float,
    cuda_graphs: str,
    enforce_eager: bool | None,
    enable_prefix_caching: bool,
    max_num_batched_tokens: int | None,
    num_gpu_blocks_override: int | None,
    seed: int,
    extra: dict[str, Any],
) -> tuple[dict[str, Any], CudaGraphPlan]:
    from vllm.platforms import current_platform

    if dtype == "auto":
        dtype = "float32" if current_platform.is_cpu() else "bfloat16"
    if max_num_batched_tokens is not None and max_num_batched_tokens < config.conditioning_len:
        raise ValueError(
            f"max_num_batched_tokens must be >= {config.conditioning_len} (the conditioning rows "
            f"are one multimodal item and must fit one step), got {max_num_batched_tokens}"
        )
    if current_platform.is_cpu():
        max_num_batched_tokens = _cpu_step_budget(
            max_num_seqs, max_model_len, max_num_batched_tokens
        )
    arguments: dict[str, Any] = {
        "model": str(model_dir),
        "tokenizer": str(model_dir),
        "dtype": dtype,
        "max_num_seqs": max_num_seqs,
        "max_model_len": max_model_len,
        "gpu_memory_utilization": gpu_memory_utilization,
        "enable_prefix_caching": enable_prefix_caching,
        "num_gpu_blocks_override": num_gpu_blocks_override,
        "seed": seed,
        "worker_cls": CPU_WORKER if current_platform.is_cpu() else GPU_WORKER,
        "limit_mm_per_prompt": {CONDITIONING_MODALITY: 1},
    }
    if max_num_batched_tokens is not None:
        arguments["max_num_batched_tokens"] = max_num_batched_tokens
    fixed = sorted(extra.keys() & {"model", "tokenizer", "worker_cls", "limit_mm_per_prompt"})
    if fixed:
        raise ValueError(
            f"{fixed} are set by the T3 engine (its worker extension and model directory are "
            "required for correct speech positions and CFG) and cannot be overridden"
        )
    extra = dict(extra)
    plan = plan_cuda_graphs(
        cuda_graphs,
        dtype=dtype,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        enforce_eager=enforce_eager,
        alignment_stop=config.is_multilingual,
    )
    arguments.update(plan.vllm_arguments(extra.pop("compilation_config", None)))
    arguments.update(extra)
    return arguments, plan


def _cpu_step_budget(
    max_num_seqs: int, max_model_len: int, max_num_batched_tokens: int | None
) -> int | None:
    """The step token budget on CPU: by default one that holds ``max_num_seqs`` full-length
    prompts, so no prefill is ever split across steps.

    vLLM 0.9.2's model runner rewinds a seeded request's generator after each partial prefill
    step with ``Generator.set_offset``, which only CUDA generators have: on CPU, a seeded request
    whose prefill is split kills the engine (``CPU Generator does not use offset``). vLLM's own
    CPU default (4096 or 5120 tokens) splits as soon as the prompts scheduled together exceed it
    (e.g. 32 chunks of 300 characters). A budget the caller sets is kept (chunked prefill works
    for unseeded requests); a smaller one is logged."""
    whole_prompts = max_num_seqs * max_model_len
    if max_num_batched_tokens is None:
        return whole_prompts
    if max_num_batched_tokens < whole_prompts:
        logger.warning(
            "max_num_batched_tokens=%d < max_num_seqs x max_model_len = %d on CPU: a prefill "
            "split across steps fails for a seeded request (vLLM 0.9.2's CPU generators cannot "
            "rewind); leave max_num_batched_tokens unset to never split one",
            max_num_batched_tokens,
            whole_prompts,
        )
    return max_num_batched_tokens


def _resolve_max_model_len(config: AnyT3Config, max_model_len: int | None) -> int:
    if max_model_len is None:
        return config.max_model_len
    if not 0 < max_model_len <= config.max_model_len:
        raise ValueError(
            f"max_model_len must lie in [1, {config.max_model_len}] (the learned position tables), "
            f"got {max_model_len}"
        )
    return max_model_len


def _prepare_engine(
    checkpoint_dir: str | Path,
    *,
    max_model_len: int | None,
    conditioning_device: str | None,
    conditioning_cache_size: int,
    cache_dir: str | Path | None,
    missing_dependency: MissingDependencyPolicy = "error",
    **engine_options: Any,
) -> tuple[Path, T3Frontend, dict[str, Any], CudaGraphPlan]:
    """What both engines do before starting vLLM: validate the checkpoint, derive vLLM's model
    directory, build the front end and the engine arguments."""
    check_mode(engine_options["cuda_graphs"])  # before any loading work
    config = load_t3_config(checkpoint_dir)
    model_dir = prepare_vllm_model_dir(checkpoint_dir, config, cache_dir=cache_dir)
    length = _resolve_max_model_len(config, max_model_len)
    frontend = T3Frontend(
        checkpoint_dir,
        config,
        max_model_len=length,
        conditioning_device=conditioning_device or _default_device(),
        conditioning_cache_size=conditioning_cache_size,
        missing_dependency=missing_dependency,
    )
    arguments, plan = _engine_arguments(model_dir, config, max_model_len=length, **engine_options)
    return model_dir, frontend, arguments, plan


class T3Engine:
    """Synchronous T3 on ``vllm.LLM``; satisfies ``SpeechTokenGenerator[T3Request]``."""

    def __init__(
        self,
        llm: Any,
        frontend: T3Frontend,
        cuda_graph_plan: CudaGraphPlan | None = None,
        start_marks: dict[str, float] | None = None,
    ) -> None:
        self._llm = llm
        self.frontend = frontend
        self.cuda_graph_plan = cuda_graph_plan
        """How ``cuda_graphs`` was resolved (mode, reason, captured batch sizes)."""
        self._start_marks = start_marks or {}

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint_dir: str | Path,
        *,
        dtype: str = "auto",
        max_num_seqs: int = 64,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        cuda_graphs: CudaGraphMode = "auto",
        enforce_eager: bool | None = None,
        enable_prefix_caching: bool = True,
        max_num_batched_tokens: int | None = None,
        num_gpu_blocks_override: int | None = None,
        seed: int = 0,
        conditioning_device: str | None = None,
        conditioning_cache_size: int = 256,
        cache_dir: str | Path | None = None,
        missing_language_dependency: MissingDependencyPolicy = "error",
        **engine_kwargs: Any,
    ) -> T3Engine:
        """Validate the checkpoint, derive vLLM's model directory and start the engine.

        ``dtype="auto"``: bfloat16 on GPUs, float32 on CPU. ``max_model_len`` defaults to what the
        position tables allow (conditioning + 2050 text + 4100 speech positions).
        ``cuda_graphs`` (see :mod:`chatterbox_t3.cuda_graphs`): ``"auto"`` (full graphs where the
        attention backend supports them, piecewise otherwise, eager on CPU), ``"full"``,
        ``"piecewise"`` or ``"off"``; ``enforce_eager=True`` is the older spelling of ``"off"``.
        Batch sizes up to ``max_num_seqs`` are captured. A ``compilation_config`` (dict or
        ``vllm.config.CompilationConfig``) in the keyword arguments is merged with the mode.
        ``missing_language_dependency``: the multilingual front end's ``missing_dependency``
        (:class:`~chatterbox_t3.multilingual_text.MultilingualTokenizer`). Remaining keyword
        arguments go to ``vllm.LLM``.
        """
        from vllm import LLM

        marks = {"begin": time.time()}
        model_dir, frontend, arguments, plan = _prepare_engine(
            checkpoint_dir,
            max_model_len=max_model_len,
            conditioning_device=conditioning_device,
            conditioning_cache_size=conditioning_cache_size,
            cache_dir=cache_dir,
            missing_dependency=missing_language_dependency,
            dtype=dtype,
            max_num_seqs=max_num_seqs,
            gpu_memory_utilization=gpu_memory_utilization,
            cuda_graphs=cuda_graphs,
            enforce_eager=enforce_eager,
            enable_prefix_caching=enable_prefix_caching,
            max_num_batched_tokens=max_num_batched_tokens,
            num_gpu_blocks_override=num_gpu_blocks_override,
            seed=seed,
            extra=engine_kwargs,
        )
        marks["frontend"] = time.time()
        logger.info("starting vLLM for T3 (%s)", model_dir)
        llm = LLM(**arguments)
        frontend.limit_to_kv_cache(llm.llm_engine.vllm_config.cache_config)
        marks["ready"] = time.time()
        return cls(llm, frontend, plan, marks)

    @property
    def config(self) -> AnyT3Config:
        return self.frontend.config

    @property
    def vllm(self) -> Any:
        """The underlying ``vllm.LLM`` (metrics, advanced use)."""
        return self._llm

    @property
    def voice_encoder(self) -> VoiceEncoder:
        return self.frontend.voice_encoder

    def voice_from_audio(
        self, wav_16k: np.ndarray | torch.Tensor, prompt_tokens: torch.Tensor
    ) -> T3Voice:
        return self.frontend.voice_from_audio(wav_16k, prompt_tokens)

    def startup_timeline(self) -> dict[str, float]:
        """Seconds of each stage of the engine's start
        (:data:`~chatterbox_t3.startup.ENGINE_START_STAGES`), in the order they ran."""
        stages = self._llm.collective_rpc("t3_startup_timeline")[0]
        clock = self._llm.collective_rpc("t3_startup_clock")[0]
        return engine_start_timeline(self._start_marks, stages, clock)

    def generate_speech_tokens(
        self, requests: Sequence[T3Request], use_tqdm: bool = False
    ) -> list[T3Output]:
        """One :class:`T3Output` per request, in order. Raises before generating if any request
        is invalid."""
        prepared = [self.frontend.prepare(request) for request in requests]
        if not prepared:
            return []
        outputs = self._llm.generate(
            [p.prompt for p in prepared],
            [p.sampling_params for p in prepared],
            use_tqdm=use_tqdm,
        )
        return [
            self.frontend.to_output(output, p) for output, p in zip(outputs, prepared, strict=True)
        ]

    def shutdown(self) -> None:
        """Stop vLLM's engine core (the object is unusable afterwards)."""
        engine = getattr(self._llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None:
            core.shutdown()


class AsyncT3Engine:
    """Streaming T3 on vLLM V1's ``AsyncLLM``; satisfies ``StreamingSpeechTokenGenerator``."""

    def __init__(
        self,
        engine: Any,
        frontend: T3Frontend,
        cuda_graph_plan: CudaGraphPlan | None = None,
        start_marks: dict[str, float] | None = None,
    ) -> None:
        self._engine = engine
        self.frontend = frontend
        self.cuda_graph_plan = cuda_graph_plan
        self._start_marks = start_marks or {}

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint_dir: str | Path,
        *,
        dtype: str = "auto",
        max_num_seqs: int = 64,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        cuda_graphs: CudaGraphMode = "auto",
        enforce_eager: bool | None = None,
        enable_prefix_caching: bool = True,
        max_num_batched_tokens: int | None = None,
        num_gpu_blocks_override: int | None = None,
        seed: int = 0,
        conditioning_device: str | None = None,
        conditioning_cache_size: int = 256,
        cache_dir: str | Path | None = None,
        missing_language_dependency: MissingDependencyPolicy = "error",
        in_process: bool = False,
        **engine_kwargs: Any,
    ) -> AsyncT3Engine:
        """Same arguments as :meth:`T3Engine.from_checkpoint`, plus ``in_process``: run vLLM's
        engine core in this process on a thread of its own
        (:class:`~chatterbox_t3.inprocess.InProcessEngine`) instead of ``AsyncLLM``'s engine
        process, so that T3 and the caller's GPU work share one CUDA context."""
        marks = {"begin": time.time()}
        model_dir, frontend, arguments, plan = _prepare_engine(
            checkpoint_dir,
            max_model_len=max_model_len,
            conditioning_device=conditioning_device,
            conditioning_cache_size=conditioning_cache_size,
            cache_dir=cache_dir,
            missing_dependency=missing_language_dependency,
            dtype=dtype,
            max_num_seqs=max_num_seqs,
            gpu_memory_utilization=gpu_memory_utilization,
            cuda_graphs=cuda_graphs,
            enforce_eager=enforce_eager,
            enable_prefix_caching=enable_prefix_caching,
            max_num_batched_tokens=max_num_batched_tokens,
            num_gpu_blocks_override=num_gpu_blocks_override,
            seed=seed,
            extra=engine_kwargs,
        )
        arguments.setdefault("disable_log_requests", True)
        marks["frontend"] = time.time()
        engine_args = AsyncEngineArgs(**arguments)
        if in_process:
            from chatterbox_t3.inprocess import InProcessEngine

            logger.info("starting vLLM for T3 in this process (%s)", model_dir)
            engine: Any = InProcessEngine(engine_args)
        else:
            logger.info("starting vLLM (async) for T3 (%s)", model_dir)
            # AsyncLLM.from_engine_args in two steps, so that the configuration is timed alone.
            vllm_config = engine_args.create_engine_config(UsageContext.ENGINE_CONTEXT)
            marks["vllm_config"] = time.time()
            engine = AsyncLLM.from_vllm_config(
                vllm_config,
                disable_log_requests=engine_args.disable_log_requests,
                disable_log_stats=engine_args.disable_log_stats,
            )
        frontend.limit_to_kv_cache(engine.vllm_config.cache_config)
        marks["ready"] = time.time()
        return cls(engine, frontend, plan, marks)

    @property
    def config(self) -> AnyT3Config:
        return self.frontend.config

    @property
    def voice_encoder(self) -> VoiceEncoder:
        return self.frontend.voice_encoder

    def voice_from_audio(
        self, wav_16k: np.ndarray | torch.Tensor, prompt_tokens: torch.Tensor
    ) -> T3Voice:
        return self.frontend.voice_from_audio(wav_16k, prompt_tokens)

    def check_text(
        self, text: str, language: str | None = None, voice: T3Voice | None = None
    ) -> list[int]:
        """``text``'s T3 text ids (normalised, tokenised, framed); raises a
        :class:`~chatterbox_t3.errors.T3InputError` for text T3 cannot speak. With ``voice``,
        the whole prompt is checked too (Turbo's length depends on the voice), so a request
        :meth:`stream_speech_tokens` would refuse is refused here, before anything is queued.
        Pass the ids as ``T3Request.text_token_ids`` to skip tokenising again."""
        ids = self.frontend.text_token_ids(text, language)
        if voice is not None:
            # The most start-of-speech tokens any request of this model has (CFG: two).
            num_bos = 1 if isinstance(self.config, TurboT3Config) else NUM_PROMPT_BOS
            self.frontend.prompt_room(len(ids), voice, num_bos)
        return ids

    async def stream_speech_tokens(
        self,
        request: T3Request,
        *,
        final_only: bool = False,
        on_tokens: Callable[[int], None] | None = None,
    ) -> AsyncIterator[T3Output]:
        """Cumulative outputs as tokens arrive; the last item has ``finished=True``.

        Each item is the clean-up of everything sampled so far, so treat it as replacing the
        previous one (a mid-utterance start-of-speech id discards earlier tokens, as in the
        reference). vLLM is asked for deltas and they are accumulated here: its CUMULATIVE mode
        would copy the whole id list on every step. ``final_only=True`` yields just the final
        item (vLLM's FINAL_ONLY: no intermediate outputs are built at all). ``on_tokens(n)`` is
        called with the number of new ids at every step (progress); with ``final_only`` vLLM
        still sends deltas then, but no intermediate item is built or yielded.
        """
        from vllm.sampling_params import RequestOutputKind

        prepared = self.frontend.prepare(request)
        sampling_params = prepared.sampling_params
        sampling_params.output_kind = (
            RequestOutputKind.FINAL_ONLY
            if final_only and on_tokens is None
            else RequestOutputKind.DELTA
        )
        request_id = f"t3-{uuid.uuid4().hex}"
        raw: list[int] = []
        positions: list[int] = []
        async for output in self._engine.generate(prepared.prompt, sampling_params, request_id):
            completion = output.outputs[0]
            new = completion.token_ids
            raw.extend(int(t) for t in new)
            if prepared.words is not None:
                positions.extend(sampled_positions(completion.logprobs))
            if on_tokens is not None:
                on_tokens(len(new))
            if output.finished or not final_only:
                yield self.frontend.to_output(
                    output,
                    prepared,
                    tuple(raw),
                    tuple(positions) if prepared.words is not None else None,
                )

    async def startup_timeline(self) -> dict[str, float]:
        """Seconds of each stage of the engine's start
        (:data:`~chatterbox_t3.startup.ENGINE_START_STAGES`), in the order they ran."""
        stages = (await self._engine.collective_rpc("t3_startup_timeline"))[0]
        clock = (await self._engine.collective_rpc("t3_startup_clock"))[0]
        return engine_start_timeline(self._start_marks, stages, clock)

    def num_unfinished_requests(self) -> int:
        """Requests vLLM is still serving (decoding or queued); aborted ones leave at once."""
        return int(self._engine.output_processor.get_num_unfinished_requests())

    def refresh_idle_stats(self) -> None:
        """Sets vLLM's scheduler gauges (``vllm:num_requests_running`` / ``_waiting``) to 0 when
        no request is unfinished. vLLM V1 updates them only from a step's outputs, and the step
        that frees aborted requests outputs nothing: after the last request was aborted they
        kept its count until another request ran. Call it when the gauges are read."""
        if self.num_unfinished_requests():
            return
        for loggers in getattr(self._engine, "stat_loggers", None) or ():
            for stat_logger in loggers:
                for name in ("gauge_scheduler_running", "gauge_scheduler_waiting"):
                    gauge = getattr(stat_logger, name, None)
                    if gauge is not None:
                        gauge.set(0)

    def engine_failure(self) -> str | None:
        """Why vLLM's engine core can no longer serve (``None`` while it can): its process
        exited (killed by a signal, out of memory, crashed) or vLLM marked it dead. vLLM 0.9.2
        itself does not notice a vanished engine-core process and would wait for its outputs
        forever, so callers poll this while they wait."""
        resources = getattr(getattr(self._engine, "engine_core", None), "resources", None)
        manager = getattr(resources, "engine_manager", None)
        finished = manager.finished_procs() if manager is not None else {}
        if finished:
            return "; ".join(
                f"{name} "
                + (f"was killed by signal {-code}" if code < 0 else f"exited with code {code}")
                for name, code in finished.items()
            )
        if getattr(self._engine, "errored", False):
            return getattr(self._engine, "failure_reason", None) or (
                "vLLM reported its engine core dead"
            )
        return None

    def shutdown(self) -> None:
        self._engine.shutdown()


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
