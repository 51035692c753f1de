"""Where the T3 engine's start-up time goes, measured inside vLLM's engine-core worker.

vLLM starts T3 in its own process: device and distributed set-up, weights, a profiling forward
that also triggers ``torch.compile`` (or reads vLLM's compile cache on a warm start), the KV-cache
allocation, then CUDA-graph capture and a sampler warm-up. Only the worker sees these stages, so
:class:`StartupTimelineMixin` times them there and answers :meth:`~StartupTimelineMixin.
t3_startup_timeline` through vLLM's ``collective_rpc``; what the caller measured around the whole
engine start minus their sum is process start, imports and the scheduler's set-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["STARTUP_STAGES", "StartupTimelineMixin"]

STARTUP_STAGES: dict[str, str] = {
    "device": "device and distributed set-up",
    "weights": "weights loaded",
    "compile": "torch.compile (or its cache) during the profiling run",
    "kv_profile": "memory-profiling forward (without its compile time)",
    "kv_cache": "KV cache allocated",
    "graph_capture": "CUDA-graph capture and warm-up",
}
"""The worker's stages in the order they run, with what each covers."""

_Result = TypeVar("_Result")


class StartupTimelineMixin:
    """Times a vLLM V1 worker's start-up stages (put it before the worker class in the bases)."""

    vllm_config: Any

    def _timed(self, stage: str, call: Callable[[], _Result]) -> _Result:
        begin = time.perf_counter()
        try:
            return call()
        finally:
            timeline: dict[str, float] = self.__dict__.setdefault("_t3_startup_timeline", {})
            timeline[stage] = timeline.get(stage, 0.0) + time.perf_counter() - begin

    def init_device(self) -> None:
        self._timed("device", super().init_device)  # type: ignore[misc]

    def load_model(self) -> None:
        self._timed("weights", super().load_model)  # type: ignore[misc]

    def determine_available_memory(self) -> int:
        compilation = self.vllm_config.compilation_config
        compiled_before = float(compilation.compilation_time)
        available: int = self._timed(
            "kv_profile",
            super().determine_available_memory,  # type: ignore[misc]
        )
        # vLLM adds the seconds its compiler spends (Dynamo and Inductor, or loading their cache)
        # to compilation_time; that happens inside the profiling forward, so it is split out.
        compiled = float(compilation.compilation_time) - compiled_before
        timeline: dict[str, float] = self.__dict__["_t3_startup_timeline"]
        timeline["compile"] = timeline.get("compile", 0.0) + compiled
        timeline["kv_profile"] -= compiled
        return available

    def initialize_from_config(self, kv_cache_config: Any) -> None:
        self._timed(
            "kv_cache",
            lambda: super(StartupTimelineMixin, self).initialize_from_config(  # type: ignore[misc]
                kv_cache_config
            ),
        )

    def compile_or_warm_up_model(self) -> None:
        self._timed("graph_capture", super().compile_or_warm_up_model)  # type: ignore[misc]

    def t3_startup_timeline(self) -> dict[str, float]:
        """Seconds of each :data:`STARTUP_STAGES` stage this worker went through, in order."""
        timeline: dict[str, float] = self.__dict__.get("_t3_startup_timeline", {})
        return {stage: timeline[stage] for stage in STARTUP_STAGES if stage in timeline}
