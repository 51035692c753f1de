"""CUDA-graph mode of the T3 engine: ``"auto" | "full" | "piecewise" | "off"`` -> vLLM 0.9.2 arguments.

vLLM 0.9.2 (V1) knows three ways to run a decode step on a GPU:

* ``off``: ``enforce_eager=True``: every kernel launched from Python, no torch.compile.
* ``piecewise``: torch.compile + CUDA graphs of the pieces *between* attention calls (attention
  runs eagerly between graph replays). vLLM's own default; works with every attention backend.
* ``full``: ``CompilationConfig(full_cuda_graph=True)``: the whole forward, attention included, is
  one graph. Only attention backends whose metadata builder sets ``full_cudagraph_supported``
  can do it: in vLLM 0.9.2 Triton attention (``TRITON_ATTN_VLLM_V1``) and FlashAttention when it
  runs FlashAttention 3 (Hopper, compute capability 9.x). FlashAttention 2 (Ampere, Ada),
  FlexAttention (vLLM's default for float32) and FlashInfer do not; vLLM raises at capture time.

T3 decode steps are tiny (0.5B parameters, a few hundred tokens per step), so with piecewise graphs
the 30 eager attention calls per step dominate; full graphs were measured ~3.7x faster at batch 1
on an H200 (bench/results). ``auto`` therefore picks ``full`` wherever the backend supports it,
except for the multilingual model unless :data:`MULTILINGUAL_FULL_GRAPHS_ENV` is set. That model's
full graphs of Triton attention are captured as decode steps
(:class:`chatterbox_t3.worker.DecodeShapedGraphBuilder`) so that they run the kernel eager runs.

:func:`resolve_cuda_graphs` is a pure function of the environment facts in :class:`GraphEnvironment`
(unit-tested on CPU); :func:`detect_environment` reads them without initialising CUDA in this
process (vLLM reads the device capability through NVML), so vLLM can still fork its engine core.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, Literal

logger = logging.getLogger(__name__)

CudaGraphMode = Literal["auto", "full", "piecewise", "off"]
CUDA_GRAPH_MODES: tuple[str, ...] = ("auto", "full", "piecewise", "off")

MULTILINGUAL_FULL_GRAPHS_ENV = "CHATTERBOX_T3_MULTILINGUAL_FULL_GRAPHS"
"""``1``: let the multilingual model (alignment-guided stop) run full CUDA graphs. Off by default
until the GPU test (tests/test_multilingual_gpu.py) has shown full graphs give the eager tokens
with the decode-shaped capture of :class:`chatterbox_t3.worker.DecodeShapedGraphBuilder`: on an
H200 (2026-12-02), before it, they did not."""

# vLLM 0.9.2 attention backends (``VLLM_ATTENTION_BACKEND`` values) that can be captured whole.
_TRITON = "TRITON_ATTN_VLLM_V1"
_FLASH = ("FLASH_ATTN", "FLASH_ATTN_VLLM_V1")


@dataclass(frozen=True)
class GraphEnvironment:
    """What decides the mode: the platform, the attention backend vLLM will pick, the dtype."""

    platform: str
    """``"cuda"``, ``"cpu"`` or another vLLM platform name."""
    attention_backend: str | None = None
    """``VLLM_ATTENTION_BACKEND`` if set (vLLM then uses exactly that backend), else None."""
    dtype: str = "bfloat16"
    """The engine's resolved dtype (``"float32"``, ``"bfloat16"``, ``"float16"``)."""
    device_capability: tuple[int, int] | None = None
    flash_attn_version: int | None = None
    """FlashAttention version vLLM would run (``get_flash_attn_version()``), None if unavailable."""
    alignment_stop: bool = False
    """The model is the multilingual one, whose forward records the alignment heads' rows."""
    multilingual_full_graphs: bool = False
    """:data:`MULTILINGUAL_FULL_GRAPHS_ENV` is ``1``: full graphs are allowed with the alignment
    stop (and ``auto`` picks them)."""


@dataclass(frozen=True)
class CudaGraphPlan:
    """A resolved mode and why; :meth:`vllm_arguments` turns it into ``vllm.LLM`` keywords."""

    requested: str
    mode: str
    """``"full"``, ``"piecewise"`` or ``"off"``."""
    reason: str
    capture_sizes: tuple[int, ...] = ()
    """Decode batch sizes captured (ascending); a batch between two sizes is padded up."""
    compile_only: bool = False
    """Non-CUDA platforms: torch.compile without graphs (vLLM's CPU path) instead of eager."""

    def vllm_arguments(self, user_compilation_config: Any = None) -> dict[str, Any]:
        """``enforce_eager`` and, for graph modes, a ``vllm.config.CompilationConfig`` *object*.

        An object, not a dict: ``EngineArgs.__post_init__`` (the async engine's path) turns a
        dict into ``CompilationConfig.from_cli(str(d))``, and ``str`` of a Python dict is not
        JSON, so pydantic rejects it (``vllm.LLM`` converts dicts itself; AsyncLLM does not).
        ``user_compilation_config`` (a dict or a ``CompilationConfig``) is kept: the plan only
        fills ``full_cuda_graph``/``cudagraph_capture_sizes`` where the user left them unset.
        """
        if self.mode == "off":
            arguments: dict[str, Any] = {"enforce_eager": True}
            if user_compilation_config is not None:
                arguments["compilation_config"] = _as_compilation_config(user_compilation_config)
            return arguments
        if self.compile_only:
            arguments = {"enforce_eager": False}
            if user_compilation_config is not None:
                arguments["compilation_config"] = _as_compilation_config(user_compilation_config)
            return arguments
        fields: dict[str, Any] = {
            "full_cuda_graph": self.mode == "full",
            "cudagraph_capture_sizes": list(self.capture_sizes),
        }
        if user_compilation_config is None:
            config = _as_compilation_config(fields)
        elif isinstance(user_compilation_config, dict):
            config = _as_compilation_config({**fields, **user_compilation_config})
        else:
            config = _as_compilation_config(user_compilation_config)
            if getattr(config, "cudagraph_capture_sizes", None) is None:
                config.cudagraph_capture_sizes = list(self.capture_sizes)
            if self.mode == "full" and not getattr(config, "full_cuda_graph", False):
                config.full_cuda_graph = True
        return {"enforce_eager": False, "compilation_config": config}


def _as_compilation_config(value: Any) -> Any:
    from vllm.config import CompilationConfig

    if isinstance(value, CompilationConfig):
        return value
    if isinstance(value, dict):
        return CompilationConfig(**value)
    raise TypeError(
        f"compilation_config must be a dict or vllm.config.CompilationConfig, got {type(value).__name__}"
    )


def check_mode(mode: object) -> str:
    """``mode`` if it is one of :data:`CUDA_GRAPH_MODES`, else a ``ValueError`` naming them."""
    if not isinstance(mode, str) or mode not in CUDA_GRAPH_MODES:
        raise ValueError(
            f"cuda_graphs must be one of {', '.join(repr(m) for m in CUDA_GRAPH_MODES)}, got {mode!r}"
        )
    return mode


def capture_sizes(max_num_seqs: int, max_num_batched_tokens: int | None = None) -> tuple[int, ...]:
    """vLLM's size ladder ``1, 2, 4, 8, 16, 24, ...`` up to the first size >= ``max_num_seqs``.

    vLLM 0.9.2's own default ladder runs to 512 whatever ``max_num_seqs`` is (every size is
    captured at start-up, one graph each); a decode step never has more tokens than running
    sequences, so sizes above ``max_num_seqs`` are wasted start-up time and graph memory.
    """
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
    sizes: list[int] = []
    for size in (1, 2, 4, *range(8, 8 * (max_num_seqs // 8 + 2), 8)):
        sizes.append(size)
        if size >= max_num_seqs:
            break
    if max_num_batched_tokens is not None:
        sizes = [s for s in sizes if s <= max_num_batched_tokens] or [1]
    return tuple(sorted(set(sizes)))


def full_graph_support(env: GraphEnvironment) -> tuple[bool, str]:
    """Whether vLLM 0.9.2's attention backend for ``env`` can be captured as one graph, and why.

    Mirrors ``CudaPlatform.get_attn_backend_cls`` (V1): an explicit ``VLLM_ATTENTION_BACKEND``
    wins; otherwise float32 gets FlexAttention, SM 8.0+ FlashAttention (version 3 on Hopper
    when its kernels are present), older GPUs FlexAttention.
    """
    backend = env.attention_backend
    if backend is not None:
        if backend == _TRITON:
            return True, "Triton attention (VLLM_ATTENTION_BACKEND) supports full graphs"
        if backend in _FLASH:
            return _flash_support(env)
        return False, f"attention backend {backend} has no full-graph support in vLLM 0.9.2"
    if env.dtype not in ("bfloat16", "float16"):
        return False, f"vLLM uses FlexAttention for {env.dtype}, which has no full-graph support"
    capability = env.device_capability
    if capability is None or capability[0] < 8:
        return False, f"compute capability {capability} gets FlexAttention (no full graphs)"
    if capability[0] == 10:
        # vLLM prefers FlashInfer on Blackwell when installed, and FA3 never runs there.
        return False, "Blackwell (SM 10.x): FlashInfer or FlashAttention 2, no full graphs"
    return _flash_support(env)


def _flash_support(env: GraphEnvironment) -> tuple[bool, str]:
    if env.flash_attn_version == 3:
        return True, "FlashAttention 3 supports full graphs"
    return False, (
        f"FlashAttention {env.flash_attn_version or '(unavailable)'} has no full-graph support "
        "(only FlashAttention 3, on Hopper, does)"
    )


def resolve_cuda_graphs(
    mode: str,
    env: GraphEnvironment,
    *,
    max_num_seqs: int,
    max_num_batched_tokens: int | None = None,
    enforce_eager: bool | None = None,
) -> CudaGraphPlan:
    """The single place where a requested mode becomes what vLLM runs.

    ``enforce_eager`` is the older spelling: ``True`` is ``mode="off"`` (conflicting with an
    explicit graph mode), ``False`` asks for compilation (on CPU: vLLM's torch.compile path,
    which ``"auto"`` alone would not take).
    """
    check_mode(mode)
    if enforce_eager is not None and not isinstance(enforce_eager, bool):
        raise ValueError(f"enforce_eager must be a bool or None, got {enforce_eager!r}")
    if enforce_eager:
        if mode not in ("auto", "off"):
            raise ValueError(
                f"enforce_eager=True means cuda_graphs='off' but cuda_graphs={mode!r} was given; "
                "pass only one of them"
            )
        return CudaGraphPlan(mode, "off", "enforce_eager=True")
    if mode == "off":
        return CudaGraphPlan(mode, "off", "cuda_graphs='off'")
    if env.platform != "cuda":
        if mode == "full":
            raise ValueError(
                f"cuda_graphs='full' needs a CUDA GPU (platform is {env.platform}); use 'auto'"
            )
        if mode == "piecewise" or enforce_eager is False:
            return CudaGraphPlan(
                mode,
                "piecewise",
                f"no CUDA graphs on {env.platform}: torch.compile only",
                compile_only=True,
            )
        return CudaGraphPlan(mode, "off", f"no CUDA graphs on {env.platform}: eager")
    sizes = capture_sizes(max_num_seqs, max_num_batched_tokens)
    supported, why = full_graph_support(env)
    if supported and env.alignment_stop and not env.multilingual_full_graphs:
        # Measured on an H200 (2026-12-02): with the multilingual alignment stop, piecewise graphs
        # gave the eager tokens and full graphs did not (tests/test_multilingual_gpu.py). The
        # switch lets them run (the GPU test sets it) until the decode-shaped capture is verified.
        supported, why = (
            False,
            (
                "the multilingual alignment stop is verified with piecewise graphs only (full graphs "
                f"changed its tokens on an H200; {MULTILINGUAL_FULL_GRAPHS_ENV}=1 allows them)"
            ),
        )
    if mode == "full":
        if not supported:
            raise ValueError(
                f"cuda_graphs='full' is not possible here: {why}; use 'auto' or 'piecewise' "
                "(or VLLM_ATTENTION_BACKEND=TRITON_ATTN_VLLM_V1)"
            )
        return CudaGraphPlan(mode, "full", why, sizes)
    if mode == "piecewise":
        return CudaGraphPlan(mode, "piecewise", "cuda_graphs='piecewise'", sizes)
    return CudaGraphPlan(mode, "full" if supported else "piecewise", why, sizes)


def detect_environment(dtype: str) -> GraphEnvironment:
    """The running machine's facts for :func:`resolve_cuda_graphs` (no CUDA context created)."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return GraphEnvironment("cpu", dtype=dtype)
    if not current_platform.is_cuda():
        return GraphEnvironment(str(getattr(current_platform, "device_name", "other")), dtype=dtype)
    capability = current_platform.get_device_capability()
    version: int | None = None
    try:
        from vllm.attention.utils.fa_utils import get_flash_attn_version

        version = get_flash_attn_version()
    except Exception:  # a vLLM build without its FlashAttention kernels
        version = None
    return GraphEnvironment(
        "cuda",
        attention_backend=os.environ.get("VLLM_ATTENTION_BACKEND") or None,
        dtype=dtype,
        device_capability=(capability.major, capability.minor) if capability else None,
        flash_attn_version=version,
        multilingual_full_graphs=os.environ.get(MULTILINGUAL_FULL_GRAPHS_ENV) == "1",
    )


def plan_cuda_graphs(
    mode: str,
    *,
    dtype: str,
    max_num_seqs: int,
    max_num_batched_tokens: int | None,
    enforce_eager: bool | None,
    alignment_stop: bool = False,
) -> CudaGraphPlan:
    """:func:`resolve_cuda_graphs` on this machine, with the choice logged."""
    check_mode(mode)  # a bad value fails before vLLM's platform is imported
    plan = resolve_cuda_graphs(
        mode,
        dataclasses.replace(detect_environment(dtype), alignment_stop=alignment_stop),
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        enforce_eager=enforce_eager,
    )
    logger.info(
        "T3 CUDA graphs: %s (requested %s: %s)%s",
        plan.mode,
        plan.requested,
        plan.reason,
        f"; capture sizes {list(plan.capture_sizes)}" if plan.capture_sizes else "",
    )
    return plan


__all__ = [
    "CUDA_GRAPH_MODES",
    "MULTILINGUAL_FULL_GRAPHS_ENV",
    "CudaGraphMode",
    "CudaGraphPlan",
    "GraphEnvironment",
    "capture_sizes",
    "check_mode",
    "detect_environment",
    "full_graph_support",
    "plan_cuda_graphs",
    "resolve_cuda_graphs",
]
