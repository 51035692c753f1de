"""The replica actors (start, replace, stop) and the driver loop that spreads chunks over them.

:class:`ReplicaPool` owns the actors. :class:`ChunkDispatcher` runs one call: it keeps every
replica busy with batches chosen by :class:`~chatterbox_vllm.distributed.placement.LoadAwarePlacement`,
waits on Ray for whichever call returns first, and survives replica failures:

* a replica whose process or node dies (``RayActorError``), or whose engine fails with anything
  but an input error, is killed and forgotten; the chunks it had not returned go back to the head
  of the queue and are sent to the remaining replicas, and a replacement replica is started (it
  takes work as soon as it has loaded);
* every chunk is delivered exactly once: a chunk's audio is accepted only from the call it was last
  sent in, results of calls to a failed replica are never read, and the loop ends only when every
  chunk has its audio;
* an input error raised by a replica (:class:`~chatterbox_vllm.errors.ChatterboxError`, e.g. a
  character T3's tokenizer has no id for) fails the call with that same error; the replicas stay
  usable;
* a chunk that has failed on ``max_chunk_attempts`` replicas (it crashes every engine it meets)
  fails the call instead of killing the whole pool.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from chatterbox_vllm.distributed.placement import LoadAwarePlacement, PlacedChunk
from chatterbox_vllm.distributed.replica import (
    CheckpointSource,
    ChunkSpec,
    ReplicaInfo,
    ReplicaWorker,
)
from chatterbox_vllm.errors import ChatterboxError, EngineDeadError
from chatterbox_vllm.results import ChunkAudio

if TYPE_CHECKING:
    from chatterbox_vllm.config import EngineConfig

logger = logging.getLogger(__name__)

WAIT_TICK_SECONDS = 2.0
"""How often the driver loop wakes up while waiting, to notice replicas that take too long to
start."""


class ReplicaError(ChatterboxError, RuntimeError):
    """Replicas failed and no replica is left (or could be started) to finish the work."""


@dataclass
class ReplicaHandle:
    """One replica actor as the driver sees it."""

    name: str
    actor: Any
    """The Ray actor handle (``ray.kill(handle.actor)`` simulates a crash)."""
    info: ReplicaInfo | None = None
    """Set once the replica has loaded its engine."""
    started_at: float = field(default_factory=time.monotonic)
    alive: bool = True
    completed_chunks: int = 0
    completed_tokens: int = 0

    @property
    def ready(self) -> bool:
        return self.alive and self.info is not None


@dataclass(frozen=True)
class ReplicaStatus:
    """A snapshot of one replica for monitoring (see ``ReplicatedChatterboxTTS.replica_status``)."""

    name: str
    state: str
    """``starting``, ``ready`` or ``dead``."""
    hostname: str | None
    gpu_ids: tuple[str, ...]
    pending_tokens: int
    """Estimated speech tokens of the chunks it is working on in the current call."""
    in_flight_chunks: int
    completed_chunks: int
    """Chunks it returned since it started."""


class ReplicaPool:
    """Starts replica actors with the right resources and replaces failed ones."""

    def __init__(
        self,
        source: CheckpointSource,
        config: EngineConfig,
        *,
        num_gpus: float,
        num_cpus: float,
        actor_options: dict[str, Any] | None = None,
        max_replacements: int = 8,
        startup_timeout_s: float = 1800.0,
    ) -> None:
        import ray

        self.source = source
        self.config = config
        self.num_gpus = num_gpus
        self.num_cpus = num_cpus
        self.max_replacements = max_replacements
        self.startup_timeout_s = startup_timeout_s
        self.replacements = 0
        self.failed: list[str] = []
        options: dict[str, Any] = {
            "num_gpus": num_gpus,
            "num_cpus": num_cpus,
            # Failures are handled here (requeue + replacement), not by Ray's actor restarts,
            # which would re-run a dead replica's calls behind the driver's back.
            "max_restarts": 0,
            "max_task_retries": 0,
        }
        options.update(actor_options or {})
        self._actor_class: Any = ray.remote(ReplicaWorker).options(**options)
        self._names = itertools.count()
        self.handles: list[ReplicaHandle] = []
        self._starting: dict[Any, ReplicaHandle] = {}  # info() ObjectRef -> handle
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self, count: int) -> list[ReplicaHandle]:
        """Creates ``count`` actors; they load in parallel (see :meth:`wait_until_ready`)."""
        started = []
        for _ in range(count):
            name = f"replica-{next(self._names)}"
            actor = self._actor_class.remote(self.source, self.config)
            handle = ReplicaHandle(name=name, actor=actor)
            with self.lock:
                self.handles.append(handle)
                self._starting[actor.info.remote()] = handle
            started.append(handle)
            logger.info("starting %s (%s)", name, self.source.describe())
        return started

    @property
    def ready(self) -> list[ReplicaHandle]:
        return [handle for handle in self.handles if handle.ready]

    @property
    def starting(self) -> list[ReplicaHandle]:
        return list(self._starting.values())

    @property
    def starting_refs(self) -> list[Any]:
        return list(self._starting)

    def wait_until_ready(self, timeout_s: float | None = None) -> None:
        """Blocks until every starting replica has loaded (or failed: failures raise
        :class:`ReplicaError` naming the replica and the cause)."""
        import ray

        deadline = time.monotonic() + (self.startup_timeout_s if timeout_s is None else timeout_s)
        while self._starting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                names = ", ".join(h.name for h in self._starting.values())
                raise ReplicaError(
                    f"{names} did not finish loading within {timeout_s or self.startup_timeout_s:.0f}"
                    " s; the cluster may lack the resources they ask for "
                    f"(num_gpus={self.num_gpus}, num_cpus={self.num_cpus} each) - see `ray status`"
                )
            ready, _ = ray.wait(self.starting_refs, num_returns=1, timeout=min(remaining, 10.0))
            for ref in ready:
                _, error = self.finish_start(ref)
                if error is not None:
                    raise error

    def finish_start(self, ref: Any) -> tuple[ReplicaHandle, ReplicaError | None]:
        """Records the outcome of a replica's load (``ref`` is its ``info()`` call); returns the
        replica and, if it failed (it is then dead), the error."""
        import ray

        with self.lock:
            handle = self._starting.pop(ref)
        try:
            info = ray.get(ref)
        except ray.exceptions.RayError as error:
            self.retire(handle, f"failed to start: {_describe(error)}")
            return handle, ReplicaError(
                f"{handle.name} failed to load the model: {_describe(error)}"
            )
        handle.info = info
        logger.info(
            "%s ready on %s (GPUs %s, %.1f s to load)",
            handle.name,
            info.hostname,
            ",".join(info.gpu_ids) or "none",
            info.load_seconds,
        )
        return handle, None

    def expire_slow_starts(self) -> list[ReplicaHandle]:
        """Kills replicas that have been loading longer than ``startup_timeout_s``."""
        now = time.monotonic()
        expired = [
            (ref, handle)
            for ref, handle in self._starting.items()
            if now - handle.started_at > self.startup_timeout_s
        ]
        for ref, handle in expired:
            with self.lock:
                self._starting.pop(ref, None)
            self.retire(handle, f"still loading after {self.startup_timeout_s:.0f} s")
        return [handle for _, handle in expired]

    def retire(self, handle: ReplicaHandle, reason: str) -> None:
        """Kills a failed replica's actor (if it still runs) and marks it dead."""
        import ray

        if not handle.alive:
            return
        logger.warning(
            "%s failed (%s); its unfinished chunks go to other replicas", handle.name, reason
        )
        handle.alive = False
        self.failed.append(handle.name)
        try:
            ray.kill(handle.actor, no_restart=True)
        except Exception as error:  # already gone
            logger.debug("ray.kill(%s): %s", handle.name, error)

    def replace(self, handle: ReplicaHandle) -> ReplicaHandle | None:
        """Starts a replacement for a failed replica unless the replacement budget is spent."""
        if self.replacements >= self.max_replacements:
            logger.error(
                "not replacing %s: %d replacements already started (max_replacements)",
                handle.name,
                self.replacements,
            )
            return None
        self.replacements += 1
        (new,) = self.start(1)
        logger.info("%s replaces %s", new.name, handle.name)
        return new

    def stop(self, handle: ReplicaHandle, timeout_s: float = 60.0) -> None:
        """Shuts a replica down cleanly (its vLLM engine first), then removes the actor."""
        import ray

        if handle.alive:
            try:
                ray.get(handle.actor.shutdown.remote(), timeout=timeout_s)
            except Exception as error:
                logger.debug("%s shutdown: %s", handle.name, error)
            handle.alive = False
            ray.kill(handle.actor, no_restart=True)
        with self.lock:
            for ref, starting in list(self._starting.items()):
                if starting is handle:
                    del self._starting[ref]
            if handle in self.handles:
                self.handles.remove(handle)

    def stop_all(self) -> None:
        for handle in list(self.handles):
            self.stop(handle)

    def prune_dead(self) -> None:
        with self.lock:
            self.handles = [handle for handle in self.handles if handle.alive]


def _describe(error: BaseException) -> str:
    import ray

    if isinstance(error, ray.exceptions.RayTaskError):
        cause = error.cause
        return f"{type(cause).__name__}: {cause}"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


@dataclass
class DispatchReport:
    """What one call's dispatch did."""

    chunks: int = 0
    calls: int = 0
    retried_chunks: int = 0
    """Chunk sends repeated because the replica they were on failed."""
    failed_replicas: list[str] = field(default_factory=list)
    started_replicas: list[str] = field(default_factory=list)
    duplicates_discarded: int = 0
    """Chunk results that arrived for a chunk already delivered (never expected; counted so the
    benchmark can prove it)."""
    chunks_per_replica: dict[str, int] = field(default_factory=dict)
    tokens_per_replica: dict[str, int] = field(default_factory=dict)


@dataclass
class _SentCall:
    call_id: int
    handle: ReplicaHandle


class ChunkDispatcher:
    """Runs the chunks of one call on a :class:`ReplicaPool` (see the module docs)."""

    def __init__(
        self,
        pool: ReplicaPool,
        *,
        max_chunks_per_call: int,
        max_calls_per_replica: int = 2,
        max_chunk_attempts: int = 3,
        replace_failed: bool = True,
    ) -> None:
        if max_chunk_attempts < 1:
            raise ValueError(f"max_chunk_attempts must be >= 1, got {max_chunk_attempts}")
        self.pool = pool
        self.max_chunks_per_call = max_chunks_per_call
        self.max_calls_per_replica = max_calls_per_replica
        self.max_chunk_attempts = max_chunk_attempts
        self.replace_failed = replace_failed
        self._placement: LoadAwarePlacement[str, ChunkSpec] | None = None

    def status(self) -> list[ReplicaStatus]:
        with self.pool.lock:
            placement = self._placement
            statuses = []
            for handle in self.pool.handles:
                pending = in_flight = 0
                if placement is not None and handle.name in placement.replicas:
                    pending = placement.pending_tokens(handle.name)
                    in_flight = placement.in_flight_chunks(handle.name)
                if not handle.alive:
                    state = "dead"
                else:
                    state = "ready" if handle.info is not None else "starting"
                statuses.append(
                    ReplicaStatus(
                        name=handle.name,
                        state=state,
                        hostname=handle.info.hostname if handle.info else None,
                        gpu_ids=handle.info.gpu_ids if handle.info else (),
                        pending_tokens=pending,
                        in_flight_chunks=in_flight,
                        completed_chunks=handle.completed_chunks,
                    )
                )
            return statuses

    def run(
        self,
        specs: Sequence[ChunkSpec],
        voice_refs: dict[str, Any],
        *,
        progress: bool = True,
    ) -> tuple[dict[int, ChunkAudio], DispatchReport]:
        """Speaks every chunk on the pool; returns audio by chunk order and a report."""
        import ray

        chunks = [
            PlacedChunk(order=spec.order, estimated_tokens=spec.item.estimated_tokens, payload=spec)
            for spec in specs
        ]
        report = DispatchReport(chunks=len(chunks))
        placement: LoadAwarePlacement[str, ChunkSpec] = LoadAwarePlacement(
            max_chunks_per_call=self.max_chunks_per_call,
            max_calls_per_replica=self.max_calls_per_replica,
        )
        handles: dict[str, ReplicaHandle] = {}
        self._poll_starting(report)
        with self.pool.lock:
            for handle in self.pool.ready:
                placement.add_replica(handle.name)
                handles[handle.name] = handle
            self._placement = placement
        placement.submit(chunks)
        results: dict[int, ChunkAudio] = {}
        sent: dict[Any, _SentCall] = {}  # synthesize_chunks ObjectRef -> call
        bar = tqdm(
            total=len(chunks), desc="chunks", unit="chunk", disable=not progress, leave=False
        )
        try:
            while len(results) < len(chunks):
                self._send(placement, handles, sent, voice_refs, report)
                if not sent and not self.pool.starting:
                    raise ReplicaError(
                        f"no replica left to speak {len(chunks) - len(results)} chunk(s): "
                        f"{', '.join(report.failed_replicas) or 'replicas'} failed and no "
                        "replacement could be started (see the log for the causes)"
                    )
                waiting = list(sent) + self.pool.starting_refs
                ready, _ = ray.wait(waiting, num_returns=1, timeout=WAIT_TICK_SECONDS)
                for ref in ready:
                    if ref in sent:
                        call = sent.pop(ref)
                        self._receive(ref, call, placement, handles, sent, results, report, bar)
                    elif ref in self.pool.starting_refs:
                        self._finish_start(ref, placement, handles, report)
                    # else: a call to a replica that failed earlier in this loop; never read
                for handle in self.pool.expire_slow_starts():
                    report.failed_replicas.append(handle.name)
                    self._maybe_replace(handle, report)
        except BaseException:
            # Queued calls are dropped; a call already running on a replica finishes there and
            # its result is never read.
            for ref in sent:
                try:
                    ray.cancel(ref)
                except Exception as error:  # its replica is gone already
                    logger.debug("cancel: %s", error)
            raise
        finally:
            bar.close()
            with self.pool.lock:
                self._placement = None
            self.pool.prune_dead()
        return results, report

    # ------------------------------------------------------------------ loop steps

    def _send(
        self,
        placement: LoadAwarePlacement[str, ChunkSpec],
        handles: dict[str, ReplicaHandle],
        sent: dict[Any, _SentCall],
        voice_refs: dict[str, Any],
        report: DispatchReport,
    ) -> None:
        while True:
            with self.pool.lock:
                call = placement.next_call()
            if call is None:
                return
            specs = [chunk.payload for chunk in call.chunks]
            voices = {spec.voice: voice_refs[spec.voice] for spec in specs if spec.voice}
            handle = handles[call.replica]
            ref = handle.actor.synthesize_chunks.remote(specs, voices)
            sent[ref] = _SentCall(call.call_id, handle)
            report.calls += 1

    def _receive(
        self,
        ref: Any,
        call: _SentCall,
        placement: LoadAwarePlacement[str, ChunkSpec],
        handles: dict[str, ReplicaHandle],
        sent: dict[Any, _SentCall],
        results: dict[int, ChunkAudio],
        report: DispatchReport,
        bar: Any,
    ) -> None:
        import ray

        handle = call.handle
        try:
            audio = ray.get(ref)
        except ray.exceptions.RayTaskError as error:
            cause = error.cause
            if isinstance(cause, ChatterboxError) and not isinstance(cause, EngineDeadError):
                # Bad input: the same error a ChatterboxTTS raises; another replica would
                # reject it too. A dead engine, like any other failure, is the replica's fault.
                raise cause from None
            self._fail_replica(handle, _describe(error), placement, handles, sent, report)
            return
        except ray.exceptions.RayError as error:
            self._fail_replica(handle, _describe(error), placement, handles, sent, report)
            return
        with self.pool.lock:
            planned = placement.complete(call.call_id)
        expected = {chunk.order for chunk in planned.chunks}
        if sorted(item.order for item in audio) != sorted(expected):
            raise RuntimeError(
                f"{handle.name} returned chunks {sorted(item.order for item in audio)} for a call "
                f"of {sorted(expected)}"
            )
        for item in audio:
            if item.order in results:
                report.duplicates_discarded += 1
                continue
            results[item.order] = item
            handle.completed_chunks += 1
            handle.completed_tokens += len(item.tokens)
            report.chunks_per_replica[handle.name] = (
                report.chunks_per_replica.get(handle.name, 0) + 1
            )
            report.tokens_per_replica[handle.name] = report.tokens_per_replica.get(
                handle.name, 0
            ) + len(item.tokens)
        bar.update(len(audio))

    def _fail_replica(
        self,
        handle: ReplicaHandle,
        reason: str,
        placement: LoadAwarePlacement[str, ChunkSpec],
        handles: dict[str, ReplicaHandle],
        sent: dict[Any, _SentCall],
        report: DispatchReport,
    ) -> None:
        import ray

        self.pool.retire(handle, reason)
        report.failed_replicas.append(handle.name)
        # The replica's other outstanding calls are lost with it: never read them.
        for ref, call in list(sent.items()):
            if call.handle is handle:
                del sent[ref]
                try:
                    ray.cancel(ref)
                except Exception as error:  # the actor is gone already
                    logger.debug("cancel of a call to %s: %s", handle.name, error)
        with self.pool.lock:
            requeued = placement.remove_replica(handle.name)
        handles.pop(handle.name, None)
        report.retried_chunks += len(requeued)
        logger.warning(
            "%s failed: %s; %d chunk(s) go back to the queue", handle.name, reason, len(requeued)
        )
        worst = max(requeued, key=lambda chunk: chunk.attempts, default=None)
        if worst is not None and worst.attempts >= self.max_chunk_attempts:
            raise ReplicaError(
                f"chunk {worst.order} ({worst.payload.item.text[:40]!r}...) was on {worst.attempts} "
                f"replicas that failed (last: {reason}); giving up on this call"
            )
        self._maybe_replace(handle, report)

    def _maybe_replace(self, handle: ReplicaHandle, report: DispatchReport) -> None:
        if not self.replace_failed:
            return
        new = self.pool.replace(handle)
        if new is not None:
            report.started_replicas.append(new.name)

    def _finish_start(
        self,
        ref: Any,
        placement: LoadAwarePlacement[str, ChunkSpec],
        handles: dict[str, ReplicaHandle],
        report: DispatchReport,
    ) -> None:
        """A replica finished loading (or failed to): it joins the placement and takes work."""
        handle, error = self.pool.finish_start(ref)
        if error is not None:
            report.failed_replicas.append(handle.name)
            logger.warning("%s", error)
            self._maybe_replace(handle, report)
            return
        with self.pool.lock:
            placement.add_replica(handle.name)
        handles[handle.name] = handle

    def _poll_starting(self, report: DispatchReport) -> None:
        """Takes in replicas that finished loading since the last call (before placement)."""
        import ray

        refs = self.pool.starting_refs
        if not refs:
            return
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            handle, error = self.pool.finish_start(ref)
            if error is not None:
                report.failed_replicas.append(handle.name)
                logger.warning("%s", error)
                self._maybe_replace(handle, report)
