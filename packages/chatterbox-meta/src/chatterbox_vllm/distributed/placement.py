"""Which replica decodes which chunks: load-aware placement by pending speech tokens.

Pure bookkeeping (no Ray), so the policy is tested with fake replicas. The driver feeds it every
chunk of a call (:meth:`LoadAwarePlacement.submit`), asks for the next call to send
(:meth:`~LoadAwarePlacement.next_call`) whenever a replica has a free call slot, and reports each
call back as completed or its replica as failed.

Why pending tokens and not round-robin: the work of a chunk is the speech tokens T3 decodes for it
(and S3Gen turns into audio), which grows with its text; a 20-character tail chunk is a tenth of a
full one. Each chunk carries an estimate (the plan item's
:attr:`~chatterbox_vllm.planner.PlanItem.estimated_tokens`); a replica's *pending
tokens* are the estimates of the chunks it has been sent and not yet returned. The next call goes to
the replica with the fewest pending tokens, and is filled (in text order, from the head of the
queue) up to that replica's fair share of all outstanding work - so replicas end up with equal
token loads, not equal chunk counts, and a replica that finishes early gets the next call.

Two limits keep the placement adaptive: a call holds at most ``max_chunks_per_call`` chunks (a
replica's vLLM batch, ``max_num_seqs``) and a replica has at most ``max_calls_per_replica`` calls
outstanding (one decoding plus one waiting, so it never idles between calls while the rest of the
work stays in the driver's queue, free to go to whichever replica is ready first).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R", bound=Hashable)


@dataclass
class PlacedChunk(Generic[P]):
    """One chunk waiting for or assigned to a replica.

    ``order`` is the chunk's position in the call (request by request, chunk by chunk): the queue
    hands chunks out in this order, and a failed replica's chunks go back in it.
    """

    order: int
    estimated_tokens: int
    payload: P
    attempts: int = 0
    """How many replicas were sent this chunk and failed before returning it."""

    def __post_init__(self) -> None:
        if self.estimated_tokens < 1:
            raise ValueError(f"estimated_tokens must be >= 1, got {self.estimated_tokens}")


@dataclass
class PlannedCall(Generic[R, P]):
    """A batch of chunks sent to one replica as one call."""

    call_id: int
    replica: R
    chunks: list[PlacedChunk[P]]

    @property
    def tokens(self) -> int:
        return sum(chunk.estimated_tokens for chunk in self.chunks)


@dataclass
class _ReplicaLoad(Generic[R, P]):
    rank: int
    """Order the replica joined in: the last tie-breaker, so placement is deterministic."""
    calls: dict[int, PlannedCall[R, P]] = field(default_factory=dict)

    @property
    def pending_tokens(self) -> int:
        return sum(call.tokens for call in self.calls.values())


class LoadAwarePlacement(Generic[R, P]):
    """Queue of chunks plus, per replica, the calls it has been sent (see the module docs)."""

    def __init__(self, *, max_chunks_per_call: int, max_calls_per_replica: int = 2) -> None:
        for name, value in (
            ("max_chunks_per_call", max_chunks_per_call),
            ("max_calls_per_replica", max_calls_per_replica),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.max_chunks_per_call = max_chunks_per_call
        self.max_calls_per_replica = max_calls_per_replica
        self._queue: list[tuple[int, int, PlacedChunk[P]]] = []  # heap by (order, arrival)
        self._arrivals = itertools.count()
        self._queued_tokens = 0
        self._replicas: dict[R, _ReplicaLoad[R, P]] = {}
        self._calls: dict[int, PlannedCall[R, P]] = {}
        self._ranks = itertools.count()
        self._call_ids = itertools.count()

    # ------------------------------------------------------------------ replicas

    def add_replica(self, replica: R) -> None:
        if replica in self._replicas:
            raise ValueError(f"replica {replica!r} is already placed")
        self._replicas[replica] = _ReplicaLoad(rank=next(self._ranks))

    def remove_replica(self, replica: R) -> list[PlacedChunk[P]]:
        """Forgets a failed replica; every chunk it had not returned goes back to the head of the
        queue (in text order, ``attempts`` + 1) and is returned."""
        load = self._replicas.pop(replica, None)
        if load is None:
            raise KeyError(f"replica {replica!r} is not placed")
        requeued = []
        for call_id, call in load.calls.items():
            del self._calls[call_id]
            for chunk in call.chunks:
                chunk.attempts += 1
                requeued.append(chunk)
        self._enqueue(requeued)
        requeued.sort(key=lambda chunk: chunk.order)
        return requeued

    @property
    def replicas(self) -> list[R]:
        return list(self._replicas)

    def pending_tokens(self, replica: R) -> int:
        """Estimated speech tokens of the chunks ``replica`` has been sent and not returned."""
        return self._replicas[replica].pending_tokens

    def outstanding_calls(self, replica: R) -> int:
        return len(self._replicas[replica].calls)

    def in_flight_chunks(self, replica: R) -> int:
        """Chunks ``replica`` has been sent and not yet returned."""
        return sum(len(call.chunks) for call in self._replicas[replica].calls.values())

    # ------------------------------------------------------------------ chunks

    def submit(self, chunks: Iterable[PlacedChunk[P]]) -> None:
        self._enqueue(list(chunks))

    def _enqueue(self, chunks: list[PlacedChunk[P]]) -> None:
        for chunk in chunks:
            heapq.heappush(self._queue, (chunk.order, next(self._arrivals), chunk))
            self._queued_tokens += chunk.estimated_tokens

    @property
    def queued(self) -> int:
        """Chunks not yet sent to any replica."""
        return len(self._queue)

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    @property
    def in_flight(self) -> int:
        """Chunks sent to a replica and not yet returned."""
        return sum(len(call.chunks) for call in self._calls.values())

    def next_call(self) -> PlannedCall[R, P] | None:
        """The next batch to send, or ``None`` when the queue is empty or every replica already
        has ``max_calls_per_replica`` calls outstanding.

        The replica is the one with the fewest pending tokens (then fewest outstanding calls,
        then the earliest to join). The batch is taken from the head of the queue until it
        reaches the replica's share of all outstanding work - (pending + queued tokens) / replicas,
        minus what the replica already has - or ``max_chunks_per_call`` chunks; it always holds
        at least one chunk.
        """
        if not self._queue:
            return None
        free = [
            (load.pending_tokens, len(load.calls), load.rank, replica)
            for replica, load in self._replicas.items()
            if len(load.calls) < self.max_calls_per_replica
        ]
        if not free:
            return None
        pending, _, _, replica = min(free, key=lambda entry: entry[:3])
        total = sum(load.pending_tokens for load in self._replicas.values()) + self._queued_tokens
        target = math.ceil(total / len(self._replicas)) - pending
        chunks: list[PlacedChunk[P]] = []
        tokens = 0
        while self._queue and len(chunks) < self.max_chunks_per_call:
            head = self._queue[0][2]
            if chunks and tokens + head.estimated_tokens > target:
                break
            heapq.heappop(self._queue)
            self._queued_tokens -= head.estimated_tokens
            chunks.append(head)
            tokens += head.estimated_tokens
        call = PlannedCall(call_id=next(self._call_ids), replica=replica, chunks=chunks)
        self._calls[call.call_id] = call
        self._replicas[replica].calls[call.call_id] = call
        logger.debug(
            "call %d -> %r: %d chunk(s), ~%d tokens (pending before: %d)",
            call.call_id,
            replica,
            len(chunks),
            tokens,
            pending,
        )
        return call

    def complete(self, call_id: int) -> PlannedCall[R, P]:
        """Marks a call's chunks as returned; the replica's pending tokens drop by theirs."""
        call = self._calls.pop(call_id, None)
        if call is None:
            raise KeyError(f"call {call_id} is not outstanding")
        del self._replicas[call.replica].calls[call_id]
        return call
