"""The server's admission: over capacity a stream queues (FIFO) or is refused, a queued client
that goes away frees its place, and a queue that does not move answers in bounded time."""

from __future__ import annotations

import asyncio

import pytest

from chatterbox_vllm.server.admission import Admission, OverCapacity, QueueTimeout


def run(coroutine):
    return asyncio.run(coroutine)


async def settle() -> None:
    """Lets woken tasks run (a handful of loop turns; no time passes)."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_the_capacity_estimate_limits_within_the_hard_cap() -> None:
    estimate: list[float | None] = [None]
    admission = Admission(hard_cap=8, capacity=lambda: estimate[0])
    assert admission.limit() == 8  # nothing measured: the hard cap
    estimate[0] = 3.7
    assert admission.limit() == 3
    estimate[0] = 100.0
    assert admission.limit() == 8
    estimate[0] = 0.2
    assert admission.limit() == 1  # one stream is always served


def test_over_capacity_streams_queue_and_are_admitted_in_order() -> None:
    async def scenario() -> None:
        admission = Admission(hard_cap=64, capacity=lambda: 2.0)
        first = await admission.acquire()
        second = await admission.acquire()
        assert (first.position, second.position) == (0, 0) and admission.at_capacity
        positions: list[int] = []
        admitted: list[str] = []

        async def waiter(name: str) -> None:
            await admission.acquire(on_queued=positions.append)
            admitted.append(name)

        tasks = [asyncio.create_task(waiter(name)) for name in "abc"]
        await settle()
        assert admission.queued == 3 and positions == [1, 2, 3] and admitted == []
        admission.release(held_s=5.0)
        await settle()
        assert admitted == ["a"] and admission.running == 2
        admission.release(held_s=5.0)
        admission.release(held_s=5.0)
        await asyncio.gather(*tasks)
        assert admitted == ["a", "b", "c"] and admission.queued == 0 and admission.running == 2

    run(scenario())


def test_reject_answers_429_with_a_retry_after() -> None:
    async def scenario() -> None:
        admission = Admission(hard_cap=64, capacity=lambda: 1.0, over_capacity="reject")
        await admission.acquire()
        with pytest.raises(OverCapacity) as caught:
            await admission.acquire()
        assert caught.value.status == 429 and caught.value.retry_after_s >= 1
        assert admission.rejected_total == 1 and admission.queued == 0

    run(scenario())


def test_a_full_queue_rejects_and_a_stuck_queue_times_out_with_503() -> None:
    async def scenario() -> None:
        admission = Admission(
            hard_cap=64, capacity=lambda: 1.0, max_queued=1, max_queue_wait_s=0.01
        )
        await admission.acquire()
        waiting = asyncio.create_task(admission.acquire())
        await settle()
        with pytest.raises(OverCapacity):
            await admission.acquire()
        with pytest.raises(QueueTimeout) as caught:
            await waiting
        assert caught.value.status == 503 and admission.queued == 0
        assert admission.running == 1  # the timed-out request holds nothing

    run(scenario())


def test_a_client_that_leaves_the_queue_frees_its_place() -> None:
    async def scenario() -> None:
        admission = Admission(hard_cap=64, capacity=lambda: 1.0)
        await admission.acquire()
        gone = asyncio.create_task(admission.acquire())
        stays = asyncio.create_task(admission.acquire())
        await settle()
        assert admission.queued == 2
        gone.cancel()  # its client disconnected
        await settle()
        assert admission.queued == 1
        admission.release()
        ticket = await stays
        assert ticket.position == 2 and admission.running == 1 and admission.queued == 0

    run(scenario())


def test_a_slot_handed_to_a_waiter_that_just_left_goes_to_the_next() -> None:
    async def scenario() -> None:
        admission = Admission(hard_cap=64, capacity=lambda: 1.0)
        await admission.acquire()
        gone = asyncio.create_task(admission.acquire())
        stays = asyncio.create_task(admission.acquire())
        await settle()
        admission.release()  # hands the slot to `gone`...
        gone.cancel()  # ...which is cancelled before it runs
        await asyncio.gather(gone, return_exceptions=True)
        await stays
        assert admission.running == 1 and admission.queued == 0

    run(scenario())


def test_the_context_manager_releases_on_errors() -> None:
    async def scenario() -> None:
        admission = Admission(hard_cap=1, capacity=lambda: None)
        with pytest.raises(RuntimeError):
            async with admission.slot():
                assert admission.running == 1
                raise RuntimeError("the session failed")
        assert admission.running == 0

    run(scenario())


def test_a_rising_estimate_admits_waiters() -> None:
    async def scenario() -> None:
        estimate = [1.0]
        admission = Admission(hard_cap=64, capacity=lambda: estimate[0])
        await admission.acquire()
        waiting = asyncio.create_task(admission.acquire())
        await settle()
        estimate[0] = 4.0
        admission.poll()
        await waiting
        assert admission.running == 2

    run(scenario())
