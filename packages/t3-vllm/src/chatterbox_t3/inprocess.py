"""vLLM's V1 engine core in the caller's process, driven by one thread, behind ``AsyncLLM``'s API.

vLLM 0.9.2's ``AsyncLLM`` always runs the engine core in a second process. S3Gen then runs in the
caller's process and the two time-slice the GPU (two CUDA contexts; CUDA MPS lets them share it).
With the engine core here instead, T3 and S3Gen are one CUDA context (chatterbox-vllm then runs
S3Gen on a CUDA stream of its own, beside T3's): which layout serves more is a measurement (the
serving issue),
so this is a choice (``AsyncT3Engine.from_checkpoint(in_process=True)``), not a replacement.

:class:`InProcessEngine` builds vLLM's synchronous V1 ``LLMEngine`` with ``multiprocess_mode=False``
on its own thread and steps it there: vLLM's engine is not thread-safe, so every call into it
(adding, aborting, ``collective_rpc``, stepping) happens on that thread, and callers talk to it
through a command queue. Each request's outputs go back to its asyncio queue on the caller's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["InProcessEngine"]


@dataclass
class _Request:
    request_id: str
    prompt: Any
    sampling_params: Any
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)


class InProcessEngine:
    """The part of vLLM's ``AsyncLLM`` that :class:`~chatterbox_t3.engine.AsyncT3Engine` uses
    (``generate``, ``collective_rpc``, ``output_processor``, ``stat_loggers``, ``errored``,
    ``vllm_config``, ``shutdown``), with the engine core in this process. Construction blocks until vLLM has
    loaded the model, profiled memory and captured its graphs (or failed: the error is raised)."""

    def __init__(self, engine_args: Any) -> None:
        self._commands: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._requests: dict[str, _Request] = {}
        self._engine: Any = None
        self.failure_reason: str | None = None
        """Why the engine can no longer serve (its thread failed), ``None`` while it can."""
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(engine_args, started), name="t3-engine-core", daemon=True
        )
        self._thread.start()
        started.result()  # re-raises the engine's start-up error here

    # ------------------------------------------------------------------ AsyncLLM's API

    @property
    def vllm_config(self) -> Any:
        return self._engine.vllm_config

    @property
    def output_processor(self) -> Any:
        return self._engine.output_processor

    @property
    def stat_loggers(self) -> list[list[Any]]:
        """``AsyncLLM``'s shape (per engine, its loggers): the Prometheus logger, if stats are on."""
        logger_ = getattr(self._engine, "stat_logger", None)
        return [[logger_]] if logger_ is not None else []

    @property
    def errored(self) -> bool:
        return self.failure_reason is not None

    async def generate(
        self, prompt: Any, sampling_params: Any, request_id: str
    ) -> AsyncIterator[Any]:
        """vLLM ``RequestOutput``s of one request as its engine steps produce them; closing the
        iterator early (a cancelled caller) aborts the request, as ``AsyncLLM.generate`` does."""
        self._raise_if_dead()
        request = _Request(request_id, prompt, sampling_params, asyncio.get_running_loop())
        self._submit("add", request)
        finished = False
        try:
            while not finished:
                item = await request.outputs.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = bool(item.finished)
                yield item
        finally:
            if not finished:
                self._submit("abort", request_id)

    async def collective_rpc(
        self, method: str, timeout: float | None = None, args: tuple = (), kwargs: Any = None
    ) -> list[Any]:
        """vLLM's ``collective_rpc``, run on the engine thread between two steps."""
        self._raise_if_dead()
        result: concurrent.futures.Future[list[Any]] = concurrent.futures.Future()
        self._submit("rpc", (method, timeout, args, kwargs or {}), result)
        return await asyncio.wrap_future(result)

    def shutdown(self) -> None:
        """Stops the engine thread (running requests end with an error) and the engine core."""
        if self._thread.is_alive():
            self._submit("stop")
            self._thread.join(timeout=60)
        engine, self._engine = self._engine, None
        core = getattr(engine, "engine_core", None)
        if core is not None:
            core.shutdown()

    # ------------------------------------------------------------------ the engine thread

    def _submit(self, *command: Any) -> None:
        self._commands.put(command)
        self._wake.set()

    def _raise_if_dead(self) -> None:
        if self.failure_reason is not None:
            from vllm.v1.engine.exceptions import EngineDeadError

            raise EngineDeadError(self.failure_reason)

    def _run(self, engine_args: Any, started: concurrent.futures.Future[None]) -> None:
        try:
            self._engine = _build_engine(engine_args)
        except BaseException as error:
            started.set_exception(error)
            return
        started.set_result(None)
        try:
            while self._apply_commands():
                if not self._engine.has_unfinished_requests():
                    self._wake.wait()
                    self._wake.clear()
                    continue
                for output in self._engine.step():
                    self._deliver(output.request_id, output, done=output.finished)
        except BaseException as error:  # the engine cannot go on: every waiter is told why
            logger.exception("T3 engine thread failed")
            self.failure_reason = f"the T3 engine thread failed: {type(error).__name__}: {error}"
        if self.failure_reason is None:
            self.failure_reason = "the T3 engine was shut down"
        from vllm.v1.engine.exceptions import EngineDeadError

        for request_id in list(self._requests):
            self._deliver(request_id, EngineDeadError(self.failure_reason), done=True)
        while True:  # commands that raced with the stop
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            if command[0] == "add":
                self._tell(command[1], EngineDeadError(self.failure_reason))
            elif command[0] == "rpc":
                command[2].set_exception(EngineDeadError(self.failure_reason))

    def _apply_commands(self) -> bool:
        """Applies the queued commands; ``False`` once asked to stop."""
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return True
            kind = command[0]
            if kind == "stop":
                return False
            if kind == "add":
                request: _Request = command[1]
                try:
                    self._engine.add_request(
                        request.request_id, request.prompt, request.sampling_params
                    )
                except Exception as error:  # invalid input: that request's error only
                    self._tell(request, error)
                else:
                    self._requests[request.request_id] = request
            elif kind == "abort":
                if self._requests.pop(command[1], None) is not None:
                    self._engine.abort_request([command[1]])
            elif kind == "rpc":
                (method, timeout, args, kwargs), result = command[1], command[2]
                try:
                    result.set_result(self._engine.collective_rpc(method, timeout, args, kwargs))
                except Exception as error:
                    result.set_exception(error)

    def _deliver(self, request_id: str, item: Any, *, done: bool) -> None:
        request = self._requests.pop(request_id, None) if done else self._requests.get(request_id)
        if request is not None:
            self._tell(request, item)

    @staticmethod
    def _tell(request: _Request, item: Any) -> None:
        # A closed loop (RuntimeError) means nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            request.loop.call_soon_threadsafe(request.outputs.put_nowait, item)


def _build_engine(engine_args: Any) -> Any:
    """vLLM's V1 ``LLMEngine`` with its engine core in this process. ``from_engine_args`` would
    follow ``VLLM_ENABLE_V1_MULTIPROCESSING`` (on by default), so the engine is built directly."""
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.llm_engine import LLMEngine
    from vllm.v1.executor.abstract import Executor

    vllm_config = engine_args.create_engine_config(UsageContext.ENGINE_CONTEXT)
    return LLMEngine(
        vllm_config=vllm_config,
        executor_class=Executor.get_class(vllm_config),
        log_stats=not engine_args.disable_log_stats,
        multiprocess_mode=False,
    )
