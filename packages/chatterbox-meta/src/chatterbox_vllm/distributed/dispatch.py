"""The driver loop of one call: :class:`ChunkDispatcher` keeps every replica of a
:class:`~chatterbox_vllm.distributed.pool.ReplicaPool` busy with batches chosen by
:class:`~chatterbox_vllm.distributed.placement.LoadAwarePlacement`, waits on Ray for whichever
call returns first, and sorts failures by class: an input error (a
:class:`~chatterbox_vllm.errors.ChatterboxError` other than ``EngineDeadError``) fails the call as
it would on one engine; anything else is the replica's failure, whose chunks go to the others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from chatterbox_vllm.distributed.placement import LoadAwarePlacement, PlacedChunk
from chatterbox_vllm.distributed.pool import (
    WAIT_TICK_SECONDS,
    ReplicaError,
    ReplicaHandle,
    ReplicaPool,
    ReplicaStatus,
    describe_failure,
)
from chatterbox_vllm.distributed.replica import ChunkSpec
from chatterbox_vllm.errors import ChatterboxError, EngineDeadError
from chatterbox_vllm.results import ChunkAudio

logger = logging.getLogger(__name__)


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
            self._fail_replica(handle, describe_failure(error), placement, handles, sent, report)
            return
        except ray.exceptions.RayError as error:
            self._fail_replica(handle, describe_failure(error), placement, handles, sent, report)
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
