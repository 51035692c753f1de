"""Engine configuration: every engine knob with its one default, and how derived values resolve.

:class:`EngineConfig` is what ``ChatterboxTTS.from_local(dir, **knobs)``,
``ReplicatedChatterboxTTS`` and the CLI's engine flags (generated from the fields' metadata by
:func:`add_engine_arguments`) configure. ``None`` means "derive it"; :meth:`EngineConfig.resolve`
is the one place that derives device, dtypes and sizes (logged at load time).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from chatterbox_vllm.audio import DEFAULT_CROSSFADE_SECONDS
from chatterbox_vllm.errors import InvalidParameterError, SettingTypes, check_setting_types
from chatterbox_vllm.text import chunk_chars_for_token_budget

CONDITIONING_POSITIONS = 34
"""T3's prefill starts with 34 conditioning positions (speaker, 32 perceiver outputs, emotion)."""
TURBO_CONDITIONING_POSITIONS = 1 + 375
"""Turbo's conditioning: the speaker projection and up to 375 voice-prompt tokens (no perceiver,
no emotion input)."""
SPECIAL_POSITIONS = 4
"""Start/stop of text and start/stop of speech around a chunk's text and speech tokens."""
DTYPES = ("auto", "float32", "float16", "bfloat16")
S3GEN_DTYPES = ("auto", "float32", "float16", "bfloat16")
KV_BYTES_PER_TOKEN_BF16 = 245_760
"""T3's KV cache per position with both CFG branches in bfloat16 (30 layers x 2 x 2 x 16 heads x 64 x 2 B)."""
T3_FIXED_GPU_BYTES = 6 * 2**30
"""T3 weights (1 GB in bf16), CUDA graphs, activations and vLLM's sampler buffers, with room."""
LARGE_GPU_BYTES = 40 * 2**30
HUGE_GPU_BYTES = 100 * 2**30
CUDA_GRAPH_MODES = ("auto", "full", "piecewise", "off")
GENERATE_SCHEDULES = ("after-t3", "overlap")
T3_PROCESSES = ("separate", "in-process")
KV_BLOCK_SIZE = 16
"""Positions per KV-cache block: vLLM 0.9.2's default for T3 (CUDA and CPU)."""
S3GEN_MIN_SHARE_TO_START_CONCURRENTLY = 0.25
"""S3Gen's graphs (a few GB with 32 rows) are captured during T3's start only if S3Gen's share
of the card's memory is at least this."""


def _knob(default: Any, help: str, **cli: Any) -> Any:
    """A field whose metadata carries its CLI help (and argparse extras such as ``choices``)."""
    return field(default=default, metadata={"help": help, **cli})


_KNOB_TYPES: SettingTypes = {
    "gpu_memory_utilization": ("a number", (int, float), True),
    "crossfade_seconds": ("a number", (int, float), False),
    "max_model_len": ("an int", (int,), True),
    "max_chunk_chars": ("an int", (int,), True),
    "device": ("a str (cuda, cuda:N or cpu)", (str,), True),
    "stream_graphs": ("a bool", (bool,), False),
}
"""The knobs whose range checks compare values (or split a string): their types are checked
first. The positive ints and the named choices are checked with their ranges."""


@dataclass(frozen=True)
class EngineConfig:
    """Engine knobs (one default each). ``None`` means "derive it" (see :meth:`resolve`)."""

    device: str | None = _knob(
        None, "cuda or cpu for S3Gen and the voice encoder (default: cuda when available)"
    )
    dtype: str = _knob(
        "auto", "T3 dtype in vLLM (auto: bfloat16 on CUDA, float32 on CPU)", choices=DTYPES
    )
    s3gen_dtype: str = _knob(
        "auto",
        "S3Gen dtype (auto: float16 on CUDA, 4x float32's speed at 1.5e-3 mel / 2.6e-3 wav "
        "error; float32 on CPU, the reference's numerics)",
        choices=S3GEN_DTYPES,
    )
    gpu_memory_utilization: float | None = _knob(
        None,
        "share of GPU memory vLLM may take for T3 weights + KV cache, the rest is S3Gen's "
        "(default: what max_num_seqs full-length chunks need, from the card's memory)",
    )
    max_num_seqs: int | None = _knob(
        None,
        "most chunks T3 decodes at once (default: 128 on >= 100 GiB GPUs, 64 on >= 40 GiB, 32 below, 8 on CPU)",
    )
    max_model_len: int | None = _knob(
        None,
        "T3 positions per chunk (default: 34 + chunk text + 4 + max_new_tokens, rounded up to 16)",
    )
    max_new_tokens: int = _knob(
        1000, "speech-token budget per chunk the engine is sized for (1000 = 40 s, the reference's)"
    )
    max_chunk_chars: int | None = _knob(
        None, "long-text chunk size in characters (default: derived from max_new_tokens)"
    )
    vocoder: str = _knob(
        "hift-torch", "S3Gen vocoder backend (chatterbox_s3gen.available_vocoders())"
    )
    cfm_steps: int | None = _knob(
        None,
        "S3Gen flow-matching Euler steps (default: the model's, as the reference: 10, or 2 for "
        "Turbo's meanflow decoder)",
    )
    s3gen_batch_size: int | None = _knob(
        None,
        "most finished chunks (or stream windows) S3Gen synthesises in one batch "
        "(default: 32 on >= 40 GiB GPUs, 8 below, 4 on CPU)",
    )
    generate_schedule: str = _knob(
        "after-t3",
        "when generate's chunks reach S3Gen: after-t3 (once T3 has decoded every chunk of the "
        "call: T3 runs in vLLM's engine process and S3Gen in this one, and two processes "
        "time-slice one GPU instead of overlapping) or overlap (each chunk as it finishes)",
        choices=GENERATE_SCHEDULES,
    )
    t3_process: str = _knob(
        "separate",
        "where vLLM's engine core runs T3: separate (vLLM's engine process; T3 and S3Gen "
        "time-slice the GPU unless CUDA MPS runs) or in-process (a thread of this process: one "
        "CUDA context, S3Gen on a CUDA stream of its own beside T3's)",
        choices=T3_PROCESSES,
    )
    stream_graphs: bool = _knob(
        True,
        "capture S3Gen's CUDA graphs for streamed windows at start-up (CUDA only; a few "
        "seconds): streams then never capture while serving. speak and bench, which only "
        "generate, load without them",
    )
    crossfade_seconds: float = _knob(
        DEFAULT_CROSSFADE_SECONDS, "equal-power crossfade between chunks"
    )
    voice_cache_size: int = _knob(32, "prepared voices kept in memory")
    cuda_graphs: str = _knob(
        "auto",
        "CUDA graphs in vLLM: auto (full where the attention backend supports them, else "
        "piecewise; off on CPU), full, piecewise, off",
        choices=CUDA_GRAPH_MODES,
    )
    num_gpu_blocks_override: int | None = _knob(
        None,
        "fixed KV-cache size in blocks (vLLM num_gpu_blocks_override)",
        flag="--num-gpu-blocks",
    )
    missing_language_dependency: str = _knob(
        "error",
        "multilingual model: a language whose optional package or data is unavailable (zh: "
        "spacy-pkuseg and its model, ja: pykakasi, ru: russian-text-stresser) is refused "
        "(error) or spoken without that step, as the reference does (skip)",
        choices=("error", "skip"),
    )
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for ``AsyncT3Engine.from_checkpoint`` (forwarded to vLLM)."""

    def __post_init__(self) -> None:
        # A string from a settings file (gpu_memory_utilization="0.5") was Python's TypeError
        # from '<', a number for device an AttributeError, stream_graphs="no" taken as true.
        check_setting_types(self, _KNOB_TYPES)
        if self.gpu_memory_utilization is not None and not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise InvalidParameterError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        for name in (
            "max_num_seqs",
            "max_new_tokens",
            "cfm_steps",
            "s3gen_batch_size",
            "voice_cache_size",
        ):
            value = getattr(self, name)
            if value is None and name in ("max_num_seqs", "s3gen_batch_size", "cfm_steps"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidParameterError(f"{name} must be a positive int, got {value!r}")
        if self.max_model_len is not None and self.max_model_len < 64:
            raise InvalidParameterError(f"max_model_len must be >= 64, got {self.max_model_len}")
        if self.max_chunk_chars is not None and self.max_chunk_chars < 1:
            raise InvalidParameterError(f"max_chunk_chars must be >= 1, got {self.max_chunk_chars}")
        if not 0.0 <= self.crossfade_seconds <= 1.0:
            raise InvalidParameterError(
                f"crossfade_seconds must be in [0, 1], got {self.crossfade_seconds}"
            )
        for name, accepted in (
            ("dtype", DTYPES),
            ("s3gen_dtype", S3GEN_DTYPES),
            ("cuda_graphs", CUDA_GRAPH_MODES),
            ("generate_schedule", GENERATE_SCHEDULES),
            ("t3_process", T3_PROCESSES),
        ):
            if getattr(self, name) not in accepted:
                raise InvalidParameterError(
                    f"{name} must be one of {', '.join(accepted)}, got {getattr(self, name)!r}"
                )
        self._check_kv_blocks()
        if self.device is not None and self.device.split(":")[0] not in ("cuda", "cpu"):
            raise InvalidParameterError(
                f"device must be cuda, cuda:N or cpu, got {self.device!r} (vLLM 0.9.2 runs T3 "
                "on NVIDIA GPUs; cpu is the slow path the tests use)"
            )

    def kv_blocks_for(self, sequences: int) -> int:
        """KV-cache blocks that hold ``sequences`` chunks at full length (``model_len``), plus
        the null block vLLM keeps aside."""
        return sequences * -(-self.model_len // KV_BLOCK_SIZE) + 1

    def _check_kv_blocks(self) -> None:
        """A fixed KV cache must hold one chunk at full length (vLLM fails 50 s into its start
        otherwise, or never schedules the chunk)."""
        blocks = self.num_gpu_blocks_override
        if blocks is None:
            return
        needed = self.kv_blocks_for(1)
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < needed:
            raise InvalidParameterError(
                f"num_gpu_blocks_override (--num-gpu-blocks) must be an int >= {needed}, got "
                f"{blocks!r}: one chunk takes up to max_model_len={self.model_len} positions, "
                f"{KV_BLOCK_SIZE} per block (omit it to size the KV cache from memory)"
            )

    def with_overrides(self, overrides: dict[str, Any]) -> EngineConfig:
        """This config with keyword overrides of its fields (an unknown name is an error listing
        the known ones)."""
        known = {f.name for f in fields(EngineConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InvalidParameterError(
                f"unknown engine option(s) {', '.join(unknown)}; EngineConfig accepts "
                f"{', '.join(sorted(known))}"
            )
        return replace(self, **overrides)

    @property
    def chunk_chars(self) -> int:
        return self.max_chunk_chars or chunk_chars_for_token_budget(self.max_new_tokens)

    @property
    def model_len(self) -> int:
        if self.max_model_len is not None:
            return self.max_model_len
        needed = CONDITIONING_POSITIONS + self.chunk_chars + SPECIAL_POSITIONS + self.max_new_tokens
        return -(-needed // 16) * 16

    def for_turbo(self) -> EngineConfig:
        """This config with room for Turbo's longer conditioning in each sequence (its voice
        prompt is up to 375 tokens instead of 32 perceiver outputs): a derived ``max_model_len``
        grows by the difference; one the caller set is kept."""
        if self.max_model_len is not None:
            return self
        extra = TURBO_CONDITIONING_POSITIONS - CONDITIONING_POSITIONS
        return replace(self, max_model_len=-(-(self.model_len + extra) // 16) * 16)

    @property
    def speech_positions(self) -> int:
        """Speech tokens a chunk of ``chunk_chars`` characters can have within ``model_len``."""
        return self.model_len - CONDITIONING_POSITIONS - SPECIAL_POSITIONS - self.chunk_chars

    def resolve(self, *, cuda_available: bool, gpu_memory_bytes: int | None = None) -> EngineConfig:
        """Every derived knob made explicit (the one place they are derived): device, dtypes,
        batch sizes from the card's memory, and the memory split between T3 and S3Gen."""
        device = self.device or ("cuda" if cuda_available else "cpu")
        on_gpu = device.startswith("cuda")
        dtype = self.dtype if self.dtype != "auto" else ("bfloat16" if on_gpu else "float32")
        s3gen_dtype = self.s3gen_dtype
        if s3gen_dtype == "auto":
            s3gen_dtype = "float16" if on_gpu else "float32"
        memory = gpu_memory_bytes or 0
        large = on_gpu and memory >= LARGE_GPU_BYTES
        # A long text has ~170 chunks (33 min of audio); H200-class cards hold 128 at full length.
        # Measured on an H200 (benchmark-text-1): 128 decoded its 172 chunks in 6.7 s of T3 and
        # loaded in 77 s; 192 (one wave) took 7.8 s and loaded in 126 s (more graph sizes).
        huge = on_gpu and memory >= HUGE_GPU_BYTES
        max_num_seqs = self.max_num_seqs or (128 if huge else 64 if large else 32 if on_gpu else 8)
        s3gen_batch_size = self.s3gen_batch_size or (32 if large else 8 if on_gpu else 4)
        utilization = self.gpu_memory_utilization
        blocks = self.num_gpu_blocks_override
        if utilization is None:
            utilization = 0.4
            if on_gpu and gpu_memory_bytes:
                # Enough KV cache for every sequence at full length; S3Gen keeps the rest.
                kv = max_num_seqs * self.model_len * KV_BYTES_PER_TOKEN_BF16
                if dtype == "float32":
                    kv *= 2
                needed = (T3_FIXED_GPU_BYTES + kv) / gpu_memory_bytes
                utilization = min(0.9, max(0.2, math.ceil(needed * 20) / 20))
                if blocks is None:
                    # The same KV cache as a block count: vLLM then does not size it from
                    # what its memory profile saw, so S3Gen may allocate meanwhile.
                    blocks = self.kv_blocks_for(max_num_seqs)
        return replace(
            self,
            device=device,
            dtype=dtype,
            s3gen_dtype=s3gen_dtype,
            max_num_seqs=max_num_seqs,
            s3gen_batch_size=s3gen_batch_size,
            gpu_memory_utilization=utilization,
            num_gpu_blocks_override=blocks,
        )

    @property
    def s3gen_graphs_during_t3_start(self) -> bool:
        """Whether S3Gen captures its CUDA graphs (``stream_graphs``, on CUDA) while T3's
        engine process starts (T3's compile and memory profile take most of a start-up) rather
        than after it: only with T3 in its own process (in one process, vLLM's capture forbids
        other CUDA work), a fixed KV cache (vLLM counts what other processes allocate during its
        profile as its own use, and sizes the cache from the rest) and S3Gen's share of the
        card at least :data:`S3GEN_MIN_SHARE_TO_START_CONCURRENTLY` (vLLM refuses to start if
        less than its share of memory is free by the time its worker starts)."""
        return (
            self.stream_graphs
            and str(self.device).startswith("cuda")
            and self.t3_process == "separate"
            and self.num_gpu_blocks_override is not None
            and self.gpu_memory_utilization is not None
            and 1.0 - self.gpu_memory_utilization >= S3GEN_MIN_SHARE_TO_START_CONCURRENTLY
        )

    def resolve_here(self) -> EngineConfig:
        """:meth:`resolve` for the machine this runs on (CUDA and the first card's memory)."""
        import torch

        cuda = torch.cuda.is_available()
        memory = torch.cuda.get_device_properties(0).total_memory if cuda else None
        return self.resolve(cuda_available=cuda, gpu_memory_bytes=memory)

    def describe(self) -> str:
        """The knobs as logged at load time (derived values marked)."""
        return (
            f"device={self.device} T3 dtype={self.dtype} S3Gen dtype={self.s3gen_dtype} "
            f"vocoder={self.vocoder} cfm_steps={self.cfm_steps} cuda_graphs={self.cuda_graphs} "
            f"max_num_seqs={self.max_num_seqs} max_model_len={self.model_len}"
            f"{'' if self.max_model_len else ' (derived)'} max_new_tokens={self.max_new_tokens} "
            f"chunk_chars={self.chunk_chars}{'' if self.max_chunk_chars else ' (derived)'} "
            f"s3gen_batch_size={self.s3gen_batch_size} generate_schedule={self.generate_schedule} "
            f"t3_process={self.t3_process} gpu_memory_utilization={self.gpu_memory_utilization}"
            f" num_gpu_blocks_override={self.num_gpu_blocks_override}"
        )


# Knobs that are not CLI flags: max_new_tokens is the per-request control's flag (which also sizes
# the engine the CLI loads), engine_kwargs is Python-only, stream_graphs follows the command
# (serve streams, speak and bench do not).
_NOT_FLAGS = ("max_new_tokens", "engine_kwargs", "stream_graphs")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """One CLI flag per engine knob, from the :class:`EngineConfig` field metadata (defaults
    ``None``: only the knobs a user sets override the config's defaults)."""
    group = parser.add_argument_group("engine")
    for knob in fields(EngineConfig):
        if knob.name in _NOT_FLAGS:
            continue
        flag = knob.metadata.get("flag", "--" + knob.name.replace("_", "-"))
        kind = {"float": float, "int": int}.get(
            str(knob.type).replace(" | None", "").replace("'", ""), str
        )
        default = knob.default
        help_text = knob.metadata["help"] + ("" if default is None else f" (default: {default})")
        extras = {"choices": knob.metadata["choices"]} if "choices" in knob.metadata else {}
        group.add_argument(flag, dest=knob.name, type=kind, default=None, help=help_text, **extras)
    group.add_argument(
        "--enforce-eager",
        dest="cuda_graphs",
        action="store_const",
        const="off",
        help="alias of --cuda-graphs off (eager mode in vLLM)",
    )


def engine_flags() -> dict[str, str]:
    """Each engine knob's command-line flag (``--enforce-eager`` is ``--cuda-graphs off``)."""
    return {
        knob.name: knob.metadata.get("flag", "--" + knob.name.replace("_", "-"))
        for knob in fields(EngineConfig)
        if knob.name not in _NOT_FLAGS
    }


def engine_overrides_from_namespace(args: argparse.Namespace) -> dict[str, Any]:
    """The engine knobs a user set on the command line."""
    return {
        knob.name: getattr(args, knob.name)
        for knob in fields(EngineConfig)
        if knob.name not in _NOT_FLAGS and getattr(args, knob.name, None) is not None
    }
