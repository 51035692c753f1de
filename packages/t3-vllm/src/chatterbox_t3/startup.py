"""Where the T3 engine's start-up time goes, from the caller's first step to a usable engine.

vLLM starts T3 in its own process: device and distributed set-up, weights, a profiling forward
that also triggers ``torch.compile`` (or reads vLLM's compile cache on a warm start), the KV-cache
allocation, then CUDA-graph capture and a sampler warm-up. Only the worker sees these stages, so
:class:`StartupTimelineMixin` times them there and answers :meth:`~StartupTimelineMixin.
t3_startup_timeline` through vLLM's ``collective_rpc``.

What comes before and after the worker's stages happens in two processes: the caller builds T3's
front end and vLLM's configuration and client, vLLM starts the engine process, which imports torch
and vLLM again, loads its plugins and builds its worker; after the worker's last stage the engine
core sets up its scheduler and tells the caller it is ready. The points between these stages are
wall-clock times (:func:`time.time`, comparable between the processes of one machine):
:meth:`StartupTimelineMixin.t3_startup_clock` gives the engine process's, the engine class the
caller's, and :func:`engine_start_timeline` turns both into :data:`ENGINE_START_STAGES`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

__all__ = [
    "ENGINE_START_STAGES",
    "STARTUP_STAGES",
    "StartupTimelineMixin",
    "engine_start_timeline",
    "process_started_at",
]

STARTUP_STAGES: dict[str, str] = {
    "device": "device and distributed set-up",
    "weights": "weights loaded",
    "compile": "torch.compile (or its cache) during the profiling run",
    "kv_profile": "memory-profiling forward (without its compile time)",
    "kv_cache": "KV cache allocated",
    "graph_capture": "CUDA-graph capture and warm-up",
}
"""The worker's stages in the order they run, with what each covers."""

ENGINE_START_STAGES: dict[str, str] = {
    "frontend": "caller: T3's config, vLLM's model directory, text tokenizer, conditioning encoder",
    "vllm_config": "caller: vLLM's engine configuration (model config and architecture checks)",
    "vllm_client": "caller: vLLM's tokenizer and input processor, until the engine process starts",
    "process_imports": "engine process: Python start, torch and vLLM imports, the first handshake",
    "executor": "engine process: vLLM's plugins (T3's model classes), its executor and worker",
    **STARTUP_STAGES,
    "ready": "engine process's scheduler set-up, ready handshake, until the caller has the engine",
}
"""The whole engine start, in order. A stage that a layout lacks is left out and its time is in
the next stage present: the engine core in the caller's process (``in_process``) has no process
stages and ``executor`` starts after ``frontend``; the synchronous engine (``vllm.LLM``) has no
``vllm_config`` (it is in ``vllm_client``); an engine process forked rather than spawned has no
``process_imports`` (it imports nothing), ``executor`` starts when it was forked. Gaps between
the worker's stages are in no stage."""

CALLER_MARKS = ("begin", "frontend", "vllm_config", "ready")
"""The caller's wall-clock marks, in order: its start, the end of the stage of that name, and
the moment it has the engine."""

_Result = TypeVar("_Result")


def process_started_at(pid: int | None = None) -> float | None:
    """When process ``pid`` (this one by default) started, as a :func:`time.time` value, or
    ``None`` where ``/proc`` does not say (not Linux). Linux counts a process's start in clock
    ticks since boot (10 ms), on the clock that :data:`time.CLOCK_BOOTTIME` reads."""
    try:
        with open(f"/proc/{pid or os.getpid()}/stat", encoding="ascii") as stat:
            # The command name (field 2) may hold spaces; fields after its ")" are plain.
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22: starttime
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return time.time() - age


class StartupTimelineMixin:
    """Times a vLLM V1 worker's start-up stages (put it before the worker class in the bases)."""

    vllm_config: Any

    def _timed(self, stage: str, call: Callable[[], _Result]) -> _Result:
        clock: dict[str, float] = self.__dict__.setdefault("_t3_startup_clock", {})
        clock.setdefault("first_stage", time.time())
        begin = time.perf_counter()
        try:
            return call()
        finally:
            timeline: dict[str, float] = self.__dict__.setdefault("_t3_startup_timeline", {})
            timeline[stage] = timeline.get(stage, 0.0) + time.perf_counter() - begin
            clock["last_stage_done"] = time.time()

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

    def t3_startup_clock(self) -> dict[str, float]:
        """Wall-clock points of this worker's process: ``pid``; ``process_started`` (where
        ``/proc`` tells); ``plugins_loaded``, when vLLM loaded its plugins in this process
        (:func:`chatterbox_t3.plugin.register`; absent if that happened in a parent it was
        forked from); ``first_stage`` and ``last_stage_done``, the worker's first stage's start
        and its last stage's end."""
        from chatterbox_t3.plugin import registered_at

        clock: dict[str, float] = {"pid": float(os.getpid())}
        started = process_started_at()
        if started is not None:
            clock["process_started"] = started
        registered = registered_at()
        if registered is not None:
            clock["plugins_loaded"] = registered
        clock.update(self.__dict__.get("_t3_startup_clock", {}))
        return clock


def engine_start_timeline(
    caller: Mapping[str, float],
    worker_stages: Mapping[str, float],
    worker_clock: Mapping[str, float],
    caller_pid: int | None = None,
) -> dict[str, float]:
    """Seconds of each :data:`ENGINE_START_STAGES` stage, in order.

    ``caller`` holds the caller's wall-clock marks (:data:`CALLER_MARKS`: ``begin`` and
    ``ready`` always, the others where the layout has them); ``worker_stages`` and
    ``worker_clock`` are the worker's :meth:`~StartupTimelineMixin.t3_startup_timeline` and
    :meth:`~StartupTimelineMixin.t3_startup_clock`. Every stage but the worker's own runs from
    the previous point present to its own, so they add up to ``ready - begin`` less the gaps
    between the worker's stages. Without the caller's marks (an engine object built around a
    vLLM engine by hand) only the worker's stages are known."""
    if "begin" not in caller or "ready" not in caller:
        return dict(worker_stages)
    own_process = int(worker_clock.get("pid", -1)) == (caller_pid or os.getpid())
    points: list[tuple[str, float | None]] = [
        ("frontend", caller.get("frontend")),
        ("vllm_config", caller.get("vllm_config")),
        ("vllm_client", None if own_process else worker_clock.get("process_started")),
        ("process_imports", None if own_process else worker_clock.get("plugins_loaded")),
        ("executor", worker_clock.get("first_stage")),
    ]
    timeline: dict[str, float] = {}
    previous = caller["begin"]
    for stage, point in points:
        if point is not None:
            # Clamped: a process's start is known to a clock tick (10 ms).
            timeline[stage] = max(0.0, point - previous)
            previous = max(previous, point)
    timeline.update(worker_stages)
    if "last_stage_done" in worker_clock:
        previous = max(previous, worker_clock["last_stage_done"])
    timeline["ready"] = max(0.0, caller["ready"] - previous)
    return timeline
