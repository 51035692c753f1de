"""CUDA graph capture for S3Gen: the capture primitive every S3Gen graph uses, and
:class:`ShapeGraphs`, a function captured at a fixed set of input shapes (a streaming server's
flow encoder and anchored HiFT, whose shapes its windows' buckets fix at start-up).

Why graphs for those two: a streamed round at a few windows is bound by launching work, not by
the GPU doing it (hundreds of small kernels each for the encoder and HiFT), and while T3's
engine process keeps the GPU busy beside it, every eager launch also waits for the GPU's time
slice to come back; a replay submits a part's kernels at once."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

logger = logging.getLogger(__name__)

Outputs = Any
"""Whatever the captured function returns (a tensor or a tuple of tensors)."""


def capture(
    graph: torch.cuda.CUDAGraph, pool: object, device: torch.device, run: Callable[[], Outputs]
) -> Outputs:
    """Captures ``run`` into ``graph`` on a side stream, as ``torch.cuda.graph`` does, without
    the ``gc.collect()`` and ``torch.cuda.empty_cache()`` it runs before every capture: per shape
    (dozens at start-up) the collection walks every object of a process that imported vLLM, and
    emptying the cache hands the previous shape's blocks back to the driver, so each next
    shape's warm-up allocates them again with ``cudaMalloc``. vLLM's piecewise graphs skip both
    after their first capture for the same reasons."""
    torch.cuda.synchronize(device)
    side = torch.cuda.Stream(device)
    with torch.cuda.stream(side):
        # thread_local: another thread of the process (T3 conditioning, a pipeline's main loop)
        # may use CUDA while this one captures; only this thread's calls are restricted.
        graph.capture_begin(pool=pool, capture_error_mode="thread_local")
        try:
            return run()
        finally:
            graph.capture_end()


ShapeKey = tuple[tuple[tuple[int, ...], torch.dtype], ...]
"""Every input's shape and dtype: what one captured call holds."""


def shape_key(inputs: Sequence[torch.Tensor]) -> ShapeKey:
    return tuple((tuple(x.shape), x.dtype) for x in inputs)


class _CapturedCall:
    """``fn`` over static inputs at one shape: replayed as a CUDA graph, or (``pool=None``)
    run eagerly on the same static buffers (the CPU tests check everything around the capture;
    ``warm`` runs it once there too, as a capture's warm-up would)."""

    def __init__(
        self,
        fn: Callable[..., Outputs],
        inputs: list[torch.Tensor],
        device: torch.device,
        pool: object | None,
        keep_alive: Callable[[], list[torch.Tensor]] | None,
        warm: bool,
    ) -> None:
        self.fn = fn
        self.inputs = inputs
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: Outputs = None
        self.pinned: list[torch.Tensor] = []
        if pool is None:
            if warm:
                fn(*inputs)
            return
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            # One eager run makes every lazy choice (cuDNN plans, cuBLAS workspaces, allocator
            # blocks, cached tables) before the capture.
            fn(*inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        self.outputs = capture(graph, pool, device, lambda: fn(*inputs))
        self.graph = graph
        # Tensors the function reads from caches of its own (not inputs, not parameters): a
        # replay reads their addresses, so they must outlive any eviction from those caches.
        self.pinned = keep_alive() if keep_alive is not None else []

    def run(self, values: Sequence[torch.Tensor]) -> Outputs:
        for static, value in zip(self.inputs, values):
            static.copy_(value, non_blocking=True)
        if self.graph is None:
            return self.fn(*self.inputs)
        self.graph.replay()
        return self.outputs


class ShapeGraphs:
    """``fn(*inputs)`` captured as a CUDA graph at each input shape given to :meth:`prepare`
    (start-up work), replayed by :meth:`run` for inputs of exactly such a shape; any other shape
    runs ``fn`` eagerly and is counted in :attr:`eager_runs`. Nothing is captured in
    :meth:`run`: a serving process never pays a capture on the request path.

    The outputs of a replay are the graph's own buffers, valid until the same shape runs again:
    a caller uses them (or copies them) before its next call. Static inputs of every shape share
    one buffer per input position (inputs are copied in right before each replay, and replays
    are sequential), so the inputs' memory is that of the largest shape, not of all of them;
    the graphs share one memory pool for their intermediates. ``capture=False`` keeps the
    static buffers and bookkeeping but runs ``fn`` eagerly on them (any device).
    ``keep_alive``: returns tensors ``fn`` reads from its own caches (pinned per capture)."""

    def __init__(
        self,
        name: str,
        fn: Callable[..., Outputs],
        *,
        capture: bool = True,
        keep_alive: Callable[[], list[torch.Tensor]] | None = None,
        fingerprint: Callable[[], tuple[int, ...]] | None = None,
    ) -> None:
        self.name = name
        self.fn = fn
        self.capture = capture
        self.keep_alive = keep_alive
        self.fingerprint = fingerprint
        """Addresses of what ``fn`` reads besides its inputs (its module's parameters): a
        replay reads the addresses of capture time, so when they change (``S3Gen.to``, new
        weights) every captured call is dropped and ``fn`` runs eagerly until prepared again."""
        self._fingerprint: tuple[int, ...] = ()
        self._calls: dict[ShapeKey, _CapturedCall] = {}
        self._arenas: list[torch.Tensor] = []
        self._pool: object | None = None
        self.captures = 0
        """Shapes captured (with ``capture=False``: static buffer sets made)."""
        self.eager_runs = 0
        """Calls whose shape was not prepared (run eagerly)."""

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, inputs: Sequence[torch.Tensor]) -> bool:
        return shape_key(inputs) in self._calls

    @torch.inference_mode()
    def prepare(self, examples: Iterable[Sequence[torch.Tensor]], *, warm: bool = True) -> int:
        """Capture ``fn`` at the shape of each example, in order (its values must be valid
        inputs: the capture runs ``fn`` on them once eagerly first; with ``capture=False`` that
        run happens only if ``warm``). Returns the number prepared. A failure (out of memory,
        an op that cannot be captured) is logged and ends the preparation: that shape and the
        rest run eagerly (a failure costs speed, never the start)."""
        pending: dict[ShapeKey, Sequence[torch.Tensor]] = {}
        for example in examples:
            key = shape_key(example)
            if key not in self._calls:
                pending.setdefault(key, example)
        if not pending:
            return 0
        self._check_fingerprint()
        try:
            self._grow_arenas(pending.values())
        except torch.OutOfMemoryError as error:
            logger.warning(
                "S3Gen: no room for the %s's graph inputs (%s); it runs eagerly", self.name, error
            )
            return 0
        made = 0
        for key, example in pending.items():
            statics = [
                arena[: x.numel()].view(x.shape).copy_(x) for arena, x in zip(self._arenas, example)
            ]
            device = statics[0].device
            try:
                if self.capture and self._pool is None:
                    self._pool = torch.cuda.graph_pool_handle()
                call = _CapturedCall(
                    self.fn,
                    statics,
                    device,
                    self._pool if self.capture else None,
                    self.keep_alive,
                    warm,
                )
            except Exception as error:  # out of memory, an op that cannot be captured, ...
                logger.warning(
                    "S3Gen: preparing the %s stopped at %s (%s); that shape and the %d after it "
                    "run eagerly",
                    self.name,
                    [shape for shape, _ in key],
                    error,
                    len(pending) - made - 1,
                )
                break
            self._calls[key] = call
            self.captures += 1
            made += 1
        return made

    def _grow_arenas(self, examples: Iterable[Sequence[torch.Tensor]]) -> None:
        """One flat buffer per input position, as large as the largest example's input there
        (buffers already held by captured calls are kept: their graphs read those addresses)."""
        examples = list(examples)
        positions = len(examples[0])
        if any(len(example) != positions for example in examples):
            raise ValueError(f"every {self.name} example must have {positions} inputs")
        for i in range(positions):
            largest = max(example[i].numel() for example in examples)
            template = examples[0][i]
            if i < len(self._arenas) and self._arenas[i].numel() >= largest:
                continue
            if i < len(self._arenas) and self._calls:
                raise ValueError(
                    f"the {self.name}'s graphs are prepared: a larger shape needs its own set"
                )
            arena = torch.zeros(largest, dtype=template.dtype, device=template.device)
            if i < len(self._arenas):
                self._arenas[i] = arena
            else:
                self._arenas.append(arena)

    def _check_fingerprint(self) -> None:
        current = self.fingerprint() if self.fingerprint is not None else ()
        if current != self._fingerprint:
            if self._calls:
                logger.warning(
                    "S3Gen: the %s's weights moved since its graphs were captured; it runs "
                    "eagerly until they are prepared again",
                    self.name,
                )
                self.clear()
            self._fingerprint = current

    @torch.inference_mode()
    def run(self, *inputs: torch.Tensor) -> Outputs:
        """``fn(*inputs)``: a replay when their shape was prepared, else eagerly."""
        if self._calls:
            self._check_fingerprint()
        call = self._calls.get(shape_key(inputs))
        if call is None:
            self.eager_runs += 1
            return self.fn(*inputs)
        return call.run(inputs)

    def clear(self) -> None:
        """Drop every captured call (their memory returns to the allocator)."""
        self._calls.clear()
        self._arenas.clear()
        self._pool = None


__all__ = ["ShapeGraphs", "capture", "shape_key"]
