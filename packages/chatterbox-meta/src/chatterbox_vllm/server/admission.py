"""Admission: how many speech streams the server runs at once, and what a newcomer gets past that.

One place for every kind of session (``/v1/audio/speech`` and WebSocket sessions): a stream holds
a slot from :meth:`Admission.acquire` (or ``async with admission.slot():``) until
:meth:`Admission.release`. The limit is the engine's measured capacity in real-time streams
(:attr:`chatterbox_vllm.scheduler.S3GenScheduler.capacity`; unknown until S3Gen has run a round)
and never more than ``--max-concurrent-streams``. Past it, by ``--over-capacity``:

* ``queue``: the newcomer waits in a FIFO queue (at most ``--max-queued-streams``) and is
  admitted when a running stream ends, in arrival order; after ``--max-queue-wait`` seconds it
  gets :class:`QueueTimeout` (HTTP 503 with ``Retry-After``). A waiter that goes away (its client
  disconnected: the awaiting task is cancelled) leaves the queue at once.
* ``reject``: the newcomer gets :class:`OverCapacity` (HTTP 429 with ``Retry-After``).

Admitted streams are never slowed by newcomers: nothing beyond the limit reaches T3 or S3Gen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from chatterbox_vllm.errors import ChatterboxError, InvalidParameterError

logger = logging.getLogger(__name__)

OVER_CAPACITY_CHOICES = ("queue", "reject")


class AdmissionError(ChatterboxError):
    """A stream that was not admitted; ``status`` and ``retry_after_s`` for the HTTP answer."""

    status = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class OverCapacity(AdmissionError):
    """At capacity and configured to reject (or the queue is full): 429."""


class QueueTimeout(AdmissionError):
    """Waited ``max_queue_wait_s`` in the queue without a slot: 503."""

    status = 503


@dataclass(frozen=True)
class Ticket:
    """An admitted stream's slot."""

    queued_s: float
    """Seconds it waited in the queue (0: admitted at once)."""
    position: int
    """Its place in the queue when it arrived (0: not queued)."""


class Admission:
    """The server's admission (module docstring). ``capacity()`` returns the engine's estimate
    in streams or ``None`` (unknown); ``clock`` is injectable for tests. Not thread-safe: use it
    from the event loop."""

    def __init__(
        self,
        *,
        hard_cap: int,
        capacity: Callable[[], float | None],
        over_capacity: str = "queue",
        max_queue_wait_s: float = 30.0,
        max_queued: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if over_capacity not in OVER_CAPACITY_CHOICES:
            raise InvalidParameterError(
                f"over_capacity must be one of {', '.join(OVER_CAPACITY_CHOICES)}, "
                f"got {over_capacity!r}"
            )
        self.hard_cap = hard_cap
        self._capacity = capacity
        self.over_capacity = over_capacity
        self.max_queue_wait_s = max_queue_wait_s
        self.max_queued = max_queued
        self._clock = clock
        self.running = 0
        self._queue: deque[asyncio.Future[None]] = deque()
        self._mean_stream_s = 10.0
        """EWMA of how long an admitted stream holds its slot (for ``Retry-After``)."""
        self.queued_total = 0
        self.rejected_total = 0
        self.timed_out_total = 0

    # ------------------------------------------------------------------ state

    def capacity_estimate(self) -> float | None:
        return self._capacity()

    def limit(self) -> int:
        """Streams that may run now: the capacity estimate (at least 1), within the hard cap."""
        estimate = self._capacity()
        if estimate is None or not math.isfinite(estimate):
            return self.hard_cap
        return max(1, min(self.hard_cap, math.floor(estimate)))

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def at_capacity(self) -> bool:
        return self.running >= self.limit()

    def would_queue(self) -> bool:
        """Whether a request arriving now would wait in the queue."""
        return self.over_capacity == "queue" and (bool(self._queue) or self.running >= self.limit())

    def retry_after_s(self) -> int:
        """A client's best guess of when to retry: the streams ahead of it, drained at the
        limit's pace of one mean stream length per ``limit`` streams."""
        ahead = len(self._queue) + 1
        return max(1, min(300, math.ceil(self._mean_stream_s * ahead / self.limit())))

    # ------------------------------------------------------------------ slots

    async def acquire(self, on_queued: Callable[[int], None] | None = None) -> Ticket:
        """A slot, at once or after waiting in the queue (``on_queued(position)`` is called when
        the request starts waiting, position 1 = next). Raises :class:`OverCapacity` or
        :class:`QueueTimeout`; cancelling the awaiting task leaves the queue."""
        if not self._queue and self.running < self.limit():
            return self._admit(0.0, 0)
        if self.over_capacity == "reject":
            self.rejected_total += 1
            raise OverCapacity(
                f"the server is at capacity ({self.running} streams running, about "
                f"{self.limit()} in real time); retry later",
                self.retry_after_s(),
            )
        if len(self._queue) >= self.max_queued:
            self.rejected_total += 1
            raise OverCapacity(
                f"the server is at capacity and its queue is full ({len(self._queue)} waiting, "
                "--max-queued-streams); retry later",
                self.retry_after_s(),
            )
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._queue.append(waiter)
        position = len(self._queue)
        self.queued_total += 1
        start = self._clock()
        expiry = loop.call_later(self.max_queue_wait_s, self._expire, waiter)
        if on_queued is not None:
            on_queued(position)
        try:
            await waiter
        except QueueTimeout:
            raise
        except BaseException:  # cancelled: the client went away while waiting
            self._leave(waiter)
            raise
        finally:
            expiry.cancel()
        return self._admit(self._clock() - start, position, counted=True)

    def _expire(self, waiter: asyncio.Future[None]) -> None:
        if waiter in self._queue:
            self._queue.remove(waiter)
            self.timed_out_total += 1
            waiter.set_exception(
                QueueTimeout(
                    f"waited {self.max_queue_wait_s:g} s in the queue (--max-queue-wait) without "
                    f"a free stream slot ({self.running} running); retry later",
                    self.retry_after_s(),
                )
            )

    def _admit(self, queued_s: float, position: int, *, counted: bool = False) -> Ticket:
        if not counted:
            self.running += 1
        return Ticket(queued_s=queued_s, position=position)

    def _leave(self, waiter: asyncio.Future[None]) -> None:
        """A waiter gives up; if it was handed a slot meanwhile, the slot goes to the next."""
        if waiter in self._queue:
            self._queue.remove(waiter)
        elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            self.release(held_s=None)

    def release(self, held_s: float | None = None) -> None:
        """A stream ended (``held_s``: how long it held the slot, for ``Retry-After``); the
        first waiters get the freed slots."""
        self.running -= 1
        if held_s is not None:
            self._mean_stream_s += 0.2 * (held_s - self._mean_stream_s)
        self._wake()

    def _wake(self) -> None:
        while self._queue and self.running < self.limit():
            waiter = self._queue.popleft()
            if waiter.done():
                continue
            self.running += 1  # handed over: the waiter owns it from now on
            waiter.set_result(None)

    @contextlib.asynccontextmanager
    async def slot(self, on_queued: Callable[[int], None] | None = None) -> AsyncIterator[Ticket]:
        """``async with admission.slot() as ticket:`` holds a slot for the block."""
        ticket = await self.acquire(on_queued)
        start = self._clock()
        try:
            yield ticket
        finally:
            self.release(self._clock() - start)

    def poll(self) -> None:
        """Admits waiters the limit allows now (the capacity estimate may have risen)."""
        self._wake()


__all__ = [
    "OVER_CAPACITY_CHOICES",
    "Admission",
    "AdmissionError",
    "OverCapacity",
    "QueueTimeout",
    "Ticket",
]
